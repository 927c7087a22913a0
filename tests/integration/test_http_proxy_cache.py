"""proxy_cache end to end: pyngx in front of a counting origin (tests/http_backend.py).

MISS then HIT with one origin request, $upstream_cache_status in the access log, the cache
lock under a burst of concurrent misses, stale entries when the origin is down, a warm cache
across a restart, eviction at max_size, a kill -9 in the middle of a large store, hits
shared by two workers, revalidation, background update, what the origin is (not) sent.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_backend import HttpBackend, Response, http_get, origin, pattern

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]

LOG = 'log_format c "$request_uri $status $upstream_cache_status";\n'


def start(
    pyngx: ServerFactory,
    b: HttpBackend,
    loc_extra: str = "",
    *,
    path_extra: str = "",
    workers: int = 1,
    cache_dir: Path | None = None,
    port: int | None = None,
) -> tuple[ServerProcess, int, Path]:
    port = port or free_port()
    server = pyngx(_conf(b, port, loc_extra, path_extra, cache_dir), workers=workers, start=False)
    cdir = cache_dir or Path(server.prefix) / "cache"
    server.write_conf(server.conf_path.read_text().replace("CACHEDIR", str(cdir)))
    server.start()
    return server, port, cdir


def _conf(
    b: HttpBackend, port: int, loc_extra: str, path_extra: str, cache_dir: Path | None
) -> str:
    return (
        "http {\n"
        + LOG
        + f"proxy_cache_path CACHEDIR levels=1:2 keys_zone=z:1m inactive=30s {path_extra};\n"
        + f"server {{ listen 127.0.0.1:{port};\n"
        + "  access_log logs/access.log c;\n"
        + f"  location / {{ proxy_pass http://{b.address}; proxy_cache z; {loc_extra} }}\n"
        + f"  location /nc/ {{ proxy_pass http://{b.address}; }}\n"
        + "}\n}\n"
    )


def status_of(r: Response) -> str:
    return r.header("X-Cache") or ""


def get(port: int, target: str, **kw: object) -> Response:
    return http_get(port, target, **kw)  # type: ignore[arg-type]


def origin_hits(b: HttpBackend, path: str) -> int:
    return sum(1 for rec in b.requests if rec.target.split("?")[0] == path.split("?")[0])


def log_lines(server: ServerProcess, n: int, timeout: float = 5.0) -> list[str]:
    path = Path(server.prefix) / "logs" / "access.log"
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


XC = 'add_header X-Cache $upstream_cache_status always;'


# -- MISS, HIT ---------------------------------------------------------------------------


def test_miss_then_hit(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port, cdir = start(pyngx, b, f"proxy_cache_valid 200 1m; {XC}")
    r1 = get(port, "/a?size=1000")
    r2 = get(port, "/a?size=1000")
    assert (r1.status, status_of(r1)) == (200, "MISS")
    assert (r2.status, status_of(r2)) == (200, "HIT")
    assert r1.body == r2.body == pattern(1000)
    assert origin_hits(b, "/a") == 1
    lines = log_lines(server, 2)
    assert lines[-2:] == ["/a?size=1000 200 MISS", "/a?size=1000 200 HIT"]
    # nginx's file layout: the key is the upstream URL.
    keys = [p.read_bytes().split(b"\nKEY: ", 1)[1].split(b"\n", 1)[0] for p in cdir.rglob("*")
            if p.is_file()]
    assert keys == [f"http://{b.address}/a?size=1000".encode()]


def test_uncached_location_has_no_cache_status(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port, _ = start(pyngx, b, "proxy_cache_valid 1m;")
    get(port, "/nc/x")
    get(port, "/nc/x")
    assert origin_hits(b, "/nc/x") == 2
    assert log_lines(server, 2)[-1] == "/nc/x 200 -"


def test_head_is_converted_and_served_from_cache(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}")
    r1 = get(port, "/h?size=300", method="HEAD")
    assert (r1.status, status_of(r1), r1.body) == (200, "MISS", b"")
    assert b.requests[-1].method == "GET"
    r2 = get(port, "/h?size=300")
    assert (status_of(r2), r2.body) == ("HIT", pattern(300))
    assert origin_hits(b, "/h") == 1


def test_conditional_headers_not_forwarded(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(pyngx, b, "proxy_cache_valid 1m;")
    get(port, "/c", headers=[("Host", "x"), ("If-None-Match", '"a"'), ("Range", "bytes=0-1"),
                             ("X-Other", "1")])
    names = {n.lower() for n in b.requests[-1].header_names()}
    assert "x-other" in names
    assert not names & {"if-none-match", "range"}


def test_chunked_response_cached_dechunked(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}")
    r1 = get(port, "/ch?size=70000&chunked=1&piece=5000")
    r2 = get(port, "/ch?size=70000&chunked=1&piece=5000")
    assert status_of(r2) == "HIT"
    assert r1.body == r2.body == pattern(70000)
    assert origin_hits(b, "/ch") == 1


def test_large_body_streams_from_file(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}")
    n = 3 * 1024 * 1024 + 7
    get(port, f"/big?size={n}")
    r2 = get(port, f"/big?size={n}")
    assert status_of(r2) == "HIT"
    assert r2.body == pattern(n)


def test_revalidate_304(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    lm = "Wed, 01 Jan 2020 00:00:00 GMT"
    _, port, _ = start(
        pyngx, b, f"proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_revalidate on; {XC}"
    )
    r1 = get(port, f"/rv?size=50&h={quote('Last-Modified:' + lm)}")
    assert status_of(r1) == "MISS"
    time.sleep(2.1)
    r2 = get(port, "/rv?status=304")
    assert (r2.status, status_of(r2), r2.body) == (200, "REVALIDATED", pattern(50))
    assert b.requests[-1].header("If-Modified-Since") == lm
    r3 = get(port, "/rv?status=500")
    assert (status_of(r3), r3.body) == ("HIT", pattern(50))


def test_stale_when_origin_down(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(
        pyngx, b,
        f"proxy_cache_valid 200 1s; proxy_cache_use_stale error timeout; {XC}",
    )
    assert status_of(get(port, "/st?size=64")) == "MISS"
    b.close()
    time.sleep(2.1)
    r = get(port, "/st?size=64")
    assert (r.status, status_of(r), r.body) == (200, "STALE", pattern(64))
    # Not stale-able: no entry at all.
    r = get(port, "/other")
    assert r.status == 502


def test_stale_on_timeout_and_http_500(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(
        pyngx, b,
        "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_read_timeout 1s;"
        f" proxy_cache_use_stale timeout http_500; {XC}",
    )
    assert status_of(get(port, "/t?size=10")) == "MISS"
    time.sleep(2.1)
    r = get(port, "/t?delay=3")
    assert (r.status, status_of(r), r.body) == (200, "STALE", pattern(10))
    r = get(port, "/t?status=500")
    assert (r.status, status_of(r), r.body) == (200, "STALE", pattern(10))
    r = get(port, "/t?status=503")
    assert (r.status, status_of(r)) == (503, "EXPIRED")


def test_cached_502(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    addr = b.address
    b.close()
    port = free_port()
    server = pyngx(
        "http {\n" + LOG
        + "proxy_cache_path cache keys_zone=z:1m;\n"
        + f"server {{ listen 127.0.0.1:{port}; access_log logs/access.log c;\n"
        + f"  location / {{ proxy_pass http://{addr}; proxy_cache z; proxy_cache_valid 502 1m; }}"
        + "\n}\n}\n"
    )
    assert get(port, "/e").status == 502
    assert get(port, "/e").status == 502
    assert log_lines(server, 2)[-2:] == ["/e 502 MISS", "/e 502 HIT"]


def test_background_update(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(
        pyngx, b,
        "proxy_cache_key $uri; proxy_cache_valid 200 1s; proxy_cache_use_stale updating;"
        f" proxy_cache_background_update on; {XC}",
    )
    assert get(port, "/bg?size=5").body == pattern(5)
    time.sleep(2.1)
    r = get(port, "/bg?size=7")
    assert (status_of(r), r.body) == ("STALE", pattern(5))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = get(port, "/bg?size=9")
        if r.body == pattern(7):
            break
        time.sleep(0.1)
    assert (status_of(r), r.body) == ("HIT", pattern(7))
    assert origin_hits(b, "/bg") == 2


# -- the cache lock ------------------------------------------------------------------------


def _burst(port: int, target: str, n: int) -> list[Response]:
    results: list[Response | None] = [None] * n
    go = threading.Event()

    def one(i: int) -> None:
        go.wait()
        results[i] = get(port, target, timeout=20)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_lock_burst(pyngx: ServerFactory, origin: Origin, workers: int) -> None:
    b = origin()
    _, port, _ = start(
        pyngx, b, f"proxy_cache_valid 1m; proxy_cache_lock on; {XC}", workers=workers
    )
    results = _burst(port, "/lk?size=2000&delay=1", 100)
    assert {r.status for r in results} == {200}
    assert all(r.body == pattern(2000) for r in results)
    assert origin_hits(b, "/lk") == 1
    assert sorted({status_of(r) for r in results}) == ["HIT", "MISS"]


def test_without_lock_misses_go_upstream(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, _ = start(pyngx, b, "proxy_cache_valid 1m;")
    _burst(port, "/nl?size=20&delay=0.5", 10)
    assert origin_hits(b, "/nl") == 10


# -- files: restart, eviction, crash ----------------------------------------------------------


def test_warm_cache_survives_restart(
    pyngx: ServerFactory, origin: Origin, tmp_path: Path
) -> None:
    b = origin()
    cdir = tmp_path / "shared-cache"
    s1, port, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}", cache_dir=cdir)
    assert status_of(get(port, "/w?size=100")) == "MISS"
    s1.stop()
    _, port2, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}", cache_dir=cdir)
    r = get(port2, "/w?size=100")
    assert (status_of(r), r.body) == ("HIT", pattern(100))
    assert origin_hits(b, "/w") == 1


def _cache_bytes(cdir: Path) -> int:
    return sum(p.stat().st_size for p in cdir.rglob("*") if p.is_file())


def test_eviction_at_max_size(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port, cdir = start(
        pyngx, b, "proxy_cache_valid 1m;",
        path_extra="max_size=200k manager_sleep=50ms use_temp_path=off",
    )
    for i in range(60):
        get(port, f"/ev{i}?size=20000")
    # The manager looks at the size at least every 10 s (nginx: when the next inactive
    # entry is due, 10 s at most); a new key never waits for it when the zone is full.
    deadline = time.monotonic() + 12
    while _cache_bytes(cdir) > 200 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
    size = _cache_bytes(cdir)
    assert 0 < size <= 200 * 1024
    files = [p for p in cdir.rglob("*") if p.is_file()]
    assert 4 <= len(files) <= 10
    # The newest keys are the ones kept.
    before = len(b.requests)
    get(port, "/ev59?size=20000")
    assert len(b.requests) == before


def test_kill_during_store_leaves_no_corrupt_entry(
    pyngx: ServerFactory, origin: Origin, tmp_path: Path
) -> None:
    b = origin()
    cdir = tmp_path / "crash-cache"
    n = 4 * 1024 * 1024
    target = f"/big?size={n}&slow=0.02"
    s1, port, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}", cache_dir=cdir)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    got = 0
    while got < n // 4:  # a good part of the body is through pyngx (and in its store)
        data = sock.recv(65536)
        assert data
        got += len(data)
    os.killpg(s1.pid, signal.SIGKILL)
    sock.close()
    s1.stop()
    entries = [p for p in cdir.rglob("*") if p.is_file() and "." not in p.name]
    assert entries == []
    _, port2, _ = start(pyngx, b, f"proxy_cache_valid 1m; {XC}", cache_dir=cdir)
    fast = f"/big?size={n}"
    r = get(port2, fast)
    assert (status_of(r), len(r.body)) == ("MISS", n)
    assert r.body == pattern(n)
    r = get(port2, fast)
    assert (status_of(r), r.body == pattern(n)) == ("HIT", True)


def test_two_workers_share_hits(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = free_port()
    server = pyngx(
        "http {\n"
        'log_format c "$pid $upstream_cache_status";\n'
        "proxy_cache_path cache keys_zone=z:1m;\n"
        f"server {{ listen 127.0.0.1:{port}; access_log logs/access.log c;\n"
        f"  location / {{ proxy_pass http://{b.address}; proxy_cache z; proxy_cache_valid 1m; }}"
        "\n}\n}\n",
        workers=2,
    )
    get(port, "/two?size=10")
    pids: set[str] = set()
    for _ in range(10):
        _burst(port, "/two?size=10", 20)
        lines = log_lines(server, 1)
        pids = {ln.split()[0] for ln in lines[1:]}
        if len(pids) >= 2:
            break
    assert origin_hits(b, "/two") == 1
    lines = log_lines(server, 1)
    assert lines[0].endswith(" MISS")
    assert {ln.split()[1] for ln in lines[1:]} == {"HIT"}
    assert len(pids) == 2
