"""HttpConnection: one client connection speaking HTTP/1.x (an asyncio Protocol, callbacks only).

States: reading a request head → a request runs (its body read on demand or discarded) →
the response is written → keepalive (next head, maybe already buffered: pipelining) or close.
While a request runs, further bytes are only buffered (reading pauses past a limit), so
pipelined requests are answered in order. One lazy timer per connection serves every timeout
(header, body, keepalive, send): it re-arms itself from `deadline` instead of being
cancelled and recreated on each read.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyngx.core.log import ALERT, ERROR, INFO
from pyngx.http.request import Request
from pyngx.protocols.http1 import (
    ChunkedDecoder,
    HttpParseError,
    parse_request_head,
    request_framing,
    split_target,
)

if TYPE_CHECKING:
    from pyngx.http.module import HttpPort, ServerConf

# Pipelined bytes buffered while a request runs before reading pauses.
PIPELINE_LIMIT = 64 * 1024
# Flow control towards a slow client: handlers pause their source above this.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

_ETIMEDOUT = "110: Connection timed out"
_IDLE, _HEAD, _BUSY, _DISCARD, _CLOSED = range(5)


class BodyReader:
    """The request body as it arrives: Content-Length or chunked framing, bounded by
    client_max_body_size. Bytes are kept until a consumer takes them (`sink`)."""

    __slots__ = ("remaining", "decoder", "pieces", "size", "done", "sink", "rest", "max_size")

    def __init__(self, content_length: int | None, chunked: bool, max_size: int) -> None:
        self.remaining = content_length or 0
        self.decoder = ChunkedDecoder(max_size or None) if chunked else None
        self.pieces: list[bytes] = []
        self.size = 0
        self.done = not chunked and not content_length
        self.sink: Callable[[bytes | None], None] | None = None
        self.rest = b""
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        """Raises HttpParseError on bad chunked framing or an oversized chunked body."""
        if self.decoder is not None:
            pieces = self.decoder.feed(data)
            if self.decoder.done:
                self.done = True
                self.rest = bytes(self.decoder.rest)
        else:
            n = self.remaining
            if len(data) >= n:
                pieces = [data[:n]] if n else []
                self.rest = data[n:]
                self.remaining = 0
                self.done = True
            else:
                pieces = [data]
                self.remaining = n - len(data)
        for p in pieces:
            if p:
                self.size += len(p)
                if self.sink is not None:
                    self.sink(p)
                else:
                    self.pieces.append(p)
        if self.done and self.sink is not None:
            self.sink(None)

    def attach(self, sink: Callable[[bytes | None], None]) -> None:
        """Deliver what is buffered and everything after it; `None` marks the end."""
        self.sink = sink
        pieces, self.pieces = self.pieces, []
        for p in pieces:
            sink(p)
        if self.done:
            sink(None)


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "worker",
        "port",
        "transport",
        "buf",
        "state",
        "request",
        "requests",
        "remote_addr",
        "remote_port",
        "server_addr",
        "server_port",
        "family",
        "conn_id",
        "deadline",
        "timer",
        "timer_kind",
        "body",
        "reading_paused",
        "writing_paused",
        "drain_waiters",
        "is_ssl",
        "pp",
        "default",
        "loop",
        "head_started",
        "on_drain",
        "by_addr",
    )

    def __init__(self, worker: Any, port: HttpPort, by_addr: dict[str, Any] | None = None) -> None:
        self.worker = worker
        self.by_addr = by_addr
        self.port = port
        self.default: ServerConf = port.default
        self.buf = b""
        self.state = _IDLE
        self.request: Request | None = None
        self.requests = 0
        self.body: BodyReader | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.drain_waiters: list[asyncio.Future[None]] | None = None
        self.on_drain: Callable[[], None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""
        self.deadline = 0.0
        self.pp: Any = None
        self.is_ssl = False
        self.head_started = 0.0

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        worker = self.worker
        self.loop = worker.loop
        self.conn_id = worker.next_connection_id()
        sock = transport.get_extra_info("socket")
        self.family = sock.family if sock is not None else socket.AF_INET
        peer = transport.get_extra_info("peername")
        if self.family == socket.AF_UNIX:
            self.remote_addr, self.remote_port = "unix:", 0
        else:
            self.remote_addr, self.remote_port = peer[0], peer[1]
        lo = self.port.listens[0]
        if lo.wildcard:
            name = transport.get_extra_info("sockname")
            self.server_addr, self.server_port = name[0], name[1]
            by_addr = self.by_addr
            if by_addr:
                target = by_addr.get(self.server_addr)
                if target is not None:
                    self.port = target
                    self.default = target.default
        else:
            self.server_addr, self.server_port = lo.addr.host, lo.addr.port
        self.is_ssl = transport.get_extra_info("sslcontext") is not None
        worker.http_connections.add(self)
        if worker.over_connection_limit():
            worker.worker_log(
                ALERT, f"{worker.worker_connections} worker_connections are not enough"
            )
            transport.abort()  # type: ignore[attr-defined]
            return
        self.state = _HEAD
        self._arm("header", self.default.header_timeout)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in (_HEAD, _IDLE):
            if self.buf:
                self.buf += data
                data = self.buf
            self._read_head(data)
        elif self.body is not None and not self.body.done:
            self._feed_body(data)
        elif state == _CLOSED:
            return
        else:
            # Pipelined bytes while a request runs: kept for later, bounded.
            self.buf += data
            if len(self.buf) > PIPELINE_LIMIT and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        req = self.request
        if req is not None and not req.done:
            # The client closed its side mid-request: nginx finalizes with 499 when it
            # notices (here: now); a response already being written is cut short.
            body = self.body
            if body is not None and not body.done:
                req.log(INFO, "client prematurely closed connection")
                if body.sink is not None:
                    body.sink(b"")  # wake a consumer waiting for bytes
            self._client_gone(req)
            return None
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        req = self.request
        self.state = _CLOSED
        if req is not None and not req.done:
            self._client_gone(req)
        self._cancel_timer()
        self.worker.http_connections.discard(self)
        self.worker.http_connection_closed(self)
        waiters, self.drain_waiters = self.drain_waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiters, self.drain_waiters = self.drain_waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)
        cb = self.on_drain
        if cb is not None:
            cb()

    async def drain(self) -> None:
        if not self.writing_paused or self.state == _CLOSED:
            return
        fut = self.loop.create_future()
        if self.drain_waiters is None:
            self.drain_waiters = []
        self.drain_waiters.append(fut)
        await fut

    # -- reading requests -------------------------------------------------------------------

    def _read_head(self, data: bytes) -> None:
        srv = self.default
        while True:
            if self.state == _IDLE:
                self.state = _HEAD
                self._arm("header", srv.header_timeout)
            try:
                head = parse_request_head(
                    data,
                    header_buffer_size=srv.header_buffer_size,
                    large_header_buffers=srv.large_header_buffers,
                    underscores_in_headers=srv.underscores_in_headers,
                    ignore_invalid_headers=srv.ignore_invalid_headers,
                )
            except HttpParseError as exc:
                self._bad_request(exc, data)
                return
            if head is None:
                self.buf = data
                return
            rest = data[head.size :]
            self.buf = b""
            self._start_request(head, rest)
            if self.state != _IDLE or not self.buf:
                return
            # A pipelined request is already buffered: go on with it now.
            data = self.buf
            self.buf = b""

    def _bad_request(self, exc: HttpParseError, data: bytes) -> None:
        req = Request(self, self.default)
        req.method = ""
        req.uri = ""
        req.args = ""
        req.request_uri = ""
        req.request_line = _first_line(data)
        req.version = (1, 1)
        req.headers = {}
        req.header_list = []
        req.host = ""
        req.keepalive = False
        req.framing = None
        req.request_length = len(data)
        self.request = req
        self.state = _BUSY
        req.log(INFO, exc.reason)
        req.finalize(exc.status)

    def _start_request(self, head: Any, rest: bytes) -> None:
        srv = self.default
        req = Request(self, srv)
        req.method = head.method
        req.request_uri = head.target
        req.request_line = head.request_line
        req.version = head.version
        req.header_list = head.headers
        headers: dict[str, str] = {}
        for name, value in head.headers:
            key = name.lower()
            if key not in headers:
                headers[key] = value
            elif key == "cookie":
                headers[key] += "; " + value
        req.headers = headers
        req.request_length = head.size
        self.request = req
        self.state = _BUSY
        self.requests += 1
        req.uri = req.args = req.host = ""
        try:
            uri, args, target_host = split_target(head.target, merge_slashes=srv.merge_slashes)
            req.uri, req.args = uri, args
            framing = request_framing(head, target_host)
        except HttpParseError as exc:
            req.keepalive = False
            req.framing = None
            req.log(INFO, exc.reason)
            req.finalize(exc.status)
            return
        req.framing = framing
        req.host = framing.host
        req.keepalive = framing.keepalive
        # The virtual server by Host (nginx: from the request line's host first).
        if framing.host and len(self.port.servers) > 1:
            server, match = self.port.names.find(framing.host)
            if server is not srv:
                req.srv = server
                req.loc = server.conf
            if match is not None:
                req.captures = match
        if framing.chunked or framing.content_length:
            self.body = BodyReader(framing.content_length, framing.chunked, 0)
            self._arm("body", req.loc.client_body_timeout)
            if rest:
                self._feed_body(rest)
                if self.state == _CLOSED:
                    return
        else:
            self.body = None
            self.buf = rest
            self._cancel_timer()
        req.run()

    def _feed_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        try:
            body.feed(data)
        except HttpParseError as exc:
            req = self.request
            if req is not None:
                req.log(INFO, exc.reason)
                req.keepalive = False
                if not req.header_sent:
                    req.finalize(exc.status)
                    return
            self.abort()
            return
        if body.done:
            self.buf = body.rest
            body.rest = b""
            if self.state == _DISCARD:
                self._next_request()
        else:
            self.deadline = self.loop.time() + (
                self.request.loc.client_body_timeout if self.request else 60.0
            )

    def read_body(self, sink: Callable[[bytes | None], None], max_size: int) -> None:
        """Deliver the request body to `sink` (pieces, then None). `100 Continue` is sent now,
        as nginx sends it when the body is first read."""
        req = self.request
        body = self.body
        if body is None:
            sink(None)
            return
        if req is not None and req.framing.expect_continue and body.size == 0 and not body.done:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body.max_size = max_size
        if body.decoder is not None:
            body.decoder.max_size = max_size or None
        body.attach(sink)

    # -- responses ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.state != _CLOSED:
            self.transport.write(data)

    def close_request(self, req: Request, *, abort: bool = False) -> None:
        """The request is over: log it, then the next request, discard its body, or close."""
        req.done = True
        try:
            for log in req.loc.access_logs:
                log.write(req)
        except Exception as exc:  # a log failure must not break the connection
            self.worker_log(ALERT, f"access log failed: {exc}")
        if self.request is not req:
            return
        if abort or self.state == _CLOSED:
            self.request = None
            self.state = _CLOSED
            self.transport.abort()  # type: ignore[attr-defined]
            return
        if not req.keepalive or self.worker.draining:
            self._close_after_write()
            return
        body = self.body
        if body is not None and not body.done:
            if body.sink is not None:
                # A consumer (the proxy) stopped taking the body: nothing to reuse.
                self._close_after_write()
                return
            # nginx discards the rest of an unread body before the next request.
            body.pieces = []
            body.sink = _discard
            self.state = _DISCARD
            self.request = None
            self._arm("discard", req.loc.client_body_timeout)
            return
        self._next_request()

    def _next_request(self) -> None:
        self.request = None
        self.body = None
        self.state = _IDLE
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buf:
            data, self.buf = self.buf, b""
            # Not from inside the previous request's stack: keeps recursion flat.
            self.loop.call_soon(self._resume_pipeline, data)
            self.state = _HEAD
            return
        self._arm("keepalive", self.default.conf.keepalive_timeout)

    def _resume_pipeline(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        if self.buf:
            data += self.buf
            self.buf = b""
        self._read_head(data)

    def _close_after_write(self) -> None:
        self.state = _CLOSED
        self.request = None
        self._cancel_timer()
        try:
            self.transport.write_eof()  # type: ignore[attr-defined]
        except (OSError, RuntimeError, NotImplementedError, AttributeError):
            pass
        self.transport.close()

    def close_if_idle(self) -> None:
        """Graceful shutdown: a connection between requests is closed now; a busy one closes
        after its response (close_request sees worker.draining)."""
        if self.state == _IDLE or (self.state == _HEAD and not self.buf):
            self.abort_quietly()

    def abort(self) -> None:
        self.state = _CLOSED
        self._cancel_timer()
        self.transport.abort()  # type: ignore[attr-defined]

    def _client_gone(self, req: Request) -> None:
        if not req.done:
            if req.on_abort is not None:
                req.on_abort()
            if not req.header_sent:
                req.status = 499
            req.done = True
            for log in req.loc.access_logs:
                log.write(req)
        if req.task is not None and not req.task.done():
            req.task.cancel()
        self.request = None
        self.state = _CLOSED
        self.transport.close()

    # -- the timer --------------------------------------------------------------------------

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
        if not kind or self.state == _CLOSED:
            return
        now = self.loop.time()
        if now < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timer_fired)
            return
        if kind == "keepalive":
            self.abort_quietly()
        elif kind == "header":
            if self.buf or self.requests == 0:
                self.worker_log(
                    INFO,
                    f"client timed out ({_ETIMEDOUT}) while reading client request headers",
                )
            self.abort_quietly()
        elif kind in ("body", "discard"):
            req = self.request
            if req is not None and not req.done:
                req.log(
                    INFO,
                    f"client timed out ({_ETIMEDOUT}) while reading client request body",
                )
                req.status = 408
                req.keepalive = False
                req.done = True
                for log in req.loc.access_logs:
                    log.write(req)
            self.abort_quietly()

    def abort_quietly(self) -> None:
        self.state = _CLOSED
        self.request = None
        self.timer_kind = ""
        self.transport.close()

    def detach(self) -> bytes:
        """Hand the connection to a tunnel (an upgraded request, pyngx/http/proxy_tunnel.py):
        no more timers or parsing here; returns what the client sent after the request head.
        The tunnel sets its own protocol on `transport`, forwards connection_lost here, and
        ends the request with close_request."""
        self._cancel_timer()
        self.on_drain = None
        data, self.buf = self.buf, b""
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def set_timer(self, kind: str, timeout: float) -> None:
        """For handlers: e.g. send_timeout while a slow client drains a response."""
        self._arm(kind, timeout)

    def worker_log(self, level: int, message: str) -> None:
        log = self.default.conf.error_log
        if log.enabled(level):
            log.log(
                level,
                message,
                self.conn_id,
                f", client: {self.remote_addr}, server: {self.server_addr}:{self.server_port}",
            )


def _discard(piece: bytes | None) -> None:
    return None


def _first_line(data: bytes) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line[:2048].decode("latin-1")


__all__ = ["BodyReader", "HttpConnection", "HIGH_WATER", "LOW_WATER"]

_unused = (ERROR,)
