"""Warnings `pyngx -t` gives about stream configurations that are valid but rarely meant.

These are pyngx's own `[warn]` lines (nginx has none of them): each names a mistake users
make in front of mail servers, and is printed with the location like nginx's warnings.
"""

from __future__ import annotations

from pyngx.conf.parser import Node
from pyngx.stream.module import StreamServer

# Ports whose protocols start in plain text and upgrade with STARTTLS: TLS from the first
# byte (`listen ... ssl`) breaks them.
STARTTLS_PORTS = {25: "SMTP", 587: "submission", 143: "IMAP", 110: "POP3"}


def check(servers: list[StreamServer]) -> list[str]:
    warnings: list[str] = []
    for srv in servers:
        for lo in srv.listens:
            if lo.proxy_protocol and not srv.realip_from:
                warnings.append(
                    f'"listen {lo.addr.text} proxy_protocol" expects a PROXY protocol header '
                    'from every client and no "set_real_ip_from" trusts anyone to send it: '
                    "clients that connect directly (mail and web clients never send one) are "
                    'refused with "broken header"; add proxy_protocol to "listen" only '
                    f"behind a proxy that sends it, in {lo.where}"
                )
            port = lo.addr.port
            if getattr(lo, "ssl", False) and port in STARTTLS_PORTS:
                warnings.append(
                    f'"listen {lo.addr.text} ssl" terminates TLS on the {STARTTLS_PORTS[port]} '
                    "port, whose clients start in plain text and use STARTTLS; pass the port "
                    f'through without "ssl", in {lo.where}'
                )
    return warnings


def check_preread_variables(stream: Node | None, servers: list[StreamServer]) -> list[str]:
    """`$ssl_preread_*` used where no server reads the ClientHello: always empty."""
    if stream is None or any(srv.ssl_preread for srv in servers):
        return []
    for node in _walk(stream.block or []):
        for arg in [node.name, *node.args]:
            if "$ssl_preread_" in arg or "${ssl_preread_" in arg:
                return [
                    f'"{arg}" uses $ssl_preread_* variables but no server has "ssl_preread on":'
                    " they stay empty (a map on them always gives its default), in "
                    f"{node.file}:{node.line}"
                ]
    return []


def _walk(nodes: list[Node]) -> list[Node]:
    out: list[Node] = []
    for node in nodes:
        out.append(node)
        if node.block:
            out.extend(_walk(node.block))
    return out
