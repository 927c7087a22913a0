"""One request's use of the cache: find the entry, wait for the cache lock, store a response.

This is ngx_http_upstream_cache + ngx_http_file_cache_open/_read/_lock/_update/_free over
the pieces of this package: `KeysZone` (shared index), `store` (files, the worker's
HotCache) and `policy` (the decisions). The proxy drives it:

    lk = start_lookup(r, settings, key=...)       # never waits; lk.action says what next
    while lk.action == WAIT: await lk.wait()      # proxy_cache_lock (or: lk = await lookup())
    SERVE            -> serve_entry(r, lk.entry, lk)                (HIT, UPDATING)
    SERVE_AND_UPDATE -> serve_entry(...), and fetch in the background with `lk` (STALE)
    ERROR            -> finalize with lk.error (a cached 502/504, or 500)
    UPSTREAM         -> fetch; store_writer(...) to store the response (MISS, BYPASS,
                        EXPIRED); on an upstream failure lk.stale(condition) may give the
                        expired entry back (STALE); on a 304 revalidated(...) (REVALIDATED)

Whatever happens, `lk.close()` ends the request's hold on the entry (idempotent; commit,
abort and serve_entry call it).

The cache lock waits like nginx's ngx_http_file_cache_lock_wait: a waiter re-checks the
shared node at most every 500 ms (another worker may hold the lock), and a request of the
same worker that holds it wakes the waiters at once when it stores or gives up (a future per
key). After proxy_cache_lock_timeout a waiter goes to the upstream without caching ("cache
lock timeout", info).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterable
from typing import Any

from pyngx.core.log import ALERT, CRIT, ERROR, INFO
from pyngx.http.cache import policy, store
from pyngx.http.cache import zone as zn
from pyngx.http.cache.policy import (
    BYPASS,
    EXPIRED,
    HIT,
    MISS,
    REVALIDATED,
    SERVE,
    SERVE_AND_UPDATE,
    STALE,
    UPSTREAM,
)
from pyngx.http.cache.policy import (
    ERROR as ACT_ERROR,
)

WAIT = "wait"  # proxy_cache_lock: await lk.wait(), then look at lk.action again
LOCK_POLL = 0.5  # nginx re-checks a lock every 500 ms at most

_LEVELS = {"crit": CRIT, "info": INFO, "error": ERROR, "alert": ALERT}


class CacheLookup:
    """A request's cache state: what was found, what to do, what the request holds.

    status: $upstream_cache_status (None when the cache is not used for the request);
    action: SERVE, SERVE_AND_UPDATE, UPSTREAM, ERROR or WAIT;
    entry: the stored response (HIT/UPDATING/STALE; also kept with EXPIRED, for
      proxy_cache_use_stale and proxy_cache_revalidate);
    key: the cache key; cacheable: may the upstream's response be stored;
    error: the status to finalize with for ERROR;
    upstream_method: the method to send upstream ("GET" for HEAD with convert_head).
    """

    __slots__ = (
        "r",
        "settings",
        "zone",
        "status",
        "action",
        "entry",
        "key",
        "key_raw",
        "digest",
        "main_digest",
        "secondary",
        "cacheable",
        "error",
        "upstream_method",
        "node",
        "referenced",
        "lock_time",
        "wait_until",
        "lock_timed_out",
        "stale_updating",
        "stale_error",
        "closed",
        "fetch_rv",
    )

    def __init__(self, r: Any, settings: Any, zone: Any, key: str, key_raw: bytes) -> None:
        self.r = r
        self.settings = settings
        self.zone = zone
        self.status: str | None = MISS
        self.action = UPSTREAM
        self.entry: store.Entry | None = None
        self.key = key
        self.key_raw = key_raw
        self.digest = hashlib.md5(key_raw).digest()
        self.main_digest = self.digest
        self.secondary = False
        self.cacheable = True
        self.error = 0
        self.upstream_method = r.method if r is not None else "GET"
        self.node: zn.NodeState | None = None
        self.referenced = False
        self.lock_time: int | None = None  # we hold the updating flag with this lock time
        self.wait_until = 0.0
        self.lock_timed_out = False
        self.stale_updating = False
        self.stale_error = False
        self.closed = False
        self.fetch_rv: str | None = None  # a shared store's read is pending (see wait)

    def __repr__(self) -> str:
        return f"<CacheLookup {self.status} {self.action} {self.key!r}>"

    # -- after the upstream ------------------------------------------------------------------

    def stale(self, condition: str) -> store.Entry | None:
        """proxy_cache_use_stale on an upstream failure: the expired entry to send instead
        (status becomes STALE), or None. `condition`: "error", "timeout", "invalid_header",
        "http_500", "http_502", "http_503", "http_504", "http_403", "http_404", "http_429"
        or "no_live"."""
        if self.status != EXPIRED or self.entry is None:
            return None
        if not policy.stale_allowed(self.settings.use_stale, condition, self.stale_error):
            return None
        self.status = STALE
        return self.entry

    def revalidation_headers(self) -> list[tuple[str, str]]:
        """proxy_cache_revalidate: If-Modified-Since / If-None-Match to send upstream for an
        EXPIRED entry (empty otherwise). The proxy must not pass the client's conditional
        and Range headers when the cache is used (ngx_http_proxy_cache_headers)."""
        if not self.settings.revalidate or self.status != EXPIRED or self.entry is None:
            return []
        h = self.entry.header
        return policy.revalidation_headers(h.last_modified, h.etag)

    # -- the end -------------------------------------------------------------------------------

    def close(self) -> None:
        """ngx_http_file_cache_free: give up the request's hold on the node (the updating
        flag if this request held it) and wake this worker's waiters. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.entry is not None:
            self.entry.close()  # a file kept open for a large body (never a shared copy)
        node = self.node
        if node is not None and node.slot >= 0 and (self.referenced or self.lock_time is not None):
            self.zone.index.release(
                node.slot,
                self.digest,
                referenced=self.referenced,
                lock_time=self.lock_time,
                min_uses=self.settings.min_uses,
            )
        held = self.lock_time is not None
        self.referenced = False
        self.lock_time = None
        if held:
            _wake(self.zone, self.digest)

    def __del__(self) -> None:
        # nginx's pool cleanup (ngx_http_file_cache_cleanup): a request that ends without
        # closing its lookup must not keep the node held or the entry locked.
        if not self.closed and (self.referenced or self.lock_time is not None):
            try:
                if self.lock_time is not None:
                    self.r.log(ALERT, "stalled cache updating, error:0")
                self.close()
            except Exception:
                pass

    def for_background(self) -> CacheLookup:
        """SERVE_AND_UPDATE: the lookup the background update continues with (it takes over
        the updating flag and the node; this one is then only for serving the stale
        entry). The update goes upstream as for EXPIRED (revalidation included)."""
        bg = CacheLookup(self.r, self.settings, self.zone, self.key, self.key_raw)
        bg.digest = self.digest
        bg.main_digest = self.main_digest
        bg.secondary = self.secondary
        bg.upstream_method = self.upstream_method
        bg.node = self.node
        bg.referenced = self.referenced
        bg.lock_time = self.lock_time
        bg.entry = self.entry
        bg.status = EXPIRED
        bg.action = UPSTREAM
        self.referenced = False
        self.lock_time = None
        return bg

    async def wait(self) -> None:
        """Wait (action WAIT) for the cache lock, or for a shared store's read; afterwards
        `action` is what to do (possibly WAIT again)."""
        if self.fetch_rv is not None:
            rv = self.fetch_rv
            self.fetch_rv = None
            try:
                entry = await self.zone.store.fetch(self.zone.file_path(self.digest.hex()),
                                                    self.key_raw, self.digest)
            except store.ReadError as exc:
                _read_failed(self, exc, rv)
                return
            _entry_read(self, entry, int(time.time()))
            return
        loop = asyncio.get_running_loop()
        left = self.wait_until - time.monotonic()
        if left <= 0:
            self.r.log(INFO, "cache lock timeout")
            self.lock_timed_out = True
            _reopen(self)
            return
        fut = self.zone.waiters.get(self.digest)
        if fut is None or fut.done():
            fut = self.zone.waiters[self.digest] = loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(fut), min(LOCK_POLL, left))
        except TimeoutError:
            pass
        node = self.node
        if node is not None and time.monotonic() < self.wait_until:
            ms = self.zone.index.lock_state(node.slot, self.digest, _now_ms())
            if ms > 0:
                return  # still locked: the caller waits again
        _reopen(self)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _wake(zone: Any, digest: bytes) -> None:
    fut = zone.waiters.pop(digest, None)
    if fut is not None and not fut.done():
        fut.set_result(None)


