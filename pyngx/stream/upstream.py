"""The stream `upstream` block: groups of servers and their load balancing method.

Directives store an `UpstreamConf` per block; `build_group` turns it (or the address of a
`proxy_pass host:port`, nginx's implicit upstream) into an `UpstreamGroup` holding a balancer
from pyngx.upstream. Balancer state is per worker, as in nginx without a `zone`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.registry import NOARGS, ONEMORE, TAKE1, TAKE12, Context, Registry
from pyngx.conf.values import Url, UrlError, parse_number, parse_time, parse_url, resolve_host
from pyngx.conf.variables import compile_complex
from pyngx.stream.variables import STREAM_VARIABLES
from pyngx.upstream import Balancer, BalancerError, Peer, PeerConf, make_balancer
from pyngx.upstream.zone import Zone, ZonedBalancer

UPSTREAM = "stream_upstream"


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


@dataclass(frozen=True, slots=True)
class UpstreamGroup:
    """A compiled group: its name (for logs), balancer and, for `hash`, the key."""

    name: str
    balancer: Balancer
    key: Callable[[Any], str] | None
    ip_key: bool
    implicit: bool


def _upstream(ctx: Context, node: Node) -> None:
    name = node.args[0]
    groups: dict[str, UpstreamConf] = ctx.slots.setdefault("upstreams", {})
    if name in groups:
        raise node.error(f'duplicate upstream "{name}"')
    conf = UpstreamConf(name, node)
    groups[name] = conf
    child = ctx.child(UPSTREAM, node)
    child.slots["conf"] = conf
    child.run(node.block or [])


def _server(ctx: Context, node: Node) -> None:
    conf: UpstreamConf = ctx.slots["conf"]
    text = node.args[0]
    try:
        url = parse_url(text)
    except UrlError as exc:
        raise node.error(f'{exc.text} in upstream "{text}"') from None
    if url.port is None and not text.startswith("unix:"):
        raise node.error(f'no port in upstream "{text}"')
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
            else:
                raise ValueError
        except (ValueError, Exception):
            raise node.error(f'invalid parameter "{param}"') from None
    if not url.addrs:
        try:
            url = Url(url.text, url.host, url.port, resolve_host(url.host, url.port or 0))
        except UrlError:
            raise node.error(f'host not found in upstream "{text}"') from None
        line.url = url
    conf.servers.append(line)


def _method(name: str) -> Callable[[Context, Node], None]:
    def handler(ctx: Context, node: Node) -> None:
        conf: UpstreamConf = ctx.slots["conf"]
        if conf.method_node is not None:
            ctx.warn(node, "load balancing method redefined")
        conf.method_node = node
        if name == "hash":
            conf.hash_key = node.args[0]
            if len(node.args) > 1 and node.args[1] != "consistent":
                raise node.error(f'invalid parameter "{node.args[1]}"')
            conf.method = "hash consistent" if len(node.args) > 1 else "hash"
            compile_complex(node.args[0], STREAM_VARIABLES)  # unknown variables fail now
        else:
            conf.method = " ".join([name, *node.args])
            try:
                make_balancer(conf.method, [PeerConf("probe")])
            except BalancerError as exc:
                raise node.error(str(exc)) from None

    return handler


def _zone(ctx: Context, node: Node) -> None:
    conf: UpstreamConf = ctx.slots["conf"]
    conf.zone = node.args[0]


def register(reg: Registry) -> None:
    reg.add("upstream", ["stream"], _upstream, TAKE1, block=True)
    reg.add("server", [UPSTREAM], _server, ONEMORE)
    reg.add("hash", [UPSTREAM], _method("hash"), TAKE12)
    reg.add("least_conn", [UPSTREAM], _method("least_conn"), NOARGS)
    reg.add("random", [UPSTREAM], _method("random"), (0, 2))
    reg.add("zone", [UPSTREAM], _zone, TAKE12)


def build_group(conf: UpstreamConf) -> UpstreamGroup:
    if not conf.servers:
        raise ConfigError(f"no servers are inside upstream in {conf.node.file}:{conf.node.line}")
    primary: list[PeerConf] = []
    backup: list[PeerConf] = []
    for line in conf.servers:
        for addr in line.url.addrs:
            peer = PeerConf(
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
            (backup if line.backup else primary).append(peer)
    node = conf.method_node or conf.node
    zone = Zone(conf.zone, len(primary) + len(backup)) if conf.zone else None
    try:
        balancer: Balancer = make_balancer(
            conf.method, primary, backup, new_peer=zone.new_peer if zone else Peer
        )
    except BalancerError as exc:
        raise node.error(str(exc)) from None
    if zone is not None:
        balancer = ZonedBalancer(balancer, zone)
    key = compile_complex(conf.hash_key, STREAM_VARIABLES) if conf.hash_key else None
    return UpstreamGroup(conf.name, balancer, key, False, False)


def implicit_group(url: Url) -> UpstreamGroup:
    """`proxy_pass host:port`: round robin over the addresses the name resolved to."""
    peers = [PeerConf(a.text, a, server=url.text) for a in url.addrs]
    return UpstreamGroup(url.text, make_balancer("round_robin", peers), None, False, True)
