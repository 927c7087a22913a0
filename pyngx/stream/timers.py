"""Timers of one fixed delay, many at once, for one loop timer.

Every stream session arms `proxy_connect_timeout` when it starts connecting and cancels it when
it ends, usually milliseconds later. A loop TimerHandle each time costs a libuv timer start
and stop and a handle close; nginx's rbtree timers cost next to nothing. Timers of one server
all have the same delay, so their deadlines come in the order they were armed: a FIFO holds
them, and one loop timer, armed for the head, serves the whole queue.

Cancelling only marks the entry (O(1)); marked entries are dropped when they reach the head,
or all at once when they outnumber the live ones, so a queue holds at most about twice the
timers that are live (plus a small constant), however long its delay.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# Entries due within this much are run now: loop timers have millisecond resolution, and a
# deadline a fraction of a millisecond away would otherwise re-arm the loop timer for nothing.
SLACK = 0.001
# Below this many cancelled entries, compacting is not worth a pass over the queue.
COMPACT_MIN = 1024


class Deadline:
    """One armed timer; cancel() like asyncio.TimerHandle.cancel()."""

    __slots__ = ("when", "callback", "queue")

    def __init__(self, when: float, callback: Callable[[], None], queue: DelayQueue) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.queue = queue

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.queue.cancelled += 1

    def cancelled(self) -> bool:
        return self.callback is None


class DelayQueue:
    """call_later(callback) for a delay fixed per queue; see the module docstring."""

    __slots__ = ("loop", "delay", "entries", "handle", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.entries: deque[Deadline] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.cancelled = 0  # entries in `entries` marked cancelled

    def call_later(self, callback: Callable[[], None]) -> Deadline:
        entry = Deadline(self.loop.time() + self.delay, callback, self)
        entries = self.entries
        entries.append(entry)
        if self.handle is None:
            self.handle = self.loop.call_at(entries[0].when, self._fire)
        elif self.cancelled > COMPACT_MIN and self.cancelled * 2 > len(entries):
            self._compact()
        return entry

    def _compact(self) -> None:
        self.entries = deque(e for e in self.entries if e.callback is not None)
        self.cancelled = 0

    def _fire(self) -> None:
        self.handle = None
        entries = self.entries
        due = self.loop.time() + SLACK
        while entries:
            entry = entries[0]
            callback = entry.callback
            if callback is None:
                entries.popleft()
                self.cancelled -= 1
                continue
            if entry.when > due:
                break
            entries.popleft()
            entry.callback = None
            callback()  # may arm new entries: they go behind, and `handle` is None here
            entries = self.entries  # a callback's call_later may have compacted
        if entries and self.handle is None:
            self.handle = self.loop.call_at(entries[0].when, self._fire)


_queues: dict[float, DelayQueue] = {}


def queue_for(loop: asyncio.AbstractEventLoop, delay: float) -> DelayQueue:
    """The worker's queue for `delay` (one loop per worker process)."""
    queue = _queues.get(delay)
    if queue is None or queue.loop is not loop:
        queue = _queues[delay] = DelayQueue(loop, delay)
    return queue
