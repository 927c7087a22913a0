"""ngx_http_proxy_module: `proxy_pass` and its directives, compiled per location.

Configuration time does everything that does not depend on the request: `proxy_pass` is
parsed and its group found (an `upstream` block or the implicit group of its host), the
request header list is merged as nginx's ngx_http_proxy_init_headers merges it (the level's
`proxy_set_header`s, then nginx's defaults not overridden) into a plan of constant lines and
per-request values, the set of client header names not to pass is fixed, `proxy_redirect`
rules and `proxy_hide_header`/`proxy_pass_header` are resolved. A request then costs the URI
(nginx's rules, `upstream_uri`), one pass over the plan and the client's headers, and one
encode: the head goes out in one write, with a small body.

The parts: proxy_conf.py (the compiled settings), proxy_request.py (the URI, the head, the
body, the content handler), proxy_run.py (the exchange with the upstream: ngx_http_upstream),
proxy_connect.py, proxy_response.py (the response head parser, chunked decoding),
proxy_headers.py (the client's response head), proxy_cache.py (proxy_cache: lookup, hits, store,
stale, revalidation), proxy_redirect.py (proxy_redirect and
proxy_cookie_*), proxy_state.py ($upstream_*), proxy_tunnel.py (upgraded connections);
upstream_groups.py and upstream_pool.py (groups, the keepalive cache).

Buffering (`proxy_buffering on`): pyngx has no temporary files; a response is read ahead into
memory up to `proxy_buffers` (number * size) plus `proxy_max_temp_file_size`, capped at
READAHEAD_CAP. That keeps the upstream connection free of slow clients for responses of that
size, and bounds memory per request.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import (
    ONEMORE,
    TAKE1,
    TAKE2,
    TAKE12,
    TAKE1234,
    Context,
    Registry,
    flag_slot,
    ignore,
    number_slot,
    size_slot,
    str_slot,
    time_slot,
)
from pyngx.conf.values import parse_size, parse_url
from pyngx.conf.variables import VariableTable, compile_complex, has_variables, split_complex
from pyngx.http.module import HTTP, LIF, LOC, MAIN_SRV_LOC, LocationConf
from pyngx.http.proxy_conf import (
    BODY_LENGTH,
    CHUNKED,
    CONST,
    VALUE,
    HttpProxySsl,
    ProxyConf,
    Target,
)
from pyngx.http.proxy_headers import header_actions
from pyngx.http.proxy_redirect import cookie_rewriter, redirect_rules
from pyngx.http.proxy_request import escape_uri, handler, upstream_uri
from pyngx.http.proxy_run import (
    FT_BY_STATUS,
    FT_ERROR,
    FT_INVALID_HEADER,
    FT_NON_IDEMPOTENT,
    FT_OFF,
    FT_TIMEOUT,
)
from pyngx.http.upstream_groups import (
    Groups,
    ProxyUrl,
    ProxyUrlError,
    parse_proxy_url,
)

READAHEAD_CAP = 64 * 1024 * 1024
PAGE = 4096

# ngx_http_proxy_headers: nginx's defaults, after the configured ones (unless overridden).
DEFAULT_HEADERS = (
    ("Host", "$proxy_host"),
    ("Connection", "close"),
    ("Content-Length", "$proxy_internal_body_length"),
    ("Transfer-Encoding", "$proxy_internal_chunked"),
    ("TE", ""),
    ("Keep-Alive", ""),
    ("Expect", ""),
    ("Upgrade", ""),
)
# ngx_http_proxy_hide_headers.
DEFAULT_HIDE = (
    "date",
    "server",
    "x-pad",
    "x-accel-expires",
    "x-accel-redirect",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
)
NEXT_UPSTREAM = {
    "error": FT_ERROR,
    "timeout": FT_TIMEOUT,
    "invalid_header": FT_INVALID_HEADER,
    "non_idempotent": FT_NON_IDEMPOTENT,
    "http_500": FT_BY_STATUS[500],
    "http_502": FT_BY_STATUS[502],
    "http_503": FT_BY_STATUS[503],
    "http_504": FT_BY_STATUS[504],
    "http_403": FT_BY_STATUS[403],
    "http_404": FT_BY_STATUS[404],
    "http_429": FT_BY_STATUS[429],
    "updating": 0x800,
    "off": FT_OFF,
}
# -- directives ---------------------------------------------------------------------------


def _proxy_pass(ctx: Context, node: Node) -> None:
    if "proxy_pass" in ctx.slots:
        raise node.error('"proxy_pass" directive is duplicate')
    text = node.args[0]
    spec = ctx.local("__spec__") if ctx.kind == LOC else None
    noname = ctx.kind == LIF or (spec is not None and spec.modifier in ("~", "~*", "@"))
    if has_variables(text):
        ctx.slots["proxy_pass"] = ("var", text, node)
        ctx.locations["proxy_pass"] = node
        return
    try:
        url = parse_proxy_url(text)
    except ProxyUrlError as exc:
        raise node.error(str(exc)) from None
    if noname and url.uri:
        raise node.error(
            '"proxy_pass" cannot have URI part in location given by regular expression, '
            'or inside named location, or inside "if" statement, '
            'or inside "limit_except" block'
        )
    ctx.slots["proxy_pass"] = ("url", url, node)
    ctx.locations["proxy_pass"] = node


def _proxy_redirect(ctx: Context, node: Node) -> None:
    current = ctx.slots.get("proxy_redirect")
    args = node.args
    if len(args) == 1 and args[0] == "off":
        if current is not None:
            raise node.error('"proxy_redirect" directive is duplicate')
        ctx.slots["proxy_redirect"] = "off"
        ctx.locations["proxy_redirect"] = node
        return
    if current == "off":
        raise node.error('"proxy_redirect" directive is duplicate')
    if len(args) == 1 and args[0] != "default":
        raise node.error(f'invalid parameter "{args[0]}"')
    if len(args) == 1:
        pp = ctx.slots.get("proxy_pass")
        if pp is not None and pp[0] == "var":
            raise node.error(
                '"proxy_redirect default" cannot be used with "proxy_pass" directive with variables'
            )
        if pp is None:
            raise node.error(
                '"proxy_redirect default" should be placed after the "proxy_pass" directive'
            )
        entry = ("default", _default_redirect(ctx, pp[1]), node)
    else:
        entry = ("pair", (args[0], args[1]), node)
    ctx.append("proxy_redirect", entry, node)


def _default_redirect(ctx: Context, url: ProxyUrl) -> tuple[str, str]:
    """ngx_http_proxy_merge_loc_conf's rule: the proxy_pass URL back to the location."""
    if url.uri:
        return url.text, _location_name(ctx)
    return url.text + "/", "/"


