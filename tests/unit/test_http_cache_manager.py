"""The cache loader and manager (pyngx/http/cache/manager.py)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

from pyngx.core.log import ALERT, CRIT, NOTICE
from pyngx.http.cache import manager, store
from tests.unit._http_cache_fakes import fetch, load, request


def make(tmp_path: Path, params: str = "") -> tuple[Any, Any]:
    c = load(
        tmp_path,
        f"proxy_cache_path cache levels=1:2 keys_zone=z:1m {params};\n"
        "server { listen 127.0.0.1:1; location / { proxy_cache z; proxy_cache_valid 1h;"
        " proxy_cache_key $uri; } }",
    )
    return c, c.http.caches[0]  # type: ignore[union-attr]


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, text: str) -> None:
        self.lines.append((level, text))

    def text(self, level: int) -> str:
        return "\n".join(t for lv, t in self.lines if lv == level)


def write_entry(cp: Any, key: str, body: bytes = b"x" * 100) -> str:
    kb = key.encode()
    path = cp.file_path(hashlib.md5(kb).hexdigest())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = store.FileHeader(valid_sec=int(time.time()) + 3600)
    with open(path, "wb") as f:
        f.write(store.file_prefix(h, kb, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n") + body)
    return path


def test_loader_indexes_files_and_deletes_what_is_not_a_cache_file(tmp_path: Path) -> None:
    _c, cp = make(tmp_path, "loader_files=2 loader_sleep=1ms")
    paths = [write_entry(cp, f"/k{i}") for i in range(5)]
    junk = Path(cp.path) / "README"
    junk.write_text("not mine")
    small = Path(cp.path) / ("0" * 32)
    small.write_bytes(b"short")
    temp = Path(paths[0] + ".0000000001")
    temp.write_bytes(b"being written")
    (Path(cp.path) / "temp").mkdir()
    kept = Path(cp.path) / "temp" / "whatever"
    kept.write_bytes(b"left alone")
    log = Log()
    assert cp.index.cold
    assert manager.load(cp, log)
    assert not cp.index.cold
    size, count, _ = cp.index.stats()
    assert count == 5 and size == 5 * store.size_on_disk(os.path.getsize(paths[0]), cp.bsize)
    assert not junk.exists() and not small.exists()
    assert temp.exists() and kept.exists()
    assert f'cache file "{small}" is too small' in log.text(CRIT)
    assert f"http file cache: {cp.path} 0.0" in log.text(NOTICE)
    assert f"bsize: {cp.bsize}" in log.text(NOTICE)
    assert not manager.load(cp, log)  # once per zone


def test_loaded_entries_are_hits(tmp_path: Path) -> None:
    c, cp = make(tmp_path)
    write_entry(cp, "/warm")
    manager.load(cp, Log())
    from pyngx.http import cache

    r = request(c, "/warm")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.status == "HIT" and lk.entry is not None and lk.entry.body == b"x" * 100


def test_loader_full_zone(tmp_path: Path) -> None:
    c = load(tmp_path, "proxy_cache_path cache keys_zone=z:8k;")  # 64 nodes
    cp = c.http.caches[0]  # type: ignore[union-attr]
    for i in range(70):
        write_entry(cp, f"/f{i}")
    log = Log()
    manager.load(cp, log)
    assert cp.index.stats()[1] == 64
    assert len(os.listdir(cp.path)) == 64  # the rest deleted, as nginx does
    assert 'could not allocate node in cache keys zone "z"' in log.text(ALERT)


def test_manager_removes_inactive_entries(tmp_path: Path) -> None:
    c, cp = make(tmp_path, "inactive=1s")
    fetch(request(c, "/a"))
    fetch(request(c, "/b"))
    path = cp.file_path(hashlib.md5(b"/a").hexdigest())
    assert os.path.exists(path)
    assert 0 < manager.manage(cp, Log()) <= 10
    time.sleep(2.1)
    manager.manage(cp, Log())
    assert not os.path.exists(path)
    assert cp.index.stats()[:2] == (0, 0)


def test_manager_enforces_max_size_lru_first(tmp_path: Path) -> None:
    c, cp = make(tmp_path, "max_size=20k")
    body = b"y" * 6000
    for i in range(6):
        fetch(request(c, f"/s{i}"), body=body)
        time.sleep(0.01)
    before = cp.index.stats()[0]
    assert before > 20 * 1024
    manager.manage(cp, Log())
    size, count, _ = cp.index.stats()
    assert size < 20 * 1024
    left = {request(c, f"/s{i}").uri for i in range(6)}
    assert left  # the most recent ones stayed
    assert os.path.exists(cp.file_path(hashlib.md5(b"/s5").hexdigest()))
    assert not os.path.exists(cp.file_path(hashlib.md5(b"/s0").hexdigest()))
    assert count == len(
        [f for _d, _s, fs in os.walk(cp.path) for f in fs]
    )


def test_manager_min_free(tmp_path: Path) -> None:
    c, cp = make(tmp_path, "min_free=1000000000000000")  # never enough: empty it
    for i in range(3):
        fetch(request(c, f"/f{i}"))
    manager.manage(cp, Log())
    assert cp.index.stats()[1] == 0


def test_manager_respects_manager_files(tmp_path: Path) -> None:
    c, cp = make(tmp_path, "max_size=0 manager_files=2 manager_sleep=7ms")
    for i in range(5):
        fetch(request(c, f"/m{i}"))
    assert manager.manage(cp, Log()) == 0.007
    assert cp.index.stats()[1] == 3


def test_cache_processes_thread(tmp_path: Path) -> None:
    c, cp = make(tmp_path, "inactive=1s manager_sleep=10ms")
    write_entry(cp, "/t")
    log = Log()
    procs = manager.CacheProcesses([cp], log)
    procs.start()
    deadline = time.monotonic() + 5
    while cp.index.cold and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not cp.index.cold
    while cp.index.stats()[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cp.index.stats()[1] == 0  # inactive for 1s: removed by the manager
    procs.cancel()
    procs.thread.join(2)
    assert not procs.thread.is_alive()


def test_only_worker_zero_runs_them(tmp_path: Path) -> None:
    c, cp = make(tmp_path)

    class W:
        def __init__(self, index: int) -> None:
            self.index = index
            self.http = c.http
            self.cycle = c

    assert manager.start_cache_processes(W(1)) is None
    procs = manager.start_cache_processes(W(0))
    assert procs is not None and isinstance(procs.thread, threading.Thread)
    procs.cancel()
    procs.thread.join(2)
