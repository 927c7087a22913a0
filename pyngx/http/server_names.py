"""TEMPORARY stand-in (replaced by the h-locations branch): exact names only."""

from __future__ import annotations

import re
from typing import Any

from pyngx.conf.parser import Node


class ServerNames:
    def __init__(self, entries: list[tuple[str, Any, Node]], default: Any, where: str = "") -> None:
        self.exact: dict[str, Any] = {}
        for name, conf, _node in entries:
            self.exact.setdefault(name, conf)
        self.default = default
        self.warnings: list[tuple[str, Node]] = []

    def find(self, host: str) -> tuple[Any, re.Match[str] | None]:
        return self.exact.get(host, self.default), None
