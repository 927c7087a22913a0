"""Stream variables ($remote_addr, $upstream_addr, ...), as getters on a session.

Each getter takes the session object (`pyngx.stream.session.ClientSide`) and returns a string,
or None when the variable has no value (logged as `-`). Times are formatted as nginx does:
seconds with millisecond precision.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from pyngx import NGINX_COMPAT_VERSION
from pyngx.conf.variables import VariableTable
from pyngx.stream import tls

_HOSTNAME = socket.gethostname()


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def _binary(addr: str | None) -> str | None:
    if not addr:
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, addr).decode("latin-1")
        except OSError:
            continue
    return None


def time_local(t: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(t))


def time_iso8601(t: float) -> str:
    s = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))
    return s[:-2] + ":" + s[-2:]


def _pp(attr: str) -> Any:
    def getter(s: Any) -> str | None:
        pp = s.pp
        if pp is None:
            return None
        v = getattr(pp, attr)
        return None if v is None else str(v)

    return getter


def _port(v: int | None) -> str | None:
    return None if v is None else str(v)


def _tls(fn: Any) -> Any:
    """A $ssl_* getter: no value on a session without TLS from the client."""

    def getter(s: Any) -> str | None:
        obj = s.tls
        return None if obj is None else fn(obj)

    return getter


def _verify(obj: Any) -> str:
    # A certificate that failed verification fails the handshake: FAILED is never seen.
    return "SUCCESS" if obj.getpeercert() else "NONE"


def build_table() -> VariableTable:
    t = VariableTable()
    add = t.add
    add("remote_addr", lambda s: s.remote_addr)
    add("remote_port", lambda s: _port(s.remote_port))
    add("binary_remote_addr", lambda s: _binary(s.remote_addr))
    add("server_addr", lambda s: s.server_addr)
    add("server_port", lambda s: _port(s.server_port))
    add("proxy_protocol_addr", _pp("src_addr"))
    add("proxy_protocol_port", _pp("src_port"))
    add("proxy_protocol_server_addr", _pp("dst_addr"))
    add("proxy_protocol_server_port", _pp("dst_port"))
    add("bytes_sent", lambda s: str(s.bytes_sent))
    add("bytes_received", lambda s: str(s.bytes_received))
    add("connection", lambda s: str(s.conn_id))
    add("hostname", lambda s: _HOSTNAME)
    add("msec", lambda s: f"{time.time():.3f}")
    add("pid", lambda s: str(os.getpid()))
    add("nginx_version", lambda s: NGINX_COMPAT_VERSION)
    add("protocol", lambda s: getattr(s, "protocol", "TCP"))  # UdpSession says "UDP"
    add("session_time", lambda s: _ms(s.session_time()))
    add("status", lambda s: str(s.status))
    add("time_iso8601", lambda s: time_iso8601(time.time()))
    add("time_local", lambda s: time_local(time.time()))
    add("upstream_addr", lambda s: s.upstream_addr_text())
    add("upstream_bytes_sent", lambda s: s.upstream_stat("sent"))
    add("upstream_bytes_received", lambda s: s.upstream_stat("received"))
    add("upstream_connect_time", lambda s: s.upstream_stat("connect"))
    add("upstream_first_byte_time", lambda s: s.upstream_stat("first_byte"))
    add("upstream_session_time", lambda s: s.upstream_stat("session"))
    add("ssl_protocol", _tls(lambda o: o.version()))
    add("ssl_cipher", _tls(lambda o: (o.cipher() or (None,))[0]))
    add("ssl_server_name", _tls(lambda o: getattr(o, "pyngx_sni", None) or None))
    add("ssl_alpn_protocol", _tls(lambda o: o.selected_alpn_protocol() or None))
    add("ssl_session_reused", _tls(lambda o: "r" if o.session_reused else "."))
    add("ssl_client_s_dn", _tls(tls.peer_subject_dn))
    add("ssl_client_verify", _tls(_verify))
    add("ssl_preread_server_name", lambda s: _hello(s, "server_name"))
    add("ssl_preread_alpn_protocols", lambda s: _hello(s, "alpn_protocols"))
    add("ssl_preread_protocol", lambda s: _hello(s, "protocol"))
    return t


def _hello(s: Any, attr: str) -> str | None:
    # No ClientHello read: not found ("-" in logs); read but without the field: empty.
    hello = s.client_hello
    if hello is None:
        return None
    value = getattr(hello, attr)
    return value or ""


STREAM_VARIABLES = build_table()
