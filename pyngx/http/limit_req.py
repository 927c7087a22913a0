"""`limit_req_zone`, `limit_req`, `limit_req_status`, `limit_req_log_level`,
`limit_req_dry_run` and `$limit_req_status` (ngx_http_limit_req_module).

nginx's leaky bucket, in its integer units: a rate of 1 is 0.001 request per second, and each
key keeps `excess` (requests beyond the rate, times 1000) and `last` (when it was last
accounted, in milliseconds). A request computes

    excess = max(0, excess - rate * elapsed_ms / 1000 + 1000)

and is rejected when that is above burst * 1000, delayed by (excess - delay * 1000) / rate
milliseconds when it is above the `delay` threshold (0 by default; `nodelay` makes it
infinite), passed otherwise. A new key starts with excess 0. With several `limit_req` in one
location every one is checked in order: the first rejection wins; otherwise all are accounted
and the longest delay wins (ngx_http_limit_req_lookup/account, including their ways with
clocks that go back and with the `count` that keeps an entry being checked from expiring).

State lives in a `ReqTable` per zone: an open-addressing hash table in an anonymous shared
mapping made when the configuration loads, so every worker sees the same buckets (as nginx's
shared-memory rbtree), with slots

    digest (16: blake2b of the key) | excess (int64) | last (int64 ms) | touched (int64 ms)
    | count (uint32) | live (uint32)

and the zone's lock around each operation. nginx evicts buckets from the tail of an LRU queue
(idle for a minute and drained, or the oldest when memory is short); here a full table evicts
the drained ones, or else the least recently touched sixteenth, in one sweep, so the cost is
amortized over many new keys. Time is the monotonic clock (shared by all processes). As nginx
keeps a zone across reloads when its name and size stay, the table is kept too (a changed key
is then an error, as nginx's).

A delayed request does not hold the event loop: the handler returns DONE and a timer resumes
the access phase after it (`Request.resume_access`), as nginx re-runs its phase handlers.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import time
from dataclasses import dataclass
from typing import Any

from pyngx.conf.errors import ConfigError, DirectiveValueError
from pyngx.conf.parser import Node
from pyngx.conf.registry import TAKE1, TAKE123, Context, Registry
from pyngx.conf.values import parse_flag
from pyngx.conf.variables import VariableTable, compile_complex
from pyngx.core.log import ALERT, ERROR, INFO
from pyngx.http.limit_conn import limit_state, status_number
from pyngx.http.request import DONE
from pyngx.stream.limit_conn import (
    LOG_LEVELS,
    ProbeTable,
    add_shm,
    kept_table,
    parse_zone,
    raw_key,
)

HTTP, SRV, LOC = "http", "http_server", "http_location"
MAIN_SRV_LOC = (HTTP, SRV, LOC)
TAG = "http_limit_req"
ZONES = "limit_req_zones"
SERVICE_UNAVAILABLE = 503
MAX_KEY = 65535
NGX_MAX_INT_T_VALUE = (1 << 63) - 1

# ngx_http_limit_req_lookup results.
OK, AGAIN, BUSY, ERR = range(4)
# $limit_req_status (NGX_HTTP_LIMIT_REQ_*); 0: not decided (no key, or not checked).
PASSED, DELAYED, REJECTED, DELAYED_DRY_RUN, REJECTED_DRY_RUN = range(1, 6)
STATUS_NAMES = ("", "PASSED", "DELAYED", "REJECTED", "DELAYED_DRY_RUN", "REJECTED_DRY_RUN")

_IDLE_MS = 60000  # nginx expires a drained bucket once it is idle this long


def now_ms() -> int:
    return int(time.monotonic() * 1000)


def _elapsed(now: int, last: int) -> int:
    """nginx's guard against clocks that went back: a little is 0, a lot is 1 ms."""
    ms = now - last
    if ms < -60000:
        return 1
    return ms if ms > 0 else 0


