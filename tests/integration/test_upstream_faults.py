"""Upstream faults through pyngx: a backend that dies and comes back, while clients keep going.

The client loop is sequential, so a backend is only ever killed between two connections: a
session already relayed to it ends with it (stream proxying cannot replay a session), and that
is tested separately with a held connection.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, read_banner, recv_all

BackendFactory = Callable[..., Backend]
CLIENT = "127.0.0.23"


def visit(port: int) -> str:
    with client("127.0.0.1", port, source=CLIENT) as c:
        return read_banner(c)


def group_conf(port: int, backends: list[Backend], params: str) -> str:
    servers = "".join(f"    server {b.address} {params};\n" for b in backends)
    return (
        "stream {\n"
        f"  upstream backend {{\n{servers}  }}\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass backend; }}\n"
        "}\n"
    )


@pytest.mark.slow
def test_backend_killed_and_restarted(pyngx: ServerFactory, backend: BackendFactory) -> None:
    a, b, c = (backend(banner=f"{n}\n".encode()) for n in "ABC")
    port = free_port()
    srv = pyngx(group_conf(port, [a, b, c], "max_fails=1 fail_timeout=1s"))
    reached: list[str] = []
    killed_at = restarted_at = 0.0
    for i in range(200):
        if i == 60:
            b.close()  # its listener and every connection it had
            killed_at = time.monotonic()
        if i == 130:
            b = backend(port=b.port, banner=b"B\n")  # the same address again
            restarted_at = time.monotonic()
        reached.append(visit(port))
    assert "" not in reached, "a client saw the proxy fail (no next upstream?)"
    assert set(reached[:60]) == {"A", "B", "C"}
    assert "B" not in reached[60:130]
    assert {"A", "C"} <= set(reached[60:130])
    srv.wait_for_log(
        rf"\[warn\] .*upstream server temporarily disabled while connecting to upstream, "
        rf'.*upstream: "127\.0\.0\.1:{b.port}"'
    )
    # B is back within fail_timeout of its last failure plus a little (bounded wait).
    deadline = time.monotonic() + 5
    while "B" not in reached[130:]:
        assert time.monotonic() < deadline, f"B got no traffic again: {reached[130:]}"
        reached.append(visit(port))
        time.sleep(0.02)
    back_after = time.monotonic() - killed_at
    assert back_after >= 1.0  # not before fail_timeout after a failure
    assert time.monotonic() - restarted_at < 3.5
    # ... and takes its share again: the probe succeeded, so its failures are forgotten.
    more = [visit(port) for _ in range(30)]
    assert "" not in more
    assert 8 <= more.count("B") <= 12, more
    refused = re.findall(
        rf"connect\(\) failed \(111: Connection refused\) while connecting to upstream, .*"
        rf'upstream: "127\.0\.0\.1:{b.port}"',
        srv.error_log_text(),
    )
    assert refused  # each failed try was logged, and only for B
    assert not re.search(
        rf'connect\(\) failed .*upstream: "127\.0\.0\.1:(?:{a.port}|{c.port})"',
        srv.error_log_text(),
    )


def test_backend_dies_under_a_held_session(pyngx: ServerFactory, backend: BackendFactory) -> None:
    """A session already relayed ends with its backend; new sessions go elsewhere."""
    a, b = backend(banner=b"A\n"), backend(banner=b"B\n")
    port = free_port()
    pyngx(group_conf(port, [a, b], "max_fails=1 fail_timeout=10s"))
    with client("127.0.0.1", port, source=CLIENT) as held:
        assert read_banner(held) == "A"
        a.close()
        assert recv_all(held, timeout=5, reset_ok=True) == b""
    # The held session does not count as a failure (its connect had succeeded). Round robin
    # goes on with B, then tries A: refused, so that client is passed on to B and A is out.
    assert [visit(port) for _ in range(4)] == ["B"] * 4


def test_all_dead_then_one_back(pyngx: ServerFactory, backend: BackendFactory) -> None:
    """With every server failed: 502s ("no live upstreams") until fail_timeout, then service."""
    ports = [free_port(), free_port()]
    port = free_port()
    dead = [f"127.0.0.1:{p}" for p in ports]
    srv = pyngx(
        "stream {\n"
        "  upstream backend {\n"
        + "".join(f"    server {d} max_fails=1 fail_timeout=1s;\n" for d in dead)
        + "  }\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass backend; }}\n"
        "}\n"
    )
    assert visit(port) == ""
    assert visit(port) == ""
    srv.wait_for_log(r"no live upstreams while connecting to upstream")
    backend(port=ports[1], banner=b"B\n")
    deadline = time.monotonic() + 5
    while visit(port) != "B":
        assert time.monotonic() < deadline, "the server that came back got no traffic"
        time.sleep(0.05)
