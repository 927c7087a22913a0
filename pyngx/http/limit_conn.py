"""`limit_conn_zone`, `limit_conn`, `limit_conn_status`, `limit_conn_log_level`,
`limit_conn_dry_run` and `$limit_conn_status` for http (ngx_http_limit_conn_module).

The zones, their shared tables and the counting are the stream module's
(`pyngx.stream.limit_conn`): per key, the number of requests being processed, in memory
shared by all workers. A request counts in the preaccess phase (after limit_req) and gives its
counts back when it ends, after its log line (a request cleanup, as nginx's pool cleanup).
A request is counted once: after an internal redirect the handler declines, as nginx's does
once `r->main->limit_conn_status` is set.
"""

from __future__ import annotations

import functools
from typing import Any

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, TAKE2, Context, Registry
from pyngx.conf.values import parse_number
from pyngx.conf.variables import VariableTable
from pyngx.stream import limit_conn as shared
from pyngx.stream.limit_conn import REJECTED, STATUS_NAMES, LimitConn, release_all

HTTP, SRV, LOC = "http", "http_server", "http_location"
MAIN_SRV_LOC = (HTTP, SRV, LOC)
TAG = "http_limit_conn"  # owner of its shared zones (ngx_shared_memory_add's tag)
SERVICE_UNAVAILABLE = 503


class LimitState:
    """What limit_req and limit_conn decided for a request (`r.limit_state`): nginx's
    `r->main->limit_req_status` and `limit_conn_status`, 0 while undecided."""

    __slots__ = ("req", "conn")

    def __init__(self) -> None:
        self.req = 0
        self.conn = 0


def limit_state(r: Any) -> LimitState:
    state = r.limit_state
    if state is None:
        state = r.limit_state = LimitState()
    return state


def _request_worker(r: Any) -> Any:
    return r.conn.worker


class HttpLimitConn:
    """The preaccess handler of one location."""

    __slots__ = ("limiter", "status")

    def __init__(self, limiter: LimitConn, status: int) -> None:
        self.limiter = limiter
        self.status = status

    def __call__(self, r: Any) -> int | None:
        state = limit_state(r)
        if state.conn:
            return None
        status, taken = self.limiter.acquire(r)
        state.conn = status
        if taken:
            r.add_cleanup(functools.partial(release_all, taken))
        if status == REJECTED:
            return self.status
        return None


def status_number(ctx: Context, node: Node, slot: str) -> None:
    """ngx_conf_set_num_slot with bounds 400..599 (limit_conn_status, limit_req_status)."""
    if slot in ctx.slots:
        raise DirectiveValueError("is duplicate")
    try:
        value = parse_number(node.args[0])
    except DirectiveValueError:
        raise DirectiveValueError("invalid number") from None
    if not 400 <= value <= 599:
        raise node.error("value must be between 400 and 599")
    ctx.set_once(slot, value, node)


def _status_variable(r: Any) -> str | None:
    state = r.limit_state
    if state is None or not state.conn:
        return None
    return STATUS_NAMES[state.conn]


class LimitConnModule:
    """The module object for http/modules.py."""

    @staticmethod
    def register(reg: Registry) -> None:
        reg.add("limit_conn_zone", [HTTP], functools.partial(shared.zone_directive, tag=TAG), TAKE2)
        reg.add(
            "limit_conn", MAIN_SRV_LOC, functools.partial(shared.limit_directive, tag=TAG), TAKE2
        )
        reg.add("limit_conn_log_level", MAIN_SRV_LOC, shared.log_level_directive, TAKE1)
        reg.add("limit_conn_dry_run", MAIN_SRV_LOC, shared.dry_run_directive, TAKE1)
        reg.add(
            "limit_conn_status",
            MAIN_SRV_LOC,
            functools.partial(status_number, slot="limit_conn_status"),
            TAKE1,
        )

    @staticmethod
    def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
        table.add("limit_conn_status", _status_variable)
        return []

    @staticmethod
    def configure(ctx: Context, loc: Any) -> None:
        limiter = shared.build(ctx, HTTP, suffix="", worker=_request_worker)
        loc.limit_conn = None
        if limiter is None:
            return
        loc.limit_conn = HttpLimitConn(limiter, ctx.get("limit_conn_status", SERVICE_UNAVAILABLE))
        loc.phase_preaccess.append(loc.limit_conn)


MODULE = LimitConnModule()

__all__ = ["MODULE", "HttpLimitConn", "LimitState", "limit_state", "status_number"]
