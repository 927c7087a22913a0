"""Error log in nginx's line format, and the open-file table shared with access logs.

A line reads `2026/11/25 03:42:35 [error] 1234#0: *5 message, client: ..., server: ...`.
Files are opened when the configuration is loaded (so a bad path fails `-t` and reloads), kept
by path so every log naming a file shares one descriptor, and reopened in place on USR1.
Writes are one `os.write` per line, as nginx does without buffering: a line is never split
between processes appending to the same file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pyngx.conf.parser import os_error_text

LEVELS = ("emerg", "alert", "crit", "error", "warn", "notice", "info", "debug")
LEVEL_INDEX = {name: i for i, name in enumerate(LEVELS)}
EMERG, ALERT, CRIT, ERROR, WARN, NOTICE, INFO, DEBUG = range(8)
DEFAULT_LEVEL = ERROR
STDERR_NAME = "stderr"


class LogFile:
    """A file opened for appending, or the inherited stderr; reopened in place on USR1."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = 2 if path == STDERR_NAME else self._open(path)

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            # Logging must never take a connection or a worker down (disk full, closed fd).
            pass

    def reopen(self) -> str | None:
        """Open the path anew in place of the current file; on failure keep writing to the
        current one (as nginx does) and return nginx's message for the error log."""
        if self.fd < 0 or self.fd == 2:
            return None
        try:
            fd = self._open(self.path)
        except OSError as exc:
            return f'open() "{self.path}" failed {os_error_text(exc)}'
        os.dup2(fd, self.fd)
        os.close(fd)
        return None

    def close(self) -> None:
        if self.fd > 2:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class OpenFiles:
    """Files by path for one cycle; a reload opens afresh and closes the old table."""

    def __init__(self) -> None:
        self.files: dict[str, LogFile] = {}

    def open(self, path: str) -> LogFile:
        f = self.files.get(path)
        if f is None:
            try:
                f = LogFile(path)
            except OSError as exc:
                raise OSError(exc.errno, f'open() "{path}" failed {os_error_text(exc)}') from None
            self.files[path] = f
        return f

    def reopen(self) -> list[str]:
        """Reopen every file; the messages of those that could not be (to log as emerg)."""
        return [err for f in self.files.values() if (err := f.reopen()) is not None]

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class _Clock:
    """Formats the current second once, however many lines are written in it."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        t = time.time()
        sec = int(t)
        if sec != self.second:
            self.second = sec
            self.text = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(t))
        return self.text


_clock = _Clock()


@dataclass(frozen=True, slots=True)
class LogTarget:
    file: LogFile
    level: int


class ErrorLog:
    """Writes nginx-shaped lines to every target whose level admits them."""

    __slots__ = ("targets", "max_level")

    def __init__(self, targets: list[LogTarget]) -> None:
        self.targets = tuple(targets)
        self.max_level = max((t.level for t in targets), default=-1)

    def enabled(self, level: int) -> bool:
        return level <= self.max_level

    def log(self, level: int, message: str, conn: int | None = None, context: str = "") -> None:
        if level > self.max_level:
            return
        conn_text = f"*{conn} " if conn is not None else ""
        line = f"{_clock.now()} [{LEVELS[level]}] {os.getpid()}#0: {conn_text}{message}{context}\n"
        data = line.encode("utf-8", "backslashreplace")
        for t in self.targets:
            if level <= t.level:
                t.file.write(data)

    def emerg(self, message: str) -> None:
        self.log(EMERG, message)

    def error(self, message: str) -> None:
        self.log(ERROR, message)

    def notice(self, message: str) -> None:
        self.log(NOTICE, message)

    def info(self, message: str) -> None:
        self.log(INFO, message)


def strerror(code: int) -> str:
    """nginx's `(24: Too many open files)` after the system call that failed."""
    return f"({code}: {os.strerror(code)})"


def startup_log(path: str) -> ErrorLog:
    """The log used before the configuration names one: `-e` or the built-in default."""
    try:
        f = LogFile(path)
    except OSError as exc:
        report_stderr(
            ALERT, f'could not open error log file: open() "{path}" failed {os_error_text(exc)}'
        )
        f = LogFile(STDERR_NAME)
    return ErrorLog([LogTarget(f, DEBUG)])


def report_stderr(level: int, message: str) -> None:
    try:
        os.write(2, f"pyngx: [{LEVELS[level]}] {message}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def report(log: ErrorLog, level: int, message: str) -> None:
    """A startup problem, as nginx reports it: in the error log, and on the console too
    (`pyngx: [emerg] ...`) unless the error log already is stderr."""
    log.log(level, message)
    if level <= WARN and not any(t.file.fd == 2 for t in log.targets):
        report_stderr(level, message)
