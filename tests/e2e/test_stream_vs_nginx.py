"""Stream behaviours checked against nginx and pyngx with the same assertions.

Each test runs once per implementation (`server_kind`); where the two produce values that
must agree exactly (log lines, bytes counted), the test runs both in one go and compares.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_all, recv_exactly, recv_until

CLIENT = "127.0.0.23"
BackendFactory = Callable[..., Backend]


def one_server(port: int, upstream: str, extra: str = "", listen: str = "") -> str:
    return (
        "stream {\n"
        f"  server {{ listen 127.0.0.1:{port}{listen}; proxy_pass {upstream}; {extra} }}\n"
        "}\n"
    )


def test_idle_session_times_out(server: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = server(one_server(port, b.address, "proxy_timeout 1s;"))
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.sendall(b"ping")
        assert recv_exactly(c, 4) == b"ping"
        start = time.monotonic()
        assert recv_all(c, timeout=5) == b""
        assert time.monotonic() - start < 4
    line = srv.wait_for_log(r"timed out")
    assert re.search(
        r"\[info\] \d+#\d+: \*\d+ connection timed out \(110: Connection timed out\) while "
        r"proxying connection, client: 127\.0\.0\.23, server: 127\.0\.0\.1:\d+, upstream: "
        rf'"{re.escape(b.address)}", bytes from/to client:4/4, bytes from/to upstream:4/4$',
        line,
    ), line


def test_upstream_connect_timeout(server: ServerFactory) -> None:
    # A listener whose accept queue is full drops SYNs, so the connect never completes.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    bport = blocker.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", bport))
            fillers.append(s)
        time.sleep(0.2)
        port = free_port()
        srv = server(one_server(port, f"127.0.0.1:{bport}", "proxy_connect_timeout 1s;"))
        with client("127.0.0.1", port, source=CLIENT) as c:
            assert recv_all(c, timeout=6, reset_ok=True) == b""
        line = srv.wait_for_log(r"upstream timed out")
        assert re.search(
            r"\[error\] \d+#\d+: \*\d+ upstream timed out \(110: Connection timed out\) while "
            r"connecting to upstream, client: 127\.0\.0\.23, server: 127\.0\.0\.1:\d+, "
            rf'upstream: "127\.0\.0\.1:{bport}", bytes from/to client:0/0, '
            r"bytes from/to upstream:0/0$",
            line,
        ), line
    finally:
        for s in fillers:
            s.close()
        blocker.close()


def test_proxy_bind_sets_upstream_source(server: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="echo")
    port = free_port()
    server(one_server(port, b.address, "proxy_bind 127.0.0.5;"))
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.sendall(b"x")
        assert recv_exactly(c, 1) == b"x"
    (conn,) = b.wait_for_connections(1)
    assert conn.peer[0] == "127.0.0.5"


def test_specific_address_on_a_wildcard_port(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """`listen P` and `listen 127.0.0.2:P` coexist: the local address picks the server."""
    a, b = backend(banner=b"A\n"), backend(banner=b"B\n")
    port = free_port("0.0.0.0")  # the wildcard must be free, not only 127.0.0.1
    server(
        "stream {\n"
        f"  server {{ listen {port}; proxy_pass {a.address}; }}\n"
        f"  server {{ listen 127.0.0.2:{port}; proxy_pass {b.address}; }}\n"
        "}\n"
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        assert recv_until(c, b"\n") == b"A\n"
    with client("127.0.0.2", port, source=CLIENT) as c:
        assert recv_until(c, b"\n") == b"B\n"


def test_ipv6_loopback_header(server: ServerFactory, backend: BackendFactory) -> None:
    b = backend(host="::1", banner=b"220 v6\r\n")
    port = free_port("::1")
    server(
        "stream {\n"
        f"  server {{ listen [::1]:{port}; proxy_pass {b.address}; proxy_protocol on; }}\n"
        "}\n"
    )
    with client("::1", port, source=None) as c:
        cport = c.getsockname()[1]
        assert recv_until(c, b"\r\n") == b"220 v6\r\n"
        c.sendall(b"QUIT\r\n")
        (conn,) = b.wait_for_connections(1)
        data = conn.wait_for(b"QUIT\r\n")
    assert data == f"PROXY TCP6 ::1 ::1 {cport} {port}\r\nQUIT\r\n".encode()


def test_unix_socket_listener_sends_unknown(
    server: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    b = backend(mode="echo")
    path = tmp_path / "front.sock"
    server(
        "stream {\n"
        f"  server {{ listen unix:{path}; proxy_pass {b.address}; proxy_protocol on; }}\n"
        "}\n"
    )
    from tests.harness import client_unix

    with client_unix(path) as c:
        c.sendall(b"hello")
        assert recv_exactly(c, len(b"PROXY UNKNOWN\r\n") + 5) == b"PROXY UNKNOWN\r\nhello"


def _log_line(
    kind_factory: ServerFactory,
    backend: BackendFactory,
    tmp_path: Path,
    tag: str,
    upstream_ok: bool,
) -> str:
    b = backend(banner=b"220 hi\r\n", mode="record")
    port = free_port()
    up = b.address if upstream_ok else f"127.0.0.1:{free_port()}"
    log = tmp_path / f"{tag}-access.log"
    fmt = (
        "$remote_addr|$server_addr|$protocol|$status|$bytes_sent|$bytes_received|"
        "$upstream_bytes_sent|$upstream_bytes_received|$proxy_protocol_addr|$binary_remote_addr"
    )
    srv = kind_factory(
        "stream {\n"
        f"  log_format t '{fmt}';\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass {up}; proxy_protocol on;\n"
        f"           access_log {log} t; }}\n"
        "}\n"
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        if upstream_ok:
            assert recv_until(c, b"\r\n") == b"220 hi\r\n"
            c.sendall(b"QUIT\r\n")
            b.wait_for_connections(1)[0].wait_for(b"QUIT\r\n")
            c.shutdown(socket.SHUT_WR)
        recv_all(c, reset_ok=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (log.exists() and log.read_text()):
        time.sleep(0.05)
    srv.stop()
    return log.read_text()


@pytest.mark.nginx
@pytest.mark.parametrize("upstream_ok", [True, False], ids=["proxied", "refused"])
def test_access_log_values_equal_nginx(
    pyngx: ServerFactory,
    nginx: ServerFactory,
    backend: BackendFactory,
    tmp_path: Path,
    upstream_ok: bool,
) -> None:
    ours = _log_line(pyngx, backend, tmp_path, "pyngx", upstream_ok)
    theirs = _log_line(nginx, backend, tmp_path, "nginx", upstream_ok)
    assert ours == theirs
    assert ours.startswith("127.0.0.23|127.0.0.1|TCP|" + ("200" if upstream_ok else "502"))


def test_many_short_connections_and_resets_leave_others_intact(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """A flood of connects and resets never disturbs a session in progress."""
    b = backend(mode="echo")
    port = free_port()
    server(one_server(port, b.address))
    errors: list[BaseException] = []
    stop = threading.Event()

    def flood() -> None:
        try:
            for i in range(300):
                if stop.is_set():
                    return
                s = socket.socket()
                s.bind(("127.0.0.24", 0))
                s.connect(("127.0.0.1", port))
                if i % 2:
                    s.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                else:
                    s.sendall(b"junk")
                s.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with client("127.0.0.1", port, source=CLIENT, timeout=10) as c:
        threads = [threading.Thread(target=flood) for _ in range(3)]
        for t in threads:
            t.start()
        for i in range(200):
            msg = f"message {i}\n".encode()
            c.sendall(msg)
            assert recv_exactly(c, len(msg), timeout=10) == msg
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
