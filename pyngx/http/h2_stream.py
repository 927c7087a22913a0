"""One HTTP/2 stream as its Request sees it: the `conn` of a request that came over HTTP/2.

It offers what request.py, static.py, error_page.py and the proxy use on an HttpConnection:
the connection's facts (`worker`, `conn_id`, `remote_addr`, `server_port`, `is_ssl`,
`transport`, ...), `write(body bytes)`, `send_fields(status, fields, body, last)` (the head as
a HEADERS frame: request.py calls it instead of writing HTTP/1 head bytes), `close_request`,
`abort`, `read_body(sink, max_size)`, `writing_paused`/`drain()`/`on_drain`, `set_timer`,
`worker_log`.

Body bytes are queued here and leave as DATA frames when both flow-control windows (the
stream's and the connection's) allow; `writing_paused` is true while bytes wait for a window
or the socket is full, so a streaming handler pauses exactly as on HTTP/1. Request body DATA
is kept (within the preread window nginx announces) until a consumer calls `read_body`; only
then is its window handed back, so an unread body never grows past `http2_body_preread_size`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from pyngx.core.log import ALERT, ERROR, INFO

if TYPE_CHECKING:
    from pyngx.http.h2 import H2Connection
    from pyngx.http.request import Request

_ETIMEDOUT = "110: Connection timed out"
# Fields nginx's HTTP/2 header filter never sends (connection-specific in HTTP/1).
_HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)


class H2Stream:
    __slots__ = (
        "h2c",
        "sid",
        "request",
        "worker",
        "loop",
        "conn_id",
        "remote_addr",
        "remote_port",
        "server_addr",
        "server_port",
        "family",
        "is_ssl",
        "pp",
        "transport",
        "port",
        "default",
        "pending",
        "pending_size",
        "end_queued",
        "ended",
        "closed",
        "in_ended",
        "body_pieces",
        "body_unacked",
        "body_size",
        "body_sink",
        "body_max",
        "skip_body",
        "on_drain",
        "drain_waiters",
        "timer",
        "timer_kind",
        "deadline",
        "frame_limit",
        "blocked",
    )

    def __init__(self, h2c: H2Connection, sid: int, in_ended: bool) -> None:
        self.h2c = h2c
        self.sid = sid
        self.request: Request | None = None
        self.worker = h2c.worker
        self.loop = h2c.loop
        self.conn_id = h2c.conn_id
        self.remote_addr = h2c.remote_addr
        self.remote_port = h2c.remote_port
        self.server_addr = h2c.server_addr
        self.server_port = h2c.server_port
        self.family = h2c.family
        self.is_ssl = h2c.is_ssl
        self.pp = h2c.pp
        self.transport = h2c.transport
        self.port = h2c.port
        self.default = h2c.default
        self.pending: deque[memoryview] = deque()
        self.pending_size = 0
        self.end_queued = False  # the response is complete: END_STREAM after the queue
        self.ended = False  # END_STREAM sent
        self.closed = False  # over on our side (ended or reset)
        self.in_ended = in_ended  # the client's END_STREAM arrived
        self.body_pieces: list[bytes] = []
        self.body_unacked = 0  # flow-controlled bytes kept, their window not handed back
        self.body_size = 0
        self.body_sink: Callable[[bytes | None], None] | None = None
        self.body_max = 0
        self.skip_body = False
        self.on_drain: Callable[[], None] | None = None
        self.drain_waiters: list[asyncio.Future[None]] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""
        self.deadline = 0.0
        self.frame_limit = 8192
        self.blocked = False  # body bytes wait for a window (set and cleared by H2Connection.pump)

    # -- what handlers read on r.conn -------------------------------------------------------

    @property
    def requests(self) -> int:
        return self.h2c.requests

    @property
    def writing_paused(self) -> bool:
        return self.pending_size > 0 or self.h2c.writing_paused

    async def drain(self) -> None:
        if self.closed or not self.writing_paused:
            return
        fut = self.loop.create_future()
        if self.drain_waiters is None:
            self.drain_waiters = []
        self.drain_waiters.append(fut)
        await fut

    def wake(self) -> None:
        """The stream may write again (or is gone): release drain() and call on_drain."""
        if not self.closed and self.writing_paused:
            return
        waiters, self.drain_waiters = self.drain_waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)
        cb = self.on_drain
        if cb is not None and not self.closed:
            cb()

    def worker_log(self, level: int, message: str) -> None:
        self.h2c.worker_log(level, message)

    # -- the response ----------------------------------------------------------------------

    def send_fields(
        self, status: int, fields: list[tuple[str, str]], body: bytes, last: bool
    ) -> int:
        """The response head as a HEADERS frame (then `body`; `last`: the response ends with
        it). Returns the bytes this put on the wire for the head, plus len(body)."""
        if self.closed:
            return 0
        headers = [(b":status", b"%d" % status)]
        for name, value in fields:
            low = name.lower()
            if low in _HOP_BY_HOP:
                continue
            headers.append((low.encode("latin-1", "replace"), value.encode("latin-1", "replace")))
        loc = self.request.loc if self.request is not None else None
        self.frame_limit = getattr(loc, "http2_chunk_size", 8192)
        end = last and not body
        h2c = self.h2c
        batch = h2c.begin_batch()  # HEADERS and the first DATA in one write
        try:
            size = h2c.send_headers(self, headers, end)
            if self.closed:  # reset by the client meanwhile: the body goes nowhere
                if self.request is not None:
                    self.request.body_sent -= len(body)
                return size
            if end:
                self.ended = True
                h2c.stream_output_done(self)
                return size
            if body:
                if last:
                    self.end_queued = True
                self.write(body)
            return size + len(body)
        finally:
            if batch:
                h2c.end_batch()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.closed:
            req = self.request
            if req is not None:  # $body_bytes_sent counts what went out
                req.body_sent -= len(data)
                req.bytes_sent -= len(data)
            return
        self.pending.append(memoryview(data))
        self.pending_size += len(data)
        self.h2c.pump(self)

    def close_request(self, req: Request, *, abort: bool = False) -> None:
        """The request is over: log it, end the stream (or reset it: 444, 499, a crash)."""
        req.done = True
        try:
            for log in req.loc.access_logs:
                log.write(req)
        except Exception as exc:  # a log failure must not break the connection
            self.worker_log(ALERT, f"access log failed: {exc}")
        self._cancel_timer()
        self._discard_body()
        if self.closed:
            return
        if abort:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        if not self.ended:
            self.end_queued = True
            self.h2c.pump(self)

    def abort(self) -> None:
        """A handler gives up mid-response: RST_STREAM, as nginx's close_stream does."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def reset(self, code: int) -> None:
        if self.closed:
            return
        self.drop_pending()
        self.h2c.reset_stream(self, code)

    def drop_pending(self) -> None:
        """Queued body bytes that will never leave: $body_bytes_sent counts what was sent."""
        n = self.pending_size
        if n:
            self.pending.clear()
            self.pending_size = 0
            req = self.request
            if req is not None:
                req.body_sent -= n
                req.bytes_sent -= n

    # -- the request body ------------------------------------------------------------------

    def read_body(self, sink: Callable[[bytes | None], None], max_size: int) -> None:
        """Deliver the request body to `sink` (pieces, then None), as HttpConnection does."""
        self.body_max = max_size
        if self.skip_body:
            sink(None)
            return
        if max_size and self.body_size > max_size:
            self._too_large()
            return
        self.body_sink = sink
        pieces, self.body_pieces = self.body_pieces, []
        unacked, self.body_unacked = self.body_unacked, 0
        if unacked:
            self.h2c.ack(self, unacked)
        for p in pieces:
            sink(p)
        if self.in_ended:
            sink(None)
        elif self.request is not None:
            req = self.request
            loc = req.loc
            cl = req.framing.content_length
            buffer = loc.client_body_buffer_size
            want = cl + 1 if cl is not None and cl < buffer else buffer
            self.h2c.open_window(self, max(want, self.h2c.preread) - self.body_size)
            self._arm("body", loc.client_body_timeout)

    def data_received(self, data: bytes, flow_len: int) -> None:
        if self.skip_body or self.closed:
            self.h2c.ack(self, flow_len)
            return
        n = len(data)
        self.body_size += n
        req = self.request
        if req is not None:
            req.request_length += n
        if self.body_max and self.body_size > self.body_max:
            self.h2c.ack(self, flow_len)
            self._too_large()
            return
        sink = self.body_sink
        if sink is not None:
            self.h2c.ack(self, flow_len)
            if self.timer_kind == "body" and req is not None:
                self.deadline = self.loop.time() + req.loc.client_body_timeout
            if data:
                sink(data)
        else:
            self.body_unacked += flow_len
            if data:
                self.body_pieces.append(data)

    def end_of_body(self) -> None:
        if self.in_ended:
            return
        self.in_ended = True
        sink = self.body_sink
        if sink is not None and not self.skip_body:
            if self.timer_kind == "body":
                self._cancel_timer()
            sink(None)

    def _too_large(self) -> None:
        req = self.request
        self._discard_body()
        if req is None or req.done:
            return
        # nginx: without Content-Length the limit is found while reading (413); a declared
        # length over the limit was answered 413 at the location already.
        req.log(ERROR, f"client intended to send too large chunked body: {self.body_size} bytes")
        if not req.header_sent:
            req.finalize(413)
        else:
            self.terminate(0)

    def _discard_body(self) -> None:
        """Nobody will read the rest of the body: hand its windows back, drop the bytes."""
        self.skip_body = True
        self.body_pieces = []
        unacked, self.body_unacked = self.body_unacked, 0
        if unacked:
            self.h2c.ack(self, unacked)
        sink, self.body_sink = self.body_sink, None
        if sink is not None and not self.in_ended:
            sink(b"")  # wake a consumer waiting for bytes, as HttpConnection does on EOF

    # -- the end of a request that did not finish normally ---------------------------------

    def terminate(self, status: int) -> None:
        """The client is gone (reset, closed) or timed out: the request ends here, logged
        with `status` when nothing was sent yet (nginx's 499/408), its task cancelled."""
        req = self.request
        self._cancel_timer()
        if req is not None and not req.done:
            if req.on_abort is not None:
                req.on_abort()
            if not req.header_sent and status:
                req.status = status
            req.done = True
            try:
                for log in req.loc.access_logs:
                    log.write(req)
            except Exception as exc:
                self.worker_log(ALERT, f"access log failed: {exc}")
        self._discard_body()
        task = req.task if req is not None else None
        if task is not None and not task.done():
            # Not now: a task created in this same read has not started yet, and cancelled
            # before its first step its `finally` (closing a file) would never run.
            self.loop.call_soon(task.cancel)

    # -- timers: client_body_timeout while reading the body, send_timeout while blocked ----

    def set_timer(self, kind: str, timeout: float) -> None:
        self._arm(kind, timeout)

    def _arm(self, kind: str, timeout: float) -> None:
        self.timer_kind = kind
        self.deadline = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)

    def _cancel_timer(self) -> None:
        self.timer_kind = ""
        t = self.timer
        if t is not None:
            t.cancel()
            self.timer = None

    def _timer_fired(self) -> None:
        self.timer = None
        kind = self.timer_kind
        if not kind or self.closed:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)
            return
        self.timer_kind = ""
        req = self.request
        if kind == "body":
            if self.in_ended or self.skip_body:
                return
            what = "reading client request body"
            status = 408
        else:
            if not self.writing_paused:
                return
            what = "sending response to client"
            status = 408
        if req is not None and not req.done:
            req.log(INFO, f"client timed out ({_ETIMEDOUT}) while {what}")
        self.drop_pending()
        self.terminate(status)
        # nginx resets a timed-out stream with PROTOCOL_ERROR (ngx_http_v2_close_stream).
        self.reset(ErrorCodes.PROTOCOL_ERROR)


__all__ = ["H2Stream"]
