"""`pass address;` (ngx_stream_pass_module, nginx 1.25.5): hand the accepted connection to
another listening socket of this configuration, in the same worker.

The session that passes has already done its work (PROXY header and realip, TLS termination,
`ssl_preread`): the target server's session adopts the same transport, keeps the client's
address, takes the bytes read so far, and runs its own phases — so `ssl_preread` + `map` +
`pass` terminates TLS for some server names and passes the others through untouched.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, Context, Registry
from pyngx.conf.values import SockAddr, UrlError, parse_url
from pyngx.conf.variables import compile_complex, has_variables

Target = Callable[[Any], str]


def _pass(ctx: Context, node: Node) -> None:
    text = node.args[0]
    if "pass" in ctx.slots:
        raise node.error('"pass" directive is duplicate')
    if has_variables(text):
        ctx.slots["pass"] = compile_complex(text, ctx.up("stream").slots["variables"])
    else:
        try:
            parse_url(text, listen=True, resolve=False)
        except UrlError as exc:
            raise node.error(f'{exc.text} in "{text}" of the "pass" directive') from None
        ctx.slots["pass"] = lambda s, text=text: text
    ctx.locations["pass"] = node


def register(reg: Registry) -> None:
    reg.add("pass", ["stream_server"], _pass, TAKE1)


def target(srv: Context) -> Target | None:
    return srv.local("pass")


def _address(text: str) -> SockAddr | None:
    try:
        url = parse_url(text, listen=True, resolve=False)
    except UrlError:
        return None
    return url.addrs[0] if url.addrs else None


def find_listener(groups: list[tuple[Any, Any]], text: str) -> tuple[Any, Any] | None:
    """The (server, listen) of this worker that `text` names: an exact address, or the
    wildcard socket of that port (nginx's ngx_stream_pass_match_listen)."""
    addr = _address(text)
    if addr is None:
        return None
    wildcard: tuple[Any, Any] | None = None
    for group, _sock in groups:
        lo = group.opts
        if getattr(lo, "udp", False) or lo.addr.family != addr.family:
            continue
        if addr.family == socket.AF_UNIX:
            if lo.addr.address == addr.address:
                return group.default
            continue
        if lo.addr.address == addr.address:
            return group.default
        if lo.wildcard and lo.addr.port == addr.port:
            wildcard = group.by_addr.get(addr.host) or group.default
    return wildcard


def feed_tls(protocol: Any, data: bytes) -> None:
    """Give bytes read before a TLS handshake started (the preread ClientHello) to the
    transport's SSL protocol, as if they had just arrived from the socket."""
    if hasattr(protocol, "get_buffer"):
        view = memoryview(data)
        while view:
            buf = protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        protocol.data_received(data)
