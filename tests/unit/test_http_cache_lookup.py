"""The proxy-facing API (pyngx/http/cache/lookups.py, serve.py) driven as the proxy will:
real configurations, real Requests on a fake connection, the upstream played by the test."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import pytest

from pyngx.http import cache
from pyngx.http.cache import store as st
from pyngx.http.httpdate import http_date
from pyngx.http.request import DONE
from tests.unit._http_cache_fakes import (
    error_log,
    fetch,
    load,
    request,
    response,
    store_response,
)

ZONE = "proxy_cache_path cache levels=1:2 keys_zone=z:1m;\n"


def server(locations: str, zone: str = ZONE) -> str:
    return zone + "server { listen 127.0.0.1:1;\n" + locations + "\n}\n"


def loc(path: str, extra: str = "") -> str:
    return f"location {path} {{ proxy_cache z; proxy_cache_key $uri$is_args$args; {extra} }}\n"


def hit(c: object, uri: str, **kw: object) -> cache.CacheLookup:
    r = request(c, uri, **kw)  # type: ignore[arg-type]
    return cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]


def serve(c: object, uri: str, **kw: object) -> tuple[str | None, int, dict[str, str], bytes]:
    """A request through the cache: (cache status, response status, headers, body)."""
    r = request(c, uri, **kw)  # type: ignore[arg-type]
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    if lk.action not in (cache.SERVE, cache.SERVE_AND_UPDATE):
        lk.close()
        return lk.status, 0, {}, b""
    res = cache.serve_entry(r, lk.entry, lk)
    if res != DONE:
        assert isinstance(res, int)
        r.finalize(res)
    status, headers, body, _ = response(r)
    return lk.status, status, headers, body


def forget_memory(c: object) -> None:
    """What another worker sees: no HotCache copies."""
    for cp in c.http.caches:  # type: ignore[attr-defined]
        cp.hot.clear()


@pytest.fixture
def basic(tmp_path: Path) -> object:
    return load(tmp_path, server(loc("/", "proxy_cache_valid 1m;")))


def test_miss_store_hit_from_memory_and_from_file(basic: object, tmp_path: Path) -> None:
    r = request(basic, "/a")
    lk = fetch(r, headers=[("Content-Type", "text/x")], body=b"hello")
    assert (lk.status, lk.action) == ("MISS", cache.UPSTREAM)
    assert serve(basic, "/a") == ("HIT", 200, serve(basic, "/a")[2], b"hello")
    cs, status, headers, body = serve(basic, "/a")
    assert headers["content-type"] == "text/x" and headers["content-length"] == "5"
    forget_memory(basic)
    assert serve(basic, "/a")[0::3] == ("HIT", b"hello")
    digest = hashlib.md5(b"/a").hexdigest()
    path = tmp_path / "prefix" / "cache" / digest[-1] / digest[-3:-1] / digest
    assert path.read_bytes().startswith(b"\x05\0")
    assert b"\nKEY: /a\n" in path.read_bytes()


def test_methods(tmp_path: Path) -> None:
    c = load(
        tmp_path,
        server(
            loc("/", "proxy_cache_valid 1m;")
            + loc("/post", "proxy_cache_valid 1m; proxy_cache_methods POST;")
        ),
    )
    lk = hit(c, "/a", method="POST")
    assert lk.status is None and not lk.cacheable
    lk = hit(c, "/post", method="POST")
    assert lk.status == "MISS"
    assert hit(c, "/a", method="PUT").status is None


def test_head_is_fetched_as_get_and_served_as_head(basic: object) -> None:
    r = request(basic, "/h", method="HEAD")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.upstream_method == "GET"
    store_response(r, lk, body=b"12345")
    status, code, headers, body = serve(basic, "/h", method="HEAD")
    assert (status, code, headers["content-length"], body) == ("HIT", 200, "5", b"")
    assert serve(basic, "/h")[3] == b"12345"


def test_convert_head_off(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_convert_head off;")))
    assert hit(c, "/h", method="HEAD").upstream_method == "HEAD"


def test_bypass_fetches_and_still_stores(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_bypass $http_x_bypass;")))
    fetch(request(c, "/b"), body=b"one")
    r = request(c, "/b", headers=[("X-Bypass", "1")])
    lk = fetch(r, body=b"two")
    assert lk.status == "BYPASS"
    assert serve(c, "/b")[0::3] == ("HIT", b"two")
    assert hit(c, "/b", headers=[("X-Bypass", "0")]).status == "HIT"


def test_no_cache(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_no_cache $http_x_no;")))
    r = request(c, "/n", headers=[("X-No", "yes")])
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.status == "MISS"
    assert not store_response(r, lk)
    assert hit(c, "/n").status == "MISS"


def test_min_uses(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_min_uses 3;")))
    for _ in range(2):
        lk = fetch(request(c, "/m"))
        assert lk.status == "MISS" and not lk.cacheable
    lk = fetch(request(c, "/m"))
    assert lk.cacheable
    assert hit(c, "/m").status == "HIT"


def test_uncacheable_response_frees_the_node(basic: object) -> None:
    r = request(basic, "/sc")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert not store_response(r, lk, headers=[("Set-Cookie", "a=b")])
    zone = basic.http.caches[0]  # type: ignore[attr-defined]
    assert zone.index.peek(hashlib.md5(b"/sc").digest()) is None


def _expire(c: object, uri: str, by: int = 120) -> None:
    """Age the entry of `uri` as if `by` seconds passed."""
    forget_memory(c)
    zone = c.http.caches[0]  # type: ignore[attr-defined]
    for dirpath, _dirs, files in os.walk(zone.path):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                data = f.read()
            if f"\nKEY: {uri}\n".encode() not in data:
                continue
            h = st.FileHeader.unpack(data)
            h.valid_sec -= by
            with open(path, "r+b") as f:
                f.write(h.pack())


def test_expired_goes_upstream_and_replaces(basic: object) -> None:
    fetch(request(basic, "/e"), body=b"old")
    _expire(basic, "/e")
    r = request(basic, "/e")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert (lk.status, lk.action) == ("EXPIRED", cache.UPSTREAM)
    assert lk.entry is not None and lk.entry.body == b"old"
    # a second request meanwhile: it is being updated; without use_stale it goes too
    lk2 = hit(basic, "/e")
    assert (lk2.status, lk2.action) == ("EXPIRED", cache.UPSTREAM)
    lk2.close()
    assert store_response(r, lk, body=b"new")
    assert serve(basic, "/e")[0::3] == ("HIT", b"new")


def test_use_stale_updating(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_use_stale updating;")))
    fetch(request(c, "/u"), body=b"old")
    _expire(c, "/u")
    updater = hit(c, "/u")
    assert updater.status == "EXPIRED"
    assert serve(c, "/u")[0::3] == ("UPDATING", b"old")
    updater.close()  # the update failed: the next one becomes the updater
    assert hit(c, "/u").status == "EXPIRED"


def test_background_update(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_use_stale updating;"
                                      " proxy_cache_background_update on;")))
    fetch(request(c, "/bg"), body=b"old")
    _expire(c, "/bg")
    r = request(c, "/bg")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert (lk.status, lk.action) == ("STALE", cache.SERVE_AND_UPDATE)
    bg = lk.for_background()
    assert cache.serve_entry(r, lk.entry, lk) == DONE
    assert response(r)[2] == b"old"
    assert serve(c, "/bg")[0] == "UPDATING"  # the background update holds it
    assert (bg.status, bg.action) == ("EXPIRED", cache.UPSTREAM)
    assert store_response(r, bg, body=b"new")
    assert serve(c, "/bg")[0::3] == ("HIT", b"new")


def test_stale_on_errors(tmp_path: Path) -> None:
    c = load(
        tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_use_stale error http_502;"))
    )
    fetch(request(c, "/s"), body=b"old")
    _expire(c, "/s")
    lk = hit(c, "/s")
    assert lk.stale("timeout") is None and lk.status == "EXPIRED"
    assert lk.stale("http_500") is None
    entry = lk.stale("no_live")
    assert entry is not None and lk.status == "STALE"
    lk.close()
    lk = hit(c, "/s")
    assert lk.stale("http_502") is not None
    lk.close()


def test_stale_if_error_window(basic: object) -> None:
    fetch(request(basic, "/w"), headers=[("Cache-Control", "max-age=60, stale-if-error=600")])
    _expire(basic, "/w", by=120)
    lk = hit(basic, "/w")
    assert lk.status == "EXPIRED" and lk.stale_error
    assert lk.stale("timeout") is not None
    lk.close()


def test_stale_while_revalidate_window_serves_updating(basic: object) -> None:
    hs = [("Cache-Control", "max-age=60, stale-while-revalidate=600")]
    fetch(request(basic, "/swr"), headers=hs, body=b"old")
    _expire(basic, "/swr", by=120)
    updater = hit(basic, "/swr")
    assert updater.status == "EXPIRED"  # no background update configured
    assert serve(basic, "/swr")[0] == "UPDATING"
    updater.close()


def test_revalidate(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_revalidate on;")))
    lm = http_date(1_600_000_000)
    fetch(request(c, "/rv"), headers=[("Last-Modified", lm), ("ETag", '"e1"')], body=b"same")
    _expire(c, "/rv")
    r = request(c, "/rv")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.status == "EXPIRED"
    assert lk.revalidation_headers() == [("If-Modified-Since", lm), ("If-None-Match", '"e1"')]
    entry = cache.revalidated(r, r.loc.cache, lk, [("Cache-Control", "max-age=30")])  # type: ignore[attr-defined]
    assert entry is not None and lk.status == "REVALIDATED"
    assert entry.header.valid_sec >= int(time.time()) + 29
    assert cache.serve_entry(r, entry, lk) == DONE
    assert response(r)[2] == b"same"
    forget_memory(c)
    assert serve(c, "/rv")[0::3] == ("HIT", b"same")


def test_revalidate_off_sends_nothing(basic: object) -> None:
    fetch(request(basic, "/rv"), headers=[("ETag", '"e1"')])
    _expire(basic, "/rv")
    r = request(basic, "/rv")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.revalidation_headers() == []
    assert cache.revalidated(r, r.loc.cache, lk, []) is None  # type: ignore[attr-defined]
    lk.close()


def test_vary_variants(basic: object) -> None:
    gz = [("Accept-Encoding", "gzip")]
    br = [("Accept-Encoding", "br")]
    fetch(request(basic, "/v", headers=gz), headers=[("Vary", "Accept-Encoding")], body=b"GZ")
    assert serve(basic, "/v", headers=gz)[0::3] == ("HIT", b"GZ")
    r = request(basic, "/v", headers=br)
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.status == "MISS" and lk.secondary
    assert store_response(r, lk, headers=[("Vary", "Accept-Encoding")], body=b"BR")
    for _ in range(2):
        assert serve(basic, "/v", headers=br)[0::3] == ("HIT", b"BR")
        assert serve(basic, "/v", headers=gz)[0::3] == ("HIT", b"GZ")
        forget_memory(basic)
    assert serve(basic, "/v", headers=[("Accept-Encoding", "  gzip")])[0::3] == ("HIT", b"GZ")
    assert serve(basic, "/v")[0] == "MISS"


def test_vary_dropped_goes_back_to_the_main_key(basic: object) -> None:
    gz = [("Accept-Encoding", "gzip")]
    fetch(request(basic, "/v2", headers=gz), headers=[("Vary", "Accept-Encoding")], body=b"GZ")
    r = request(basic, "/v2")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.secondary
    assert store_response(r, lk, body=b"ANY")  # no Vary any more: the main key
    assert serve(basic, "/v2", headers=gz)[0::3] == ("HIT", b"ANY")


def test_cached_error(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 502 1m;")))
    lk = hit(c, "/err")
    assert cache.store_error(lk, 502)
    lk = hit(c, "/err")
    assert (lk.status, lk.action, lk.error) == ("HIT", cache.ERROR, 502)
    lk = hit(c, "/err2")
    assert not cache.store_error(lk, 504)  # no validity for 504
    assert hit(c, "/err2").status == "MISS"


def test_max_range_offset(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_max_range_offset 100;")))
    assert hit(c, "/r", headers=[("Range", "bytes=0-10")]).cacheable
    assert not hit(c, "/r2", headers=[("Range", "bytes=200-")]).cacheable


def test_cold_cache_finds_files_the_zone_does_not_know(basic: object) -> None:
    fetch(request(basic, "/cold"), body=b"disk")
    zone = basic.http.caches[0]  # type: ignore[attr-defined]
    zone.index.__init__("z", zone.size)  # a restart: empty zone, files still there
    forget_memory(basic)
    assert zone.index.cold
    assert serve(basic, "/cold")[0::3] == ("HIT", b"disk")
    assert zone.index.stats()[0] > 0  # counted in the cache size
    zone.index.__init__("z", zone.size)
    zone.index.done_loading(complete=True)  # loaded, and this key was not there
    forget_memory(basic)
    assert hit(basic, "/cold").status == "MISS"


def test_missing_file_is_a_miss(basic: object) -> None:
    fetch(request(basic, "/gone"), body=b"x")
    zone = basic.http.caches[0]  # type: ignore[attr-defined]
    os.unlink(zone.file_path(hashlib.md5(b"/gone").hexdigest()))
    forget_memory(basic)
    assert hit(basic, "/gone").status == "MISS"


def test_collision_is_logged_and_a_miss(basic: object, tmp_path: Path) -> None:
    zone = basic.http.caches[0]  # type: ignore[attr-defined]
    path = zone.file_path(hashlib.md5(b"/col").hexdigest())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h = st.FileHeader(valid_sec=int(time.time()) + 99)
    with open(path, "wb") as f:
        f.write(st.file_prefix(h, b"/other", b"HTTP/1.1 200 OK\r\n\r\n"))
    assert hit(basic, "/col").status == "MISS"
    assert "has md5 collision" in error_log(tmp_path)


def test_variable_zone(tmp_path: Path) -> None:
    c = load(tmp_path, server(
        "location / { proxy_cache $http_x_zone; proxy_cache_key $uri; proxy_cache_valid 1m; }"
    ))
    assert hit(c, "/a").status is None
    assert hit(c, "/a", headers=[("X-Zone", "off")]).status is None
    assert hit(c, "/a", headers=[("X-Zone", "z")]).status == "MISS"
    lk = hit(c, "/a", headers=[("X-Zone", "nope")])
    assert (lk.action, lk.error) == (cache.ERROR, 500)
    assert 'cache "nope" not found' in error_log(tmp_path)


def test_default_key_comes_from_the_proxy(tmp_path: Path) -> None:
    c = load(tmp_path, server("location / { proxy_cache z; proxy_cache_valid 1m; }"))
    r = request(c, "/k?a=1")
    lk = cache.start_lookup(r, r.loc.cache, "http://127.0.0.1:8081/k?a=1")  # type: ignore[attr-defined]
    assert lk.key == "http://127.0.0.1:8081/k?a=1"
    assert lk.digest == hashlib.md5(b"http://127.0.0.1:8081/k?a=1").digest()
    lk.close()


# -- serving ---------------------------------------------------------------------------


LM = http_date(1_600_000_000)
META = [("Last-Modified", LM), ("ETag", '"abc"'), ("Content-Type", "text/x; charset=utf-8")]


@pytest.fixture
def meta(basic: object) -> object:
    fetch(request(basic, "/m"), headers=[*META, ("Accept-Ranges", "bytes")], body=b"0123456789")
    fetch(request(basic, "/noranges"), headers=META, body=b"0123456789")
    return basic


def test_serve_headers_as_nginx(meta: object) -> None:
    r = request(meta, "/m")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    cache.serve_entry(r, lk.entry, lk)
    _status, _headers, _body, head = response(r)
    lines = [line.split(":")[0] for line in head.decode().split("\r\n")[1:]]
    assert lines == ["Server", "Date", "Content-Type", "Content-Length", "Connection",
                     "Last-Modified", "ETag", "Accept-Ranges"]


def test_serve_conditional(meta: object) -> None:
    assert serve(meta, "/m", headers=[("If-None-Match", '"abc"')])[1] == 304
    cs, code, headers, body = serve(meta, "/m", headers=[("If-Modified-Since", LM)])
    assert (code, body) == (304, b"")
    assert "content-type" not in headers and headers["etag"] == '"abc"'
    cs, code, headers, body = serve(meta, "/m", headers=[("If-Match", '"zzz"')])
    assert code == 412 and "etag" not in headers
    assert serve(meta, "/m", headers=[("If-None-Match", '"other"')])[1] == 200


def test_serve_ranges_only_when_the_response_allowed_them(meta: object) -> None:
    cs, code, headers, body = serve(meta, "/m", headers=[("Range", "bytes=1-2")])
    assert (code, body, headers["content-range"]) == (206, b"12", "bytes 1-2/10")
    cs, code, headers, body = serve(meta, "/m", headers=[("Range", "bytes=0-0,5-5")])
    assert code == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert serve(meta, "/m", headers=[("Range", "bytes=50-")])[1] == 416
    cs, code, headers, body = serve(meta, "/noranges", headers=[("Range", "bytes=1-2")])
    assert (code, body) == (200, b"0123456789") and "accept-ranges" not in headers


def test_serve_without_content_length_goes_chunked(basic: object) -> None:
    r = request(basic, "/chunky")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    w = cache.store_writer(r, r.loc.cache, lk, 200, [("Transfer-Encoding", "chunked")])  # type: ignore[attr-defined]
    assert w is not None
    w.write(b"abc")
    assert w.commit()
    cs, code, headers, body = serve(basic, "/chunky")
    assert headers["transfer-encoding"] == "chunked" and body == b"3\r\nabc\r\n0\r\n\r\n"
    cs, code, headers, body = serve(basic, "/chunky", version=(1, 0))
    assert "transfer-encoding" not in headers and body == b"abc"


def test_serve_large_body_streams(basic: object) -> None:
    big = os.urandom(st.HOT_MAX_ENTRY + st.READ_AHEAD)  # beyond the HotCache: streamed
    fetch(request(basic, "/big"), body=big)
    forget_memory(basic)
    r = request(basic, "/big")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    assert lk.entry is not None and lk.entry.body is None
    res = cache.serve_entry(r, lk.entry, lk)
    assert not isinstance(res, int)
    assert asyncio.run(res) == DONE
    assert response(r)[2] == big
    assert lk.entry.fd == -1 and lk.closed


def test_serve_hides_upstream_only_headers(basic: object) -> None:
    upstream = [
        ("Server", "up"),
        ("Date", "x"),
        ("X-Accel-Expires", "60"),
        ("X-Keep", "1"),
        ("Connection", "close"),
    ]
    fetch(request(basic, "/hide"), headers=upstream)
    cs, code, headers, body = serve(basic, "/hide")
    assert headers["server"].startswith("nginx") and headers["x-keep"] == "1"
    assert headers["connection"] == "keep-alive" and "x-accel-expires" not in headers


def test_custom_copy_headers(basic: object) -> None:
    fetch(request(basic, "/cp"), headers=[("X-A", "1")])
    r = request(basic, "/cp")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    seen: list[object] = []

    def copy(req: object, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        seen.append((status, headers))
        req.status = status  # type: ignore[attr-defined]
        req.out.headers.append(("X-Proxy", "yes"))  # type: ignore[attr-defined]

    cache.serve_entry(r, lk.entry, lk, copy_headers=copy)
    assert seen and response(r)[1]["x-proxy"] == "yes"


# -- the cache lock ----------------------------------------------------------------------


LOCKED = server(loc("/", "proxy_cache_valid 1m; proxy_cache_lock on; proxy_cache_lock_timeout 2s;"))


def test_lock_waiters_wake_when_the_holder_stores(tmp_path: Path) -> None:
    c = load(tmp_path, LOCKED)

    async def scenario() -> tuple[str | None, float]:
        r1 = request(c, "/l")
        holder = cache.start_lookup(r1, r1.loc.cache)  # type: ignore[attr-defined]
        assert (holder.status, holder.action) == ("MISS", cache.UPSTREAM)
        r2 = request(c, "/l")
        waiter = cache.start_lookup(r2, r2.loc.cache)  # type: ignore[attr-defined]
        assert waiter.action == cache.WAIT

        async def upstream() -> None:
            await asyncio.sleep(0.2)
            store_response(r1, holder, body=b"locked")

        t0 = time.monotonic()
        task = asyncio.ensure_future(upstream())
        while waiter.action == cache.WAIT:
            await waiter.wait()
        await task
        return waiter.status, time.monotonic() - t0

    status, took = asyncio.run(scenario())
    assert status == "HIT"
    assert took < 0.45  # woken by the holder, not by the 500 ms poll


def test_lock_timeout_goes_upstream_without_caching(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_lock on;"
                                      " proxy_cache_lock_timeout 300ms;")))

    async def scenario() -> cache.CacheLookup:
        r1 = request(c, "/t")
        holder = cache.start_lookup(r1, r1.loc.cache)  # type: ignore[attr-defined]
        assert holder.action == cache.UPSTREAM
        r2 = request(c, "/t")
        return await cache.lookup(r2, r2.loc.cache)  # type: ignore[attr-defined]

    t0 = time.monotonic()
    lk = asyncio.run(scenario())
    assert 0.25 < time.monotonic() - t0 < 1.5
    assert (lk.status, lk.action, lk.cacheable) == ("MISS", cache.UPSTREAM, False)
    assert "cache lock timeout" in error_log(tmp_path)


def test_lock_held_by_another_worker(tmp_path: Path) -> None:
    c = load(tmp_path, LOCKED)
    r1 = request(c, "/x")
    holder = cache.start_lookup(r1, r1.loc.cache)  # type: ignore[attr-defined]
    pid = os.fork()
    if pid == 0:  # the other worker: stores after 0.6 s
        try:
            time.sleep(0.6)
            store_response(r1, holder, body=b"from-child")
        finally:
            os._exit(0)
    holder.lock_time = None  # the parent's copy of the lookup is not the holder
    holder.referenced = False
    try:
        t0 = time.monotonic()
        r2 = request(c, "/x")
        lk = asyncio.run(cache.lookup(r2, r2.loc.cache))  # type: ignore[attr-defined]
        took = time.monotonic() - t0
    finally:
        os.waitpid(pid, 0)
    assert lk.status == "HIT" and lk.entry is not None and lk.entry.body == b"from-child"
    assert 0.5 < took < 1.6  # polled (500 ms steps)


def test_lock_age_lets_one_more_request_through(tmp_path: Path) -> None:
    c = load(tmp_path, server(loc("/", "proxy_cache_valid 1m; proxy_cache_lock on;"
                                      " proxy_cache_lock_age 200ms;")))
    holder = hit(c, "/age")
    assert holder.action == cache.UPSTREAM
    assert hit(c, "/age").action == cache.WAIT
    time.sleep(0.25)
    second = hit(c, "/age")
    assert (second.action, second.cacheable) == (cache.UPSTREAM, True)
    holder.close()
    second.close()


def test_a_dropped_lookup_releases_its_node(tmp_path: Path) -> None:
    import gc

    c = load(tmp_path, LOCKED)
    holder = hit(c, "/drop")
    assert holder.action == cache.UPSTREAM and holder.lock_time is not None
    zone = c.http.caches[0]  # type: ignore[attr-defined]
    digest = hashlib.md5(b"/drop").digest()
    assert zone.index.peek(digest)["count"] == 1
    del holder
    gc.collect()
    assert zone.index.peek(digest) is None  # released and freed (no file, min_uses 1)
    assert "stalled cache updating" in error_log(tmp_path)
    assert hit(c, "/drop").action == cache.UPSTREAM  # nobody holds the lock any more


def test_short_body_is_not_stored(basic: object) -> None:
    r = request(basic, "/short")
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    w = cache.store_writer(r, r.loc.cache, lk, 200, [("Content-Length", "10")],  # type: ignore[attr-defined]
                           expected_length=10)
    assert w is not None
    w.write(b"12345")
    assert not w.commit()
    assert lk.closed and hit(basic, "/short").status == "MISS"


def test_large_range_streams_even_if_the_lookup_is_closed_first(basic: object) -> None:
    big = os.urandom(600_000)
    fetch(request(basic, "/bigr"), headers=[("Accept-Ranges", "bytes")], body=big)
    forget_memory(basic)
    r = request(basic, "/bigr", headers=[("Range", "bytes=1000-400999")])
    lk = cache.start_lookup(r, r.loc.cache)  # type: ignore[attr-defined]
    res = cache.serve_entry(r, lk.entry, lk)
    assert not isinstance(res, int)
    lk.close()  # the proxy may close at once: the stream has its own descriptor
    assert asyncio.run(res) == DONE
    status, headers, body, _ = response(r)
    assert (status, headers["content-range"], body) == (206, f"bytes 1000-400999/{len(big)}",
                                                         big[1000:401000])
