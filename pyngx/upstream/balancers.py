"""Upstream peer selection: nginx's load balancing methods, without I/O.

A balancer is built once per upstream group (make_balancer). Each connection or request that
needs a peer calls start() for a PickContext, get() for a peer, and free() when it is done with
that peer; on a failure the caller may get() again with the same context (proxy_next_upstream)
while `ctx.tries` is not zero. get() returning None is nginx's NGX_BUSY: "no live upstreams".
"""

# Design notes
# ------------
# * The algorithms are nginx's, step for step, so that a pyngx worker sends a given client or
#   key to the same peer, in the same order, as an nginx worker would. Sources (nginx 1.2x):
#   round robin and free: ngx_stream_upstream_round_robin.c (get_round_robin_peer, get_peer,
#   free_round_robin_peer; the http copy is identical); least_conn:
#   ngx_stream_upstream_least_conn_module.c; hash and hash consistent:
#   ngx_stream_upstream_hash_module.c; random: ngx_stream_upstream_random_module.c; ip_hash:
#   ngx_http_upstream_ip_hash_module.c (http only in nginx; stream uses `hash $remote_addr`).
# * nginx walks a linked list and keeps a `tried` bitmap per group, cleared when it moves on to
#   the backup group. We index one combined tuple (primaries, then backups) and keep a set of
#   indexes; since a request never returns from the backups to the primaries, not clearing the
#   set is the same as clearing the bitmap.
# * Every per-request field of nginx's peer data structs lives in PickContext, so a balancer
#   object holds only configuration and per-worker peer state, and one balancer serves any
#   number of concurrent requests.
# * Tables nginx builds at configuration time (weight ranges, consistent hash points) are built
#   in the constructor, once.
# * Everything here is driven by the caller's `now`: no clocks, no logging, no randomness except
#   the injected random.Random.

from __future__ import annotations

import bisect
import random
import socket
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pyngx.upstream.peers import Peer, PeerConf

# Hash-based methods give up after this many rejected candidates and fall back to round robin
# (`hp->tries > 20`, `iphp->tries > 20`, `rp->tries > 20` in nginx).
MAX_HASH_TRIES = 20
# Points per unit of weight on the consistent hash ring (ngx_*_upstream_update_chash).
CHASH_POINTS_PER_WEIGHT = 160
# ip_hash's hash: starts at 89, then hash = (hash * 113 + byte) % 6271 per address byte.
IP_HASH_SEED = 89
IP_HASH_MULTIPLIER = 113
IP_HASH_MODULUS = 6271
# What ip_hash hashes for clients that are neither IPv4 nor IPv6 (unix sockets): nginx's
# ngx_http_upstream_ip_hash_pseudo_addr, three zero bytes.
IP_HASH_PSEUDO_ADDR = b"\0\0\0"


PeerFactory = Callable[[PeerConf, int], Peer]


class BalancerError(ValueError):
    """A balancer cannot be built from this configuration (nginx would refuse it at -t)."""


@dataclass(slots=True)
class PickContext:
    """Per-request selection state: nginx's ngx_peer_connection_t tries plus the peer data.

    Make one with Balancer.start(); set `now` before each get() and free() if time moved.

    Attributes:
        now: The caller's clock in seconds.
        key: The hash key (`hash`), or the client's packed address (`ip_hash`, see
            ip_hash_key()); None or empty makes `hash` fall back to round robin.
        tried: Indexes (Peer.index) already handed to this request; never handed out again.
        tries: Attempts left, as nginx's pc->tries: the number of peers, primaries plus
            backups, lowered by one per free(); 0 after any free() on a single-peer upstream.
            The caller stops retrying at 0 (and may cap it, as proxy_next_upstream_tries does).
        backup: The request has moved on to the backup group (nginx: rrp->peers = peers->next).
        hash: ip_hash's running hash, `hash`'s accumulated hash, or the consistent hash point.
        rehash: `hash`'s iteration counter, hashed in front of the key after the first round.
        hash_tries: Candidates rejected by a hash or random method; round robin past 20.
        primed: start() (or the first get()) has set up the method's initial hash state.
    """

    now: float
    key: bytes | None = None
    tried: set[int] = field(default_factory=set)
    tries: int = 0
    backup: bool = False
    hash: int = 0
    rehash: int = 0
    hash_tries: int = 0
    primed: bool = False


