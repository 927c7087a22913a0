"""Connections to http upstream servers, and the per-worker cache of idle ones (`keepalive`).

`UpstreamConn` is the asyncio Protocol of one upstream connection. It belongs to at most one
exchange at a time (`owner`, the proxied request's upstream state, pyngx/http/proxy_run.py)
and forwards its callbacks there; between requests it sits idle in a `KeepalivePool`.

One timer per connection serves its whole life (nginx's read/send timers, and the idle
timeout of the cache): owners move `deadline` and `kind` instead of creating a timer per
request, and the timer re-arms itself lazily when it fires early. On the hot path (a cached
connection, one request, one response) that costs two attribute writes per request.

The cache follows ngx_http_upstream_keepalive_module: at most `keepalive` idle connections
per group and worker, least recently used dropped first (at the end of the event loop's
round, so that requests read in the same round take a surplus connection instead of
opening a new one while it is closed); a connection is cached only after a
complete response that allowed it (known length, no `Connection: close`), and not once it
served `keepalive_requests` requests or lived `keepalive_time`; an idle connection that
receives anything (data or EOF) is closed, and so is one idle for `keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

# Upstream transports pause the request body source above this (client reading paused).
UP_HIGH_WATER = 256 * 1024
UP_LOW_WATER = 64 * 1024


class Owner(Protocol):
    """What an UpstreamConn calls back into: the exchange using it."""

    def up_data(self, data: bytes) -> None: ...

    def up_eof(self) -> None: ...

    def up_lost(self, exc: Exception | None) -> None: ...

    def up_paused(self, paused: bool) -> None: ...

    def up_timeout(self, kind: str) -> None: ...


class UpstreamConn(asyncio.Protocol):
    __slots__ = (
        "transport",
        "owner",
        "loop",
        "key",
        "requests",
        "created",
        "deadline",
        "kind",
        "timer",
        "closed",
        "pool",
        "paused",
        "sent",
        "ssl",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Any) -> None:
        self.loop = loop
        self.key = key  # the peer (its address text): what the cache matches on
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.owner: Owner | None = None
        self.requests = 0
        self.created = loop.time()
        self.deadline = 0.0
        self.kind = ""
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.pool: KeepalivePool | None = None
        self.paused = False
        self.sent = 0  # bytes written on this connection, for $upstream_bytes_sent
        self.ssl = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(UP_HIGH_WATER, UP_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.up_data(data)
        else:
            # Idle in the cache: the server has nothing to say now (nginx closes it).
            self.close()

    def eof_received(self) -> bool | None:
        owner = self.owner
        if owner is not None:
            owner.up_eof()
            return True  # the owner decides when to close (a close-delimited body ends)
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        pool = self.pool
        if pool is not None:
            pool.forget(self)
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.up_lost(exc)

    def pause_writing(self) -> None:
        self.paused = True
        owner = self.owner
        if owner is not None:
            owner.up_paused(True)

    def resume_writing(self) -> None:
        self.paused = False
        owner = self.owner
        if owner is not None:
            owner.up_paused(False)

    # -- use ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self.transport.write(data)

    def arm(self, kind: str, timeout: float) -> None:
        """Fire `owner.up_timeout(kind)` unless re-armed within `timeout` seconds."""
        self.kind = kind
        self.deadline = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._fired)

    def disarm(self) -> None:
        self.kind = ""

    def _fired(self) -> None:
        self.timer = None
        if not self.kind or self.closed:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._fired)
            return
        kind = self.kind
        self.kind = ""
        owner = self.owner
        if owner is not None:
            owner.up_timeout(kind)
        elif kind == "idle":
            self.close()

    def _stop_timer(self) -> None:
        self.kind = ""
        t = self.timer
        if t is not None:
            t.cancel()
            self.timer = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner = None
        self._stop_timer()
        pool = self.pool
        if pool is not None:
            pool.forget(self)
        self.transport.close()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.owner = None
        self._stop_timer()
        pool = self.pool
        if pool is not None:
            pool.forget(self)
        self.transport.abort()


class Waiter(Protocol):
    """An exchange that found no idle connection for its peer (KeepalivePool.wait)."""

    def take(self, conn: UpstreamConn) -> bool: ...

    def open_new(self) -> None: ...


class KeepalivePool:
    """Idle connections of one upstream group in one worker (nginx's keepalive cache)."""

    __slots__ = ("size", "requests", "timeout", "max_age", "by_key", "lru", "waiters", "trimming")

    def __init__(self, size: int, requests: int, timeout: float, max_age: float) -> None:
        self.size = size
        self.requests = requests
        self.timeout = timeout
        self.max_age = max_age
        self.by_key: dict[Any, list[UpstreamConn]] = {}
        # Every idle connection, oldest first: the one to drop when the cache is full.
        self.lru: OrderedDict[UpstreamConn, None] = OrderedDict()
        # Exchanges that found the cache empty in this round of the event loop, by peer.
        self.waiters: dict[Any, list[Waiter]] = {}
        self.trimming = False  # a _trim is scheduled

    def get(self, key: Any) -> UpstreamConn | None:
        stack = self.by_key.get(key)
        while stack:
            conn = stack.pop()
            del self.lru[conn]
            conn.pool = None
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    def wait(self, key: Any, waiter: Waiter, loop: asyncio.AbstractEventLoop) -> None:
        """No idle connection to `key`: the waiter gets the first one a response of this
        round of the event loop gives back (`take`), else opens its own at the round's end
        (`open_new`). Under load the round that brings requests brings responses too: their
        connections serve the requests instead of being cached (and the cache's surplus
        closed) while as many new ones are opened."""
        waiters = self.waiters
        if not waiters:
            loop.call_soon(self._open_for_waiters)
        queue = waiters.get(key)
        if queue is None:
            waiters[key] = [waiter]
        else:
            queue.append(waiter)

    def _open_for_waiters(self) -> None:
        waiters = self.waiters
        self.waiters = {}
        for queue in waiters.values():
            for waiter in queue:
                waiter.open_new()

    def put(self, conn: UpstreamConn) -> bool:
        """Cache `conn` (its owner is done with it), or hand it to a waiting exchange; False
        when it must be closed instead."""
        if conn.closed or conn.requests >= self.requests:
            return False
        now = conn.loop.time()
        if now - conn.created > self.max_age:
            return False
        if self.waiters:
            queue = self.waiters.get(conn.key)
            while queue:
                if queue.pop(0).take(conn):
                    return True
        lru = self.lru
        if len(lru) >= self.size and not self.trimming:
            # Over `keepalive`: the least recently used go at the end of this round of the
            # event loop, after the requests read in the same round took what they need
            # (a connection closed here and another opened for a request a moment later
            # would cost two handshakes for nothing).
            self.trimming = True
            conn.loop.call_soon(self._trim)
        conn.owner = None
        conn.pool = self
        lru[conn] = None
        stack = self.by_key.get(conn.key)
        if stack is None:
            stack = self.by_key[conn.key] = []
        stack.append(conn)
        # conn.arm("idle", timeout), with the time just read.
        conn.kind = "idle"
        conn.deadline = now + self.timeout
        if conn.timer is None:
            conn.timer = conn.loop.call_at(conn.deadline, conn._fired)
        return True

    def _trim(self) -> None:
        self.trimming = False
        lru = self.lru
        while len(lru) > self.size:
            oldest, _ = lru.popitem(last=False)
            self.by_key[oldest.key].remove(oldest)
            oldest.pool = None
            oldest.close()

    def forget(self, conn: UpstreamConn) -> None:
        if conn.pool is not self:
            return
        conn.pool = None
        if self.lru.pop(conn, 0) is None:
            stack = self.by_key.get(conn.key)
            if stack and conn in stack:
                stack.remove(conn)

    def close_all(self) -> None:
        for conn in list(self.lru):
            conn.close()


Factory = Callable[[], UpstreamConn]

__all__ = ["KeepalivePool", "Owner", "UpstreamConn", "UP_HIGH_WATER", "UP_LOW_WATER", "Waiter"]
