"""The stream module's directives and their compilation into `StreamServer` objects.

Directives store raw values into the level they appear at (`stream` or `server`); `build`
merges each server with its `stream` block and nginx's defaults (ngx_stream_proxy_merge_srv_conf)
and resolves upstream addresses, so that connections only read frozen attributes.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import (
    NOARGS,
    ONEMORE,
    TAKE1,
    TAKE2,
    TAKE12,
    TWOMORE,
    Context,
    Registry,
    flag_slot,
    ignore,
    number_slot,
    size_slot,
    time_slot,
)
from pyngx.conf.values import (
    SockAddr,
    Url,
    UrlError,
    parse_number,
    parse_size,
    parse_time,
    parse_url,
    resolve_host,
)
from pyngx.conf.variables import VariableTable, compile_complex, has_variables
from pyngx.core.log import ErrorLog
from pyngx.stream import access as stream_access
from pyngx.stream import pass_module, set_return, tls
from pyngx.stream.access_log import (
    AccessLog,
    access_log_directive,
    log_format_directive,
)
from pyngx.stream.map import CompiledMap, MapConf, MapHolder, parse_map_block
from pyngx.stream.resolver import ResolverConf, stream_resolver
from pyngx.stream.upstream import (
    UpstreamConf,
    UpstreamGroup,
    build_group,
    check_zones,
    implicit_group,
)
from pyngx.stream.variables import STREAM_VARIABLES

STREAM, SERVER = "stream", "stream_server"
BOTH = (STREAM, SERVER)
NGX_LISTEN_BACKLOG = 511


@dataclass(frozen=True, slots=True)
class ListenOpts:
    """One `listen` of a stream server; `where` is `file:line` for bind errors."""

    addr: SockAddr
    wildcard: bool
    proxy_protocol: bool
    backlog: int
    bind: bool
    ipv6only: bool
    reuseport: bool
    so_keepalive: bool | tuple[int | None, int | None, int | None] | None
    rcvbuf: int | None
    sndbuf: int | None
    where: str
    ssl: bool = False
    udp: bool = False


@dataclass(frozen=True, slots=True)
class StreamServer:
    index: int
    listens: tuple[ListenOpts, ...]
    upstream: UpstreamGroup | None
    next_upstream: bool
    next_upstream_tries: int
    next_upstream_timeout: float
    proxy_protocol: int  # 0 off, 1 on (v1), 2 v2
    connect_timeout: float
    timeout: float
    buffer_size: int
    bind: SockAddr | None
    socket_keepalive: bool
    upload_rate: int
    download_rate: int
    half_close: bool
    tcp_nodelay: bool
    preread_buffer_size: int
    preread_timeout: float
    proxy_protocol_timeout: float
    realip_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | str, ...]
    access_logs: tuple[AccessLog, ...]
    error_log: ErrorLog
    where: str
    ssl: tls.ServerSsl | None = None
    proxy_ssl: tls.ProxySsl | None = None
    # `proxy_pass $variable`: evaluated per connection to a group name or an address; `groups`
    # holds every `upstream` block of the configuration by name (filled once all are built).
    upstream_var: Callable[[Any], str] | None = None
    groups: dict[str, UpstreamGroup] | None = None
    ssl_preread: bool = False
    # Preaccess/access phase handlers (session -> None to go on, or the $status to end with),
    # in nginx's order; added by the modules that need them (limit_conn, set, access).
    access: tuple[Callable[[Any], int | None], ...] = ()
    # UDP sessions (pyngx.stream.udp): datagrams expected per client datagram (None: no
    # limit), and client datagrams after which the session stops taking new ones (0: none).
    responses: int | None = None
    requests: int = 0
    # Called with the session when it ends (limit_conn gives its counts back).
    on_finalize: tuple[Callable[[Any], None], ...] = ()
    # `return value;`: the content handler instead of proxying (set_return.respond).
    return_value: Callable[[Any], str] | None = None
    # `pass address;`: hand the connection to another listen of this configuration.
    pass_to: Callable[[Any], str] | None = None


# -- handlers ---------------------------------------------------------------------------


def _stream(ctx: Context, node: Node) -> None:
    if "stream" in ctx.slots:
        raise node.error('"stream" directive is duplicate')
    child = ctx.child(STREAM, node)
    ctx.slots["stream"] = child
    child.slots["log_formats"] = {}
    table = child.slots["variables"] = STREAM_VARIABLES.copy()
    # nginx resolves variable names after the whole block is read, so a `map` may follow the
    # directives that use its variable: declare every map's name before running the block.
    maps: list[tuple[MapConf, MapHolder]] = []
    for sub in node.block or []:
        if sub.name == "map" and sub.block is not None and len(sub.args) == 2:
            conf = parse_map_block(sub.args[0], sub.args[1], sub)
            if conf.name in table.getters:
                raise sub.error(f'the duplicate "{conf.name}" variable')
            holder = MapHolder()
            table.add(conf.name, holder.evaluate)
            maps.append((conf, holder))
    child.slots["maps"] = maps
    declared = set_return.declare(node.block or [], table)  # geo, split_clients, set
    child.run(node.block or [])
    for conf, holder in maps:
        holder.compiled = CompiledMap(conf, table)
    for compile_later in declared:
        compile_later()


def _map(ctx: Context, node: Node) -> None:
    """Declared and compiled by `_stream` (see there); here only checked for its place."""


def _server(ctx: Context, node: Node) -> None:
    child = ctx.child(SERVER, node)
    child.run(node.block or [])


_SO_KEEPALIVE_PARTS = 3


def _parse_keepalive(value: str) -> bool | tuple[int | None, int | None, int | None]:
    if value in ("on", "off"):
        return value == "on"
    parts = value.split(":")
    if len(parts) != _SO_KEEPALIVE_PARTS:
        raise ValueError
    out: list[int | None] = []
    for i, p in enumerate(parts):
        if not p:
            out.append(None)
        elif i < 2:
            out.append(int(parse_time(p)))
        else:
            out.append(parse_number(p))
    return (out[0], out[1], out[2])


def _listen(ctx: Context, node: Node) -> None:
    text = node.args[0]
    try:
        url = parse_url(text, listen=True)
    except UrlError as exc:
        raise node.error(f'{exc.text} in "{text}" of the "listen" directive') from None
    if url.port is None and not text.startswith("unix:"):
        # nginx binds such a listen to an ephemeral port (port 0); so do we.
        url = parse_url(
            f"[{url.host}]:0" if ":" in url.host else f"{url.host}:0", listen=True, port_zero=True
        )
    opts: dict[str, Any] = {
        "proxy_protocol": False,
        "backlog": NGX_LISTEN_BACKLOG,
        "bind": False,
        "ipv6only": True,
        "reuseport": False,
        "so_keepalive": None,
        "rcvbuf": None,
        "sndbuf": None,
    }
    for param in node.args[1:]:
        name, eq, value = param.partition("=")
        if param == "proxy_protocol":
            opts["proxy_protocol"] = True
        elif param == "bind":
            opts["bind"] = True
        elif param == "reuseport":
            opts["reuseport"] = True
        elif name == "backlog" and eq:
            try:
                opts["backlog"] = int(value)
            except ValueError:
                raise node.error(f'invalid backlog "{value}"') from None
            if opts["backlog"] == 0:
                raise node.error(f'invalid backlog "{value}"')
        elif name in ("rcvbuf", "sndbuf") and eq:
            try:
                opts[name] = parse_size(value)
            except DirectiveValueError:
                raise node.error(f'invalid {name} "{value}"') from None
        elif name == "ipv6only" and eq:
            if value not in ("on", "off"):
                raise node.error(f'invalid ipv6only flags "{value}"')
            opts["ipv6only"] = value == "on"
            opts["bind"] = True
        elif name == "so_keepalive" and eq:
            try:
                opts["so_keepalive"] = _parse_keepalive(value)
            except (ValueError, DirectiveValueError):
                raise node.error(f'invalid so_keepalive value: "{value}"') from None
            opts["bind"] = True
        elif param == "ssl":
            opts["ssl"] = True
        elif param == "udp":
            opts["udp"] = True
        elif name in ("fastopen", "deferred", "setfib", "accept_filter"):
            continue
        else:
            raise node.error(f'the invalid "{param}" parameter')
    if opts.get("udp"):
        # nginx's checks (ngx_stream_core_listen), in its order and words.
        for name, bad in (
            ("backlog", any(p.startswith("backlog=") for p in node.args[1:])),
            ("ssl", opts.get("ssl")),
            ("so_keepalive", opts["so_keepalive"] is not None),
            ("proxy_protocol", opts["proxy_protocol"]),
        ):
            if bad:
                raise node.error(f'"{name}" parameter is incompatible with "udp"')
    if opts.get("ssl") and opts["proxy_protocol"]:
        # The PROXY header would be read in plaintext before the handshake (nginx's order);
        # the bytes after it would have to be fed into the TLS layer.
        raise node.error('"listen ... ssl proxy_protocol" is not supported yet')
    where = f"{node.file}:{node.line}"
    for addr in url.addrs:
        wildcard = addr.host in ("0.0.0.0", "::")
        if opts["reuseport"]:
            opts["bind"] = True
        ctx.append("listen", ListenOpts(addr, wildcard, where=where, **opts), node)


def _proxy_pass(ctx: Context, node: Node) -> None:
    text = node.args[0]
    if "proxy_pass" in ctx.slots:
        raise node.error('"proxy_pass" directive is duplicate')
    if has_variables(text):
        # Evaluated per connection: an upstream group's name or an address with a port.
        table = ctx.up(STREAM).slots["variables"]
        ctx.slots["proxy_pass"] = None
        ctx.slots["proxy_pass_var"] = compile_complex(text, table)
        ctx.locations["proxy_pass"] = node
        return
    try:
        url = parse_url(text, resolve=False)
    except UrlError as exc:
        raise node.error(f'{exc.text} in upstream "{text}"') from None
    ctx.slots["proxy_pass"] = url
    ctx.locations["proxy_pass"] = node


def _proxy_protocol(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    values = {"on": 1, "off": 0, "v2": 2}
    if arg.lower() not in values:
        raise DirectiveValueError(
            f'invalid value "{arg}" in "{node.name}" directive, it must be "on", "off" or "v2"',
            full=True,
        )
    ctx.set_once("proxy_protocol", values[arg.lower()], node)


def _proxy_bind(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg == "off":
        ctx.set_once("proxy_bind", None, node)
        return
    if len(node.args) > 1 and node.args[1] != "transparent":
        raise node.error(f'invalid parameter "{node.args[1]}"')
    if len(node.args) > 1:
        raise node.error('the "transparent" parameter of "proxy_bind" is not supported')
    if "$" in arg:
        raise node.error('variables in "proxy_bind" are not supported yet')
    try:
        ip = ipaddress.ip_address(arg)
    except ValueError:
        raise node.error(f'invalid address "{arg}"') from None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    ctx.set_once("proxy_bind", SockAddr(family, (str(ip), 0)), node)


def _set_real_ip_from(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg == "unix:":
        ctx.append("set_real_ip_from", "unix:", node)
        return
    try:
        net = ipaddress.ip_network(arg, strict=False)
    except ValueError:
        if "/" in arg:
            raise node.error(f'invalid parameter "{arg}"') from None
        try:
            addrs = resolve_host(arg, 0)
        except UrlError:
            raise node.error(f'host not found in set_real_ip_from "{arg}"') from None
        for a in addrs:
            ctx.append("set_real_ip_from", ipaddress.ip_network(a.host), node)
        return
    ctx.append("set_real_ip_from", net, node)


def _log_format(ctx: Context, node: Node) -> None:
    log_format_directive(ctx, node, ctx.slots["variables"])


def _access_log(ctx: Context, node: Node) -> None:
    top = ctx.up(STREAM)
    access_log_directive(ctx, node, top.slots["log_formats"], top.slots["variables"], None)


def register(reg: Registry) -> None:
    reg.add("stream", ["main"], _stream, NOARGS, block=True)
    reg.add("server", [STREAM], _server, NOARGS, block=True)
    reg.add("listen", [SERVER], _listen, ONEMORE)
    reg.add("proxy_pass", [SERVER], _proxy_pass)
    reg.add("proxy_protocol", BOTH, _proxy_protocol)
    reg.add("proxy_connect_timeout", BOTH, time_slot("proxy_connect_timeout"))
    reg.add("proxy_timeout", BOTH, time_slot("proxy_timeout"))
    reg.add("proxy_responses", BOTH, number_slot("proxy_responses"))
    reg.add("proxy_requests", BOTH, number_slot("proxy_requests"))
    reg.add("proxy_buffer_size", BOTH, size_slot("proxy_buffer_size"))
    reg.add("proxy_bind", BOTH, _proxy_bind, TAKE12)
    reg.add("proxy_socket_keepalive", BOTH, flag_slot("proxy_socket_keepalive"))
    reg.add("proxy_upload_rate", BOTH, size_slot("proxy_upload_rate"))
    reg.add("proxy_download_rate", BOTH, size_slot("proxy_download_rate"))
    reg.add("proxy_half_close", BOTH, flag_slot("proxy_half_close"))
    reg.add("tcp_nodelay", BOTH, flag_slot("tcp_nodelay"))
    reg.add("preread_buffer_size", BOTH, size_slot("preread_buffer_size"))
    reg.add("preread_timeout", BOTH, time_slot("preread_timeout"))
    reg.add("proxy_protocol_timeout", BOTH, time_slot("proxy_protocol_timeout"))
    reg.add("set_real_ip_from", BOTH, _set_real_ip_from)
    reg.add("map", [STREAM], _map, TAKE2, block=True)
    reg.add("ssl_preread", BOTH, flag_slot("ssl_preread"))
    reg.add("proxy_next_upstream", BOTH, flag_slot("proxy_next_upstream"))
    reg.add("proxy_next_upstream_tries", BOTH, number_slot("proxy_next_upstream_tries"))
    reg.add("proxy_next_upstream_timeout", BOTH, time_slot("proxy_next_upstream_timeout"))
    tls.register(reg, BOTH)
    set_return.register(reg, STREAM, SERVER)
    reg.add("log_format", [STREAM], _log_format, TWOMORE)
    reg.add("access_log", BOTH, _access_log, ONEMORE)
    for name in (
        "variables_hash_max_size",
        "variables_hash_bucket_size",
        "server_names_hash_max_size",
        "server_names_hash_bucket_size",
    ):
        reg.add(name, [STREAM], ignore, TAKE1)


# -- build ------------------------------------------------------------------------------


def _resolve_upstream(
    url: Url,
    node: Node,
    blocks: dict[str, UpstreamConf],
    built: dict[str, UpstreamGroup],
    resolver: ResolverConf | None = None,
) -> UpstreamGroup:
    """nginx's ngx_stream_upstream_add: a name without a port is an `upstream` block."""
    block = blocks.get(url.host) if not url.text.startswith("unix:") else None
    if block is not None:
        if url.port is not None:
            raise node.error(f'upstream "{url.host}" may not have port {url.port}')
        group = built.get(block.name)
        if group is None:
            group = built[block.name] = build_group(block, resolver)
        return group
    if url.addrs:
        return implicit_group(url)
    if url.port is None:
        raise node.error(f'no port in upstream "{url.text}"')
    try:
        resolved = Url(url.text, url.host, url.port, resolve_host(url.host, url.port))
    except UrlError:
        raise node.error(f'host not found in upstream "{url.host}"') from None
    return implicit_group(resolved)


