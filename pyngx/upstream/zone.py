"""`zone`: upstream peer state in memory shared by all workers, as nginx keeps it.

Without a zone each worker balances on its own (nginx does the same). With one, the master
allocates an anonymous shared mapping when the configuration is loaded; the forked workers
inherit it, and every peer's counters (weights, conns, fails, timestamps, health) live there,
so a failure seen by one worker, or an active health check, steers all of them. get() and
free() run under one lock per group, as nginx locks the zone (ngx_*_upstream_rr_peers_wlock).

`server ... resolve` lines change their addresses at run time, but the mapping cannot grow
after the fork, so the zone reserves RESOLVE_SLOTS peers per such line when the configuration
is loaded: an address gets one of its line's slots, found by a key (a hash of the address)
kept in the zone too, so that every worker resolving the same address shares its counters.
A slot counts the workers listing its address (`refs`) and is reused once no worker lists it
and no connection holds it (`conns` 0). Beyond RESOLVE_SLOTS addresses a line ignores the rest.
"""

from __future__ import annotations

import mmap
import multiprocessing
from collections.abc import Callable
from typing import Any

from pyngx.upstream.balancers import Balancer, PickContext
from pyngx.upstream.peers import Peer, PeerConf

# The runtime fields of Peer, each one float64 cell (exact for integers below 2**53).
FIELDS: tuple[tuple[str, Callable[[float], Any]], ...] = (
    ("current_weight", int),
    ("effective_weight", int),
    ("conns", int),
    ("fails", int),
    ("accessed", float),
    ("checked", float),
    ("unhealthy", bool),
)
CELL = 8
# Peers reserved per `server ... resolve` line: the most addresses one name may bring.
RESOLVE_SLOTS = 32
# Per reserved slot, after the peer cells: the address key and the number of workers using it.
_META = 2


class SharedPeer(Peer):
    """A Peer whose runtime fields are cells of the zone's shared mapping."""

    __slots__ = ("_cells", "_base")

    def __init__(
        self,
        conf: PeerConf,
        index: int,
        cells: memoryview,
        slot: int | None = None,
        *,
        keep: bool = False,
    ) -> None:
        # `slot` is where the counters live; it defaults to the index, but a group whose
        # peers change at run time (resolve) keeps an address in one slot while its index
        # moves, so that the old and the new balancer share the counters.
        self._cells = cells
        self._base = (index if slot is None else slot) * len(FIELDS)
        if keep:
            # A new Peer object over counters that are already live (an address that stayed
            # across a re-resolution): Peer.__init__ would reset them.
            self.conf = conf
            self.index = index
        else:
            Peer.__init__(self, conf, index)


def _cell(offset: int, cast: Callable[[float], Any]) -> property:
    def get(self: SharedPeer) -> Any:
        return cast(self._cells[self._base + offset])

    def put(self: SharedPeer, value: Any) -> None:
        self._cells[self._base + offset] = float(value)

    return property(get, put)


for _i, (_name, _cast) in enumerate(FIELDS):
    setattr(SharedPeer, _name, _cell(_i, _cast))


class Zone:
    """One `zone name [size]`: the shared cells for `npeers` peers and the group's lock."""

    def __init__(self, name: str, npeers: int, resolve_lines: int = 0) -> None:
        self.name = name
        self.npeers = npeers
        self.resolve_lines = resolve_lines
        reserved = resolve_lines * RESOLVE_SLOTS
        self._meta_base = (npeers + reserved) * len(FIELDS)
        size = self._meta_base + reserved * _META
        self._map = mmap.mmap(-1, max(1, size) * CELL)
        self.cells = memoryview(self._map).cast("d")
        self.lock = multiprocessing.Lock()

    def new_peer(self, conf: PeerConf, index: int) -> Peer:
        return SharedPeer(conf, index, self.cells)

    def acquire(self, line: int, key: int, weight: int) -> int | None:
        """The slot of the address `key` (1 <= key < 2**53) of resolvable line `line`,
        taking a free one if no worker has it (its counters start as a new Peer's: zero,
        and `weight` as the effective weight); None when all RESOLVE_SLOTS are taken.
        Call with the lock held."""
        cells = self.cells
        first = line * RESOLVE_SLOTS
        free = None
        for k in range(first, first + RESOLVE_SLOTS):
            m = self._meta_base + k * _META
            if cells[m] == key:
                cells[m + 1] += 1
                return self.npeers + k
            if free is None and (
                cells[m] == 0 or (cells[m + 1] <= 0 and self._conns(self.npeers + k) <= 0)
            ):
                free = k
        if free is None:
            return None
        m = self._meta_base + free * _META
        cells[m], cells[m + 1] = float(key), 1.0
        base = (self.npeers + free) * len(FIELDS)
        for i in range(len(FIELDS)):
            cells[base + i] = 0.0
        cells[base + 1] = float(weight)  # FIELDS[1] is effective_weight
        return self.npeers + free

    def release(self, slot: int) -> None:
        """This worker no longer lists the address in `slot`. Call with the lock held."""
        m = self._meta_base + (slot - self.npeers) * _META
        self.cells[m + 1] = max(0.0, self.cells[m + 1] - 1)

    def _conns(self, slot: int) -> float:
        return self.cells[slot * len(FIELDS) + 2]  # FIELDS[2] is conns


class ZonedBalancer:
    """A balancer over shared peers: get() and free() hold the zone's lock."""

    __slots__ = ("inner", "lock")

    def __init__(self, inner: Balancer, zone: Zone) -> None:
        self.inner = inner
        self.lock = zone.lock

    @property
    def peers(self) -> tuple[Peer, ...]:
        return self.inner.peers

    def start(self, now: float, key: bytes | None = None) -> PickContext:
        with self.lock:
            return self.inner.start(now, key)

    def get(self, ctx: PickContext) -> Peer | None:
        with self.lock:
            return self.inner.get(ctx)

    def free(self, peer: Peer, ctx: PickContext, *, failed: bool) -> None:
        with self.lock:
            self.inner.free(peer, ctx, failed=failed)
