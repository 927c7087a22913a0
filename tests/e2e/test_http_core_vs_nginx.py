"""The http core side by side with Debian's nginx: the same config, the same raw requests,
the same answers (status line, header names in order, the values that matter, bodies).

Each case is raw bytes sent on one connection (several requests = pipelining); both servers'
answers are parsed and normalised (Date, the port, ETag/Last-Modified values kept equal by
giving files fixed mtimes) and compared whole.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import Nginx, Pyngx, free_port, nginx_available, nginx_conf, pyngx_conf
from tests.http_client import HttpClient

pytestmark = pytest.mark.nginx

MTIME = 1_700_000_000


def _tree(root: Path) -> None:
    (root / "dir").mkdir(parents=True)
    (root / "noindex").mkdir()
    (root / "index.html").write_text("<p>index</p>\n")
    (root / "dir" / "index.html").write_text("dir index\n")
    (root / "a.txt").write_text("abc\n")
    (root / "style.css").write_text("body{}\n")
    (root / "err.html").write_text("custom error page\n")
    (root / "fallback.html").write_text("fallback\n")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    for p in root.rglob("*"):
        os.utime(p, (MTIME, MTIME))


def _config(port: int, root: Path) -> str:
    return rf"""
http {{
    types {{ text/html html; text/plain txt; text/css css; }}
    default_type application/octet-stream;
    server_tokens off;
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {root};
        location /limited/ {{ client_max_body_size 10; }}
        location /err/ {{ error_page 404 /err.html; }}
        location /err200/ {{ error_page 404 =200 /err.html; }}
        location /errnamed/ {{ error_page 404 @fallback; }}
        location @fallback {{ try_files /fallback.html =500; }}
        location /tf/ {{ try_files $uri /fallback.html; }}
        location /tf404/ {{ try_files $uri =404; }}
        location /ka/ {{ keepalive_requests 2; }}
        location /exp/ {{ expires 1h; add_header X-A one; add_header X-B two always; }}
        location = /exact {{ error_page 404 /a.txt; }}
        location /internal-only/ {{ internal; }}
        location /auto/ {{ alias {root}/dir/; autoindex on; }}
        location /autojson/ {{ alias {root}/dir/; autoindex on; autoindex_format json; }}
        location /nr/ {{ alias {root}/; max_ranges 0; }}
        location /ret/ {{
            location /ret/text {{ return 200 "text $uri $args"; }}
            location /ret/empty {{ return 200; }}
            location /ret/404 {{ return 404; }}
            location /ret/404text {{ return 404 "gone"; }}
            location /ret/301 {{ return 301 /elsewhere; }}
            location /ret/302url {{ return 302 http://example.com/x; }}
            location /ret/url {{ return http://example.com/y; }}
            location /ret/444 {{ return 444; }}
            location /ret/500 {{ return 500; }}
            location /ret/204 {{ return 204; }}
        }}
        location /rw/ {{
            rewrite ^/rw/last/(.*)$ /ret/text?from=$1 last;
            rewrite ^/rw/break/(.*)$ /$1 break;
            rewrite ^/rw/redir/(.*)$ /new/$1 redirect;
            rewrite ^/rw/perm/(.*)$ /new/$1? permanent;
            rewrite ^/rw/loop$ /rw/loop last;
        }}
        location ~ ^/cap/(?<first>[a-z]+)/(\d+)$ {{ return 200 "$first $2"; }}
        location /if/ {{
            if ($arg_x = "1") {{ return 200 "x is one"; }}
            if ($http_x_test ~* ^ab(c)) {{ return 200 "header $1"; }}
            if (-f $request_filename) {{ return 200 "file"; }}
            set $v "set:$uri";
            return 200 $v;
        }}
    }}
}}
"""


def _normalise(raw: bytes, port: int) -> list[object]:
    """Responses in order: (status line, [(name, value)], body) with volatile parts masked."""
    out: list[object] = []
    text = raw
    while text:
        head_end = text.find(b"\r\n\r\n")
        if head_end < 0:
            out.append(("TRAILING", text))
            break
        head = text[:head_end].decode("latin-1").split("\r\n")
        text = text[head_end + 4 :]
        headers = []
        length = None
        chunked = False
        for line in head[1:]:
            k, _, v = line.partition(":")
            v = v.strip()
            if k == "Date":
                v = "<date>"
            if k == "Content-Length":
                length = int(v)
            if k == "Transfer-Encoding" and "chunked" in v:
                chunked = True
            if k == "Expires":
                v = "<expires>"
            v = v.replace(str(port), "<port>")
            v = re.sub(r"boundary=\d{20}", "boundary=<b>", v)
            headers.append((k, v))
        status = head[0]
        body = b""
        if chunked:
            body_parts = []
            while True:
                nl = text.find(b"\r\n")
                n = int(text[:nl], 16)
                text = text[nl + 2 :]
                if n == 0:
                    text = text[text.find(b"\r\n") + 2 :]
                    break
                body_parts.append(text[:n])
                text = text[n + 2 :]
            body = b"".join(body_parts)
        elif length is not None and " 304 " not in status:
            body, text = text[:length], text[length:]
        body = re.sub(rb"--\d{20}", b"--<b>", body.replace(str(port).encode(), b"<port>"))
        out.append((status, headers, body))
    return out


def _exchange(port: int, data: bytes, *, head_only: bool = False, wait: float = 0.3) -> bytes:
    """Send `data`, read until the server closes or stays quiet for `wait` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + 8
        s.settimeout(wait)
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return got


def _req(target: str, method: str = "GET", extra: str = "", body: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode() + body


CASES: dict[str, bytes] = {
    "index": _req("/"),
    "file": _req("/a.txt"),
    "css": _req("/style.css"),
    "unknown type": _req("/big.bin", "HEAD"),
    "head": _req("/a.txt", "HEAD"),
    "not found": _req("/nope"),
    "dir redirect": _req("/dir"),
    "dir redirect args": _req("/dir?x=1&y=2"),
    "dir index": _req("/dir/"),
    "no index": _req("/noindex/"),
    "missing dir": _req("/missing/"),
    "post static": _req("/a.txt", "POST", "Content-Length: 3\r\n", b"abc"),
    "put": _req("/a.txt", "PUT", "Content-Length: 3\r\n", b"abc"),
    "delete": _req("/a.txt", "DELETE"),
    "pipelined": _req("/a.txt") + _req("/dir/") + _req("/nope") + _req("/a.txt", "HEAD"),
    "get with body": _req("/a.txt", extra="Content-Length: 5\r\n", body=b"hello") + _req("/a.txt"),
    "get chunked body": _req(
        "/a.txt", extra="Transfer-Encoding: chunked\r\n", body=b"5\r\nhello\r\n0\r\n\r\n"
    )
    + _req("/a.txt"),
    "too large": _req("/limited/x", "POST", "Content-Length: 100\r\n", b"x" * 100),
    "error_page": _req("/err/nope"),
    "error_page =200": _req("/err200/nope"),
    "error_page named": _req("/errnamed/nope"),
    "try_files fallback": _req("/tf/nope"),
    "try_files =404": _req("/tf404/nope"),
    "keepalive_requests": _req("/ka/a") + _req("/ka/b") + _req("/ka/c"),
    "expires add_header": _req("/exp/nope"),
    "exact": _req("/exact"),
    "internal": _req("/internal-only/x"),
    "http10": b"GET /a.txt HTTP/1.0\r\n\r\n",
    "http10 keepalive": b"GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + _req("/a.txt"),
    "connection close": _req("/a.txt", extra="Connection: close\r\n"),
    "if-none-match": _req("/a.txt", extra=f'If-None-Match: "{MTIME:x}-4"\r\n'),
    "query": _req("/a.txt?x=1"),
    "encoded": _req("/%61.txt"),
    "dot segments": _req("/dir/../a.txt"),
    "double slash": _req("//a.txt"),
    "range": _req("/a.txt", extra="Range: bytes=1-2\r\n"),
    "range suffix": _req("/big.bin", extra="Range: bytes=-10\r\n"),
    "range open": _req("/big.bin", "HEAD", extra="Range: bytes=3145700-\r\n"),
    "range multi": _req("/a.txt", extra="Range: bytes=0-0,2-3\r\n"),
    "range 416": _req("/a.txt", extra="Range: bytes=10-20\r\n"),
    "range bad": _req("/a.txt", extra="Range: items=1-2\r\n"),
    "range if-range": _req("/a.txt", extra='Range: bytes=1-2\r\nIf-Range: "x"\r\n'),
    "max_ranges 0": _req("/nr/a.txt", extra="Range: bytes=1-2\r\n"),
    "autoindex": _req("/auto/"),
    "autoindex json": _req("/autojson/"),
    "if-modified-since": _req(
        "/a.txt", extra="If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
    ),
    "if-match fail": _req("/a.txt", extra='If-Match: "nope"\r\n'),
    "too long uri": b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "too long header": _req("/a.txt", extra="X-Big: " + "h" * 9000 + "\r\n"),
    "too many headers": _req(
        "/a.txt", extra="".join(f"X-H{i}: {'v' * 4000}\r\n" for i in range(12))
    ),
    "cl and te": _req(
        "/a.txt",
        "POST",
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"0\r\n\r\n",
    ),
    "te gzip": _req("/a.txt", "POST", "Transfer-Encoding: gzip\r\n", b"x"),
    "bad chunk": _req("/a.txt", extra="Transfer-Encoding: chunked\r\n", body=b"zz\r\n"),
    "bad content-length": _req("/a.txt", extra="Content-Length: 1x\r\n"),
    "dup content-length": _req(
        "/a.txt", extra="Content-Length: 1\r\nContent-Length: 1\r\n", body=b"x"
    ),
    "no host 1.1": b"GET /a.txt HTTP/1.1\r\n\r\n",
    "dup host": _req("/a.txt", extra="Host: other\r\n"),
    "bad host": b"GET /a.txt HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "bad method": b"G@T /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET /a.txt HTTP/2.0\r\nHost: x\r\n\r\n",
    "http09": b"GET /a.txt\r\n",
    "http09 post": b"POST /a.txt\r\n",
    "trace": _req("/a.txt", "TRACE"),
    "absolute uri": b"GET http://localhost/a.txt?q HTTP/1.1\r\nHost: other\r\n\r\n",
    "dotdot above root": _req("/../a.txt"),
    "encoded nul": _req("/a%00.txt"),
    "space in header name": _req("/a.txt", extra="X Y: z\r\n"),
    "underscore header": _req("/if/", extra="X_Test: abc\r\n"),
    "obs fold": _req("/a.txt", extra="X-A: 1\r\n  folded\r\n"),
    "lf only": b"GET /a.txt HTTP/1.1\nHost: localhost\n\n",
    "return text": _req("/ret/text?a=1"),
    "return empty": _req("/ret/empty"),
    "return 404": _req("/ret/404"),
    "return 404 text": _req("/ret/404text"),
    "return 301": _req("/ret/301"),
    "return 302 url": _req("/ret/302url"),
    "return url": _req("/ret/url"),
    "return 444": _req("/ret/444"),
    "return 500": _req("/ret/500"),
    "return 204": _req("/ret/204"),
    "rewrite last": _req("/rw/last/abc?q=2"),
    "rewrite break": _req("/rw/break/a.txt"),
    "rewrite redirect": _req("/rw/redir/x?y=1"),
    "rewrite permanent": _req("/rw/perm/x?y=1"),
    "rewrite loop": _req("/rw/loop"),
    "captures": _req("/cap/abc/42"),
    "if arg": _req("/if/?x=1"),
    "if header": _req("/if/", extra="X-Test: ABCD\r\n"),
    "if file": _req("/if/../a.txt"),
    "set": _req("/if/zzz"),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One nginx and one pyngx for the whole table (starting them per case is slow)."""
    if not nginx_available():
        pytest.skip("Debian's nginx is not installed")
    tmp_path = tmp_path_factory.mktemp("http-core")
    root = tmp_path / "html"
    _tree(root)
    pn, pp = free_port(), free_port()
    ngx = Nginx(tmp_path, nginx_conf(_config(pn, root), prefix=Nginx.prefix_dir(tmp_path)))
    pyx = Pyngx(tmp_path, pyngx_conf(_config(pp, root), prefix=Pyngx.prefix_dir(tmp_path)))
    with ngx.start(), pyx.start():
        yield pn, pp


@pytest.mark.parametrize("name", list(CASES))
def test_same_answers(pair: tuple[int, int], name: str) -> None:
    pn, pp = pair
    data = CASES[name]
    with ThreadPoolExecutor(2) as pool:
        fn, fp = pool.submit(_exchange, pn, data), pool.submit(_exchange, pp, data)
        expect = _normalise(fn.result(), pn)
        got = _normalise(fp.result(), pp)
    assert got == expect


def test_large_file_and_keepalive(pair: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", pair[0])) as s:
        s.sendall(b"GET /big.bin HTTP/1.0\r\n\r\n")
        raw = b""
        while chunk := s.recv(1 << 20):
            raw += chunk
    want = raw.split(b"\r\n\r\n", 1)[1]
    assert len(want) == 3 * 1024 * 1024 + 7
    for port in pair:
        with HttpClient("127.0.0.1", port) as c:
            for _ in range(3):
                r = c.request("GET", "/big.bin")
                assert r.status == 200
                assert r.body == want
                assert r.header("Connection") == "keep-alive"


def test_slow_header_times_out(tmp_path: Path, pyngx: ServerFactory) -> None:
    root = tmp_path / "html"
    _tree(root)
    port = free_port()
    srv = pyngx(_config(port, root).replace("server_tokens off;", "client_header_timeout 1s;"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 4
    srv.wait_for_log(
        r"client timed out \(110: Connection timed out\) while reading client request headers"
    )


def test_access_log_combined(tmp_path: Path, nginx: ServerFactory, pyngx: ServerFactory) -> None:
    root = tmp_path / "html"
    _tree(root)
    lines = []
    for factory in (nginx, pyngx):
        port = free_port()
        srv = factory(_config(port, root).replace("access_log off;", "access_log logs/access.log;"))
        _exchange(port, _req("/a.txt", extra="User-Agent: t/1\r\nReferer: http://r/\r\n"))
        log = srv.prefix / "logs" / "access.log"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (log.exists() and log.read_text()):
            time.sleep(0.05)
        lines.append(re.sub(r"\[[^\]]+\]", "[t]", log.read_text()))
    assert lines[0] == lines[1]


def test_debian_default_nginx_conf_passes_the_test_flag() -> None:
    """Debian's own /etc/nginx/nginx.conf (with sites-enabled/default) reads as nginx reads it."""
    import subprocess
    import sys

    conf = Path("/etc/nginx/nginx.conf")
    if not conf.exists():
        pytest.skip("Debian's nginx configuration is not installed")
    r = subprocess.run(
        [sys.executable, "-m", "pyngx", "-t", "-q", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