def _not_cached(r: Any) -> CacheLookup:
    lk = CacheLookup(r, None, None, "", b"")
    lk.status = None
    lk.cacheable = False
    lk.closed = True
    return lk


def start_lookup(r: Any, settings: Any, key: str | None = None) -> CacheLookup:
    """Look the request up (ngx_http_upstream_cache); never waits.

    key: the proxy's default cache key (nginx's: the upstream URL it requests, "http://" +
    $proxy_host + the URI sent), used when no proxy_cache_key is set.
    """
    if r.method not in settings.methods:
        return _not_cached(r)
    zone = settings.zone
    if zone is None:
        name = settings.zone_value(r) if settings.zone_value is not None else ""
        if not name or name == "off":
            return _not_cached(r)
        zone = settings.zones.get(name)
        if zone is None:
            r.log(ERROR, f'cache "{name}" not found')
            lk = _not_cached(r)
            lk.action = ACT_ERROR
            lk.error = 500
            return lk
    if settings.key is not None:
        key = settings.key(r)
    elif key is None:
        key = _fallback_key(r)
    lk = CacheLookup(r, settings, zone, key, store.key_bytes(key))
    if r.method == "HEAD" and settings.convert_head:
        lk.upstream_method = "GET"
    if settings.bypass and policy.declines(p(r) for p in settings.bypass):
        lk.status = BYPASS
        return lk
    _open(lk)
    return lk


