"""The http core module: `http`, `server`, `location`, `listen`, `server_name` and the core
per-location directives, compiled into `HttpConf` (ports → servers → location trees).

Directives store raw values in the Context of the level they appear at; `build` turns every
server, location and `if` block into a `LocationConf` whose attributes each module fills from
`Context.get` (which inherits exactly as nginx's merge functions do: an array directive such
as `add_header` set at a level replaces the parent's list). Requests only read attributes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
    enum_slot,
    flag_slot,
    ignore,
    number_slot,
    size_slot,
    time_slot,
)
from pyngx.conf.values import UrlError, parse_size, parse_time, parse_url
from pyngx.conf.variables import VariableTable, compile_complex, has_variables
from pyngx.core.log import ErrorLog
from pyngx.http import locations as loc_tree
from pyngx.http.server_names import ServerNames, check_server_name
from pyngx.stream.access_log import (
    AccessLog,
    access_log_directive,
    compile_format,
    log_format_directive,
)
from pyngx.stream.module import NGX_LISTEN_BACKLOG, ListenOpts, _parse_keepalive

HTTP, SRV, LOC, SIF, LIF = "http", "http_server", "http_location", "http_sif", "http_lif"
MAIN_SRV_LOC = (HTTP, SRV, LOC)
MAIN_SRV_LOC_LIF = (HTTP, SRV, LOC, LIF)
MAIN_SRV = (HTTP, SRV)

COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent"'
)

# Modules that take part in the http block: each has `register(reg)` and may have
# `configure(ctx, loc)` (fill LocationConf attributes) and `declare(nodes, table)` (names
# known before the block runs, as `set` and `map` variables are). Filled by http/modules.py.
MODULES: list[Any] = []


class LocationConf:
    """Everything a request needs from the location it runs in; one per server, location
    and `if` block. Modules add their own attributes in `configure`."""

    def __repr__(self) -> str:
        return f"<LocationConf {getattr(self, 'name', '?')}>"


@dataclass(frozen=True, slots=True)
class HttpListen:
    opts: ListenOpts
    default_server: bool
    http2: bool


@dataclass(slots=True)
class ServerConf:
    index: int
    names: list[str]
    listens: tuple[HttpListen, ...]
    conf: LocationConf  # the server level: used when no location matches
    locations: Any  # LocationTree
    script: Any  # server-level rewrite script or None
    where: str
    # Per-server connection settings (nginx reads them from the default server of the port).
    header_buffer_size: int = 1024
    large_header_buffers: tuple[int, int] = (4, 8192)
    header_timeout: float = 60.0
    merge_slashes: bool = True
    underscores_in_headers: bool = False
    ignore_invalid_headers: bool = True
    realip: Any = None
    ssl: Any = None
    name_nodes: list[Any] = field(default_factory=list)
    ctx: Any = None
    # Parsed heads by their exact bytes (connection.HEAD_CACHE_*): per worker, bounded.
    head_cache: dict[bytes, Any] = field(default_factory=dict)


@dataclass(slots=True)
class HttpPort:
    """One listening address: its servers, chosen by the Host header. Looks like a stream
    server to `core.listening.plan` (it has `listens`)."""

    listens: tuple[ListenOpts, ...]
    listen: HttpListen
    default: ServerConf
    names: ServerNames
    servers: list[ServerConf] = field(default_factory=list)
    ssl: Any = None  # SSLContext with SNI selection, when `listen ... ssl`
    proxy_protocol: bool = False
    http2: bool = False


@dataclass(slots=True)
class HttpConf:
    ports: list[HttpPort]
    servers: list[ServerConf]
    access_logs: list[AccessLog]
    variables: VariableTable
    upstreams: dict[str, Any] = field(default_factory=dict)
    health_checks: list[Any] = field(default_factory=list)
    caches: list[Any] = field(default_factory=list)  # proxy_cache_path (http/cache)


# -- directive handlers ------------------------------------------------------------------


def _http(ctx: Context, node: Node) -> None:
    from pyngx.http.variables import HTTP_VARIABLES

    if "http" in ctx.slots:
        raise node.error('"http" directive is duplicate')
    child = ctx.child(HTTP, node)
    ctx.slots["http"] = child
    table = child.slots["variables"] = HTTP_VARIABLES.copy()
    child.slots["log_formats"] = {
        "combined": compile_format("combined", "default", COMBINED, table)
    }
    from pyngx.http import rewrite

    rewrite.capture_getters(table)
    later: list[Callable[[], None]] = []
    for module in MODULES:
        declare = getattr(module, "declare", None)
        if declare is not None:
            later.extend(declare(node.block or [], table, child) or ())
    # After the modules' declarations: `set` may overwrite a map's variable (Settable).
    rewrite.declare(node.block or [], table)
    child.run(node.block or [])
    for compile_later in later:
        compile_later()


def _server(ctx: Context, node: Node) -> None:
    child = ctx.child(SRV, node)
    child.slots["location_specs"] = []
    child.run(node.block or [])


def _location(ctx: Context, node: Node) -> None:
    parent_spec = ctx.local("__spec__") if ctx.kind == LOC else None
    child = ctx.child(LOC, node)
    spec = loc_tree.parse_location(node, parent_spec, child)
    if spec.regex is not None:
        from pyngx.http.rewrite import declare_named_captures

        declare_named_captures(spec.regex, ctx.up(HTTP).slots["variables"], node)
    child.slots["__spec__"] = spec
    child.slots["location_specs"] = []
    if parent_spec is not None:
        parent_spec.children.append(spec)
    else:
        ctx.slots["location_specs"].append(spec)
    child.run(node.block or [])


def _listen(ctx: Context, node: Node) -> None:
    text = node.args[0]
    try:
        url = parse_url(text, listen=True)
    except UrlError as exc:
        raise node.error(f'{exc.text} in "{text}" of the "listen" directive') from None
    if url.port is None and not text.startswith("unix:"):
        host = url.host
        url = parse_url(f"[{host}]:80" if ":" in host else f"{host}:80", listen=True)
    opts: dict[str, Any] = {
        "proxy_protocol": False,
        "backlog": NGX_LISTEN_BACKLOG,
        "bind": False,
        "ipv6only": True,
        "reuseport": False,
        "so_keepalive": None,
        "rcvbuf": None,
        "sndbuf": None,
        "ssl": False,
    }
    default_server = http2 = False
    for param in node.args[1:]:
        name, eq, value = param.partition("=")
        if param in ("default_server", "default"):
            default_server = True
        elif param == "proxy_protocol":
            opts["proxy_protocol"] = True
        elif param == "bind":
            opts["bind"] = True
        elif param == "reuseport":
            opts["reuseport"] = True
            opts["bind"] = True
        elif param == "ssl":
            opts["ssl"] = True
        elif param == "http2":
            http2 = True
            ctx.warn(
                node,
                'the "listen ... http2" directive is deprecated, use the "http2" directive instead',
            )
        elif name == "backlog" and eq:
            try:
                opts["backlog"] = int(value)
            except ValueError:
                raise node.error(f'invalid backlog "{value}"') from None
            if opts["backlog"] == 0:
                raise node.error(f'invalid backlog "{value}"')
            opts["bind"] = True
        elif name in ("rcvbuf", "sndbuf") and eq:
            try:
                opts[name] = parse_size(value)
            except DirectiveValueError:
                raise node.error(f'invalid {name} "{value}"') from None
            opts["bind"] = True
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
        elif name in ("fastopen", "deferred", "setfib", "accept_filter") or param in (
            "deferred",
            "quic",
        ):
            opts["bind"] = True
        else:
            raise node.error(f'invalid parameter "{param}"')
    where = f"{node.file}:{node.line}"
    for addr in url.addrs:
        wildcard = addr.host in ("0.0.0.0", "::")
        lo = ListenOpts(addr, wildcard, where=where, **opts)
        ctx.append("listen", HttpListen(lo, default_server, http2), node)


def _server_name(ctx: Context, node: Node) -> None:
    names = ctx.slots.setdefault("server_name", [])
    for arg in node.args:
        check_server_name(arg, node, ctx.warn)
        names.append((arg, node))
        if arg.startswith("~"):
            from pyngx.conf.regex import compile_pcre
            from pyngx.http.rewrite import declare_named_captures

            try:
                rx = compile_pcre(arg[1:])
            except Exception:  # the server_names module reports bad patterns
                continue
            declare_named_captures(rx, ctx.up(HTTP).slots["variables"], node)


def _root(ctx: Context, node: Node) -> None:
    alias = node.name == "alias"
    if "root" in ctx.slots:
        prev = ctx.locations["root"]
        if (prev.name == "alias") == alias:
            raise node.error(f'"{node.name}" directive is duplicate')
        raise node.error(
            f'"{node.name}" directive is duplicate, "{prev.name}" directive was specified earlier'
        )
    if alias and ctx.kind == LOC:
        spec = ctx.local("__spec__")
        if spec is not None and spec.modifier == "@":
            raise node.error('"alias" directive cannot be used inside the named location')
    path = node.args[0]
    if not alias and path.endswith("/") and len(path) > 1 and not has_variables(path):
        pass
    ctx.slots["root"] = (path, alias, node)
    ctx.locations["root"] = node


def _index(ctx: Context, node: Node) -> None:
    if "index" in ctx.slots:
        raise node.error('"index" directive is duplicate')
    for arg in node.args:
        if not arg:
            raise node.error('index "" in "index" directive is invalid')
    ctx.set_once("index", list(node.args), node)


def _try_files(ctx: Context, node: Node) -> None:
    if "try_files" in ctx.slots:
        raise node.error('"try_files" directive is duplicate')
    last = node.args[-1]
    if last.startswith("=") and not last[1:].isdigit():
        raise node.error(f'invalid code "{last}"')
    ctx.set_once("try_files", list(node.args), node)


def _types(ctx: Context, node: Node) -> None:
    types = ctx.slots.get("types")
    if types is None or "types" not in ctx.slots:
        types = ctx.slots["types"] = {}
        ctx.locations["types"] = node
    for sub in node.block or []:
        if not sub.args:
            raise sub.error('invalid number of arguments in "types" directive')
        mime = sub.name
        for ext in sub.args:
            ext = ext.lower()
            if ext in types and types[ext] != mime:
                ctx.warn(
                    sub,
                    f'duplicate extension "{ext}", content type: "{mime}", '
                    f'previous content type: "{types[ext]}"',
                )
            types[ext] = mime


def _error_page(ctx: Context, node: Node) -> None:
    args = list(node.args)
    target = args.pop()
    overwrite: int | None = -1
    if args and args[-1].startswith("="):
        spec = args.pop()[1:]
        if spec:
            try:
                overwrite = int(spec)
            except ValueError:
                raise node.error(f'invalid value "={spec}"') from None
        else:
            overwrite = None  # `=`: the status of the redirected request
    if not args:
        raise node.error('invalid number of arguments in "error_page" directive')
    pages = ctx.slots.setdefault("error_page", {})
    ctx.locations.setdefault("error_page", node)
    for code_text in args:
        try:
            code = int(code_text)
        except ValueError:
            raise node.error(f'invalid value "{code_text}"') from None
        if code == 499 or code < 300 or code > 599:
            raise node.error(f'value "{code}" must be between 300 and 599')
        pages[code] = (target, overwrite)


def _keepalive_timeout(ctx: Context, node: Node) -> None:
    try:
        timeout = parse_time(node.args[0])
        header = parse_time(node.args[1]) if len(node.args) > 1 else None
    except DirectiveValueError:
        raise node.error(
            f'invalid value "{node.args[0]}" in "keepalive_timeout" directive'
        ) from None
    ctx.set_once("keepalive_timeout", (timeout, header), node)


def _large_buffers(ctx: Context, node: Node) -> None:
    try:
        n = int(node.args[0])
        size = parse_size(node.args[1])
    except (ValueError, DirectiveValueError):
        raise node.error(f'invalid value "{node.args[0]}"') from None
    ctx.set_once("large_client_header_buffers", (n, size), node)


def _client_max_body_size(ctx: Context, node: Node) -> None:
    ctx.set_once("client_max_body_size", parse_size(node.args[0]), node)


def _log_format(ctx: Context, node: Node) -> None:
    log_format_directive(ctx, node, ctx.slots["variables"])


def _access_log(ctx: Context, node: Node) -> None:
    top = ctx.up(HTTP)
    access_log_directive(ctx, node, top.slots["log_formats"], top.slots["variables"], "combined")


def _internal(ctx: Context, node: Node) -> None:
    ctx.set_once("internal", True, node)


def _add_header(ctx: Context, node: Node) -> None:
    if len(node.args) == 3 and node.args[2] != "always":
        raise node.error(f'invalid parameter "{node.args[2]}"')
    table = ctx.up(HTTP).slots["variables"]
    value = compile_complex(node.args[1], table)
    always = len(node.args) == 3
    ctx.slots.setdefault("add_header", [])
    ctx.locations.setdefault("add_header", node)
    ctx.slots["add_header"].append((node.args[0], value, always))


def _expires(ctx: Context, node: Node) -> None:
    args = node.args
    if "expires" in ctx.slots:
        raise node.error('"expires" directive is duplicate')
    modified = False
    if args[0] == "modified":
        modified = True
        args = args[1:]
        if not args:
            raise node.error('invalid number of arguments in "expires" directive')
    arg = args[0]
    if arg == "epoch":
        ctx.slots["expires"] = ("epoch", 0.0)
    elif arg == "max":
        ctx.slots["expires"] = ("max", 0.0)
    elif arg == "off":
        ctx.slots["expires"] = ("off", 0.0)
    else:
        neg = arg.startswith("-")
        text = arg[1:] if neg or arg.startswith("+") else arg
        if text.startswith("@"):
            raise node.error('"expires @time" is not supported')
        try:
            t = parse_time(text)
        except DirectiveValueError:
            raise node.error(f'invalid value "{arg}" in "expires" directive') from None
        ctx.slots["expires"] = ("modified" if modified else "access", -t if neg else t)
    ctx.locations["expires"] = node


def _server_tokens(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in ("on", "off", "build"):
        raise node.error(
            f'invalid value "{arg}" in "server_tokens" directive, it must be "on", "off" or "build"'
        )
    ctx.set_once("server_tokens", arg, node)


def register(reg: Registry) -> None:
    reg.add("http", ["main"], _http, NOARGS, block=True)
    reg.add("server", [HTTP], _server, NOARGS, block=True)
    reg.add("location", [SRV, LOC], _location, TAKE12, block=True)
    reg.add("listen", [SRV], _listen, ONEMORE)
    reg.add("server_name", [SRV], _server_name, ONEMORE)
    reg.add("root", MAIN_SRV_LOC_LIF, _root)
    reg.add("alias", [LOC], _root)
    reg.add("index", MAIN_SRV_LOC, _index, ONEMORE)
    reg.add("try_files", [SRV, LOC], _try_files, TWOMORE)
    reg.add("internal", [LOC], _internal, NOARGS)
    reg.add("types", MAIN_SRV_LOC, _types, NOARGS, block=True)
    reg.add("default_type", MAIN_SRV_LOC, _str("default_type"))
    reg.add("error_page", MAIN_SRV_LOC_LIF, _error_page, TWOMORE)
    reg.add("keepalive_timeout", MAIN_SRV_LOC, _keepalive_timeout, TAKE12)
    reg.add("keepalive_requests", MAIN_SRV_LOC, number_slot("keepalive_requests"))
    reg.add("keepalive_time", MAIN_SRV_LOC, time_slot("keepalive_time"))
    reg.add("client_max_body_size", MAIN_SRV_LOC, _client_max_body_size)
    reg.add("client_body_buffer_size", MAIN_SRV_LOC, size_slot("client_body_buffer_size"))
    reg.add("client_body_timeout", MAIN_SRV_LOC, time_slot("client_body_timeout"))
    reg.add("client_header_timeout", MAIN_SRV, time_slot("client_header_timeout"))
    reg.add("client_header_buffer_size", MAIN_SRV, size_slot("client_header_buffer_size"))
    reg.add("large_client_header_buffers", MAIN_SRV, _large_buffers, TAKE2)
    reg.add("send_timeout", MAIN_SRV_LOC, time_slot("send_timeout"))
    reg.add("server_tokens", MAIN_SRV_LOC, _server_tokens)
    reg.add("sendfile", (*MAIN_SRV_LOC, LIF), flag_slot("sendfile"))
    reg.add("tcp_nopush", MAIN_SRV_LOC, flag_slot("tcp_nopush"))
    reg.add("tcp_nodelay", MAIN_SRV_LOC, flag_slot("tcp_nodelay"))
    reg.add("absolute_redirect", MAIN_SRV_LOC, flag_slot("absolute_redirect"))
    reg.add("port_in_redirect", MAIN_SRV_LOC, flag_slot("port_in_redirect"))
    reg.add("server_name_in_redirect", MAIN_SRV_LOC, flag_slot("server_name_in_redirect"))
    reg.add("merge_slashes", MAIN_SRV, flag_slot("merge_slashes"))
    reg.add("underscores_in_headers", MAIN_SRV, flag_slot("underscores_in_headers"))
    reg.add("ignore_invalid_headers", MAIN_SRV, flag_slot("ignore_invalid_headers"))
    reg.add("log_not_found", MAIN_SRV_LOC, flag_slot("log_not_found"))
    reg.add("log_subrequest", MAIN_SRV_LOC, flag_slot("log_subrequest"))
    reg.add("etag", MAIN_SRV_LOC, flag_slot("etag"))
    reg.add(
        "if_modified_since",
        MAIN_SRV_LOC,
        enum_slot("if_modified_since", {"off": "off", "exact": "exact", "before": "before"}),
    )
    reg.add("max_ranges", MAIN_SRV_LOC, number_slot("max_ranges"))
    reg.add("chunked_transfer_encoding", MAIN_SRV_LOC, flag_slot("chunked_transfer_encoding"))
    reg.add("limit_rate", (*MAIN_SRV_LOC, LIF), size_slot("limit_rate"))
    reg.add("limit_rate_after", (*MAIN_SRV_LOC, LIF), size_slot("limit_rate_after"))
    reg.add("log_format", [HTTP], _log_format, TWOMORE)
    reg.add("access_log", (*MAIN_SRV_LOC, LIF), _access_log, ONEMORE)
    reg.add("add_header", (*MAIN_SRV_LOC, LIF), _add_header, (2, 3))
    reg.add("expires", (*MAIN_SRV_LOC, LIF), _expires, TAKE12)
    reg.add("msie_padding", MAIN_SRV_LOC, flag_slot("msie_padding"))
    reg.add("msie_refresh", MAIN_SRV_LOC, flag_slot("msie_refresh"))
    reg.add("recursive_error_pages", MAIN_SRV_LOC, flag_slot("recursive_error_pages"))
    reg.add("reset_timedout_connection", MAIN_SRV_LOC, flag_slot("reset_timedout_connection"))
    reg.add("lingering_close", MAIN_SRV_LOC, _str("lingering_close"))
    reg.add("lingering_time", MAIN_SRV_LOC, time_slot("lingering_time"))
    reg.add("lingering_timeout", MAIN_SRV_LOC, time_slot("lingering_timeout"))
    reg.add("client_body_in_single_buffer", MAIN_SRV_LOC, flag_slot("client_body_single"))
    for name in (
        "server_names_hash_max_size",
        "server_names_hash_bucket_size",
        "variables_hash_max_size",
        "variables_hash_bucket_size",
        "types_hash_max_size",
        "types_hash_bucket_size",
        "map_hash_max_size",
        "map_hash_bucket_size",
        "client_body_temp_path",
        "output_buffers",
        "postpone_output",
        "send_lowat",
        "charset",
        "source_charset",
        "gzip",
        "gzip_types",
        "gzip_vary",
        "gzip_proxied",
        "gzip_comp_level",
        "gzip_min_length",
        "gzip_http_version",
        "gzip_disable",
        "gzip_buffers",
        "open_file_cache_valid",
        "open_file_cache_min_uses",
        "open_file_cache_errors",
        "directio",
        "aio",
        "read_ahead",
        "disable_symlinks",
        "resolver_timeout",
    ):
        reg.add(name, (*MAIN_SRV_LOC, LIF), ignore, ONEMORE)
    reg.add("open_file_cache", MAIN_SRV_LOC, ignore, TAKE12)
    reg.add("sendfile_max_chunk", MAIN_SRV_LOC, size_slot("sendfile_max_chunk"))
    reg.add("default_server_name", [SRV], ignore, TAKE1)


def _str(slot: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        ctx.set_once(slot, node.args[0], node)

    return handler


# -- build ------------------------------------------------------------------------------


def _root_value(ctx: Context) -> tuple[Callable[[Any], str] | None, str | None, bool]:
    """(compiled root/alias, constant text when it has no variables, is_alias)."""
    entry = ctx.get("root", None)
    prefix = os.environ.get("PYNGX_PREFIX_FOR_ROOT", "")
    if entry is None:
        return None, prefix + "html", False
    path, alias, node = entry
    if has_variables(path):
        table = ctx.up(HTTP).slots["variables"]
        return compile_complex(path, table), None, alias
    return None, path, alias


def configure_core(
    ctx: Context, loc: LocationConf, http: Context, prefix: Callable[[str], str]
) -> None:
    """The core module's per-location attributes (ngx_http_core_merge_loc_conf)."""
    spec = ctx.local("__spec__") if ctx.kind == LOC else None
    loc.name = spec.name if spec is not None else ""
    loc.exact = spec is not None and spec.modifier == "="
    loc.named = spec is not None and spec.modifier == "@"
    loc.regex = spec is not None and spec.modifier in ("~", "~*")
    loc.is_if = ctx.kind in (SIF, LIF)
    root_fn, root_text, alias = _root_value(ctx)
    if root_text is not None and not root_text.startswith("/"):
        root_text = prefix(root_text)
    if alias and root_text is not None and loc.regex is False and root_text.endswith("/"):
        pass
    loc.root_fn = root_fn
    loc.root = root_text.rstrip("/") if root_text and root_text != "/" and not alias else root_text
    loc.alias = alias
    if alias:
        # The alias belongs to the location it was written in: inherited into nested or if
        # levels it still replaces that location's name.
        owner = ctx
        while "root" not in owner.slots:
            owner = owner.parent  # type: ignore[assignment]
        owner_spec = owner.local("__spec__")
        loc.alias_name = owner_spec.name if owner_spec is not None else ""
        loc.alias_regex = owner_spec is not None and owner_spec.modifier in ("~", "~*")
    else:
        loc.alias_name = ""
        loc.alias_regex = False
    loc.index = ctx.get("index", ["index.html"])
    loc.try_files = ctx.local("try_files") if ctx.kind in (SRV, LOC) else ctx.get("try_files", None)
    loc.internal = bool(ctx.local("internal", False))
    loc.types = ctx.get("types", None) or http.slots.get("__default_types__") or {}
    loc.default_type = ctx.get("default_type", "text/plain")
    loc.error_pages = ctx.get("error_page", {})
    ka = ctx.get("keepalive_timeout", (75.0, None))
    loc.keepalive_timeout, loc.keepalive_header = ka
    loc.keepalive_requests = ctx.get("keepalive_requests", 1000)
    loc.keepalive_time = ctx.get("keepalive_time", 3600.0)
    loc.client_max_body_size = ctx.get("client_max_body_size", 1024 * 1024)
    loc.client_body_buffer_size = ctx.get("client_body_buffer_size", 16384)
    loc.client_body_timeout = ctx.get("client_body_timeout", 60.0)
    loc.send_timeout = ctx.get("send_timeout", 60.0)
    loc.server_tokens = ctx.get("server_tokens", "on")
    loc.sendfile = ctx.get("sendfile", False)
    loc.tcp_nodelay = ctx.get("tcp_nodelay", True)
    loc.absolute_redirect = ctx.get("absolute_redirect", True)
    loc.port_in_redirect = ctx.get("port_in_redirect", True)
    loc.server_name_in_redirect = ctx.get("server_name_in_redirect", False)
    loc.log_not_found = ctx.get("log_not_found", True)
    loc.etag = ctx.get("etag", True)
    loc.if_modified_since = ctx.get("if_modified_since", "exact")
    loc.max_ranges = ctx.get("max_ranges", None)
    loc.chunked = ctx.get("chunked_transfer_encoding", True)
    loc.limit_rate = ctx.get("limit_rate", 0)
    loc.limit_rate_after = ctx.get("limit_rate_after", 0)
    loc.add_headers = tuple(ctx.get("add_header", []))
    loc.expires = ctx.get("expires", None)
    loc.recursive_error_pages = ctx.get("recursive_error_pages", False)
    loc.lingering_close = ctx.get("lingering_close", "on")
    loc.auto_redirect = False
    loc.content = None  # set by content modules (proxy_pass, stub_status, return is a script)
    # Phase handlers (request -> None to go on, a status, or DONE), filled by modules.
    loc.phase_preaccess = []
    loc.phase_access = []


