"""ngx_http_proxy_module: `proxy_pass` and its directives, compiled per location.

Configuration time does everything that does not depend on the request: `proxy_pass` is
parsed and its group found (an `upstream` block or the implicit group of its host), the
request header list is merged as nginx's ngx_http_proxy_init_headers merges it (the level's
`proxy_set_header`s, then nginx's defaults not overridden) into a plan of constant lines and
per-request values, the set of client header names not to pass is fixed, `proxy_redirect`
rules and `proxy_hide_header`/`proxy_pass_header` are resolved. A request then costs the URI
(nginx's rules, `upstream_uri`), one pass over the plan and the client's headers, and one
encode: the head goes out in one write, with a small body.

The URI sent (ngx_http_proxy_create_request):
- `proxy_pass` with variables and a URI part: that URI, as evaluated;
- no URI part and the request's URI untouched: the client's URI exactly as it sent it;
- otherwise the (normalised) $uri with the location's prefix replaced by the URI part (no
  replacement after `rewrite ... break`, nor in regex/named locations or `if` blocks),
  re-escaped when it was escaped or the request was redirected internally, plus `?args`.

Buffering (`proxy_buffering on`): pyngx has no temporary files; a response is read ahead into
memory up to `proxy_buffers` (number * size) plus `proxy_max_temp_file_size`, capped at
READAHEAD_CAP. That keeps the upstream connection free of slow clients for responses of that
size, and bounds memory per request.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.regex import compile_pcre
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
from pyngx.core.log import ERROR
from pyngx.http.module import HTTP, LIF, LOC, MAIN_SRV_LOC, LocationConf
from pyngx.http.proxy_response import RedirectRule
from pyngx.http.proxy_run import (
    FT_BY_STATUS,
    FT_ERROR,
    FT_INVALID_HEADER,
    FT_NON_IDEMPOTENT,
    FT_OFF,
    FT_TIMEOUT,
    Exchange,
    header_actions,
)
from pyngx.http.request import DONE
from pyngx.http.upstream_groups import (
    Groups,
    HttpGroup,
    ProxyUrl,
    ProxyUrlError,
    literal_group,
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
IGNORE_HEADERS = (
    "X-Accel-Redirect",
    "X-Accel-Expires",
    "X-Accel-Limit-Rate",
    "X-Accel-Buffering",
    "X-Accel-Charset",
    "Expires",
    "Cache-Control",
    "Set-Cookie",
    "Vary",
)

# Plan items: (kind, name, value function); _CONST items carry a whole line as their name.
_VALUE, _BODY_LENGTH, _CHUNKED, _CONST = range(4)


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


def _ignore_headers(ctx: Context, node: Node) -> None:
    names = set()
    for arg in node.args:
        match = [h for h in IGNORE_HEADERS if h.lower() == arg.lower()]
        if not match:
            raise node.error(f'invalid value "{arg}"')
        names.add(arg.lower())
    ctx.set_once("proxy_ignore_headers", frozenset(names), node)


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
    add("proxy_ignore_headers", msl, _ignore_headers, ONEMORE)
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
    rest_plan = tuple((_CONST, item, None) if isinstance(item, str) else item for item in plan)
    hide_cfg = {h.lower() for h in get("proxy_hide_header", None) or []}
    pass_cfg = {h.lower() for h in get("proxy_pass_header", None) or []}
    hide = (set(DEFAULT_HIDE) | hide_cfg) - pass_cfg
    ignored: frozenset[str] = get("proxy_ignore_headers", frozenset())
    next_mask = get("proxy_next_upstream", FT_ERROR | FT_TIMEOUT)
    if next_mask & FT_OFF:
        next_mask = FT_OFF
    method = get("proxy_method", None)
    body = get("proxy_set_body", None)
    redirects = _redirects(ctx, table, target)
    cookies = _cookie_rewriter(ctx, table)
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
            plan.append((_BODY_LENGTH, name, None))
            continue
        if value == "$proxy_internal_chunked":
            plan.append((_CHUNKED, name, None))
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
        plan.append((_VALUE, name, compile_complex(value, table)))
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


def _redirects(
    ctx: Context, table: VariableTable, target: Target | None
) -> list[RedirectRule] | None:
    entries = ctx.get("proxy_redirect", None)
    if entries == "off":
        return None
    if not entries:
        if target is None:
            return None  # proxy_pass with variables has no default rule
        if target.uri:
            return [_rule(target.url, _location_name(ctx), table)]
        return [_rule(target.url + "/", "/", table)]
    return [_rule(value[0], value[1], table) for _kind, value, _node in entries]


def _rule(pattern: str, replacement: str, table: VariableTable) -> RedirectRule:
    if pattern.startswith("~"):
        flags = 0
        text = pattern[1:]
        if text.startswith("*"):
            flags = re.IGNORECASE
            text = text[1:]
        rx = compile_pcre(text, flags)
        return RedirectRule(None, rx, _with_captures(replacement, table, rx))
    plain = compile_complex(replacement, table)
    return RedirectRule(compile_complex(pattern, table), None, lambda r, m: plain(r))


def _with_captures(
    text: str, table: VariableTable, rx: re.Pattern[str]
) -> Callable[[Any, re.Match[str] | None], str]:
    pieces: list[Callable[[Any, re.Match[str] | None], str]] = []
    for part in split_complex(text):
        if isinstance(part, str):
            pieces.append(lambda r, m, s=part: s)
            continue
        name = part[0]
        if name.isdigit():
            idx = int(name)
            pieces.append(lambda r, m, i=idx: (m.group(i) or "") if m and i <= m.re.groups else "")
        elif name in rx.groupindex:
            pieces.append(lambda r, m, n=name: (m.group(n) or "") if m else "")
        else:
            getter = table.lookup(name)
            pieces.append(lambda r, m, g=getter: g(r) or "")
    return lambda r, m: "".join(p(r, m) for p in pieces)


def _cookie_rewriter(ctx: Context, table: VariableTable) -> Callable[[Any, str], str] | None:
    domains = ctx.get("proxy_cookie_domain", None)
    paths = ctx.get("proxy_cookie_path", None)
    domains = None if domains == "off" else domains
    paths = None if paths == "off" else paths
    if not domains and not paths:
        return None
    d_rules = [_cookie_rule_compile(a, b, table, True) for a, b in domains or []]
    p_rules = [_cookie_rule_compile(a, b, table, False) for a, b in paths or []]

    def rewrite(r: Any, value: str) -> str:
        """ngx_http_proxy_rewrite_cookie: the Domain and Path attributes; a rewritten cookie
        is rebuilt from its trimmed parts, joined with "; " as nginx does."""
        attrs = []
        for part in value.split(";"):
            key, eq, val = part.partition("=")
            attrs.append([key.strip(" "), val.strip(" ") if eq else None])
        changed = False
        for attr in attrs[1:]:
            k = attr[0].lower()
            rules = d_rules if k == "domain" else p_rules if k == "path" else None
            if not rules or attr[1] is None:
                continue
            for rule in rules:
                new = rule(r, attr[1])
                if new is not None:
                    attr[1] = new
                    changed = True
                    break
        if not changed:
            return value
        return "; ".join(k if v is None else f"{k}={v}" for k, v in attrs)

    return rewrite


def _cookie_rule_compile(
    pattern: str, replacement: str, table: VariableTable, domain: bool
) -> Callable[[Any, str], str | None]:
    if pattern.startswith("~"):
        flags = 0
        text = pattern[1:]
        if text.startswith("*"):
            flags = re.IGNORECASE
            text = text[1:]
        rx = compile_pcre(text, flags)
        repl = _with_captures(replacement, table, rx)

        def regex_rule(r: Any, v: str) -> str | None:
            m = rx.match(v)
            return None if m is None else repl(r, m)

        return regex_rule
    pat = compile_complex(pattern, table)
    rep = compile_complex(replacement, table)
    if domain:

        def domain_rule(r: Any, v: str) -> str | None:
            p = pat(r).lstrip(".")
            vv = v[1:] if v.startswith(".") else v
            if vv.lower() != p.lower():
                return None
            return (v[:1] if v.startswith(".") else "") + rep(r)

        return domain_rule

    def path_rule(r: Any, v: str) -> str | None:
        p = pat(r)
        if not v.startswith(p):
            return None
        return rep(r) + v[len(p) :]

    return path_rule


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


# -- the URI ----------------------------------------------------------------------------------

# NGX_ESCAPE_URI: " ", "#", "%", "?", controls and non-ASCII bytes.
_ESCAPE = re.compile(rb"[\x00-\x20#%?\x7f-\xff]")


def escape_uri(data: bytes) -> bytes:
    if _ESCAPE.search(data) is None:
        return data
    return _ESCAPE.sub(lambda m: b"%%%02X" % m.group()[0], data)


def _unparsed(r: Any) -> str:
    """nginx's r->unparsed_uri: the request target without an absolute-form's scheme://host."""
    target: str = r.request_uri
    if target[:1] != "/" and "://" in target[:10]:
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        q = rest.find("?")
        if slash < 0 or (0 <= q < slash):
            return "/" + rest[q:] if q >= 0 else "/"
        return rest[slash:]
    return target


