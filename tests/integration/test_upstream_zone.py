"""`zone`: with two workers, a failure one worker sees keeps the other away from that peer."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_until

BackendFactory = Callable[..., Backend]


def _run(pyngx: ServerFactory, backend: BackendFactory, zone: str) -> int:
    live = backend(banner=b"L\n")
    dead = free_port()
    port = free_port()
    srv = pyngx(
        "stream {\n"
        f"  upstream g {{ {zone} server 127.0.0.1:{dead} max_fails=1 fail_timeout=60s;\n"
        f"               server {live.address}; }}\n"
        f"  server {{ listen 127.0.0.1:{port} reuseport; proxy_pass g; }}\n"
        "}\n",
        workers=2,
    )
    for i in range(40):
        with client("127.0.0.1", port, source=f"127.0.0.{30 + i}") as c:
            assert recv_until(c, b"\n") == b"L\n"
    srv.wait_for_log("connect\\(\\) failed")
    return srv.error_log_text().count("connect() failed")


def test_zone_shares_failures_between_workers(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    assert _run(pyngx, backend, "zone g 64k;") == 1


def test_without_zone_each_worker_learns_alone(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    # Both workers get connections (reuseport spreads 40 sources), and each must fail once.
    assert _run(pyngx, backend, "") == 2