class Balancer(Protocol):
    """What the stream and http proxies need from a load balancing method."""

    @property
    def peers(self) -> tuple[Peer, ...]:
        """All peers, primaries then backups; Peer.index is the position here."""
        ...

    def start(self, now: float, key: bytes | None = None) -> PickContext:
        """A fresh context for one request (nginx's peer.init)."""
        ...

    def get(self, ctx: PickContext) -> Peer | None:
        """The next peer to try, with its conns raised; None when no peer is available."""
        ...

    def free(self, peer: Peer, ctx: PickContext, *, failed: bool) -> None:
        """Return `peer` from get(); `failed` counts a failure against it (NGX_PEER_FAILED)."""
        ...


def ip_hash_key(host: str | None) -> bytes:
    """The PickContext.key ip_hash expects for a client address text (`$remote_addr`).

    The packed address: 4 bytes for IPv4, 16 for IPv6, empty for anything else (unix sockets),
    for which ip_hash uses nginx's pseudo address.
    """
    if host:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                return socket.inet_pton(family, host)
            except OSError:
                continue
    return b""


def _crc32(data: bytes, start: int = 0) -> int:
    # nginx's ngx_crc32_* is the IEEE CRC-32 zlib computes; chaining `start` is crc32_update.
    return zlib.crc32(data, start) & 0xFFFFFFFF


def _checked_after_pick(peer: Peer, now: float) -> None:
    # A pick made once fail_timeout has passed since the last failure (or the last such pick)
    # is the probe: moving `checked` past `accessed` lets a success clear `fails`, and keeps
    # the peer out of further picks until then, since `now - checked` restarts at zero.
    if now - peer.checked > peer.conf.fail_timeout:
        peer.checked = now


def _smooth_pick(peers: Iterable[Peer], ctx: PickContext) -> Peer | None:
    """Smooth weighted round robin over the usable, untried `peers` (ngx_*_upstream_get_peer).

    Each candidate gains its effective weight; the highest score wins (the first on ties) and
    pays back the sum of all candidates' effective weights. Does not mark or count the winner.
    """
    now = ctx.now
    tried = ctx.tried
    best: Peer | None = None
    total = 0
    for peer in peers:
        if peer.index in tried or not peer.usable(now):
            continue
        peer.current_weight += peer.effective_weight
        total += peer.effective_weight
        # Failures lowered effective_weight; each consideration wins one unit back.
        if peer.effective_weight < peer.conf.weight:
            peer.effective_weight += 1
        if best is None or peer.current_weight > best.current_weight:
            best = peer
    if best is not None:
        best.current_weight -= total
    return best


class _Getter(Protocol):
    # A get() to run again on the backup group (round robin's or least_conn's own).
    def __call__(self, ctx: PickContext, /) -> Peer | None: ...