async def lookup(r: Any, settings: Any, key: str | None = None) -> CacheLookup:
    """start_lookup, then wait for the cache lock as long as needed."""
    lk = start_lookup(r, settings, key)
    while lk.action == WAIT:
        await lk.wait()
    return lk


def _fallback_key(r: Any) -> str:
    """$scheme$proxy_host$request_uri when the proxy gave no key (tests, other callers)."""
    up = getattr(r, "upstream", None)
    getter = getattr(up, "var_proxy_host", None)
    host = getter() if getter is not None else r.host
    scheme = "https" if r.conn.is_ssl else "http"
    return f"{scheme}{host}{r.request_uri}"


def _delete_files(zone: Any, digests: Iterable[bytes]) -> None:
    for digest in digests:
        try:
            os.unlink(zone.file_path(digest.hex()))
        except OSError:
            pass
        zone.hot.drop(digest)


def _reopen(lk: CacheLookup) -> None:
    """After a lock wait: look at the node again (nginx re-runs ngx_http_file_cache_open)."""
    lk.action = UPSTREAM
    _open(lk)


def _open(lk: CacheLookup) -> None:
    """ngx_http_file_cache_open and ngx_http_upstream_cache's switch; sets status/action."""
    r = lk.r
    s = lk.settings
    zone = lk.zone
    idx = zone.index
    now = int(time.time())
    digest = lk.digest
    hot = zone.hot.get(digest)
    # A request already holding the node (after a lock wait) looks again without a new
    # reference, as nginx reuses c->node.
    node, evicted = idx.open(
        digest, now, zone.inactive, s.min_uses, ref=hot is None and not lk.referenced
    )
    if evicted:
        _delete_files(zone, evicted)
    lk.node = node
    lk.referenced = lk.referenced or node.referenced
    if node.rc == zn.NOMEM:
        r.log(ALERT, f'could not allocate node in cache keys zone "{zone.name}"')
        lk.action = ACT_ERROR
        lk.error = 500
        return
    entry = None
    if (
        hot is not None
        and node.rc == zn.OK
        and node.exists
        and not node.error
        and node.version == hot.version
    ):
        entry = hot
        h = hot.header
        if h.valid_sec >= now and (
            not h.vary or policy.variant_hash(lk.main_digest, h.vary, r.header_list) == h.variant
        ):
            # The hit path: one lock round in the zone, no system call.
            lk.entry = hot
            lk.status = HIT
            lk.action = SERVE
            return
    if not lk.referenced and node.slot >= 0:
        lk.referenced = idx.acquire(node.slot, digest)
    if entry is not None and zone.store is not None and entry.header.valid_sec < now:
        entry = None  # another instance may have stored a fresh one: ask the shared store
    if node.rc == zn.AGAIN:
        _outcome(lk, "scarce")
        return
    # A shared store (redis) may hold what this instance never saw: always look there.
    cold = idx.cold or zone.store is not None
    if node.rc == zn.OK:
        if node.error:
            lk.error = node.error
            _outcome(lk, "error")
            return
        test = node.exists or zone.store is not None
        rv = "miss"
    else:  # DECLINED: a new (or renewed) node
        if s.min_uses > 1:
            if not cold:
                _outcome(lk, "scarce")
                return
            test = True
            rv = "scarce"
        else:
            test = cold
            rv = "miss"
    if not test:
        _miss_or_lock(lk, rv)
        return
    if entry is not None:
        _use_entry(lk, entry, now, read=False)
        return
    if zone.store is not None:
        # The read is a network round trip: the caller awaits lk.wait(), which fetches.
        lk.fetch_rv = rv
        lk.action = WAIT
        return
    path = zone.file_path(digest.hex())
    try:
        entry = store.read_entry(path, lk.key_raw, digest)
    except store.ReadError as exc:
        _read_failed(lk, exc, rv)
        return
    _entry_read(lk, entry, now)


