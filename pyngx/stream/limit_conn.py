"""`limit_conn_zone`, `limit_conn`, `limit_conn_log_level`, `limit_conn_dry_run` (stream).

nginx counts connections per key in a shared-memory red-black tree allocated from a slab pool,
so that every worker sees the same counters. Here a zone is an anonymous shared mapping made
when the configuration is loaded (in the master, before the workers fork, as
pyngx/upstream/zone.py does), holding a fixed-size open-addressing hash table guarded by one
multiprocessing.Lock:

    header:  used (uint64)
    slots:   digest (16 bytes: blake2b of the key) | conns (uint32) | pad (4)

A slot with conns 0 is empty: an entry is removed as soon as its last connection ends (as
nginx frees the node), with backward-shift deletion so that linear probing needs no
tombstones. Keys are stored as digests rather than verbatim so that every slot has one size;
two keys colliding in 128 bits is not a practical concern. The table is kept at most
MAX_LOAD full so probes stay short; a key that finds it full is refused with 503, as nginx
refuses one when ngx_slab_alloc fails, and the same `[crit]` line is logged.

Sessions remember which (zone, digest) pairs they counted, keyed by the session object, and
`release` (hooked to the end of a session) gives them back.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import re
import resource
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, TAKE2, Context, Registry
from pyngx.conf.values import parse_flag
from pyngx.conf.variables import compile_complex
from pyngx.core.log import CRIT, ERROR, INFO, NOTICE, WARN
from pyngx.stream.upstream import SHM_ZONES

STREAM, SERVER = "stream", "stream_server"
STATUS_SERVICE_UNAVAILABLE = 503
MAX_CONN = 65535  # nginx keeps the count in a u_short
MAX_KEY = 255  # nginx keeps the key length in a u_char
# nginx's log action during the (pre)access phases.
WHILE = "while initializing session"

# The owner of each shared zone name, for nginx's "already declared for a different use".
SHM_TAGS = "shm_tags"
TAG = "limit_conn"
ZONES = "limit_conn_zones"

_ZONE_SIZE = re.compile(r"(\d+)([kKmM]?)")  # ngx_parse_size in 1.22: k and m
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}
LOG_LEVELS = {"info": INFO, "notice": NOTICE, "warn": WARN, "error": ERROR}

_HEADER = struct.Struct("<Q")
_SLOT = struct.Struct("<16sI4x")
MAX_LOAD = 0.75


class Table:
    """The shared hash table of one zone; every method but `acquire`/`release` is internal.

    Callers need not lock: both public methods take the zone's lock themselves.
    """

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size)
        self.nslots = max(1, (size - _HEADER.size) // _SLOT.size)
        self.capacity = max(1, int(self.nslots * MAX_LOAD))
        self.lock = multiprocessing.Lock()

    def _home(self, digest: bytes) -> int:
        return int.from_bytes(digest[:8], "little") % self.nslots

    def _slot(self, i: int) -> tuple[bytes, int]:
        return _SLOT.unpack_from(self._map, _HEADER.size + i * _SLOT.size)  # type: ignore[return-value]

    def _put(self, i: int, digest: bytes, conns: int) -> None:
        _SLOT.pack_into(self._map, _HEADER.size + i * _SLOT.size, digest, conns)

    def _used(self) -> int:
        return int(_HEADER.unpack_from(self._map, 0)[0])

    def _find(self, digest: bytes) -> tuple[int, int]:
        """(slot index, conns): the key's slot, or the empty slot where it would go."""
        i = self._home(digest)
        while True:
            d, conns = self._slot(i)
            if conns == 0 or d == digest:
                return i, conns
            i = (i + 1) % self.nslots

    def acquire(self, digest: bytes, limit: int) -> int | None:
        """Count one more connection for the key: its new count, 0 when it is already at
        `limit`, None when the table has no room for a new key."""
        with self.lock:
            i, conns = self._find(digest)
            if conns >= limit:
                return 0
            if conns == 0:
                used = self._used()
                if used >= self.capacity:
                    return None
                _HEADER.pack_into(self._map, 0, used + 1)
            self._put(i, digest, conns + 1)
            return conns + 1

    def release(self, digest: bytes) -> None:
        with self.lock:
            i, conns = self._find(digest)
            if conns == 0:
                return  # not counted (cannot happen unless the table was reset)
            if conns > 1:
                self._put(i, digest, conns - 1)
                return
            self._delete(i)
            _HEADER.pack_into(self._map, 0, self._used() - 1)

    def _delete(self, i: int) -> None:
        """Empty slot i and shift later entries of its probe run back (linear probing)."""
        n = self.nslots
        j = i
        while True:
            j = (j + 1) % n
            d, conns = self._slot(j)
            if conns == 0:
                break
            k = self._home(d)
            # Move entry j into the hole unless its home lies cyclically in (i, j].
            if (i < j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                self._put(i, d, conns)
                i = j
        self._put(i, b"\0" * 16, 0)

    def count(self, digest: bytes) -> int:
        with self.lock:
            return self._find(digest)[1]


@dataclass(slots=True)
class Zone:
    """One `limit_conn_zone`; the table is made once, at build time (in the master)."""

    name: str
    size: int
    key_text: str
    key: Callable[[Any], str]
    table: Table | None = None

    def shared(self) -> Table:
        if self.table is None:
            self.table = Table(self.size)
        return self.table


@dataclass(slots=True)
class LimitConn:
    """The preaccess handler of one server: its limits, log level and dry-run flag."""

    limits: tuple[tuple[Zone, int], ...]
    log_level: int
    dry_run: bool
    # Sessions that hold counts: session -> [(table, digest), ...], given back by `release`.
    held: dict[Any, list[tuple[Table, bytes]]] = field(default_factory=dict)

    def __call__(self, session: Any) -> int | None:
        taken: list[tuple[Table, bytes]] = []
        for zone, limit in self.limits:
            text = zone.key(session)
            if not text:
                continue  # nginx does not count empty keys
            key = _raw(text)
            if len(key) > MAX_KEY:
                session.log(
                    ERROR,
                    f'the value of the "{zone.key_text}" key is more than 255 bytes: "{text}"'
                    f" {WHILE}",
                )
                continue
            digest = hashlib.blake2b(key, digest_size=16).digest()
            table = zone.shared()
            got = table.acquire(digest, limit)
            if got:
                taken.append((table, digest))
                continue
            if got is None:
                # nginx's slab allocator logs this to the cycle's log, without a client.
                session.worker.cycle.error_log.log(
                    CRIT, f'ngx_slab_alloc() failed: no memory in limit_conn_zone "{zone.name}"'
                )
            else:
                dry = ", dry run," if self.dry_run else ""
                session.log(
                    self.log_level, f'limiting connections{dry} by zone "{zone.name}" {WHILE}'
                )
            for t, d in taken:  # ngx_stream_limit_conn_cleanup_all
                t.release(d)
            return None if self.dry_run else STATUS_SERVICE_UNAVAILABLE
        if taken:
            self.held[session] = taken
        return None

    def release(self, session: Any) -> None:
        """At the end of a session: give back what it counted."""
        taken = self.held.pop(session, None)
        if taken:
            for table, digest in taken:
                table.release(digest)


def _raw(text: str) -> bytes:
    # Variables like $binary_remote_addr carry bytes as latin-1 characters; anything wider
    # is real text.
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


# -- directives -------------------------------------------------------------------------


def _root(ctx: Context) -> Context:
    while ctx.parent is not None:
        ctx = ctx.parent
    return ctx


def _add_shm(ctx: Context, node: Node, name: str, size: int) -> None:
    """ngx_shared_memory_add: one name, one owner, one size."""
    root = _root(ctx)
    zones: dict[str, int] = root.slots.setdefault(SHM_ZONES, {})
    tags: dict[str, str] = root.slots.setdefault(SHM_TAGS, {})
    if name in zones and tags.get(name) != TAG:
        raise node.error(f'the shared memory zone "{name}" is already declared for a different use')
    tags[name] = TAG
    known = zones.setdefault(name, size)
    if not known:
        zones[name] = size
    elif size and size != known:
        raise node.error(
            f'the size {size} of shared memory zone "{name}" conflicts with already declared'
            f" size {known}"
        )


def _limit_conn_zone(ctx: Context, node: Node) -> None:
    key = compile_complex(node.args[0], ctx.slots["variables"])
    name, size = "", 0
    for param in node.args[1:]:
        if not param.startswith("zone="):
            raise node.error(f'invalid parameter "{param}"')
        name, colon, text = param[5:].partition(":")
        m = _ZONE_SIZE.fullmatch(text) if colon else None
        if m is None:
            raise node.error(f'invalid zone size "{param}"')
        size = int(m.group(1)) * _UNITS[m.group(2).lower()]
        if size < 8 * resource.getpagesize():
            raise node.error(f'zone "{param}" is too small')
    if not name:
        raise node.error(f'"{node.name}" must have "zone" parameter')
    _add_shm(ctx, node, name, size)
    zones: dict[str, Zone] = ctx.slots.setdefault(ZONES, {})
    if name in zones:
        raise node.error(f'{node.name} "{name}" is already bound to key "{zones[name].key_text}"')
    zones[name] = Zone(name, size, node.args[0], key)


def _limit_conn(ctx: Context, node: Node) -> None:
    name, number = node.args
    _add_shm(ctx, node, name, 0)
    limits: list[tuple[str, int]] = ctx.slots.setdefault("limit_conn", [])
    ctx.locations.setdefault("limit_conn", node)
    if any(n == name for n, _ in limits):
        raise DirectiveValueError("is duplicate")
    n = int(number) if number.isdigit() else 0  # ngx_atoi: digits only
    if n <= 0:
        raise node.error(f'invalid number of connections "{number}"')
    if n > MAX_CONN:
        raise node.error("connection limit must be less 65536")
    limits.append((name, n))


def _log_level(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in LOG_LEVELS:
        raise node.error(f'invalid value "{arg}"')  # ngx_conf_set_enum_slot's words
    ctx.set_once("limit_conn_log_level", LOG_LEVELS[arg], node)


def _dry_run(ctx: Context, node: Node) -> None:
    ctx.set_once("limit_conn_dry_run", parse_flag(node.args[0], node.name), node)


def register(reg: Registry) -> None:
    reg.add("limit_conn_zone", [STREAM], _limit_conn_zone, TAKE2)
    reg.add("limit_conn", [STREAM, SERVER], _limit_conn, TAKE2)
    reg.add("limit_conn_log_level", [STREAM, SERVER], _log_level, TAKE1)
    reg.add("limit_conn_dry_run", [STREAM, SERVER], _dry_run, TAKE1)


def build(srv: Context) -> LimitConn | None:
    """The server's handler (None without limits); makes the zones' shared tables."""
    limits = srv.get("limit_conn", [])  # a level with its own limits replaces the parent's
    if not limits:
        return None
    zones: dict[str, Zone] = srv.up(STREAM).slots.get(ZONES, {})
    compiled = []
    for name, n in limits:
        zone = zones.get(name)
        if zone is None:
            raise ConfigError(f'zero size shared memory zone "{name}"')
        zone.shared()
        compiled.append((zone, n))
    return LimitConn(
        tuple(compiled),
        srv.get("limit_conn_log_level", ERROR),
        srv.get("limit_conn_dry_run", False),
    )