def _access_logs(
    ctx: Context, open_file: Any, cache: dict[int, list[AccessLog]]
) -> tuple[AccessLog, ...]:
    entries = ctx.get("access_log", None)
    if entries is None:
        entries = [("logs/access.log", ctx.up(HTTP).slots["log_formats"]["combined"], None)]
    key = id(entries)
    made = cache.get(key)
    if made is None:
        made = []
        for entry in entries:
            path, fmt, params = entry
            params = params or {"buffer": 0, "flush": None, "if": None}
            try:
                f = open_file(path)
            except OSError as exc:
                raise ConfigError(str(exc.strerror)) from None
            made.append(AccessLog(f, fmt, params["if"], params["buffer"], params["flush"]))
        cache[key] = made
    return tuple(made)


def build(
    http: Context,
    open_file: Any,
    make_error_log: Any,
    main_error_log: ErrorLog,
    prefix: Callable[[str], str],
) -> HttpConf:
    from pyngx.http.mime import default_types
    from pyngx.http.static import serve as static_serve

    http.slots["__default_types__"] = default_types()
    http.slots["__prefix__"] = prefix  # paths relative to the prefix (proxy_cache_path)
    log_cache: dict[int, list[AccessLog]] = {}
    all_logs: list[AccessLog] = []

    def make_conf(ctx: Context) -> LocationConf:
        loc = LocationConf()
        configure_core(ctx, loc, http, prefix)
        loc.access_logs = _access_logs(ctx, open_file, log_cache)
        for lg in loc.access_logs:
            if lg not in all_logs:
                all_logs.append(lg)
        specs = ctx.local("error_log")
        loc.error_log = (
            make_error_log(specs)
            if specs
            else _inherited_error_log(ctx, make_error_log, main_error_log)
        )
        for module in MODULES:
            configure = getattr(module, "configure", None)
            if configure is not None:
                configure(ctx, loc)
        loc.access_phase = tuple(loc.phase_preaccess + loc.phase_access)
        if loc.content is None:
            # nginx's default content handlers: index, autoindex, static.
            loc.content = static_serve
        # `if` blocks: their LocationConf switches in when the condition holds.
        for child in ctx.children:
            if child.kind == LIF:
                child.slots["__conf__"] = make_conf(child)
        from pyngx.http.rewrite import compile_script, if_ops

        for op in if_ops(ctx.local("rewrite_ops") or []):
            if op.ctx.kind == LIF:
                op.conf = op.ctx.slots["__conf__"]
        loc.script = compile_script(ctx) if ctx.kind in (SRV, LOC) else None
        return loc

    servers: list[ServerConf] = []
    for index, sctx in enumerate(c for c in http.children if c.kind == SRV):
        assert sctx.node is not None
        where = f"{sctx.node.file}:{sctx.node.line}"
        listens = tuple(sctx.local("listen", [])) or (_default_listen(sctx.node),)
        server_conf = make_conf(sctx)
        specs: list[Any] = sctx.slots["location_specs"]

        def attach(spec_list: list[Any]) -> None:
            for spec in spec_list:
                spec.conf = make_conf(spec.conf)  # parse_location kept the Context there
                spec.auto_redirect = getattr(spec.conf, "auto_redirect", False)
                attach(spec.children)

        attach(specs)
        tree = loc_tree.LocationTree.build(specs)
        names = [n for n, _node in sctx.local("server_name", [])] or [""]
        server = ServerConf(
            index=index,
            names=names,
            listens=listens,
            conf=server_conf,
            locations=tree,
            script=server_conf.script,
            where=where,
            header_buffer_size=sctx.get("client_header_buffer_size", 1024),
            large_header_buffers=sctx.get("large_client_header_buffers", (4, 8192)),
            header_timeout=sctx.get("client_header_timeout", 60.0),
            merge_slashes=sctx.get("merge_slashes", True),
            underscores_in_headers=sctx.get("underscores_in_headers", False),
            ignore_invalid_headers=sctx.get("ignore_invalid_headers", True),
        )
        server.name_nodes = sctx.local("server_name", [])
        server.ctx = sctx
        servers.append(server)
    ports = _ports(servers, http)
    conf = HttpConf(ports, servers, all_logs, http.slots["variables"])
    for module in MODULES:
        finish = getattr(module, "finish", None)
        if finish is not None:
            finish(http, conf)
    return conf