def _location_name(ctx: Context) -> str:
    c: Context | None = ctx
    while c is not None and c.kind == LIF:
        c = c.parent
    if c is None or c.kind != LOC:
        return ""
    spec = c.local("__spec__")
    if spec is None or spec.modifier in ("~", "~*", "@"):
        return ""
    return str(spec.name)


def _set_header(ctx: Context, node: Node) -> None:
    ctx.append("proxy_set_header", (node.args[0], node.args[1]), node)


def _name_list(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        ctx.append(slot, node.args[0], node)

    return handler


def _http_version(ctx: Context, node: Node) -> None:
    if node.args[0] not in ("1.0", "1.1"):
        raise node.error(f'invalid value "{node.args[0]}" in "{node.name}" directive')
    ctx.set_once("proxy_http_version", node.args[0], node)


def _buffers(ctx: Context, node: Node) -> None:
    try:
        num = int(node.args[0])
        size = parse_size(node.args[1])
    except (ValueError, DirectiveValueError):
        raise node.error(f'invalid value "{" ".join(node.args)}"') from None
    if num <= 0 or size <= 0:
        raise node.error(f'invalid value "{" ".join(node.args)}"')
    ctx.set_once("proxy_buffers", (num, size), node)


def _next_upstream(ctx: Context, node: Node) -> None:
    mask = 0
    for arg in node.args:
        bit = NEXT_UPSTREAM.get(arg)
        if bit is None:
            raise node.error(f'invalid value "{arg}"')
        mask |= bit
    ctx.set_once("proxy_next_upstream", mask, node)


def _bind(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg == "off":
        ctx.set_once("proxy_bind", None, node)
        return
    if has_variables(arg):
        raise node.error('"proxy_bind" with variables is not supported by pyngx')
    try:
        url = parse_url(arg if ":" in arg else f"{arg}:0", port_zero=True)
    except DirectiveValueError as exc:
        raise node.error(f'invalid address "{arg}": {exc}') from None
    ctx.set_once("proxy_bind", (url.addrs[0].host, url.addrs[0].port or 0), node)


def _cookie_rule(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        current = ctx.slots.get(slot)
        if len(node.args) == 1:
            if node.args[0] != "off":
                raise node.error(f'invalid parameter "{node.args[0]}"')
            if current is not None:
                raise node.error(f'"{node.name}" directive is duplicate')
            ctx.slots[slot] = "off"
            return
        if current == "off":
            raise node.error(f'"{node.name}" directive is duplicate')
        ctx.append(slot, (node.args[0], node.args[1]), node)

    return handler


def register(reg: Registry) -> None:
    from pyngx.stream import tls
    from pyngx.stream import upstream as stream_upstream

    stream_upstream.register_http(reg)
    add = reg.add
    msl = MAIN_SRV_LOC
    add("proxy_pass", (LOC, LIF), _proxy_pass, TAKE1)
    add("proxy_redirect", msl, _proxy_redirect, TAKE12)
    add("proxy_set_header", msl, _set_header, TAKE2)
    add("proxy_hide_header", msl, _name_list("proxy_hide_header"), TAKE1)
    add("proxy_pass_header", msl, _name_list("proxy_pass_header"), TAKE1)
    add("proxy_pass_request_headers", msl, flag_slot("proxy_pass_request_headers"))
    add("proxy_pass_request_body", msl, flag_slot("proxy_pass_request_body"))
    add("proxy_set_body", msl, str_slot("proxy_set_body"))
    add("proxy_method", msl, str_slot("proxy_method"))
    add("proxy_http_version", msl, _http_version)
    add("proxy_buffering", msl, flag_slot("proxy_buffering"))
    add("proxy_request_buffering", msl, flag_slot("proxy_request_buffering"))
    add("proxy_buffer_size", msl, size_slot("proxy_buffer_size"))
    add("proxy_buffers", msl, _buffers, TAKE2)
    add("proxy_busy_buffers_size", msl, size_slot("proxy_busy_buffers_size"))
    add("proxy_max_temp_file_size", msl, size_slot("proxy_max_temp_file_size"))
    add("proxy_temp_file_write_size", msl, size_slot("proxy_temp_file_write_size"))
    add("proxy_temp_path", msl, ignore, TAKE1234)
    add("proxy_connect_timeout", msl, time_slot("proxy_connect_timeout"))
    add("proxy_send_timeout", msl, time_slot("proxy_send_timeout"))
    add("proxy_read_timeout", msl, time_slot("proxy_read_timeout"))
    add("proxy_next_upstream", msl, _next_upstream, ONEMORE)
    add("proxy_next_upstream_tries", msl, number_slot("proxy_next_upstream_tries"))
    add("proxy_next_upstream_timeout", msl, time_slot("proxy_next_upstream_timeout"))
    add("proxy_intercept_errors", msl, flag_slot("proxy_intercept_errors"))
    add("proxy_ignore_client_abort", msl, flag_slot("proxy_ignore_client_abort"))
    add("proxy_headers_hash_max_size", msl, number_slot("proxy_headers_hash_max_size"))
    add("proxy_headers_hash_bucket_size", msl, number_slot("proxy_headers_hash_bucket_size"))
    add("proxy_bind", msl, _bind, TAKE12)
    add("proxy_socket_keepalive", msl, flag_slot("proxy_socket_keepalive"))
    add("proxy_send_lowat", msl, size_slot("proxy_send_lowat"))
    add("proxy_limit_rate", msl, size_slot("proxy_limit_rate"))
    add("proxy_force_ranges", msl, flag_slot("proxy_force_ranges"))
    add("proxy_cookie_domain", msl, _cookie_rule("proxy_cookie_domain"), TAKE12)
    add("proxy_cookie_path", msl, _cookie_rule("proxy_cookie_path"), TAKE12)
    add("proxy_ssl_server_name", msl, flag_slot("proxy_ssl_server_name"))
    add("proxy_ssl_name", msl, str_slot("proxy_ssl_name"))
    add("proxy_ssl_verify", msl, flag_slot("proxy_ssl_verify"))
    add("proxy_ssl_verify_depth", msl, number_slot("proxy_ssl_verify_depth"))
    add("proxy_ssl_trusted_certificate", msl, tls._path_slot("proxy_ssl_trusted_certificate"))
    add("proxy_ssl_certificate", msl, tls._path_slot("proxy_ssl_certificate"))
    add("proxy_ssl_certificate_key", msl, tls._path_slot("proxy_ssl_certificate_key"))
    add("proxy_ssl_protocols", msl, tls._protocols("proxy_ssl_protocols"), ONEMORE)
    add("proxy_ssl_ciphers", msl, str_slot("proxy_ssl_ciphers"))
    add("proxy_ssl_session_reuse", msl, flag_slot("proxy_ssl_session_reuse"))
    add("proxy_ssl_crl", msl, ignore, TAKE1)
    add("proxy_ssl_password_file", msl, ignore, TAKE1)
    add("proxy_ssl_conf_command", msl, ignore, TAKE2)


def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
    """The proxy module's own variables (ngx_http_proxy_vars)."""
    table.add("proxy_internal_body_length", _internal_body_length)
    table.add("proxy_internal_chunked", _internal_chunked)
    return []


def _internal_body_length(r: Any) -> str | None:
    n = r.extra.get("proxy_body_length") if r.extra else None
    return None if n is None else str(n)


def _internal_chunked(r: Any) -> str | None:
    return "chunked" if r.extra and r.extra.get("proxy_chunked") else None


# -- configure ------------------------------------------------------------------------------


def _proxy_pass_of(ctx: Context) -> tuple[Any, Context] | None:
    """The proxy_pass a location or `if` block runs, and the level it was written at.

    Not inherited into nested locations (nginx's content handler is the location's own); an
    `if` inside a location runs the location's (ngx_http_proxy_merge_loc_conf's noname rule).
    """
    if ctx.kind == LOC:
        pp = ctx.local("proxy_pass")
        return (pp, ctx) if pp is not None else None
    if ctx.kind == LIF:
        pp = ctx.local("proxy_pass")
        if pp is not None:
            return pp, ctx
        parent = ctx.parent
        if parent is not None and parent.kind == LOC:
            pp = parent.local("proxy_pass")
            if pp is not None:
                return pp, parent
    return None


def configure(ctx: Context, loc: LocationConf) -> None:
    found = _proxy_pass_of(ctx)
    loc.proxy = None
    if found is None:
        return
    (kind, value, node), owner = found
    http = ctx.up(HTTP)
    table: VariableTable = http.slots["variables"]
    groups = Groups.of(http)
    target = None
    dynamic = None
    if kind == "url":
        group = groups.for_url(value, node)
        target = Target(
            value.schema,
            value.ssl,
            group,
            value.host_header,
            value.port_text,
            value.uri,
            value.unix,
            value.text,
        )
    else:
        dynamic = compile_complex(value, table)
    location = _location_name(owner) if owner.kind == LOC else ""
    if owner is ctx and ctx.kind == LOC:
        spec = ctx.local("__spec__")
        if spec is not None and spec.modifier in ("", "^~", "=") and spec.name.endswith("/"):
            loc.auto_redirect = True
    conf = _build_conf(ctx, loc, table, groups, target, dynamic, location, owner)
    loc.proxy = conf
    loc.content = handler


def _build_conf(
    ctx: Context,
    loc: LocationConf,
    table: VariableTable,
    groups: Groups,
    target: Target | None,
    dynamic: Callable[[Any], str] | None,
    location: str,
    owner: Context,
) -> ProxyConf:
    get = ctx.get
    http11 = get("proxy_http_version", "1.0") == "1.1"
    buffer_size = get("proxy_buffer_size", PAGE)
    bufs = get("proxy_buffers", (8, PAGE))
    if bufs[0] < 2:
        where = ctx.where("proxy_buffers")
        raise ConfigError(
            'there must be at least 2 "proxy_buffers"'
            + (f" in {where.file}:{where.line}" if where is not None else "")
        )
    max_temp = get("proxy_max_temp_file_size", 1024 * 1024 * 1024)
    readahead = bufs[0] * bufs[1] + min(max_temp, READAHEAD_CAP)
    plan, skip = _header_plan(get("proxy_set_header", None) or [], table, target)
    head_const = ""
    while plan and isinstance(plan[0], str):
        head_const += plan[0]
        plan = plan[1:]
    rest_plan = tuple((CONST, item, None) if isinstance(item, str) else item for item in plan)
    hide_cfg = {h.lower() for h in get("proxy_hide_header", None) or []}
    pass_cfg = {h.lower() for h in get("proxy_pass_header", None) or []}
    hide = (set(DEFAULT_HIDE) | hide_cfg) - pass_cfg
    ignored: frozenset[str] = get("proxy_ignore_headers", frozenset())
    next_mask = get("proxy_next_upstream", FT_ERROR | FT_TIMEOUT)
    if next_mask & FT_OFF:
        next_mask = FT_OFF
    method = get("proxy_method", None)
    body = get("proxy_set_body", None)
    redirects = redirect_rules(ctx, table, target, _location_name(ctx))
    cookies = cookie_rewriter(ctx, table)
    return ProxyConf(
        target=target,
        dynamic=dynamic,
        groups=groups,
        location=location,
        method=compile_complex(method, table) if method is not None else None,
        plan=rest_plan,
        head_const=head_const,
        skip=skip,
        pass_request_headers=get("proxy_pass_request_headers", True),
        pass_request_body=get("proxy_pass_request_body", True),
        body=compile_complex(body, table) if body is not None else None,
        http11=http11,
        request_buffering=get("proxy_request_buffering", True),
        buffering=get("proxy_buffering", True),
        buffer_size=buffer_size,
        readahead=readahead,
        connect_timeout=get("proxy_connect_timeout", 60.0),
        send_timeout=get("proxy_send_timeout", 60.0),
        read_timeout=get("proxy_read_timeout", 60.0),
        next_upstream=next_mask,
        next_upstream_tries=get("proxy_next_upstream_tries", 0),
        next_upstream_timeout=get("proxy_next_upstream_timeout", 0.0),
        intercept_errors=get("proxy_intercept_errors", False),
        ignore_client_abort=get("proxy_ignore_client_abort", False),
        hide=frozenset(hide),
        actions=header_actions(frozenset(hide), redirects is not None, cookies is not None),
        pass_server="server" in pass_cfg,
        pass_date="date" in pass_cfg,
        redirects=redirects,
        cookie_rewrite=cookies,
        accel_redirect="x-accel-redirect" not in ignored,
        ignore_accel_buffering="x-accel-buffering" in ignored,
        ssl=_ssl_conf(ctx, table, target, dynamic),
        bind=get("proxy_bind", None),
        socket_keepalive=get("proxy_socket_keepalive", False),
        version_text=" HTTP/1.1\r\n" if http11 else " HTTP/1.0\r\n",
        force_ranges=get("proxy_force_ranges", False),
    )


def _header_plan(
    source: list[tuple[str, str]], table: VariableTable, target: Target | None
) -> tuple[tuple[Any, ...], frozenset[str]]:
    """ngx_http_proxy_init_headers: the configured headers, then the defaults not set."""
    merged = list(source)
    names = {n.lower() for n, _ in merged}
    merged += [(n, v) for n, v in DEFAULT_HEADERS if n.lower() not in names]
    skip = frozenset(n.lower() for n, _ in merged)
    plan: list[Any] = []
    for name, value in merged:
        if not value:
            continue
        if value == "$proxy_internal_body_length":
            plan.append((BODY_LENGTH, name, None))
            continue
        if value == "$proxy_internal_chunked":
            plan.append((CHUNKED, name, None))
            continue
        if target is not None:
            # $proxy_host and $proxy_port are constants of a static proxy_pass.
            value = _fold_proxy_vars(value, target)
        if not has_variables(value):
            line = f"{name}: {value}\r\n"
            if plan and isinstance(plan[-1], str):
                plan[-1] += line
            else:
                plan.append(line)
            continue
        plan.append((VALUE, name, compile_complex(value, table)))
    return tuple(plan), skip


def _fold_proxy_vars(value: str, target: Target) -> str:
    """A value made of text, $proxy_host and $proxy_port only becomes a constant."""
    if "$" not in value:
        return value
    parts = split_complex(value)
    consts = {"proxy_host": target.host_header, "proxy_port": target.port_text}
    if any(isinstance(p, tuple) and p[0] not in consts for p in parts):
        return value
    return "".join(p if isinstance(p, str) else consts[p[0]] for p in parts)


_SSL_SLOTS = (
    "proxy_ssl_verify",
    "proxy_ssl_trusted_certificate",
    "proxy_ssl_certificate",
    "proxy_ssl_certificate_key",
    "proxy_ssl_protocols",
    "proxy_ssl_ciphers",
)
_SSL_CACHE: dict[tuple[Any, ...], ssl.SSLContext] = {}


class _SslView:
    """What tls.build_proxy reads, from an http location (proxy_ssl is implied by https)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def get(self, slot: str, default: Any = None) -> Any:
        if slot == "proxy_ssl":
            return True
        if slot == "proxy_ssl_name":
            return None
        return self.ctx.get(slot, default)

    def where(self, slot: str) -> Node | None:
        return self.ctx.where(slot)


def _ssl_conf(
    ctx: Context,
    table: VariableTable,
    target: Target | None,
    dynamic: Callable[[Any], str] | None,
) -> HttpProxySsl | None:
    if target is not None and not target.ssl:
        return None
    from pyngx.stream import tls

    key = tuple(repr(ctx.get(s, None)) for s in _SSL_SLOTS)
    sslctx = _SSL_CACHE.get(key)
    if sslctx is None:
        built = tls.build_proxy(_SslView(ctx))  # type: ignore[arg-type]
        assert built is not None
        sslctx = _SSL_CACHE[key] = built.ctx
        # nginx checks the name itself (ngx_ssl_check_host) only with proxy_ssl_verify.
    name = ctx.get("proxy_ssl_name", None)
    return HttpProxySsl(
        ctx=sslctx,
        server_name=ctx.get("proxy_ssl_server_name", False),
        name=compile_complex(name, table) if name is not None else None,
        verify=ctx.get("proxy_ssl_verify", False),
        session_reuse=ctx.get("proxy_ssl_session_reuse", True),
    )


def finish(http: Context, conf: Any) -> None:
    Groups.of(http).finish()
    _SSL_CACHE.clear()


__all__ = [
    "DEFAULT_HEADERS",
    "HttpProxySsl",
    "ProxyConf",
    "Target",
    "configure",
    "declare",
    "escape_uri",
    "finish",
    "handler",
    "register",
    "upstream_uri",
]
