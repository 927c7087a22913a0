"""`geo` (ngx_stream_geo_module): a variable whose value depends on an IP address.

The address is the client's ($remote_addr) or the value of a given variable. Networks
(CIDR mode) match by longest prefix, as nginx's radix trees do; `ranges` mode uses nginx's
own range insertion (a range inside another splits it, a partial overlap is an error).
Both are flattened when the configuration loads into sorted interval starts with one value
each, so a lookup is one `bisect` per connection instead of a scan of the networks.

The same parser and lookup serve http's `geo` (pyngx/http/maps.py), which adds `proxy` and
`proxy_recursive`: when the client is a trusted proxy, the address is taken from
X-Forwarded-For (nginx's ngx_http_get_forwarded_addr). The caller says how to get the client
address and the header values (`client`, `forwarded`), so nothing here knows a session or a
request.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.variables import Getter, VariableTable

_V4_NONE = 0xFFFFFFFF  # INADDR_NONE: what nginx looks up when the address cannot be parsed
_V4_MAX, _V6_MAX = (1 << 32) - 1, (1 << 128) - 1


class GeoConf:
    """A `geo` block's lines, parsed as nginx parses them (errors at the offending line)."""

    __slots__ = (
        "source",
        "name",
        "ranges",
        "cidr_lines",
        "nets4",
        "nets6",
        "low",
        "default",
        "proxies",
        "proxy_recursive",
    )

    def __init__(self, source: str | None, name: str) -> None:
        self.source = source
        self.name = name
        self.ranges = False
        self.cidr_lines = False  # "ranges" must come before any of them
        # CIDR mode: (network, prefix length) -> value; /0 holds the default.
        self.nets4: dict[tuple[int, int], str] = {(0, 0): ""}
        self.nets6: dict[tuple[int, int], str] = {(0, 0): ""}
        # ranges mode: nginx's per-/16 lists of [start, end, value] (low 16 bits), kept sorted.
        self.low: dict[int, list[list[Any]]] = {}
        self.default = ""
        # http only: trusted proxies (version, network, mask) and `proxy_recursive`.
        self.proxies: list[tuple[int, int, int]] = []
        self.proxy_recursive = False


def _cidr(net: str, line: Node) -> tuple[int, int, int]:
    """(family, network, prefix) like ngx_ptocidr; host bits set are dropped (nginx warns)."""
    if net == "255.255.255.255":
        return 4, _V4_MAX, 32
    try:
        parsed = ipaddress.ip_network(net, strict=False)
    except ValueError:
        raise line.error(f'invalid network "{net}"') from None
    return parsed.version, int(parsed.network_address), parsed.prefixlen


def _inet_addr(text: str) -> int | None:
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def _add_range(conf: GeoConf, start: int, end: int, value: str, net: str, line: Node) -> None:
    """ngx_stream_geo_add_range: a range is stored per /16 block of the addresses it covers."""
    n = start
    while n <= end:
        h = n >> 16
        s = n & 0xFFFF if n == start else 0
        e = end & 0xFFFF if (n | 0xFFFF) > end else 0xFFFF
        a = conf.low.setdefault(h, [])
        i = len(a)
        placed = False
        while i:
            i -= 1
            rs, re_, rv = a[i]
            if e < rs:
                continue
            if s > re_:
                a.insert(i + 1, [s, e, value])
            elif s == rs and e == re_:
                a[i][2] = value  # nginx warns "duplicate range" and takes the new value
            elif s > rs and e < re_:
                a[i][1] = s - 1
                a.insert(i + 1, [s, e, value])
                a.insert(i + 2, [e + 1, re_, rv])
            elif s == rs and e < re_:
                a[i][0] = e + 1
                a.insert(i, [s, e, value])
            elif s > rs and e == re_:
                a[i][1] = s - 1
                a.insert(i + 1, [s, e, value])
            else:
                hi, lo = h >> 8, h & 0xFF
                raise line.error(
                    f'range "{net}" overlaps "{hi}.{lo}.{rs >> 8}.{rs & 0xFF}-'
                    f'{hi}.{lo}.{re_ >> 8}.{re_ & 0xFF}"'
                )
            placed = True
            break
        if not placed:
            a.insert(0, [s, e, value])
        if h == 0xFFFF:
            break
        n = (n + 0x10000) & 0xFFFF0000


