"""`allow` and `deny` (nginx's ngx_stream_access_module), and the phase handlers of a server.

Rules are checked in order and the first one matching the client wins; a denied client ends
with $status 403 and `access forbidden by rule` at error level. The address checked is the one
after realip (`session.remote_addr`), as nginx checks `s->connection->sockaddr`, which the
realip module replaces. nginx keeps one rule list per family (`all` lands in each); filtering
one ordered list by family is the same thing.

`Rules` is the check itself, shared with http's access module (pyngx/http/access.py): the
networks are turned into (network, mask) integers once, so a check is a few integer operations.
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
        rule = Rule("ip", parse_cidr(ctx, node, arg), deny)
    ctx.append("access_rules", rule, node)


def parse_cidr(ctx: Context, node: Node, arg: str) -> Network:
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


def _ip_int(text: str) -> tuple[int, int] | None:
    """(4 or 6, address as an integer) of a client address text; None if it is none."""
    try:
        if ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        try:
            ip = ipaddress.ip_address(text)  # a scoped IPv6 address ("fe80::1%eth0")
        except ValueError:
            return None
        return ip.version, int(ip)


class Rules:
    """An ordered allow/deny list, as ngx_{http,stream}_access_module keeps it: one list per
    family (IPv4, IPv6, unix), `all` in each. `check` gives True (denied), False (allowed by a
    rule) or None (no rule for this client: nginx's NGX_DECLINED)."""

    __slots__ = ("v4", "v6", "unix")

    def __init__(self, rules: tuple[Rule, ...] | list[Rule]) -> None:
        v4: list[tuple[int, int, bool]] = []
        v6: list[tuple[int, int, bool]] = []
        unix: list[bool] = []
        for rule in rules:
            if rule.kind == ALL:
                v4.append((0, 0, rule.deny))
                v6.append((0, 0, rule.deny))
                unix.append(rule.deny)
            elif rule.kind == UNIX:
                unix.append(rule.deny)
            else:
                net = rule.net
                assert net is not None
                entry = (int(net.network_address), int(net.netmask), rule.deny)
                (v4 if net.version == 4 else v6).append(entry)
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)
        self.unix = tuple(unix)

    def check(self, addr: str, is_unix: bool) -> bool | None:
        if is_unix:
            return self.unix[0] if self.unix else None  # every unix rule matches every client
        parsed = _ip_int(addr)
        if parsed is None:
            return None
        version, ip = parsed
        if version == 6:
            # A v4-mapped client is checked against the IPv4 rules when there are any.
            if self.v4 and ip >> 32 == 0xFFFF:
                rules = self.v4
                ip &= 0xFFFFFFFF
            else:
                rules = self.v6
        else:
            rules = self.v4
        for net, mask, deny in rules:
            if ip & mask == net:
                return deny
        return None


class Access:
    """The access-phase handler of one server."""

    __slots__ = ("rules",)

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = Rules(rules)

    def __call__(self, session: Any) -> int | None:
        if self.rules.check(session.remote_addr, session.family == socket.AF_UNIX):
            # nginx's log action during the access phases reads "while initializing session".
            session.log(ERROR, "access forbidden by rule while initializing session")
            return STATUS_FORBIDDEN
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
