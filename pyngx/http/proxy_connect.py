"""Opening a connection to an upstream peer: TCP or a unix socket, then TLS for https://.

A mixin of the exchange (proxy_run.py): the one coroutine a proxied request may run (only when
no cached connection is there), under the proxy_connect_timeout timer the exchange started;
failures go to the exchange's _connect_failed with nginx's words (connect() failed (111:
Connection refused), the upstream SSL errors of ngx_http_upstream_ssl_handshake).

TLS sessions (proxy_ssl_session_reuse) are kept per peer: the one to offer is set in a context
variable before connecting (uvloop creates the TLS object in the context the transport was
made in; pyngx/stream/tls.py's client context reads it), and saved again once a response is
in, when TLS 1.3's ticket has arrived.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Any

from pyngx.core.log import ALERT, CRIT, strerror
from pyngx.http.upstream_pool import UP_HIGH_WATER, UP_LOW_WATER, UpstreamConn

# create_connection's errors that come from socket(), not from connect().
_SOCKET_ERRORS = (errno.EMFILE, errno.ENFILE)


class Connector:
    __slots__ = ()
    loop: asyncio.AbstractEventLoop
    conf: Any
    target: Any
    state: Any
    r: Any
    connect_task: Any  # a ConnectStep or a Task (Exchange.open_new)

    # Provided by the exchange.
    def _connected(self, conn: UpstreamConn) -> None: ...

    def _connect_failed(self, message: str, action: str) -> None: ...

    def _connect_error(self, level: int, message: str) -> None: ...

    async def _open(self, addr: Any, key: str) -> None:
        """Connect (and handshake); the outcome goes to _connected or _connect_failed."""
        loop = self.loop
        conf = self.conf
        ssl_conf = conf.ssl
        if self.target.ssl and ssl_conf is not None and ssl_conf.session_reuse:
            from pyngx.stream import tls

            # Set before connecting: uvloop runs the TLS object's creation in the context
            # the transport was created in (tls._ClientContext reads the session from it).
            tls.NEXT_SESSION.set(ssl_conf.sessions.get(self.state.peer or ""))
        phase = "connect"
        conn: UpstreamConn | None = None
        bound: socket.socket | None = None  # proxy_bind's socket until uvloop has it
        try:

            def factory() -> UpstreamConn:
                return UpstreamConn(loop, key)

            if addr.family == socket.AF_UNIX:
                transport, conn = await loop.create_unix_connection(factory, addr.address)
            else:
                if conf.bind is not None:
                    # proxy_bind: socket() and bind() here, so that their failures are told
                    # apart from connect()'s (ngx_event_connect_peer: no next upstream).
                    bound = self._bound_socket(addr, conf.bind)
                    if bound is None:
                        return
                    await loop.sock_connect(bound, addr.address)
                    transport, conn = await loop.create_connection(factory, sock=bound)
                    bound = None
                else:
                    transport, conn = await loop.create_connection(
                        factory, addr.address[0], addr.address[1]
                    )
                if conf.socket_keepalive:
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.target.ssl:
                phase = "handshake"
                conn = await self._handshake(conn, transport)
        except asyncio.CancelledError:
            if bound is not None:
                bound.close()
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            return
        except (OSError, EOFError, ssl.SSLError) as exc:
            if bound is not None:
                bound.close()
            self.connect_task = None
            if phase == "connect":
                code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
                if code in _SOCKET_ERRORS:
                    # Out of descriptors: socket() failed, not connect() (uvloop makes the
                    # socket inside create_connection; connect() never says EMFILE).
                    self._connect_error(ALERT, f"socket() failed {strerror(code)}")
                    return
                self._connect_failed(f"connect() failed {strerror(code)}", "connecting to upstream")
            else:
                from pyngx.stream.session import _upstream_tls_error

                self._connect_failed(
                    _upstream_tls_error(exc, self._ssl_name()), "SSL handshaking to upstream"
                )
            return
        self.connect_task = None
        self._connected(conn)

    def _bound_socket(self, addr: Any, local: tuple[str, int]) -> socket.socket | None:
        """A non-blocking socket bound to `proxy_bind`'s address; None when socket() or
        bind() failed (reported, and the request ends with 500)."""
        try:
            sock = socket.socket(addr.family, socket.SOCK_STREAM)
        except OSError as exc:
            code = exc.errno or 0
            self._connect_error(ALERT, f"socket() failed {strerror(code)}")
            return None
        try:
            sock.setblocking(False)
            sock.bind(local)
        except OSError as exc:
            sock.close()
            host, port = local
            name = host if not port else (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            code = exc.errno or 0
            self._connect_error(CRIT, f"bind({name}) failed {strerror(code)}")
            return None
        return sock

    def _ssl_name(self) -> str | None:
        ssl_conf = self.conf.ssl
        if ssl_conf is None:
            return None
        name = ssl_conf.name(self.r) if ssl_conf.name is not None else self.target.host_header
        # ngx_http_upstream_ssl_name: a port (from $proxy_host or $http_host) is cut off.
        if name.startswith("["):
            end = name.find("]")
            return name[: end + 1] if end >= 0 else name
        return name.partition(":")[0]

    async def _handshake(self, conn: UpstreamConn, transport: asyncio.Transport) -> UpstreamConn:
        ssl_conf = self.conf.ssl
        assert ssl_conf is not None
        name = self._ssl_name() or None
        # Python's ssl sends no SNI for a literal address (RFC 6066), as nginx does not; with
        # proxy_ssl_verify the name must be given for the check, so SNI goes with it.
        sni = name.strip("[]") if name and (ssl_conf.server_name or ssl_conf.verify) else None
        new = await self.loop.start_tls(
            transport,
            conn,
            ssl_conf.ctx,
            server_hostname=sni,
            ssl_handshake_timeout=self.conf.connect_timeout + 1,
        )
        if new is None:
            raise ConnectionResetError(errno.ECONNRESET, "handshake failed")
        conn.transport = new  # type: ignore[assignment]
        new.set_write_buffer_limits(UP_HIGH_WATER, UP_LOW_WATER)
        conn.ssl = True
        self._save_session(conn)
        return conn

    def _save_session(self, conn: UpstreamConn) -> None:
        """proxy_ssl_session_reuse: keep the peer's session for the next handshake. With TLS
        1.3 the ticket comes after the handshake, so this runs again when a response is in
        (nginx saves from OpenSSL's new-session callback)."""
        ssl_conf = self.conf.ssl
        if ssl_conf is None or not ssl_conf.session_reuse or self.state is None:
            return
        obj = conn.transport.get_extra_info("ssl_object")
        session = obj.session if obj is not None else None
        if session is not None and (session.has_ticket or obj.version() != "TLSv1.3"):
            ssl_conf.sessions[self.state.peer or ""] = session


__all__ = ["Connector"]
