"""http variables ($host, $uri, $args, $http_*, ...), as getters on a Request.

Each getter takes the Request and returns a string, or None when the variable has no value
(logged as `-`). Families (`$http_`, `$arg_`, `$cookie_`, `$sent_http_`) are resolved to one
closure per name at configuration time.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from pyngx import NGINX_COMPAT_VERSION
from pyngx.conf.variables import Getter, VariableTable
from pyngx.stream.variables import _binary, time_iso8601, time_local

_HOSTNAME = socket.gethostname()


def _http(name: str) -> Getter:
    key = name.replace("_", "-").lower()

    def getter(r: Any) -> str | None:
        return r.headers.get(key)

    return getter


def _sent_http(name: str) -> Getter:
    key = name.replace("_", "-").lower()

    def getter(r: Any) -> str | None:
        out = r.out
        if key == "content-type":
            return out.content_type
        if key == "content-length":
            return None if out.content_length is None else str(out.content_length)
        if key == "location":
            return out.location
        if key == "last-modified":
            from pyngx.http.httpdate import http_date

            return None if out.last_modified is None else http_date(out.last_modified)
        if key == "etag":
            return out.etag
        # nginx's ngx_http_variable_sent_connection / _keep_alive / _transfer_encoding read
        # the request's state, not the headers list. By the log phase nginx has cleared
        # r->keepalive (ngx_http_set_keepalive, before ngx_http_free_request logs): a
        # finished request logs "close" and no Keep-Alive, as nginx 1.22 does.
        if key == "connection":
            if r.status == 101:
                return "upgrade"
            return "keep-alive" if r.keepalive and not r.done else "close"
        if key == "keep-alive":
            timeout = r.loc.keepalive_header
            if r.keepalive and not r.done and timeout:
                return f"timeout={int(timeout)}"
            return None
        if key == "transfer-encoding":
            return "chunked" if r.chunked else None
        for n, v in out.headers:
            if n.lower() == key:
                return v
        return None

    return getter


def _arg(name: str) -> Getter:
    key = name.lower()

    def getter(r: Any) -> str | None:
        args = r.args
        if not args:
            return None
        for part in args.split("&"):
            k, eq, v = part.partition("=")
            if k.lower() == key:
                return v
        return None

    return getter


def _cookie(name: str) -> Getter:
    def getter(r: Any) -> str | None:
        cookies = r.headers.get("cookie")
        if not cookies:
            return None
        for part in cookies.split(";"):
            k, eq, v = part.strip().partition("=")
            if k == name and eq:
                return v
        return None

    return getter


def _host(r: Any) -> str:
    # nginx: the request line's host, else Host, else the server's first name.
    return r.host or r.srv.names[0]


def _is_args(r: Any) -> str:
    return "?" if r.args else ""


def _request_filename(r: Any) -> str | None:
    from pyngx.http.static import map_uri_to_path

    return map_uri_to_path(r)


def _document_root(r: Any) -> str | None:
    from pyngx.http.static import document_root

    return document_root(r)


def _scheme(r: Any) -> str:
    return "https" if r.conn.is_ssl else "http"


def _https(r: Any) -> str:
    return "on" if r.conn.is_ssl else ""


def _content_length(r: Any) -> str | None:
    return r.headers.get("content-length")


def _remote_user(r: Any) -> str | None:
    auth = r.headers.get("authorization")
    if not auth or auth[:6].lower() != "basic ":
        return None
    import base64
    import binascii

    try:
        text = base64.b64decode(auth[6:].strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None
    user, colon, _ = text.partition(":")
    return user if colon else None


def _server_name(r: Any) -> str:
    return r.srv.names[0]


def _server_protocol(r: Any) -> str:
    v = r.version
    return f"HTTP/{v[0]}.{v[1]}" if v >= (1, 0) else "HTTP/0.9"


def _status(r: Any) -> str:
    return f"{r.status:03d}" if r.status else "000"


def _request_time(r: Any) -> str:
    return f"{max(0.0, time.time() - r.start):.3f}"


def _request_body(r: Any) -> str | None:
    body = getattr(r, "body", None)
    if isinstance(body, bytes | bytearray):
        return body.decode("latin-1")
    return None


def _proxy_add_xff(r: Any) -> str:
    xff = r.headers.get("x-forwarded-for")
    return f"{xff}, {r.conn.remote_addr}" if xff else r.conn.remote_addr


def _upstream(attr: str) -> Getter:
    def getter(r: Any) -> str | None:
        up = r.upstream
        if up is None:
            return None
        fn = getattr(up, "var_" + attr, None)
        return fn() if fn is not None else None

    return getter


def _upstream_http(name: str) -> Getter:
    key = name.replace("_", "-").lower()

    def getter(r: Any) -> str | None:
        up = r.upstream
        return None if up is None else up.header(key)

    return getter


def _upstream_cookie(name: str) -> Getter:
    def getter(r: Any) -> str | None:
        up = r.upstream
        return None if up is None else up.cookie(name)

    return getter


def _tls(fn: Callable[[Any], str | None]) -> Getter:
    def getter(r: Any) -> str | None:
        obj = r.conn.transport.get_extra_info("ssl_object") if r.conn.is_ssl else None
        return None if obj is None else fn(obj)

    return getter


def _pp(attr: str) -> Getter:
    def getter(r: Any) -> str | None:
        pp = r.conn.pp
        if pp is None:
            return None
        v = getattr(pp, attr)
        return None if v is None else str(v)

    return getter


def build_table() -> VariableTable:
    t = VariableTable()
    add = t.add
    add("host", _host)
    add("uri", lambda r: r.uri)
    add("document_uri", lambda r: r.uri)
    add("args", lambda r: r.args or None)
    add("query_string", lambda r: r.args or None)
    add("is_args", _is_args)
    add("request_uri", lambda r: r.request_uri)
    add("request_method", lambda r: r.method)
    add("request", lambda r: r.request_line)
    add("request_length", lambda r: str(r.request_length))
    add("request_time", _request_time)
    add("request_filename", _request_filename)
    add("request_body", _request_body)
    add("request_id", lambda r: _request_id(r))
    add("document_root", _document_root)
    add("realpath_root", lambda r: _realpath(_document_root(r)))
    add("scheme", _scheme)
    add("https", _https)
    add("server_name", _server_name)
    add("server_protocol", _server_protocol)
    add("server_addr", lambda r: r.conn.server_addr)
    add("server_port", lambda r: str(r.conn.server_port))
    add("remote_addr", lambda r: r.conn.remote_addr)
    add("remote_port", lambda r: str(r.conn.remote_port) if r.conn.remote_port else "")
    add("binary_remote_addr", lambda r: _binary(r.conn.remote_addr))
    add("remote_user", _remote_user)
    add("content_length", _content_length)
    add("content_type", lambda r: r.headers.get("content-type"))
    add("status", _status)
    add("body_bytes_sent", lambda r: str(r.body_sent))
    add("bytes_sent", lambda r: str(r.bytes_sent))
    add("connection", lambda r: str(r.conn.conn_id))
    add("connection_requests", lambda r: str(r.conn.requests))
    add("pipe", lambda r: ".")
    add("msec", lambda r: f"{time.time():.3f}")
    add("time_local", lambda r: time_local(time.time()))
    add("time_iso8601", lambda r: time_iso8601(time.time()))
    add("pid", lambda r: str(os.getpid()))
    add("hostname", lambda r: _HOSTNAME)
    add("nginx_version", lambda r: NGINX_COMPAT_VERSION)
    add("limit_rate", lambda r: str(r.loc.limit_rate))
    add("proxy_add_x_forwarded_for", _proxy_add_xff)
    add("proxy_protocol_addr", _pp("src_addr"))
    add("proxy_protocol_port", _pp("src_port"))
    add("proxy_protocol_server_addr", _pp("dst_addr"))
    add("proxy_protocol_server_port", _pp("dst_port"))
    add("http_host", lambda r: r.headers.get("host"))
    add("ssl_protocol", _tls(lambda o: o.version()))
    add("ssl_cipher", _tls(lambda o: (o.cipher() or (None,))[0]))
    add("ssl_server_name", _tls(lambda o: getattr(o, "pyngx_sni", None) or o.server_hostname))
    add("ssl_alpn_protocol", _tls(lambda o: o.selected_alpn_protocol() or None))
    add("ssl_session_reused", _tls(lambda o: "r" if o.session_reused else "."))
    for name in (
        "addr",
        "status",
        "response_time",
        "connect_time",
        "header_time",
        "response_length",
        "bytes_received",
        "bytes_sent",
        "cache_status",
    ):
        add("upstream_" + name, _upstream(name))
    add("proxy_host", _upstream("proxy_host"))
    add("proxy_port", _upstream("proxy_port"))
    t.prefixes["http_"] = _http
    t.prefixes["sent_http_"] = _sent_http
    t.prefixes["arg_"] = _arg
    t.prefixes["cookie_"] = _cookie
    t.prefixes["upstream_http_"] = _upstream_http
    t.prefixes["upstream_cookie_"] = _upstream_cookie
    return t


def _realpath(path: str | None) -> str | None:
    return None if path is None else os.path.realpath(path)


def _request_id(r: Any) -> str:
    extra = r.extra
    if extra is None:
        extra = r.extra = {}
    rid = extra.get("request_id")
    if rid is None:
        rid = extra["request_id"] = os.urandom(16).hex()
    return rid


def decode_arg(value: str) -> str:
    return unquote_plus(value)


HTTP_VARIABLES = build_table()
