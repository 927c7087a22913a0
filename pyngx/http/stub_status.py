"""`stub_status` (ngx_http_stub_status_module) and nginx's connection counters.

nginx keeps seven counters in shared memory, updated with atomic adds by every worker:
accepted, handled, active, requests, reading, writing, waiting. Python has no atomic add on
shared memory, so each worker owns one row of seven int64 cells in an anonymous shared mapping
(made when the configuration is first loaded, before the workers fork) and only ever writes
its own row; a reader sums the rows. No lock is taken per connection, and the totals are what
nginx shows. A respawned worker takes over its predecessor's row (same worker index), so the
totals go on. As nginx's, the counters outlive reloads: the mapping is kept by the master, and
each configuration's workers get rows of their own (the next ones, round the table), so that
old workers finishing their connections never write a row a new worker writes.

A connection is in at most one of reading/writing/waiting (`conn.stat`): waiting from accept
and between keepalive requests, reading while a request head is incomplete, writing from a
complete head until the request ends (nginx moves it the same way in ngx_http_request.c).
`requests` counts each request as it starts. The counters cost nothing unless the
configuration uses `stub_status` or a `$connections_*` variable (`declare` looks).

Left out: nginx also counts stream sessions in accepted/handled/active (one accept path
serves both); here only http connections are counted.
"""

from __future__ import annotations

import mmap
import re
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import Context, Registry
from pyngx.conf.variables import VariableTable

SRV, LOC = "http_server", "http_location"
ACCEPTED, HANDLED, ACTIVE, REQUESTS, READING, WRITING, WAITING = range(7)
_CELLS = 8  # seven counters, padded to 64 bytes per worker row
NOT_ACTIVE = -1  # conn.stat of a connection that is not (or no longer) counted as active
_USES = re.compile(r"\$\{?connections_(?:active|reading|writing|waiting)(?![A-Za-z0-9_])")
_USED = "__stub_status_used__"
_STATS = "__stub_status_stats__"


class _Rows:
    """The shared mapping: `rows` rows of _CELLS int64 counters."""

    __slots__ = ("_map", "cells", "rows", "next_row")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._map = mmap.mmap(-1, rows * _CELLS * 8)
        self.cells = memoryview(self._map).cast("q")
        self.next_row = 0  # where the next configuration's workers start


# The master's mapping, kept across reloads (see the module docstring).
_SHARED: list[_Rows] = []
MIN_ROWS = 256


def cycle_stats(workers: int) -> ConnStats:
    """The counters for a configuration with `workers` workers."""
    shared = _SHARED[0] if _SHARED else None
    if shared is None or workers * 2 > shared.rows:
        grown = _Rows(max(MIN_ROWS, workers * 4))
        if shared is not None:  # keep the totals so far (in the first row)
            sums = ConnStats(shared, 0, 1).totals()
            for i, value in enumerate(sums):
                grown.cells[i] = value
            grown.next_row = 1
        _SHARED[:] = [grown]
        shared = grown
    first = shared.next_row
    shared.next_row = (first + workers) % shared.rows
    return ConnStats(shared, first, workers)


