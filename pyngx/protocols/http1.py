"""TEMPORARY stand-in (replaced by the h-http1 branch) with the same API."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote


class HttpParseError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: list[tuple[str, str]]
    size: int
    request_line: str


def parse_request_head(
    buf: bytes | bytearray,
    *,
    header_buffer_size: int = 1024,
    large_header_buffers: tuple[int, int] = (4, 8192),
    underscores_in_headers: bool = False,
    ignore_invalid_headers: bool = True,
) -> RequestHead | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > large_header_buffers[0] * large_header_buffers[1]:
            raise HttpParseError(494, "client sent too long header line")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    line = lines[0]
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpParseError(400, "client sent invalid request")
    method, target, ver = parts
    version = (int(ver[5]), int(ver[7]))
    headers = []
    for h in lines[1:]:
        name, colon, value = h.partition(":")
        if not colon:
            raise HttpParseError(400, f'client sent invalid header line: "{h}"')
        headers.append((name, value.strip()))
    return RequestHead(method, target, version, headers, end + 4, line)


def split_target(target: str, *, merge_slashes: bool = True) -> tuple[str, str, str | None]:
    host = None
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        host, slash, path = rest.partition("/")
        target = "/" + path
    path, _, args = target.partition("?")
    return unquote(path), args, host


@dataclass(slots=True)
class BodyFraming:
    content_length: int | None
    chunked: bool
    keepalive: bool
    expect_continue: bool
    upgrade: bool
    host: str


def request_framing(head: RequestHead, host_from_target: str | None) -> BodyFraming:
    cl = None
    chunked = False
    keepalive = head.version >= (1, 1)
    expect = upgrade = False
    host = host_from_target
    for name, value in head.headers:
        n = name.lower()
        if n == "content-length":
            cl = int(value)
        elif n == "transfer-encoding":
            chunked = value.lower() == "chunked"
        elif n == "connection":
            v = value.lower()
            if "close" in v:
                keepalive = False
            elif "keep-alive" in v:
                keepalive = True
            if "upgrade" in v:
                upgrade = True
        elif n == "expect":
            expect = value.lower() == "100-continue"
        elif n == "host" and host is None:
            host = value
    host = (host or "").lower().rsplit(":", 1)[0] if host and not host.endswith("]") else (host or "").lower()
    return BodyFraming(cl, chunked, keepalive, expect, upgrade, host)


class ChunkedDecoder:
    def __init__(self, max_size: int | None = None) -> None:
        self.buf = b""
        self.done = False
        self.rest = b""
        self.size = 0
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while not self.done:
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            n = int(self.buf[:i].split(b";")[0], 16)
            if n == 0:
                j = self.buf.find(b"\r\n\r\n", i)
                if j < 0:
                    break
                self.done = True
                self.rest = self.buf[j + 4 :]
                break
            if len(self.buf) < i + 2 + n + 2:
                break
            out.append(self.buf[i + 2 : i + 2 + n])
            self.buf = self.buf[i + 4 + n :]
        return out


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
