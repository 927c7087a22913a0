"""The cache loader and the cache manager (nginx's "cache loader process" and "cache manager
process", ngx_http_file_cache_loader / ngx_http_file_cache_manager).

pyngx runs them in one designated worker, worker 0 (respawned with the same index), in a
thread of their own: the shared KeysZone makes their work visible to every worker, and a
thread keeps their file system calls (walking the cache, unlinking) off the event loop that
serves requests. With `master_process off` the single process is worker 0.

Loader: walks the cache directory once after start, in batches of `loader_files` files or
`loader_threshold` of work, pausing `loader_sleep` between them, and indexes every cache file
(name = MD5 of its key). It starts at once (nginx waits a minute); until it has finished the
zone is "cold": a request whose key is not in the zone yet still looks for its file on disk,
so hits survive a restart from the first request (as in nginx). Files it cannot use (not a
cache file name, smaller than the header, no room in the zone) are deleted, as nginx does;
temporary files (".NNNNNNNNNN") and directories named "temp" are left alone.

Manager: repeatedly (a) removes the entries not used for `inactive` (LRU first) with their
files, then (b) while the cache is over `max_size`, the zone over its watermark (it filled up
once), or the file system below `min_free`, removes the least recently used entries. Each
round does at most `manager_files` files or `manager_threshold` of work, then sleeps
`manager_sleep` (or until the next entry becomes inactive, at most 10 s).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pyngx.core.log import ALERT, CRIT, NOTICE
from pyngx.http.cache.store import HEADER_SIZE, fs_size

Log = Callable[[int, str], None]
_HEX = frozenset("0123456789abcdefABCDEF")


def _is_temp(name: str) -> bool:
    """nginx's temporary files in the cache end in a dot and 10 digits."""
    return len(name) >= 32 + 11 and name[-11] == "." and name[-10:].isdigit()


def _delete(path: str, log: Log) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log(CRIT, f'unlink() "{path}" failed ({exc.errno}: {exc.strerror})')


class _Pacer:
    """nginx's files/threshold/sleep pacing of the loader and the manager."""

    def __init__(self, files: int, threshold: float, sleep: float, stop: threading.Event):
        self.files = files
        self.threshold = threshold
        self.sleep = sleep
        self.stop = stop
        self.count = 0
        self.last = time.monotonic()

    def tick(self) -> None:
        self.count += 1
        if self.count >= self.files or time.monotonic() - self.last >= self.threshold:
            self.stop.wait(self.sleep)
            self.count = 0
            self.last = time.monotonic()


def load(cp: Any, log: Log, stop: threading.Event | None = None) -> bool:
    """ngx_http_file_cache_loader for one cache; True when the walk completed."""
    idx = cp.index
    if cp.redis is not None or not idx.start_loading(os.getpid()):
        return False
    stop = stop or threading.Event()
    pacer = _Pacer(max(1, cp.loader_files), cp.loader_threshold, cp.loader_sleep, stop)
    complete = False
    fail_time = [0]
    try:
        for dirpath, dirnames, filenames in os.walk(cp.path):
            dirnames[:] = [d for d in dirnames if d != "temp"]
            for name in filenames:
                if stop.is_set():
                    return False
                _add_file(cp, os.path.join(dirpath, name), log, fail_time)
                pacer.tick()
        complete = True
    finally:
        idx.done_loading(complete=complete)
    size = idx.stats()[0]
    log(NOTICE, f"http file cache: {cp.path} {size / (1024 * 1024):.3f}M, bsize: {cp.bsize}")
    return True


