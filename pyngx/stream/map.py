"""`map` (ngx_stream_map_module): a variable whose value depends on another string.

Matching follows nginx's priority: exact strings (case-insensitive), then the longest
`*.example.com`/`.example.com` mask, then the longest `mail.*` mask (both with `hostnames`),
then the first matching regular expression (`~` case-sensitive, `~*` not), then `default`.
Values may contain variables and, after a regex match, its captures ($1..$9, named groups).
Everything is compiled when the configuration loads; a lookup is a dict probe in the common
case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre
from pyngx.conf.variables import VariableTable, compile_complex, split_complex

Value = Callable[[Any, "re.Match[str] | None"], str]


def _compile_value(text: str, table: VariableTable, group_names: set[str]) -> Value:
    """Like compile_complex, but `$1`..`$9` and named groups come from the regex match."""
    parts: list[Callable[[Any, re.Match[str] | None], str]] = []
    for part in split_complex(text):
        if isinstance(part, str):
            parts.append(lambda s, m, v=part: v)
            continue
        name = part[0]
        if name.isdigit() or name in group_names:
            key: int | str = int(name) if name.isdigit() else name

            def capture(s: Any, m: re.Match[str] | None, key: int | str = key) -> str:
                if m is None:
                    return ""
                try:
                    return m.group(key) or ""
                except IndexError:
                    return ""

            parts.append(capture)
        else:
            getter = compile_complex(f"${{{name}}}", table)
            parts.append(lambda s, m, g=getter: g(s))
    if len(parts) == 1:
        return parts[0]
    return lambda s, m: "".join([p(s, m) for p in parts])


@dataclass(slots=True)
class MapConf:
    """A `map` block while its lines are read."""

    source: str
    name: str
    node: Node
    hostnames: bool = False
    default: str | None = None
    entries: list[tuple[str, str, Node]] = field(default_factory=list)


class MapHolder:
    """The map's variable getter, declared before the map can be compiled (see `_stream`)."""

    __slots__ = ("compiled",)

    def __init__(self) -> None:
        self.compiled: CompiledMap | None = None

    def evaluate(self, session: Any) -> str:
        compiled = self.compiled
        return compiled.evaluate(session) if compiled is not None else ""


class CompiledMap:
    __slots__ = ("source", "exact", "head_masks", "tail_masks", "regexes", "default", "hostnames")

    def __init__(self, conf: MapConf, table: VariableTable) -> None:
        self.source = compile_complex(conf.source, table)
        self.hostnames = conf.hostnames
        self.exact: dict[str, Value] = {}
        self.head_masks: list[tuple[str, Value]] = []  # "*.example.com" -> ".example.com"
        self.tail_masks: list[tuple[str, Value]] = []  # "mail.*" -> "mail."
        self.regexes: list[tuple[re.Pattern[str], Value]] = []
        for key, value, node in conf.entries:
            if key.startswith("~"):
                flags = 0
                pattern = key[1:]
                if pattern.startswith("*"):
                    flags, pattern = re.IGNORECASE, pattern[1:]
                try:
                    rx = compile_pcre(pattern, flags)
                except re.error as exc:
                    raise node.error(f'pcre2_compile() failed: {exc} in "{pattern}"') from None
                names = set(rx.groupindex)
                self.regexes.append((rx, _compile_value(value, table, names)))
                continue
            if key.startswith("\\"):
                key = key[1:]
            fn = _compile_value(value, table, set())
            low = key.lower()
            if conf.hostnames and low.startswith("*."):
                self.head_masks.append((low[1:], fn))
            elif conf.hostnames and low.startswith(".") and len(low) > 1:
                self.exact.setdefault(low[1:], fn)
                self.head_masks.append((low, fn))
            elif conf.hostnames and low.endswith(".*"):
                self.tail_masks.append((low[:-1], fn))
            else:
                if low in self.exact:
                    raise node.error(f'conflicting parameter "{key}"')
                self.exact[low] = fn
        # Longest mask first, as nginx's wildcard hashes prefer the most specific name.
        self.head_masks.sort(key=lambda kv: -len(kv[0]))
        self.tail_masks.sort(key=lambda kv: -len(kv[0]))
        default = conf.default
        self.default: Value = (
            _compile_value(default, table, set()) if default is not None else (lambda s, m: "")
        )

    def evaluate(self, session: Any) -> str:
        source = self.source(session)
        if self.hostnames and source.endswith("."):
            # nginx drops one trailing dot of a host name before any matching (regexes too).
            source = source[:-1]
        low = source.lower()
        fn = self.exact.get(low)
        if fn is not None:
            return fn(session, None)
        if self.head_masks or self.tail_masks:
            for suffix, fn in self.head_masks:
                if low.endswith(suffix):
                    return fn(session, None)
            for prefix, fn in self.tail_masks:
                if low.startswith(prefix):
                    return fn(session, None)
        for rx, fn in self.regexes:
            m = rx.search(source)
            if m is not None:
                return fn(session, m)
        return self.default(session, None)


def parse_map_block(source: str, variable: str, node: Node) -> MapConf:
    if not variable.startswith("$") or len(variable) < 2:
        raise node.error(f'invalid variable name "{variable}"')
    conf = MapConf(source, variable[1:], node)
    for line in node.block or []:
        words = [line.name, *line.args]
        if line.block is not None:
            raise line.error('unexpected "{" in map')
        if words == ["hostnames"]:
            conf.hostnames = True
            continue
        if words == ["volatile"]:
            continue
        if len(words) != 2:
            raise line.error("invalid number of the map parameters")
        key, value = words
        if key == "default":
            if conf.default is not None:
                raise line.error("duplicate default map parameter")
            conf.default = value
            continue
        conf.entries.append((key, value, line))
    return conf
