"""One proxied request: nginx's ngx_http_upstream state machine, callbacks only.

`Exchange` is the request's `r.upstream`. It picks a peer (the group's balancer), takes an idle
connection from the keepalive cache or opens one, writes the request head (built once,
pyngx/http/proxy.py) and body, parses the response head, then relays the body to the client;
on a failure before the response head was passed on, `proxy_next_upstream` decides between
another peer and an error (502, 504, ...), exactly where nginx's ngx_http_upstream_next does.

No task runs per request: the upstream connection's Protocol callbacks (upstream_pool.py) call
the `up_*` methods; only opening a new connection runs a small coroutine. Flow control: with
`proxy_buffering off` upstream reading pauses as soon as the client's transport is above its
high-water mark; with `on` it goes on reading ahead (into the client transport's buffer, i.e.
memory: pyngx has no temporary files) up to `readahead` bytes, so a slow client does not hold
the upstream connection for small and medium responses (see proxy.py for the bound).

Per-try bookkeeping (`TryState`, proxy_state.py) feeds the $upstream_* variables. Opening a
connection is proxy_connect.py's, the response head copy proxy_headers.py's.
"""

from __future__ import annotations

import asyncio
import errno
from time import time as _time
from typing import TYPE_CHECKING, Any

from pyngx.core.log import ERROR, INFO, WARN, strerror
from pyngx.core.stepper import ConnectStep
from pyngx.http.proxy_batch import ARMED, PENDING
from pyngx.http.proxy_batch import flush as flush_batch
from pyngx.http.proxy_connect import Connector
from pyngx.http.proxy_headers import copy_headers, redirect_keep
from pyngx.http.proxy_response import (
    HEAD_CACHE,
    BadHead,
    ChunkedDecoder,
    ChunkedError,
    Head,
    parse_head,
)
from pyngx.http.proxy_state import TryState, UpstreamVars
from pyngx.http.request import DATE, DONE
from pyngx.http.upstream_pool import UpstreamConn

if TYPE_CHECKING:
    from pyngx.http.proxy import ProxyConf, Target
    from pyngx.http.request import Request

# ngx_http_upstream failure types (NGX_HTTP_UPSTREAM_FT_*): proxy_next_upstream's bits.
FT_ERROR = 0x2
FT_TIMEOUT = 0x4
FT_INVALID_HEADER = 0x8
FT_HTTP_500 = 0x10
FT_HTTP_502 = 0x20
FT_HTTP_503 = 0x40
FT_HTTP_504 = 0x80
FT_HTTP_403 = 0x100
FT_HTTP_404 = 0x200
FT_HTTP_429 = 0x400
FT_NON_IDEMPOTENT = 0x4000
FT_NOLIVE = 0x40000000
FT_OFF = 0x80000000
FT_BY_STATUS = {
    500: FT_HTTP_500,
    502: FT_HTTP_502,
    503: FT_HTTP_503,
    504: FT_HTTP_504,
    403: FT_HTTP_403,
    404: FT_HTTP_404,
    429: FT_HTTP_429,
}
_STATUS_BY_FT = {
    FT_TIMEOUT: 504,
    FT_HTTP_504: 504,
    FT_HTTP_500: 500,
    FT_HTTP_503: 503,
    FT_HTTP_403: 403,
    FT_HTTP_404: 404,
    FT_HTTP_429: 429,
}
_NON_IDEMPOTENT = frozenset(("POST", "LOCK", "PATCH"))
_ETIMEDOUT = strerror(errno.ETIMEDOUT)

# Phases of an exchange.
_NEW, _CONNECTING, _HEAD, _BODY, _TUNNEL, _DONE = range(6)

_ACTION = {
    _NEW: "connecting to upstream",
    _CONNECTING: "connecting to upstream",
    _HEAD: "reading response header from upstream",
    _BODY: "reading upstream",
    _TUNNEL: "proxying upgraded connection",
    _DONE: "sending to client",
}


# The client's response heads (the bytes Request.build_head makes) for a parse cache copy of an
# upstream head and the client-side inputs of the head, valid in the second their Date is of.
CLIENT_HEADS_ENTRIES = 256
_CLIENT_HEADS: dict[tuple[Any, ...], tuple[Any, int, bytes]] = {}


