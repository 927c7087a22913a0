"""The stream `upstream` block: groups of servers and their load balancing method.

Directives store an `UpstreamConf` per block; `build_group` turns it (or the address of a
`proxy_pass host:port`, nginx's implicit upstream) into an `UpstreamGroup` holding a balancer
from pyngx.upstream. Balancer state is per worker, as in nginx without a `zone`.

`server name:port resolve` (nginx 1.27.3) leaves the name unresolved at configuration time;
the group then carries a `DynamicGroup` that each worker's resolver tasks (resolver.py) feed
with addresses, and that replaces `UpstreamGroup.balancer` when they change. Sessions keep the
balancer they picked from, so an in-flight session frees its peer where it got it.

The same block serves the http module (`register_http`): there a `server` without a port
means port 80, `ip_hash` is one more method, and `keepalive` (with `keepalive_requests`,
`keepalive_timeout`, `keepalive_time`) sizes the per-worker cache of idle connections that
the http proxy keeps (pyngx/http/upstream_pool.py).
"""

from __future__ import annotations

import functools
import hashlib
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.registry import NOARGS, ONEMORE, TAKE1, TAKE12, Context, Registry
from pyngx.conf.values import (
    SockAddr,
    Url,
    UrlError,
    parse_number,
    parse_time,
    parse_url,
    resolve_host,
)
from pyngx.conf.variables import VariableTable, compile_complex
from pyngx.stream.variables import STREAM_VARIABLES
from pyngx.upstream import Balancer, BalancerError, Peer, PeerConf, PickContext, make_balancer
from pyngx.upstream.zone import SharedPeer, Zone, ZonedBalancer

UPSTREAM = "stream_upstream"
HTTP_UPSTREAM = "http_upstream"
# Where `zone` records the shared memory zones (root context), name -> size (0: not yet given).
SHM_ZONES = "shm_zones"
_ZONE_SIZE = re.compile(r"(\d+)([kKmM]?)")
_ZONE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
# Methods whose nginx module leaves NGX_STREAM_UPSTREAM_BACKUP out of the upstream's flags.
_NO_BACKUP = (
    "hash",
    "hash consistent",
    "ip_hash",
    "random",
    "random two",
    "random two least_conn",
)


@dataclass(slots=True)
class ServerLine:
    text: str
    url: Url
    weight: int = 1
    max_conns: int = 0
    max_fails: int = 1
    fail_timeout: float = 10.0
    backup: bool = False
    down: bool = False
    # `resolve` on a name: its addresses come from the resolver at run time (url.addrs empty).
    resolve: bool = False


@dataclass(slots=True)
class UpstreamConf:
    """What an `upstream` block said, before it is compiled."""

    name: str
    node: Node
    servers: list[ServerLine] = field(default_factory=list)
    method: str = "round_robin"
    method_node: Node | None = None
    hash_key: str | None = None
    zone: str | None = None
    # The configuration's variables (built-ins and its `map`s), for the `hash` key.
    variables: VariableTable = field(default_factory=lambda: STREAM_VARIABLES)
    # http only (ngx_http_upstream_keepalive_module): idle connections cached per worker.
    keepalive: int = 0
    keepalive_node: Node | None = None
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0
    keepalive_time: float = 3600.0


@dataclass(slots=True, eq=False)
class UpstreamGroup:
    """A compiled group: its name (for logs), balancer and, for `hash`, the key.

    `balancer` is the holder sessions read (one attribute read per pick); only a group with
    `resolve` servers (`dynamic`) ever replaces it, from its worker's resolver tasks.
    """

    name: str
    balancer: Balancer
    key: Callable[[Any], str] | None
    ip_key: bool
    implicit: bool
    dynamic: DynamicGroup | None = None


