"""The proxy's hot path (a pooled connection, a head seen before, the whole body in one read)
must answer exactly as the general path does: the same bytes to the client (but for Date), the
same access log values, and the general path for everything unusual.

The first response of a kind goes the general way (it fills the parse caches); the ones after
it take the hot path, so comparing them compares the two paths.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.http_backend import ClientReader, HttpBackend, http_get, origin, pattern
from tests.integration.test_http_proxy_upstream import KA, log_lines, start

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]

LOG = (
    "log_format v '$status $body_bytes_sent $bytes_sent $upstream_addr $upstream_status "
    "$upstream_response_length $upstream_bytes_received $upstream_http_x_a "
    "$sent_http_content_type';\n"
    "access_log logs/v.log v;\n"
)


def _no_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date:"))


def test_hot_path_answers_as_the_general_path(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx,
        LOG + f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    target = "/a?size=1000&h=X-A:1&h=Set-Cookie:c%3D1"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        reader = ClientReader(s)
        responses = []
        for _ in range(6):
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            responses.append(reader.read())
    first = responses[0]
    assert first.status == 200
    assert first.body == pattern(1000)
    assert first.header("X-A") == "1"
    assert first.header("Connection") == "keep-alive"
    assert first.header("Server") or "".startswith("nginx")
    for r in responses[1:]:
        assert _no_date(r.raw_head) == _no_date(first.raw_head)
        assert r.body == first.body
    lines = log_lines(server, "v.log", 6)
    assert len(lines) == 6
    assert len(set(lines)) == 1, lines
    status, body_sent, bytes_sent, addr, up_status, up_len, up_recv, xa, ct = (
        lines[0].split(" ")
    )
    assert (status, body_sent, addr, up_status, up_len, xa, ct) == (
        "200",
        "1000",
        b.address,
        "200",
        "1000",
        "1",
        "application/octet-stream",
    )
    assert int(bytes_sent) == len(first.raw_head) + 4 + 1000  # raw_head: without the blank line
    assert int(up_recv) > 1000
    assert b.connections == 1


def test_hot_path_follows_the_client(pyngx: ServerFactory, origin: Origin) -> None:
    """The same upstream head to clients that differ (HTTP/1.0, HEAD, a closing client, a
    location with add_header): each gets its own head."""
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://ka; {KA} }}\n"
        f"  location /h/ {{ proxy_pass http://ka; {KA} add_header X-Added yes; }}\n"
        "}",
    )
    for _ in range(3):
        r11 = http_get(port, "/x?size=10", headers=[("Host", "h"), ("Connection", "keep-alive")])
        r10 = http_get(port, "/x?size=10", version="HTTP/1.0")
        rclose = http_get(port, "/x?size=10")
        rhead = http_get(port, "/x?size=10", method="HEAD", head_only=True)
        radd = http_get(port, "/h/x?size=10")
        assert r11.header("Connection") == "keep-alive"
        assert r10.header("Connection") == "close"
        assert rclose.header("Connection") == "close"
        assert r11.body == r10.body == rclose.body == radd.body == pattern(10)
        assert rhead.status == 200 and rhead.header("Content-Length") == "10"
        assert radd.header("X-Added") == "yes"
        assert r11.header("X-Added") is None
    # The HEAD requests ask the upstream HEAD: their heads differ (no body), no fast path.
    assert b.connections == 1


def test_hot_path_date_moves(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    dates = []
    for _ in range(3):
        dates.append(http_get(port, "/d?size=5").header("Date"))
        time.sleep(1.1)
    assert len(set(dates)) == 3


def test_hot_path_falls_back(pyngx: ServerFactory, origin: Origin) -> None:
    """Heads seen before, but answers the hot path leaves to the general one: a status to
    retry, a closing upstream."""
    b = origin()
    dead = origin()
    dead.routes["/bad"] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad"
    server, port = start(
        pyngx,
        "log_format up '$status $upstream_addr|$upstream_status';\n"
        "access_log logs/up.log up;\n"
        f"upstream two {{ server {dead.address}; server {b.address}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://two; {KA} proxy_next_upstream http_502; }}\n"
        "}",
    )
    for _ in range(4):
        r = http_get(port, "/bad?size=7")
        # Round robin: the dead peer's 502 is retried on the live one, or the live one first.
        assert r.status == 200 and r.body == pattern(7)
    lines = log_lines(server, "up.log", 4)
    assert f"200 {dead.address}, {b.address}|502, 200" in lines, lines
    for _ in range(3):
        r = http_get(port, "/c?size=20&close=1")
        assert r.status == 200 and r.body == pattern(20)
    assert b.requests[-1].target == "/c?size=20&close=1"


def test_many_clients_at_once_share_few_connections(pyngx: ServerFactory, origin: Origin) -> None:
    """Requests that find the cache empty take the connections responses of the same round
    give back, or open their own: every client gets its own answer, in order."""
    b = origin()
    server, port = start(
        pyngx,
        "log_format up '$upstream_status $upstream_bytes_sent';\naccess_log logs/up.log up;\n"
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(24)]
    readers = [ClientReader(s) for s in socks]
    try:
        for round_ in range(15):
            for i, s in enumerate(socks):
                size = 10 + i % 3
                s.sendall(f"GET /r{round_}?size={size}&c={i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            for i, reader in enumerate(readers):
                r = reader.read()
                assert r.status == 200
                assert r.body == pattern(10 + i % 3)
    finally:
        for s in socks:
            s.close()
    lines = log_lines(server, "up.log", 24 * 15)
    assert len(lines) == 24 * 15
    assert all(line.split(" ")[0] == "200" and int(line.split(" ")[1]) > 0 for line in lines)
    assert b.connections <= 24 * 15
    assert len(b.requests) == 24 * 15


def test_hot_path_leaves_what_it_cannot_answer(pyngx: ServerFactory, origin: Origin) -> None:
    """Byte-identical upstream heads, seen again and again, that the hot path must leave to
    the general one: no content, an error status, a chunked body, X-Accel-Redirect."""
    b = origin()
    b.routes["/n"] = b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    b.routes["/m"] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    b.routes["/k"] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b.routes["/x"] = b"HTTP/1.1 200 OK\r\nX-Accel-Redirect: /inner\r\nContent-Length: 2\r\n\r\nno"
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://ka; {KA} }}\n"
        '  location /inner { internal; return 200 "inner"; }\n'
        "}",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        reader = ClientReader(s)
        for _ in range(3):
            for path, status, body in (
                ("/n", 204, b""),
                ("/m", 404, b"nope"),
                ("/k", 200, b"abc"),
                ("/x", 200, b"inner"),
            ):
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                r = reader.read()
                assert (r.status, r.body) == (status, body), path
                if path == "/n":
                    assert r.header("X-A") == "1"
