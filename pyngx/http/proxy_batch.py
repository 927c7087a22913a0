"""Writes held back to the end of the event loop's batch of I/O callbacks.

uvloop runs the callbacks of every socket one epoll_wait reported, then the `call_soon`
queue. A proxy under load handles a batch of requests and responses per round; writing each
one as it is made wakes its peer (the upstream, the client) once per write, and on a
virtual machine a wakeup of a sleeping CPU costs more than the write itself. Collected and
written together after the batch, the writes to one peer reach it while it is awake: the
first wakes it, the others find it running. Nothing is delayed beyond the current round.

A write is held only where nothing can come between it and the flush on the same transport
(the caller's duty): the request head of an exchange on its own upstream connection, the
whole response on a client connection that stays open. Order between held writes is kept
(one list, flushed first-in first-out); a transport closed meanwhile is skipped, as a write
to it would be dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

PENDING: list[tuple[Any, bytes]] = []
# The loop a flush is scheduled in (None: none is): a loop stopped for good with a flush
# pending does not keep another from scheduling its own.
ARMED: list[asyncio.AbstractEventLoop | None] = [None]


def write_soon(loop: asyncio.AbstractEventLoop, transport: Any, data: bytes) -> None:
    """`transport.write(data)` once the loop's current batch of callbacks is done.
    (proxy_run.Exchange.attach does the same inline, on every proxied request.)"""
    if ARMED[0] is not loop:
        ARMED[0] = loop
        loop.call_soon(flush)
    PENDING.append((transport, data))


def flush() -> None:
    ARMED[0] = None
    pending = PENDING[:]
    PENDING.clear()
    for transport, data in pending:
        if not transport.is_closing():
            transport.write(data)


__all__ = ["ARMED", "PENDING", "flush", "write_soon"]
