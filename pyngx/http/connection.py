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
from typing import TYPE_CHECKING, Any, ClassVar

from pyngx.core.log import ALERT, ERROR, INFO
from pyngx.http.request import Request
from pyngx.http.rewrite import set_captures
from pyngx.protocols.http1 import (
    ChunkedDecoder,
    HttpParseError,
    parse_request_head,
    request_framing,
)

if TYPE_CHECKING:
    from pyngx.http.module import HttpPort, ServerConf

# Pipelined bytes buffered while a request runs before reading pauses.
PIPELINE_LIMIT = 64 * 1024
# Flow control towards a slow client: handlers pause their source above this.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024

# Identical request heads (health checks, API clients, benchmarks) are parsed once: the
# parse, framing and header dict depend only on the bytes and the default server's settings.
HEAD_CACHE_MAX_HEAD = 2048
HEAD_CACHE_ENTRIES = 256

# Small writes wait for the end of the event loop's iteration (see HttpConnection.write).
BATCH_MAX = 16 * 1024
_BATCH: list[HttpConnection] = []

_ETIMEDOUT = "110: Connection timed out"


class HeadRecord:
    """What the head cache keeps for one request head: its parse, framing and header dict,
    and, once a request with this head was answered from memory in a way that depends only
    on these bytes (pyngx/http/replay.py, pyngx/http/cache/replay.py: `return`, a
    proxy_cache hit), the `replay` that answers the next one without the phases; or, for a
    proxied location the head always leads to, the lane that starts the next one at the
    proxy (pyngx/http/proxy_lane.py). replay(conn, record, rest) -> True (answered),
    proxy_lane.STARTED (a request runs) or False (not taken: the phases run)."""

    __slots__ = ("head", "framing", "headers", "replay")

    def __init__(self, head: Any, framing: Any, headers: dict[str, str]) -> None:
        self.head = head
        self.framing = framing
        self.headers = headers
        self.replay: Callable[[HttpConnection, HeadRecord, bytes], int] | None = None
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
        "timer_at",
        "stats",
        "stat",
        "pending",
    )
    # An HTTP/2 stream's way to send a head (h2_stream.py); found here as None without
    # the failed attribute lookup a missing attribute costs Request._write_head.
    send_fields: ClassVar[None] = None

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
        self.timer_at = 0.0
        self.pp: Any = None
        self.is_ssl = False
        self.head_started = 0.0
        # stub_status counters (http/stub_status.py): this connection's state in them.
        self.stats: Any = None
        self.stat = -1
        self.pending: bytes | None = None  # a small write waiting for the batch (write)

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
        over = worker.over_connection_limit()
        stats = self.stats = getattr(self.default.conf, "stub_stats", None)
        if stats is not None:
            stats.opened(self, handled=not over)
        if over:
            worker.worker_log(
                ALERT, f"{worker.worker_connections} worker_connections are not enough"
            )
            transport.abort()  # type: ignore[attr-defined]
            return
        self.state = _HEAD
        self._arm("header", self.default.header_timeout)
        # -- h-tls: `listen ... ssl` / `proxy_protocol`: the PROXY header and the TLS handshake
        # come first; http/ssl.py holds the transport until they are done, then gives it back.
        port = self.port
        if port.listens[0].ssl or port.proxy_protocol:
            from pyngx.http.ssl import start_preface

            start_preface(self)
        # -- end h-tls

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state in (_HEAD, _IDLE):
            if self.buf:
                self.buf += data
                data = self.buf
            # -- HTTP/2 with prior knowledge (h2c): on a `listen ... http2` / `http2 on`
            # address, a connection starting with the preface goes to pyngx.http.h2.
            if self.requests == 0 and data[:1] == b"P":
                from pyngx.http.h2 import try_prior_knowledge

                if try_prior_knowledge(self, data):
                    return
            # -- end of the HTTP/2 hook
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
        self._drop_timer()
        if self.stats is not None:
            self.stats.closed(self)
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
                # The header timer is armed below only when the head is incomplete: a
                # complete one starts its request now, which sets the timer itself.
                self.state = _HEAD
            end = data.find(b"\r\n\r\n", 0, HEAD_CACHE_MAX_HEAD)
            if end > 0:
                hit = srv.head_cache.get(data[: end + 4])
                if hit is not None:
                    replay = hit.replay
                    if replay is not None:
                        served = replay(self, hit, data[end + 4 :])
                        if served is True:  # answered (replay.py)
                            data = data[end + 4 :]
                            if not data:
                                return
                            continue
                        if served:  # a request started without the phases (proxy_lane.py)
                            if self.state != _IDLE or not self.buf:
                                return
                            data = self.buf
                            self.buf = b""
                            continue
                    self.buf = b""
                    self._start_request(hit.head, data[end + 4 :], hit)
                    if self.state != _IDLE or not self.buf:
                        return
                    data = self.buf
                    self.buf = b""
                    continue
            try:
                head = parse_request_head(
                    data,
                    header_buffer_size=srv.header_buffer_size,
                    large_header_buffers=srv.large_header_buffers,
                    underscores_in_headers=srv.underscores_in_headers,
                    ignore_invalid_headers=srv.ignore_invalid_headers,
                    merge_slashes=srv.merge_slashes,
                )
            except HttpParseError as exc:
                self._bad_request(exc, data)
                return
            if head is None:
                self.buf = data
                if self.timer_kind != "header":
                    self._arm("header", srv.header_timeout)
                if self.stats is not None:
                    self.stats.reading(self)
                return
            rest = data[head.size :]
            self.buf = b""
            key = None
            if head.size <= HEAD_CACHE_MAX_HEAD and not head.ignored:
                k = data[: head.size]
                # Only a head the cache lookup finds: CRLF lines, no leading empty lines.
                if k.find(b"\r\n\r\n") == len(k) - 4 and k[:1] not in (b"\r", b"\n"):
                    key = bytes(k)
            self._start_request(head, rest, None, key)
            if self.state != _IDLE or not self.buf:
                return
            # A pipelined request is already buffered: go on with it now.
            data = self.buf
            self.buf = b""

    def _bad_request(self, exc: HttpParseError, data: bytes) -> None:
        if self.stats is not None:
            self.stats.writing(self)
        req = Request(self, self.default)
        req.method = ""
        req.uri = ""
        req.args = ""
        req.request_uri = ""
        req.request_line = exc.request_line or _first_line(data)
        req.version = (0, 9) if exc.http09 else (1, 1)
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

    # -- replayed responses (HeadRecord.replay) ----------------------------------------------

    def replay_started(self) -> None:
        """A replay answers the head just read: counted as a request (stub_status,
        $connection_requests)."""
        self.requests += 1
        if self.stats is not None:
            self.stats.writing(self)

    def replay_done(self, rest: bytes) -> None:
        """A replayed response was written: the request is over, as close_request ends a
        kept-alive one. `rest` (pipelined bytes) is read by the caller's loop."""
        self.body = None
        if self.stats is not None:
            self.stats.waiting(self)
        if rest:
            self._cancel_timer()  # the next head's timer starts afresh, as after a request
        else:
            self.state = _IDLE
            self._arm("keepalive", self.default.conf.keepalive_timeout)

    def new_request(self, record: HeadRecord) -> Request:
        """A Request for a head the head cache knows (the fields _start_request sets)."""
        head = record.head
        framing = record.framing
        req = Request(self, self.default)
        req.method = head.method
        req.request_uri = head.request_uri
        req.request_line = head.request_line
        req.version = head.version
        req.header_list = head.headers
        req.headers = record.headers
        req.record = record
        req.request_length = head.size
        req.uri = head.uri
        req.args = head.args
        req.framing = framing
        req.host = framing.host
        req.keepalive = framing.keepalive
        return req

    def _begin_known(self, record: HeadRecord) -> Request:
        """The request of a head the head cache knows is now this connection's."""
        if self.stats is not None:
            self.stats.writing(self)
        req = self.new_request(record)
        self.request = req
        self.state = _BUSY
        self.requests += 1
        return req

    def start_known_request(self, record: HeadRecord, rest: bytes) -> Request:
        """_start_request for a head whose record says where it goes (proxy_lane.py): a
        request without a body, its phases left to the caller."""
        req = self._begin_known(record)
        self.body = None
        self.buf = rest
        self.timer_kind = ""  # _cancel_timer
        return req

    def log_request(self, req: Request) -> None:
        try:
            for log in req.loc.access_logs:
                log.write(req)
        except Exception as exc:  # a log failure must not break the connection
            self.worker_log(ALERT, f"access log failed: {exc}")

    # -- requests ---------------------------------------------------------------------------

    def _start_request(
        self, head: Any, rest: bytes, cached: HeadRecord | None = None, key: bytes | None = None
    ) -> None:
        srv = self.default
        if cached is not None:
            req = self._begin_known(cached)
            framing = cached.framing
        else:
            if self.stats is not None:
                self.stats.writing(self)
            req = Request(self, srv)
            req.method = head.method
            req.request_uri = head.request_uri
            req.request_line = head.request_line
            req.version = head.version
            # Shared with the head cache: handlers treat header_list and headers as read-only.
            req.header_list = head.headers
            headers: dict[str, str] = {}
            for name, value in head.headers:
                lname = name.lower()
                if lname not in headers:
                    headers[lname] = value
                elif lname == "cookie":
                    headers[lname] += "; " + value
            req.headers = headers
            req.request_length = head.size
            self.request = req
            self.state = _BUSY
            self.requests += 1
            req.uri = head.uri
            req.args = head.args
            req.host = ""
            if head.ignored:  # (such a head is never cached: key is None)
                for text in head.ignored:
                    req.log(INFO, text)
            try:
                framing = request_framing(head, head.target_host)
            except HttpParseError as exc:
                req.keepalive = False
                req.framing = None
                req.log(INFO, exc.reason)
                req.finalize(exc.status)
                return
            if key is not None:
                cache = srv.head_cache
                if len(cache) >= HEAD_CACHE_ENTRIES:
                    cache.clear()
                req.record = cache[key] = HeadRecord(head, framing, headers)
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
                set_captures(req, match)
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
        if req is not None and req.framing.expect_continue and body.sink is None:
            # nginx (1.22) answers the expectation when the body is first read, even if the
            # body already came with the head.
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body.max_size = max_size
        if body.decoder is not None:
            body.decoder.max_size = max_size or None
        body.attach(sink)

    # -- responses ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Small writes are sent together once the loop has run every ready callback: the
        responses to the requests read in one iteration leave in one burst of send()s. On
        loopback a send() also runs the receiver's wakeup; a burst wakes a sleeping client
        once rather than once per response, which on a VM (an IPI, a VM exit) costs more
        than the request's Python. Larger writes go at once, so the transport's flow control
        (pause_writing) is seen by the handler that wrote them."""
        if self.state == _CLOSED:
            return
        pending = self.pending
        if pending is None:
            if len(data) > BATCH_MAX:
                self.transport.write(data)
                return
            self.pending = data
            if not _BATCH:
                self.loop.call_soon(_flush_batch)
            _BATCH.append(self)
            return
        data = pending + data
        if len(data) > BATCH_MAX:
            self.pending = None
            self.transport.write(data)
        else:
            self.pending = data

    def write_parts(self, head: bytes, body: bytes) -> None:
        """`write(head + body)` without joining a large body to its head (one writev)."""
        if len(body) + len(head) <= BATCH_MAX:
            self.write(head + body)
            return
        if self.state == _CLOSED:
            return
        pending = self.pending
        if pending is not None:
            self.pending = None
            head = pending + head
        self.transport.writelines((head, body))

    def flush(self) -> None:
        """Send a pending small write now (before the transport is closed or written to
        directly)."""
        data = self.pending
        if data is not None:
            self.pending = None
            if not self.transport.is_closing():
                self.transport.write(data)

    def close_request(self, req: Request, *, abort: bool = False) -> None:
        """The request is over: log it, then the next request, discard its body, or close."""
        req.done = True
        if req.loc.access_logs:
            self.log_request(req)
        # -- h-tls: realip replaced the client address for this request only (http/realip.py)
        extra = req.extra
        if extra is not None and "realip" in extra:
            self.remote_addr, self.remote_port = extra.pop("realip")
        # -- end h-tls
        if req.cleanups is not None:
            req.run_cleanups()
        if self.request is not req:
            return
        if abort or self.state == _CLOSED:
            self.request = None
            self.state = _CLOSED
            self.pending = None
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
        if self.stats is not None:
            self.stats.waiting(self)
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
        self.flush()
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
        self.pending = None
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
            req.run_cleanups()
        if req.task is not None and not req.task.done():
            req.task.cancel()
        self.request = None
        self.flush()
        self.state = _CLOSED
        self.transport.close()

    # -- the timer --------------------------------------------------------------------------

    def _arm(self, kind: str, timeout: float) -> None:
        # The pending timer is kept when it fires no later than the new deadline (it re-arms
        # itself from `deadline`): no cancel and new handle on every request.
        self.timer_kind = kind
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        t = self.timer
        if t is None or deadline < self.timer_at:
            if t is not None:
                t.cancel()
            self.timer = self.loop.call_at(deadline, self._timer_fired)
            self.timer_at = deadline

    def _cancel_timer(self) -> None:
        # Lazily: a pending timer finds no kind and ends (see _drop_timer for closing).
        self.timer_kind = ""

    def _drop_timer(self) -> None:
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
            self.timer_at = self.deadline
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
                req.run_cleanups()
            self.abort_quietly()

    def abort_quietly(self) -> None:
        self.flush()
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
        self.flush()
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


def _flush_batch() -> None:
    batch = _BATCH[:]
    _BATCH.clear()
    for conn in batch:
        data = conn.pending
        if data is not None:
            conn.pending = None
            if not conn.transport.is_closing():
                conn.transport.write(data)


def _first_line(data: bytes) -> str:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return line[:2048].decode("latin-1")


__all__ = ["BodyReader", "HttpConnection", "HIGH_WATER", "LOW_WATER"]

_unused = (ERROR,)