class RoundRobin:
    """nginx's default method: smooth weighted round robin, with backups and passive health.

    The other methods derive from it for its bookkeeping (start, free, the backup switch) and
    fall back to its get() as nginx's modules do.
    """

    method = "round_robin"
    # Whether the method accepts `backup` servers (NGX_*_UPSTREAM_BACKUP in its flags).
    supports_backup = True

    def __init__(
        self,
        primary: Sequence[PeerConf],
        backup: Sequence[PeerConf] = (),
        *,
        new_peer: PeerFactory = Peer,
    ) -> None:
        if not primary:
            raise BalancerError("no servers in upstream")
        if backup and not self.supports_backup:
            # nginx's words, from the `server` directive when the method came first.
            raise BalancerError('balancing method does not support parameter "backup"')
        for conf in primary:
            if conf.backup:
                raise BalancerError(f'"{conf.name}" is a backup server in the primary list')
        for conf in backup:
            if not conf.backup:
                raise BalancerError(f'"{conf.name}" in the backup list is not marked backup')
        confs = [*primary, *backup]
        # `new_peer` lets a `zone` keep the peers' state in memory shared by the workers.
        self._peers = tuple(new_peer(conf, i) for i, conf in enumerate(confs))
        self.primary: tuple[Peer, ...] = self._peers[: len(primary)]
        self.backup: tuple[Peer, ...] = self._peers[len(primary) :]
        # nginx's peers->single: one primary and no backups. Such a peer is never marked
        # failed and never checked for max_fails: there is nothing else to send traffic to.
        self.single = len(self.primary) == 1 and not self.backup
        # peers->total_weight counts down peers too: the hash methods map keys onto it.
        self.total_weight = sum(p.conf.weight for p in self.primary)
        # Start of each primary's slice of [0, total_weight), for the hash and random methods'
        # walk "while (w >= peer->weight) w -= peer->weight".
        self._range_starts: list[int] = []
        start = 0
        for peer in self.primary:
            self._range_starts.append(start)
            start += peer.conf.weight
        # A method with its own _prime (the hash methods): start() calls it.
        self._primes = type(self)._prime is not RoundRobin._prime

    @property
    def peers(self) -> tuple[Peer, ...]:
        return self._peers

    def start(self, now: float, key: bytes | None = None) -> PickContext:
        # nginx: pc->tries = peers->number + peers->next->number. (Positional: a dataclass
        # __init__ called with keywords costs more, once per request.)
        ctx = PickContext(now, key, set(), len(self._peers))
        if self._primes:
            self._prime(ctx)
        else:
            ctx.primed = True
        return ctx

    def _prime(self, ctx: PickContext) -> None:
        ctx.primed = True

    def _get_rr(self, ctx: PickContext) -> Peer | None:
        """ngx_*_upstream_get_round_robin_peer."""
        if self.single:
            peer = self.primary[0]
            conf = peer.conf
            # Neither max_fails nor `tried` applies to a lone peer; down and max_conns do.
            if conf.down or peer.unhealthy or (conf.max_conns and peer.conns >= conf.max_conns):
                return None
            peer.conns += 1
            return peer
        group = self.backup if ctx.backup else self.primary
        peer = _smooth_pick(group, ctx)
        if peer is None:
            return self._next_group(ctx, self._get_rr)
        return self._take(peer, ctx)

    # Round robin's get is _get_rr itself (one call less per request); the other methods
    # define their own get and fall back to _get_rr.
    get = _get_rr

    def _next_group(self, ctx: PickContext, again: _Getter) -> Peer | None:
        # The "failed:" label: with primaries exhausted, the rest of this request uses the
        # backups, chosen by the same method.
        if ctx.backup or not self.backup:
            return None
        ctx.backup = True
        return again(ctx)

    @staticmethod
    def _take(peer: Peer, ctx: PickContext) -> Peer:
        _checked_after_pick(peer, ctx.now)
        ctx.tried.add(peer.index)
        peer.conns += 1
        return peer

    def _peer_at_weight(self, w: int) -> Peer:
        # The primary whose weight slice holds w, 0 <= w < total_weight.
        return self.primary[bisect.bisect_right(self._range_starts, w) - 1]

    def free(self, peer: Peer, ctx: PickContext, *, failed: bool) -> None:
        """ngx_*_upstream_free_round_robin_peer."""
        if self.single:
            peer.conns -= 1
            ctx.tries = 0
            return
        conf = peer.conf
        if failed:
            now = ctx.now
            peer.fails += 1
            peer.accessed = now
            peer.checked = now
            if conf.max_fails:
                # Integer division as nginx's ngx_int_t: with weight < max_fails a failure
                # costs nothing here, and only the fails count takes the peer out.
                peer.effective_weight -= conf.weight // conf.max_fails
            peer.effective_weight = max(peer.effective_weight, 0)
        elif peer.accessed < peer.checked:
            # The peer was picked after fail_timeout (the probe) and answered: live again.
            peer.fails = 0
        peer.conns -= 1
        if ctx.tries:
            ctx.tries -= 1