def _read_failed(lk: CacheLookup, exc: store.ReadError, rv: str) -> None:
    node = lk.node
    assert node is not None
    if exc.missing:
        if node.exists and node.slot >= 0:
            lk.zone.index.forget(node.slot, lk.digest)
        _miss_or_lock(lk, rv)
        return
    lk.r.log(_LEVELS.get(exc.level, CRIT), exc.message)
    if exc.message.startswith(("open()", "read()")):
        lk.action = ACT_ERROR
        lk.error = 500
        return
    _outcome(lk, "miss")  # nginx: NGX_DECLINED from the read, without the lock


def _entry_read(lk: CacheLookup, entry: store.Entry, now: int) -> None:
    node = lk.node
    assert node is not None
    entry.version = node.version
    idx = lk.zone.index
    if idx.cold and not node.exists and node.slot >= 0:
        idx.mark_exists(
            node.slot,
            lk.digest,
            store.size_on_disk(entry.length, lk.zone.bsize),
            entry.header.valid_sec,
        )
    _use_entry(lk, entry, now, read=True)


def _use_entry(lk: CacheLookup, entry: store.Entry, now: int, *, read: bool) -> None:
    """ngx_http_file_cache_read's checks on an entry: the variant, then the validity.
    `read`: the entry was just read (a candidate for the worker's HotCache)."""
    h = entry.header
    r = lk.r
    if h.vary:
        variant = policy.variant_hash(lk.main_digest, h.vary, r.header_list)
        if variant != h.variant:
            if read:
                entry.close()
            if lk.secondary:
                r.log(CRIT, f'cache file "{entry.path}" has incorrect vary hash')
                _outcome(lk, "miss")
                return
            # ngx_http_file_cache_reopen: the secondary key is the variant.
            _release_node(lk)
            lk.secondary = True
            lk.digest = variant
            lk.node = None
            _open(lk)
            return
    state = policy.entry_state(h.valid_sec, h.updating_sec, h.error_sec, now)
    if read:
        lk.zone.hot.put(entry)
    lk.entry = entry
    if not state.expired:
        _outcome(lk, "hit")
        return
    lk.stale_updating = state.stale_updating
    lk.stale_error = state.stale_error
    node = lk.node
    assert node is not None
    t = lk.zone.index.start_update(node.slot, lk.digest)
    if t >= 0:
        lk.lock_time = t
        _outcome(lk, "stale")
    else:
        _outcome(lk, "updating")


def _release_node(lk: CacheLookup) -> None:
    node = lk.node
    if node is not None and node.slot >= 0 and (lk.referenced or lk.lock_time is not None):
        lk.zone.index.release(
            node.slot,
            lk.digest,
            referenced=lk.referenced,
            lock_time=lk.lock_time,
            min_uses=lk.settings.min_uses,
        )
        if lk.lock_time is not None:
            _wake(lk.zone, lk.digest)
    lk.referenced = False
    lk.lock_time = None


