"""The http proxy's connect errors that are not connect()'s, as ngx_event_connect_peer has
them: socket() (out of descriptors) at ALERT and bind() (proxy_bind) at CRIT end the request
with 500 and try no other upstream server; connect() failures stay "connect() failed" and go
to the next one (test_http_proxy_upstream.py)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.harness import free_port, recv_until
from tests.http_backend import ClientReader, HttpBackend, http_get, origin

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]


def log_text(server: object, name: str, timeout: float = 5.0) -> str:
    path = server.prefix / "logs" / name  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"nothing in {name}"
        time.sleep(0.05)
    return str(path.read_text())


def get_on(sock: socket.socket, target: str, timeout: float = 5.0) -> int:
    """A keepalive request on an open connection; its status."""
    sock.settimeout(timeout)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    return ClientReader(sock).read().status


def test_proxy_bind_failure_is_500_without_next_upstream(
    pyngx: ServerFactory, origin: Origin
) -> None:
    a, b = origin(), origin()
    port = free_port()
    server = pyngx(
        "http {\n"
        "  log_format up '$status $upstream_addr';\n"
        f"  upstream g {{ server {a.address}; server {b.address}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; access_log logs/up.log up;\n"
        "    location / { proxy_pass http://g; proxy_bind 192.0.2.1; } }\n"
        "}\n"
    )
    r = http_get(port, "/x", headers=[("Host", "front.example")])
    assert r.status == 500
    line = server.wait_for_log(r"bind\(192\.0\.2\.1\) failed")
    assert "[crit]" in line
    assert line.split(" *1 ", 1)[1] == (
        "bind(192.0.2.1) failed (99: Cannot assign requested address) while connecting to "
        'upstream, client: 127.0.0.1, server: , request: "GET /x HTTP/1.1", '
        f'upstream: "http://{a.address}/x", host: "front.example"'
    )
    # No second try: the other server never hears of it, and no connect() error is logged.
    assert log_text(server, "up.log") == f"500 {a.address}\n"
    assert a.connections == 0 and b.connections == 0
    assert "connect() failed" not in server.error_log_text()


def test_proxy_bind_to_a_local_address_connects_from_it(pyngx: ServerFactory) -> None:
    """The path that creates and binds the socket itself still connects, from that address."""
    listener = socket.create_server(("127.0.0.1", 0))
    peers: list[str] = []

    def serve() -> None:
        conn, addr = listener.accept()
        with conn:
            recv_until(conn, b"\r\n\r\n")
            peers.append(addr[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = free_port()
    try:
        upstream = listener.getsockname()[1]
        pyngx(
            f"http {{ server {{ listen 127.0.0.1:{port};\n"
            f"  location / {{ proxy_pass http://127.0.0.1:{upstream}; proxy_bind 127.0.0.7; }}"
            " } }\n"
        )
        r = http_get(port, "/via")
        assert (r.status, r.body) == (200, b"ok")
        thread.join(5)
        assert peers == ["127.0.0.7"]
    finally:
        listener.close()


def test_out_of_descriptors_at_socket_is_500_and_passes(
    pyngx: ServerFactory, origin: Origin
) -> None:
    """Client connections take every descriptor the worker has; a request on one of them
    then finds socket() failing: nginx's alert, 500, and service once descriptors are back."""
    b = origin()
    port = free_port()
    server = pyngx(
        "worker_rlimit_nofile 64;\n"
        f"http {{ server {{ listen 127.0.0.1:{port};\n"
        '  location = /r { return 200 "r"; }\n'
        f"  location / {{ proxy_pass http://{b.address}; }} }} }}\n"
    )
    held: list[socket.socket] = []
    try:
        # Fill: each kept-alive client holds one descriptor, until one is not served.
        for _ in range(80):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                status = get_on(c, "/r", timeout=1.0)
            # Not served: left in the backlog (a timeout), or accepted and closed at once
            # (EOF: libuv's answer to EMFILE at accept, its reserve-descriptor trick).
            except (OSError, EOFError, ValueError, AssertionError):
                c.close()
                break
            assert status == 200
            held.append(c)
        else:
            raise AssertionError("80 connections fit in 64 descriptors?")
        assert len(held) > 10
        # No descriptor left for the upstream socket.
        assert get_on(held[0], "/up") == 500
        line = server.wait_for_log(r"socket\(\) failed")
        assert "[alert]" in line
        assert (
            line.split(" *", 1)[1]
            .split(" ", 1)[1]
            .startswith(
                "socket() failed (24: Too many open files) while connecting to upstream, "
                'client: 127.0.0.1, server: , request: "GET /up HTTP/1.1", '
            )
        )
        assert b.connections == 0
    finally:
        for c in held:
            c.close()
    # Descriptors back: proxied again.
    deadline = time.monotonic() + 5
    while http_get(port, "/again").status != 200:
        assert time.monotonic() < deadline, "not proxied again"
        time.sleep(0.1)
    assert "worker process" not in server.error_log_text().replace("start worker process", "")