class LeastConn(RoundRobin):
    """`least_conn`: fewest conns per weight; ties go to smooth weighted round robin."""

    method = "least_conn"

    def get(self, ctx: PickContext) -> Peer | None:
        if self.single:
            return self._get_rr(ctx)
        now = ctx.now
        tried = ctx.tried
        group = self.backup if ctx.backup else self.primary
        best: Peer | None = None
        first = 0
        many = False
        for i, peer in enumerate(group):
            if peer.index in tried or not peer.usable(now):
                continue
            # conns/weight compared by cross-multiplying, as nginx does, to stay in integers.
            if best is None or peer.conns * best.conf.weight < best.conns * peer.conf.weight:
                best, first, many = peer, i, False
            elif peer.conns * best.conf.weight == best.conns * peer.conf.weight:
                many = True
        if best is None:
            return self._next_group(ctx, self.get)
        if many:
            # Round robin among the tied peers, starting from the first of them: the earlier
            # ones all had more conns per weight.
            lead = best
            tied = (
                p for p in group[first:] if p.conns * lead.conf.weight == lead.conns * p.conf.weight
            )
            picked = _smooth_pick(tied, ctx)
            assert picked is not None  # `lead` itself is among the candidates
            best = picked
        return self._take(best, ctx)


class Hash(RoundRobin):
    """`hash KEY`: crc32-based, compatible with Cache::Memcached; round robin after 20 misses."""

    method = "hash"
    supports_backup = False

    def get(self, ctx: PickContext) -> Peer | None:
        key = ctx.key
        if ctx.hash_tries > MAX_HASH_TRIES or len(self.primary) < 2 or not key:
            return self._get_rr(ctx)
        now = ctx.now
        tried = ctx.tried
        while True:
            # ((crc32([REHASH] KEY) >> 16) & 0x7fff) + PREV_HASH, REHASH omitted at first.
            prefix = str(ctx.rehash).encode() if ctx.rehash else b""
            step = (_crc32(prefix + key) >> 16) & 0x7FFF
            ctx.hash = (ctx.hash + step) & 0xFFFFFFFF
            ctx.rehash += 1
            peer = self._peer_at_weight(ctx.hash % self.total_weight)
            if peer.index not in tried and peer.usable(now):
                return self._take(peer, ctx)
            ctx.hash_tries += 1
            if ctx.hash_tries > MAX_HASH_TRIES:
                return self._get_rr(ctx)


def _split_server(server: str) -> tuple[bytes, bytes]:
    """Host and port of a server text, split as ngx_*_upstream_update_chash does.

    `unix:PATH` hashes PATH with no port; otherwise a trailing `:DIGITS` is the port
    (`[::1]:80` gives `[::1]` and `80`) and anything else is all host.
    """
    raw = server.encode()
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    head, sep, tail = raw.rpartition(b":")
    if sep and tail.isdigit():
        return head, tail
    if sep and not tail:
        # "host:" — nginx's scan meets ':' before any non-digit: host plus an empty port.
        return head, b""
    return raw, b""


def chash_points(primary: Sequence[PeerConf]) -> tuple[list[int], list[str]]:
    """The consistent hash ring: sorted point hashes and the server text of each point.

    Per peer, weight * 160 points: crc32(HOST "\\0" PORT PREV_HASH), PREV_HASH being the
    previous point's hash as 4 little-endian bytes, 0 for the first (Cache::Memcached::Fast).
    Peers sharing a server text yield the same points; duplicates are dropped.
    """
    points: list[tuple[int, str]] = []
    for conf in primary:
        host, port = _split_server(conf.server)
        base = _crc32(host + b"\0" + port)
        prev = 0
        for _ in range(conf.weight * CHASH_POINTS_PER_WEIGHT):
            prev = _crc32(prev.to_bytes(4, "little"), base)
            points.append((prev, conf.server))
    # Stable sort, then keep the first of equal hashes (nginx's qsort leaves that order open).
    points.sort(key=lambda point: point[0])
    hashes: list[int] = []
    servers: list[str] = []
    for point_hash, server in points:
        if hashes and hashes[-1] == point_hash:
            continue
        hashes.append(point_hash)
        servers.append(server)
    return hashes, servers


