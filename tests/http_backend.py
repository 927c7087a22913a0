"""A small HTTP/1.1 origin server for proxy tests: records what it receives, answers as told.

One thread per connection (blocking sockets): simple, and good enough for tests that count
connections, stream many MiB, or hold a response back. Every request is recorded (method, raw
target, version, headers in order, body length and digest). What to answer is read from the
query string of the target, so a test (and nginx, in differential tests) drives it through the
proxy without any side channel:

    status=NNN      the status (default 200); reason=TEXT its reason phrase
    h=Name:Value    an extra response header (repeat for more; URL-encoded)
    size=N          a body of N pattern bytes (pattern(N)) instead of the JSON echo
    chunked=1       send the body chunked (pieces of `piece` bytes, default 16 KiB)
    noclen=1        no Content-Length: the body ends when the connection closes
    close=1         `Connection: close` and close after the response
    delay=S         wait S seconds before the response head; slow=S between body pieces
    hang=1          never answer (until the peer closes); drop=1 close without answering
    nobody=1        headers only, Content-Length as for the body (for HEAD-like tests)

The default body is JSON describing the request (`echo`). A path in `routes` overrides all of
this with raw response bytes. `/ws` with `Upgrade: websocket` answers 101 and echoes
WebSocket frames (text or binary) until a close frame or EOF.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import pytest

_UNIT = bytes(range(251))
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern(n: int) -> bytes:
    """n bytes of the repeating pattern the backend sends for `size=n`."""
    return (_UNIT * (n // 251 + 1))[:n]


@dataclass
class Recorded:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body_len: int = 0
    body_sha256: str = ""
    body: bytes = b""
    conn: int = 0
    chunked: bool = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_names(self) -> list[str]:
        return [n for n, _ in self.headers]


@dataclass
class HttpBackend:
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str | Path | None = None
    keep_body: int = 1 << 20  # bodies up to this size are kept in Recorded.body
    requests: list[Recorded] = field(default_factory=list)
    routes: dict[str, bytes] = field(default_factory=dict)
    tls: Any = None  # an ssl.SSLContext (server side): the origin speaks HTTPS
    connections: int = 0
    open_connections: int = 0
    responses_done: int = 0
    heads_seen: int = 0  # request heads parsed (before their bodies are read)
    tls_info: list[dict[str, Any]] = field(default_factory=list)  # per TLS connection

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._stopping = False
        self._socks: list[socket.socket] = []
        if self.unix_path is not None:
            Path(self.unix_path).unlink(missing_ok=True)
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(str(self.unix_path))
        else:
            fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._listener = socket.socket(fam, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((self.host, self.port))
            self.port = self._listener.getsockname()[1]
        self._listener.listen(512)
        if self.tls is not None:
            self.tls.sni_callback = _record_sni
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        self._stopping = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._thread.join(2)
        if self.unix_path is not None:
            Path(self.unix_path).unlink(missing_ok=True)

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"backend got {len(self.requests)} requests, wanted {n}")
            return list(self.requests)

    def wait_idle(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self.open_connections == 0, timeout)

    def wait_heads(self, n: int, timeout: float = 5.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.heads_seen >= n, timeout)

    def wait_responses(self, n: int, timeout: float = 5.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.responses_done >= n, timeout)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connections = 0

    # -- server ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open_connections += 1
                index = self.connections
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock, index), daemon=True).start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        buf = b""
        try:
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (OSError, ValueError):
                    with self._lock:
                        self.tls_info.append({"failed": True})
                    return
                with self._lock:
                    self.tls_info.append(
                        {
                            "failed": False,
                            "sni": getattr(sock, "sni_seen", None),
                            "reused": sock.session_reused,
                            "peer_cert": sock.getpeercert(),
                        }
                    )
            while True:
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = []
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers.append((name, value.strip()))
                rec = Recorded(method, target, version, headers, conn=index)
                with self._lock:
                    self.heads_seen += 1
                    self._lock.notify_all()
                lower = {n.lower(): v for n, v in headers}
                digest = hashlib.sha256()
                kept = bytearray()
                if "chunked" in lower.get("transfer-encoding", "").lower():
                    rec.chunked = True
                    while True:
                        while b"\r\n" not in buf:
                            data = sock.recv(65536)
                            if not data:
                                return
                            buf += data
                        size_line, _, buf = buf.partition(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        if size == 0:
                            while b"\r\n" not in buf:
                                buf += sock.recv(65536)
                            # trailers are not expected: just the final CRLF
                            _, _, buf = buf.partition(b"\r\n")
                            break
                        while len(buf) < size + 2:
                            data = sock.recv(max(65536, size + 2 - len(buf)))
                            if not data:
                                return
                            buf += data
                        piece, buf = buf[:size], buf[size + 2 :]
                        rec.body_len += len(piece)
                        digest.update(piece)
                        if len(kept) < self.keep_body:
                            kept += piece
                elif "content-length" in lower:
                    n = int(lower["content-length"])
                    while n:
                        if not buf:
                            buf = sock.recv(min(n, 1 << 20))
                            if not buf:
                                return
                        piece, buf = buf[:n], buf[n:]
                        n -= len(piece)
                        rec.body_len += len(piece)
                        digest.update(piece)
                        if len(kept) < self.keep_body:
                            kept += piece
                rec.body_sha256 = digest.hexdigest()
                rec.body = bytes(kept)
                with self._lock:
                    self.requests.append(rec)
                    self._lock.notify_all()
                keep = self._respond(sock, rec, lower)
                with self._lock:
                    self.responses_done += 1
                    self._lock.notify_all()
                if not keep:
                    return
                if buf and lower.get("upgrade"):
                    return
        except OSError:
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass
            with self._lock:
                self.open_connections -= 1
                if sock in self._socks:
                    self._socks.remove(sock)
                self._lock.notify_all()

    def _respond(self, sock: socket.socket, rec: Recorded, lower: dict[str, str]) -> bool:
        path, _, query = rec.target.partition("?")
        raw = self.routes.get(path)
        if raw is not None:
            sock.sendall(raw)
            return b"connection: close" not in raw.lower()
        q: dict[str, str] = {}
        extra: list[tuple[str, str]] = []
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k == "h":
                name, _, value = v.partition(":")
                extra.append((name, value))
            else:
                q[k] = v
        if path.endswith("/ws") and lower.get("upgrade", "").lower() == "websocket":
            self._websocket(sock, lower)
            return False
        if q.get("drop"):
            return False
        if q.get("hang"):
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            return False
        if "delay" in q:
            time.sleep(float(q["delay"]))
        status = int(q.get("status", "200"))
        reason = q.get("reason", {200: "OK", 404: "Not Found"}.get(status, "Whatever"))
        if "size" in q:
            body = pattern(int(q["size"]))
            ctype = "application/octet-stream"
        else:
            echo = {
                "method": rec.method,
                "uri": rec.target,
                "version": rec.version,
                "headers": rec.headers,
                "body_len": rec.body_len,
                "body_sha256": rec.body_sha256,
                "body": rec.body.decode("latin-1") if rec.body_len <= 65536 else None,
                "conn": rec.conn,
            }
            body = json.dumps(echo).encode()
            ctype = "application/json"
        http10 = rec.version == "HTTP/1.0"
        close = bool(q.get("close")) or bool(q.get("noclen"))
        close = close or "close" in lower.get("connection", "").lower()
        close = close or (http10 and "keep-alive" not in lower.get("connection", "").lower())
        chunked = bool(q.get("chunked")) and not http10
        head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}"]
        head.append("Server: test-backend")
        head.append("Date: Thu, 01 Jan 1970 00:00:00 GMT")
        no_body = rec.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        if chunked:
            head.append("Transfer-Encoding: chunked")
        elif not q.get("noclen"):
            head.append(f"Content-Length: {len(body)}")
        if close:
            head.append("Connection: close")
        elif http10:
            head.append("Connection: keep-alive")
        for name, value in extra:
            head.append(f"{name}:{value}" if value.startswith(" ") else f"{name}: {value}")
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if no_body or q.get("nobody"):
            sock.sendall(out)
            return not close
        piece = int(q.get("piece", "16384"))
        slow = float(q.get("slow", "0"))
        if chunked:
            pieces = [body[i : i + piece] for i in range(0, len(body), piece)]
            sock.sendall(out)
            for p in pieces:
                if slow:
                    time.sleep(slow)
                sock.sendall(b"%x\r\n%s\r\n" % (len(p), p))
            sock.sendall(b"0\r\n\r\n")
        elif slow:
            sock.sendall(out)
            for i in range(0, len(body), piece):
                time.sleep(slow)
                sock.sendall(body[i : i + piece])
        else:
            sock.sendall(out + body)
        return not close

    def _websocket(self, sock: socket.socket, lower: dict[str, str]) -> None:
        key = lower.get("sec-websocket-key", "").encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        reader = _Reader(sock)
        while True:
            frame = read_ws_frame(reader)
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 8:
                sock.sendall(ws_frame(8, payload, mask=False))
                return
            if opcode == 9:
                sock.sendall(ws_frame(10, payload, mask=False))
                continue
            sock.sendall(ws_frame(opcode, payload, mask=False))


def _record_sni(obj: Any, name: str | None, ctx: Any) -> None:
    obj.sni_seen = name


class _Reader:
    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.buf = initial

    def read(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            data = self.sock.recv(max(65536, n - len(self.buf)))
            if not data:
                return None
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def ws_frame(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    """One final WebSocket frame; clients mask, servers do not."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x12\x34\x56\x78"
    masked = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, key)
    )
    return head + key + masked