def _delete_range(conf: GeoConf, start: int, end: int) -> None:
    n = start
    while n <= end:
        h = n >> 16
        s = n & 0xFFFF if n == start else 0
        e = end & 0xFFFF if (n | 0xFFFF) > end else 0xFFFF
        a = conf.low.get(h) or []
        for i, (rs, re_, _) in enumerate(a):
            if rs == s and re_ == e:
                del a[i]
                break
        if h == 0xFFFF:
            break
        n = (n + 0x10000) & 0xFFFF0000


def parse_geo_block(node: Node, *, http: bool = False) -> GeoConf:
    """A `geo` block; `http` allows http's `proxy` and `proxy_recursive` lines."""
    args = node.args
    for name in args:
        if not name.startswith("$"):
            raise node.error(f'invalid variable name "{name}"')
    conf = GeoConf(args[0][1:] if len(args) == 2 else None, args[-1][1:])
    for line in node.block or []:
        words = [line.name, *line.args]
        if line.block is not None:
            raise line.error('unexpected "{" in geo')  # nginx's parser has no such block
        if len(words) == 1 and words[0] == "ranges":
            if conf.cidr_lines:
                raise line.error(
                    'the "ranges" directive must be the first directive inside "geo" block'
                )
            conf.ranges = True
            continue
        if len(words) == 1 and words[0] == "proxy_recursive" and http:
            conf.proxy_recursive = True
            continue
        if len(words) == 1 and words[0] == "volatile" and not http:
            continue
        if len(words) != 2:
            raise line.error("invalid number of the geo parameters")
        key, value = words
        if key == "proxy" and http:
            family, addr, prefix = _cidr(value, line)
            bits = 32 if family == 4 else 128
            mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
            conf.proxies.append((family, addr, mask))
            continue
        if conf.ranges:
            _range_line(conf, key, value, line)
        else:
            _cidr_line(conf, key, value, line)
    return conf


def _cidr_line(conf: GeoConf, key: str, value: str, line: Node) -> None:
    conf.cidr_lines = True
    if key == "default":
        conf.nets4[(0, 0)] = conf.nets6[(0, 0)] = value
        return
    delete = key == "delete"
    family, addr, prefix = _cidr(value if delete else key, line)
    nets = conf.nets4 if family == 4 else conf.nets6
    if delete:
        nets.pop((addr, prefix), None)  # nginx warns "no network ... to delete" if absent
        return
    nets[(addr, prefix)] = value


def _range_line(conf: GeoConf, key: str, value: str, line: Node) -> None:
    if key == "default":
        conf.default = value
        return
    net = value if key == "delete" else key
    first, dash, last = net.partition("-")
    start = _inet_addr(first) if dash else None
    end = _inet_addr(last) if dash else None
    if start is None or end is None or start > end:
        raise line.error(f'invalid range "{net}"')
    if key == "delete":
        _delete_range(conf, start, end)
    else:
        _add_range(conf, start, end, value, net, line)


def _flatten(nets: dict[tuple[int, int], str], bits: int) -> tuple[list[int], list[str]]:
    """Longest-prefix networks -> sorted interval starts and the value from each start on.

    CIDR blocks never partially overlap, so a sweep with a stack of enclosing networks
    gives each elementary interval its most specific network's value."""
    top = (1 << bits) - 1
    spans = sorted(
        (
            (addr, addr | (top >> prefix if prefix else top), value)
            for (addr, prefix), value in nets.items()
        ),
        key=lambda t: (t[0], -t[1]),
    )
    starts: list[int] = []
    values: list[str] = []

    def mark(at: int, value: str) -> None:
        if starts and starts[-1] == at:
            values[-1] = value
        else:
            starts.append(at)
            values.append(value)

    stack: list[tuple[int, str]] = []
    for s, e, v in spans:
        while stack and stack[-1][0] < s:
            end, _ = stack.pop()
            if stack and end < top:
                mark(end + 1, stack[-1][1])
        mark(s, v)
        stack.append((e, v))
    while stack:
        end, _ = stack.pop()
        if stack and end < top:
            mark(end + 1, stack[-1][1])
    return starts, values


def _stream_client(session: Any) -> str | None:
    return None if session.family == socket.AF_UNIX else session.remote_addr


