"""Small HTTP client helpers for the access/limit/map/stub_status tests (integration and e2e).

Every request opens its own connection from a chosen loopback source address (so that
per-client keys can be told apart), with a bounded timeout, and closes it.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from pathlib import Path

A, B, C = "127.0.0.23", "127.0.0.24", "127.0.0.25"
TIMEOUT = 10.0


def get(
    port: int,
    path: str = "/",
    *,
    source: str | None = A,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request on a new connection."""
    conn = http.client.HTTPConnection(
        host, port, timeout=TIMEOUT, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def status(port: int, path: str = "/", **kwargs: object) -> int:
    return get(port, path, **kwargs)[0]  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.02)


def slow_download(port: int, path: str, source: str = A) -> socket.socket:
    """A request for a large file whose client reads nothing: the request stays in progress
    (the server's send buffers fill) until the socket is closed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(TIMEOUT)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    # The status line arrives first: the request passed the preaccess phase.
    got = b""
    while b"\r\n" not in got:
        chunk = s.recv(1)
        if not chunk:
            raise ConnectionError("closed before the status line")
        got += chunk
    if not got.startswith(b"HTTP/1.1 200"):
        raise AssertionError(f"slow download refused: {got!r}")
    return s


def big_file(root: Path, name: str = "big.bin", size: int = 16 * 1024 * 1024) -> None:
    with open(root / name, "wb") as f:
        f.truncate(size)


def stub_numbers(text: str) -> dict[str, int]:
    """The numbers of a stub_status page, after checking its exact layout."""
    lines = text.split("\n")
    assert len(lines) == 5 and lines[4] == "", repr(text)
    assert lines[0].startswith("Active connections: ") and lines[0].endswith(" "), repr(text)
    assert lines[1] == "server accepts handled requests", repr(text)
    ap, hn, rq = (int(x) for x in lines[2].strip().split(" "))
    assert lines[2] == f" {ap} {hn} {rq} ", repr(text)
    words = lines[3].split(" ")
    assert words[0::2][:3] == ["Reading:", "Writing:", "Waiting:"] and words[-1] == "", repr(text)
    return {
        "active": int(lines[0].split(" ")[2]),
        "accepts": ap,
        "handled": hn,
        "requests": rq,
        "reading": int(words[1]),
        "writing": int(words[3]),
        "waiting": int(words[5]),
    }
