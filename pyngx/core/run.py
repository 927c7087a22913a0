"""Startup after a successful configuration load: bind, daemonize, pid file, run."""

from __future__ import annotations

import os

from pyngx.core.cycle import Cycle
from pyngx.core.listening import SocketTable
from pyngx.core.log import EMERG, LogFile, report
from pyngx.core.master import (
    Master,
    StartupError,
    bind_cycle,
    block_signals,
    run_single,
    write_pid,
)
from pyngx.core.paths import Paths


def _emerg(cycle: Cycle, message: str) -> None:
    report(cycle.error_log, EMERG, message)


def daemonize() -> None:
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if null > 2:
        os.close(null)


def redirect_stderr(cycle: Cycle) -> None:
    """As nginx does: once the error log is a file, stderr (tracebacks included) goes there."""
    files: list[LogFile] = [t.file for t in cycle.error_log.targets]
    if files and files[0].fd > 2:
        os.dup2(files[0].fd, 2)


def start(cycle: Cycle, paths: Paths, directives: str | None) -> int:
    main = cycle.main
    table = SocketTable()
    try:
        gen = bind_cycle(cycle, table, startup=True)
    except StartupError as exc:
        _emerg(cycle, str(exc))
        return 1
    table.commit(gen.sockets)
    if main.daemon:
        daemonize()
    if main.master_process:
        block_signals()
    try:
        write_pid(cycle.pid_path)
    except StartupError as exc:
        _emerg(cycle, str(exc))
        table.close_all()
        return 1
    redirect_stderr(cycle)
    if not main.master_process:
        return run_single(gen)
    return Master(gen, table, (paths, directives)).run()