class EmptyBalancer:
    """The balancer of a group none of whose primary servers has an address yet (only
    unresolved `resolve` names): every pick fails, as nginx's "no live upstreams"."""

    peers: tuple[Peer, ...] = ()

    def start(self, now: float, key: bytes | None = None) -> PickContext:
        return PickContext(now, key)

    def get(self, ctx: PickContext) -> Peer | None:
        return None

    def free(self, peer: Peer, ctx: PickContext, *, failed: bool) -> None:
        return None


def _upstream(ctx: Context, node: Node) -> None:
    name = node.args[0]
    groups: dict[str, UpstreamConf] = ctx.slots.setdefault("upstreams", {})
    if name in groups:
        raise node.error(f'duplicate upstream "{name}"')
    conf = UpstreamConf(name, node, variables=ctx.slots["variables"])
    groups[name] = conf
    child = ctx.child(UPSTREAM if ctx.kind == "stream" else HTTP_UPSTREAM, node)
    child.slots["conf"] = conf
    child.run(node.block or [])


def _server(ctx: Context, node: Node) -> None:
    conf: UpstreamConf = ctx.slots["conf"]
    text = node.args[0]
    try:
        # Names are looked up below, once the parameters say whether `resolve` defers that.
        url = parse_url(text, resolve=False)
    except UrlError as exc:
        raise node.error(f'{exc.text} in upstream "{text}"') from None
    if url.port is None and not text.startswith("unix:"):
        if ctx.kind != HTTP_UPSTREAM:
            raise node.error(f'no port in upstream "{text}"')
        # ngx_http_upstream_server: u.default_port = 80.
        host = url.host
        url = parse_url(f"[{host}]:80" if ":" in host else f"{host}:80", resolve=False)
    line = ServerLine(text, url)
    for param in node.args[1:]:
        key, eq, value = param.partition("=")
        try:
            if key == "weight" and eq:
                line.weight = parse_number(value)
                if line.weight < 1:
                    raise ValueError
            elif key == "max_conns" and eq:
                line.max_conns = parse_number(value)
            elif key == "max_fails" and eq:
                line.max_fails = parse_number(value)
            elif key == "fail_timeout" and eq:
                line.fail_timeout = parse_time(value)
            elif param == "backup":
                line.backup = True
            elif param == "down":
                line.down = True
            elif param == "resolve":
                line.resolve = True
            else:
                raise ValueError
        except (ValueError, Exception):
            raise node.error(f'invalid parameter "{param}"') from None
        if param == "backup" and conf.method in _NO_BACKUP:
            # nginx checks this here, against the method set so far: a `backup` line before
            # `hash` or `random` is accepted (see _make_balancer).
            raise node.error(f'balancing method does not support parameter "{param}"')
    if url.addrs:
        line.resolve = False  # an address needs no resolver: nginx keeps it static
    elif not line.resolve:
        try:
            url = Url(url.text, url.host, url.port, resolve_host(url.host, url.port or 0))
        except UrlError:
            raise node.error(f'host not found in upstream "{text}"') from None
        line.url = url
    conf.servers.append(line)