class ConsistentHash(RoundRobin):
    """`hash KEY consistent`: ketama-style ring of 160 points per unit of weight."""

    method = "hash consistent"
    supports_backup = False

    def __init__(
        self,
        primary: Sequence[PeerConf],
        backup: Sequence[PeerConf] = (),
        *,
        new_peer: PeerFactory = Peer,
    ) -> None:
        super().__init__(primary, backup, new_peer=new_peer)
        self._point_hashes, self._point_servers = chash_points(primary)
        # nginx scans all peers for those whose server text matches the point's; grouping them
        # once gives the same candidates in the same order.
        self._by_server: dict[str, list[Peer]] = {}
        for peer in self.primary:
            self._by_server.setdefault(peer.conf.server, []).append(peer)

    def _prime(self, ctx: PickContext) -> None:
        # ngx_*_upstream_init_chash_peer: start at the first point >= crc32(key) (one past the
        # last point wraps to the first, by the modulo in get()).
        ctx.primed = True
        ctx.hash = bisect.bisect_left(self._point_hashes, _crc32(ctx.key or b""))

    def get(self, ctx: PickContext) -> Peer | None:
        if not ctx.primed:
            self._prime(ctx)
        if ctx.hash_tries > MAX_HASH_TRIES or self.single or not ctx.key:
            return self._get_rr(ctx)
        hashes_count = len(self._point_hashes)
        while True:
            server = self._point_servers[ctx.hash % hashes_count]
            best = _smooth_pick(self._by_server[server], ctx)
            if best is not None:
                return self._take(best, ctx)
            # Walk on to the next point (clockwise on the ring).
            ctx.hash += 1
            ctx.hash_tries += 1
            if ctx.hash_tries > MAX_HASH_TRIES:
                return self._get_rr(ctx)


class IpHash(RoundRobin):
    """`ip_hash`: the first three octets of an IPv4 client, or all of an IPv6 one."""

    method = "ip_hash"
    supports_backup = False

    def _prime(self, ctx: PickContext) -> None:
        ctx.primed = True
        ctx.hash = IP_HASH_SEED

    def get(self, ctx: PickContext) -> Peer | None:
        if not ctx.primed:
            self._prime(ctx)
        if ctx.hash_tries > MAX_HASH_TRIES or self.single:
            return self._get_rr(ctx)
        key = ctx.key or b""
        if len(key) == 4:
            addr = key[:3]  # clients of one /24 stick together
        elif len(key) == 16:
            addr = key
        else:
            addr = IP_HASH_PSEUDO_ADDR
        now = ctx.now
        tried = ctx.tried
        hash_ = ctx.hash
        while True:
            for byte in addr:
                hash_ = (hash_ * IP_HASH_MULTIPLIER + byte) % IP_HASH_MODULUS
            peer = self._peer_at_weight(hash_ % self.total_weight)
            if peer.index not in tried and peer.usable(now):
                # Only a success stores the hash: a retry continues from the peer it found.
                ctx.hash = hash_
                return self._take(peer, ctx)
            ctx.hash_tries += 1
            if ctx.hash_tries > MAX_HASH_TRIES:
                return self._get_rr(ctx)


