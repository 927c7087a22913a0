"""TEMPORARY stand-in (replaced by the h-locations branch): prefix/exact/regex only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre

REDIRECT_SLASH = object()


@dataclass(slots=True)
class LocationSpec:
    modifier: str
    name: str
    conf: Any
    node: Node
    children: list[LocationSpec] = field(default_factory=list)
    regex: re.Pattern[str] | None = None
    auto_redirect: bool = False


def parse_location(node: Node, parent: LocationSpec | None, conf: Any) -> LocationSpec:
    args = node.args
    if len(args) == 2:
        mod, name = args
    elif args[0].startswith("@"):
        mod, name = "@", args[0]
    else:
        mod, name = "", args[0]
    rx = None
    if mod in ("~", "~*"):
        rx = compile_pcre(name, re.IGNORECASE if mod == "~*" else 0)
    return LocationSpec(mod, name, conf, node, [], rx)


class LocationTree:
    def __init__(self, specs: list[LocationSpec]) -> None:
        self.specs = specs

    @classmethod
    def build(cls, specs: list[LocationSpec]) -> LocationTree:
        return cls(specs)

    def find(self, uri: str) -> tuple[Any, re.Match[str] | None] | None:
        return _find(self.specs, uri)

    def named(self, name: str) -> Any | None:
        for s in self.specs:
            if s.modifier == "@" and s.name == name:
                return s.conf
        return None


def _find(specs: list[LocationSpec], uri: str) -> tuple[Any, re.Match[str] | None] | None:
    best = None
    for s in specs:
        if s.modifier == "=" and s.name == uri:
            return s.conf, None
        if s.modifier in ("", "^~") and uri.startswith(s.name):
            if best is None or len(s.name) > len(best.name):
                best = s
    if best is not None and best.children:
        inner = _find(best.children, uri)
        if inner is not None:
            return inner
    if best is None or best.modifier != "^~":
        for s in specs:
            if s.regex is not None:
                m = s.regex.search(uri)
                if m:
                    return s.conf, m
    return (best.conf, None) if best is not None else None
