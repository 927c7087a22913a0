"""proxy_cache end to end: pyngx in front of a counting origin (tests/http_backend.py).

MISS then HIT with one origin request, $upstream_cache_status in the access log, the cache
lock under a burst of concurrent misses, stale entries when the origin is down, a warm cache
across a restart, eviction at max_size, a kill -9 in the middle of a large store, hits
shared by two workers, revalidation, background update, what the origin is (not) sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

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
