"""ngx_http_realip_module: the client address from a trusted proxy's header or PROXY header.

`set_real_ip_from` lists the trusted proxies, `real_ip_header` names where the client address
is (X-Real-IP by default, X-Forwarded-For, `proxy_protocol`, or any header), and
`real_ip_recursive` walks an address list from the right past every trusted address.

As in nginx, the module runs twice: at the post-read phase with the server's settings (before
the server rewrite phase, so `if ($remote_addr ...)` there sees the new address) and, if that
did not replace the address, at the start of the preaccess phase with the location's. A
replaced address lasts for that request only: the connection's address is swapped
(`conn.remote_addr`/`remote_port`, which $remote_addr, the access and limit modules and the
error log read) and the original is kept in `r.extra["realip"]` ($realip_remote_addr), from
where connection.py puts it back when the request ends.

Addresses are parsed the way nginx parses them (ngx_parse_addr_port): an IPv4 address in
ngx_inet_addr's forgiving dotted form, an IPv6 address without a zone, either optionally with
a port (`[v6]:port` for IPv6). Matching against the trusted networks is done on integers
prepared at configuration time; IPv4-mapped IPv6 peers match IPv4 networks, as in
ngx_cidr_match. A replaced IPv6 address is printed as ngx_inet6_ntop prints it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.registry import Context, Registry, flag_slot
from pyngx.conf.values import UrlError, resolve_host
from pyngx.conf.variables import VariableTable
from pyngx.http import request as request_mod
from pyngx.http.module import HTTP, LOC, SRV

MAIN_SRV_LOC = (HTTP, SRV, LOC)

# real_ip_header kinds (nginx compares these names case-sensitively; any other spelling is
# an ordinary header, found case-insensitively).
XREALIP, XFWD, PROXY, HEADER = range(4)
_KINDS = {"X-Real-IP": XREALIP, "X-Forwarded-For": XFWD, "proxy_protocol": PROXY}

# ngx_http_get_forwarded_addr's results.
_OK, _DONE, _DECLINED = range(3)

# The key in Request.extra under which the original (address, port) is kept.
KEY = "realip"

_V4_MAPPED = 0xFFFF << 32

Addr = tuple[int, int]  # (4 or 6, address as an integer); IPv4-mapped IPv6 stays 6


@dataclass(frozen=True, slots=True)
class RealipConf:
    """One level's merged realip settings (only made when set_real_ip_from is set)."""

    nets4: tuple[tuple[int, int], ...]  # (network, mask) as integers
    nets6: tuple[tuple[int, int], ...]
    unix: bool
    kind: int
    header: str  # lower-case name, for HEADER
    recursive: bool

    def trusted(self, addr: Addr) -> bool:
        family, value = addr
        if family == 6 and value >> 32 == 0xFFFF:
            family, value = 4, value & 0xFFFFFFFF
        nets = self.nets4 if family == 4 else self.nets6
        return any(value & mask == net for net, mask in nets)


# -- address text, as nginx reads and writes it ------------------------------------------


def parse_ipv4(text: str) -> int | None:
    """ngx_inet_addr: four dot-separated decimal octets (empty ones count as 0, leading zeros
    are fine); 255.255.255.255 is INADDR_NONE and so not an address."""
    parts = text.split(".")
    if len(parts) != 4:
        return None
    value = 0
    for part in parts:
        if part and not (part.isdigit() and part.isascii()):
            return None
        octet = int(part) if part else 0
        if octet > 255:
            return None
        value = value << 8 | octet
    return None if value == 0xFFFFFFFF else value


