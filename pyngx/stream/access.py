"""`allow` and `deny` (nginx's ngx_stream_access_module), and the phase handlers of a server.

Rules are checked in order and the first one matching the client wins; a denied client ends
with $status 403 and `access forbidden by rule` at error level. The address checked is the one
after realip (`session.remote_addr`), as nginx checks `s->connection->sockaddr`, which the
realip module replaces. nginx keeps one rule list per family (`all` lands in each); filtering
one ordered list by family is the same thing.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, Context, Registry
from pyngx.core.log import ERROR
from pyngx.stream import limit_conn

STREAM, SERVER = "stream", "stream_server"
STATUS_FORBIDDEN = 403
ALL, UNIX = "all", "unix"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # ALL, UNIX, or "ip" (then `net` is set)
    net: Network | None
    deny: bool


def _rule(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    deny = node.name == "deny"
    if arg == "all":
        rule = Rule(ALL, None, deny)
    elif arg == "unix:":
        rule = Rule(UNIX, None, deny)
    else:
        rule = Rule("ip", _cidr(ctx, node, arg), deny)
    ctx.append("access_rules", rule, node)


def _cidr(ctx: Context, node: Node, arg: str) -> Network:
    """ngx_ptocidr: an address or address/bits; host bits set are only warned about."""
    addr, slash, bits = arg.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
        if slash and not bits.isdigit():
            raise ValueError(arg)  # Python would take a netmask here; nginx does not
        net = ipaddress.ip_network(f"{ip}/{bits}" if slash else str(ip), strict=False)
    except ValueError:
        raise node.error(f'invalid parameter "{arg}"') from None
    if net.network_address != ip:
        ctx.warn(node, f"low address bits of {arg} are meaningless")
    return net


@dataclass(frozen=True, slots=True)
class Access:
    """The access-phase handler of one server."""

    rules: tuple[Rule, ...]

    def __call__(self, session: Any) -> int | None:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        try:
            ip = ipaddress.ip_address(session.remote_addr)
        except ValueError:
            ip = None
        if ip is None:
            if session.family != socket.AF_UNIX:
                return None
            kinds = (ALL, UNIX)
        else:
            kinds = (ALL, "ip")
            mapped = getattr(ip, "ipv4_mapped", None)
            # A v4-mapped client is checked against the IPv4 rules when there are any.
            if mapped is not None and any(
                r.kind == ALL or (r.net is not None and r.net.version == 4) for r in self.rules
            ):
                ip = mapped
        for rule in self.rules:
            if rule.kind not in kinds:
                continue
            net = rule.net
            if net is not None and (net.version != ip.version or ip not in net):  # type: ignore[union-attr]
                continue
            if rule.deny:
                # nginx's log action during the access phases reads "while initializing session".
                session.log(ERROR, "access forbidden by rule while initializing session")
                return STATUS_FORBIDDEN
            return None
        return None


def register(reg: Registry) -> None:
    reg.add("allow", [STREAM, SERVER], _rule, TAKE1)
    reg.add("deny", [STREAM, SERVER], _rule, TAKE1)
    limit_conn.register(reg)


def phase_handlers(srv: Context) -> dict[str, tuple[Callable[[Any], Any], ...]]:
    """`StreamServer.access` (preaccess, then access, as nginx orders its phases) and
    `StreamServer.on_finalize` for one server."""
    access: list[Callable[[Any], int | None]] = []
    finalize: list[Callable[[Any], None]] = []
    limiter = limit_conn.build(srv)
    if limiter is not None:
        access.append(limiter)
        finalize.append(limiter.release)
    rules = srv.get("access_rules", [])  # a server with rules of its own replaces the parent's
    if rules:
        access.append(Access(tuple(rules)))
    return {"access": tuple(access), "on_finalize": tuple(finalize)}
