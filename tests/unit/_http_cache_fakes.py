"""Test support for the cache tests: a configuration loaded in-process, real Requests on a
fake connection that records what would be written, and an upstream stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pyngx.core.cycle import Cycle, load_cycle
from pyngx.core.paths import make_paths
from pyngx.http.cache import lookups as cache_lookup
from pyngx.http.request import Request


class FakeConn:
    """What Request needs of an HttpConnection; the bytes written are in `out`."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.requests = 1
        self.is_ssl = False
        self.server_addr = "127.0.0.1"
        self.server_port = 8080
        self.remote_addr = "127.0.0.1"
        self.remote_port = 50000
        self.conn_id = 1
        self.writing_paused = False
        self.closed: list[bool] = []
        self.worker: Any = None
        self.logged: list[tuple[int, str]] = []

    def write(self, data: bytes) -> None:
        self.out += data

    def close_request(self, req: Any, *, abort: bool = False) -> None:
        self.closed.append(abort)

    def worker_log(self, level: int, message: str) -> None:
        self.logged.append((level, message))

    def set_timer(self, *args: Any) -> None:
        pass

    async def drain(self) -> None:
        await asyncio.sleep(0)


def load(tmp_path: Path, http_body: str, *, main: str = "") -> Cycle:
    """A cycle from `http { <http_body> }` with the prefix in tmp_path."""
    prefix = tmp_path / "prefix"
    (prefix / "conf").mkdir(parents=True, exist_ok=True)
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    conf = prefix / "conf" / "pyngx.conf"
    conf.write_text(
        f"error_log {prefix}/logs/error.log debug;\npid {prefix}/logs/p.pid;\n{main}\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{http_body}\n}}\n"
    )
    return load_cycle(make_paths(str(prefix), str(conf)))


def error_log(tmp_path: Path) -> str:
    path = tmp_path / "prefix" / "logs" / "error.log"
    return path.read_text() if path.exists() else ""


def request(
    cycle: Cycle,
    uri: str,
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    version: tuple[int, int] = (1, 1),
) -> Request:
    """A Request at the location `uri` selects in the first server."""
    assert cycle.http is not None
    srv = cycle.http.servers[0]
    conn = FakeConn()
    r = Request(conn, srv)  # type: ignore[arg-type]
    path, _, args = uri.partition("?")
    r.method = method
    r.uri = path
    r.args = args
    r.request_uri = uri
    r.request_line = f"{method} {uri} HTTP/{version[0]}.{version[1]}"
    r.version = version
    r.header_list = list(headers or [])
    hd: dict[str, str] = {}
    for name, value in r.header_list:
        hd.setdefault(name.lower(), value)
    r.headers = hd
    r.host = "localhost"
    r.keepalive = True
    r.request_length = 0

    class _Framing:
        content_length = None

    r.framing = _Framing()
    found = srv.locations.find(path)
    r.loc = found[0] if found else srv.conf
    return r


def response(r: Request) -> tuple[int, dict[str, str], bytes, bytes]:
    """(status, headers by lower-case name, body, raw head) of what r wrote."""
    data = bytes(r.conn.out)  # type: ignore[attr-defined]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), value)
    return status, headers, body, head


def fetch(
    r: Request,
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"body",
    *,
    key: str | None = None,
) -> cache_lookup.CacheLookup:
    """What the proxy does on a miss: look up, and store the upstream's response."""
    settings = r.loc.cache  # type: ignore[attr-defined]
    lk = cache_lookup.start_lookup(r, settings, key)
    store_response(r, lk, status, headers, body)
    return lk


def store_response(
    r: Request,
    lk: cache_lookup.CacheLookup,
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"body",
) -> bool:
    settings = r.loc.cache  # type: ignore[attr-defined]
    hl = list(headers or [])
    if not any(n.lower() == "content-length" for n, _ in hl):
        hl.append(("Content-Length", str(len(body))))
    w = cache_lookup.store_writer(r, settings, lk, status, hl, expected_length=len(body))
    if w is None:
        return False
    w.write(body)
    return w.commit()
