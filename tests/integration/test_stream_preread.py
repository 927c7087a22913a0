"""`ssl_preread` beyond nginx: PROXY v2 carries the SNI and ALPN in passthrough; limits."""

from __future__ import annotations

import time
from collections.abc import Callable

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.e2e.test_sni_routing_vs_nginx import client_hello
from tests.harness import Backend, client, free_port, recv_all, recv_until

BackendFactory = Callable[..., Backend]


def test_v2_header_carries_authority_and_alpn_in_passthrough(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="record")
    port = free_port()
    pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port}; ssl_preread on; proxy_protocol v2;"
        f" proxy_pass {b.address}; }} }}\n"
    )
    hello = client_hello("imap.example.com", ["imap", "h2"])
    with client("127.0.0.1", port) as c:
        c.sendall(hello)
        (conn,) = b.wait_for_connections(1)
        data = conn.wait_for(hello[-16:])
    parsed = pp.parse(data)
    assert parsed is not None
    header, consumed = parsed
    assert header.tlv(pp.PP2_TYPE_AUTHORITY) == b"imap.example.com"
    assert header.tlv(pp.PP2_TYPE_ALPN) == b"imap"
    assert data[consumed:] == hello


def test_preread_timeout_proceeds_without_values(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(banner=b"220 hi\r\n")
    port = free_port()
    pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port}; ssl_preread on; preread_timeout 500ms;"
        f" proxy_pass {b.address}; }} }}\n"
    )
    start = time.monotonic()
    with client("127.0.0.1", port) as c:  # a speak-last client: the server speaks first
        assert recv_until(c, b"\r\n", timeout=5) == b"220 hi\r\n"
    assert 0.4 < time.monotonic() - start < 4


def test_preread_buffer_full_is_a_bad_request(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend()
    port = free_port()
    srv = pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port}; ssl_preread on; preread_buffer_size 64;"
        f" proxy_pass {b.address}; }} }}\n"
    )
    with client("127.0.0.1", port) as c:
        c.sendall(client_hello("long.example.com", ["h2"]))
        assert recv_all(c, reset_ok=True) == b""
    srv.wait_for_log("preread buffer full")
    assert b.connections == []


def test_hostile_client_hellos_close_only_their_own_connection(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    import random
    import socket

    from tests.harness import recv_exactly

    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port}; ssl_preread on; preread_timeout 1s;"
        f" proxy_pass {b.address}; }} }}\n",
        workers=2,
    )
    real = client_hello("ok.example.com", ["h2"])
    rng = random.Random(4)
    with client("127.0.0.1", port, source="127.0.0.23", timeout=10) as good:
        good.sendall(real)
        assert recv_exactly(good, len(real), timeout=10) == real  # echoed back through
        for i in range(150):
            kind = i % 5
            if kind == 0:
                bad = real[: rng.randrange(1, len(real))]  # truncated, then closed
            elif kind == 1:
                bad = b"\x16\x03\x01\xff\xff" + rng.randbytes(rng.randrange(0, 400))
            elif kind == 2:
                mutated = bytearray(real)
                mutated[rng.randrange(5, len(mutated))] = rng.randrange(256)
                bad = bytes(mutated)
            elif kind == 3:
                bad = b"\x16" + rng.randbytes(rng.randrange(1, 600))
            else:
                bad = b"\x16\x03\x03\x00\x05\x01\x00\xff\xff\xff"
            s = socket.socket()
            s.bind(("127.0.0.24", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            try:
                s.sendall(bad)
            except OSError:
                pass
            s.close()
            msg = b"alive %d\n" % i
            good.sendall(msg)
            assert recv_exactly(good, len(msg), timeout=10) == msg
    assert "[alert]" not in srv.error_log_text()
