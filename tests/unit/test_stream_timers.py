"""DelayQueue: many timers of one delay served by one loop timer.

A fake loop with a hand-moved clock records the loop timers the queue arms, so firing order,
cancellation, re-arming and compaction are checked without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyngx.stream import timers
from pyngx.stream.timers import COMPACT_MIN, DelayQueue


class Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Handle:
        h = Handle(when, callback)
        self.handles.append(h)
        return h

    def advance(self, to: float) -> None:
        """Move the clock and run the loop timers due by then, in order."""
        self.now = to
        while True:
            due = [h for h in self.handles if not h.cancelled and h.when <= to]
            if not due:
                return
            h = min(due, key=lambda x: x.when)
            self.handles.remove(h)
            h.callback()


def make(delay: float = 10.0) -> tuple[FakeLoop, DelayQueue]:
    loop = FakeLoop()
    return loop, DelayQueue(loop, delay)  # type: ignore[arg-type]


def test_timers_fire_in_order_after_their_delay_with_one_loop_timer() -> None:
    loop, q = make()
    fired: list[str] = []
    q.call_later(lambda: fired.append("a"))
    loop.now = 101.0
    q.call_later(lambda: fired.append("b"))
    assert len(loop.handles) == 1  # one loop timer for the queue
    loop.advance(109.9)
    assert fired == []
    loop.advance(110.0)
    assert fired == ["a"]
    loop.advance(111.0)
    assert fired == ["a", "b"]
    assert not q.entries and q.handle is None


def test_a_cancelled_timer_does_not_fire_and_the_next_one_still_does() -> None:
    loop, q = make()
    fired: list[str] = []
    a = q.call_later(lambda: fired.append("a"))
    loop.now = 102.0
    q.call_later(lambda: fired.append("b"))
    a.cancel()
    a.cancel()  # twice counts once
    assert a.cancelled() and q.cancelled == 1
    loop.advance(110.0)
    assert fired == []
    loop.advance(112.0)
    assert fired == ["b"]
    assert q.cancelled == 0


def test_a_loop_timer_a_little_early_still_runs_the_deadline() -> None:
    loop, q = make()
    fired: list[int] = []
    q.call_later(lambda: fired.append(1))
    (handle,) = loop.handles
    loop.handles.clear()
    loop.now = 110.0 - timers.SLACK / 2  # millisecond timers may fire a fraction early
    handle.callback()
    assert fired == [1]
    assert not loop.handles  # not re-armed for a deadline already served


def test_a_callback_may_arm_a_new_timer_on_the_same_queue() -> None:
    loop, q = make()
    fired: list[float] = []

    def again() -> None:
        fired.append(loop.now)
        if len(fired) < 3:
            q.call_later(again)

    q.call_later(again)
    loop.advance(110.0)
    loop.advance(120.0)
    loop.advance(130.0)
    loop.advance(140.0)
    assert fired == [110.0, 120.0, 130.0]


def test_the_queue_is_re_armed_after_it_ran_empty() -> None:
    loop, q = make(5.0)
    fired: list[str] = []
    q.call_later(lambda: fired.append("a"))
    loop.advance(105.0)
    loop.now = 200.0
    q.call_later(lambda: fired.append("b"))
    loop.advance(205.0)
    assert fired == ["a", "b"]


def test_cancelled_entries_are_compacted_so_memory_stays_bounded() -> None:
    loop, q = make(60.0)
    live = q.call_later(lambda: None)
    for _ in range(10 * COMPACT_MIN):
        q.call_later(lambda: None).cancel()
    # Without compaction 10k cancelled entries would wait here for 60 s.
    assert len(q.entries) <= 2 * COMPACT_MIN + 2
    assert live in q.entries
    fired: list[int] = []
    live.callback = lambda: fired.append(1)
    loop.advance(161.0)
    assert fired == [1]
    assert not q.entries and q.cancelled == 0


def test_queue_for_keeps_one_queue_per_delay_and_loop() -> None:
    loop = FakeLoop()
    q1 = timers.queue_for(loop, 3.0)  # type: ignore[arg-type]
    assert timers.queue_for(loop, 3.0) is q1  # type: ignore[arg-type]
    assert timers.queue_for(loop, 4.0) is not q1  # type: ignore[arg-type]
    other: Any = FakeLoop()
    assert timers.queue_for(other, 3.0) is not q1
