"""Upgraded connections (WebSocket) through the http proxy: 101, then bytes both ways."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_backend import (
    HttpBackend,
    http_get,
    origin,
    read_ws_frame,
    ws_client_handshake,
    ws_frame,
)

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]
WS = (
    "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
    'proxy_set_header Connection "upgrade";'
)


def start(pyngx: ServerFactory, http: str) -> tuple[ServerProcess, int]:
    port = free_port()
    server = pyngx("http {\n" + http.replace("LISTEN", f"listen 127.0.0.1:{port}") + "\n}\n")
    return server, port


def test_websocket_echo(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx,
        "log_format ws '$status $upstream_status $body_bytes_sent';\n"
        "access_log logs/ws.log ws;\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; {WS} }} }}",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head, reader = ws_client_handshake(s, "/chat/ws", "front")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        assert "Connection: upgrade" in lines and "Upgrade: websocket" in lines
        for size in (5, 125, 126, 65535, 65536, 3_000_000):
            payload = bytes(i % 256 for i in range(size))
            s.sendall(ws_frame(2, payload))
            frame = read_ws_frame(reader)
            assert frame == (2, payload)
        s.sendall(ws_frame(8, b"\x03\xe8"))
        assert read_ws_frame(reader) == (8, b"\x03\xe8")
        assert s.recv(10) == b""  # the origin closed: so does the proxy
    rec = b.wait_requests(1)[0]
    assert rec.header("Upgrade") == "websocket" and rec.header("Connection") == "upgrade"
    assert rec.version == "HTTP/1.1"
    path = server.prefix / "logs" / "ws.log"
    deadline = time.monotonic() + 5
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, upstream_status, _sent = path.read_text().split()
    assert (status, upstream_status) == ("101", "101")


def test_client_close_ends_tunnel(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; {WS} }} }}"
    )
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head, reader = ws_client_handshake(s, "/ws", "x")
    assert head.startswith(b"HTTP/1.1 101")
    s.sendall(ws_frame(1, b"ping"))
    assert read_ws_frame(reader) == (1, b"ping")
    s.close()
    b.wait_idle(timeout=5)
    assert b.open_connections == 0


def test_idle_tunnel_times_out(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx,
        f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; {WS} "
        "proxy_read_timeout 700ms; } }",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head, reader = ws_client_handshake(s, "/ws", "x")
        assert head.startswith(b"HTTP/1.1 101")
        # Traffic keeps it open past the timeout...
        for _ in range(4):
            time.sleep(0.3)
            s.sendall(ws_frame(1, b"k"))
            assert read_ws_frame(reader) == (1, b"k")
        # ... silence ends it.
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert 0.5 < time.monotonic() - t0 < 3
    server.wait_for_log(
        r"\[info\] .*upstream timed out \(110: Connection timed out\) while proxying upgraded "
        r"connection"
    )


def test_upgrade_without_client_request_is_not_a_tunnel(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    _, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; {WS} }} }}"
    )
    # Without `Upgrade` from the client, the request is plain HTTP (and the origin's plain
    # answer goes back as such).
    r = http_get(port, "/ws")
    assert r.status == 200
    assert r.json()["headers"][0] == ["Connection", "upgrade"]
