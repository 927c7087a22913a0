"""ngx_http_v2_module's directives and the `$http2` variable.

`http2 on|off` (http, server; nginx >= 1.25.1) and `listen ... http2` (deprecated, still
accepted) enable HTTP/2 for an address: over TLS through ALPN, in cleartext through the
connection preface (prior knowledge). The per-connection settings are read from the server
level of the address's default server, as nginx reads them from the connection's conf_ctx;
`http2_chunk_size` is per location.

Directives nginx made obsolete are accepted with nginx's warning and ignored: the 1.19.7 ones
name their replacement (`http2_idle_timeout` -> `keepalive_timeout`, ...), the server push
ones (1.25.1) are "obsolete, ignored".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyngx.conf.errors import DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, Context, Registry, flag_slot
from pyngx.conf.values import parse_number, parse_size
from pyngx.http.module import HTTP, LOC, SRV

if TYPE_CHECKING:
    from pyngx.conf.variables import VariableTable
    from pyngx.http.module import HttpPort, LocationConf, ServerConf

MAIN_SRV = (HTTP, SRV)
MAIN_SRV_LOC = (HTTP, SRV, LOC)

MAX_WINDOW = (1 << 31) - 1  # NGX_HTTP_V2_MAX_WINDOW
MAX_FRAME_SIZE = (1 << 24) - 1  # NGX_HTTP_V2_MAX_FRAME_SIZE
STATE_BUFFER_SIZE = 16  # NGX_HTTP_V2_STATE_BUFFER_SIZE

DEFAULT_CONCURRENT_STREAMS = 128
DEFAULT_PREREAD = 65536
DEFAULT_CHUNK = 8 * 1024
DEFAULT_RECV_BUFFER = 256 * 1024

# nginx 1.19.7 replaced these by the core directives named here.
_REPLACED = {
    "http2_recv_timeout": "client_header_timeout",
    "http2_idle_timeout": "keepalive_timeout",
    "http2_max_requests": "keepalive_requests",
    "http2_max_field_size": "large_client_header_buffers",
    "http2_max_header_size": "large_client_header_buffers",
}
# Server push (removed in 1.25.1) and the pool size (1.21.1): ignored.
_IGNORED = (
    ("http2_max_concurrent_pushes", MAIN_SRV),
    ("http2_push", MAIN_SRV_LOC),
    ("http2_push_preload", MAIN_SRV_LOC),
    ("http2_pool_size", MAIN_SRV),
)


def _parse_size(text: str) -> int:
    # ngx_conf_set_size_slot takes k and m only (g is for offsets).
    if text[-1:] in ("g", "G"):
        raise DirectiveValueError()
    return parse_size(text)


def _size(slot: str, check: Any = None) -> Any:
    def handler(ctx: Context, node: Node) -> None:
        value = _parse_size(node.args[0])
        if check is not None:
            value = check(node, value)
        ctx.set_once(slot, value, node)

    return handler


def _recv_buffer(node: Node, value: int) -> int:
    if value <= 2 * STATE_BUFFER_SIZE:
        raise DirectiveValueError("value is too small")
    return value


def _preread(node: Node, value: int) -> int:
    if value > MAX_WINDOW:
        raise node.error(f"the maximum body preread buffer size is {MAX_WINDOW}")
    return value


def _chunk(node: Node, value: int) -> int:
    if value == 0:
        raise node.error("the http2 chunk size cannot be zero")
    return min(value, MAX_FRAME_SIZE)


def _number(text: str) -> int:
    try:
        return parse_number(text)
    except DirectiveValueError:
        raise DirectiveValueError("invalid number") from None  # ngx_conf_set_num_slot


def _concurrent_streams(ctx: Context, node: Node) -> None:
    ctx.set_once("h2_max_concurrent_streams", _number(node.args[0]), node)


def _streams_index_size(ctx: Context, node: Node) -> None:
    n = _number(node.args[0])
    if n == 0 or n & (n - 1):
        raise DirectiveValueError("must be a power of two")
    ctx.set_once("h2_streams_index_size", n, node)


def _replaced(ctx: Context, node: Node) -> None:
    ctx.warn(
        node,
        f'the "{node.name}" directive is obsolete, '
        f'use the "{_REPLACED[node.name]}" directive instead',
    )


def _obsolete(ctx: Context, node: Node) -> None:
    ctx.warn(node, f'the "{node.name}" directive is obsolete, ignored')


def register(reg: Registry) -> None:
    reg.add("http2", MAIN_SRV, flag_slot("h2_enable"))
    reg.add("http2_recv_buffer_size", [HTTP], _size("h2_recv_buffer_size", _recv_buffer))
    reg.add("http2_max_concurrent_streams", MAIN_SRV, _concurrent_streams)
    reg.add("http2_body_preread_size", MAIN_SRV, _size("h2_body_preread_size", _preread))
    reg.add("http2_streams_index_size", MAIN_SRV, _streams_index_size)
    reg.add("http2_chunk_size", MAIN_SRV_LOC, _size("h2_chunk_size", _chunk))
    for name in _REPLACED:
        reg.add(name, MAIN_SRV, _replaced, TAKE1)
    for name, contexts in _IGNORED:
        reg.add(name, contexts, _obsolete, TAKE1)


def configure(ctx: Context, loc: LocationConf) -> None:
    """The server level's values are the connection's (read from the default server)."""
    loc.http2 = ctx.get("h2_enable", False)
    loc.http2_max_concurrent_streams = ctx.get(
        "h2_max_concurrent_streams", DEFAULT_CONCURRENT_STREAMS
    )
    loc.http2_body_preread_size = ctx.get("h2_body_preread_size", DEFAULT_PREREAD)
    loc.http2_chunk_size = ctx.get("h2_chunk_size", DEFAULT_CHUNK)
    loc.http2_recv_buffer_size = ctx.get("h2_recv_buffer_size", DEFAULT_RECV_BUFFER)


def _http2_variable(r: Any) -> str:
    # nginx: "h2" over TLS, "h2c" in cleartext, an empty value for HTTP/1.x requests.
    if r.version == (2, 0):
        return "h2" if r.conn.is_ssl else "h2c"
    return ""


def declare(nodes: list[Node], table: VariableTable, http_ctx: Context) -> list[Any]:
    table.add("http2", _http2_variable)
    return []


def h2_enabled(port: HttpPort, srv: ServerConf) -> bool:
    """Whether HTTP/2 is on for a connection to `port` whose server (the default one, or the
    one TLS's SNI chose) is `srv`: `listen ... http2` or `http2 on` (ALPN "h2" offered)."""
    return port.http2 or getattr(srv.conf, "http2", False)


__all__ = ["configure", "declare", "h2_enabled", "register"]
