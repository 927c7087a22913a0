"""DynamicGroup: re-resolution swaps the balancer, keeping the state of addresses that stay."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pyngx.conf.errors import ConfigError
from pyngx.conf.parser import Node
from pyngx.conf.values import SockAddr, parse_url
from pyngx.stream import resolver
from pyngx.stream.upstream import (
    EmptyBalancer,
    ServerLine,
    UpstreamConf,
    UpstreamGroup,
    build_group,
)
from pyngx.upstream.zone import RESOLVE_SLOTS

CONF = resolver.ResolverConf((SockAddr(socket.AF_INET, ("127.0.0.1", 53)),))


def _addr(host: str, port: int = 25) -> SockAddr:
    return SockAddr(socket.AF_INET, (host, port))


def _group(
    *, static: bool = False, zone: str | None = "g", res: resolver.ResolverConf | None = CONF
) -> UpstreamGroup:
    conf = UpstreamConf("g", Node("upstream", ["g"], "t.conf", 1), zone=zone)
    if static:
        conf.servers.append(ServerLine("127.0.0.9:25", parse_url("127.0.0.9:25")))
    line = ServerLine("mail.test:25", parse_url("mail.test:25", resolve=False), resolve=True)
    line.max_fails = 3
    conf.servers.append(line)
    return build_group(conf, res)


def test_requires_zone_and_resolver() -> None:
    with pytest.raises(ConfigError, match="to be in shared memory"):
        _group(zone=None)
    with pytest.raises(ConfigError, match="no resolver defined"):
        _group(res=None)


def test_no_addresses_means_no_live_upstreams() -> None:
    group = _group()
    assert isinstance(group.balancer, EmptyBalancer)
    ctx = group.balancer.start(0.0)
    assert group.balancer.get(ctx) is None


def test_swap_keeps_state_of_addresses_that_stay() -> None:
    group = _group(static=True)
    dyn = group.dynamic
    assert [p.name for p in group.balancer.peers] == ["127.0.0.9:25"]
    assert dyn.set_addresses(0, [_addr("127.0.0.2"), _addr("127.0.0.3")]) == (True, 0)
    old = group.balancer
    by_name = {p.name: p for p in old.peers}
    assert set(by_name) == {"127.0.0.9:25", "127.0.0.2:25", "127.0.0.3:25"}
    # A failure and an in-flight connection on .2.
    ctx = old.start(100.0)
    peer = None
    while peer is None or peer.name != "127.0.0.2:25":
        peer = old.get(ctx)
        assert peer is not None
    peer.fails, peer.checked = 2, 100.0
    assert dyn.set_addresses(0, [_addr("127.0.0.2"), _addr("127.0.0.4")]) == (True, 0)
    assert dyn.set_addresses(0, [_addr("127.0.0.4"), _addr("127.0.0.2")]) == (False, 0)
    new = group.balancer
    assert new is not old
    names = {p.name: p for p in new.peers}
    assert set(names) == {"127.0.0.9:25", "127.0.0.2:25", "127.0.0.4:25"}
    kept = names["127.0.0.2:25"]
    assert (kept.fails, kept.checked, kept.conns) == (2, 100.0, 1)
    assert names["127.0.0.4:25"].conns == 0
    assert names["127.0.0.4:25"].effective_weight == 1
    # The session frees on the balancer that gave it the peer: the shared counter drops.
    old.free(peer, ctx, failed=False)
    assert kept.conns == 0


def test_nxdomain_empties_and_slots_are_capped() -> None:
    group = _group()
    dyn = group.dynamic
    many = [_addr(f"127.0.1.{i}") for i in range(RESOLVE_SLOTS + 3)]
    assert dyn.set_addresses(0, many) == (True, 3)
    assert len(group.balancer.peers) == RESOLVE_SLOTS
    assert dyn.set_addresses(0, []) == (True, 0)
    assert isinstance(group.balancer, EmptyBalancer)
    # The slots were released: a new set fits again.
    assert dyn.set_addresses(0, many[3:]) == (True, 0)


def test_resolve_merges_families_and_reports_errors() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        from pyngx.protocols import dns

        async def serve() -> None:
            while True:
                data, peer = await loop.sock_recvfrom(sock, 512)
                flipped = data[:2] + bytes([data[2] | 0x80]) + data[3:]
                q = dns.parse_response(flipped).questions[0]
                if q.name == "gone.test":
                    out = dns.build_response(data, [], rcode=dns.RCODE_NXDOMAIN)
                elif q.qtype == dns.TYPE_A:
                    out = dns.build_response(data, [(q.name, 1, 7, b"\x7f\x00\x00\x05")])
                else:
                    out = dns.build_response(data, [(q.name, 28, 3, bytes(15) + b"\x01")])
                await loop.sock_sendto(sock, out, peer)

        task = loop.create_task(serve())
        conf = resolver.ResolverConf((SockAddr(socket.AF_INET, sock.getsockname()),), timeout=2.0)
        try:
            assert await resolver.resolve(conf, "ok.test") == (["127.0.0.5", "::1"], 3)
            with pytest.raises(resolver.ResolveError) as err:
                await resolver.resolve(conf, "gone.test")
            assert str(err.value) == "3: Host not found"
        finally:
            task.cancel()
            sock.close()

    asyncio.run(run())
