"""KeepalivePool.wait: a connection given back in the same round goes to a waiting exchange
(of its peer), the others open their own at the round's end."""

from __future__ import annotations

import asyncio
from typing import Any

from pyngx.http.upstream_pool import KeepalivePool, UpstreamConn


class FakeTransport:
    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FakeExchange:
    def __init__(self, done: bool = False) -> None:
        self.got: Any = None
        self.opened = False
        self.done = done

    def take(self, conn: UpstreamConn) -> bool:
        if self.done:
            return False
        self.got = conn
        return True

    def open_new(self) -> None:
        self.opened = True


def _conn(loop: asyncio.AbstractEventLoop, key: str) -> UpstreamConn:
    conn = UpstreamConn(loop, key)
    conn.transport = FakeTransport()  # type: ignore[assignment]
    conn.requests = 1
    return conn


def test_waiters_take_given_back_connections_then_open() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = KeepalivePool(2, 100, 60.0, 3600.0)
        gone, first, second, other = (
            FakeExchange(done=True),
            FakeExchange(),
            FakeExchange(),
            FakeExchange(),
        )
        for ex, key in ((gone, "a"), (first, "a"), (second, "a"), (other, "b")):
            assert pool.get(key) is None
            pool.wait(key, ex, loop)
        c1 = _conn(loop, "a")
        assert pool.put(c1)  # the finished exchange is passed over
        assert first.got is c1 and gone.got is None
        c2 = _conn(loop, "c")
        assert pool.put(c2)  # no waiter for its peer: cached
        assert pool.get("c") is c2
        await asyncio.sleep(0)
        assert second.opened and other.opened and not first.opened
        assert pool.waiters == {}
        c3 = _conn(loop, "a")
        assert pool.put(c3)  # nobody waits any more: cached
        assert pool.get("a") is c3

    asyncio.run(main())


def test_a_spent_connection_is_not_handed_over() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = KeepalivePool(2, 1, 60.0, 3600.0)  # keepalive_requests 1
        ex = FakeExchange()
        pool.wait("a", ex, loop)
        assert not pool.put(_conn(loop, "a"))
        assert ex.got is None
        await asyncio.sleep(0)
        assert ex.opened

    asyncio.run(main())