def _add_file(cp: Any, path: str, log: Log, fail_time: list[int]) -> None:
    """ngx_http_file_cache_manage_file: index a cache file, or delete what is not one."""
    name = os.path.basename(path)
    if _is_temp(name):
        return
    try:
        st = os.lstat(path)
    except OSError:
        return
    import stat as st_mod

    if not st_mod.S_ISREG(st.st_mode):
        _delete(path, log)  # nginx's spec_handler
        return
    hexname = path[-32:]
    if len(path) < 32 or not set(hexname) <= _HEX:
        _delete(path, log)
        return
    if st.st_size < HEADER_SIZE:
        log(CRIT, f'cache file "{path}" is too small')
        _delete(path, log)
        return
    now = int(time.time())
    if not cp.index.add(bytes.fromhex(hexname), fs_size(st, cp.bsize), now, cp.inactive):
        if fail_time[0] != now:
            fail_time[0] = now
            log(ALERT, f'could not allocate node in cache keys zone "{cp.name}"')
        _delete(path, log)


def _available(path: str) -> int:
    """ngx_fs_available: bytes free for unprivileged users."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def manage(cp: Any, log: Log, stop: threading.Event | None = None) -> float:
    """One round of ngx_http_file_cache_manager; returns the seconds to sleep."""
    idx = cp.index
    stop = stop or threading.Event()
    start = time.monotonic()
    files = 0
    next_run = cp.manager_sleep
    # Inactive entries, LRU first.
    while True:
        limit = max(1, cp.manager_files - files)
        deleted, locked, wait = idx.expire_inactive(int(time.time()), cp.inactive, limit)
        for digest in deleted:
            _forget_file(cp, digest, log)
        for digest, count in locked:
            log(ALERT, f"ignore long locked inactive cache entry {digest.hex()}, count:{count}")
        files += len(deleted) + len(locked)
        if wait > 0:
            next_run = float(wait)
            break
        if stop.is_set() or files >= cp.manager_files:
            return cp.manager_sleep
        if time.monotonic() - start >= cp.manager_threshold:
            return cp.manager_sleep
    # Size, zone watermark, free space.
    while True:
        size, count, watermark = idx.stats()
        under = (cp.max_size is None or size < cp.max_size) and count < watermark
        if under and (not cp.min_free or _available(cp.path) > cp.min_free):
            break
        digest, wait = idx.forced_expire()
        if digest is not None:
            _forget_file(cp, digest, log)
        if wait > 0:
            next_run = float(wait)
            break
        if stop.is_set():
            break
        files += 1
        if files >= cp.manager_files or time.monotonic() - start >= cp.manager_threshold:
            next_run = cp.manager_sleep
            break
    return next_run


def _forget_file(cp: Any, digest: bytes, log: Log) -> None:
    # The workers' HotCache copies need no dropping: the node is gone, and a new one never
    # shows the version they were read at.
    if cp.redis is None:
        _delete(cp.file_path(digest.hex()), log)


class CacheProcesses:
    """The loader and the manager of every cache, in one thread of worker 0."""

    def __init__(self, caches: list[Any], log: Log) -> None:
        self.caches = [cp for cp in caches if cp.index is not None]
        self.log = log
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pyngx-cache", daemon=True)

    def start(self) -> None:
        if self.caches:
            self.thread.start()

    def cancel(self) -> None:
        self.stop.set()

    def _run(self) -> None:
        try:
            for cp in self.caches:
                if self.stop.is_set():
                    return
                load(cp, self.log, self.stop)
            while not self.stop.is_set():
                sleep = 10.0
                for cp in self.caches:
                    if cp.redis is not None:
                        continue
                    sleep = min(sleep, manage(cp, self.log, self.stop))
                self.stop.wait(sleep)
        except Exception as exc:  # the cache must never take the worker down
            self.log(ALERT, f"cache manager failed: {type(exc).__name__}: {exc}")


def start_cache_processes(worker: Any) -> CacheProcesses | None:
    """Called by every worker at start; only worker 0 runs the loader and the manager."""
    http = getattr(worker, "http", None)
    caches = getattr(http, "caches", None) if http is not None else None
    if not caches:
        return None
    for cp in caches:
        if cp.store is not None:
            cp.store.log = worker.cycle.error_log.log
    if worker.index != 0:
        return None
    procs = CacheProcesses(caches, worker.cycle.error_log.log)
    procs.start()
    return procs


__all__ = ["CacheProcesses", "load", "manage", "start_cache_processes"]
