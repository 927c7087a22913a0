"""ConnectStep: a stream session's connect coroutine driven without a Task.

The session is a stand-in holding only what ConnectStep touches (`loop`, `connect_task`);
the coroutines are small ones awaiting futures of a real event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pyngx.core.stepper import ConnectStep


class FakeSession:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.connect_task: Any = None


@pytest.fixture
def loop() -> Any:
    lp = asyncio.new_event_loop()
    errors: list[dict[str, Any]] = []
    lp.set_exception_handler(lambda _loop, context: errors.append(context))
    lp.errors = errors  # type: ignore[attr-defined]
    yield lp
    lp.close()


def run_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Run the callbacks queued so far (and those they queue, a few turns deep)."""
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))


def start(session: FakeSession, coro: Any) -> ConnectStep:
    step = ConnectStep(session, coro)  # type: ignore[arg-type]
    session.connect_task = step
    step.step(None)
    return step


def test_waits_for_the_future_then_finishes_and_forgets_itself(loop: Any) -> None:
    s = FakeSession(loop)
    fut = loop.create_future()
    seen: list[str] = []

    async def connect() -> None:
        seen.append(await fut)

    start(s, connect())
    assert seen == [] and s.connect_task is not None
    fut.set_result("up")
    run_soon(loop)
    assert seen == ["up"]
    assert s.connect_task is None
    assert loop.errors == []


def test_a_coroutine_done_at_once_finishes_in_the_first_step(loop: Any) -> None:
    s = FakeSession(loop)
    seen: list[int] = []

    async def connect() -> None:
        seen.append(1)

    start(s, connect())
    assert seen == [1]
    assert s.connect_task is None


def test_cancel_throws_cancelled_error_into_the_waiting_coroutine(loop: Any) -> None:
    s = FakeSession(loop)
    fut = loop.create_future()
    seen: list[str] = []

    async def connect() -> None:
        try:
            await fut
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    step = start(s, connect())
    step.cancel()
    assert seen == ["cancelled"]
    assert s.connect_task is None
    # As Task.cancel: the awaited future is cancelled too, so whoever would have ended it
    # later (uvloop's connect) leaves it alone, and no "exception was never retrieved".
    assert fut.cancelled()
    run_soon(loop)
    assert seen == ["cancelled"]
    assert loop.errors == []


def test_cancel_after_the_future_is_done_ignores_the_queued_wake_up(loop: Any) -> None:
    s = FakeSession(loop)
    fut = loop.create_future()
    seen: list[str] = []

    async def connect() -> None:
        try:
            seen.append(await fut)
        except asyncio.CancelledError:
            seen.append("cancelled")

    step = start(s, connect())
    fut.set_result("up")  # its done callback is queued, not yet run
    step.cancel()
    run_soon(loop)
    assert seen == ["cancelled"]
    assert loop.errors == []  # no "cannot reuse already awaited coroutine"


def test_an_escaping_exception_goes_to_the_loop_exception_handler(loop: Any) -> None:
    s = FakeSession(loop)
    fut = loop.create_future()

    async def connect() -> None:
        await fut
        raise ValueError("bug")

    start(s, connect())
    fut.set_result(None)
    run_soon(loop)
    assert s.connect_task is None
    assert [type(e["exception"]) for e in loop.errors] == [ValueError]


def test_a_retry_started_inside_the_step_is_not_forgotten(loop: Any) -> None:
    s = FakeSession(loop)
    retry = object()

    async def connect() -> None:
        # What _connect_failed -> connect_upstream does when a connect fails at once.
        s.connect_task = retry

    start(s, connect())
    assert s.connect_task is retry