class Random(RoundRobin):
    """`random`: a peer drawn with probability proportional to its weight."""

    method = "random"
    supports_backup = False

    def __init__(
        self,
        primary: Sequence[PeerConf],
        backup: Sequence[PeerConf] = (),
        *,
        rng: random.Random | None = None,
        new_peer: PeerFactory = Peer,
    ) -> None:
        super().__init__(primary, backup, new_peer=new_peer)
        self._rng = rng if rng is not None else random.Random()

    def _peek(self) -> Peer:
        # ngx_*_upstream_peek_random_peer: x = ngx_random() % total_weight, then its range.
        return self._peer_at_weight(self._rng.randrange(self.total_weight))

    def get(self, ctx: PickContext) -> Peer | None:
        if ctx.hash_tries > MAX_HASH_TRIES or len(self.primary) < 2:
            return self._get_rr(ctx)
        now = ctx.now
        tried = ctx.tried
        while True:
            peer = self._peek()
            if peer.index not in tried and peer.usable(now):
                return self._take(peer, ctx)
            ctx.hash_tries += 1
            if ctx.hash_tries > MAX_HASH_TRIES:
                return self._get_rr(ctx)


class RandomTwo(Random):
    """`random two [least_conn]`: two distinct random peers, the one with fewer conns/weight."""

    method = "random two"

    def get(self, ctx: PickContext) -> Peer | None:
        if ctx.hash_tries > MAX_HASH_TRIES or len(self.primary) < 2:
            return self._get_rr(ctx)
        now = ctx.now
        tried = ctx.tried
        prev: Peer | None = None
        while True:
            peer = self._peek()
            if peer is not prev and peer.index not in tried and peer.usable(now):
                if prev is not None:
                    # The second draw wins ties; the first wins only with strictly fewer.
                    if peer.conns * prev.conf.weight > prev.conns * peer.conf.weight:
                        peer = prev
                    return self._take(peer, ctx)
                prev = peer
            # In nginx the first accepted draw also counts as a try.
            ctx.hash_tries += 1
            if ctx.hash_tries > MAX_HASH_TRIES:
                return self._get_rr(ctx)


METHODS = (
    "round_robin",
    "least_conn",
    "hash",
    "hash consistent",
    "ip_hash",
    "random",
    "random two",
    "random two least_conn",
)


def make_balancer(
    method: str,
    primary: Sequence[PeerConf],
    backup: Sequence[PeerConf] = (),
    *,
    rng: random.Random | None = None,
    consistent: bool = False,
    two: bool = False,
    new_peer: PeerFactory = Peer,
) -> Balancer:
    """Build the balancer for an upstream group.

    Args:
        method: The directive and its arguments as one string: `round_robin` (no directive),
            `least_conn`, `hash` or `hash consistent`, `ip_hash`, `random`, `random two`,
            `random two least_conn`.
        primary: The non-backup peers in configuration order (one per resolved address).
        backup: The `backup` peers; only round_robin and least_conn accept them, as in nginx.
        rng: Randomness for `random`; tests inject a seeded random.Random.
        consistent: Same as the `consistent` argument of `hash`.
        two: Same as the `two` argument of `random`.
        new_peer: Builds each Peer; a `zone` passes one that keeps state in shared memory.

    Raises:
        BalancerError: unknown method or argument, no primary peers, or backups where the
            method does not allow them.
    """
    name, *args = method.split() or ["round_robin"]
    # The arguments each directive takes, in order (ngx_*_upstream_hash, _random).
    allowed = {"hash": ["consistent"], "random": ["two", "least_conn"]}.get(name, [])
    for i, arg in enumerate(args):
        if i >= len(allowed) or arg != allowed[i]:
            raise BalancerError(f'invalid parameter "{arg}"')
    if name == "round_robin":
        return RoundRobin(primary, backup, new_peer=new_peer)
    if name == "least_conn":
        return LeastConn(primary, backup, new_peer=new_peer)
    if name == "ip_hash":
        return IpHash(primary, backup, new_peer=new_peer)
    if name == "hash":
        if consistent or args:
            return ConsistentHash(primary, backup, new_peer=new_peer)
        return Hash(primary, backup, new_peer=new_peer)
    if name == "random":
        if two or args:
            return RandomTwo(primary, backup, rng=rng, new_peer=new_peer)
        return Random(primary, backup, rng=rng, new_peer=new_peer)
    raise BalancerError(f'unknown load balancing method "{name}"')
