"""pyngx's cache files and Debian's nginx 1.22 read each other's, byte for byte.

- nginx serves (HIT) an entry pyngx's store wrote, including a Vary'd one: the header, the
  key line, the crc32, the variant hash are nginx's;
- pyngx's reader takes an entry nginx wrote (from a little upstream) and computes the same
  variant hash for the same request.
Also: `-t` refuses the same bad proxy cache configurations with the same words.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pyngx.http.cache import policy, store
from tests.conftest import ServerFactory
from tests.harness import free_port, nginx_available, run_nginx, run_pyngx
from tests.http_client import get

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not nginx_available(), reason="needs Debian's nginx"),
]


def _write_entry(
    root: Path,
    key: str,
    body: bytes,
    headers: list[tuple[str, str]],
    *,
    vary: str = "",
    request_headers: list[tuple[str, str]] | None = None,
    digest: bytes | None = None,
) -> Path:
    """An entry as pyngx's store writes it (the proxy's path through store_writer)."""
    kb = key.encode()
    main = hashlib.md5(kb).digest()
    variant = b"\0" * 16
    if vary:
        variant = policy.variant_hash(main, vary, request_headers or [])
    now = int(time.time())
    last_modified, etag = policy.validators(200, headers)
    h = store.FileHeader(
        valid_sec=now + 3600, date=now, last_modified=last_modified, etag=etag, vary=vary,
        variant=variant,
    )
    head = store.build_head(200, "OK", [*headers, ("Content-Length", str(len(body)))])
    target = Path(store.hashed_name(str(root), (1, 2), (digest or main).hex()))
    target.parent.mkdir(parents=True, exist_ok=True)
    w = store.Writer(str(target), None, store.file_prefix(h, kb, head), expected=len(body),
                     on_commit=lambda *a: None, on_abort=lambda *a: None)
    w.write(body)
    assert w.commit()
    return target


def test_nginx_serves_what_pyngx_stored(nginx: ServerFactory, tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    root = tmp_path / "cache"
    upstream = f"http://127.0.0.1:{dead}"
    _write_entry(root, f"{upstream}/plain", b"from pyngx", [("X-Writer", "pyngx")])
    gz = [("Accept-Encoding", "gzip")]
    # The main key holds the gzip variant; the br one lives under its variant hash.
    _write_entry(root, f"{upstream}/vary", b"gzip body", [("Vary", "Accept-Encoding")],
                 vary="Accept-Encoding", request_headers=gz)
    br = [("Accept-Encoding", "br")]
    main = hashlib.md5(f"{upstream}/vary".encode()).digest()
    _write_entry(root, f"{upstream}/vary", b"br body", [("Vary", "Accept-Encoding")],
                 vary="Accept-Encoding", request_headers=br,
                 digest=policy.variant_hash(main, "Accept-Encoding", br))
    nginx(
        "http {\n access_log off;\n"
        f" proxy_cache_path {root} levels=1:2 keys_zone=z:1m;\n"
        f" server {{ listen 127.0.0.1:{port};\n"
        "  add_header X-Cache $upstream_cache_status always;\n"
        f"  location / {{ proxy_cache z; proxy_pass {upstream}; }}\n"
        " }\n}\n"
    )
    r = get(port, "/plain")
    assert (r.status, r.body, r.header("X-Cache"), r.header("X-Writer")) == (
        200, b"from pyngx", "HIT", "pyngx"
    )
    r = get(port, "/vary", headers=gz)
    assert (r.status, r.body, r.header("X-Cache")) == (200, b"gzip body", "HIT")
    r = get(port, "/vary", headers=br)
    assert (r.status, r.body, r.header("X-Cache")) == (200, b"br body", "HIT")
    r = get(port, "/vary", headers=[("Accept-Encoding", "deflate")])
    assert r.status == 502  # a variant nobody stored: nginx goes to the (dead) upstream


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"{self.path} {self.headers.get('Accept-Encoding')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=600, stale-if-error=30")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("ETag", '"v1"')
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def upstream() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_pyngx_reads_what_nginx_stored(
    nginx: ServerFactory, tmp_path: Path, upstream: int
) -> None:
    port = free_port()
    root = tmp_path / "cache"
    nginx(
        "http {\n access_log off;\n"
        f" proxy_cache_path {root} levels=1:2 keys_zone=z:1m;\n"
        f" server {{ listen 127.0.0.1:{port};\n"
        f"  location / {{ proxy_cache z; proxy_pass http://127.0.0.1:{upstream}; }}\n"
        " }\n}\n"
    )
    hs = [("Accept-Encoding", "gzip, br")]
    before = int(time.time())
    assert get(port, "/doc?x=1", headers=hs).status == 200
    key = f"http://127.0.0.1:{upstream}/doc?x=1".encode()
    digest = hashlib.md5(key).digest()
    path = store.hashed_name(str(root), (1, 2), digest.hex())
    deadline = time.monotonic() + 5
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = store.read_entry(path, key, digest)
    h = entry.header
    assert entry.status == 200 and entry.body == b"/doc?x=1 gzip, br"
    assert before + 600 <= h.valid_sec <= int(time.time()) + 600
    assert (h.updating_sec, h.error_sec, h.etag, h.vary) == (0, 30, '"v1"', "Accept-Encoding")
    assert h.variant == policy.variant_hash(digest, h.vary, [("Accept-Encoding", "gzip,  br")])
    assert ("Vary", "Accept-Encoding") in entry.headers


BAD = [
    "proxy_cache_path {d}/c levels=1:2:2:2 keys_zone=z:10m;",
    "proxy_cache_path {d}/c keys_zone=z:8191;",
    "proxy_cache_path {d}/c keys_zone=z:1m inactive=500ms;",
    "proxy_cache_path {d}/c use_temp_path=yes keys_zone=z:1m;",
    "proxy_cache_path {d}/c keys_zone=z:1m;\n proxy_cache_path {d}/d keys_zone=z:1m;",
    "proxy_cache_path {d}/c keys_zone=z:1m;\n proxy_cache_path {d}/c keys_zone=y:1m;",
    "proxy_cache_path {d}/c keys_zone=z:1m;\n proxy_cache_path {d}/d keys_zone=z:2m;",
    "proxy_cache_valid 600 1m;",
    "proxy_cache_methods PUT;",
    "proxy_cache_use_stale sometimes;",
    "proxy_cache_min_uses x;",
    "server {\n location / {\n proxy_cache nosuch;\n }\n}\n",
]


@pytest.mark.parametrize("body", BAD)
def test_config_errors_as_nginx(tmp_path: Path, body: str) -> None:
    text = body.replace("{d}", str(tmp_path))
    out = {}
    for name, run in (("nginx", run_nginx), ("pyngx", run_pyngx)):
        d = tmp_path / name
        (d / "logs").mkdir(parents=True)
        conf = d / "test.conf"
        conf.write_text(f"pid {d}/p.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n {text}\n}}\n")
        args = ["-t", "-p", str(d), "-c", str(conf)]
        res = run(["-e", "stderr", *args] if name == "nginx" else args)
        emerg = [line for line in res.stderr.splitlines() if "[emerg]" in line]
        assert res.returncode == 1, res.stderr
        out[name] = emerg[0].split("[emerg] ", 1)[1].split(": ", 1)[1].replace(str(d), "D")
    assert out["pyngx"] == out["nginx"]