def _inherited_error_log(ctx: Context, make_error_log: Any, main_error_log: ErrorLog) -> ErrorLog:
    node: Context | None = ctx.parent
    while node is not None and node.kind != "main":
        specs = node.local("error_log")
        if specs:
            cache = node.slots.setdefault("__error_log__", make_error_log(specs))
            return cache
        node = node.parent
    return main_error_log


def _default_listen(node: Node) -> HttpListen:
    port = 80 if os.geteuid() == 0 else 8000
    url = parse_url(f"*:{port}", listen=True)
    lo = ListenOpts(
        url.addrs[0],
        True,
        False,
        NGX_LISTEN_BACKLOG,
        False,
        True,
        False,
        None,
        None,
        None,
        f"{node.file}:{node.line}",
    )
    return HttpListen(lo, False, False)


def _ports(servers: list[ServerConf], http: Context) -> list[HttpPort]:
    """Group servers by listen address (ngx_http_add_listen / ngx_http_optimize_servers)."""
    by_addr: dict[tuple[Any, ...], HttpPort] = {}
    order: list[HttpPort] = []
    for server in servers:
        for hl in server.listens:
            key = (hl.opts.addr.family, hl.opts.addr.address)
            port = by_addr.get(key)
            if port is None:
                port = HttpPort((hl.opts,), hl, server, None)  # type: ignore[arg-type]
                by_addr[key] = port
                order.append(port)
            else:
                if port.listen.opts.bind and hl.opts.bind and _opts_differ(port.listen, hl):
                    raise ConfigError(
                        f"duplicate listen options for {hl.opts.addr.text} in {hl.opts.where}"
                    )
                if hl.default_server:
                    if port.listen.default_server:
                        raise ConfigError(
                            f"a duplicate default server for {hl.opts.addr.text} in {hl.opts.where}"
                        )
                    port.listen = hl
                    port.listens = (hl.opts,)
                    port.default = server
                elif hl.opts.bind and not port.listen.opts.bind:
                    port.listens = (hl.opts,)
            if server not in port.servers:
                port.servers.append(server)
            if hl.opts.ssl:
                port.listens = (_with(port.listens[0], ssl=True),)
            if hl.opts.proxy_protocol:
                port.proxy_protocol = True
            if hl.http2:
                port.http2 = True
    for port in order:
        entries = []
        for server in port.servers:
            for name, node in server.name_nodes:  # type: ignore[attr-defined]
                entries.append((name, server, node))
            if not server.name_nodes:  # type: ignore[attr-defined]
                entries.append(("", server, server.ctx.node))  # type: ignore[attr-defined]
        port.names = ServerNames(entries, port.default, where=port.listens[0].addr.text)
        root = http
        while root.parent is not None:
            root = root.parent
        for text, _node in port.names.warnings:
            # nginx prints these without a location.
            root.slots.setdefault("__warnings__", []).append(text)
        port.proxy_protocol = port.listens[0].proxy_protocol or port.proxy_protocol
    return order


def _opts_differ(a: HttpListen, b: HttpListen) -> bool:
    return a.opts.backlog != b.opts.backlog or a.opts.reuseport != b.opts.reuseport


def _with(opts: ListenOpts, **changes: Any) -> ListenOpts:
    from dataclasses import replace

    return replace(opts, **changes)


__all__ = [
    "HTTP",
    "LIF",
    "LOC",
    "MAIN_SRV_LOC",
    "MAIN_SRV_LOC_LIF",
    "MODULES",
    "SIF",
    "SRV",
    "HttpConf",
    "HttpPort",
    "LocationConf",
    "ServerConf",
    "build",
    "register",
]
