"""Driving a coroutine from callbacks without an asyncio Task.

A Task costs an object in a WeakSet and a loop turn before its first step. Here the first
step runs when the owner says so, inside the callback that starts the work; the next one
when the future the coroutine waits for is done. cancel() throws CancelledError in, as
Task.cancel() would, so that what the coroutine was doing (create_connection, start_tls)
cleans up after itself.

- `Stepper`: the first step at once, the outcome to a callback, done(value, error). Used for
  server-side TLS handshakes (pyngx/stream/tls.py, pyngx/http/ssl.py): `start_tls` must swap
  the transport's protocol synchronously inside `connection_made`, because uvloop starts
  reading right after it whatever pause_reading() said, and a Task would first run on the
  next loop iteration, after the ClientHello may already have gone to the plain protocol.
- `ConnectStep`: an upstream connect try of a proxied HTTP request (stream sessions connect
  through core/epoll_io.py's Connect, with no coroutine at all). It is kept
  in its owner's `connect_task` and takes itself out when it ends; a failure the coroutine did
  not handle goes to the loop's exception handler, as a Task's would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Protocol


class CoroStep:
    """The stepping; subclasses say what happens when the coroutine ends (`finished`)."""

    __slots__ = ("coro", "fut")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.fut: asyncio.Future[Any] | None = None

    def finished(self, value: Any, error: BaseException | None) -> None:
        raise NotImplementedError

    def step(self, exc: BaseException | None) -> None:
        try:
            fut = self.coro.send(None) if exc is None else self.coro.throw(exc)
        except StopIteration as stop:
            self.finished(stop.value, None)
            return
        except BaseException as error:  # noqa: BLE001 - the subclass decides what it means
            self.finished(None, error)
            return
        self.fut = fut
        fut.add_done_callback(self._wake)

    def _wake(self, fut: asyncio.Future[Any]) -> None:
        if fut is not self.fut:
            return  # cancelled after the future was done and this call already queued
        self.fut = None
        self.step(None)

    def cancel(self) -> None:
        fut = self.fut
        if fut is not None:
            fut.remove_done_callback(self._wake)
            self.fut = None
            # As Task.cancel: the awaited future is cancelled too. Left pending, it is ended
            # later by the coroutine's own clean-up (uvloop's connect waiter gets the
            # CancelledError), and logged as "Future exception was never retrieved".
            fut.cancel()
            self.step(asyncio.CancelledError())


class Stepper(CoroStep):
    """Run `coro` now; its result or error goes to done(value, error)."""

    __slots__ = ("done",)

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        done: Callable[[Any, BaseException | None], None],
    ) -> None:
        super().__init__(coro)
        self.done = done
        self.step(None)

    def finished(self, value: Any, error: BaseException | None) -> None:
        self.done(value, error)


class Stepped(Protocol):
    """What ConnectStep needs of its owner: the loop, and the slot it is kept in."""

    loop: asyncio.AbstractEventLoop
    connect_task: Any


class ConnectStep(CoroStep):
    """One connect try, kept in `session.connect_task`; the owner calls step(None) once it
    is stored there."""

    __slots__ = ("session",)

    def __init__(self, session: Stepped, coro: Coroutine[Any, Any, None]) -> None:
        super().__init__(coro)
        self.session = session

    def finished(self, value: Any, error: BaseException | None) -> None:
        s = self.session
        if s.connect_task is self:
            s.connect_task = None
        if error is None or isinstance(error, asyncio.CancelledError):
            return  # done, or cancelled: a cancelled Task reports nothing either
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise error
        s.loop.call_exception_handler({"message": "upstream connect failed", "exception": error})


__all__ = ["ConnectStep", "CoroStep", "Stepped", "Stepper"]