class ReqTable(ProbeTable):
    """The leaky buckets of one zone, shared by all workers (see the module docstring)."""

    SLOT = struct.Struct("<16sqqqII")

    @staticmethod
    def _live(fields: tuple[Any, ...]) -> bool:
        return bool(fields[5])

    def lookup(
        self, digest: bytes, rate: int, burst: int, account: bool, now: int
    ) -> tuple[int, int]:
        """ngx_http_limit_req_lookup: (OK | AGAIN | BUSY | ERR, excess). AGAIN (not the last
        limit: account later) holds the bucket (`count`) until `account` or `unlock`."""
        with self.lock:
            i, f = self._find(digest)
            if f is not None:
                _, old, last, _touched, count, _ = f
                ms = _elapsed(now, last)
                excess = old - rate * ms // 1000 + 1000
                if excess < 0:
                    excess = 0
                if excess > burst:
                    self._put(i, digest, old, last, now, count, 1)
                    return BUSY, excess
                if account:
                    self._put(i, digest, excess, now if ms else last, now, count, 1)
                    return OK, excess
                self._put(i, digest, old, last, now, count + 1, 1)
                return AGAIN, excess
            if self._used() >= self.capacity:
                self._expire(now, rate)
                if self._used() >= self.capacity:
                    return ERR, 0
                i = self._find(digest)[0]  # the sweep moved entries
            self._set_used(self._used() + 1)
            if account:
                self._put(i, digest, 0, now, now, 0, 1)
                return OK, 0
            self._put(i, digest, 0, 0, now, 1, 1)
            return AGAIN, 0

    def account(self, digest: bytes, rate: int, now: int) -> int:
        """ngx_http_limit_req_account for a bucket held by `lookup`: its new excess."""
        with self.lock:
            i, f = self._find(digest)
            if f is None:
                return 0  # a held bucket is never evicted; nothing to account
            _, old, last, touched, count, _ = f
            ms = _elapsed(now, last)
            excess = old - rate * ms // 1000 + 1000
            if excess < 0:
                excess = 0
            self._put(i, digest, excess, now if ms else last, touched, max(0, count - 1), 1)
            return excess

    def unlock(self, digest: bytes) -> None:
        """Let go of a bucket held by `lookup` without accounting (a later limit refused)."""
        with self.lock:
            i, f = self._find(digest)
            if f is not None:
                self._put(i, digest, f[1], f[2], f[3], max(0, f[4] - 1), 1)

    def get(self, digest: bytes) -> tuple[int, int, int] | None:
        """(excess, last, count) of a key, for tests."""
        with self.lock:
            f = self._find(digest)[1]
            return None if f is None else (f[1], f[2], f[4])

    def _expire(self, now: int, rate: int) -> None:
        """Make room (lock held): drop the drained buckets, else the least recently used
        sixteenth of those not being checked."""
        drained: list[bytes] = []
        idle: list[tuple[int, bytes]] = []
        for i in range(self.nslots):
            f = self._slot(i)
            if not f[5] or f[4]:
                continue
            ms = abs(now - f[2])
            if ms >= _IDLE_MS and f[1] - rate * ms // 1000 <= 0:
                drained.append(f[0])
            else:
                idle.append((f[3], f[0]))
        if not drained:
            idle.sort()
            drained = [d for _, d in idle[: max(1, self.capacity // 16)]]
        for digest in drained:
            i, f = self._find(digest)
            if f is not None:
                self._delete(i)


@dataclass(slots=True)
class ReqZone:
    """One `limit_req_zone`; its table is made once, at build time (in the master)."""

    name: str
    size: int
    key_text: str
    key: Any  # compiled complex value: request -> str
    rate: int  # in 0.001 requests per second
    table: ReqTable | None = None

    def shared(self) -> ReqTable:
        if self.table is None:
            self.table = kept_table(TAG, self.name, self.size, self.key_text, ReqTable)
        return self.table


class HttpLimitReq:
    """The preaccess handler of one location."""

    __slots__ = ("limits", "limit_level", "delay_level", "status", "dry_run")

    def __init__(
        self,
        limits: tuple[tuple[ReqZone, int, int], ...],
        limit_level: int,
        status: int,
        dry_run: bool,
    ) -> None:
        self.limits = limits  # (zone, burst * 1000, delay * 1000)
        self.limit_level = limit_level
        # Delays are logged one level below rejections (info stays info).
        self.delay_level = INFO if limit_level == INFO else limit_level + 1
        self.status = status
        self.dry_run = dry_run

    def __call__(self, r: Any) -> int | None:
        state = limit_state(r)
        if state.req:
            return None
        limits = self.limits
        last_index = len(limits) - 1
        now = now_ms()
        rc = None  # NGX_DECLINED: no key checked yet
        excess = 0
        held: list[tuple[ReqZone, bytes, int, int]] = []  # (zone, digest, burst, delay)
        limit = limits[0]
        for n, limit in enumerate(limits):
            zone = limit[0]
            text = zone.key(r)
            if not text:
                continue
            key = raw_key(text)
            if len(key) > MAX_KEY:
                r.log(
                    ERROR,
                    f'the value of the "{zone.key_text}" key is more than {MAX_KEY} bytes:'
                    f' "{text}"',
                )
                continue
            digest = hashlib.blake2b(key, digest_size=16).digest()
            table = zone.table
            assert table is not None
            rc, excess = table.lookup(digest, zone.rate, limit[1], n == last_index, now)
            if rc == AGAIN:
                held.append((zone, digest, limit[1], limit[2]))
                continue
            if rc == ERR:
                r.conn.worker.cycle.error_log.log(
                    ALERT, f'could not allocate node in limit_req zone "{zone.name}"'
                )
            break
        if rc is None:
            return None
        dry = ", dry run" if self.dry_run else ""
        if rc in (BUSY, ERR):
            if rc == BUSY:
                r.log(
                    self.limit_level,
                    f"limiting requests{dry}, excess: {excess // 1000}.{excess % 1000:03d}"
                    f' by zone "{limit[0].name}"',
                )
            for zone, digest, _, _ in held:
                zone.table.unlock(digest)  # type: ignore[union-attr]
            if self.dry_run:
                state.req = REJECTED_DRY_RUN
                return None
            state.req = REJECTED
            return self.status
        if rc == AGAIN:
            excess = 0  # the later limits had no key: nothing of their own to wait for
        delay, excess, zone_name = self._account(held, limit, excess, now)
        if not delay:
            state.req = PASSED
            return None
        r.log(
            self.delay_level,
            f"delaying request{dry}, excess: {excess // 1000}.{excess % 1000:03d},"
            f' by zone "{zone_name}"',
        )
        if self.dry_run:
            state.req = DELAYED_DRY_RUN
            return None
        state.req = DELAYED
        index = r.loc.access_phase.index(self)
        r.conn.loop.call_later(delay / 1000, r.resume_access, index + 1)
        return DONE

    @staticmethod
    def _account(
        held: list[tuple[ReqZone, bytes, int, int]],
        limit: tuple[ReqZone, int, int],
        excess: int,
        now: int,
    ) -> tuple[int, int, str]:
        """ngx_http_limit_req_account: (longest delay in ms, its excess, its zone)."""
        zone, _burst, threshold = limit
        max_delay = 0 if excess <= threshold else (excess - threshold) * 1000 // zone.rate
        name = zone.name
        for zone, digest, _burst, threshold in reversed(held):
            table = zone.table
            assert table is not None
            got = table.account(digest, zone.rate, now)
            if got <= threshold:
                continue
            delay = (got - threshold) * 1000 // zone.rate
            if delay > max_delay:
                max_delay, excess, name = delay, got, zone.name
        return max_delay, excess, name


# -- directives ---------------------------------------------------------------------------


def _atoi(text: str) -> int:
    """ngx_atoi: digits only; anything else is an error (-1)."""
    return int(text) if text.isdigit() and text.isascii() else -1


def _limit_req_zone(ctx: Context, node: Node) -> None:
    key = compile_complex(node.args[0], ctx.slots["variables"])
    name, size, rate, scale = "", 0, 1, 1
    for param in node.args[1:]:
        if param.startswith("zone="):
            name, size = parse_zone(param, node)
            continue
        if param.startswith("rate="):
            text = param[5:]
            if text.endswith("r/s"):
                text = text[:-3]
            elif text.endswith("r/m"):
                scale = 60
                text = text[:-3]
            rate = _atoi(text)
            if rate <= 0:
                raise node.error(f'invalid rate "{param}"')
            continue
        raise node.error(f'invalid parameter "{param}"')
    if not name:
        raise node.error(f'"{node.name}" must have "zone" parameter')
    add_shm(ctx, node, name, size, TAG)
    zones: dict[str, ReqZone] = ctx.slots.setdefault(ZONES, {})
    if name in zones:
        raise node.error(f'{node.name} "{name}" is already bound to key "{zones[name].key_text}"')
    zones[name] = ReqZone(name, size, node.args[0], key, rate * 1000 // scale)


def _limit_req(ctx: Context, node: Node) -> None:
    zone: str | None = None
    burst = delay = 0
    for param in node.args:
        if param.startswith("zone="):
            zone = param[5:]
            add_shm(ctx, node, zone, 0, TAG)
        elif param.startswith("burst="):
            burst = _atoi(param[6:])
            if burst <= 0:
                raise node.error(f'invalid burst value "{param}"')
        elif param.startswith("delay="):
            delay = _atoi(param[6:])
            if delay <= 0:
                raise node.error(f'invalid delay value "{param}"')
        elif param == "nodelay":
            delay = NGX_MAX_INT_T_VALUE // 1000
        else:
            raise node.error(f'invalid parameter "{param}"')
    if zone is None:
        raise node.error(f'"{node.name}" must have "zone" parameter')
    limits: list[tuple[str, int, int]] = ctx.slots.setdefault("limit_req", [])
    ctx.locations.setdefault("limit_req", node)
    if any(z == zone for z, _, _ in limits):
        raise DirectiveValueError("is duplicate")
    limits.append((zone, burst * 1000, delay * 1000))


def _log_level(ctx: Context, node: Node) -> None:
    arg = node.args[0]
    if arg not in LOG_LEVELS:
        raise node.error(f'invalid value "{arg}"')  # ngx_conf_set_enum_slot's words
    ctx.set_once("limit_req_log_level", LOG_LEVELS[arg], node)


def _dry_run(ctx: Context, node: Node) -> None:
    ctx.set_once("limit_req_dry_run", parse_flag(node.args[0], node.name), node)


def _status_variable(r: Any) -> str | None:
    state = r.limit_state
    if state is None or not state.req:
        return None
    return STATUS_NAMES[state.req]


class LimitReqModule:
    """The module object for http/modules.py."""

    @staticmethod
    def register(reg: Registry) -> None:
        # TAKE3: nginx 1.22 (open source) has no `sync` parameter (a commercial one).
        reg.add("limit_req_zone", [HTTP], _limit_req_zone, (3, 3))
        reg.add("limit_req", MAIN_SRV_LOC, _limit_req, TAKE123)
        reg.add("limit_req_log_level", MAIN_SRV_LOC, _log_level, TAKE1)
        reg.add("limit_req_dry_run", MAIN_SRV_LOC, _dry_run, TAKE1)
        reg.add(
            "limit_req_status",
            MAIN_SRV_LOC,
            functools.partial(status_number, slot="limit_req_status"),
            TAKE1,
        )

    @staticmethod
    def declare(nodes: list[Node], table: VariableTable, http: Context) -> list[Any]:
        table.add("limit_req_status", _status_variable)
        return []

    @staticmethod
    def configure(ctx: Context, loc: Any) -> None:
        loc.limit_req = None
        limits: list[tuple[str, int, int]] = ctx.get("limit_req", [])
        if not limits:
            return
        zones: dict[str, ReqZone] = ctx.up(HTTP).slots.get(ZONES, {})
        compiled = []
        for name, burst, delay in limits:
            zone = zones.get(name)
            if zone is None:
                raise ConfigError(f'zero size shared memory zone "{name}"')
            zone.shared()
            compiled.append((zone, burst, delay))
        loc.limit_req = HttpLimitReq(
            tuple(compiled),
            ctx.get("limit_req_log_level", ERROR),
            ctx.get("limit_req_status", SERVICE_UNAVAILABLE),
            ctx.get("limit_req_dry_run", False),
        )
        loc.phase_preaccess.append(loc.limit_req)


MODULE = LimitReqModule()

__all__ = ["MODULE", "HttpLimitReq", "ReqTable", "ReqZone", "STATUS_NAMES", "now_ms"]
