"""Stepping an upstream connect coroutine without an asyncio Task."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol


class Stepped(Protocol):
    """What ConnectStep needs of its owner: the loop, and the slot it is kept in."""

    loop: asyncio.AbstractEventLoop
    connect_task: Any


class ConnectStep:
    """Drive one connect try's coroutine without a Task (asyncio's Task costs an object in a
    WeakSet and a loop turn before its first step; this costs neither).

    The first step runs at once, inside connect_upstream; the next one when the future the
    coroutine waits for is done. cancel() throws CancelledError in, as Task.cancel() would,
    so that create_connection closes its half-made transport. Used by stream sessions
    (pyngx/stream/session.py) and proxied HTTP requests (pyngx/http/proxy_run.py).
    """

    __slots__ = ("session", "coro", "fut")

    def __init__(self, session: Stepped, coro: Coroutine[Any, Any, None]) -> None:
        self.session = session
        self.coro = coro
        self.fut: asyncio.Future[Any] | None = None

    def step(self, exc: BaseException | None) -> None:
        try:
            fut = self.coro.send(None) if exc is None else self.coro.throw(exc)
        except (StopIteration, asyncio.CancelledError):
            self._finished()  # done, or cancelled: a cancelled Task reports nothing either
            return
        except BaseException as error:  # noqa: BLE001 - what a Task would report
            self._finished()
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            self.session.loop.call_exception_handler(
                {"message": "upstream connect failed", "exception": error}
            )
            return
        self.fut = fut
        fut.add_done_callback(self._wake)

    def _wake(self, fut: asyncio.Future[Any]) -> None:
        if fut is not self.fut:
            return  # cancelled after the future was done and this call already queued
        self.fut = None
        self.step(None)

    def _finished(self) -> None:
        s = self.session
        if s.connect_task is self:
            s.connect_task = None

    def cancel(self) -> None:
        fut = self.fut
        if fut is not None:
            fut.remove_done_callback(self._wake)
            self.fut = None
            self.step(asyncio.CancelledError())


__all__ = ["ConnectStep", "Stepped"]
