"""Stream access log: `log_format` and `access_log`, compiled once into line builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import Context
from pyngx.conf.values import parse_size, parse_time
from pyngx.conf.variables import ESCAPES, VariableTable, compile_complex
from pyngx.core.log import LogFile


@dataclass(frozen=True, slots=True)
class LogFormat:
    name: str
    build: Callable[[Any], str]


def compile_format(name: str, escape: str, text: str, table: VariableTable) -> LogFormat:
    esc = ESCAPES[escape]
    # nginx prints "-" for a variable without value, unless escaping is json or none.
    missing = "-" if escape == "default" else ""
    return LogFormat(name, compile_complex(text, table, escape=esc, missing=missing))


class AccessLog:
    """One `access_log` target; `buffer=` collects lines and flushes on size or `flush=`."""

    __slots__ = ("file", "fmt", "condition", "buffer_size", "flush", "_pending", "_pending_len")

    def __init__(
        self,
        file: LogFile,
        fmt: LogFormat,
        condition: Callable[[Any], str] | None,
        buffer_size: int,
        flush: float | None,
    ) -> None:
        self.file = file
        self.fmt = fmt
        self.condition = condition
        self.buffer_size = buffer_size
        self.flush = flush
        self._pending: list[bytes] = []
        self._pending_len = 0

    def write(self, session: Any) -> None:
        if self.condition is not None:
            v = self.condition(session)
            if not v or v == "0":
                return
        line = (self.fmt.build(session) + "\n").encode("utf-8", "surrogateescape")
        if not self.buffer_size:
            self.file.write(line)
            return
        self._pending.append(line)
        self._pending_len += len(line)
        if self._pending_len >= self.buffer_size:
            self.flush_now()

    def flush_now(self) -> None:
        if self._pending:
            self.file.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_len = 0


def log_format_directive(ctx: Context, node: Node, table: VariableTable) -> None:
    """`log_format name [escape=...] string ...;` into ctx.slots["log_formats"] (stream, http)."""
    formats: dict[str, LogFormat] = ctx.slots["log_formats"]
    name, args = node.args[0], node.args[1:]
    if name in formats:
        raise node.error(f'duplicate "log_format" name "{name}"')
    escape = "default"
    if args and args[0].startswith("escape="):
        escape = args[0][7:]
        if escape not in ESCAPES:
            raise node.error(f'unknown log format escaping "{escape}"')
        args = args[1:]
    if not args:
        raise node.error('invalid number of arguments in "log_format" directive')
    formats[name] = compile_format(name, escape, "".join(args), table)


def access_log_directive(
    ctx: Context,
    node: Node,
    formats: dict[str, LogFormat],
    table: VariableTable,
    default_format: str | None,
) -> None:
    """`access_log path [format [buffer= flush= if=]] | off;` appended to the level's list.

    http names `combined` when the format is left out; stream has no default format.
    """
    if node.args[0] == "off":
        if len(node.args) > 1:
            raise node.error('invalid number of arguments in "access_log" directive')
        ctx.set_once("access_log", [], node)
        return
    if len(node.args) < 2 and default_format is None:
        raise node.error('invalid number of arguments in "access_log" directive')
    fmt_name = node.args[1] if len(node.args) > 1 else default_format
    fmt = formats.get(fmt_name or "")
    if fmt is None:
        raise node.error(f'unknown log format "{fmt_name}"')
    params: dict[str, Any] = {"buffer": 0, "flush": None, "if": None}
    for p in node.args[2:]:
        key, eq, value = p.partition("=")
        try:
            if key == "buffer" and eq:
                params["buffer"] = parse_size(value)
            elif key == "flush" and eq:
                params["flush"] = parse_time(value)
            elif key == "gzip":
                raise node.error('the "gzip" parameter of "access_log" is not supported')
            elif key == "if" and eq:
                params["if"] = compile_complex(value, table)
            else:
                raise node.error(f'invalid parameter "{p}"')
        except DirectiveValueError:
            raise node.error(f'invalid parameter "{p}"') from None
    if params["flush"] is not None and not params["buffer"]:
        params["buffer"] = 64 * 1024
    entries = ctx.slots.get("access_log")
    if entries is None:
        entries = ctx.slots["access_log"] = []
        ctx.locations["access_log"] = node
    entries.append((node.args[0], fmt, params))
