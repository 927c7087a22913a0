"""Directives of the main and events contexts (nginx's core and events modules)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import (
    NOARGS,
    ONEMORE,
    TAKE1,
    TAKE12,
    Context,
    Registry,
    flag_slot,
    ignore,
    number_slot,
    str_slot,
    time_slot,
)
from pyngx.conf.values import parse_number
from pyngx.core.log import LEVEL_INDEX

MAIN, EVENTS = "main", "events"
# Contexts whose blocks may carry an error_log of their own.
ERROR_LOG_CONTEXTS = ("main", "stream", "stream_server", "http", "http_server", "http_location")


@dataclass(frozen=True, slots=True)
class ErrorLogSpec:
    path: str
    level: int


@dataclass(frozen=True, slots=True)
class MainConf:
    daemon: bool
    master_process: bool
    worker_processes: int
    pid_path: str
    error_logs: tuple[ErrorLogSpec, ...]
    worker_connections: int
    worker_shutdown_timeout: float | None
    user: tuple[str, str | None] | None
    env: tuple[str, ...]
    worker_rlimit_nofile: int | None
    worker_priority: int
    worker_cpu_affinity: tuple[frozenset[int], ...] | None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _worker_processes(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    value = cpu_count() if arg == "auto" else parse_number(arg)
    ctx.set_once("worker_processes", value, node)


def parse_error_log(node: Node) -> ErrorLogSpec:
    path = node.args[0]
    if path.startswith(("syslog:", "memory:")):
        raise DirectiveValueError(f'"{path.split(":")[0]}" error log is not supported', full=True)
    level = 3
    if len(node.args) > 1:
        name = node.args[1]
        if name not in LEVEL_INDEX:
            raise DirectiveValueError(f'invalid log level "{name}"', full=True)
        level = LEVEL_INDEX[name]
    if len(node.args) > 2:
        raise DirectiveValueError(f'invalid log level "{node.args[2]}"', full=True)
    return ErrorLogSpec(path, level)


def _error_log(ctx: Context, node: Node) -> None:
    ctx.append("error_log", parse_error_log(node), node)


def _events(ctx: Context, node: Node) -> None:
    if "events" in ctx.slots:
        raise node.error('"events" directive is duplicate')
    child = ctx.child(EVENTS, node)
    ctx.slots["events"] = child
    child.run(node.block or [])


def _user(ctx: Context, node: Node) -> None:
    if "user" in ctx.slots:
        raise node.error('"user" directive is duplicate')
    if os.geteuid() != 0:
        ctx.warn(
            node,
            'the "user" directive makes sense only if the master process runs with '
            "super-user privileges, ignored",
        )
        ctx.slots["user"] = None
        return
    import grp
    import pwd

    user = node.args[0]
    group = node.args[1] if len(node.args) > 1 else None
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise node.error(f'getpwnam("{user}") failed') from None
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise node.error(f'getgrnam("{group}") failed') from None
    ctx.set_once("user", (user, group), node)


def _env(ctx: Context, node: Node) -> None:
    ctx.append("env", node.args[0], node)


def _worker_rlimit_nofile(ctx: Context, node: Node) -> None:
    ctx.set_once("worker_rlimit_nofile", parse_number(node.args[0]), node)


def _worker_priority(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    neg = arg.startswith("-")
    value = parse_number(arg[1:] if neg else arg)
    ctx.set_once("worker_priority", -value if neg else value, node)


def _worker_cpu_affinity(ctx: Context, node: Node) -> None:
    if node.args[0] == "auto":
        ctx.set_once("worker_cpu_affinity", "auto", node)
        return
    masks = []
    for mask in node.args:
        if not mask or set(mask) - {"0", "1"}:
            raise DirectiveValueError(
                f'invalid character "{mask}" in "worker_cpu_affinity"', full=True
            )
        masks.append(frozenset(i for i, b in enumerate(reversed(mask)) if b == "1"))
    ctx.set_once("worker_cpu_affinity", tuple(masks), node)


def register(reg: Registry) -> None:
    reg.add("daemon", [MAIN], flag_slot("daemon"))
    reg.add("master_process", [MAIN], flag_slot("master_process"))
    reg.add("worker_processes", [MAIN], _worker_processes)
    reg.add("pid", [MAIN], str_slot("pid"))
    reg.add("error_log", ERROR_LOG_CONTEXTS, _error_log, ONEMORE)
    reg.add("events", [MAIN], _events, NOARGS, block=True)
    reg.add("worker_shutdown_timeout", [MAIN], time_slot("worker_shutdown_timeout"))
    reg.add("load_module", [MAIN], ignore)  # every module is built in
    reg.add("user", [MAIN], _user, TAKE12)
    reg.add("env", [MAIN], _env)
    reg.add("worker_rlimit_nofile", [MAIN], _worker_rlimit_nofile)
    reg.add("worker_priority", [MAIN], _worker_priority)
    reg.add("worker_cpu_affinity", [MAIN], _worker_cpu_affinity, ONEMORE)
    # Accepted for compatibility: they tune mechanisms pyngx does not have.
    for name in (
        "pcre_jit",
        "timer_resolution",
        "lock_file",
        "working_directory",
        "worker_rlimit_core",
        "thread_pool",
        "ssl_engine",
        "debug_points",
    ):
        reg.add(name, [MAIN], ignore, ONEMORE)
    reg.add("worker_connections", [EVENTS], number_slot("worker_connections"))
    for name in (
        "use",
        "multi_accept",
        "accept_mutex",
        "accept_mutex_delay",
        "worker_aio_requests",
        "debug_connection",
    ):
        reg.add(name, [EVENTS], ignore, TAKE1)


def build_main(root: Context, full_path: object) -> MainConf:
    """Merge the main level with defaults (nginx's core module init_conf)."""
    events = root.local("events")
    if events is None:
        raise DirectiveValueError('no "events" section in configuration', full=True)
    resolve = full_path  # Paths.full
    logs = tuple(
        ErrorLogSpec(resolve(spec.path), spec.level)  # type: ignore[operator]
        for spec in root.local("error_log", [])
    )
    affinity = root.local("worker_cpu_affinity")
    workers = root.local("worker_processes", 1)
    if affinity == "auto":
        cpus = sorted(os.sched_getaffinity(0))
        affinity = tuple(frozenset([cpus[i % len(cpus)]]) for i in range(workers))
    return MainConf(
        daemon=root.local("daemon", True),
        master_process=root.local("master_process", True),
        worker_processes=workers,
        pid_path=root.local("pid", ""),
        error_logs=logs,
        worker_connections=events.local("worker_connections", 512),
        worker_shutdown_timeout=root.local("worker_shutdown_timeout"),
        user=root.local("user"),
        env=tuple(root.local("env", [])),
        worker_rlimit_nofile=root.local("worker_rlimit_nofile"),
        worker_priority=root.local("worker_priority", 0),
        worker_cpu_affinity=affinity,
    )


__all__ = ["MainConf", "ErrorLogSpec", "register", "build_main", "parse_error_log", "TAKE1"]
