"""Bodies through the http proxy: many MiB both ways, buffered and streamed, flow control.

Request bodies: `proxy_request_buffering on` reads the whole body before the upstream sees the
request (and sends it with its length, even when the client sent it chunked); `off` streams
it (chunked to an HTTP/1.1 upstream when the client sent chunked). Response bodies: with
`proxy_buffering on` a slow client does not hold the upstream (the response is read ahead),
with `off` (or `X-Accel-Buffering: no`) upstream reading waits for the client.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import ServerFactory
from tests.harness import free_port
from tests.http_backend import ClientReader, HttpBackend, http_get, origin, pattern

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]
MIB = 1024 * 1024


def start(pyngx: ServerFactory, http: str) -> int:
    port = free_port()
    pyngx("http {\n" + http.replace("LISTEN", f"listen 127.0.0.1:{port}") + "\n}\n")
    return port


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, piece: int = 100_000) -> bytes:
    out = bytearray()
    for i in range(0, len(data), piece):
        p = data[i : i + piece]
        out += b"%x\r\n%s\r\n" % (len(p), p)
    return bytes(out + b"0\r\n\r\n")


def server_conf(b: HttpBackend, extra: str = "") -> str:
    return (
        "server { LISTEN; client_max_body_size 200m;\n"
        f"  location / {{ proxy_pass http://{b.address}; {extra} }}\n"
        f"  location /v11/ {{ proxy_pass http://{b.address}; proxy_http_version 1.1; {extra} }}\n"
        "}"
    )


@pytest.mark.parametrize("size", [0, 1, 65536, 20 * MIB])
def test_upload_buffered_content_length(pyngx: ServerFactory, origin: Origin, size: int) -> None:
    b = origin(keep_body=0)
    port = start(pyngx, server_conf(b))
    body = pattern(size)
    echo = http_get(port, "/up", method="POST", body=body, timeout=30).json()
    assert echo["body_len"] == size and echo["body_sha256"] == sha(body)
    assert ["Content-Length", str(size)] in echo["headers"]


def test_upload_buffered_chunked_goes_with_length(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin(keep_body=0)
    port = start(pyngx, server_conf(b))
    body = pattern(5 * MIB + 3)
    r = http_get(
        port,
        "/up",
        method="POST",
        body=chunked(body),
        headers=[("Host", "x"), ("Transfer-Encoding", "chunked")],
        timeout=30,
    )
    echo = r.json()
    assert echo["body_sha256"] == sha(body)
    names = [h[0] for h in echo["headers"]]
    assert "Transfer-Encoding" not in names
    assert ["Content-Length", str(len(body))] in echo["headers"]


@pytest.mark.parametrize("buffering", ["on", "off"])
def test_request_buffering_decides_when_upstream_sees_the_request(
    pyngx: ServerFactory, origin: Origin, buffering: str
) -> None:
    b = origin(keep_body=0)
    port = start(pyngx, server_conf(b, f"proxy_request_buffering {buffering};"))
    body = pattern(8 * MIB)
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body[:MIB])
        seen = b.wait_heads(1, timeout=1.5)
        assert seen is (buffering == "off")
        s.sendall(body[MIB:])
        echo = ClientReader(s).read().json()
    assert echo["body_sha256"] == sha(body)
    assert ["Content-Length", str(len(body))] in echo["headers"]


def test_streamed_chunked_body_to_http11_upstream(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin(keep_body=0)
    port = start(pyngx, server_conf(b, "proxy_request_buffering off;"))
    body = pattern(6 * MIB + 11)
    data = chunked(body)
    head = (
        b"POST /v11/up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + data[:200_000])
        assert b.wait_heads(1, timeout=2)
        s.sendall(data[200_000:])
        echo = ClientReader(s).read().json()
    assert echo["body_sha256"] == sha(body)
    rec = b.wait_requests(1)[0]
    assert rec.chunked and rec.header("Transfer-Encoding") == "chunked"
    assert rec.header("Content-Length") is None
    # To an HTTP/1.0 upstream a chunked body cannot be streamed: it is buffered.
    b.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.replace(b"/v11/", b"/") + data[:200_000])
        assert not b.wait_heads(2, timeout=1)
        s.sendall(data[200_000:])
        echo = ClientReader(s).read().json()
    assert echo["body_sha256"] == sha(body)
    assert ["Content-Length", str(len(body))] in echo["headers"]


def test_expect_continue(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = start(pyngx, server_conf(b))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"data")
        echo = ClientReader(s).read().json()
    assert echo["body"] == "data"
    assert "Expect" not in [h[0] for h in echo["headers"]]


@pytest.mark.parametrize(
    ("location", "query", "version", "framing"),
    [
        ("/", "size=20000000", "HTTP/1.1", "content-length"),
        ("/v11/", "size=20000000&chunked=1", "HTTP/1.1", "chunked"),
        ("/", "size=20000000&noclen=1", "HTTP/1.1", "chunked"),
        ("/", "size=20000000&noclen=1", "HTTP/1.0", "close"),
        ("/v11/", "size=20000000&chunked=1&piece=7", "HTTP/1.1", "chunked"),
    ],
)
@pytest.mark.parametrize("buffering", ["on", "off"])
def test_download(
    pyngx: ServerFactory,
    origin: Origin,
    location: str,
    query: str,
    version: str,
    framing: str,
    buffering: str,
) -> None:
    if "piece=7" in query:
        query = query.replace("20000000", "300000")
    b = origin()
    port = start(pyngx, server_conf(b, f"proxy_buffering {buffering};"))
    size = int(query.split("size=")[1].split("&")[0])
    r = http_get(port, f"{location}d?{query}", version=version, timeout=60)
    assert r.status == 200
    assert len(r.body) == size and sha(r.body) == sha(pattern(size))
    if framing == "content-length":
        assert r.header("Content-Length") == str(size)
    elif framing == "chunked":
        assert r.header("Transfer-Encoding") == "chunked"
    else:
        assert r.header("Content-Length") is None and r.header("Transfer-Encoding") is None


@pytest.mark.parametrize(
    ("extra", "query", "held"),
    [
        ("proxy_buffering on;", "", False),
        ("proxy_buffering off;", "", True),
        ("proxy_buffering on;", "&h=X-Accel-Buffering:no", True),
        ("proxy_buffering on; proxy_max_temp_file_size 0;", "", True),
        ("proxy_buffering off;", "&h=X-Accel-Buffering:yes", False),
    ],
)
def test_slow_client_and_the_upstream(
    pyngx: ServerFactory, origin: Origin, extra: str, query: str, held: bool
) -> None:
    """Buffering reads ahead so the upstream is done; without it the upstream waits."""
    b = origin()
    port = start(pyngx, server_conf(b, extra))
    size = 32 * MIB
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(
            f"GET /slow?size={size}{query} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        done = b.wait_responses(1, timeout=3)
        assert done is not held
        r = ClientReader(s).read()
    assert len(r.body) == size and sha(r.body) == sha(pattern(size))
    assert r.header("X-Accel-Buffering") is None
    assert b.wait_responses(1, timeout=5)


def test_unbuffered_response_streams_as_it_comes(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = start(pyngx, server_conf(b, "proxy_buffering off;"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(
            b"GET /s?size=5000&piece=1000&slow=0.4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        first = s.recv(65536)
        while b"\r\n\r\n" not in first:
            first += s.recv(65536)
        while len(first.partition(b"\r\n\r\n")[2]) == 0:
            first += s.recv(65536)
        elapsed = time.monotonic() - t0
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
    assert elapsed < 1.5  # the first piece, not the whole (2 s) response
    body = (first + rest).partition(b"\r\n\r\n")[2]
    assert body == pattern(5000)


def test_client_gone_midway_closes_upstream(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = start(pyngx, server_conf(b, "proxy_buffering off;"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /g?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)
    b.wait_idle(timeout=5)
    assert b.open_connections == 0


def test_upstream_closes_early_cuts_response(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    b.routes["/short"] = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nonly"
    port = start(pyngx, server_conf(b))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 100" in head and body == b"only"