def _method(name: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        conf: UpstreamConf = ctx.slots["conf"]
        if conf.method_node is not None or conf.keepalive_node is not None:
            # In http, `keepalive` wraps the method set before it: a method set after it
            # replaces the wrapper, and the cache is gone (as in nginx, with this warning).
            ctx.warn(node, "load balancing method redefined")
            conf.keepalive = 0
            conf.keepalive_node = None
        conf.method_node = node
        if name == "hash":
            conf.hash_key = node.args[0]
            if len(node.args) > 1 and node.args[1] != "consistent":
                raise node.error(f'invalid parameter "{node.args[1]}"')
            conf.method = "hash consistent" if len(node.args) > 1 else "hash"
            compile_complex(node.args[0], conf.variables)  # unknown variables fail now
        else:
            conf.method = " ".join([name, *node.args])
            try:
                make_balancer(conf.method, [PeerConf("probe")])
            except BalancerError as exc:
                raise node.error(str(exc)) from None

    return handler


def _zone(ctx: Context, node: Node) -> None:
    """`zone NAME [SIZE]`: checked as nginx checks it; the state stays per worker (see top)."""
    conf: UpstreamConf = ctx.slots["conf"]
    name = node.args[0]
    if not name:
        raise node.error(f'invalid zone name "{name}"')
    size = 0
    if len(node.args) > 1:
        m = _ZONE_SIZE.fullmatch(node.args[1])  # ngx_parse_size: k and m only
        if m is None:
            raise node.error(f'invalid zone size "{node.args[1]}"')
        size = int(m.group(1)) * _ZONE_UNITS[m.group(2).lower()]
        if size < 8 * resource.getpagesize():
            raise node.error(f'zone "{name}" is too small')
    # ngx_shared_memory_add: upstreams may share a zone; a size given twice must agree.
    root = ctx
    while root.parent is not None:
        root = root.parent
    zones: dict[str, int] = root.slots.setdefault(SHM_ZONES, {})
    known = zones.setdefault(name, size)
    if not known:
        zones[name] = size
    elif size and size != known:
        raise node.error(
            f'the size {size} of shared memory zone "{name}" conflicts with already declared'
            f" size {known}"
        )
    conf.zone = name


def _keepalive(ctx: Context, node: Node) -> None:
    conf: UpstreamConf = ctx.slots["conf"]
    if conf.keepalive:
        raise node.error('"keepalive" directive is duplicate')
    try:
        n = parse_number(node.args[0])
    except Exception:
        n = 0
    if n <= 0:
        raise node.error(f'invalid value "{node.args[0]}" in "keepalive" directive')
    conf.keepalive = n
    conf.keepalive_node = node


def _keepalive_value(name: str, parse: Callable[[str], Any]) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        conf: UpstreamConf = ctx.slots["conf"]
        if name in ctx.slots:
            raise node.error(f'"{node.name}" directive is duplicate')
        ctx.slots[name] = True
        try:
            value = parse(node.args[0])
        except Exception:
            raise node.error(f'"{node.name}" directive invalid value') from None
        setattr(conf, name, value)

    return handler


def check_zones(root: Context) -> None:
    """ngx_init_cycle's check, after the whole configuration: every zone needs a size."""
    for name, size in root.slots.get(SHM_ZONES, {}).items():
        if not size:
            raise ConfigError(f'zero size shared memory zone "{name}"')


def register(reg: Registry) -> None:
    reg.add("upstream", ["stream"], _upstream, TAKE1, block=True)
    reg.add("server", [UPSTREAM], _server, ONEMORE)
    reg.add("hash", [UPSTREAM], _method("hash"), TAKE12)
    reg.add("least_conn", [UPSTREAM], _method("least_conn"), NOARGS)
    reg.add("random", [UPSTREAM], _method("random"), (0, 2))
    reg.add("zone", [UPSTREAM], _zone, TAKE12)


def register_http(reg: Registry) -> None:
    """The http `upstream` block: the stream one's directives plus ip_hash and keepalive."""
    reg.add("upstream", ["http"], _upstream, TAKE1, block=True)
    reg.add("server", [HTTP_UPSTREAM], _server, ONEMORE)
    reg.add("hash", [HTTP_UPSTREAM], _method("hash"), TAKE12)
    reg.add("ip_hash", [HTTP_UPSTREAM], _method("ip_hash"), NOARGS)
    reg.add("least_conn", [HTTP_UPSTREAM], _method("least_conn"), NOARGS)
    reg.add("random", [HTTP_UPSTREAM], _method("random"), (0, 2))
    reg.add("zone", [HTTP_UPSTREAM], _zone, TAKE12)
    reg.add("keepalive", [HTTP_UPSTREAM], _keepalive, TAKE1)
    reg.add(
        "keepalive_requests", [HTTP_UPSTREAM], _keepalive_value("keepalive_requests", parse_number)
    )
    reg.add(
        "keepalive_timeout", [HTTP_UPSTREAM], _keepalive_value("keepalive_timeout", parse_time)
    )
    reg.add("keepalive_time", [HTTP_UPSTREAM], _keepalive_value("keepalive_time", parse_time))


def _peer_conf(line: ServerLine, addr: SockAddr) -> PeerConf:
    return PeerConf(
        addr.text,
        addr,
        weight=line.weight,
        max_conns=line.max_conns,
        max_fails=line.max_fails,
        fail_timeout=line.fail_timeout,
        backup=line.backup,
        down=line.down,
        server=line.text,
    )


def build_group(conf: UpstreamConf, resolver: Any = None) -> UpstreamGroup:
    """Compile a block; `resolver` is the stream block's ResolverConf (or None), which
    `server ... resolve` lines need."""
    if not conf.servers:
        raise ConfigError(
            f"no servers are inside upstream in {conf.node.file}:{conf.node.end_line}"
        )
    where = f'upstream "{conf.name}" in {conf.node.file}:{conf.node.line}'
    resolving = [line for line in conf.servers if line.resolve]
    if resolving and conf.zone is None:
        # ngx_stream_upstream_init_round_robin (1.27.3), in nginx's order and words.
        raise ConfigError(f"resolving names at run time requires {where} to be in shared memory")
    if resolving and resolver is None:
        raise ConfigError(f"no resolver defined to resolve names at run time in {where}")
    primary: list[PeerConf] = []
    backup: list[PeerConf] = []
    for line in conf.servers:
        for addr in line.url.addrs:
            (backup if line.backup else primary).append(_peer_conf(line, addr))
    if not primary and not any(not line.backup for line in resolving):
        # ngx_stream_upstream_init_round_robin, at the `upstream` line for every method
        # (a primary `resolve` server counts, addresses or not).
        raise conf.node.error(f'no servers in upstream "{conf.name}"')
    node = conf.method_node or conf.node
    zone = Zone(conf.zone, len(primary) + len(backup), len(resolving)) if conf.zone else None
    key = compile_complex(conf.hash_key, conf.variables) if conf.hash_key else None
    if resolving:
        assert zone is not None
        dynamic = DynamicGroup(conf, zone, resolver, primary + backup)
        try:
            balancer = dynamic.make_balancer()
        except BalancerError as exc:
            raise node.error(str(exc)) from None
        group = UpstreamGroup(conf.name, balancer, key, False, False, dynamic)
        dynamic.group = group
        return group
    try:
        balancer = _make_balancer(
            conf.method, primary, backup, zone.new_peer if zone is not None else Peer
        )
    except BalancerError as exc:
        raise node.error(str(exc)) from None
    if zone is not None:
        balancer = ZonedBalancer(balancer, zone)
    return UpstreamGroup(conf.name, balancer, key, conf.method == "ip_hash", False)


def _address_key(addr: SockAddr) -> int:
    # 52 bits of a hash: exact in a float64 zone cell, and never 0 (the free-slot mark).
    digest = hashlib.blake2b(addr.text.encode(), digest_size=7).digest()
    return (int.from_bytes(digest, "big") >> 4) | 1


class DynamicGroup:
    """The run-time side of a group with `resolve` servers (one per group per worker).

    It rebuilds the group's balancer from the static addresses plus what each resolvable line
    resolved to last. Peers live in the zone: static ones at fixed slots, resolved ones at
    slots the zone hands out per address (zone.py), so an address that stays keeps its
    counters (fails, checked, weights, conns), even across the balancer swap, and sessions
    still holding a peer of the old balancer update the very same counters.
    """

    def __init__(
        self, conf: UpstreamConf, zone: Zone, resolver: Any, static: list[PeerConf]
    ) -> None:
        self.conf = conf
        self.zone = zone
        self.resolver = resolver
        self.group: UpstreamGroup | None = None
        self.lines = [line for line in conf.servers if line.resolve]
        # Static PeerConfs in configuration order, their slot being that position.
        self._static_slots = {id(pc): i for i, pc in enumerate(static)}
        self._static = static
        # Per resolvable line: address -> (PeerConf, slot) currently listed by this worker.
        self._resolved: list[dict[SockAddr, tuple[PeerConf, int]]] = [{} for _ in self.lines]
        # Start the static peers' counters now (in the master, before the fork); every
        # balancer built later runs over live counters (resolved slots start in acquire).
        for i, pc in enumerate(static):
            SharedPeer(pc, i, zone.cells, i)

    def addresses(self, index: int) -> list[SockAddr]:
        return list(self._resolved[index])

    def set_addresses(self, index: int, addrs: list[SockAddr]) -> tuple[bool, int]:
        """Line `index` now resolves to `addrs`: rebuild the balancer if the set changed.

        Returns (changed, dropped): `dropped` counts addresses left out because the line's
        RESOLVE_SLOTS were all taken.
        """
        current = self._resolved[index]
        wanted = list(dict.fromkeys(addrs))
        if set(wanted) == set(current):
            return False, 0
        line = self.lines[index]
        dropped = 0
        zone = self.zone
        with zone.lock:
            for addr in [a for a in current if a not in wanted]:
                _, slot = current.pop(addr)
                zone.release(slot)
            for addr in wanted:
                if addr in current:
                    continue
                slot = zone.acquire(index, _address_key(addr), line.weight)
                if slot is None:
                    dropped += 1
                    continue
                current[addr] = (_peer_conf(line, addr), slot)
        if self.group is not None:
            self.group.balancer = self.make_balancer()
        return True, dropped

    def make_balancer(self) -> Balancer:
        primary: list[PeerConf] = []
        backup: list[PeerConf] = []
        slots: dict[int, int] = dict(self._static_slots)
        static = iter(self._static)
        resolved = iter(self._resolved)
        for line in self.conf.servers:
            if line.resolve:
                confs = []
                for pc, slot in next(resolved).values():
                    slots[id(pc)] = slot
                    confs.append(pc)
            else:
                confs = [next(static) for _ in line.url.addrs]
            (backup if line.backup else primary).extend(confs)
        if not primary:
            return EmptyBalancer()
        cells = self.zone.cells

        def new_peer(pc: PeerConf, index: int) -> Peer:
            return SharedPeer(pc, index, cells, slots[id(pc)], keep=True)

        return ZonedBalancer(_make_balancer(self.conf.method, primary, backup, new_peer), self.zone)


_BalancerClass = Callable[..., Balancer]


@functools.cache
def _with_backups(cls: type[Any]) -> _BalancerClass:
    sub: _BalancerClass = type(cls.__name__, (cls,), {"supports_backup": True})
    return sub


def _make_balancer(
    method: str,
    primary: list[PeerConf],
    backup: list[PeerConf],
    new_peer: Callable[[PeerConf, int], Peer] = Peer,
) -> Balancer:
    """make_balancer, keeping `backup` servers declared before `hash` or `random`.

    nginx accepts those (the check is in `server`) and builds the backup list anyway: its
    round robin fallback (after 20 rejected hash or random picks) moves on to them, and they
    count in the tries. The same balancer class, allowed backups, does just that.
    """
    if backup:
        cls = type(make_balancer(method, primary))
        if not getattr(cls, "supports_backup", True):
            return _with_backups(cls)(primary, backup, new_peer=new_peer)
    return make_balancer(method, primary, backup, new_peer=new_peer)


def implicit_group(url: Url) -> UpstreamGroup:
    """`proxy_pass host:port`: round robin over the addresses the name resolved to."""
    peers = [PeerConf(a.text, a, server=url.text) for a in url.addrs]
    return UpstreamGroup(url.text, make_balancer("round_robin", peers), None, False, True)
