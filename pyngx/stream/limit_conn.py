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

The http module counts requests with the same zones and handler (`LimitConn.acquire`), and
http's limit_req keeps its leaky buckets in a `ProbeTable` too (pyngx/http/limit_req.py):
the probing and deletion below serve any fixed-size slot that starts with the key's digest.
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


class ProbeTable:
    """A fixed-size open-addressing hash table in an anonymous shared mapping.

    Slots are `SLOT` structs whose first field is the 16-byte digest of a key; `_live` says
    whether an unpacked slot holds an entry. Linear probing; deletion shifts later entries of
    the probe run back, so no tombstones are needed. Subclasses lock around their public
    methods with `self.lock` (one multiprocessing.Lock per table, as nginx's zone mutex).
    """

    SLOT: struct.Struct = _SLOT

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, size)
        self.nslots = max(1, (size - _HEADER.size) // self.SLOT.size)
        self.capacity = max(1, int(self.nslots * MAX_LOAD))
        self.lock = multiprocessing.Lock()
        self._empty = bytes(self.SLOT.size)  # every field zero: what `_live` calls empty

    @staticmethod
    def _live(fields: tuple[Any, ...]) -> bool:
        raise NotImplementedError

    def _home(self, digest: bytes) -> int:
        return int.from_bytes(digest[:8], "little") % self.nslots

    def _slot(self, i: int) -> tuple[Any, ...]:
        return self.SLOT.unpack_from(self._map, _HEADER.size + i * self.SLOT.size)

    def _put(self, i: int, *fields: Any) -> None:
        self.SLOT.pack_into(self._map, _HEADER.size + i * self.SLOT.size, *fields)

    def _used(self) -> int:
        return int(_HEADER.unpack_from(self._map, 0)[0])

    def _set_used(self, n: int) -> None:
        _HEADER.pack_into(self._map, 0, n)

    def _find(self, digest: bytes) -> tuple[int, tuple[Any, ...] | None]:
        """(slot index, fields): the key's slot, or the empty slot where it would go (None)."""
        i = self._home(digest)
        live = self._live
        while True:
            fields = self._slot(i)
            if not live(fields):
                return i, None
            if fields[0] == digest:
                return i, fields
            i = (i + 1) % self.nslots

    def _delete(self, i: int) -> None:
        """Empty slot i and shift later entries of its probe run back (linear probing)."""
        n = self.nslots
        j = i
        while True:
            j = (j + 1) % n
            fields = self._slot(j)
            if not self._live(fields):
                break
            k = self._home(fields[0])
            # Move entry j into the hole unless its home lies cyclically in (i, j].
            if (i < j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                self._put(i, *fields)
                i = j
        off = _HEADER.size + i * self.SLOT.size
        self._map[off : off + self.SLOT.size] = self._empty
        self._set_used(self._used() - 1)


class Table(ProbeTable):
    """The shared table of one limit_conn zone: connections (or requests) per key.

    Callers need not lock: `acquire`, `release` and `count` take the zone's lock themselves.
    A slot with conns 0 is empty: an entry goes as soon as its last count is given back.
    """

    @staticmethod
    def _live(fields: tuple[Any, ...]) -> bool:
        return bool(fields[1])

    def acquire(self, digest: bytes, limit: int) -> int | None:
        """Count one more connection for the key: its new count, 0 when it is already at
        `limit`, None when the table has no room for a new key."""
        with self.lock:
            i, fields = self._find(digest)
            conns = fields[1] if fields is not None else 0
            if conns >= limit:
                return 0
            if conns == 0:
                used = self._used()
                if used >= self.capacity:
                    return None
                self._set_used(used + 1)
            self._put(i, digest, conns + 1)
            return conns + 1

    def release(self, digest: bytes) -> None:
        with self.lock:
            i, fields = self._find(digest)
            if fields is None:
                return  # not counted (cannot happen unless the table was reset)
            if fields[1] > 1:
                self._put(i, digest, fields[1] - 1)
                return
            self._delete(i)

    def count(self, digest: bytes) -> int:
        with self.lock:
            fields = self._find(digest)[1]
            return fields[1] if fields is not None else 0


@dataclass(slots=True)
class Zone:
    """One `limit_conn_zone`; the table is made once, at build time (in the master)."""

    name: str
    size: int
    key_text: str
    key: Callable[[Any], str]
    table: Table | None = None
    tag: str = TAG

    def shared(self) -> Table:
        if self.table is None:
            self.table = kept_table(self.tag, self.name, self.size, self.key_text, Table)
        return self.table


# The zones' tables of the configuration loaded before, by (owner, name). nginx keeps a shared
# zone across a reload when its name, size and owner stay (ngx_init_cycle), so counts and
# buckets go on; its key must then stay too.
_KEPT: dict[tuple[str, str], tuple[int, str, Any]] = {}
# How each owner names its zones in that error (ngx_*_init_zone).
_KEY_CHANGED = {TAG: "limit_conn_zone", "http_limit_conn": "limit_conn_zone"}


def kept_table(tag: str, name: str, size: int, key_text: str, make: Callable[[int], Any]) -> Any:
    """The zone's table: the previous configuration's if it is the same zone, else a new one."""
    old = _KEPT.get((tag, name))
    if old is not None and old[0] == size:
        if old[1] != key_text:
            label = _KEY_CHANGED.get(tag, "limit_req")
            raise ConfigError(
                f'{label} "{name}" uses the "{key_text}" key while previously it used the'
                f' "{old[1]}" key'
            )
        return old[2]
    table = make(size)
    _KEPT[(tag, name)] = (size, key_text, table)
    return table


# $limit_conn_status (nginx's NGX_*_LIMIT_CONN_* values); 0: no key was counted.
PASSED, REJECTED, REJECTED_DRY_RUN = 1, 2, 3
STATUS_NAMES = ("", "PASSED", "REJECTED", "REJECTED_DRY_RUN")


def _session_worker(session: Any) -> Any:
    return session.worker


@dataclass(slots=True)
class LimitConn:
    """The limits of one server (stream) or location (http), their log level and dry-run flag.

    `acquire` is nginx's handler for both: stream calls it per session (`__call__`, which
    keeps what was counted until `release`), http per request (pyngx/http/limit_conn.py).
    """

    limits: tuple[tuple[Zone, int], ...]
    log_level: int
    dry_run: bool
    # Sessions that hold counts: session -> [(table, digest), ...], given back by `release`.
    held: dict[Any, list[tuple[Table, bytes]]] = field(default_factory=dict)
    # Appended to the log lines: nginx's log action (stream), nothing for http requests.
    suffix: str = f" {WHILE}"
    # The worker a session or request runs in (its cycle's log takes the slab [crit] line).
    worker: Callable[[Any], Any] = _session_worker

    def acquire(self, s: Any) -> tuple[int, list[tuple[Table, bytes]]]:
        """Count `s` under each limit, in order: ($limit_conn_status value, counts taken).
        A rejection gives back what was taken before it (ngx_*_limit_conn_cleanup_all)."""
        taken: list[tuple[Table, bytes]] = []
        status = 0
        for zone, limit in self.limits:
            text = zone.key(s)
            if not text:
                continue  # nginx does not count empty keys
            key = raw_key(text)
            if len(key) > MAX_KEY:
                s.log(
                    ERROR,
                    f'the value of the "{zone.key_text}" key is more than 255 bytes: "{text}"'
                    f"{self.suffix}",
                )
                continue
            status = PASSED
            digest = hashlib.blake2b(key, digest_size=16).digest()
            table = zone.shared()
            got = table.acquire(digest, limit)
            if got:
                taken.append((table, digest))
                continue
            if got is None:
                # nginx's slab allocator logs this to the cycle's log, without a client.
                self.worker(s).cycle.error_log.log(
                    CRIT, f'ngx_slab_alloc() failed: no memory in limit_conn_zone "{zone.name}"'
                )
            else:
                dry = ", dry run," if self.dry_run else ""
                s.log(
                    self.log_level,
                    f'limiting connections{dry} by zone "{zone.name}"{self.suffix}',
                )
            for t, d in taken:
                t.release(d)
            return (REJECTED_DRY_RUN if self.dry_run else REJECTED), []
        return status, taken

    def __call__(self, session: Any) -> int | None:
        status, taken = self.acquire(session)
        if status == REJECTED:
            return STATUS_SERVICE_UNAVAILABLE
        if taken:
            self.held[session] = taken
        return None

    def release(self, session: Any) -> None:
        """At the end of a session: give back what it counted."""
        taken = self.held.pop(session, None)
        if taken:
            release_all(taken)


def release_all(taken: list[tuple[Table, bytes]]) -> None:
    for table, digest in taken:
        table.release(digest)


def raw_key(text: str) -> bytes:
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


def add_shm(ctx: Context, node: Node, name: str, size: int, tag: str = TAG) -> None:
    """ngx_shared_memory_add: one name, one owner (`tag`: the module), one size. Names are
    global to the configuration: a stream and an http zone may not share one."""
    root = _root(ctx)
    zones: dict[str, int] = root.slots.setdefault(SHM_ZONES, {})
    tags: dict[str, str] = root.slots.setdefault(SHM_TAGS, {})
    if name in zones and tags.get(name) != tag:
        raise node.error(f'the shared memory zone "{name}" is already declared for a different use')
    tags[name] = tag
    known = zones.setdefault(name, size)
    if not known:
        zones[name] = size
    elif size and size != known:
        raise node.error(
            f'the size {size} of shared memory zone "{name}" conflicts with already declared'
            f" size {known}"
        )


def parse_zone(param: str, node: Node) -> tuple[str, int]:
    """`zone=name:size` (ngx_parse_size, at least 8 pages) -> (name, size)."""
    name, colon, text = param[5:].partition(":")
    m = _ZONE_SIZE.fullmatch(text) if colon else None
    if m is None:
        raise node.error(f'invalid zone size "{param}"')
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < 8 * resource.getpagesize():
        raise node.error(f'zone "{param}" is too small')
    return name, size


def zone_directive(ctx: Context, node: Node, tag: str = TAG) -> None:
    key = compile_complex(node.args[0], ctx.slots["variables"])
    name, size = "", 0
    for param in node.args[1:]:
        if not param.startswith("zone="):
            raise node.error(f'invalid parameter "{param}"')
        name, size = parse_zone(param, node)
    if not name:
        raise node.error(f'"{node.name}" must have "zone" parameter')
    add_shm(ctx, node, name, size, tag)
    zones: dict[str, Zone] = ctx.slots.setdefault(ZONES, {})
    if name in zones:
        raise node.error(f'{node.name} "{name}" is already bound to key "{zones[name].key_text}"')
    zones[name] = Zone(name, size, node.args[0], key, tag=tag)


def limit_directive(ctx: Context, node: Node, tag: str = TAG) -> None:
    name, number = node.args
    add_shm(ctx, node, name, 0, tag)
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


def log_level_directive(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in LOG_LEVELS:
        raise node.error(f'invalid value "{arg}"')  # ngx_conf_set_enum_slot's words
    ctx.set_once("limit_conn_log_level", LOG_LEVELS[arg], node)


def dry_run_directive(ctx: Context, node: Node) -> None:
    ctx.set_once("limit_conn_dry_run", parse_flag(node.args[0], node.name), node)


def register(reg: Registry) -> None:
    reg.add("limit_conn_zone", [STREAM], zone_directive, TAKE2)
    reg.add("limit_conn", [STREAM, SERVER], limit_directive, TAKE2)
    reg.add("limit_conn_log_level", [STREAM, SERVER], log_level_directive, TAKE1)
    reg.add("limit_conn_dry_run", [STREAM, SERVER], dry_run_directive, TAKE1)


def build(srv: Context, top: str = STREAM, **options: Any) -> LimitConn | None:
    """The handler of a server (or an http location: `top` "http", `options` for LimitConn),
    None without limits; makes the zones' shared tables."""
    limits = srv.get("limit_conn", [])  # a level with its own limits replaces the parent's
    if not limits:
        return None
    zones: dict[str, Zone] = srv.up(top).slots.get(ZONES, {})
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
        **options,
    )
