"""A small raw HTTP/1.x client for tests: exact bytes out, responses parsed strictly.

Tests need what curl and http.client hide: pipelined requests on one socket, the exact
header order and spelling, whether the server closed the connection, bodies framed by
Content-Length, chunked or close.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def names(self) -> list[str]:
        return [k for k, _ in self.headers]


class HttpClient:
    """One connection; `request()` sends and reads one response; `send()`/`read()` apart."""

    def __init__(
        self, host: str, port: int, *, source: str | None = None, timeout: float = 5.0
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buf = b""
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _until(self, marker: bytes, deadline: float) -> bytes:
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out, self.buf = self.buf[: i + len(marker)], self.buf[i + len(marker) :]
                return out
            if not self._fill(deadline):
                raise ConnectionError(f"closed before {marker!r}; got {self.buf[:200]!r}")

    def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise ConnectionError(f"closed after {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read(self, *, head: bool = False, timeout: float | None = None) -> Response:
        deadline = time.monotonic() + (timeout or self.timeout)
        raw = self._until(b"\r\n\r\n", deadline)
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
        resp = Response(int(code), reason, headers, b"", raw)
        status = resp.status
        if head or status in (204, 304) or 100 <= status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te and "chunked" in te.lower():
            resp.chunked = True
            parts = []
            while True:
                size_line = self._until(b"\r\n", deadline)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        t = self._until(b"\r\n", deadline)
                        if t == b"\r\n":
                            break
                        k, _, v = t.decode("latin-1").partition(":")
                        resp.trailers.append((k, v.strip()))
                    break
                parts.append(self._exactly(size, deadline))
                self._exactly(2, deadline)
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._exactly(int(cl), deadline)
        else:
            while self._fill(deadline):
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        host: str | None = "localhost",
        version: str = "HTTP/1.1",
    ) -> Response:
        self.send(build_request(method, target, headers, body, host=host, version=version))
        return self.read(head=method == "HEAD")

    def closed(self, timeout: float = 2.0) -> bool:
        """True when the server has closed (EOF or reset) within `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except TimeoutError:
            return False
        except OSError:
            return True
        return True


def build_request(
    method: str = "GET",
    target: str = "/",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "localhost",
    version: str = "HTTP/1.1",
) -> bytes:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"{method} {target} {version}"]
    if host is not None and not any(k.lower() == "host" for k, _ in items):
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in items]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in items):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(port: int, target: str = "/", host: str = "127.0.0.1", **kw: object) -> Response:
    with HttpClient(host, port) as c:
        return c.request("GET", target, **kw)  # type: ignore[arg-type]
