"""`zone`: peer state shared across forked workers behaves like per-process state, but shared."""

from __future__ import annotations

import os

from pyngx.upstream import PeerConf, make_balancer
from pyngx.upstream.zone import SharedPeer, Zone, ZonedBalancer


def confs(weights: dict[str, int]) -> list[PeerConf]:
    return [PeerConf(name, weight=w, max_fails=1, fail_timeout=10.0) for name, w in weights.items()]


def zoned(method: str, weights: dict[str, int]) -> ZonedBalancer:
    primary = confs(weights)
    zone = Zone("z", len(primary))
    return ZonedBalancer(make_balancer(method, primary, new_peer=zone.new_peer), zone)


def picks(balancer, n: int, now: float = 100.0) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        ctx = balancer.start(now)
        peer = balancer.get(ctx)
        assert peer is not None
        out.append(peer.name)
        balancer.free(peer, ctx, failed=False)
    return out


def test_shared_peers_pick_like_plain_ones() -> None:
    weights = {"a": 5, "b": 1, "c": 1}
    for method in ("round_robin", "least_conn", "hash consistent"):
        plain = make_balancer(method, confs(weights))
        shared = zoned(method, weights)
        assert isinstance(shared.peers[0], SharedPeer)
        assert picks(shared, 50) == picks(plain, 50)


def test_state_is_shared_with_a_forked_worker() -> None:
    balancer = zoned("round_robin", {"a": 1, "b": 1})
    pid = os.fork()
    if pid == 0:  # the "other worker": peer a fails there
        try:
            ctx = balancer.start(100.0)
            peer = balancer.get(ctx)
            while peer is not None and peer.name != "a":
                balancer.free(peer, ctx, failed=False)
                ctx = balancer.start(100.0)
                peer = balancer.get(ctx)
            assert peer is not None
            balancer.free(peer, ctx, failed=True)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    a = balancer.peers[0]
    assert (a.name, a.fails) == ("a", 1)
    assert set(picks(balancer, 10, now=105.0)) == {"b"}  # within fail_timeout: skipped here too
    assert "a" in picks(balancer, 10, now=111.0)  # and back after it


def test_health_flag_and_conns_are_shared() -> None:
    balancer = zoned("least_conn", {"a": 1, "b": 1})
    pid = os.fork()
    if pid == 0:
        balancer.peers[1].unhealthy = True
        ctx = balancer.start(1.0)
        peer = balancer.get(ctx)  # held: conns stays raised
        os._exit(0 if peer is not None and peer.name == "a" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert balancer.peers[1].unhealthy is True
    assert balancer.peers[0].conns == 1
