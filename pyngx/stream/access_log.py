"""Stream access log: `log_format` and `access_log`, compiled once into line builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
