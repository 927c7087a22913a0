"""A proxied stream session: the client connection, the upstream connection, and the relay.

Design notes
- Both sides are asyncio Protocols (callbacks, no Task per connection); plain sockets are on
  the worker's own epoll (core/epoll_io.py), the upstream connect an epoll_io.Connect; only
  `proxy_ssl` keeps a Task, for its context variable (and uvloop's create_connection and
  start_tls). Relaying is one `write` of the received buffer to the other side: no per-byte
  work, no copies of our own.
- Flow control as uvicorn's FlowControl: when one side's write buffer passes its high-water
  mark, the other side stops reading until it drains. Pausing for rate limits is tracked
  separately so one reason never resumes what the other paused.
- The PROXY header towards the upstream is written in the upstream's `connection_made`,
  together with any client bytes that arrived while connecting, in one write: mail servers
  speak first, and no client byte can overtake the header.
- proxy_connect_timeout, armed by every session and nearly always cancelled, lives in a queue
  per delay with one loop timer (timers.py), not in a TimerHandle of its own.
- The idle timer (`proxy_timeout`) is lazy: data only stamps the time; the timer re-arms
  itself when it fires early, instead of being rescheduled on every read.
- Ending follows ngx_stream_proxy_test_finalize: without `proxy_half_close`, the first side to
  reach EOF ends the session once what it sent is flushed; with it, EOF is passed on with
  shutdown(SHUT_WR) and the session ends when both directions are closed.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from typing import TYPE_CHECKING, Any

from pyngx.conf.values import UrlError, parse_url
from pyngx.core.epoll_io import Connect
from pyngx.core.log import ALERT, CRIT, ERROR, INFO, WARN, strerror
from pyngx.core.stepper import Stepper
from pyngx.protocols import proxy_protocol as pp
from pyngx.protocols import tls_client_hello
from pyngx.stream import pass_module, set_return, timers, tls
from pyngx.stream.session_log import SessionLog, peer_text
from pyngx.stream.upstream import UpstreamGroup, implicit_group
from pyngx.upstream import Balancer, Peer, PickContext

if TYPE_CHECKING:
    from pyngx.core.worker import Worker
    from pyngx.stream.module import ListenOpts, StreamServer

# Write buffer high-water marks: large enough for bulk transfer at full speed on loopback,
# small enough to bound memory per connection.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

# States of a session.
READING_PROXY_HEADER, CONNECTING, RELAYING, DONE, HANDSHAKING, PREREADING = range(6)

MAX_PASSES = 8

STATUS_OK, STATUS_BAD_REQUEST, STATUS_INTERNAL, STATUS_BAD_GATEWAY = 200, 400, 500, 502


_CONNECTING = "while connecting to upstream"


def _broken_header_message(buf: bytearray) -> str:
    """nginx's words for a bad header: it quotes (raw) what it read, up to the v1 maximum."""
    sig = pp.V2_SIGNATURE
    if len(buf) > len(sig) and buf.startswith(sig):
        version = buf[len(sig)] >> 4
        if version != 2:
            return f"unknown PROXY protocol version: {version}"
        return "header is too large" if len(buf) >= 16 else "broken header"
    head = bytes(buf[: pp.V1_MAX_HEADER]).decode("latin-1")
    return f'broken header: "{head}"'


ssl_errors = (OSError, EOFError)
X509_V_ERR_HOST = 62  # X509_V_ERR_HOSTNAME_MISMATCH: Python's check_hostname failed