def _miss_or_lock(lk: CacheLookup, rv: str) -> None:
    """The `done:` of ngx_http_file_cache_open: a miss goes through the cache lock."""
    s = lk.settings
    if rv != "miss" or not s.lock:
        _outcome(lk, rv)
        return
    node = lk.node
    assert node is not None
    t = lk.zone.index.lock_entry(node.slot, lk.digest, _now_ms(), int(s.lock_age * 1000))
    if t > 0:
        lk.lock_time = t
        _outcome(lk, "miss")
        return
    if lk.lock_timed_out or s.lock_timeout <= 0 or t < 0:
        _outcome(lk, "scarce")
        return
    if not lk.wait_until:
        lk.wait_until = time.monotonic() + s.lock_timeout
    lk.action = WAIT


def _outcome(lk: CacheLookup, opened: str) -> None:
    s = lk.settings
    out = policy.classify(
        opened,
        use_stale_updating="updating" in s.use_stale,
        stale_updating=lk.stale_updating,
        background_update=s.background_update,
    )
    lk.status = out.status
    lk.action = out.action
    if not out.cacheable or (
        out.action == UPSTREAM
        and not policy.range_cacheable(lk.r.headers.get("range"), s.max_range_offset)
    ):
        lk.cacheable = False


# -- storing ------------------------------------------------------------------------------


def store_writer(
    r: Any,
    settings: Any,
    lk: CacheLookup,
    status: int,
    headers: list[tuple[str, str]],
    *,
    raw_head: bytes | None = None,
    reason: str = "",
    expected_length: int | None = None,
) -> store.Writer | None:
    """The upstream answered: a Writer for its body when the response is to be cached
    (ngx_http_upstream_send_response's cache part), else None (and the lookup is closed).

    headers: the upstream response's header lines as received; raw_head: its head bytes
    as received (status line to the empty line; rebuilt from status/reason/headers if not
    given); expected_length: the body length announced (Content-Length), so that a short
    body is not stored.
    """
    if lk.status is None or lk.settings is None or not lk.cacheable or lk.closed:
        lk.close()
        return None
    zone = lk.zone
    now = int(time.time())
    fresh = policy.parse_freshness(headers, settings.ignore, now)
    no_cache = bool(settings.no_cache) and policy.declines(p(r) for p in settings.no_cache)
    decision = policy.decide(status, fresh, settings.valid, now, no_cache=no_cache)
    if not decision.cacheable:
        lk.close()
        return None
    last_modified, etag = policy.validators(status, headers)
    variant = b"\0" * 16
    if fresh.vary:
        variant = policy.variant_hash(lk.main_digest, fresh.vary, r.header_list)
    # ngx_http_file_cache_update_variant: stay on the secondary key only if the response
    # still varies the same way; otherwise go back to the main key.
    if lk.secondary and not (fresh.vary and variant == lk.digest):
        _release_node(lk)
        lk.secondary = False
        lk.digest = lk.main_digest
        lk.node = None
    if lk.node is None or lk.node.slot < 0 or not lk.referenced:
        # BYPASS never looked the key up; a switched variant neither.
        node, evicted = zone.index.open(lk.digest, now, zone.inactive, 1, ref=True)
        if evicted:
            _delete_files(zone, evicted)
        if node.rc == zn.NOMEM:
            r.log(ALERT, f'could not allocate node in cache keys zone "{zone.name}"')
            lk.close()
            return None
        lk.node = node
        lk.referenced = True
    head = raw_head if raw_head is not None else store.build_head(status, reason, headers)
    header = store.FileHeader(
        valid_sec=decision.valid_sec,
        updating_sec=fresh.updating_sec,
        error_sec=fresh.error_sec,
        last_modified=last_modified,
        date=now,
        etag=etag,
        vary=fresh.vary or "",
        variant=variant,
    )
    prefix = store.file_prefix(header, lk.key_raw, head)
    if header.body_start > store.MAX_BODY_START:
        lk.close()
        return None
    hexname = lk.digest.hex()
    final = zone.file_path(hexname)
    shared = zone.store  # the redis:// extension: no files, the store holds the bytes

    def committed(w: store.Writer, st: os.stat_result | None) -> None:
        node = lk.node
        assert node is not None
        body = w.memory_body
        if st is None:
            length = len(prefix) + len(body or b"")
            size = store.size_on_disk(length, zone.bsize)
        else:
            length = st.st_size
            size = store.fs_size(st, zone.bsize)
        version = zone.index.commit(
            node.slot, lk.digest, size, decision.valid_sec, referenced=lk.referenced
        )
        lk.referenced = False
        held = lk.lock_time is not None
        lk.lock_time = None
        if body is not None and version:
            entry = store.Entry(
                lk.digest, lk.key, final, header, status, reason, list(headers), body, -1,
                length, st.st_ino if st is not None else 0, version,
            )
            if shared is not None:
                entry.extra["head"] = head
            zone.hot.put(entry)
        else:
            zone.hot.drop(lk.digest)
        if shared is not None and body is not None:
            shared.publish(lk.digest, prefix + body)
        if held:
            _wake(zone, lk.digest)
        lk.close()

    def aborted(w: store.Writer) -> None:
        if w.error:
            r.log(CRIT, f'cache file "{final}" could not be written: {w.error}')
        lk.close()

    return store.Writer(
        final,
        zone.temp_dir if zone.use_temp_path else None,
        prefix,
        expected=expected_length,
        on_commit=committed,
        on_abort=aborted,
        memory_limit=shared.max_entry if shared is not None else None,
    )


