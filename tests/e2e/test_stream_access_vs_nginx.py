"""`allow`/`deny` and `limit_conn`: the same configurations under nginx and pyngx.

Clients are told apart by their loopback source address (127.0.0.23 and 127.0.0.24). A client
that is refused must be closed without the backend ever seeing a connection; the error log
line and the access log's `$status` must be nginx's.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import (
    Backend,
    ServerProcess,
    client,
    client_unix,
    free_port,
    recv_all,
    recv_until,
)

BackendFactory = Callable[..., Backend]
A, B = "127.0.0.23", "127.0.0.24"


def _log_lines(path: Path, n: int, timeout: float = 5.0) -> list[str]:
    """Wait until the access log has at least n lines; return them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def _refused(port: int, source: str) -> bytes:
    """Connect and read until the server closes; a refused client gets nothing."""
    with client("127.0.0.1", port, source=source) as s:
        return recv_all(s, reset_ok=True)


def _proxied(port: int, source: str) -> socket.socket:
    s = client("127.0.0.1", port, source=source)
    assert recv_until(s, b"\n") == b"HI\n"
    return s


def test_deny_then_allow_all(
    server: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    be = backend(banner=b"HI\n")
    port = free_port()
    log = tmp_path / "access.log"
    srv = server(
        "stream {\n"
        "  log_format st '$remote_addr $status';\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass {be.address};\n"
        f"    access_log {log} st;\n"
        f"    deny {B};\n"
        "    allow all;\n"
        "  }\n"
        "}\n"
    )
    assert _refused(port, B) == b""
    line = srv.wait_for_log("access forbidden by rule")
    assert re.search(
        rf"\[error\] \d+#\d+: \*\d+ access forbidden by rule while initializing session, "
        rf"client: {re.escape(B)}, "
        rf"server: 127\.0\.0\.1:{port}$",
        line,
    ), line
    with _proxied(port, A):
        pass
    assert len(be.connections) == 1  # the denied client never reached it
    assert _log_lines(log, 2) == [f"{B} 403", f"{A} 200"]


@pytest.mark.parametrize("key", ["$binary_remote_addr", "$remote_addr"])
def test_limit_conn(
    server: ServerFactory, backend: BackendFactory, tmp_path: Path, key: str
) -> None:
    be = backend(banner=b"HI\n")
    port = free_port()
    log = tmp_path / "access.log"
    srv: ServerProcess = server(
        "stream {\n"
        f"  limit_conn_zone {key} zone=addr:1m;\n"
        "  log_format st '$remote_addr $status';\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass {be.address};\n"
        f"    access_log {log} st;\n"
        "    limit_conn addr 2;\n"
        "  }\n"
        "}\n"
    )
    held = [_proxied(port, A), _proxied(port, A)]
    try:
        assert _refused(port, A) == b""
        line = srv.wait_for_log('limiting connections by zone "addr"')
        assert re.search(
            rf'\[error\] \d+#\d+: \*\d+ limiting connections by zone "addr" '
            rf"while initializing session, client: {re.escape(A)}, server: 127\.0\.0\.1:{port}$",
            line,
        ), line
        assert _log_lines(log, 1) == [f"{A} 503"]
        with _proxied(port, B):  # another address has its own count
            pass
        assert len(be.connections) == 3
        held.pop().close()
        _log_lines(log, 3)  # the held session ended (it is logged when it ends) ...
        time.sleep(0.1)  # ... and nginx gives the count back just after logging
        with _proxied(port, A):
            pass
        assert len(be.connections) == 4
    finally:
        for s in held:
            s.close()
    lines = _log_lines(log, 5)
    assert lines[0] == f"{A} 503"
    assert sorted(lines) == sorted([f"{A} 503", f"{B} 200"] + [f"{A} 200"] * 3)


def test_limit_conn_dry_run(server: ServerFactory, backend: BackendFactory, tmp_path: Path) -> None:
    be = backend(banner=b"HI\n")
    port = free_port()
    srv = server(
        "stream {\n"
        "  limit_conn_zone $binary_remote_addr zone=addr:1m;\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass {be.address};\n"
        "    limit_conn addr 1; limit_conn_dry_run on; limit_conn_log_level warn;\n"
        "  }\n"
        "}\n"
    )
    with _proxied(port, A), _proxied(port, A):  # the second one is only logged
        line = srv.wait_for_log("limiting connections, dry run,")
    assert re.search(
        rf'\[warn\] \d+#\d+: \*\d+ limiting connections, dry run, by zone "addr" '
        rf"while initializing session, client: {re.escape(A)}, server: 127\.0\.0\.1:{port}$",
        line,
    ), line


def test_limit_conn_across_workers(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    """Two workers on one reuseport listener share the count: exactly `limit` get through."""
    be = backend(banner=b"HI\n")
    port = free_port()
    log = tmp_path / "access.log"
    limit = 5
    pyngx(
        "stream {\n"
        "  limit_conn_zone $binary_remote_addr zone=addr:1m;\n"
        "  log_format st '$pid $status';\n"
        f"  server {{ listen 127.0.0.1:{port} reuseport; proxy_pass {be.address};\n"
        f"    access_log {log} st;\n"
        f"    limit_conn addr {limit};\n"
        "  }\n"
        "}\n",
        workers=2,
    )
    socks: list[socket.socket] = []
    accepted = 0
    try:
        for _ in range(3 * limit):
            s = client("127.0.0.1", port, source=A)
            socks.append(s)
            try:
                if recv_until(s, b"\n", timeout=2.0) == b"HI\n":
                    accepted += 1
            except (EOFError, ConnectionResetError):
                pass
        assert accepted == limit
        assert len(be.connections) == limit
    finally:
        for s in socks:
            s.close()
    lines = _log_lines(log, 3 * limit)
    statuses = sorted(ln.split()[1] for ln in lines)
    assert statuses == ["200"] * limit + ["503"] * (2 * limit)
    # Both workers took connections (the kernel spreads them by source port): counted per
    # worker, each would have let `limit` through, so exactly `limit` proves one shared count.
    assert len({ln.split()[0] for ln in lines}) == 2, lines


def test_deny_after_realip_and_unix(
    server: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    """The address checked is the PROXY header's when realip trusts the sender; unix clients
    match `unix:` rules (and `all`)."""
    be = backend(banner=b"HI\n")
    port = free_port()
    sock_path = tmp_path / "s.sock"
    log = tmp_path / "access.log"
    srv = server(
        "stream {\n"
        "  log_format st '$remote_addr $status';\n"
        f"  access_log {log} st;\n"
        f"  server {{ listen 127.0.0.1:{port} proxy_protocol; proxy_pass {be.address};\n"
        "    set_real_ip_from 127.0.0.0/8;\n"
        "    deny 192.0.2.0/24; allow all;\n"
        "  }\n"
        f"  server {{ listen unix:{sock_path}; proxy_pass {be.address};\n"
        "    allow 127.0.0.1; deny unix:;\n"
        "  }\n"
        "}\n"
    )
    with client("127.0.0.1", port, source=A) as s:
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n")
        assert recv_all(s, reset_ok=True) == b""
    line = srv.wait_for_log("access forbidden by rule")
    assert "client: 192.0.2.7, server: 127.0.0.1:" in line, line
    with client("127.0.0.1", port, source=A) as s:
        s.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 80\r\n")
        assert recv_until(s, b"\n") == b"HI\n"
    with client_unix(sock_path) as s:
        assert recv_all(s, reset_ok=True) == b""
    srv.wait_for_log(r"access forbidden by rule while initializing session, client: unix:")
    assert len(be.connections) == 1
    assert _log_lines(log, 3) == ["192.0.2.7 403", "198.51.100.7 200", "unix: 403"]