def _upstream_tls_error(exc: BaseException, name: str | None) -> str:
    """nginx's words for a failed handshake with the upstream (before `while ...`)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code == X509_V_ERR_HOST:
        return f'upstream SSL certificate does not match "{name}"'
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"upstream SSL certificate verify error: ({exc.verify_code}:{exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"SSL_do_handshake() failed {tls._ssl_reason(exc)}"
    if isinstance(exc, ConnectionAbortedError):
        return f"upstream timed out {strerror(errno.ETIMEDOUT)}"
    if exc.errno if isinstance(exc, OSError) else None:
        return f"SSL_do_handshake() failed {strerror(exc.errno)}"  # type: ignore[union-attr]
    return "peer closed connection in SSL handshake"


def _addr_text(addr: Any, family: int) -> tuple[str, int | None]:
    if family == socket.AF_UNIX:
        return (f"unix:{addr}" if addr else "unix:"), None
    return addr[0], addr[1]


class UpstreamSide(asyncio.Protocol):
    """The connection to the upstream server; forwards what it reads to the client."""

    __slots__ = ("session", "transport")

    def __init__(self, session: ClientSide) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session.upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        s = self.session
        s.up_received += len(data)
        now = s.last_activity = s.loop.time()
        if s.first_byte_at is None:
            s.first_byte_at = now
        s.bytes_sent += len(data)
        s.transport.write(data)
        if s.download_rate:
            s.rate_limit(self, len(data))

    def eof_received(self) -> bool:
        self.session.side_eof(from_upstream=True)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            # A start_tls that failed reports here too: the session never counted this side.
            return
        s = self.session
        s.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause(self.session.transport, "flow")

    def resume_writing(self) -> None:
        self.session.resume(self.session.transport, "flow")


class ClientSide(SessionLog, asyncio.Protocol):
    """The accepted client connection and the state of the whole session."""

    __slots__ = (
        "worker",
        "server",
        "listen",
        "loop",
        "transport",
        "upstream",
        "balancer",
        "group",
        "passes",
        "client_hello",
        "state",
        "conn_id",
        "start",
        "status",
        "remote_addr",
        "remote_port",
        "server_addr",
        "server_port",
        "family",
        "pp",
        "bytes_sent",
        "bytes_received",
        "up_sent",
        "up_received",
        "pending",
        "timer",
        "last_activity",
        "tried",
        "pick",
        "peer",
        "next_started",
        "connect_task",
        "connect_started",
        "try_times",
        "connected_at",
        "first_byte_at",
        "up_closed_at",
        "client_eof",
        "upstream_eof",
        "paused",
        "download_rate",
        "upload_rate",
        "rate_state",
        "open_sides",
        "tls",
        "handshake",
        "header_sent",
        "vars",
    )

    def __init__(self, worker: Worker, server: StreamServer, listen: ListenOpts) -> None:
        self.worker = worker
        self.server = server
        self.listen = listen
        self.loop = worker.loop
        self.upstream: UpstreamSide | None = None
        self.state = CONNECTING
        self.status = STATUS_OK
        self.pp: pp.ProxyHeader | None = None
        self.bytes_sent = self.bytes_received = self.up_sent = self.up_received = 0
        self.pending: list[bytes] | bytearray | None = None
        self.timer: asyncio.TimerHandle | timers.Deadline | None = None
        self.tried: list[str] = []
        self.pick: PickContext | None = None
        self.peer: Peer | None = None
        # The balancer `pick` came from: a group with `resolve` servers may swap its balancer
        # while the session runs, and retries and free() must go to the one that gave the peer.
        self.balancer: Balancer | None = None
        self.group: UpstreamGroup | None = None
        self.passes = 0
        self.client_hello: tls_client_hello.ClientHello | None = None
        self.next_started = 0.0
        # The try in progress: a Connect (epoll_io), or a Task with `proxy_ssl`.
        self.connect_task: Connect | asyncio.Task[Any] | None = None
        self.connect_started = 0.0
        self.try_times: list[float] | None = None
        self.connected_at: float | None = None
        self.first_byte_at: float | None = None
        self.up_closed_at: float | None = None
        self.client_eof = self.upstream_eof = False
        self.paused: dict[int, set[str]] | None = None
        self.download_rate = server.download_rate
        self.upload_rate = server.upload_rate
        self.rate_state: dict[int, float] | None = None
        self.open_sides = 1
        # The client's SSLObject once `listen ... ssl` completed its handshake ($ssl_*).
        self.tls: Any = None
        self.handshake: Stepper | None = None
        self.header_sent = False
        self.vars: dict[str, str] | None = None  # `set` values, created by the first `set`

    # -- accept ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        w = self.worker
        self.conn_id = w.next_connection_id()
        self.start = self.last_activity = self.loop.time()
        w.sessions.add(self)
        listen = self.listen
        self.family = family = listen.addr.family
        self.remote_addr, self.remote_port = _addr_text(
            transport.get_extra_info("peername"), family
        )
        if listen.wildcard or not listen.addr.port:
            self.server_addr, self.server_port = _addr_text(
                transport.get_extra_info("sockname"), family
            )
        else:
            self.server_addr, self.server_port = listen.addr.host, listen.addr.port
        log = self.server.error_log
        if log.max_level >= INFO:
            peer = self.remote_addr if self.remote_port is None else self.peer_text()
            log.log(INFO, f"client {peer} connected to {listen.addr.text}", self.conn_id)
        if w.over_connection_limit():
            w.cycle.error_log.log(
                ALERT, f"{w.worker_connections} worker_connections are not enough"
            )
            self.finalize(STATUS_INTERNAL)
            return
        if listen.proxy_protocol:
            self.state = READING_PROXY_HEADER
            self.pending = bytearray()
            self.timer = self.loop.call_later(self.server.proxy_protocol_timeout, self._on_timer)
            return
        self._after_accept()

    def _after_accept(self) -> None:
        """nginx's preaccess and access phases (limit_conn, set, allow/deny: the handlers in
        `server.access`, each returning None to go on or a $status to end with), then TLS,
        preread and content."""
        for handler in self.server.access:
            status = handler(self)
            if status is not None:
                self.finalize(status)
                return
        if self.listen.ssl:
            self._start_handshake()
            return
        self._content()

    # -- TLS from the client (`listen ... ssl`) --------------------------------------------

    def _start_handshake(self) -> None:
        conf = self.server.ssl
        assert conf is not None
        self.state = HANDSHAKING
        # start_tls's own timeout (ssl_handshake_timeout) aborts a silent or slow client.
        coro = self.loop.start_tls(
            self.transport,
            self,
            conf.ctx,
            server_side=True,
            ssl_handshake_timeout=conf.handshake_timeout,
        )
        self.handshake = Stepper(coro, self._handshake_done)

    def _handshake_done(
        self, transport: asyncio.Transport | None, exc: BaseException | None
    ) -> None:
        self.handshake = None
        if self.state != HANDSHAKING:
            if transport is not None:
                transport.abort()
            return
        if transport is None:
            text = None if exc is None else tls.handshake_error(exc)
            if text is not None and not isinstance(exc, asyncio.CancelledError):
                self.log(INFO, f"{text} while SSL handshaking")
            self.finalize(STATUS_INTERNAL)
            return
        self.transport = transport
        self.tls = transport.get_extra_info("ssl_object")
        self._content()

    # -- PROXY header from the client ----------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        buf = self.pending
        assert isinstance(buf, bytearray)
        buf += data
        try:
            parsed = pp.parse(buf)
        except pp.ProxyProtocolError:
            self.log(ERROR, f"{_broken_header_message(buf)} while reading PROXY protocol")
            self.finalize(STATUS_BAD_REQUEST)
            return
        if parsed is None:
            return
        header, consumed = parsed
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rest = bytes(buf[consumed:])
        if header.command == pp.Command.PROXY and header.family in (
            pp.Family.INET,
            pp.Family.INET6,
        ):
            self.pp = header
            if self._trusted_for_realip():
                self.remote_addr = header.src_addr  # type: ignore[assignment]
                self.remote_port = header.src_port
        self.pending = [rest] if rest else None
        self._after_accept()

    # -- preread (`ssl_preread on`) and the content phase -----------------------------------

    def _content(self) -> None:
        """After the PROXY header and TLS: read the ClientHello if asked, then proxy."""
        if self.server.return_value is not None:
            set_return.respond(self)  # `return`: no preread, no upstream
            return
        if self.server.ssl_preread and not self.listen.ssl:
            self.state = PREREADING
            held = b"".join(self.pending) if self.pending else b""
            self.pending = bytearray(held)
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(self.server.preread_timeout, self._on_timer)
            if held:
                self._preread(b"")
            return
        self._proxy_or_pass()

    def _preread(self, data: bytes) -> None:
        buf = self.pending
        assert isinstance(buf, bytearray)
        buf += data
        try:
            hello = tls_client_hello.parse(buf, limit=self.server.preread_buffer_size)
        except tls_client_hello.TooLarge:
            self.log(ERROR, "preread buffer full while prereading client data")
            self.finalize(STATUS_BAD_REQUEST)
            return
        except tls_client_hello.ClientHelloError:
            hello = None  # not TLS, or a hello nginx would not read: no $ssl_preread_* values
        else:
            if hello is None:
                return  # need more
        self.client_hello = hello
        self._end_preread()

    def _end_preread(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held = bytes(self.pending) if self.pending else b""
        self.pending = [held] if held else None
        self._proxy_or_pass()

    def _proxy_or_pass(self) -> None:
        if self.server.pass_to is not None:
            self._pass()
        else:
            self.connect_upstream()

    def _pass(self) -> None:
        """`pass`: a session of the target server adopts this connection (pass_module)."""
        text = self.server.pass_to(self)  # type: ignore[misc]
        found = pass_module.find_listener(self.worker.groups, text)
        if found is None:
            self.log(ERROR, f'no listening socket found for "{text}" to pass the connection to')
            self.finalize(STATUS_INTERNAL)
            return
        server, listen = found
        if self.passes >= MAX_PASSES:
            # A `pass` that leads back to itself would hand the connection round forever.
            self.log(ERROR, f'too many "pass" hops to "{text}"')
            self.finalize(STATUS_INTERNAL)
            return
        held = b"".join(self.pending) if self.pending else b""
        # This session ends here as nginx ends it (logged, limits released), but the
        # connection stays open: it now belongs to the target's session.
        self.state = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for hook in self.server.on_finalize:
            hook(self)
        for log in self.server.access_logs:
            log.write(self)
        self.worker.sessions.discard(self)
        ClientSide(self.worker, server, listen).adopt(self, held)

    def adopt(self, origin: ClientSide, held: bytes) -> None:
        """Take over `origin`'s connection: its client address (after realip), its TLS, and
        the bytes it read but did not use."""
        transport = origin.transport
        self.transport = transport
        self.passes = origin.passes + 1
        transport.set_protocol(self)
        w = self.worker
        self.conn_id = w.next_connection_id()
        self.start = self.last_activity = self.loop.time()
        w.sessions.add(self)
        self.family = origin.family
        self.remote_addr, self.remote_port = origin.remote_addr, origin.remote_port
        self.server_addr, self.server_port = self.listen.addr.host, self.listen.addr.port
        self.pp, self.tls = origin.pp, origin.tls
        if self.listen.proxy_protocol:
            self.state = READING_PROXY_HEADER
            self.pending = bytearray()
            self.timer = self.loop.call_later(self.server.proxy_protocol_timeout, self._on_timer)
            if held:
                self.data_received(held)
            return
        self._after_accept()
        if not held or self.state == DONE:
            return
        if self.state == HANDSHAKING:
            # start_tls has put its SSL protocol on the transport; it starts in the next loop
            # turn, and the bytes go to it just after.
            self.loop.call_soon(pass_module.feed_tls, transport.get_protocol(), held)
        else:
            self.data_received(held)

    def _pick_group(self) -> UpstreamGroup | None:
        """The group for this session: the configured one, or `proxy_pass $variable`'s."""
        srv = self.server
        if srv.upstream is not None:
            return srv.upstream
        assert srv.upstream_var is not None
        text = srv.upstream_var(self)
        group = srv.groups.get(text) if srv.groups else None
        if group is not None:
            return group
        group = self.worker.implicit_groups.get(text)
        if group is not None:
            return group
        try:
            url = parse_url(text, resolve=False)
        except UrlError as exc:
            self.log(ERROR, f'{exc.text} in upstream "{text}" while connecting to upstream')
            return None
        if not url.addrs:
            what = "no port in upstream" if url.port is None else "no resolver defined to resolve"
            self.log(
                ERROR, f'{what} "{url.host if url.port else text}" while connecting to upstream'
            )
            return None
        group = implicit_group(url)
        self.worker.implicit_groups[text] = group
        return group

    def _trusted_for_realip(self) -> bool:
        nets = self.server.realip_from
        if not nets:
            return False
        if self.family == socket.AF_UNIX:
            return "unix:" in nets
        try:
            ip = ipaddress.ip_address(self.remote_addr)
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None) is not None:
            ip = ip.ipv4_mapped  # type: ignore[union-attr]
        return any(not isinstance(n, str) and ip in n for n in nets)

    # -- upstream connect --------------------------------------------------------------

    def connect_upstream(self) -> None:
        """Pick a peer (nginx's balancer) and start connecting to it."""
        self.state = CONNECTING
        now = self.loop.time()
        pick = self.pick
        if pick is None:
            group = self.group = self.server.upstream or self._pick_group()
            if group is None:
                self.finalize(STATUS_BAD_GATEWAY)
                return
            key = None
            if group.key is not None:
                key = group.key(self).encode("utf-8", "surrogateescape")
            balancer = self.balancer = group.balancer
            pick = self.pick = balancer.start(now, key)
            cap = self.server.next_upstream_tries
            if cap and pick.tries > cap:
                pick.tries = cap
            self.next_started = now
        else:
            group = self.group  # type: ignore[assignment]
            balancer = self.balancer  # type: ignore[assignment]
            pick.now = now
        if self.tried:
            # The previous try failed: its $upstream_session_time lasted until now.
            if self.try_times is None:
                self.try_times = []
            self.try_times.append(now - self.connect_started)
        self.connect_started = now
        peer = balancer.get(pick)
        if peer is None:
            self.tried.append(group.name)
            self.log(ERROR, "no live upstreams while connecting to upstream")
            self.finalize(STATUS_BAD_GATEWAY)
            return
        self.peer = peer
        self.tried.append(peer.conf.name)
        # The timer first: a connect that fails at once retries or ends the session from
        # inside the first step below, and must find this try's timer, not arm one after.
        if self.timer is not None:
            self.timer.cancel()
        # Every session arms this one and nearly all cancel it soon: a shared queue per delay
        # instead of a loop timer each (see timers.py).
        self.timer = timers.queue_for(self.loop, self.server.connect_timeout).call_later(
            self._on_timer
        )
        if self.server.proxy_ssl is not None:
            # A Task of its own: the TLS session to resume travels in a context variable,
            # which must not leak into the loop's context (see tls.NEXT_SESSION).
            task = self.loop.create_task(self._connect_tls(peer.conf.addr, self.server.proxy_ssl))
            self.connect_task = task
            task.add_done_callback(self._connect_task_done)
            return
        # A plain connect on the worker's own epoll (core/epoll_io.py): no coroutine, Future
        # or Task.
        reactor = self.worker.reactor
        assert reactor is not None  # the worker makes one when it has stream servers
        addr = peer.conf.addr
        srv = self.server
        try:
            connect = Connect(
                reactor,
                self,
                addr.family,
                addr.address,
                self._upstream_side,
                self._connect_errno,
                srv.tcp_nodelay,
                srv.socket_keepalive,
            )
        except OSError as exc:
            # ngx_event_connect_peer: no retry for these, the session ends with 500.
            self.log(ALERT, f"socket() failed {strerror(exc.errno or 0)} {_CONNECTING}")
            self.finalize(STATUS_INTERNAL)
            return
        local = srv.bind
        if local is not None and addr.family != socket.AF_UNIX:
            try:
                connect.sock.bind(local.address)
            except OSError as exc:
                connect.cancel()
                text = f"bind({local.host}) failed {strerror(exc.errno or 0)} {_CONNECTING}"
                self.log(CRIT, text)
                self.finalize(STATUS_INTERNAL)
                return
        self.connect_task = connect
        connect.start()

    def _upstream_side(self) -> UpstreamSide:
        return UpstreamSide(self)

    def _connect_errno(self, err: int) -> None:
        self._connect_failed(f"connect() failed {strerror(err)}")

    def _connect_task_done(self, task: asyncio.Task[Any]) -> None:
        if self.connect_task is task:
            self.connect_task = None

    async def _connect_tls(self, addr: Any, conf: tls.ProxySsl) -> None:
        """`proxy_ssl on`: connect in plaintext, send the PROXY header (nginx sends it before
        ngx_stream_proxy_ssl_init_connection), then upgrade with start_tls."""
        srv = self.server
        loop = self.loop
        phase = "connect"
        try:
            if addr.family == socket.AF_UNIX:
                raw, _ = await loop.create_unix_connection(asyncio.Protocol, addr.address)
            else:
                local = srv.bind.address if srv.bind is not None else None
                raw, _ = await loop.create_connection(
                    asyncio.Protocol, addr.address[0], addr.address[1], local_addr=local
                )
                sock = raw.get_extra_info("socket")
                if srv.socket_keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if not srv.tcp_nodelay:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
            phase = "handshake"
            try:
                header = self._proxy_header_out(raw)  # type: ignore[arg-type]
            except ValueError as exc:
                raw.abort()
                self.log(ERROR, f"cannot write PROXY protocol header: {exc}")
                self.finalize(STATUS_INTERNAL)
                return
            if header:
                self.up_sent += len(header)
                raw.write(header)
            self.header_sent = True
            peer_key = self.tried[-1]
            if conf.session_reuse:
                tls.NEXT_SESSION.set(conf.sessions.get(peer_key))
            up = UpstreamSide(self)
            name = conf.name if conf.server_name or conf.ctx.check_hostname else None
            try:
                transport = await loop.start_tls(raw, up, conf.ctx, server_hostname=name or None)
            except BaseException:
                raw.abort()
                raise
            if conf.session_reuse:
                obj = transport.get_extra_info("ssl_object")
                if obj is not None and obj.session is not None:
                    conf.sessions[peer_key] = obj.session
            up.connection_made(transport)
        except asyncio.CancelledError:
            return
        except ssl_errors as exc:
            if phase == "connect":
                self._connect_failed(f"connect() failed {strerror(exc.errno or 0)}")
            else:
                text = _upstream_tls_error(exc, conf.name)
                self._connect_failed(text, "SSL handshaking to upstream")

    def _connect_failed(self, message: str, action: str = "connecting to upstream") -> None:
        """ngx_stream_proxy_next_upstream: count the failure, then retry or give up (502)."""
        if self.state != CONNECTING:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.log(ERROR, f"{message} while {action}")
        now = self.loop.time()
        pick, peer = self.pick, self.peer
        assert pick is not None
        if peer is not None:
            pick.now = now
            self.balancer.free(peer, pick, failed=True)  # type: ignore[union-attr]
            self.peer = None
            if peer.disabled_by_fails:
                self.log(WARN, "upstream server temporarily disabled while connecting to upstream")
        srv = self.server
        timeout = srv.next_upstream_timeout
        if (
            pick.tries == 0
            or not srv.next_upstream
            or (timeout and now - self.next_started >= timeout)
        ):
            self.finalize(STATUS_BAD_GATEWAY)
            return
        self.connect_upstream()

    def upstream_connected(self, up: UpstreamSide) -> None:
        if self.state != CONNECTING:
            # The session ended while connecting (client reset, timeout): drop this one.
            assert up.transport is not None
            up.transport.abort()
            return
        self.upstream = up
        self.open_sides += 1
        self.state = RELAYING
        now = self.loop.time()
        self.connected_at = now
        transport = up.transport
        assert transport is not None
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        log = self.server.error_log
        if log.max_level >= INFO:
            local = transport.get_extra_info("sockname")
            local_text = (
                f"unix:{local}" if isinstance(local, str) else peer_text(local[0], local[1])
            )
            log.log(INFO, f"proxy {local_text} connected to {self.tried[-1]}", self.conn_id)
        try:
            header = b"" if self.header_sent else self._proxy_header_out(transport)
        except ValueError as exc:
            self.log(ERROR, f"cannot write PROXY protocol header: {exc}")
            self.finalize(STATUS_INTERNAL)
            return
        pending = self.pending
        self.pending = None
        if pending:
            data = header + b"".join(pending)
        else:
            data = header
        if data:
            self.up_sent += len(data)
            transport.write(data)
        if self.paused is not None:
            self.resume(self.transport, "connect")
        if self.client_eof:
            self.side_eof(from_upstream=False)
        if self.state == RELAYING and self.server.timeout < self.server.connect_timeout:
            # The connect timer fires too late to enforce a shorter idle timeout.
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_later(self.server.timeout, self._on_timer)

    def _proxy_header_out(self, transport: asyncio.Transport) -> bytes:
        version = self.server.proxy_protocol
        if not version:
            return b""
        if self.family == socket.AF_UNIX:
            src = dst = None
            sport = dport = None
        else:
            src, sport, dst, dport = (
                self.remote_addr,
                self.remote_port,
                self.server_addr,
                self.server_port,
            )
        if version == 1:
            if src is None:
                return b"PROXY UNKNOWN\r\n"
            return pp.encode_v1_trusted(src, sport, dst, dport)  # type: ignore[arg-type]
        return pp.encode_v2(
            pp.Command.PROXY, pp.Transport.STREAM, src, sport, dst, dport, self._v2_tlvs()
        )

    def _v2_tlvs(self) -> list[tuple[int, bytes]]:
        """pyngx extension: the server name and ALPN travel in the v2 header, also when TLS is
        passed through (`ssl_preread`), which nginx cannot do."""
        tlvs: list[tuple[int, bytes]] = []
        name: str | None = None
        alpn: str | None = None
        hello = self.client_hello
        if hello is not None:
            name = hello.server_name
            alpn = hello.alpn[0] if hello.alpn else None  # the client's first choice
        elif self.tls is not None:
            name = self.tls.server_name
            alpn = self.tls.selected_alpn_protocol()
        if name:
            tlvs.append((pp.PP2_TYPE_AUTHORITY, name.encode("utf-8", "surrogateescape")))
        if alpn:
            tlvs.append((pp.PP2_TYPE_ALPN, alpn.encode("utf-8", "surrogateescape")))
        return tlvs

    # -- relay -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.state == RELAYING:
            self.bytes_received += len(data)
            self.up_sent += len(data)
            self.last_activity = self.loop.time()
            self.upstream.transport.write(data)  # type: ignore[union-attr]
            if self.upload_rate:
                self.rate_limit(self, len(data))
            return
        if self.state == READING_PROXY_HEADER:
            self._read_proxy_header(data)
            return
        if self.state == PREREADING:
            self.bytes_received += len(data)
            self._preread(data)
            return
        if self.state == CONNECTING:
            # Hold what the client sends until the upstream is there (and its header sent).
            self.bytes_received += len(data)
            if self.pending is None:
                self.pending = []
            assert isinstance(self.pending, list)
            self.pending.append(data)
            if sum(map(len, self.pending)) >= self.server.buffer_size:
                self.pause(self.transport, "connect")

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.state == RELAYING:
            self.side_eof(from_upstream=False)
        elif self.state == READING_PROXY_HEADER:
            self.log(INFO, "client closed connection while reading PROXY protocol")
            self.finalize(STATUS_OK)
        elif self.state == PREREADING:
            self.finalize(STATUS_OK)
        return True

    def side_eof(self, from_upstream: bool) -> None:
        if from_upstream:
            self.upstream_eof = True
        if not self.server.half_close:
            self._disconnected("upstream" if from_upstream else "client")
            return
        if self.client_eof and self.upstream_eof:
            self._disconnected("upstream" if from_upstream else "client")
            return
        # Pass the half-close on: the other side may still answer.
        target = self.transport if from_upstream else self.upstream.transport  # type: ignore[union-attr]
        if target is not None and not target.is_closing() and target.can_write_eof():
            target.write_eof()

    def _disconnected(self, who: str) -> None:
        log = self.server.error_log
        if log.enabled(INFO):
            log.log(
                INFO,
                f"{who} disconnected, bytes from/to client:{self.bytes_received}/{self.bytes_sent}"
                f", bytes from/to upstream:{self.up_received}/{self.up_sent}",
                self.conn_id,
            )
        self.finalize(self.status)

    def _on_timer(self) -> None:
        """One timer per session, serving each state's timeout in turn (one TimerHandle per
        connection in the common case, not one per phase)."""
        self.timer = None
        state = self.state
        if state == RELAYING:
            now = self.loop.time()
            due = self.last_activity + self.server.timeout
            if now < due:
                self.timer = self.loop.call_at(due, self._on_timer)
                return
            self.log(
                INFO,
                f"connection timed out {strerror(errno.ETIMEDOUT)} while proxying connection",
            )
            self.finalize(STATUS_OK)
        elif state == CONNECTING:
            if self.connect_task is not None:
                self.connect_task.cancel()
                self.connect_task = None
            self._connect_failed(f"upstream timed out {strerror(errno.ETIMEDOUT)}")
        elif state == READING_PROXY_HEADER:
            self.log(
                INFO,
                f"client timed out {strerror(errno.ETIMEDOUT)} while reading PROXY protocol",
            )
            self.finalize(STATUS_OK)
        elif state == PREREADING:
            # nginx goes on to proxy without the $ssl_preread_* values.
            self.timer = None
            self._end_preread()

    # -- flow control and rate limits ----------------------------------------------------

    def pause(self, transport: asyncio.Transport, reason: str) -> None:
        if self.paused is None:
            self.paused = {}
        reasons = self.paused.setdefault(id(transport), set())
        if not reasons and not transport.is_closing():
            transport.pause_reading()
        reasons.add(reason)

    def resume(self, transport: asyncio.Transport, reason: str) -> None:
        if self.paused is None:
            return
        reasons = self.paused.get(id(transport))
        if not reasons or reason not in reasons:
            return
        reasons.discard(reason)
        if not reasons and not transport.is_closing():
            transport.resume_reading()

    def rate_limit(self, side: asyncio.Protocol, n: int) -> None:
        """Delay the next read so that the average rate stays at the configured limit."""
        is_client = side is self
        rate = self.upload_rate if is_client else self.download_rate
        transport = self.transport if is_client else self.upstream.transport  # type: ignore[union-attr]
        if self.rate_state is None:
            self.rate_state = {}
        key = 0 if is_client else 1
        now = self.loop.time()
        allowed = max(self.rate_state.get(key, now), now - 1.0) + n / rate
        self.rate_state[key] = allowed
        if allowed > now + 0.001 and transport is not None:
            self.pause(transport, "rate")
            self.loop.call_at(allowed, self.resume, transport, "rate")

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.pause(self.upstream.transport, "flow")

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.resume(self.upstream.transport, "flow")

    # -- ending ------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_sides -= 1
        if self.state == HANDSHAKING and self.handshake is not None:
            # start_tls reports the failure (and its reason) to _handshake_done; the session
            # ends there, with nginx's log line.
            self._maybe_forget()
            return
        if self.state != DONE:
            if exc is not None and isinstance(exc, OSError) and exc.errno:
                self.log(INFO, f"recv() failed {strerror(exc.errno)} while proxying connection")
            self.finalize(self.status)
        self._maybe_forget()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.open_sides -= 1
        self.up_closed_at = self.loop.time()
        if self.state != DONE:
            if exc is not None and isinstance(exc, OSError) and exc.errno:
                self.log(
                    ERROR,
                    f"recv() failed {strerror(exc.errno)}"
                    " while proxying and reading from upstream",
                )
            self.finalize(self.status)
        self._maybe_forget()

    def _maybe_forget(self) -> None:
        if self.open_sides <= 0:
            self.worker.session_closed(self)
            # Break the session <-> upstream cycle so reference counting frees both at once,
            # instead of leaving every finished session to the cyclic garbage collector.
            up = self.upstream
            if up is not None:
                up.session = None  # type: ignore[assignment]
                up.transport = None
                self.upstream = None

    def finalize(self, status: int) -> None:
        """End the session once: close both sides (flushing what is buffered) and log it."""
        if self.state == DONE:
            return
        connecting = self.state == CONNECTING
        self.state = DONE
        self.status = status
        for hook in self.server.on_finalize:
            hook(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.handshake is not None:
            self.handshake.cancel()
        if connecting and self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        self._release_peer()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()
            if self.up_closed_at is None:
                self.up_closed_at = self.loop.time()
        self.transport.close()
        for log in self.server.access_logs:
            log.write(self)

    def _release_peer(self) -> None:
        peer = self.peer
        if peer is not None and self.pick is not None:
            self.peer = None
            self.pick.now = self.loop.time()
            self.balancer.free(peer, self.pick, failed=False)  # type: ignore[union-attr]

    def abort(self) -> None:
        """Fast shutdown: drop both connections now (nginx logs nothing for them)."""
        self.state = DONE
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.handshake is not None:
            self.handshake.cancel()
        self._release_peer()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.abort()
        self.transport.abort()

    # -- logging and variables -------------------------------------------------------

    def upstream_stat(self, what: str) -> str | None:
        """$upstream_* values, one per try as nginx lists them.

        A failed try has sent and received 0 bytes, and has no connect or first byte time
        ("-"); its session time is how long it lasted, as nginx times every try (and even the
        "no live upstreams" one) from its start to the next try or the end.
        """
        tried = self.tried
        if not tried:
            return None
        last = self._last_try_stat(what)
        if len(tried) == 1:
            return last
        failed = "0" if what in ("sent", "received") else "-"
        if what == "session":
            earlier = [f"{t:.3f}" for t in self.try_times or ()]
        else:
            earlier = [failed] * (len(tried) - 1)
        return ", ".join([*earlier, last if last is not None else failed])

    def _last_try_stat(self, what: str) -> str | None:
        if what == "sent":
            return str(self.up_sent)
        if what == "received":
            return str(self.up_received)
        if self.connected_at is None:
            if what == "session":
                return f"{self.loop.time() - self.connect_started:.3f}"
            return None
        if what == "connect":
            return f"{self.connected_at - self.connect_started:.3f}"
        if what == "first_byte":
            fb = self.first_byte_at
            return None if fb is None else f"{fb - self.connect_started:.3f}"
        end = self.up_closed_at if self.up_closed_at is not None else self.loop.time()
        return f"{end - self.connect_started:.3f}"
