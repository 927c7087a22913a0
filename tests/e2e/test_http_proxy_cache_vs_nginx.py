"""proxy_cache, pyngx next to Debian's nginx 1.22 with the same configuration: which
responses are cached (the second request a HIT) for a table of response header combinations
(Cache-Control, Expires, X-Accel-Expires, Set-Cookie, Vary, proxy_cache_valid codes,
proxy_ignore_headers), and the cache status sequence of MISS / HIT / EXPIRED / STALE /
BYPASS seen in $upstream_cache_status.

Both run against the same origin (tests/http_backend.py), each with its own cache directory;
a case is a path of its own (its own key) whose query string tells the origin what to answer.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from urllib.parse import quote

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port, nginx_available
from tests.http_backend import HttpBackend, http_get, origin

__all__ = ["origin"]

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not nginx_available(), reason="needs Debian's nginx"),
]


def _h(*headers: str) -> str:
    return "".join(f"&h={quote(h)}" for h in headers)


FUTURE = formatdate(time.time() + 3600, usegmt=True)
PAST = formatdate(time.time() - 3600, usegmt=True)

# (name, location, query): location "v" has proxy_cache_valid 200 404 1m, "n" has no
# proxy_cache_valid, "i" ignores Set-Cookie, Cache-Control and Expires.
CASES = [
    ("plain-200-valid", "v", "size=10"),
    ("plain-200-novalid", "n", "size=10"),
    ("status-404-valid", "v", "status=404"),
    ("status-500-valid", "v", "status=500"),
    ("status-302-valid", "v", "status=302" + _h("Location: /x")),
    ("status-201-valid", "v", "status=201"),
    ("cc-no-store", "v", _h("Cache-Control: no-store")),
    ("cc-private", "v", _h("Cache-Control: private")),
    ("cc-no-cache", "v", _h("Cache-Control: no-cache")),
    ("cc-no-cache-field", "v", _h('Cache-Control: no-cache="Set-Cookie"')),
    ("cc-public-no-store", "v", _h("Cache-Control: public, no-store")),
    ("cc-max-age", "n", _h("Cache-Control: max-age=60")),
    ("cc-max-age-0", "v", _h("Cache-Control: max-age=0")),
    ("cc-max-age-bad", "v", _h("Cache-Control: max-age=abc")),
    ("cc-s-maxage", "n", _h("Cache-Control: s-maxage=60")),
    ("cc-s-maxage-0-max-age", "n", _h("Cache-Control: s-maxage=0, max-age=60")),
    ("cc-max-age-s-maxage-0", "n", _h("Cache-Control: max-age=60, s-maxage=0")),
    ("cc-two-lines", "n", _h("Cache-Control: public", "Cache-Control: max-age=60")),
    ("cc-max-age-404", "n", "status=404" + _h("Cache-Control: max-age=60")),
    ("expires-future", "n", _h(f"Expires: {FUTURE}")),
    ("expires-past", "v", _h(f"Expires: {PAST}")),
    ("expires-bad", "v", _h("Expires: soon")),
    ("expires-future-500", "n", "status=500" + _h(f"Expires: {FUTURE}")),
    ("xae-60", "n", _h("X-Accel-Expires: 60")),
    ("xae-0", "v", _h("X-Accel-Expires: 0")),
    ("xae-over-no-store", "n", _h("X-Accel-Expires: 60", "Cache-Control: no-store")),
    ("xae-0-over-max-age", "n", _h("X-Accel-Expires: 0", "Cache-Control: max-age=60")),
    ("xae-bad", "v", _h("X-Accel-Expires: x")),
    ("set-cookie", "v", _h("Set-Cookie: a=1")),
    ("set-cookie-max-age", "n", _h("Set-Cookie: a=1", "Cache-Control: max-age=60")),
    ("set-cookie-ignored", "i", _h("Set-Cookie: a=1")),
    ("cc-no-store-ignored", "i", _h("Cache-Control: no-store")),
    ("expires-past-ignored", "i", _h(f"Expires: {PAST}")),
    ("vary-star", "v", _h("Vary: *")),
    ("vary-accept-encoding", "v", _h("Vary: Accept-Encoding")),
    ("vary-star-ignored", "i", _h("Vary: *")),
    ("chunked", "v", "size=5000&chunked=1&piece=1000"),
    ("no-length", "v", "size=3000&noclen=1"),
]


def _conf(b: HttpBackend, port: int) -> str:
    p = f"proxy_pass http://{b.address}; proxy_cache z;"
    xc = "add_header X-Cache $upstream_cache_status always;"
    return (
        "http {\n"
        "proxy_cache_path cache levels=1:2 keys_zone=z:1m;\n"
        f"server {{ listen 127.0.0.1:{port}; access_log off; {xc}\n"
        f"  location /v/ {{ {p} proxy_cache_valid 200 404 1m; }}\n"
        f"  location /n/ {{ {p} }}\n"
        f"  location /i/ {{ {p} proxy_cache_valid 200 1m;\n"
        "    proxy_ignore_headers Set-Cookie Cache-Control;\n"
        "    proxy_ignore_headers Expires Vary; }\n"
        f"  location /s/ {{ {p} proxy_cache_key $uri; proxy_cache_valid 200 1s;\n"
        "    proxy_cache_use_stale error http_500; proxy_cache_bypass $arg_nocache; }\n"
        "}\n}\n"
    )


def _start(factory: ServerFactory, b: HttpBackend) -> tuple[ServerProcess, int]:
    port = free_port()
    return factory(_conf(b, port)), port


def _two(port: int, target: str) -> tuple[int, str, str]:
    a = http_get(port, target)
    c = http_get(port, target)
    return a.status, a.header("X-Cache") or "-", c.header("X-Cache") or "-"


def test_cacheability_table(pyngx: ServerFactory, nginx: ServerFactory, origin: object) -> None:
    b = origin()  # type: ignore[operator]
    _, nport = _start(nginx, b)
    _, pport = _start(pyngx, b)
    want = {name: _two(nport, f"/{loc}/{name}?{q}") for name, loc, q in CASES}
    got = {name: _two(pport, f"/{loc}/{name}?{q}") for name, loc, q in CASES}
    diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert diff == {}, diff
    # The table is not trivial: both outcomes occur.
    assert {v[2] for v in want.values()} == {"HIT", "MISS"}


def test_status_sequence(pyngx: ServerFactory, nginx: ServerFactory, origin: object) -> None:
    """MISS, HIT, BYPASS, EXPIRED, STALE (http_500), as nginx reports them."""
    b = origin()  # type: ignore[operator]
    _, nport = _start(nginx, b)
    _, pport = _start(pyngx, b)
    steps = [
        ("/s/a?size=5", 0.0),
        ("/s/a?size=6", 0.0),
        ("/s/a?size=7&nocache=1", 0.0),
        ("/s/a?size=8", 2.1),
        ("/s/a?status=500", 2.1),
        ("/s/a?size=9", 0.0),
    ]

    def run(port: int) -> list[tuple[int, str, bytes]]:
        out = []
        for target, pause in steps:
            time.sleep(pause)
            r = http_get(port, target)
            out.append((r.status, r.header("X-Cache") or "-", r.body))
        return out

    # Both servers run the pauses in turn: the timing is the same for each.
    assert run(pport) == run(nport)
