"""`geo` (ngx_stream_geo_module): a variable whose value depends on an IP address.

The address is the client's ($remote_addr) or the value of a given variable. Networks
(CIDR mode) match by longest prefix, as nginx's radix trees do; `ranges` mode uses nginx's
own range insertion (a range inside another splits it, a partial overlap is an error).
Both are flattened when the configuration loads into sorted interval starts with one value
each, so a lookup is one `bisect` per connection instead of a scan of the networks.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from typing import Any

from pyngx.conf.parser import Node
from pyngx.conf.variables import Getter, VariableTable

_V4_NONE = 0xFFFFFFFF  # INADDR_NONE: what nginx looks up when the address cannot be parsed
_V4_MAX, _V6_MAX = (1 << 32) - 1, (1 << 128) - 1


class GeoConf:
    """A `geo` block's lines, parsed as nginx parses them (errors at the offending line)."""

    __slots__ = ("source", "name", "ranges", "cidr_lines", "nets4", "nets6", "low", "default")

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


def parse_geo_block(node: Node) -> GeoConf:
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
        if len(words) == 1 and words[0] == "volatile":
            continue
        if len(words) != 2:
            raise line.error("invalid number of the geo parameters")
        key, value = words
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


class CompiledGeo:
    __slots__ = ("source", "ranges", "v4", "v6", "default")

    def __init__(self, conf: GeoConf, table: VariableTable) -> None:
        self.source: Getter | None = table.lookup(conf.source) if conf.source else None
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
        if self.source is None:
            if session.family == socket.AF_UNIX:
                return 4, _V4_NONE
            text = session.remote_addr
        else:
            text = self.source(session)
            if text is None:
                return 4, _V4_NONE
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return 4, _V4_NONE
        if ip.version == 6:
            mapped = ip.ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None:
                return 4, int(mapped)
            return 6, int(ip)
        return 4, int(ip)

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


class GeoHolder:
    """The variable's getter, declared before the block can be compiled (see module._stream)."""

    __slots__ = ("compiled",)

    def __init__(self) -> None:
        self.compiled: CompiledGeo | None = None

    def evaluate(self, session: Any) -> str:
        compiled = self.compiled
        return compiled.evaluate(session) if compiled is not None else ""