def build(
    stream: Context, open_file: Any, make_error_log: Any, main_error_log: ErrorLog
) -> list[StreamServer]:
    """Merge every server of the `stream` block into a StreamServer."""
    servers: list[StreamServer] = []
    seen: dict[tuple[Any, ...], str] = {}
    blocks: dict[str, UpstreamConf] = stream.local("upstreams", {})
    built: dict[str, UpstreamGroup] = {}
    resolver = stream_resolver(stream)
    for index, srv in enumerate(c for c in stream.children if c.kind == SERVER):
        assert srv.node is not None
        where = f"{srv.node.file}:{srv.node.line}"
        listens = tuple(srv.local("listen", []))
        if not listens:
            raise ConfigError(f'no "listen" is defined for server in {where}')
        for lo in listens:
            key = (lo.addr.family, lo.addr.address, lo.udp)  # TCP and UDP may share a port
            if key in seen:
                raise ConfigError(f'duplicate "{lo.addr.text}" address and port pair in {lo.where}')
            seen[key] = lo.where
        url = srv.local("proxy_pass")
        upstream_var = srv.local("proxy_pass_var")
        if (
            url is None
            and upstream_var is None
            and srv.local("return") is None
            and srv.local("pass") is None
        ):
            raise ConfigError(f"no handler for server in {where}")
        upstream = (
            _resolve_upstream(url, srv.locations["proxy_pass"], blocks, built, resolver)
            if url is not None
            else None
        )
        logs = []
        for path, fmt, params in srv.get("access_log", []):
            try:
                f = open_file(path)
            except OSError as exc:
                raise ConfigError(str(exc.strerror)) from None
            logs.append(AccessLog(f, fmt, params["if"], params["buffer"], params["flush"]))
        specs = srv.local("error_log") or stream.local("error_log")
        error_log = make_error_log(specs) if specs else main_error_log
        server_ssl = tls.build_server(srv, any(lo.ssl for lo in listens), where)
        proxy_ssl = tls.build_proxy(srv)
        if (
            proxy_ssl is not None
            and proxy_ssl.name is None
            and url is not None
            and not url.text.startswith("unix:")
        ):
            # proxy_ssl_name defaults to the proxy_pass host (nginx's $proxy_host); with
            # `proxy_pass $var` there is no fixed host, and no name is sent unless configured.
            proxy_ssl.name = url.host
        phases = stream_access.phase_handlers(srv)
        servers.append(
            StreamServer(
                index=index,
                listens=listens,
                upstream=upstream,
                next_upstream=srv.get("proxy_next_upstream", True),
                next_upstream_tries=srv.get("proxy_next_upstream_tries", 0),
                next_upstream_timeout=srv.get("proxy_next_upstream_timeout", 0.0),
                proxy_protocol=srv.get("proxy_protocol", 0),
                connect_timeout=srv.get("proxy_connect_timeout", 60.0),
                timeout=srv.get("proxy_timeout", 600.0),
                buffer_size=srv.get("proxy_buffer_size", 16384),
                bind=srv.get("proxy_bind", None),
                socket_keepalive=srv.get("proxy_socket_keepalive", False),
                upload_rate=srv.get("proxy_upload_rate", 0),
                download_rate=srv.get("proxy_download_rate", 0),
                half_close=srv.get("proxy_half_close", False),
                tcp_nodelay=srv.get("tcp_nodelay", True),
                preread_buffer_size=srv.get("preread_buffer_size", 16384),
                preread_timeout=srv.get("preread_timeout", 30.0),
                proxy_protocol_timeout=srv.get("proxy_protocol_timeout", 30.0),
                realip_from=tuple(srv.get("set_real_ip_from", [])),
                access_logs=tuple(logs),
                error_log=error_log,
                where=where,
                ssl=server_ssl,
                proxy_ssl=proxy_ssl,
                upstream_var=upstream_var,
                groups=built,
                ssl_preread=srv.get("ssl_preread", False),
                responses=srv.get("proxy_responses", None),
                requests=srv.get("proxy_requests", 0),
                # Preaccess (set, then limit_conn) and access (allow/deny), in nginx's order.
                access=(*set_return.preaccess(srv), *phases["access"]),
                on_finalize=phases["on_finalize"],
                return_value=set_return.return_value(srv),
                pass_to=pass_module.target(srv),
            )
        )
    for name, block in blocks.items():
        if name not in built:
            # An unused group is still checked, as nginx checks it; `proxy_pass $var` may name it.
            built[name] = build_group(block, resolver)
    root = stream
    while root.parent is not None:
        root = root.parent
    check_zones(root)
    return servers


__all__ = ["StreamServer", "ListenOpts", "register", "build", "VariableTable"]