class CompiledGeo:
    __slots__ = (
        "source",
        "ranges",
        "v4",
        "v6",
        "default",
        "client",
        "forwarded",
        "proxies",
        "recursive",
    )

    def __init__(
        self,
        conf: GeoConf,
        table: VariableTable,
        *,
        client: Callable[[Any], str | None] = _stream_client,
        forwarded: Callable[[Any], list[str]] | None = None,
    ) -> None:
        """`client`: the client's address text (None: not an IP address); `forwarded`: the
        X-Forwarded-For values of a request, in order (http, used with `proxy` lines)."""
        self.source: Getter | None = table.lookup(conf.source) if conf.source else None
        self.client = client
        self.forwarded = forwarded if conf.proxies else None
        self.proxies = tuple(conf.proxies)
        self.recursive = conf.proxy_recursive
        self.ranges = conf.ranges
        self.default = conf.default
        if conf.ranges:
            starts: list[int] = []
            values: list[str | None] = []
            for h in sorted(conf.low):
                for s, e, v in conf.low[h]:
                    lo = (h << 16) | s
                    if starts and starts[-1] == lo:
                        values[-1] = v
                    else:
                        starts.append(lo)
                        values.append(v)
                    starts.append((h << 16) + e + 1)
                    values.append(None)  # a gap: the default value
            self.v4 = (starts, values)
            self.v6 = ([], [])
        else:
            self.v4 = _flatten(conf.nets4, 32)
            self.v6 = _flatten(conf.nets6, 128)

    def _address(self, session: Any) -> tuple[int, int]:
        """(4 or 6, address as an integer); unusable addresses become INADDR_NONE."""
        text = self.client(session) if self.source is None else self.source(session)
        if text is None:
            return 4, _V4_NONE
        parsed = _parse_ip(text)
        if parsed is None:
            return 4, _V4_NONE
        if self.forwarded is not None:
            values = self.forwarded(session)
            if values:
                parsed = forwarded_addr(parsed, values, self.proxies, self.recursive)
        version, addr = parsed
        if version == 6 and addr >> 32 == 0xFFFF:
            return 4, addr & 0xFFFFFFFF  # v4-mapped: looked up among the IPv4 networks
        return version, addr

    def evaluate(self, session: Any) -> str:
        version, addr = self._address(session)
        if self.ranges:
            if version == 6:
                addr = _V4_NONE
            starts, values = self.v4
            i = bisect_right(starts, addr) - 1
            value = values[i] if i >= 0 else None
            return self.default if value is None else value
        starts, values = self.v4 if version == 4 else self.v6
        return values[bisect_right(starts, addr) - 1]


def _parse_ip(text: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


def _parse_addr_port(text: str) -> tuple[int, int] | None:
    """ngx_parse_addr_port: an address, optionally with a port ("[v6]:port" for IPv6)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return _parse_ip(host) if ":" in host else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    return _parse_ip(text)


def _trusted(addr: tuple[int, int], proxies: tuple[tuple[int, int, int], ...]) -> bool:
    """ngx_cidr_match (a v4-mapped address matches the IPv4 networks)."""
    version, ip = addr
    if version == 6 and ip >> 32 == 0xFFFF:
        version, ip = 4, ip & 0xFFFFFFFF
    return any(v == version and ip & mask == net for v, net, mask in proxies)


def forwarded_addr(
    addr: tuple[int, int],
    values: list[str],
    proxies: tuple[tuple[int, int, int], ...],
    recursive: bool,
) -> tuple[int, int]:
    """ngx_http_get_forwarded_addr: when `addr` is a trusted proxy, the client address is the
    last one of X-Forwarded-For (`values`, all such headers in order); `recursive` walks on
    leftwards while the address found is itself trusted. A value that is no address stops
    the walk with what was found so far."""
    # nginx walks the headers from the last one; one joined list walks the same way.
    items = [p.strip() for p in ",".join(values).replace(" ", ",").split(",")]
    items = [p for p in items if p]
    while items:
        if not _trusted(addr, proxies):
            break
        found = _parse_addr_port(items.pop())
        if found is None:
            break
        addr = found
        if not recursive:
            break
    return addr


class GeoHolder:
    """The variable's getter, declared before the block can be compiled (see module._stream)."""

    __slots__ = ("compiled",)

    def __init__(self) -> None:
        self.compiled: CompiledGeo | None = None

    def evaluate(self, session: Any) -> str:
        compiled = self.compiled
        return compiled.evaluate(session) if compiled is not None else ""