class ConnStats:
    """The counters as one configuration's workers see them; methods take the connection."""

    __slots__ = ("shared", "cells", "first", "workers", "base")

    def __init__(self, shared: _Rows, first: int, workers: int) -> None:
        self.shared = shared
        self.cells = shared.cells
        self.first = first
        self.workers = max(1, workers)
        self.base = 0  # this process's row (every connection of a worker shares it)

    def opened(self, conn: Any, *, handled: bool) -> None:
        """A connection was accepted; `handled` unless worker_connections refused it."""
        row = (self.first + conn.worker.index % self.workers) % self.shared.rows
        b = self.base = row * _CELLS
        c = self.cells
        c[b + ACCEPTED] += 1
        if not handled:
            conn.stat = NOT_ACTIVE
            return
        c[b + HANDLED] += 1
        c[b + ACTIVE] += 1
        c[b + WAITING] += 1
        conn.stat = WAITING

    def _move(self, conn: Any, state: int) -> None:
        old = conn.stat
        if old in (state, NOT_ACTIVE):
            return
        c, b = self.cells, self.base
        if old:
            c[b + old] -= 1
        if state:
            c[b + state] += 1
        conn.stat = state

    def reading(self, conn: Any) -> None:
        """Part of a request head arrived: a request starts (unless it already has)."""
        if conn.stat == WAITING:
            self.cells[self.base + REQUESTS] += 1
        self._move(conn, READING)

    def writing(self, conn: Any) -> None:
        """The request head is complete (or refused): the request is being processed."""
        if conn.stat == WAITING:
            self.cells[self.base + REQUESTS] += 1
        self._move(conn, WRITING)

    def waiting(self, conn: Any) -> None:
        """The request ended and the connection is kept for the next one."""
        self._move(conn, WAITING)

    def closed(self, conn: Any) -> None:
        if conn.stat == NOT_ACTIVE:
            return
        self._move(conn, 0)
        self.cells[self.base + ACTIVE] -= 1
        conn.stat = NOT_ACTIVE

    def totals(self) -> tuple[int, ...]:
        """accepted, handled, active, requests, reading, writing, waiting (all workers)."""
        c = self.cells
        return tuple(sum(c[i::_CELLS]) for i in range(7))


def status_text(stats: ConnStats | None) -> bytes:
    """The page, byte for byte as nginx prints it (the spaces before the newlines included)."""
    ap, hn, ac, rq, rd, wr, wa = stats.totals() if stats is not None else (0,) * 7
    return (
        f"Active connections: {ac} \n"
        "server accepts handled requests\n"
        f" {ap} {hn} {rq} \n"
        f"Reading: {rd} Writing: {wr} Waiting: {wa} \n"
    ).encode()


def handler(r: Any) -> int | None:
    """ngx_http_stub_status_handler: GET and HEAD only (HEAD gets the page's Content-Length,
    as nginx 1.22 sends it); the body of a request is discarded (the connection does that
    when the request ends)."""
    if r.method not in ("GET", "HEAD"):
        return 405
    r.out.content_type = "text/plain"
    r.send_response(200, status_text(getattr(r.conn, "stats", None)))
    return None


# -- variables ----------------------------------------------------------------------------


def _counter(index: int) -> Any:
    def getter(r: Any) -> str:
        stats = getattr(r.conn, "stats", None)
        return str(stats.totals()[index]) if stats is not None else "0"

    return getter


# -- directives ---------------------------------------------------------------------------


def _stub_status(ctx: Context, node: Node) -> None:
    # The argument (the old `stub_status on;`) is accepted and ignored, as nginx does.
    ctx.slots["stub_status"] = True


class StubStatusModule:
    """The module object for http/modules.py."""

    @staticmethod
    def register(reg: Registry) -> None:
        reg.add("stub_status", [SRV, LOC], _stub_status, (0, 1))

    @staticmethod
    def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
        for name, index in (
            ("connections_active", ACTIVE),
            ("connections_reading", READING),
            ("connections_writing", WRITING),
            ("connections_waiting", WAITING),
        ):
            table.add(name, _counter(index))
        http.slots[_USED] = _uses_counters(nodes)
        return []

    @staticmethod
    def configure(ctx: Context, loc: Any) -> None:
        http = ctx.up("http")
        stats = http.slots.get(_STATS)
        if stats is None and http.slots.get(_USED):
            # Every main directive is read by now: the number of workers is known.
            root = http.parent
            workers = root.local("worker_processes", 1) if root is not None else 1
            stats = http.slots[_STATS] = cycle_stats(workers)
        loc.stub_stats = stats
        # Not inherited: nginx sets the handler of the level the directive is written at.
        if ctx.local("stub_status"):
            loc.content = handler


def _uses_counters(nodes: list[Node]) -> bool:
    for node in nodes:
        if node.name == "stub_status" or any(_USES.search(a) for a in node.args):
            return True
        if node.block and _uses_counters(node.block):
            return True
    return False


MODULE = StubStatusModule()

__all__ = ["MODULE", "ConnStats", "handler", "status_text"]
