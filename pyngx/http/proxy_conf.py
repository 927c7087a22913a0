"""What a location with proxy_pass runs on: its compiled settings (`ProxyConf`) and target.

Built once per location at configuration time (pyngx/http/proxy.py); requests only read them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.http.proxy_response import RedirectRule
from pyngx.http.upstream_groups import Groups, HttpGroup

# The request header plan's items (ProxyConf.plan): (kind, name, value function); a CONST
# item carries a whole constant line as its name.
VALUE, BODY_LENGTH, CHUNKED, CONST = range(4)


@dataclass(slots=True, eq=False)
class Target:
    """Where a request goes: a group and the URL parts nginx keeps in ngx_http_proxy_vars_t."""

    schema: str
    ssl: bool
    group: HttpGroup
    host_header: str  # $proxy_host
    port_text: str  # $proxy_port
    uri: str  # the URI part ("" when none)
    unix: bool
    url: str  # as written (proxy_redirect default)


@dataclass(slots=True)
class HttpProxySsl:
    ctx: ssl.SSLContext
    server_name: bool
    name: Callable[[Any], str] | None  # proxy_ssl_name (None: the proxy_pass host)
    verify: bool
    session_reuse: bool
    sessions: dict[str, ssl.SSLSession] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class ProxyConf:
    target: Target | None  # a static proxy_pass
    dynamic: Callable[[Any], str] | None  # proxy_pass with variables
    groups: Groups
    location: str  # the location prefix the URI part replaces ("" where nginx has none)
    method: Callable[[Any], str] | None
    plan: tuple[Any, ...]  # after head_const: (kind, name, value function) items
    head_const: str  # the leading constant header lines
    skip: frozenset[str]
    pass_request_headers: bool
    pass_request_body: bool
    body: Callable[[Any], str] | None
    http11: bool
    request_buffering: bool
    buffering: bool
    buffer_size: int
    readahead: int
    connect_timeout: float
    send_timeout: float
    read_timeout: float
    next_upstream: int
    next_upstream_tries: int
    next_upstream_timeout: float
    intercept_errors: bool
    ignore_client_abort: bool
    hide: frozenset[str]
    actions: dict[str, int]  # the response head copy's table (proxy_run.header_actions)
    pass_server: bool
    pass_date: bool
    redirects: list[RedirectRule] | None
    cookie_rewrite: Callable[[Any, str], str] | None
    accel_redirect: bool
    ignore_accel_buffering: bool
    ssl: HttpProxySsl | None
    bind: tuple[str, int] | None
    socket_keepalive: bool
    version_text: str = " HTTP/1.0\r\n"
    force_ranges: bool = False  # proxy_force_ranges (cached responses)


__all__ = ["BODY_LENGTH", "CHUNKED", "CONST", "VALUE", "HttpProxySsl", "ProxyConf", "Target"]