def upstream_uri(r: Any, conf: ProxyConf, uri_part: str, from_variables: bool) -> str:
    """The request line's URI (ngx_http_proxy_create_request).

    Text as the request head was read (its characters are its bytes, latin-1); the parts nginx
    re-escapes are escaped from $uri's bytes (UTF-8), so the result is ASCII there.
    """
    if from_variables and uri_part:
        return uri_part
    if not uri_part and r.valid_unparsed_uri:
        return _unparsed(r)
    valid_location = r.valid_location
    loc_len = len(conf.location) if (valid_location and uri_part) else 0
    rest = r.uri[loc_len:]
    if r.internal or "%" in _unparsed(r).partition("?")[0]:
        rest = escape_uri(rest.encode("utf-8", "surrogateescape")).decode("ascii")
    out = uri_part + rest if valid_location and uri_part else rest
    if r.args:
        return f"{out}?{r.args}"
    return out


# -- the content handler ---------------------------------------------------------------------


def handler(r: Any) -> int | None:
    """The location's content handler (ngx_http_proxy_handler)."""
    conf: ProxyConf = r.loc.proxy
    target = conf.target
    from_variables = False
    if target is None:
        target = _eval_target(r, conf)
        if isinstance(target, int):
            return target
        from_variables = True
    uri = upstream_uri(r, conf, target.uri, from_variables)
    if not uri:
        r.log(ERROR, "zero length URI to proxy")
        return 500
    method = conf.method(r) if conf.method is not None else r.method
    ex = Exchange(r, conf, target, uri)
    ex.method = method
    r.upstream = ex
    framing = r.framing
    has_body = framing is not None and (framing.chunked or bool(framing.content_length))
    body_value = None
    if conf.body is not None:
        body_value = conf.body(r).encode("utf-8", "surrogateescape")
    streaming = (
        has_body
        and not conf.request_buffering
        and body_value is None
        and conf.pass_request_body
        and (not framing.chunked or conf.http11)
    )
    ex.streaming = streaming
    # $proxy_internal_body_length / $proxy_internal_chunked live in r.extra (made when needed).
    extra = r.extra
    if body_value is not None:
        ex.body = [body_value] if body_value else []
        extra = _extra(r)
        extra["proxy_body_length"] = len(body_value)
    elif conf.pass_request_body and has_body:
        ex.body = []
    if streaming and not framing.chunked:
        extra = _extra(r)
        extra["proxy_body_length"] = framing.content_length
    if not has_body:
        if body_value is None and framing is not None and framing.content_length == 0:
            _extra(r)["proxy_body_length"] = 0
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    extra = _extra(r)
    kept = extra.get("proxy_body")
    if kept is not None:
        # Proxied again (error_page, X-Accel-Redirect): nginx sends the body it read again.
        if ex.body is not None and body_value is None:
            ex.body = list(kept)
        if body_value is None:
            extra["proxy_body_length"] = sum(len(p) for p in kept)
        extra.pop("proxy_chunked", None)
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    if streaming:
        ex.body_done = False
        r.conn.read_body(ex.body_piece, r.loc.client_max_body_size)
        if r.done:
            return DONE
        if framing.chunked:
            if ex.body_done:
                # All of it came with the head: nginx sends it with its length.
                extra["proxy_body_length"] = sum(len(p) for p in ex.body or ())
            else:
                extra["proxy_chunked"] = True
                ex.chunk_body = True
        ex.head_bytes = build_head(r, conf, method, uri)
        ex.start()
        return DONE
    # proxy_request_buffering on: the whole body first, then the upstream.
    ex.body_done = False
    reader = _BodyCollector(r, conf, ex, method, uri, body_value)
    r.conn.read_body(reader.piece, r.loc.client_max_body_size)
    return DONE