def store_error(lk: CacheLookup, status: int, valid_sec: int = 0) -> bool:
    """Cache an error nginx produced itself (502/504 when the upstream failed, or an
    intercepted error) when proxy_cache_valid covers it: later requests get the status
    (HIT) until it expires. Closes the lookup. Returns whether it was cached."""
    s = lk.settings
    if lk.status is None or s is None or not lk.cacheable or lk.closed or lk.node is None:
        lk.close()
        return False
    valid = valid_sec
    if not valid:
        seconds = policy.valid_for_status(s.valid, status)
        valid = int(time.time()) + seconds if seconds else 0
    node = lk.node
    cached = False
    if valid and node.slot >= 0:
        lk.zone.index.release(
            node.slot,
            lk.digest,
            referenced=lk.referenced,
            lock_time=lk.lock_time,
            error=status,
            valid_sec=valid,
            min_uses=s.min_uses,
        )
        cached = True
        held = lk.lock_time is not None
        lk.referenced = False
        lk.lock_time = None
        if held:
            _wake(lk.zone, lk.digest)
    lk.close()
    return cached


def revalidated(
    r: Any, settings: Any, lk: CacheLookup, headers: list[tuple[str, str]]
) -> store.Entry | None:
    """The upstream answered 304 to a revalidation (proxy_cache_revalidate): the entry is
    fresh again (REVALIDATED); its new validity is written into its file header. Returns
    the entry to send, or None when this was no revalidation."""
    entry = lk.entry
    if not settings.revalidate or lk.status != EXPIRED or entry is None:
        return None
    now = int(time.time())
    not_modified = policy.parse_freshness(headers, settings.ignore, now)
    cached = policy.parse_freshness(entry.headers, settings.ignore, now)
    valid, updating, error = policy.revalidated_valid(
        not_modified, cached, settings.valid, entry.status, now
    )
    lk.status = REVALIDATED
    if valid:
        h = entry.header
        new = store.FileHeader(
            valid_sec=valid,
            updating_sec=updating,
            error_sec=error,
            last_modified=h.last_modified,
            date=now,
            crc32=h.crc32,
            valid_msec=h.valid_msec,
            header_start=h.header_start,
            body_start=h.body_start,
            etag=h.etag,
            vary=h.vary,
            variant=h.variant,
        )
        zone = lk.zone
        if zone.store is not None:
            updated = zone.store.update_header(lk.digest, entry, new)
        else:
            updated = store.update_header(entry.path, entry, new)
        if updated:
            entry.header = new
            node = lk.node
            if node is not None and node.slot >= 0:
                entry.version = lk.zone.index.touch_valid(node.slot, lk.digest, valid)
                lk.zone.hot.put(entry)
    return entry


__all__ = [
    "BYPASS",
    "EXPIRED",
    "MISS",
    "REVALIDATED",
    "SERVE",
    "SERVE_AND_UPDATE",
    "STALE",
    "UPSTREAM",
    "WAIT",
    "CacheLookup",
    "lookup",
    "revalidated",
    "start_lookup",
    "store_error",
    "store_writer",
]
