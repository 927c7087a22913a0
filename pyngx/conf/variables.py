"""Complex values: strings with `$name` / `${name}` references, compiled once at config time.

A module provides a `VariableTable` of getters (session -> str | None); compiling a value
turns it into one closure, so nothing is parsed per connection or per log line. A missing
value prints as nginx prints it: empty in strings, `-` in access log lines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError

Getter = Callable[[Any], "str | None"]
Escape = Callable[[str], str]

# As ngx_http_script_compile: `$1x` is capture 1 followed by "x" (a digit name is one digit).
_VAR_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([0-9])|([A-Za-z0-9_]+))")


@dataclass(slots=True)
class VariableTable:
    """Variables known to a module (stream, http); `prefixes` serve families like `$http_*`."""

    getters: dict[str, Getter] = field(default_factory=dict)
    prefixes: dict[str, Callable[[str], Getter]] = field(default_factory=dict)

    def add(self, name: str, getter: Getter) -> None:
        self.getters[name] = getter

    def copy(self) -> VariableTable:
        """A table for one configuration: built-ins plus what its `map`s define."""
        return VariableTable(dict(self.getters), dict(self.prefixes))

    def lookup(self, name: str) -> Getter:
        getter = self.getters.get(name)
        if getter is not None:
            return getter
        for prefix, factory in self.prefixes.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                return factory(name[len(prefix) :])
        # nginx checks variables after the whole file is read, so the message has no location.
        raise ConfigError(f'unknown "{name}" variable')


def split_complex(text: str) -> list[str | tuple[str]]:
    """Literal strings and 1-tuples naming variables, in order."""
    parts: list[str | tuple[str]] = []
    pos = 0
    for m in _VAR_RE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append((m.group(1) or m.group(2) or m.group(3),))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    if "$" in text and not any(isinstance(p, tuple) for p in parts) and text.endswith("$"):
        raise DirectiveValueError(f'invalid variable name in "{text}"', full=True)
    return parts


def has_variables(text: str) -> bool:
    return _VAR_RE.search(text) is not None


def compile_complex(
    text: str, table: VariableTable, *, escape: Escape | None = None, missing: str = ""
) -> Callable[[Any], str]:
    """Compile `text` into a function of the session returning the expanded string."""
    pieces: list[Callable[[Any], str]] = []
    for part in split_complex(text):
        if isinstance(part, str):
            pieces.append(_const(part))
        else:
            pieces.append(_var(table.lookup(part[0]), escape, missing))
    if not pieces:
        return _const("")
    if len(pieces) == 1:
        return pieces[0]
    return lambda s: "".join([p(s) for p in pieces])


def _const(value: str) -> Callable[[Any], str]:
    return lambda s: value


def _var(getter: Getter, escape: Escape | None, missing: str) -> Callable[[Any], str]:
    if escape is None:

        def plain(s: Any) -> str:
            v = getter(s)
            return missing if v is None else v

        return plain

    def escaped(s: Any) -> str:
        v = getter(s)
        return missing if v is None else escape(v)

    return escaped


def escape_default(value: str) -> str:
    """nginx's log escaping: `"`, `\\`, control and non-ASCII bytes become `\\xXX`."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    out = []
    for b in value.encode("utf-8", "surrogateescape"):
        if b < 0x20 or b >= 0x7F or b in (0x22, 0x5C):
            out.append(f"\\x{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


def escape_json(value: str) -> str:
    out = []
    for ch in value:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif o < 0x20:
            out.append(
                {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}.get(
                    ch, f"\\u{o:04x}"
                )
            )
        else:
            out.append(ch)
    return "".join(out)


ESCAPES: dict[str, Escape | None] = {
    "default": escape_default,
    "json": escape_json,
    "none": None,
}