def parse_addr(text: str) -> Addr | None:
    """ngx_parse_addr: an IPv4 or IPv6 address, nothing else."""
    v4 = parse_ipv4(text)
    if v4 is not None:
        return 4, v4
    if ":" not in text or "%" in text or not text.isascii():
        return None
    try:
        return 6, int(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def parse_addr_port(text: str) -> tuple[Addr, int] | None:
    """ngx_parse_addr_port: an address, `addr:port` or `[v6addr]:port` (port 0: none)."""
    addr = parse_addr(text)
    if addr is not None:
        return addr, 0
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or close == len(text) - 1 or text[close + 1] != ":":
            return None
        host, port_text = text[1:close], text[close + 2 :]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return None
    if not port_text.isdigit() or not port_text.isascii():
        return None
    port = int(port_text)
    if port < 1 or port > 65535:
        return None
    addr = parse_addr(host)
    return None if addr is None else (addr, port)


def peer_addr(text: str, family: int) -> Addr | None:
    """A connection's address text (the kernel's canonical form) as an Addr."""
    try:
        if family == socket.AF_INET6 or ":" in text:
            return 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except OSError:
        return None


def format_addr(addr: Addr) -> str:
    family, value = addr
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return inet6_ntop(value.to_bytes(16, "big"))


def inet6_ntop(p: bytes) -> str:
    """ngx_inet6_ntop: the longest run (two or more) of zero groups becomes `::`; addresses
    that start with such a run and end in an IPv4 address (::ffff:a.b.c.d, ::a.b.c.d, but not
    ::1) keep their last 32 bits dotted."""
    words = [p[i] << 8 | p[i + 1] for i in range(0, 16, 2)]
    zero, best, run, start = -1, 1, 0, 0
    for i, w in enumerate(words):
        if w:
            if run > best:
                zero, best = start, run
            run = 0
        else:
            if run == 0:
                start = i
            run += 1
    if run > best:
        zero, best = start, run
    n = 8
    out = ""
    if zero == 0:
        if (
            (best == 5 and words[5] == 0xFFFF)
            or best == 6
            or (best == 7 and (p[14] != 0 or p[15] != 1))
        ):
            n = 6
        out = ":"
    i = 0
    while i < n:
        if i == zero:
            out += ":"
            i += best
            continue
        out += f"{words[i]:x}"
        if i < 7:
            out += ":"
        i += 1
    if n == 6:
        out += f"{p[12]}.{p[13]}.{p[14]}.{p[15]}"
    return out


# -- the forwarded-address walk (ngx_http_get_forwarded_addr) ----------------------------


def _walk(conf: RealipConf, addr: Addr | None, port: int, value: str) -> tuple[int, Addr, int]:
    """ngx_http_get_forwarded_addr_internal over one value: if the current address is trusted,
    take the last address of the list, and with `real_ip_recursive` go on leftwards while
    the address just taken is trusted. `addr` None is a unix-socket peer (trusted by
    "unix:" only; it cannot be the result since a value was parsed after it)."""
    end = len(value)
    declined = _DECLINED
    trusted = conf.unix if addr is None else conf.trusted(addr)
    while True:
        if not trusted:
            return declined, addr or (4, 0), port
        # nginx never looks at the first byte when it strips separators or looks for one.
        while end > 1 and value[end - 1] in " ,":
            end -= 1
        sep = max(value.rfind(" ", 1, end), value.rfind(",", 1, end))
        start = sep + 1 if sep >= 1 else 0
        parsed = parse_addr_port(value[start:end])
        if parsed is None:
            return declined, addr or (4, 0), port
        addr, port = parsed
        if not conf.recursive or start == 0:
            return _OK, addr, port
        # Deeper down, running out of trusted addresses ends the walk with what was found.
        end = start - 1
        declined = _DONE
        trusted = conf.trusted(addr)


def forwarded_addr(conf: RealipConf, addr: Addr | None, values: list[str]) -> tuple[int, Addr, int]:
    """ngx_http_get_forwarded_addr: one value, or several headers (X-Forwarded-For) from the
    last to the first while the recursive walk gets through each of them."""
    rc, port = _DECLINED, 0
    found = False
    result: Addr = addr or (4, 0)
    for value in reversed(values):
        if value:
            rc, result, port = _walk(conf, addr, port, value)
        else:
            rc = _DECLINED  # nginx would read before the value here; nothing to parse
        if not conf.recursive:
            break
        if rc == _DECLINED and found:
            return _DONE, result, port
        if rc != _OK:
            break
        found = True
        addr = result
    return rc, result, port


# -- request time --------------------------------------------------------------------------


def apply(r: Any, conf: RealipConf) -> None:
    """ngx_http_realip_handler: replace the client address once per request."""
    extra = r.extra
    if extra is not None and KEY in extra:
        return
    conn = r.conn
    kind = conf.kind
    pp = None
    if kind == XFWD:
        if "x-forwarded-for" not in r.headers:
            return
        values = [v for n, v in r.header_list if len(n) == 15 and n.lower() == "x-forwarded-for"]
    elif kind == XREALIP:
        value = r.headers.get("x-real-ip")
        if value is None:
            return
        values = [value]
    elif kind == PROXY:
        pp = conn.pp
        if pp is None or pp.src_addr is None:
            return
        values = [pp.src_addr]
    else:
        value = r.headers.get(conf.header)
        if value is None:
            return
        values = [value]
    current: Addr | None = None
    if conn.family != socket.AF_UNIX:
        current = peer_addr(conn.remote_addr, conn.family)
        if current is None:
            return
    rc, addr, port = forwarded_addr(conf, current, values)
    if rc == _DECLINED:
        return
    if pp is not None:
        port = pp.src_port or 0
    if extra is None:
        extra = r.extra = {}
    extra[KEY] = (conn.remote_addr, conn.remote_port)
    conn.remote_addr = format_addr(addr)
    conn.remote_port = port


def post_read(r: Any) -> int | None:
    """The post-read phase: the server level's settings."""
    conf = r.srv.conf.realip
    if conf is not None:
        apply(r, conf)
    return None


# A server with no realip settings has nothing to apply (proxy_lane.py leaves the call out).
post_read.applies = lambda port, srv: srv.conf.realip is not None  # type: ignore[attr-defined]


def _preaccess(conf: RealipConf) -> Any:
    def handler(r: Any) -> int | None:
        apply(r, conf)
        return None

    return handler


def realip_remote_addr(r: Any) -> str:
    extra = r.extra
    if extra is not None and KEY in extra:
        return str(extra[KEY][0])
    return str(r.conn.remote_addr)


def realip_remote_port(r: Any) -> str:
    extra = r.extra
    port = extra[KEY][1] if extra is not None and KEY in extra else r.conn.remote_port
    return str(port) if port else ""


# -- configuration -------------------------------------------------------------------------


def _set_real_ip_from(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg == "unix:":
        ctx.append("set_real_ip_from", "unix:", node)
        return
    net = _parse_cidr(arg, ctx, node)
    if net is not None:
        ctx.append("set_real_ip_from", net, node)
        return
    try:
        addrs = resolve_host(arg, 0)
    except UrlError as exc:
        raise node.error(f'{exc.text} in set_real_ip_from "{arg}"') from None
    for a in addrs:
        ctx.append("set_real_ip_from", ipaddress.ip_network(a.host), node)


def _parse_cidr(
    arg: str, ctx: Context, node: Node
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """ngx_ptocidr: `addr` or `addr/bits`; None when it is not one (then it is a host name)."""
    text, slash, bits = arg.partition("/")
    addr = parse_addr(text)
    if addr is None:
        return None
    family, value = addr
    width = 32 if family == 4 else 128
    if slash:
        if not bits.isdigit() or not bits.isascii() or int(bits) > width:
            return None
        prefix = int(bits)
    else:
        prefix = width
    mask = ((1 << width) - 1) ^ ((1 << (width - prefix)) - 1)
    if value & ~mask & ((1 << width) - 1):
        ctx.warn(node, f"low address bits of {arg} are meaningless")
    net_value = value & mask
    if family == 4:
        return ipaddress.IPv4Network((net_value, prefix))
    return ipaddress.IPv6Network((net_value, prefix))


def _real_ip_header(ctx: Context, node: Node) -> None:
    # nginx assigns without a duplicate check: the last one wins.
    ctx.slots["real_ip_header"] = node.args[0]
    ctx.locations["real_ip_header"] = node


def register(reg: Registry) -> None:
    reg.add("set_real_ip_from", MAIN_SRV_LOC, _set_real_ip_from)
    reg.add("real_ip_header", MAIN_SRV_LOC, _real_ip_header)
    reg.add("real_ip_recursive", MAIN_SRV_LOC, flag_slot("real_ip_recursive"))
    if post_read not in request_mod.POST_READ:
        request_mod.POST_READ.append(post_read)


def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
    table.add("realip_remote_addr", realip_remote_addr)
    table.add("realip_remote_port", realip_remote_port)
    return []


def build_conf(ctx: Context) -> RealipConf | None:
    nets = ctx.get("set_real_ip_from", None)
    if not nets:
        return None
    nets4: list[tuple[int, int]] = []
    nets6: list[tuple[int, int]] = []
    unix = False
    for net in nets:
        if isinstance(net, str):
            unix = True
            continue
        pair = (int(net.network_address), int(net.netmask))
        (nets4 if net.version == 4 else nets6).append(pair)
    header = ctx.get("real_ip_header", "X-Real-IP")
    kind = _KINDS.get(header, HEADER)
    return RealipConf(
        tuple(nets4),
        tuple(nets6),
        unix,
        kind,
        header.lower(),
        bool(ctx.get("real_ip_recursive", False)),
    )


def configure(ctx: Context, loc: Any) -> None:
    conf = build_conf(ctx)
    loc.realip = conf
    if conf is not None:
        # First in preaccess (nginx runs a phase's handlers in reverse module order, and
        # realip comes after limit_req and limit_conn).
        loc.phase_preaccess.insert(0, _preaccess(conf))


def finish(http: Context, conf: Any) -> None:
    for server in conf.servers:
        server.realip = server.conf.realip


__all__ = [
    "KEY",
    "RealipConf",
    "apply",
    "forwarded_addr",
    "format_addr",
    "inet6_ntop",
    "parse_addr",
    "parse_addr_port",
    "post_read",
    "realip_remote_addr",
    "realip_remote_port",
    "register",
]