def _extra(r: Any) -> dict[str, Any]:
    extra = r.extra
    if extra is None:
        extra = r.extra = {}
    return extra  # type: ignore[no-any-return]


class _BodyCollector:
    """Reads the whole client body (proxy_request_buffering on), then starts the exchange."""

    __slots__ = ("r", "conf", "ex", "method", "uri", "size", "set_body", "pieces")

    def __init__(
        self,
        r: Any,
        conf: ProxyConf,
        ex: Exchange,
        method: str,
        uri: bytes,
        set_body: bytes | None,
    ) -> None:
        self.r = r
        self.conf = conf
        self.ex = ex
        self.method = method
        self.uri = uri
        self.size = 0
        self.set_body = set_body
        self.pieces: list[bytes] = []

    def piece(self, data: bytes | None) -> None:
        ex = self.ex
        if data is None:
            r = self.r
            if r.done:
                return
            pieces = self.pieces
            r.extra["proxy_body"] = pieces
            if self.size <= r.loc.client_body_buffer_size:
                r.body = b"".join(pieces)  # $request_body: nginx has it when in memory
            if self.set_body is None:
                # A chunked body was read whole: it goes on with its length.
                r.extra["proxy_body_length"] = self.size
            if ex.body is not None and self.set_body is None:
                ex.body = pieces
            ex.head_bytes = build_head(r, self.conf, self.method, self.uri)
            ex.body_done = True
            ex.start()
            return
        if not data:
            return
        self.size += len(data)
        self.pieces.append(data)