def _mask(payload: bytes, key: bytes) -> bytes:
    k = int.from_bytes((key * ((len(payload) + 3) // 4))[: len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(len(payload), "big")


def read_ws_frame(reader: _Reader) -> tuple[int, bytes] | None:
    head = reader.read(2)
    if head is None:
        return None
    opcode = head[0] & 0x0F
    n = head[1] & 0x7F
    masked = head[1] & 0x80
    if n == 126:
        ext = reader.read(2)
        if ext is None:
            return None
        n = struct.unpack("!H", ext)[0]
    elif n == 127:
        ext = reader.read(8)
        if ext is None:
            return None
        n = struct.unpack("!Q", ext)[0]
    key = b""
    if masked:
        k = reader.read(4)
        if k is None:
            return None
        key = k
    payload = reader.read(n) if n else b""
    if payload is None:
        return None
    if masked and payload:
        payload = _mask(payload, key)
    return opcode, payload


def ws_client_handshake(sock: socket.socket, path: str, host: str) -> tuple[bytes, _Reader]:
    """Send an upgrade request over `sock`; returns the response head and a frame reader."""
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, _Reader(sock, rest)


def parse_response(data: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """(status, status line, headers, body) of one HTTP/1.x response in `data` (body
    de-chunked when chunked)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    status = int(status_line.split(" ")[1])
    headers = []
    for line in lines[1:]:
        n, _, v = line.partition(":")
        headers.append((n, v.strip()))
    if any(n.lower() == "transfer-encoding" and "chunked" in v for n, v in headers):
        out = bytearray()
        rest = body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        body = bytes(out)
    return status, status_line, headers, body


def unquote_target(target: str) -> str:
    return unquote(target)


class Response:
    """One response read off a client socket."""

    def __init__(
        self,
        status: int,
        status_line: str,
        headers: list[tuple[str, str]],
        body: bytes,
        raw_head: bytes,
    ) -> None:
        self.status = status
        self.status_line = status_line
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def header_names(self) -> list[str]:
        return [n for n, _ in self.headers]

    def json(self) -> dict:  # type: ignore[type-arg]
        return json.loads(self.body)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Response {self.status_line!r} {len(self.body)} bytes>"


class ClientReader:
    """Reads successive responses from one client connection (keepalive, pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buf += data
        return True

    def read(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise EOFError(f"connection closed before a response head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0]
        status = int(status_line.split(" ")[1])
        headers = []
        for line in lines[1:]:
            n, _, v = line.partition(":")
            headers.append((n, v.strip()))
        low = {n.lower(): v for n, v in headers}
        if head_only or status in (101, 204, 304) or 100 <= status < 200:
            return Response(status, status_line, headers, b"", head)
        if "chunked" in low.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                while b"\r\n" not in self.buf:
                    if not self._more():
                        raise EOFError("connection closed inside a chunked body")
                size_line, _, self.buf = self.buf.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._more():
                        raise EOFError("connection closed inside a chunk")
                if size == 0:
                    self.buf = self.buf[2:]
                    break
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
            return Response(status, status_line, headers, bytes(body), head)
        if "content-length" in low:
            n = int(low["content-length"])
            while len(self.buf) < n:
                if not self._more():
                    raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
            body, self.buf = self.buf[:n], self.buf[n:]
            return Response(status, status_line, headers, bytes(body), head)
        while self._more():
            pass
        body, self.buf = self.buf, b""
        return Response(status, status_line, headers, body, head)


def http_get(
    port: int,
    target: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
    version: str = "HTTP/1.1",
    timeout: float = 10.0,
    head_only: bool = False,
) -> Response:
    """One request on a new connection (`Connection: close`), its response."""
    hdrs = [("Host", "localhost")] if headers is None else list(headers)
    if not any(n.lower() == "connection" for n, _ in hdrs):
        hdrs.append(("Connection", "close"))
    if body is not None and not any(
        n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs
    ):
        hdrs.append(("Content-Length", str(len(body))))
    raw = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs)
    data = raw.encode("latin-1") + b"\r\n" + (body or b"")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return ClientReader(sock).read(head_only=head_only or method == "HEAD")


__all__ = [
    "ClientReader",
    "HttpBackend",
    "Response",
    "http_get",
    "Recorded",
    "parse_response",
    "pattern",
    "read_ws_frame",
    "ws_client_handshake",
    "ws_frame",
]


@pytest.fixture
def origin() -> Iterator[Callable[..., HttpBackend]]:
    """Factory: origin(**kwargs) -> a running HttpBackend (closed at teardown)."""
    made: list[HttpBackend] = []

    def make(**kwargs: Any) -> HttpBackend:
        b = HttpBackend(**kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        with contextlib.suppress(OSError):
            b.close()
