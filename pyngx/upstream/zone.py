"""`zone`: upstream peer state in memory shared by all workers, as nginx keeps it.

Without a zone each worker balances on its own (nginx does the same). With one, the master
allocates an anonymous shared mapping when the configuration is loaded; the forked workers
inherit it, and every peer's counters (weights, conns, fails, timestamps, health) live there,
so a failure seen by one worker, or an active health check, steers all of them. get() and
free() run under one lock per group, as nginx locks the zone (ngx_*_upstream_rr_peers_wlock).
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


class SharedPeer(Peer):
    """A Peer whose runtime fields are cells of the zone's shared mapping."""

    __slots__ = ("_cells", "_base")

    def __init__(self, conf: PeerConf, index: int, cells: memoryview) -> None:
        self._cells = cells
        self._base = index * len(FIELDS)
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

    def __init__(self, name: str, npeers: int) -> None:
        self.name = name
        self._map = mmap.mmap(-1, max(1, npeers * len(FIELDS)) * CELL)
        self.cells = memoryview(self._map).cast("d")
        self.lock = multiprocessing.Lock()

    def new_peer(self, conf: PeerConf, index: int) -> Peer:
        return SharedPeer(conf, index, self.cells)


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