class Exchange(Connector, UpstreamVars):
    __slots__ = (
        "r",
        "conf",
        "target",
        "loop",
        "uri",
        "method",
        "head_bytes",
        "body",
        "streaming",
        "body_done",
        "states",
        "state",
        "balancer",
        "pick",
        "peer",
        "conn",
        "cached",
        "phase",
        "buf",
        "head_in",
        "length",
        "decoder",
        "keepalive",
        "request_sent",
        "header_sent",
        "buffering",
        "paused",
        "client_paused",
        "connect_task",
        "connect_timer",
        "peer_text",
        "started",
        "tunnel",
        "sent",
        "close_after",
        "chunk_body",
        "cache",
        "writer",
    )

    def __init__(self, r: Request, conf: ProxyConf, target: Target, uri: str) -> None:
        self.r = r
        self.conf = conf
        self.target = target
        self.loop = r.conn.loop
        self.uri = uri  # as sent in the request line (for the log's upstream: "...")
        self.method = r.method
        self.head_bytes = b""
        # The request body: pieces kept for a resend (buffered), or None when not sent.
        self.body: list[bytes] | None = None
        self.streaming = False  # proxy_request_buffering off: pieces go out as they come
        self.body_done = True
        prev = r.upstream
        # A request that passes through several proxied locations (error_page, X-Accel-
        # Redirect) lists every group in $upstream_*, groups separated by " : ".
        self.states: list[TryState | None] = []
        if isinstance(prev, Exchange):
            self.states = [*prev.states, None]
        self.state: TryState | None = None
        self.balancer: Any = None
        self.pick: Any = None
        self.peer: Any = None
        self.conn: UpstreamConn | None = None
        self.cached = False
        self.phase = _NEW
        self.buf = b""
        self.head_in: Head | None = None
        self.length = -1
        self.decoder: ChunkedDecoder | None = None
        self.keepalive = False
        self.request_sent = False
        self.header_sent = False
        self.buffering = conf.buffering
        self.paused = False  # upstream reading paused for the client
        self.client_paused = False  # client reading paused for the upstream (request body)
        self.connect_task: Any = None  # a ConnectStep, or a Task for TLS (open_new)
        self.connect_timer: asyncio.TimerHandle | None = None
        self.peer_text = ""
        self.started = 0.0
        self.tunnel: Any = None
        self.sent = 0
        self.close_after = True
        self.chunk_body = False  # the streamed body goes chunked (to an HTTP/1.1 upstream)
        self.cache: Any = None  # the request's CacheLookup (proxy_cache.py), None: no cache
        self.writer: Any = None  # the cache Writer the body goes to (a response being stored)

    def var_cache_status(self) -> str | None:  # type: ignore[override]
        lk = self.cache
        return None if lk is None else lk.status  # type: ignore[no-any-return]

    # -- start --------------------------------------------------------------------------------

    def start(self) -> None:
        """ngx_http_upstream_init_request, once the body is read (or streaming starts)."""
        r = self.r
        if r.done:
            return
        r.on_abort = self.client_gone
        group = self.target.group
        holder = group.group
        self.balancer = balancer = holder.balancer
        key = None
        if holder.key is not None:
            key = holder.key(r).encode("utf-8", "surrogateescape")
        elif holder.ip_key:
            from pyngx.upstream import ip_hash_key

            key = ip_hash_key(r.conn.remote_addr)
        now = self.loop.time()
        self.started = now
        pick = self.pick = balancer.start(now, key)
        cap = self.conf.next_upstream_tries
        if cap and pick.tries > cap:
            pick.tries = cap
        self.connect()

    def connect(self) -> None:
        """ngx_http_upstream_connect: a new try."""
        loop = self.loop
        now = loop.time()
        prev = self.state
        if prev is not None and prev.response < 0:
            prev.response = now - prev.start
        st = self.state = TryState(now)
        self.states.append(st)
        self.phase = _CONNECTING
        self.buf = b""
        self.request_sent = False
        self.sent = 0
        pick = self.pick
        pick.now = now
        peer = self.balancer.get(pick)
        group = self.target.group
        if peer is None:
            st.peer = self.peer_text = group.name
            self.log(ERROR, "no live upstreams")
            self.next(FT_NOLIVE)
            return
        self.peer = peer
        pc = peer.conf
        st.peer = pc.name
        # nginx's log shows "unix:/path:/uri" for a unix socket peer.
        self.peer_text = pc.name + ":" if self.target.unix else pc.name
        pool = group.pool
        self.cached = False
        if pool is not None:
            conn = pool.get(pc.name)
            if conn is not None:
                self.cached = True
                self.attach(conn)
                return
            pool.wait(pc.name, self, loop)
            return
        self.open_new()

    def take(self, conn: UpstreamConn) -> bool:
        """KeepalivePool.wait: a connection given back in this round of the loop."""
        if self.phase != _CONNECTING or self.conn is not None or self.r.done:
            return False
        self.cached = True
        self.attach(conn)
        return True

    def open_new(self) -> None:
        """A new connection to this try's peer (none idle was there for it)."""
        if self.phase != _CONNECTING or self.conn is not None:
            return
        if self.r.done:
            self.abandon()
            return
        pc = self.peer.conf
        loop = self.loop
        # The timer first: the coroutine's first step runs below, and a connect that ends
        # inside it must find this try's timer.
        self.connect_timer = loop.call_later(self.conf.connect_timeout, self._connect_timed_out)
        coro = self._open(pc.addr, pc.name)
        if self.target.ssl:
            # A Task of its own: the TLS session to resume travels in a context variable,
            # which must not leak into the loop's context (proxy_connect._open).
            self.connect_task = loop.create_task(coro)
            return
        # No Task for a plain connect (core/stepper.py): no WeakSet entry and
        # no loop turn before the first step.
        step = ConnectStep(self, coro)
        self.connect_task = step
        step.step(None)

    def _connect_timed_out(self) -> None:
        self.connect_timer = None
        task = self.connect_task
        if task is None or self.phase != _CONNECTING:
            return
        self.connect_task = None
        task.cancel()
        if self.r.done:
            self.abandon()
            return
        self.log(ERROR, f"upstream timed out {_ETIMEDOUT}")
        self.next(FT_TIMEOUT)

    def _connect_ended(self) -> bool:
        """The connect of this try ended without a connection: its timer goes; True when the
        try still stands (a request gone meanwhile is abandoned here)."""
        timer = self.connect_timer
        if timer is not None:
            timer.cancel()
            self.connect_timer = None
        if self.phase != _CONNECTING:
            return False
        if self.r.done:
            self.abandon()
            return False
        return True

    def _connect_failed(self, message: str, action: str) -> None:
        if self._connect_ended():
            self.log(ERROR, message, action)
            self.next(FT_ERROR)

    def _connect_error(self, level: int, message: str) -> None:
        """ngx_event_connect_peer's NGX_ERROR (socket() or bind() failed): no next upstream,
        the request ends with 500. Called from inside the connect step, which ends."""
        self.connect_task = None
        if self._connect_ended():
            self.log(level, message, "connecting to upstream")
            self.finalize(500)

    def _connected(self, conn: UpstreamConn) -> None:
        timer = self.connect_timer
        if timer is not None:
            timer.cancel()
            self.connect_timer = None
        if self.phase != _CONNECTING or self.r.done:
            conn.abort()
            if self.r.done and self.phase != _DONE:
                self.abandon()
            return
        self.attach(conn)

    # -- sending the request ------------------------------------------------------------------

    def attach(self, conn: UpstreamConn) -> None:
        """A connection (new or cached) for this try: send the request."""
        self.conn = conn
        conn.owner = self
        conn.requests += 1
        st = self.state
        assert st is not None
        now = self.loop.time()
        st.connect = now - st.start
        self.phase = _HEAD
        body = self.body
        if not body and not self.streaming:
            # The hot path: one write, the read timer moved (upstream_pool's lazy timer).
            head = self.head_bytes
            conn.sent = len(head)
            self.request_sent = True
            if not conn.paused:
                # Nothing else goes to this connection before the response: proxy_batch's
                # write_soon, inline.
                if ARMED[0] is not self.loop:
                    ARMED[0] = self.loop
                    self.loop.call_soon(flush_batch)
                PENDING.append((conn.transport, head))
                conn.kind = "read"
                conn.deadline = now + self.conf.read_timeout
                if conn.timer is None:
                    conn.timer = self.loop.call_at(conn.deadline, conn._fired)
                return
            conn.transport.write(head)
            conn.arm("send", self.conf.send_timeout)
            return
        conn.sent = 0
        if self.streaming:
            conn.write(self.head_bytes)
            if body:
                self._write_body_pieces(body)
                body.clear()
            if self.body_done:
                self._end_streamed_body()
        elif body:
            if len(body) == 1 and len(body[0]) < 65536:
                conn.write(self.head_bytes + body[0])
            else:
                conn.write(self.head_bytes)
                for piece in body:
                    conn.write(piece)
        self.request_sent = True
        if conn.paused:
            conn.arm("send", self.conf.send_timeout)
        else:
            conn.arm("read", self.conf.read_timeout)

    def body_piece(self, piece: bytes | None) -> None:
        """The client body as HttpConnection.read_body delivers it (proxy_request_buffering
        off): written as it comes once connected, queued before."""
        if piece is None:
            self.body_done = True
            if self.conn is not None and self.phase == _HEAD:
                self._end_streamed_body()
            return
        if not piece:
            return  # the client closed: HttpConnection ends the request
        body = self.body
        if body is None:
            return  # not sent upstream (proxy_pass_request_body off, proxy_set_body)
        if self.streaming and self.conn is not None and self.phase == _HEAD:
            self._write_body_pieces([piece])
        else:
            body.append(piece)

    def _write_body_pieces(self, pieces: list[bytes]) -> None:
        conn = self.conn
        assert conn is not None
        chunked = self.chunk_body
        for piece in pieces:
            if chunked:
                conn.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                conn.write(piece)
        if conn.paused and not self.client_paused:
            self.client_paused = True
            self.r.conn.transport.pause_reading()

    def _end_streamed_body(self) -> None:
        conn = self.conn
        assert conn is not None
        if self.chunk_body:
            conn.write(b"0\r\n\r\n")

    # -- the upstream connection's callbacks ------------------------------------------------------

    def up_paused(self, paused: bool) -> None:
        conn = self.conn
        if conn is None:
            return
        if paused:
            if self.phase == _HEAD:
                conn.arm("send", self.conf.send_timeout)
            return
        if self.client_paused:
            self.client_paused = False
            if not self.r.done:
                self.r.conn.transport.resume_reading()
        if self.phase == _HEAD and conn.kind == "send":
            conn.arm("read", self.conf.read_timeout)

    def up_data(self, data: bytes) -> None:
        phase = self.phase
        if phase == _BODY:
            self._relay(data)
            return
        if phase != _HEAD:
            return
        r = self.r
        if r.done:
            self.abandon()
            return
        st = self.state
        assert st is not None
        st.received += len(data)
        if self.buf:
            data = self.buf + data
        elif self.cache is None and self._whole_response(r, st, data):
            return
        try:
            head = parse_head(data, self.conf.buffer_size)
        except BadHead as exc:
            self.buf = b""
            self._bad_head(exc, data)
            return
        if head is None:
            self.buf = data
            return
        self.buf = b""
        st.header = self.loop.time() - st.start
        self._response(head, data)

    def up_eof(self) -> None:
        self._upstream_closed(None)

    def up_lost(self, exc: Exception | None) -> None:
        self.conn = None
        self._upstream_closed(exc)

    def up_timeout(self, kind: str) -> None:
        r = self.r
        if r.done and self.phase != _DONE:
            self.abandon()
            return
        if kind == "client":
            self.log(INFO, f"client timed out {_ETIMEDOUT}", "sending to client")
            self.finalize(408)
            return
        phase = self.phase
        if phase == _HEAD:
            if kind == "send":
                self.log(ERROR, f"upstream timed out {_ETIMEDOUT}", "sending request to upstream")
            else:
                self.log(ERROR, f"upstream timed out {_ETIMEDOUT}")
            self.next(FT_TIMEOUT)
        elif phase == _BODY:
            self.log(ERROR, f"upstream timed out {_ETIMEDOUT}")
            self.finalize(504)

    def _upstream_closed(self, exc: Exception | None) -> None:
        phase = self.phase
        if phase not in (_HEAD, _BODY):
            return
        if self.r.done:
            self.abandon()
            return
        if phase == _BODY and self.length == -1 and self.decoder is None:
            self.keepalive = False
            self._complete()
            return
        if isinstance(exc, OSError) and exc.errno:
            self.log(ERROR, f"recv() failed {strerror(exc.errno)}")
        else:
            self.log(ERROR, "upstream prematurely closed connection")
        if phase == _HEAD:
            self.next(FT_ERROR)
        else:
            self.finalize(502)

    # -- the response head ----------------------------------------------------------------------

    def _bad_head(self, exc: BadHead, data: bytes) -> None:
        if exc.kind == "09":
            # nginx relays what it got as an HTTP/0.9 response: no head, until close.
            self.log(ERROR, exc.message)
            st = self.state
            assert st is not None
            st.status = 200
            st.header = self.loop.time() - st.start
            r = self.r
            r.version = (0, 9)
            r.keepalive = False
            r.status = 200
            self.keepalive = False
            self.length = -1
            self.phase = _BODY
            self.header_sent = True
            r.send_head()
            r.on_abort = self.client_gone
            self._send(data)
            return
        self.log(ERROR, exc.message)
        self.next(FT_INVALID_HEADER)

    def _response(self, head: Head, data: bytes) -> None:
        r = self.r
        conf = self.conf
        status = head.status
        st = self.state
        assert st is not None
        st.status = status
        self.head_in = head
        lk = self.cache
        if status >= 300:
            if lk is not None and status == 304 and self._revalidated(head, data):
                return
            ft = FT_BY_STATUS.get(status)
            if ft is not None and self._test_next(ft):
                return
            if lk is not None and ft is not None and self._stale(ft, head, data):
                return
            if conf.intercept_errors and status in r.loc.error_pages:
                self._intercept(head, data)
                return
        # One pass: the client's head, and what the headers say about framing.
        copy_headers(self, head)
        if head.accel_redirect is not None and conf.accel_redirect:
            self._accel_redirect(head)
            return
        self.close_after = head.close
        rest = data[head.size :] if len(data) > head.size else b""
        # Body framing (ngx_http_proxy_input_filter_init).
        if status in (204, 304) or self.method == "HEAD":
            self.length = 0
            self.keepalive = not head.close
        elif head.chunked:
            self.decoder = ChunkedDecoder()
            self.length = 1
        elif head.content_length == 0:
            self.length = 0
            self.keepalive = not head.close
        elif head.content_length is not None:
            self.length = head.content_length
        else:
            self.length = -1
        upgrade = False
        if status == 101:
            self.keepalive = False
            upgrade = "upgrade" in r.headers
        if upgrade:
            self._upgrade(rest)
            return
        if lk is not None and not lk.closed:
            self._store(head, data)
        if self.length == 0:
            if rest:
                self.keepalive = False
            w = self.writer
            if w is not None:
                self.writer = None
                w.commit()
            self._release()
            self.header_sent = True
            if r.method == "HEAD" or status in (204, 304):
                r.send_head()
                self._done_client()
            else:
                r.send_response(status, b"")
                self._done_client(finished=True)
            return
        if (
            self.decoder is None
            and self.length > 0
            and len(rest) >= self.length
            and r.method != "HEAD"
        ):
            # The whole body is here: one write to the client (the common keepalive case).
            if len(rest) > self.length:
                self.log(WARN, 'upstream sent more data than specified in "Content-Length" header')
                rest = rest[: self.length]
                self.keepalive = False
            else:
                self.keepalive = not head.close
            st.length = len(rest)
            w = self.writer
            if w is not None:
                self.writer = None
                w.write(rest)
                w.commit()
            self._release()
            self.header_sent = True
            r.send_response(status, rest)
            self._done_client(finished=True)
            return
        self.phase = _BODY
        self.header_sent = True
        r.send_head()
        if r.method == "HEAD" and self.writer is None:
            # The client asked HEAD but the upstream was asked something else (proxy_method).
            # (A response being cached is read whole: the client gets the head only.)
            self.keepalive = False
            self._release()
            self._done_client()
            return
        self.keepalive = False  # decided when the body is complete (_relay)
        conn = self.conn
        assert conn is not None
        conn.arm("read", conf.read_timeout)
        r.conn.on_drain = self._client_drained
        if rest:
            self._relay(rest, counted=True)

    def _whole_response(self, r: Request, st: TryState, data: bytes) -> bool:
        """The hot path of _response: a head seen before (the parse cache, with this
        location's copy of it), a 2xx answer with its whole Content-Length body in `data`,
        nothing to retry, intercept, redirect or store. Does what _response, copy_headers,
        _release and _done_client do for it, in one call; False (nothing done) otherwise."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        size = end + 4
        conf = self.conf
        if size > conf.buffer_size:
            return False
        hit = HEAD_CACHE.get(data if len(data) == size else data[:size])
        if hit is None:
            return False
        actions = conf.actions
        copy = hit[4].get(id(actions))
        if copy is None or copy[0] is not actions:
            return False
        # copy[2]: the body length when the head qualifies (proxy_headers.copy_headers).
        length = copy[2]
        if (
            not length
            or len(data) - size != length
            or self.method == "HEAD"
            or r.method == "HEAD"
            or self.writer is not None
            or self.client_paused
        ):
            return False
        pairs, ct, _, _, close, _, _ = copy[1]
        status = hit[0]
        now = self.loop.time()
        start = st.start
        st.header = now - start
        st.status = status
        self.head_in = copy[3]
        # copy_headers' result, from its cache (_apply_copy, _finish_copy).
        r.status = status
        out = r.out
        out.status_line = hit[1]
        headers = out.headers
        if headers:
            headers += pairs
        else:
            out.headers = list(pairs)
        if ct is not None:
            out.content_type = ct
            out.charset = None
        out.content_length = length
        if conf.pass_server:
            out.no_server = True
        if conf.pass_date:
            out.no_date = True
        self.close_after = close
        self.length = 0
        self.keepalive = keepalive = not close
        st.length = length
        # _release
        st.response = now - start
        conn = self.conn
        self.conn = None
        if conn is not None:
            st.sent = conn.sent
            conn.owner = None
            if conn.ssl:
                self._save_session(conn)
            pool = self.target.group.pool if keepalive else None
            if pool is None or not self.body_done or not pool.put(conn):
                conn.close()
        peer = self.peer
        if peer is not None:
            self.peer = None
            pick = self.pick
            pick.now = now
            self.balancer.free(peer, pick, failed=False)
        self.header_sent = True
        loc = r.loc
        if (
            not headers
            and r.conn.send_fields is None
            and out.location is None
            and not loc.add_headers
            and loc.expires is None
            and not r.err_status
            and out.etag is None
            and out.last_modified is None
            and not out.accept_ranges
            and not r.chunked
        ):
            # Request.send_response with the head bytes its build_head made for the same
            # inputs (this copy of the upstream's head and the client's side of it), in the
            # same second (Date).
            ckey = (
                id(copy),
                loc,
                r.keepalive,
                r.version,
                out.content_type,
                out.charset,
                out.no_server,
                out.no_date,
            )
            made = _CLIENT_HEADS.get(ckey)
            if made is None or made[0] is not copy or made[1] != int(_time()):
                head_bytes = r.build_head()
                if len(_CLIENT_HEADS) >= CLIENT_HEADS_ENTRIES:
                    _CLIENT_HEADS.clear()
                _CLIENT_HEADS[ckey] = (copy, DATE.second, head_bytes)
            else:
                head_bytes = made[2]
                r.header_sent = True
            wire = head_bytes + memoryview(data)[size:]  # one copy of the body, not two
            r.body_sent = length
            r.bytes_sent = len(wire)
            # HttpConnection.write holds a small write to the end of the loop's round too.
            r.conn.write(wire)
            # Request.finish for a response that is not chunked and not done.
            r.done = True
            r.conn.close_request(r)
        else:
            r.send_response(status, data[size:])
        # _done_client(finished=True)
        self.phase = _DONE
        if r.conn.on_drain is not None:
            self._cleanup_client()
        else:
            r.on_abort = None
        if r.done:
            r.upstream = None
        return True

    def _test_next(self, ft: int) -> bool:
        """ngx_http_upstream_test_next: another peer for this status?"""
        conf = self.conf
        mask = ft
        if self.request_sent and self.method in _NON_IDEMPOTENT:
            mask |= FT_NON_IDEMPOTENT
        timeout = conf.next_upstream_timeout
        if (
            self.pick.tries > 1
            and (conf.next_upstream & mask) == mask
            and not (self.request_sent and self.streaming)
            and not (timeout and self.loop.time() - self.started >= timeout)
        ):
            self.next(ft)
            return True
        return False

    def _intercept(self, head: Head, data: bytes) -> None:
        """proxy_intercept_errors: nginx's own error page (error_page) for this status."""
        status = head.status
        r = self.r
        head.framing()
        if status == 401:
            # The challenge survives the error page (ngx_http_upstream_intercept_errors).
            for name, value in head.pairs():
                if name.lower() == "www-authenticate":
                    r.out.headers.append((name, value))
        no_body = (
            status in (204, 304)
            or self.method == "HEAD"
            or (not head.chunked and head.content_length == 0)
        )
        self.keepalive = no_body and not head.close and len(data) == head.size
        self._release()
        lk = self.cache
        if lk is not None:
            # An intercepted error is cached (without a body) when proxy_cache_valid says so.
            from pyngx.http.cache import store_error

            store_error(lk, status)
        self.finalize(status)

    def _accel_redirect(self, head: Head) -> None:
        """X-Accel-Redirect: an internal redirect instead of this response."""
        target = head.accel_redirect
        assert target is not None
        r = self.r
        if self.cache is not None:
            self._drop_cache()
        self.keepalive = False
        self._release()
        self._cleanup_client()
        self.phase = _DONE
        # Headers that survive the redirect (nginx's `redirect` flag in its header table).
        hide = self.conf.hide
        r.out.status_line = None
        r.out.headers = redirect_keep(head, hide)
        if r.method != "HEAD":
            r.method = "GET"
        if target.startswith("@"):
            r.named_redirect(target)
            return
        uri, q, args = target.partition("?")
        from urllib.parse import unquote

        r.internal_redirect(unquote(uri), args if q else "")

    # -- the response body ------------------------------------------------------------------------

    def _relay(self, data: bytes, counted: bool = False) -> None:
        r = self.r
        if r.done:
            self.abandon()
            return
        st = self.state
        assert st is not None
        n = len(data)
        if not counted:
            st.received += n
        st.length += n
        conn = self.conn
        if conn is not None and not self.paused:
            conn.deadline = self.loop.time() + self.conf.read_timeout
        decoder = self.decoder
        if decoder is not None:
            try:
                pieces = decoder.feed(data)
            except ChunkedError:
                self.log(ERROR, "upstream sent invalid chunked response")
                self.finalize(502)
                return
            for piece in pieces:
                self._send(piece)
            if decoder.done:
                self.keepalive = not self.close_after
                if decoder.extra:
                    self.log(WARN, "upstream sent data after final chunk")
                    self.keepalive = False
                self._complete()
            return
        length = self.length
        if length == -1:
            self._send(data)
            return
        if n >= length:
            if n > length:
                self.log(WARN, 'upstream sent more data than specified in "Content-Length" header')
                data = data[:length]
                self.keepalive = False
            else:
                self.keepalive = not self.close_after
            self.length = 0
            self._send(data)
            self._complete()
            return
        self.length = length - n
        self._send(data)

    def _send(self, data: bytes) -> None:
        r = self.r
        w = self.writer
        if w is not None:
            w.write(data)
        r.send_body(data)
        client = r.conn
        if client.writing_paused and not self.paused:
            # Buffering reads ahead (into the client transport's buffer) up to `readahead`.
            if self.buffering and client.transport.get_write_buffer_size() < self.conf.readahead:
                return
            conn = self.conn
            if conn is None:
                return
            self.paused = True
            conn.transport.pause_reading()
            conn.arm("client", r.loc.send_timeout)

    def _client_drained(self) -> None:
        if not self.paused:
            return
        self.paused = False
        conn = self.conn
        if conn is None or self.phase != _BODY:
            return
        conn.transport.resume_reading()
        conn.arm("read", self.conf.read_timeout)

    def _complete(self) -> None:
        """The whole response body was relayed."""
        w = self.writer
        if w is not None:
            self.writer = None
            w.commit()
        self._release()
        self._done_client()

    # -- endings ------------------------------------------------------------------------------

    def _release(self) -> None:
        """The upstream connection is done with: cache it (keepalive) or close it; free the
        peer (ngx_http_upstream_finalize_request's peer.free with state 0)."""
        st = self.state
        now = self.loop.time()
        if st is not None and st.response < 0:
            st.response = now - st.start
        conn = self.conn
        self.conn = None
        if conn is not None:
            if st is not None:
                st.sent = conn.sent
            conn.owner = None
            if conn.ssl:
                self._save_session(conn)
            if self.paused:
                conn.transport.resume_reading()
                self.paused = False
            pool = self.target.group.pool if self.keepalive else None
            if pool is None or not self.body_done or not pool.put(conn):
                conn.close()
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.pick.now = now
            self.balancer.free(peer, self.pick, failed=False)

    def _done_client(self, finished: bool = False) -> None:
        self.phase = _DONE
        r = self.r
        self._cleanup_client()
        lk = self.cache
        if lk is not None:
            self._drop_cache()
        if not finished:
            r.finish()
        # The access log has its $upstream_* now: dropping the request's reference frees the
        # exchange (and the request) by reference counting, without waiting for the cyclic GC.
        if r.done:
            r.upstream = None

    def _cleanup_client(self) -> None:
        r = self.r
        r.on_abort = None
        client = r.conn
        if client.on_drain == self._client_drained:
            client.on_drain = None
        if self.client_paused:
            self.client_paused = False
            try:
                client.transport.resume_reading()
            except (AttributeError, RuntimeError):
                pass

    def next(self, ft: int) -> None:
        """ngx_http_upstream_next: count the failure, then another try or an error."""
        base = ft
        conn = self.conn
        st = self.state
        assert st is not None
        peer = self.peer
        now = self.loop.time()
        if peer is not None:
            if conn is not None:
                st.sent = conn.sent
            self.peer = None
            self.pick.now = now
            failed = ft not in (FT_HTTP_403, FT_HTTP_404)
            self.balancer.free(peer, self.pick, failed=failed)
            if failed and peer.disabled_by_fails:
                self.log(WARN, "upstream server temporarily disabled")
        if self.cached and ft == FT_ERROR:
            self.pick.tries += 1
        status = _STATUS_BY_FT.get(ft, 502)
        if self.r.done:
            self.abandon()
            return
        st.status = status
        if self.request_sent and self.method in _NON_IDEMPOTENT:
            ft |= FT_NON_IDEMPOTENT
        conf = self.conf
        timeout = conf.next_upstream_timeout
        if conn is not None:
            self.conn = None
            conn.abort()
        if (
            self.pick.tries == 0
            or (conf.next_upstream & ft) != ft
            or (self.request_sent and self.streaming)
            or (timeout and now - self.started >= timeout)
        ):
            if self.cache is not None and self._stale(base, None, b""):
                return
            self.finalize(status)
            return
        self.connect()

    def finalize(self, status: int) -> None:
        """ngx_http_upstream_finalize_request for an error (or an intercepted status)."""
        if self.phase == _DONE:
            return
        conn = self.conn
        st = self.state
        now = self.loop.time()
        if st is not None and st.response < 0:
            st.response = now - st.start
        if conn is not None:
            if st is not None:
                st.sent = conn.sent
            self.conn = None
            conn.abort()
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.pick.now = now
            self.balancer.free(peer, self.pick, failed=False)
        self._stop_connecting()
        self.phase = _DONE
        self._cleanup_client()
        if self.cache is not None:
            self._drop_cache(status if not self.header_sent else 0)
        r = self.r
        if r.done:
            return
        if not self.header_sent or status in (408, 499):
            if self.header_sent:
                r.keepalive = False
                r.done = True
                r.conn.close_request(r)
                return
            r.finalize(status)
            return
        # The head is out: the client can only see the response cut short.
        r.keepalive = False
        r.done = True
        r.conn.close_request(r)

    def _stop_connecting(self) -> None:
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        timer = self.connect_timer
        if timer is not None:
            self.connect_timer = None
            timer.cancel()

    def abandon(self) -> None:
        """The request ended without us (client gone, body error): drop everything."""
        if self.phase == _DONE:
            return
        st = self.state
        now = self.loop.time()
        if st is not None and st.response < 0:
            st.response = now - st.start
        conn = self.conn
        if conn is not None:
            if st is not None:
                st.sent = conn.sent
            self.conn = None
            conn.abort()
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.pick.now = now
            self.balancer.free(peer, self.pick, failed=False)
        self._stop_connecting()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.close()
        self.phase = _DONE
        self._cleanup_client()
        if self.cache is not None:
            self._drop_cache()

    def client_gone(self) -> None:
        """r.on_abort: the client closed before the response was complete."""
        if self.phase == _DONE:
            return
        action = _ACTION[self.phase]
        if self.conn is not None:
            self.log(
                INFO,
                "epoll_wait() reported that client prematurely closed connection, "
                "so upstream connection is closed too",
                action,
            )
        else:
            self.log(
                INFO, "epoll_wait() reported that client prematurely closed connection", action
            )
        st = self.state
        if st is not None and not self.header_sent and st.status == 0:
            st.status = 0
        self.abandon()

    # -- the cache (proxy_cache.py) -------------------------------------------------------------

    def _store(self, head: Head, data: bytes) -> None:
        """ngx_http_upstream_send_response's cache part: a Writer for the de-chunked body
        when the response is to be stored (never unbuffered: nginx caches buffered only)."""
        lk = self.cache
        if not self.buffering:
            lk.close()
            return
        from pyngx.http.cache import store_writer

        self.writer = store_writer(
            self.r,
            lk.settings,
            lk,
            head.status,
            head.pairs(),
            raw_head=data[: head.size],
            reason=head.status_line[4:],
            expected_length=None if head.chunked else head.content_length,
        )

    def _revalidated(self, head: Head, data: bytes) -> bool:
        """A 304 to proxy_cache_revalidate's conditional request: the entry, refreshed."""
        from pyngx.http.cache import revalidated

        lk = self.cache
        entry = revalidated(self.r, lk.settings, lk, head.pairs())
        if entry is None:
            return False
        head.framing()
        self.keepalive = not head.close and len(data) == head.size
        self._serve_cached(entry)
        return True

    def _stale(self, ft: int, head: Head | None, data: bytes) -> bool:
        """proxy_cache_use_stale: the expired entry instead of this failure."""
        from pyngx.http.proxy_cache import STALE_CONDITION

        cond = STALE_CONDITION.get(ft & ~FT_NON_IDEMPOTENT)
        lk = self.cache
        if cond is None or self.header_sent or lk.closed:
            return False
        entry = lk.stale(cond)
        if entry is None:
            return False
        if head is not None:
            head.framing()
            no_body = head.status in (204, 304) or (
                not head.chunked and head.content_length == 0
            )
            self.keepalive = no_body and not head.close and len(data) == head.size
        else:
            self.keepalive = False
        self._serve_cached(entry)
        return True

    def _serve_cached(self, entry: Any) -> None:
        """Done with the upstream; the client gets the cached entry (STALE, REVALIDATED)."""
        from pyngx.http.proxy_cache import serve_now

        self._release()
        self._stop_connecting()
        self.phase = _DONE
        self._cleanup_client()
        self.header_sent = True
        serve_now(self.r, self, self.cache, entry)

    def _drop_cache(self, status: int = 0) -> None:
        """The request is done with the cache: a response being stored is dropped (unless
        complete), nginx's own 502/504 is cached when proxy_cache_valid covers it."""
        w = self.writer
        if w is not None:
            self.writer = None
            w.abort()
        lk = self.cache
        if lk.closed:
            return
        if status in (502, 504):
            from pyngx.http.cache import store_error

            store_error(lk, status)
        else:
            lk.close()

    # -- upgrade ----------------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        from pyngx.http.proxy_tunnel import Tunnel

        r = self.r
        if self.cache is not None:
            self._drop_cache()
        self.header_sent = True
        r.keepalive = False
        r.send_head()
        conn = self.conn
        assert conn is not None
        self.phase = _TUNNEL
        r.on_abort = None
        self.tunnel = Tunnel(self, conn, rest)

    def tunnel_closed(self, status: int, message: str | None) -> None:
        """The tunnel ended: finalize like ngx_http_upstream_finalize_request(r, u, 0)."""
        if message:
            self.log(INFO, message, "proxying upgraded connection")
        st = self.state
        if st is not None and st.response < 0:
            st.response = self.loop.time() - st.start
        self.conn = None
        peer = self.peer
        if peer is not None:
            self.peer = None
            self.pick.now = self.loop.time()
            self.balancer.free(peer, self.pick, failed=False)
        self.phase = _DONE
        r = self.r
        r.on_abort = None
        if not r.done:
            r.keepalive = False
            r.done = True
            r.conn.close_request(r)

    # -- logging ----------------------------------------------------------------------------------

    @property
    def current(self) -> str:
        """The `upstream: "..."` of error log lines: schema, peer, the URI sent."""
        if not self.peer_text:
            return ""
        return f"{self.target.schema}{self.peer_text}{self.uri}"

    def log(self, level: int, message: str, action: str | None = None) -> None:
        if action is None:
            action = _ACTION[self.phase]
        self.r.log(level, f"{message} while {action}")


__all__ = ["DONE", "Exchange", "FT_BY_STATUS", "FT_ERROR", "FT_OFF", "FT_TIMEOUT"]