def _eval_target(r: Any, conf: ProxyConf) -> Target | int:
    """ngx_http_proxy_eval: a proxy_pass with variables, for this request."""
    assert conf.dynamic is not None
    text = conf.dynamic(r)
    try:
        url = parse_proxy_url(text)
    except ProxyUrlError as exc:
        msg = str(exc)
        if msg == "invalid URL prefix":
            r.log(ERROR, f'invalid URL prefix in "{text}"')
        else:
            r.log(ERROR, msg)
        return 500
    uri = url.uri
    if uri.startswith("?"):
        uri = "/" + uri
    groups = conf.groups
    group = groups.find(url.host, url.port, url.default_port) if not url.unix else None
    if group is None:
        cache = _runtime_groups(groups)
        key = (url.host.lower(), url.port if url.port is not None else url.default_port)
        group = cache.get(key)
        if group is None:
            group = literal_group(url)
            if group is None:
                r.log(ERROR, f"no resolver defined to resolve {url.host}")
                return 502
            if len(cache) < 1024:
                cache[key] = group
    return Target(
        url.schema, url.ssl, group, url.host_header, url.port_text, uri, url.unix, url.text
    )


def _runtime_groups(groups: Groups) -> dict[Any, HttpGroup]:
    cache: dict[Any, HttpGroup] | None = getattr(groups, "runtime", None)
    if cache is None:
        cache = {}
        groups.runtime = cache  # type: ignore[attr-defined]
    return cache


def build_head(r: Any, conf: ProxyConf, method: str, uri: str) -> bytes:
    """The request head to the upstream, as one bytes object (one encode)."""
    parts = [method, " ", uri, conf.version_text, conf.head_const]
    append = parts.append
    if conf.plan:
        extra = r.extra
        for kind, name, fn in conf.plan:
            if kind == _VALUE:
                v = fn(r)
            elif kind == _BODY_LENGTH:
                n = extra.get("proxy_body_length") if extra else None
                if n is None:
                    continue
                v = str(n)
            elif kind == _CHUNKED:
                if not (extra and extra.get("proxy_chunked")):
                    continue
                v = "chunked"
            else:
                append(name)  # a constant line after variable ones
                continue
            if v:
                append(f"{name}: {v}\r\n")
    if conf.pass_request_headers:
        skip = conf.skip
        for name, value in r.header_list:
            if name.lower() not in skip:
                append(f"{name}: {value}\r\n")
    append("\r\n")
    text = "".join(parts)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


__all__ = [
    "DEFAULT_HEADERS",
    "HttpProxySsl",
    "ProxyConf",
    "Target",
    "build_head",
    "configure",
    "declare",
    "escape_uri",
    "finish",
    "handler",
    "register",
    "upstream_uri",
]
