"""proxy_batch: writes held to the end of the loop's round, in order, skipped once closed."""

from __future__ import annotations

import asyncio

from pyngx.http import proxy_batch


class FakeTransport:
    def __init__(self, log: list[tuple[str, bytes]], name: str) -> None:
        self.log = log
        self.name = name
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))


def test_writes_after_the_round_in_order() -> None:
    log: list[tuple[str, bytes]] = []
    a, b, c = (FakeTransport(log, n) for n in "abc")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        proxy_batch.write_soon(loop, a, b"1")
        proxy_batch.write_soon(loop, b, b"2")
        proxy_batch.write_soon(loop, a, b"3")
        proxy_batch.write_soon(loop, c, b"4")
        c.closing = True  # closed before the flush: its write is dropped
        assert log == []
        await asyncio.sleep(0)
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")]
        proxy_batch.write_soon(loop, b, b"5")
        await asyncio.sleep(0)
        assert log[-1] == ("b", b"5")

    asyncio.run(main())


def test_a_new_loop_after_one_that_stopped_with_writes_held() -> None:
    log: list[tuple[str, bytes]] = []
    t = FakeTransport(log, "t")
    dead = asyncio.new_event_loop()
    proxy_batch.write_soon(dead, t, b"lost")
    dead.close()  # its flush never runs

    async def main() -> None:
        proxy_batch.write_soon(asyncio.get_running_loop(), t, b"x")
        await asyncio.sleep(0)

    asyncio.run(main())
    # The held write of the dead loop goes out with the new loop's (same transport, in order).
    assert log == [("t", b"lost"), ("t", b"x")]
