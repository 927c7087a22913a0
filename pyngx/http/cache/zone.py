"""`keys_zone=name:size`: the index of cache entries shared by every worker process.

nginx keeps one node per cache key in a shared-memory red-black tree with an LRU queue
(ngx_http_file_cache_node_t, ngx_http_file_cache_sh_t). Here a zone is an anonymous shared
mapping made when the configuration is loaded, in the master before the workers fork (as
pyngx/upstream/zone.py and pyngx/stream/limit_conn.py do), seen as an array of int64 cells
and guarded by one multiprocessing.Lock:

    header   HEADER_CELLS cells: count, free list, LRU head/tail, cold, loading, size, ...
    nodes    NODE_CELLS cells each (below): fixed slots, never moved, so an index names a node
    buckets  one cell per bucket: the first node of its hash chain (-1: empty)

A node is found by chaining on its MD5 digest (stored as two int64), kept in an LRU list
(head = most recently used) and, when free, in a free list. As with nginx's slab pool the
zone holds a bounded number of nodes: NODE_BUDGET bytes of `size` per node, about 8000 per
megabyte as nginx documents. When none is free, the least recently used unreferenced node is
evicted ("forced expire"): its file must then be removed by the caller, outside the lock.

Every method takes the lock itself. Times are integers: seconds for `expire`/`valid_sec`,
milliseconds for `lock_time` (the wall clock, the same in every process).
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
from array import array
from collections.abc import Iterator

# Header cells.
H_MAGIC, H_COUNT, H_FREE, H_HEAD, H_TAIL, H_COLD, H_LOADING, H_SIZE = range(8)
H_WATERMARK, H_VERSION, H_NODES, H_BUCKETS = range(8, 12)
HEADER_CELLS = 16
MAGIC = 0x70796E6763616368  # "pyngcach"

# Node cells.
N_D0, N_D1, N_HNEXT, N_PREV, N_NEXT, N_USES, N_COUNT, N_FLAGS = range(8)
N_ERROR, N_VERSION, N_EXPIRE, N_VALID, N_LOCK_TIME, N_FS_SIZE = range(8, 14)
NODE_CELLS = 14

# Node flags.
F_USED = 1  # in the tree (not on the free list)
F_EXISTS = 2  # a cache file exists for the key
F_UPDATING = 4  # a request is fetching the entry (proxy_cache_lock / stale updating)
F_DELETING = 8  # the manager is removing its file

# nginx: "one megabyte zone can store about 8 thousand keys".
NODE_BUDGET = 128
MIN_ZONE_SIZE = 8192  # nginx: `keys zone "..." is too small` below this
MAX_USES = 1023  # nginx keeps `uses` in 10 bits

_DIGEST = struct.Struct("<qq")

# Results of `open` (ngx_http_file_cache_exists).
OK, DECLINED, AGAIN, NOMEM = 0, 1, 2, 3


class NodeState:
    """What `open` saw, under the lock (ngx_http_cache_t's copy of its node).

    rc: OK, DECLINED (new or renewed node), AGAIN (min_uses not reached), NOMEM;
    referenced: `open` counted this request on the node (to be released).
    """

    __slots__ = ("rc", "slot", "exists", "error", "valid_sec", "version", "updating", "uses",
                 "referenced")

    def __init__(
        self,
        rc: int,
        slot: int,
        exists: bool = False,
        error: int = 0,
        valid_sec: int = 0,
        version: int = 0,
        updating: bool = False,
        uses: int = 0,
        referenced: bool = False,
    ) -> None:
        self.rc = rc
        self.slot = slot
        self.exists = exists
        self.error = error
        self.valid_sec = valid_sec
        self.version = version
        self.updating = updating
        self.uses = uses
        self.referenced = referenced

    def __repr__(self) -> str:
        return (
            f"<NodeState rc={self.rc} slot={self.slot} exists={self.exists} "
            f"error={self.error} version={self.version} uses={self.uses}>"
        )


class KeysZone:
    """The shared index of one `proxy_cache_path`."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        nodes = max(8, size // NODE_BUDGET)
        buckets = nodes
        cells = HEADER_CELLS + nodes * NODE_CELLS + buckets
        self._map = mmap.mmap(-1, cells * 8)
        self.c = memoryview(self._map).cast("q")
        self.lock = multiprocessing.Lock()
        self.nodes = nodes
        self.nbuckets = buckets
        self._bucket_base = HEADER_CELLS + nodes * NODE_CELLS
        self._init()

    # -- layout ----------------------------------------------------------------------------

    def _init(self) -> None:
        c = self.c
        c[H_MAGIC] = MAGIC
        c[H_COUNT] = 0
        c[H_HEAD] = c[H_TAIL] = -1
        c[H_COLD] = 1
        c[H_LOADING] = 0
        c[H_SIZE] = 0
        c[H_WATERMARK] = self.nodes
        c[H_VERSION] = 0
        c[H_NODES] = self.nodes
        c[H_BUCKETS] = self.nbuckets
        # Free list through N_NEXT, in slot order (the mapping starts zeroed: flags 0).
        n = self.nodes
        nexts = array("q", range(1, n + 1))
        nexts[-1] = -1
        start = HEADER_CELLS + N_NEXT
        c[start : start + n * NODE_CELLS : NODE_CELLS] = memoryview(nexts)
        c[H_FREE] = 0
        bb = self._bucket_base
        c[bb : bb + self.nbuckets] = memoryview(array("q", [-1]) * self.nbuckets)

    @staticmethod
    def _base(slot: int) -> int:
        return HEADER_CELLS + slot * NODE_CELLS

    def _bucket(self, d0: int) -> int:
        return self._bucket_base + d0 % self.nbuckets

    def _find(self, d0: int, d1: int) -> int:
        c = self.c
        i = c[self._bucket(d0)]
        while i >= 0:
            b = HEADER_CELLS + i * NODE_CELLS
            if c[b] == d0 and c[b + 1] == d1:
                return i
            i = c[b + N_HNEXT]
        return -1

    def _lru_unlink(self, i: int) -> None:
        c = self.c
        b = self._base(i)
        prev, nxt = c[b + N_PREV], c[b + N_NEXT]
        if prev >= 0:
            c[self._base(prev) + N_NEXT] = nxt
        else:
            c[H_HEAD] = nxt
        if nxt >= 0:
            c[self._base(nxt) + N_PREV] = prev
        else:
            c[H_TAIL] = prev

    def _lru_push_head(self, i: int) -> None:
        c = self.c
        b = self._base(i)
        head = c[H_HEAD]
        c[b + N_PREV] = -1
        c[b + N_NEXT] = head
        if head >= 0:
            c[self._base(head) + N_PREV] = i
        else:
            c[H_TAIL] = i
        c[H_HEAD] = i

    def _alloc(self, d0: int, d1: int) -> int:
        c = self.c
        i = c[H_FREE]
        if i < 0:
            return -1
        b = self._base(i)
        c[H_FREE] = c[b + N_NEXT]
        for k in range(NODE_CELLS):
            c[b + k] = 0
        c[b + N_D0] = d0
        c[b + N_D1] = d1
        c[b + N_FLAGS] = F_USED
        bucket = self._bucket(d0)
        c[b + N_HNEXT] = c[bucket]
        c[bucket] = i
        c[H_COUNT] += 1
        return i

    def _free(self, i: int) -> None:
        """Remove node i from its chain and the LRU list; it joins the free list."""
        c = self.c
        b = self._base(i)
        self._lru_unlink(i)
        bucket = self._bucket(c[b + N_D0])
        j = c[bucket]
        if j == i:
            c[bucket] = c[b + N_HNEXT]
        else:
            while j >= 0:
                jb = self._base(j)
                if c[jb + N_HNEXT] == i:
                    c[jb + N_HNEXT] = c[b + N_HNEXT]
                    break
                j = c[jb + N_HNEXT]
        c[b + N_FLAGS] = 0
        c[b + N_NEXT] = c[H_FREE]
        c[H_FREE] = i
        c[H_COUNT] -= 1

    def _evict_tail(self, tries: int = 20) -> tuple[bytes, int] | None:
        """ngx_http_file_cache_forced_expire's victim: the LRU tail not in use (of the last
        `tries`). Returns (digest, flags) of the node freed, or None."""
        c = self.c
        i = c[H_TAIL]
        while i >= 0 and tries > 0:
            b = self._base(i)
            if c[b + N_COUNT] == 0 and not c[b + N_FLAGS] & F_DELETING:
                digest = _DIGEST.pack(c[b + N_D0], c[b + N_D1])
                flags = c[b + N_FLAGS]
                if flags & F_EXISTS:
                    c[H_SIZE] -= c[b + N_FS_SIZE]
                self._free(i)
                return digest, flags
            tries -= 1
            i = c[b + N_PREV]
        return None

    def _checked(self, slot: int, digest: bytes) -> int:
        """The base of `slot` if it still holds `digest` (a referenced node cannot move)."""
        b = self._base(slot)
        d0, d1 = _DIGEST.unpack(digest)
        c = self.c
        if c[b + N_FLAGS] & F_USED and c[b] == d0 and c[b + 1] == d1:
            return b
        return -1

    # -- request side ----------------------------------------------------------------------

    def current(self, slot: int, digest: bytes, version: int) -> bool:
        """Does `slot` still hold `digest`'s stored response `version` (an existing, non-error
        entry)? Read without the lock: versions are unique and written under it before the
        entry is published, and the digest is read last, so a node reused meanwhile for
        another key shows a different digest. For the replayed hits of cache/replay.py."""
        b = HEADER_CELLS + slot * NODE_CELLS
        c = self.c
        if c[b + N_VERSION] != version or c[b + N_FLAGS] & (F_EXISTS | F_USED) != (
            F_EXISTS | F_USED
        ) or c[b + N_ERROR]:
            return False
        d0, d1 = _DIGEST.unpack(digest)
        return c[b] == d0 and c[b + 1] == d1

    def touch(self, slot: int, digest: bytes, now: int, inactive: int) -> bool:
        """A hit served without `open` (cache/replay.py), once a second: what `open` does to
        a found node (its `inactive` deadline, its LRU place, its use count), without a
        reference. False when the slot no longer holds `digest`."""
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return False
            c = self.c
            expire = now + inactive
            if c[b + N_EXPIRE] != expire:
                self._lru_unlink(slot)
                self._lru_push_head(slot)
                c[b + N_EXPIRE] = expire
            if c[b + N_USES] < MAX_USES:
                c[b + N_USES] += 1
            return True

    def open(
        self,
        digest: bytes,
        now: int,
        inactive: int,
        min_uses: int,
        *,
        ref: bool = True,
    ) -> tuple[NodeState, list[bytes]]:
        """ngx_http_file_cache_exists: find or create the key's node, count a use, refresh
        its place in the LRU list. With `ref`, the request holds the node until `release`
        or `commit` (it cannot be evicted meanwhile).

        Returns the node's state and the digests of nodes evicted to make room (their files
        are the caller's to delete).
        """
        d0, d1 = _DIGEST.unpack(digest)
        c = self.c
        evicted: list[bytes] = []
        with self.lock:
            i = c[self._bucket_base + d0 % self.nbuckets]
            while i >= 0:
                b = HEADER_CELLS + i * NODE_CELLS
                if c[b] == d0 and c[b + 1] == d1:
                    break
                i = c[b + N_HNEXT]
            if i >= 0:
                expire = now + inactive
                # Within one second the order cannot change: skip the relinking (the list
                # stays sorted by `expire`, which the manager relies on).
                if c[b + N_EXPIRE] != expire:
                    self._lru_unlink(i)
                    self._lru_push_head(i)
                    c[b + N_EXPIRE] = expire
                uses = c[b + N_USES]
                if uses < MAX_USES:
                    uses += 1
                    c[b + N_USES] = uses
                if ref:
                    c[b + N_COUNT] += 1
                flags = c[b + N_FLAGS]
                error = c[b + N_ERROR]
                if error:
                    if c[b + N_VALID] < now:
                        self._renew(b)
                        return NodeState(DECLINED, i, False, 0, 0, 0, False, uses, ref), evicted
                    valid = c[b + N_VALID]
                    return NodeState(OK, i, False, error, valid, 0, False, uses, ref), evicted
                exists = bool(flags & F_EXISTS)
                if exists or uses >= min_uses:
                    return (
                        NodeState(
                            OK,
                            i,
                            exists,
                            0,
                            c[b + N_VALID],
                            c[b + N_VERSION],
                            bool(flags & F_UPDATING),
                            uses,
                            ref,
                        ),
                        evicted,
                    )
                return NodeState(AGAIN, i, False, 0, 0, 0, False, uses, ref), evicted
            i = self._alloc(d0, d1)
            if i < 0:
                # ngx_http_file_cache_set_watermark, then forced expire and one more try.
                count = c[H_COUNT]
                c[H_WATERMARK] = count - count // 8
                victim = self._evict_tail()
                if victim is not None:
                    if victim[1] & F_EXISTS:
                        evicted.append(victim[0])
                    i = self._alloc(d0, d1)
                if i < 0:
                    return NodeState(NOMEM, -1), evicted
            b = self._base(i)
            c[b + N_USES] = 1
            c[b + N_COUNT] = 1 if ref else 0
            c[b + N_EXPIRE] = now + inactive
            self._lru_push_head(i)
            return NodeState(DECLINED, i, uses=1, referenced=ref), evicted

    def _renew(self, b: int) -> None:
        c = self.c
        c[b + N_ERROR] = 0
        c[b + N_VALID] = 0
        flags = c[b + N_FLAGS]
        if flags & F_EXISTS:
            c[H_SIZE] -= c[b + N_FS_SIZE]
        c[b + N_FLAGS] = flags & ~F_EXISTS
        c[b + N_FS_SIZE] = 0

    def acquire(self, slot: int, digest: bytes) -> bool:
        """Hold a node found by `open(..., ref=False)` (False: it was evicted meanwhile)."""
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return False
            self.c[b + N_COUNT] += 1
            return True

    def lock_entry(self, slot: int, digest: bytes, now_ms: int, lock_age_ms: int) -> int:
        """ngx_http_file_cache_lock: take the updating lock unless another request holds it
        and its lock_age has not passed. Returns the lock time taken (> 0), or 0 when
        someone else holds it, or -1 when the node is gone."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return -1
            flags = c[b + N_FLAGS]
            if not flags & F_UPDATING or c[b + N_LOCK_TIME] - now_ms <= 0:
                lock_time = now_ms + lock_age_ms
                c[b + N_FLAGS] = flags | F_UPDATING
                c[b + N_LOCK_TIME] = lock_time
                return lock_time
            return 0

    def start_update(self, slot: int, digest: bytes) -> int:
        """ngx_http_file_cache_read on an expired entry: become its updater unless another
        request is. Returns the node's lock time (>= 0) when we became the updater, -1 when
        it is being updated (UPDATING), -2 when the node is gone."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return -2
            flags = c[b + N_FLAGS]
            if flags & F_UPDATING:
                return -1
            c[b + N_FLAGS] = flags | F_UPDATING
            return int(c[b + N_LOCK_TIME])

    def lock_state(self, slot: int, digest: bytes, now_ms: int) -> int:
        """ngx_http_file_cache_lock_wait's test: milliseconds left while the entry is
        locked by another request, 0 when waiting is over."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return 0
            left = c[b + N_LOCK_TIME] - now_ms
            if c[b + N_FLAGS] & F_UPDATING and left > 0:
                return int(left)
            return 0

    def mark_exists(self, slot: int, digest: bytes, fs_size: int, valid_sec: int) -> None:
        """A cold cache found the key's file on disk before the loader did (nginx's
        `if (cache->sh->cold)` block in ngx_http_file_cache_read)."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0 or c[b + N_FLAGS] & F_EXISTS:
                return
            c[b + N_FLAGS] |= F_EXISTS
            c[b + N_USES] = max(1, c[b + N_USES])
            c[b + N_FS_SIZE] = fs_size
            c[b + N_VALID] = valid_sec
            c[H_SIZE] += fs_size

    def commit(
        self, slot: int, digest: bytes, fs_size: int, valid_sec: int, *, referenced: bool
    ) -> int:
        """ngx_http_file_cache_update: the key's file was renamed into place. Returns the
        entry's new version (bumped on every store, so per-worker copies can tell)."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return 0
            if referenced and c[b + N_COUNT] > 0:
                c[b + N_COUNT] -= 1
            c[b + N_ERROR] = 0
            c[H_SIZE] += fs_size - (c[b + N_FS_SIZE] if c[b + N_FLAGS] & F_EXISTS else 0)
            c[b + N_FS_SIZE] = fs_size
            c[b + N_VALID] = valid_sec
            c[b + N_FLAGS] = (c[b + N_FLAGS] | F_EXISTS) & ~F_UPDATING
            c[H_VERSION] += 1
            version = c[H_VERSION]
            c[b + N_VERSION] = version
            return int(version)

    def touch_valid(self, slot: int, digest: bytes, valid_sec: int) -> int:
        """A revalidated entry (304): new validity, new version. Returns the version."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return 0
            c[b + N_VALID] = valid_sec
            c[H_VERSION] += 1
            c[b + N_VERSION] = c[H_VERSION]
            return int(c[H_VERSION])

    def release(
        self,
        slot: int,
        digest: bytes,
        *,
        referenced: bool,
        lock_time: int | None,
        error: int = 0,
        valid_sec: int = 0,
        min_uses: int = 1,
    ) -> None:
        """ngx_http_file_cache_free: the request is done with the node without storing.

        `lock_time`: the lock time this request took as the updater (the flag is cleared
        only if nobody took the lock over since). `error`/`valid_sec`: a cached error
        (proxy_cache_valid 502 ...). A node that never got a file goes away at once when
        min_uses is 1, as nginx's does.
        """
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return
            if referenced and c[b + N_COUNT] > 0:
                c[b + N_COUNT] -= 1
            flags = c[b + N_FLAGS]
            if lock_time is not None and flags & F_UPDATING and c[b + N_LOCK_TIME] == lock_time:
                flags &= ~F_UPDATING
                c[b + N_FLAGS] = flags
            if error:
                c[b + N_ERROR] = error
                if valid_sec:
                    c[b + N_VALID] = valid_sec
            elif not flags & F_EXISTS and c[b + N_COUNT] == 0 and min_uses == 1:
                self._free(self._slot_of(b))

    @staticmethod
    def _slot_of(b: int) -> int:
        return (b - HEADER_CELLS) // NODE_CELLS

    def forget(self, slot: int, digest: bytes) -> None:
        """The key's file turned out missing or unusable: the node no longer has one."""
        c = self.c
        with self.lock:
            b = self._checked(slot, digest)
            if b < 0:
                return
            flags = c[b + N_FLAGS]
            if flags & F_EXISTS:
                c[H_SIZE] -= c[b + N_FS_SIZE]
            c[b + N_FLAGS] = flags & ~F_EXISTS
            c[b + N_FS_SIZE] = 0
            c[b + N_VERSION] = 0

    def peek(self, digest: bytes) -> dict[str, int] | None:
        """A node's fields (tests and diagnostics)."""
        d0, d1 = _DIGEST.unpack(digest)
        with self.lock:
            i = self._find(d0, d1)
            if i < 0:
                return None
            b = self._base(i)
            c = self.c
            return {
                "slot": i,
                "uses": c[b + N_USES],
                "count": c[b + N_COUNT],
                "flags": c[b + N_FLAGS],
                "error": c[b + N_ERROR],
                "version": c[b + N_VERSION],
                "expire": c[b + N_EXPIRE],
                "valid_sec": c[b + N_VALID],
                "lock_time": c[b + N_LOCK_TIME],
                "fs_size": c[b + N_FS_SIZE],
            }

    # -- loader and manager side -----------------------------------------------------------

    @property
    def cold(self) -> bool:
        return bool(self.c[H_COLD])

    def set_cold(self, cold: bool) -> None:
        self.c[H_COLD] = int(cold)

    def start_loading(self, pid: int) -> bool:
        """Only one process loads a cold cache (nginx's atomic cmp_set on sh->loading)."""
        c = self.c
        with self.lock:
            if not c[H_COLD] or c[H_LOADING]:
                return False
            c[H_LOADING] = pid
            return True

    def done_loading(self, *, complete: bool) -> None:
        with self.lock:
            if complete:
                self.c[H_COLD] = 0
            self.c[H_LOADING] = 0

    def stats(self) -> tuple[int, int, int]:
        """(total size of the files in bytes, nodes in use, watermark)."""
        c = self.c
        with self.lock:
            return int(c[H_SIZE]), int(c[H_COUNT]), int(c[H_WATERMARK])

    def add(self, digest: bytes, fs_size: int, now: int, inactive: int) -> bool:
        """ngx_http_file_cache_add: the loader found the key's file. False: no room."""
        d0, d1 = _DIGEST.unpack(digest)
        c = self.c
        with self.lock:
            i = self._find(d0, d1)
            if i < 0:
                i = self._alloc(d0, d1)
                if i < 0:
                    count = c[H_COUNT]
                    c[H_WATERMARK] = count - count // 8
                    return False
                b = self._base(i)
                c[b + N_USES] = 1
                c[b + N_FLAGS] = F_USED | F_EXISTS
                c[b + N_FS_SIZE] = fs_size
                # The validity is in the file: a later read fills it in (N_VALID 0 means
                # "unknown", and lookups read the file then).
                c[H_SIZE] += fs_size
            else:
                self._lru_unlink(i)
            c[self._base(i) + N_EXPIRE] = now + inactive
            self._lru_push_head(i)
            return True

    def expire_inactive(
        self, now: int, inactive: int, limit: int
    ) -> tuple[list[bytes], list[tuple[bytes, int]], int]:
        """ngx_http_file_cache_expire, one batch: remove nodes not used for `inactive`,
        LRU first, at most `limit`. Returns (digests whose files to delete, (digest, count)
        of long-locked entries moved back to the head, seconds until the next expiry (0:
        more to do now, at most 10))."""
        c = self.c
        files: list[bytes] = []
        locked: list[tuple[bytes, int]] = []
        done = 0
        with self.lock:
            while True:
                i = c[H_TAIL]
                if i < 0:
                    return files, locked, 10
                b = self._base(i)
                wait = c[b + N_EXPIRE] - now
                if wait > 0:
                    return files, locked, min(int(wait), 10)
                digest = _DIGEST.pack(c[b + N_D0], c[b + N_D1])
                if c[b + N_COUNT] == 0:
                    if c[b + N_FLAGS] & F_EXISTS:
                        c[H_SIZE] -= c[b + N_FS_SIZE]
                        files.append(digest)
                    self._free(i)
                else:
                    # Abnormally exited workers may leave entries referenced: nginx moves
                    # them to the head rather than removing what may be in use.
                    self._lru_unlink(i)
                    c[b + N_EXPIRE] = now + inactive
                    self._lru_push_head(i)
                    locked.append((digest, int(c[b + N_COUNT])))
                done += 1
                if done >= limit:
                    return files, locked, 0

    def forced_expire(self) -> tuple[bytes | None, int]:
        """One node off the LRU tail to make room (max_size, min_free, a full zone).
        Returns (digest of a file to delete or None, wait): wait 0 means a node went,
        1 that every candidate is in use, 10 that the zone is empty."""
        with self.lock:
            if self.c[H_TAIL] < 0:
                return None, 10
            victim = self._evict_tail()
            if victim is None:
                return None, 1
            return (victim[0] if victim[1] & F_EXISTS else None), 0

    def digests(self) -> Iterator[bytes]:
        """Every key in the zone, most recently used first (tests, diagnostics)."""
        c = self.c
        with self.lock:
            out = []
            i = c[H_HEAD]
            while i >= 0:
                b = self._base(i)
                out.append(_DIGEST.pack(c[b + N_D0], c[b + N_D1]))
                i = c[b + N_NEXT]
        return iter(out)


# Zones survive a reload when their name, size, path and levels stay the same, as nginx's
# shared memory does: the master keeps them here and hands the same mapping to the new
# workers, so the index (and the hits) outlive `nginx -s reload`.
_LIVE: dict[str, tuple[tuple[object, ...], KeysZone]] = {}


def shared_zone(name: str, size: int, path: str, levels: tuple[int, ...]) -> KeysZone:
    """The zone for this configuration: the live one when nothing that shapes it changed."""
    ident = (size, path, levels)
    live = _LIVE.get(name)
    if live is not None and live[0] == ident:
        return live[1]
    zone = KeysZone(name, size)
    _LIVE[name] = (ident, zone)
    return zone


__all__ = [
    "AGAIN",
    "DECLINED",
    "F_EXISTS",
    "F_UPDATING",
    "MIN_ZONE_SIZE",
    "NOMEM",
    "OK",
    "KeysZone",
    "NodeState",
    "shared_zone",
]
