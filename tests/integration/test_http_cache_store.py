"""proxy_cache_path in a running pyngx: the configuration loads, the directories exist, the
loader (in worker 0) indexes what is on disk and cleans up, the manager expires entries,
and a reload keeps the shared keys zone (no second load)."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import urllib.request
from pathlib import Path

from pyngx.http.cache import store
from tests.conftest import ServerFactory
from tests.harness import free_port, run_pyngx


def _entry(root: Path, key: str, levels: tuple[int, ...] = (1, 2), valid: int = 3600) -> Path:
    kb = key.encode()
    path = Path(store.hashed_name(str(root), levels, hashlib.md5(kb).hexdigest()))
    path.parent.mkdir(parents=True, exist_ok=True)
    h = store.FileHeader(valid_sec=int(time.time()) + valid, date=int(time.time()))
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    path.write_bytes(store.file_prefix(h, kb, head) + b"hello")
    return path


def _conf(cache: Path, port: int, params: str = "") -> str:
    return (
        "http {\n"
        "  access_log off;\n"
        f"  proxy_cache_path {cache} levels=1:2 keys_zone=one:1m {params};\n"
        "  proxy_cache_path cache2 keys_zone=two:64k use_temp_path=off;\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        f"    location / {{ proxy_cache one; root {cache.parent}; }}\n"
        "  }\n"
        "}\n"
    )


def _files(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _s, fs in os.walk(root) for f in fs}


def test_config_loads_and_the_directories_are_created(pyngx: ServerFactory, tmp_path: Path) -> None:
    port = free_port()
    cache = tmp_path / "cache1"
    (tmp_path / "f.txt").write_text("ok")
    srv = pyngx(_conf(cache, port))
    assert cache.is_dir()
    assert (srv.prefix / "cache2").is_dir()  # relative to the prefix
    assert (srv.prefix / "proxy_temp").is_dir()  # use_temp_path=on (the default)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/f.txt", timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b"ok"
    srv.wait_for_log(r"http file cache: .*cache2 0\.000M, bsize: \d+")


def test_loader_indexes_the_cache_in_worker_0(pyngx: ServerFactory, tmp_path: Path) -> None:
    cache = tmp_path / "cache1"
    kept = [_entry(cache, f"http://example/{i}") for i in range(30)]
    junk = cache / "notes.txt"
    junk.write_text("not a cache file")
    temp = Path(str(kept[0]) + ".0000000042")
    temp.write_bytes(b"a write in progress")
    srv = pyngx(_conf(cache, free_port(), "loader_files=7 loader_sleep=10ms"), workers=3)
    line = srv.wait_for_log(rf"http file cache: {cache} ")
    bsize = os.statvfs(cache).f_bsize
    size = sum(store.fs_size(os.stat(p), bsize) for p in kept) / (1024 * 1024)
    assert line.endswith(f"http file cache: {cache} {size:.3f}M, bsize: {bsize}")
    assert not junk.exists()
    assert temp.exists()
    assert all(p.exists() for p in kept)
    log = srv.error_log_text()
    assert log.count(f"http file cache: {cache} ") == 1  # one loader, not one per worker


def test_reload_keeps_the_zone(pyngx: ServerFactory, tmp_path: Path) -> None:
    cache = tmp_path / "cache1"
    _entry(cache, "http://example/a")
    srv = pyngx(_conf(cache, free_port()), workers=2)
    srv.wait_for_log(rf"http file cache: {cache} ")
    mark = srv.log_mark()
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("start worker process", since=mark, timeout=10)
    time.sleep(1.0)
    # The zone survived the reload: it is not cold, so nothing is loaded again.
    assert f"http file cache: {cache} " not in srv.error_log_text()[mark:]


def test_manager_removes_inactive_entries(pyngx: ServerFactory, tmp_path: Path) -> None:
    cache = tmp_path / "cache1"
    entries = [_entry(cache, f"http://example/{i}") for i in range(3)]
    srv = pyngx(_conf(cache, free_port(), "inactive=1s manager_sleep=50ms"))
    srv.wait_for_log(rf"http file cache: {cache} ")
    deadline = time.monotonic() + 8
    while any(p.exists() for p in entries) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.exists() for p in entries)


def test_max_size_at_start(pyngx: ServerFactory, tmp_path: Path) -> None:
    cache = tmp_path / "cache1"
    entries = [_entry(cache, f"http://example/{i}") for i in range(10)]
    srv = pyngx(_conf(cache, free_port(), "max_size=16k"))
    srv.wait_for_log(rf"http file cache: {cache} ")
    deadline = time.monotonic() + 8
    while sum(p.exists() for p in entries) > 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(p.exists() for p in entries) <= 4  # 4 KiB blocks: under 16k


def test_bad_cache_config_is_refused_like_nginx(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "pyngx.conf"
    conf.parent.mkdir()
    conf.write_text(
        "events {}\nhttp {\n"
        f"  proxy_cache_path {tmp_path}/c levels=1:2 keys_zone=z:1m;\n"
        f"  proxy_cache_path {tmp_path}/d keys_zone=z:1m;\n"
        "}\n"
    )
    res = run_pyngx(["-t", "-p", str(tmp_path), "-c", str(conf)])
    assert res.returncode == 1
    assert f'duplicate zone "z" in {conf}:4' in res.stderr
