"""`listen` parameters, per-server error logs, and hostile clients that hold connections."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_all, recv_exactly

CLIENT = "127.0.0.23"
BackendFactory = Callable[..., Backend]


def _ss(*args: str) -> str:
    return subprocess.run(
        ["ss", "-H", *args], capture_output=True, text=True, timeout=10, check=False
    ).stdout


def test_reuseport_gives_each_worker_a_socket(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port} reuseport backlog=77; "
        f"proxy_pass {b.address}; }} }}\n",
        workers=2,
    )
    listening = [line for line in _ss("-ltn").splitlines() if f"127.0.0.1:{port} " in line]
    assert len(listening) == 2, listening
    assert all(line.split()[2] == "77" for line in listening), listening
    for i in range(20):
        with client("127.0.0.1", port, source=CLIENT) as c:
            c.sendall(b"%d" % i)
            assert recv_exactly(c, len(b"%d" % i)) == b"%d" % i


def test_ipv6only_off_accepts_ipv4_clients(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="record")
    probe = socket.socket(socket.AF_INET6)
    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    probe.bind(("::", 0))  # a port free for IPv4 and IPv6 alike
    port = probe.getsockname()[1]
    probe.close()
    pyngx(
        f"stream {{ server {{ listen [::]:{port} ipv6only=off; proxy_pass {b.address}; "
        "proxy_protocol on; } }\n"
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        cport = c.getsockname()[1]
        c.sendall(b"x")
        (conn,) = b.wait_for_connections(1)
        data = conn.wait_for(b"x")
    assert data == f"PROXY TCP6 ::ffff:{CLIENT} ::ffff:127.0.0.1 {cport} {port}\r\nx".encode()


def test_keepalive_options_reach_the_sockets(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port} so_keepalive=30s:5s:3; "
        f"proxy_pass {b.address}; proxy_socket_keepalive on; }} }}\n"
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.sendall(b"k")
        assert recv_exactly(c, 1) == b"k"
        # Client side of the proxy: accepted socket inherits keepalive from the listener.
        front = _ss("-tno", "state", "established", f"( sport = :{port} )")
        back = _ss("-tno", "state", "established", f"( dport = :{b.port} )")
    assert "keepalive" in front, front
    assert "keepalive" in back, back


def test_per_server_error_log(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    port_a, port_b = free_port(), free_port()
    dead = free_port()
    log_b = tmp_path / "b-error.log"
    srv = pyngx(
        "stream {\n"
        f"  server {{ listen 127.0.0.1:{port_a}; proxy_pass 127.0.0.1:{dead}; }}\n"
        f"  server {{ listen 127.0.0.1:{port_b}; proxy_pass 127.0.0.1:{dead};"
        f" error_log {log_b} error; }}\n"
        "}\n"
    )
    for port in (port_a, port_b):
        with client("127.0.0.1", port, source=CLIENT) as c:
            assert recv_all(c, reset_ok=True) == b""
    srv.wait_for_log(rf"server: 127\.0\.0\.1:{port_a}, upstream")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "connect() failed" not in log_b.read_text():
        time.sleep(0.05)
    assert f"server: 127.0.0.1:{port_b}" in log_b.read_text()
    assert f"server: 127.0.0.1:{port_b}" not in srv.error_log_text()


def test_slowloris_on_the_header_does_not_starve_others(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    """200 clients dribbling a PROXY header: others are served; the dribblers time out."""
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port} proxy_protocol; proxy_pass {b.address};"
        " proxy_protocol_timeout 2s; } }\n"
    )
    slow = []
    try:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.24", 0))
            s.connect(("127.0.0.1", port))
            s.sendall(b"PROXY TCP4 ")
            slow.append(s)
        for i in range(20):
            with client("127.0.0.1", port, source=CLIENT) as c:
                c.sendall(f"PROXY TCP4 192.0.2.1 127.0.0.1 1000 {port}\r\nhi{i}".encode())
                assert recv_exactly(c, len(f"hi{i}")) == f"hi{i}".encode()
        deadline = time.monotonic() + 10
        for s in slow:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in slow:
            s.close()
    assert srv.error_log_text().count("client timed out") == 200


def test_listen_without_port_binds_an_ephemeral_port(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    """nginx binds `listen 127.0.0.7;` to port 0 (the kernel picks); so does pyngx."""
    b = backend(mode="echo")
    pyngx(f"stream {{ server {{ listen 127.0.0.7; proxy_pass {b.address}; }} }}\n")
    listening = [line for line in _ss("-ltn").splitlines() if "127.0.0.7:" in line]
    assert len(listening) == 1, listening
    port = int(listening[0].split()[3].rsplit(":", 1)[1])
    with client("127.0.0.7", port, source=CLIENT) as c:
        c.sendall(b"e")
        assert recv_exactly(c, 1) == b"e"
