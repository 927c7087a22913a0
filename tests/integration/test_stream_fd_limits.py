"""A worker out of file descriptors (worker_rlimit_nofile): new connections fail with nginx's
alerts, those already proxied go on untouched, and accepting resumes once descriptors are
free again (pyngx/core/epoll_io.py rests the listener, as nginx disables accept events)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port

BackendFactory = Callable[..., Backend]


def echoes(sock: socket.socket, payload: bytes, timeout: float = 2.0) -> bool:
    sock.settimeout(timeout)
    try:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(len(payload) - len(got))
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


def served_again(port: int, prelude: bytes = b"") -> None:
    """Wait (bounded) until a new connection is proxied again: the worker is accepting."""
    deadline = time.monotonic() + 5
    while True:
        with client("127.0.0.1", port) as c:
            c.sendall(prelude)
            if echoes(c, b"back\n", timeout=1.0):
                return
        assert time.monotonic() < deadline, "accepting did not resume"
        time.sleep(0.1)


def test_out_of_descriptors_costs_only_new_connections(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        "worker_rlimit_nofile 64;\n"
        f"stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {b.address}; }} }}\n"
    )
    served: list[socket.socket] = []
    refused: socket.socket | None = None
    try:
        for i in range(64):
            c = client("127.0.0.1", port)
            if not echoes(c, b"ping %d\n" % i):
                refused = c
                break
            served.append(c)
        assert refused is not None, "64 sessions (128 descriptors) fit in 64?"
        assert len(served) >= 5
        line = srv.wait_for_log(
            r"\[alert\] \d+#0: (\*\d+ )?(accept4|socket)\(\) failed \(24: Too many open files\)"
            r".*"
        )
        if "socket()" in line:
            assert "while connecting to upstream, client: 127.0.0.23, " in line
        # Nothing already proxied lost a byte.
        for i, c in enumerate(served):
            assert echoes(c, b"again %d\n" % i), f"session {i} broke"
    finally:
        for c in served:
            c.close()
        if refused is not None:
            refused.close()
    # Descriptors free again: new sessions are served (the listener rests 0.5 s at most).
    served_again(port)
    text = srv.error_log_text()
    assert not re.search(r"worker process .* exited|request failed|epoll event handler", text)


def test_proxy_bind_to_a_foreign_address_ends_the_session_as_nginx(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    """ngx_event_connect_peer: bind() fails at CRIT, no next upstream, status 500."""
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        "stream {\n"
        "  log_format s '$status $upstream_addr';\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_bind 192.0.2.1; proxy_pass {b.address};"
        " access_log logs/stream.log s; }\n"
        "}\n"
    )
    with client("127.0.0.1", port) as c:
        c.settimeout(5)
        assert c.recv(10) == b""
    srv.wait_for_log(
        r"\[crit\] \d+#0: \*\d+ bind\(192\.0\.2\.1\) failed \(99: Cannot assign requested "
        r"address\) while connecting to upstream, client: 127\.0\.0\.23, "
    )
    assert b.connections == []
    deadline = time.monotonic() + 5
    log = srv.prefix / "logs" / "stream.log"
    while not (log.exists() and log.read_text()):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    assert log.read_text() == f"500 {b.address}\n"


def test_accept_out_of_descriptors_rests_and_resumes(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    """Sessions waiting for a PROXY header hold one descriptor each, so accept() itself runs
    out: nginx's alert, and the queue is served once descriptors are back."""
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        "worker_rlimit_nofile 64;\n"
        "stream { proxy_protocol_timeout 30s;\n"
        f"  server {{ listen 127.0.0.1:{port} proxy_protocol; proxy_pass {b.address}; }} }}\n"
    )
    waiting = [client("127.0.0.1", port) for _ in range(70)]  # the kernel queues the rest
    try:
        srv.wait_for_log(r"\[alert\] \d+#0: accept4\(\) failed \(24: Too many open files\)$")
    finally:
        for c in waiting:
            c.close()
    served_again(port, b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 25\r\n")
