"""Tests for pyngx.upstream: nginx's load balancing methods and passive health checks."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from pyngx.upstream import (
    METHODS,
    BalancerError,
    Peer,
    PeerConf,
    PickContext,
    chash_points,
    ip_hash_key,
    make_balancer,
)
from pyngx.upstream.balancers import RoundRobin

# The methods keyed by text (ip_hash is keyed by the client address instead).
KEYED = ("hash", "hash consistent")
# Methods that accept `backup` servers, as in nginx's flags.
WITH_BACKUP = ("round_robin", "least_conn")


def conf(name: str, **kw: object) -> PeerConf:
    return PeerConf(name, **kw)  # type: ignore[arg-type]


def balancer(
    method: str, primary: Sequence[PeerConf], backup: Sequence[PeerConf] = ()
) -> RoundRobin:
    b = make_balancer(method, primary, backup, rng=random.Random(1))
    assert isinstance(b, RoundRobin)
    return b


def key_for(method: str, i: int) -> bytes:
    """A distinct key per i, of the kind the method hashes."""
    if method == "ip_hash":
        return ip_hash_key(f"10.{i // 256 % 256}.{i % 256}.7")
    return f"/object/{i}".encode()


def pick(b: RoundRobin, now: float = 0.0, key: bytes | None = None) -> Peer:
    """One request that succeeds at once."""
    ctx = b.start(now, key)
    peer = b.get(ctx)
    assert peer is not None
    b.free(peer, ctx, failed=False)
    return peer


def take(b: RoundRobin, peer: Peer, now: float) -> tuple[Peer | None, PickContext]:
    """get() with every other peer already tried, to aim at `peer`."""
    ctx = b.start(now)
    ctx.tried = {p.index for p in b.peers if p is not peer}
    ctx.backup = peer.conf.backup
    return b.get(ctx), ctx


def fail(b: RoundRobin, peer: Peer, now: float) -> None:
    got, ctx = take(b, peer, now)
    assert got is peer
    b.free(peer, ctx, failed=True)


# --- smooth weighted round robin ---------------------------------------------------------------


def test_smooth_wrr_5_1_1_sequence() -> None:
    # By hand, as ngx_stream_upstream_get_peer runs it (total effective weight 7):
    #   current +w      winner  after -7
    #   5, 1, 1         a       -2, 1, 1
    #   3, 2, 2         a       -4, 2, 2
    #   1, 3, 3         b        1,-4, 3   (ties keep the first: b, not c)
    #   6,-3, 4         a       -1,-3, 4
    #   4,-2, 5         c        4,-2,-2
    #   9,-1,-1         a        2,-1,-1
    #   7, 0, 0         a        0, 0, 0   (back to the start: the cycle repeats)
    b = balancer("round_robin", [conf("a", weight=5), conf("b"), conf("c")])
    first = [pick(b) for _ in range(2)]
    assert [p.current_weight for p in b.peers] == [-4, 2, 2]
    rest = [pick(b).name for _ in range(19)]
    assert "".join(p.name for p in first) + "".join(rest) == "aabacaa" * 3
    assert [p.current_weight for p in b.peers] == [0, 0, 0]


def test_round_robin_without_weights_cycles_in_order() -> None:
    b = balancer("round_robin", [conf(n) for n in "abcd"])
    assert "".join(pick(b).name for _ in range(8)) == "abcdabcd"


def test_least_conn_prefers_fewest_conns_per_weight() -> None:
    b = balancer("least_conn", [conf("a", weight=2), conf("b"), conf("c")])
    a, b_, c = b.peers
    a.conns, b_.conns, c.conns = 3, 1, 2  # per weight: 1.5, 1, 2
    assert pick(b).name == "b"
    a.conns = 1  # 0.5
    assert pick(b).name == "a"


def test_least_conn_ties_go_round_robin_from_the_first_tied_peer() -> None:
    b = balancer("least_conn", [conf("a"), conf("b", weight=2), conf("c", weight=2)])
    b.peers[0].conns = 5  # out of the tie
    # b and c tie at 0 conns and share by smooth weighted round robin, a untouched.
    assert "".join(pick(b).name for _ in range(4)) == "bcbc"
    assert b.peers[0].current_weight == 0


def test_random_two_picks_the_less_loaded_of_two_distinct_peers() -> None:
    b = balancer("random two", [conf("a"), conf("b")])
    b.peers[0].conns = 3
    assert {pick(b).name for _ in range(50)} == {"b"}


# --- distribution ------------------------------------------------------------------------------

WEIGHTS = (1, 2, 3, 4)


def _shares(method: str, n: int) -> list[float]:
    b = balancer(method, [conf(f"192.168.0.{i}:80", weight=w) for i, w in enumerate(WEIGHTS)])
    counts = Counter(pick(b, key=key_for(method, i)).index for i in range(n))
    return [counts[i] / n for i in range(len(WEIGHTS))]


@pytest.mark.parametrize("method", ["round_robin", "least_conn"])
def test_deterministic_methods_follow_weights_exactly(method: str) -> None:
    # least_conn with every connection freed at once always ties, so it is round robin.
    total = sum(WEIGHTS)
    assert _shares(method, 100 * total) == [w / total for w in WEIGHTS]


@pytest.mark.parametrize(
    ("method", "tolerance"),
    [("random", 0.015), ("hash", 0.015), ("ip_hash", 0.015), ("hash consistent", 0.04)],
)
def test_methods_follow_weights(method: str, tolerance: float) -> None:
    total = sum(WEIGHTS)
    shares = _shares(method, 20000)
    for share, weight in zip(shares, WEIGHTS, strict=True):
        assert share == pytest.approx(weight / total, abs=tolerance)


def test_random_two_distribution_is_nginx_second_distinct_draw() -> None:
    # With nothing in flight the second of two distinct weighted draws always wins (ties go to
    # it), so the share is sum over j != i of P(first = j) * P(second = i | not j): not the
    # weights, but what nginx's ngx_stream_upstream_get_random2_peer gives.
    total = sum(WEIGHTS)
    expected = [
        sum(wj / total * wi / (total - wj) for j, wj in enumerate(WEIGHTS) if j != i)
        for i, wi in enumerate(WEIGHTS)
    ]
    for share, want in zip(_shares("random two", 20000), expected, strict=True):
        assert share == pytest.approx(want, abs=0.015)


# --- nginx's own choices -------------------------------------------------------------------------

# Recorded from Debian's nginx 1.22.1 (one worker): stream `hash $remote_port [consistent]` with
# clients bound to these source ports, and http `ip_hash` with clients bound to these
# addresses. Servers 127.0.0.1:21001..21004 with weights 1, 2, 1, 3; "down" makes the 2nd and
# 4th `down`, which exercises the rehash walk. Values are the last digit of the server port.
NGINX_KEYS = (24001, 24999, 25000, 25555, 26262, 27000, 27777, 28080, 28888, 29000, 29500, 29999)
NGINX_HASH = {
    "hash": "314424212444",
    "hash consistent": "444343424132",
    "hash down": "313333111313",
    "hash consistent down": "133313131131",
}
NGINX_CLIENTS = (
    "127.0.0.1",
    "127.1.2.3",
    "127.1.2.200",
    "127.10.20.30",
    "127.200.100.50",
    "127.99.0.7",
    "127.5.6.7",
    "127.250.1.1",
)
NGINX_IP_HASH = {"ip_hash": "24434444", "ip_hash down": "13331311"}


def _nginx_group(down: bool) -> list[PeerConf]:
    weights = (1, 2, 1, 3)
    return [
        conf(f"127.0.0.1:{21001 + i}", weight=w, down=down and i in (1, 3))
        for i, w in enumerate(weights)
    ]


@pytest.mark.parametrize("case", sorted(NGINX_HASH))
def test_hash_matches_nginx(case: str) -> None:
    method = case.removesuffix(" down")
    b = balancer(method, _nginx_group(case.endswith(" down")))
    got = "".join(pick(b, key=str(k).encode()).name[-1] for k in NGINX_KEYS)
    assert got == NGINX_HASH[case]


@pytest.mark.parametrize("case", sorted(NGINX_IP_HASH))
def test_ip_hash_matches_nginx(case: str) -> None:
    b = balancer("ip_hash", _nginx_group(case.endswith(" down")))
    got = "".join(pick(b, key=ip_hash_key(a)).name[-1] for a in NGINX_CLIENTS)
    assert got == NGINX_IP_HASH[case]


def test_ip_hash_uses_the_first_three_octets_and_all_of_ipv6() -> None:
    b = balancer("ip_hash", [conf(f"p{i}") for i in range(7)])
    same = {pick(b, key=ip_hash_key(f"203.0.113.{i}")).name for i in range(0, 256, 5)}
    assert len(same) == 1
    six = {pick(b, key=ip_hash_key(f"2001:db8::{i:x}")).name for i in range(200)}
    assert len(six) > 1
    assert ip_hash_key("unix:") == b""
    # Non-IP clients all hash nginx's pseudo address, so they all share one peer.
    assert len({pick(b, key=k).name for k in (b"", None, b"xx")}) == 1


# --- consistent hash ring ------------------------------------------------------------------------


def test_chash_points_per_weight_and_server_text() -> None:
    hashes, servers = chash_points([conf("10.0.0.1:80", weight=2), conf("10.0.0.2:80")])
    assert len(hashes) == 3 * 160  # crc32 collisions among 480 points are unlikely
    assert hashes == sorted(hashes)
    assert Counter(servers) == {"10.0.0.1:80": 320, "10.0.0.2:80": 160}
    # Addresses of one server line share its points.
    same, _ = chash_points(
        [conf("10.0.0.1:80", server="db:80"), conf("10.0.0.2:80", server="db:80")]
    )
    assert len(same) == 160


def test_chash_balances_between_addresses_of_one_server() -> None:
    group = [
        conf("10.0.0.1:80", server="db:80"),
        conf("10.0.0.2:80", server="db:80"),
        conf("10.0.0.3:80", server="cache:80"),
    ]
    b = balancer("hash consistent", group)
    key = next(k for k in (str(i).encode() for i in range(100)) if pick(b, key=k).index < 2)
    assert {pick(b, key=key).name for _ in range(4)} == {"10.0.0.1:80", "10.0.0.2:80"}


def _owners(servers: Sequence[str], keys: Sequence[bytes]) -> dict[bytes, str]:
    b = balancer("hash consistent", [conf(s) for s in servers])
    return {k: pick(b, key=k).name for k in keys}


def test_chash_adding_a_server_moves_about_one_nth_of_keys() -> None:
    keys = [f"user:{i}".encode() for i in range(4000)]
    servers = [f"10.0.0.{i}:11211" for i in range(1, 8)]
    before = _owners(servers, keys)
    after = _owners([*servers, "10.0.0.8:11211"], keys)
    moved = [k for k in keys if before[k] != after[k]]
    # Only keys the new server takes over move, and it takes about 1/N of them.
    assert all(after[k] == "10.0.0.8:11211" for k in moved)
    assert len(moved) / len(keys) <= 1.5 / 8


def test_chash_removing_a_server_moves_only_its_keys() -> None:
    keys = [f"user:{i}".encode() for i in range(4000)]
    servers = [f"10.0.0.{i}:11211" for i in range(1, 9)]
    gone = "10.0.0.3:11211"
    before = _owners(servers, keys)
    after = _owners([s for s in servers if s != gone], keys)
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == gone}


# --- passive health: max_fails / fail_timeout ----------------------------------------------------


def test_peer_failing_max_fails_times_is_skipped_until_fail_timeout() -> None:
    b = balancer("round_robin", [conf("a", max_fails=2, fail_timeout=10), conf("b"), conf("c")])
    a = b.peers[0]
    fail(b, a, now=100)
    assert a.live(100)  # one failure of two allowed
    fail(b, a, now=100)
    assert not a.live(100)
    assert a.disabled_by_fails
    for t in range(100, 111):
        assert pick(b, now=t).name != "a"
    assert a.live(110.5)
    # After fail_timeout one request probes it; a success puts it back for good.
    names = [pick(b, now=111).name for _ in range(3)]
    assert "a" in names
    assert a.fails == 0
    assert "a" in {pick(b, now=112).name for _ in range(3)}


def test_probe_in_flight_keeps_others_out_and_its_failure_restarts_the_timeout() -> None:
    b = balancer("round_robin", [conf("a", fail_timeout=10), conf("b")])
    a = b.peers[0]
    fail(b, a, now=0)
    probe, probe_ctx = take(b, a, now=20)
    assert probe is a
    # While the probe is out, `checked` is now, so `a` is skipped again.
    assert {pick(b, now=21).name for _ in range(4)} == {"b"}
    b.free(a, probe_ctx, failed=True)
    assert a.fails == 2
    assert not a.live(29)
    assert a.live(30.5)


def test_a_success_before_the_probe_does_not_clear_fails() -> None:
    # nginx clears `fails` only on success after a probe (accessed < checked), so failures
    # below max_fails add up across windows.
    b = balancer("round_robin", [conf("a", max_fails=2, fail_timeout=10), conf("b")])
    a = b.peers[0]
    fail(b, a, now=0)
    got, ctx = take(b, a, now=5)
    assert got is a
    b.free(a, ctx, failed=False)
    assert a.fails == 1
    fail(b, a, now=50)  # the pick at 50 is a probe, but it failed
    assert not a.live(55)


def test_max_fails_zero_disables_accounting() -> None:
    b = balancer("round_robin", [conf("a", max_fails=0), conf("b", max_fails=0)])
    for _ in range(5):
        fail(b, b.peers[0], now=0)
    assert b.peers[0].live(0)
    assert "".join(pick(b).name for _ in range(4)) == "abab"


def test_failure_lowers_effective_weight_and_picks_win_it_back() -> None:
    b = balancer("round_robin", [conf("a", weight=6, max_fails=3), conf("b", weight=6)])
    a = b.peers[0]
    fail(b, a, now=0)
    assert a.effective_weight == 4  # 6 - 6 // 3
    fail(b, a, now=0)
    assert a.effective_weight == 3  # the get() gave one back before the failure took two
    pick(b, now=0)
    assert a.effective_weight == 4
    for _ in range(3):
        pick(b, now=0)
    assert a.effective_weight == 6  # and no further


def test_single_peer_is_never_disabled() -> None:
    # nginx's peers->single: a lone server takes no failure accounting and gets no retry.
    b = balancer("round_robin", [conf("only", max_fails=1)])
    for t in range(3):
        ctx = b.start(t)
        assert ctx.tries == 1
        peer = b.get(ctx)
        assert peer is not None
        b.free(peer, ctx, failed=True)
        assert ctx.tries == 0
        assert peer.fails == 0
        assert peer.conns == 0


@pytest.mark.parametrize("method", METHODS)
def test_all_peers_failed_means_no_live_upstreams(method: str) -> None:
    b = balancer(method, [conf(f"p{i}", weight=i + 1) for i in range(3)])
    for peer in b.peers:
        fail(b, peer, now=0)
    ctx = b.start(1, key_for(method, 1))
    assert b.get(ctx) is None
    assert all(p.conns == 0 for p in b.peers)
    assert b.get(b.start(11, key_for(method, 1))) is not None  # fail_timeout is over


@pytest.mark.parametrize("method", METHODS)
def test_down_is_never_picked(method: str) -> None:
    b = balancer(method, [conf("a"), conf("b", down=True, weight=5), conf("c")])
    assert all(pick(b, key=key_for(method, i)).name != "b" for i in range(300))
    lone = balancer(method, [conf("a", down=True)])
    assert lone.get(lone.start(0, b"k")) is None


@pytest.mark.parametrize("method", METHODS)
def test_unhealthy_is_skipped_like_down(method: str) -> None:
    b = balancer(method, [conf("a"), conf("b"), conf("c")])
    b.peers[1].unhealthy = True
    assert all(pick(b, key=key_for(method, i)).name != "b" for i in range(300))
    assert not b.peers[1].live(0)


@pytest.mark.parametrize("method", METHODS)
def test_max_conns_is_respected(method: str) -> None:
    b = balancer(method, [conf("a", max_conns=2), conf("b", max_conns=1), conf("c", weight=3)])
    held = []
    for i in range(60):
        ctx = b.start(0, key_for(method, i))
        peer = b.get(ctx)
        assert peer is not None
        held.append((peer, ctx))
    counts = Counter(p.name for p, _ in held)
    assert counts["a"] <= 2 and counts["b"] <= 1
    assert [p.conns for p in b.peers] == [counts["a"], counts["b"], counts["c"]]
    for peer, ctx in held:
        b.free(peer, ctx, failed=False)
    assert [p.conns for p in b.peers] == [0, 0, 0]
    lone = balancer(method, [conf("a", max_conns=1)])
    first = lone.get(lone.start(0, b"k"))
    assert first is not None
    assert lone.get(lone.start(0, b"k")) is None


# --- retries within one request (proxy_next_upstream) -------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_retries_never_return_a_tried_peer(method: str) -> None:
    # max_fails=0 so that only `tried` keeps a failed peer out of the same request.
    b = balancer(method, [conf(f"p{i}", weight=i + 1, max_fails=0) for i in range(5)])
    for i in range(20):
        ctx = b.start(0, key_for(method, i))
        assert ctx.tries == 5
        seen: list[int] = []
        while ctx.tries:
            peer = b.get(ctx)
            assert peer is not None
            assert peer.index not in seen
            seen.append(peer.index)
            b.free(peer, ctx, failed=True)
        assert sorted(seen) == [0, 1, 2, 3, 4]
        assert b.get(ctx) is None  # everything tried


@pytest.mark.parametrize("method", WITH_BACKUP)
def test_backups_only_when_all_primaries_are_unavailable(method: str) -> None:
    b = balancer(
        method,
        [conf("a"), conf("b")],
        [conf("x", backup=True), conf("y", backup=True, weight=3)],
    )
    assert {pick(b, now=0).name for _ in range(50)} == {"a", "b"}
    fail(b, b.peers[0], now=1)
    assert {pick(b, now=1).name for _ in range(10)} == {"b"}
    fail(b, b.peers[1], now=1)
    assert "".join(pick(b, now=2).name for _ in range(8)) == "yxyyyxyy"
    # Once the primaries come back (fail_timeout), the backups are idle again.
    assert {pick(b, now=20).name for _ in range(10)} == {"a", "b"}


@pytest.mark.parametrize("method", WITH_BACKUP)
def test_a_request_moves_on_to_backups_after_the_primaries(method: str) -> None:
    b = balancer(method, [conf("a"), conf("b")], [conf("x", backup=True)])
    ctx = b.start(0)
    assert ctx.tries == 3  # primaries plus backups, as nginx counts them
    order = []
    while (peer := b.get(ctx)) is not None:
        order.append(peer.name)
        b.free(peer, ctx, failed=True)
    assert order in (["a", "b", "x"], ["b", "a", "x"])
    assert ctx.backup and ctx.tries == 0


@pytest.mark.parametrize("method", ["hash", "ip_hash", "random", "random two", "hash consistent"])
def test_methods_without_backup_reject_backups(method: str) -> None:
    with pytest.raises(BalancerError, match="backup"):
        make_balancer(method, [conf("a")], [conf("b", backup=True)])


# --- hash stickiness ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", [*KEYED, "ip_hash"])
def test_a_key_sticks_to_its_peer_and_moves_only_while_it_is_down(method: str) -> None:
    b = balancer(method, [conf(f"p{i}", fail_timeout=10) for i in range(5)])
    key = key_for(method, 42)
    home = pick(b, key=key)
    assert {pick(b, key=key).name for _ in range(20)} == {home.name}
    fail(b, home, now=100)
    moved = {pick(b, now=101, key=key).name for _ in range(20)}
    assert len(moved) == 1 and home.name not in moved
    # After fail_timeout the next request probes the home peer, succeeds, and stays there.
    assert pick(b, now=111, key=key) is home
    assert {pick(b, now=112, key=key).name for _ in range(5)} == {home.name}


@pytest.mark.parametrize("method", KEYED)
def test_hash_without_a_key_is_round_robin(method: str) -> None:
    b = balancer(method, [conf("a"), conf("b", weight=2)])
    assert "".join(pick(b, key=None).name for _ in range(6)) == "babbab"


# --- construction ------------------------------------------------------------------------------


def test_make_balancer_methods_and_arguments() -> None:
    group = [conf("a"), conf("b")]
    for method in METHODS:
        assert isinstance(make_balancer(method, group), RoundRobin)
    assert type(make_balancer("hash", group, consistent=True)).__name__ == "ConsistentHash"
    assert type(make_balancer("random", group, two=True)).__name__ == "RandomTwo"
    assert type(make_balancer("", group)).__name__ == "RoundRobin"
    with pytest.raises(BalancerError, match='unknown load balancing method "sticky"'):
        make_balancer("sticky", group)
    with pytest.raises(BalancerError, match='invalid parameter "foo"'):
        make_balancer("random two foo", group)
    with pytest.raises(BalancerError, match='invalid parameter "consistent"'):
        make_balancer("least_conn consistent", group)
    with pytest.raises(BalancerError, match="no servers in upstream"):
        make_balancer("round_robin", [], [conf("x", backup=True)])
    with pytest.raises(BalancerError):
        make_balancer("round_robin", [conf("a", backup=True)])
    with pytest.raises(BalancerError):
        make_balancer("round_robin", group, [conf("x")])


def test_peer_conf_defaults_and_checks() -> None:
    c = PeerConf("127.0.0.1:10025")
    assert (c.weight, c.max_conns, c.max_fails, c.fail_timeout) == (1, 0, 1, 10.0)
    assert c.server == "127.0.0.1:10025"
    assert PeerConf("10.0.0.1:80", server="app:80").server == "app:80"
    with pytest.raises(ValueError):
        PeerConf("a", weight=0)
    with pytest.raises(ValueError):
        PeerConf("a", max_fails=-1)


def test_peers_are_primaries_then_backups() -> None:
    b = balancer("round_robin", [conf("a"), conf("b")], [conf("x", backup=True)])
    assert [(p.index, p.name) for p in b.peers] == [(0, "a"), (1, "b"), (2, "x")]
    assert b.primary == b.peers[:2] and b.backup == b.peers[2:]
