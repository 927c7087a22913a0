"""Reference behaviour of Debian's nginx stream proxy, which pyngx must match.

Every test takes the `server` factory, parametrized by `server_kind` (tests/conftest.py):
today that is nginx only; adding "pyngx" to SERVER_KINDS runs the same assertions against
pyngx. The nginx parameter carries the `nginx` marker.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import (
    Backend,
    client,
    free_port,
    recv_all,
    recv_exactly,
    recv_until,
    send_all_then_shutdown,
)

CLIENT_ADDR = "127.0.0.23"

BackendFactory = Callable[..., Backend]


def stream_conf(port: int, upstream: str, *, listen_params: str = "", server: str = "") -> str:
    return (
        "stream {\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port}{' ' + listen_params if listen_params else ''};\n"
        f"        proxy_pass {upstream};\n"
        f"{server}"
        "    }\n"
        "}\n"
    )


def test_proxy_protocol_v1_header_then_client_bytes(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """`proxy_protocol on;` sends the v1 line first; the upstream's banner reaches the client."""
    b = backend(banner=b"220 ready\r\n")
    port = free_port()
    server(stream_conf(port, b.address, server="        proxy_protocol on;\n"))

    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        src_host, src_port = c.getsockname()
        assert src_host == CLIENT_ADDR
        assert recv_until(c, b"\r\n") == b"220 ready\r\n"
        c.sendall(b"EHLO client.example\r\n")
        (conn,) = b.wait_for_connections(1)
        conn.wait_for(b"EHLO client.example\r\n")

    header = f"PROXY TCP4 {CLIENT_ADDR} 127.0.0.1 {src_port} {port}\r\n".encode()
    assert conn.data == header + b"EHLO client.example\r\n"
    conn.wait_closed()  # the client's close reaches the upstream
    assert len(b.connections) == 1


def test_bulk_upload_digest(server: ServerFactory, backend: BackendFactory) -> None:
    """4 MiB up through the proxy arrive intact (after the PROXY header); with
    `proxy_half_close on;` the client's EOF reaches the upstream and its reply comes back."""
    b = backend(mode="sink-hash", keep_data=False)
    port = free_port()
    server(
        stream_conf(
            port, b.address, server="        proxy_protocol on;\n        proxy_half_close on;\n"
        )
    )
    payload = os.urandom(4 * 1024 * 1024)

    with client("127.0.0.1", port, source=CLIENT_ADDR, timeout=20) as c:
        src_port = c.getsockname()[1]
        send_all_then_shutdown(c, payload)
        digest = recv_all(c, timeout=20)

    header = f"PROXY TCP4 {CLIENT_ADDR} 127.0.0.1 {src_port} {port}\r\n".encode()
    assert digest.decode() == hashlib.sha256(header + payload).hexdigest()
    (conn,) = b.wait_closed(1)
    assert conn.nbytes == len(header) + len(payload)


def test_client_eof_ends_session_without_half_close(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """Default `proxy_half_close off;`: the client's EOF ends the whole session. The upstream
    gets every byte, then is closed; the client sees EOF and nothing of any reply."""
    b = backend(mode="sink-hash")
    port = free_port()
    srv = server(stream_conf(port, b.address))
    payload = os.urandom(256 * 1024)

    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        send_all_then_shutdown(c, payload)
        assert recv_all(c) == b""

    (conn,) = b.wait_closed(1)
    assert conn.data == payload
    line = srv.wait_for_log(r"client disconnected")
    assert f"bytes from/to client:{len(payload)}/0, bytes from/to upstream:0/{len(payload)}" in line


# `listen ... proxy_protocol;` and a bad header. nginx 1.22 peeks (MSG_PEEK) at most 107 bytes
# (the v1 maximum) once, quotes everything it peeked in the log (CRLF and any bytes after it
# included, raw), and closes without reading them: the client sees a reset. A v1 header split
# over two segments is "broken" too: nginx does not wait for the rest.
BROKEN_HEADERS = [
    pytest.param(b"GARBAGE\r\n", 'broken header: "GARBAGE\r\n"', id="not-proxy"),
    pytest.param(
        b"GARBAGE\r\nmore stuff", 'broken header: "GARBAGE\r\nmore stuff"', id="bytes-after-crlf"
    ),
    pytest.param(
        b"PROXY TCP4 1.2.3.4\r\n", 'broken header: "PROXY TCP4 1.2.3.4\r\n"', id="truncated-v1"
    ),
    pytest.param(
        b"PROXY TCP4 127.0.0.1 127.0.0.1 99999 1\r\n",
        'broken header: "PROXY TCP4 127.0.0.1 127.0.0.1 99999 1\r\n"',
        id="port-out-of-range",
    ),
    pytest.param(b"X" * 200, f'broken header: "{"X" * 107}"', id="long-no-crlf"),
    pytest.param(
        b"PROXY TCP4 1.2.",
        'broken header: "PROXY TCP4 1.2."',
        id="partial-segment",
        marks=pytest.mark.pyngx_differs(
            "pyngx waits (up to proxy_protocol_timeout) for a header split across segments; "
            "see tests/integration/test_stream_proxy.py"
        ),
    ),
    pytest.param(
        b"\r\n\r\n\x00\r\nQUIT\n\x00" + bytes(15),
        "unknown PROXY protocol version: 0",
        id="v2-signature-bad-version",
    ),
]


@pytest.mark.parametrize(("garbage", "message"), BROKEN_HEADERS)
def test_listen_proxy_protocol_broken_header(
    server: ServerFactory, backend: BackendFactory, garbage: bytes, message: str
) -> None:
    """A bad header: one [error] line, the client connection closed, no upstream contacted."""
    b = backend()
    port = free_port()
    srv = server(stream_conf(port, b.address, listen_params="proxy_protocol"))
    mark = srv.log_mark()

    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        c.sendall(garbage)
        assert recv_all(c, reset_ok=True) == b""

    line = srv.wait_for_log(re.escape(message), since=mark)
    expected = (
        rf"\[error\] \d+#\d+: \*\d+ {re.escape(message)} while reading PROXY protocol, "
        rf"client: {re.escape(CLIENT_ADDR)}, server: 127\.0\.0\.1:{port}$"
    )
    assert re.search(expected, line), line
    assert b.connections == []  # the upstream is never contacted


def test_listen_proxy_protocol_valid_header_passes_real_peer_upstream(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """Without set_real_ip_from, the outgoing header carries the real TCP peer, not the one
    the client declared; the declared header itself is consumed, not forwarded."""
    b = backend(mode="echo")
    port = free_port()
    srv = server(
        stream_conf(
            port,
            b.address,
            listen_params="proxy_protocol",
            server="        proxy_protocol on;\n",
        )
    )

    declared = b"PROXY TCP4 192.0.2.1 198.51.100.2 4242 25\r\n"
    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        src_port = c.getsockname()[1]
        c.sendall(declared + b"hello\n")
        (conn,) = b.wait_for_connections(1)
        conn.wait_for(b"hello\n")
        header = f"PROXY TCP4 {CLIENT_ADDR} 127.0.0.1 {src_port} {port}\r\n".encode()
        assert recv_exactly(c, len(header) + 6) == header + b"hello\n"  # echoed back
    assert conn.data == header + b"hello\n"
    assert srv.running()


def test_listen_proxy_protocol_with_realip_uses_declared_address(
    server: ServerFactory, backend: BackendFactory
) -> None:
    """With set_real_ip_from covering the peer, the declared source becomes the client address,
    and `proxy_protocol on;` sends it on (destination stays the real local address)."""
    b = backend()
    port = free_port()
    server(
        stream_conf(
            port,
            b.address,
            listen_params="proxy_protocol",
            server="        proxy_protocol on;\n        set_real_ip_from 127.0.0.0/8;\n",
        )
    )

    declared = b"PROXY TCP4 192.0.2.1 198.51.100.2 4242 25\r\n"
    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        c.sendall(declared + b"hello\n")
        (conn,) = b.wait_for_connections(1)
        conn.wait_for(b"hello\n")
    expected = f"PROXY TCP4 192.0.2.1 127.0.0.1 4242 {port}\r\n".encode()
    assert conn.data == expected + b"hello\n"


def test_upstream_refused_closes_client(server: ServerFactory) -> None:
    """An upstream that refuses: the client connection is closed without data, and logged."""
    dead = free_port()  # nothing listens there
    port = free_port()
    srv = server(stream_conf(port, f"127.0.0.1:{dead}"))
    mark = srv.log_mark()

    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        assert recv_all(c, reset_ok=True) == b""
    line = srv.wait_for_log(r"connect\(\) failed", since=mark)
    assert "(111: Connection refused) while connecting to upstream" in line
    assert f"client: {CLIENT_ADDR}" in line
    assert f'upstream: "127.0.0.1:{dead}"' in line


def test_many_concurrent_connections(server: ServerFactory, backend: BackendFactory) -> None:
    """200 simultaneous echo sessions through one worker, each with its own bytes."""
    b = backend(mode="echo")
    port = free_port()
    server(stream_conf(port, b.address))
    socks: list[socket.socket] = []
    try:
        for i in range(200):
            socks.append(client("127.0.0.1", port, source=f"127.0.1.{i % 250 + 1}"))
        for i, s in enumerate(socks):
            s.sendall(f"conn {i}\n".encode())
        for i, s in enumerate(socks):
            assert recv_until(s, b"\n") == f"conn {i}\n".encode()
        b.wait_for_connections(200)
    finally:
        for s in socks:
            s.close()
    b.wait_closed(200)


def test_unix_upstream_gets_tcp4_header(
    server: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    """To a unix-socket upstream, the header still describes the client's TCP connection."""
    b = backend(unix_path=tmp_path / "upstream.sock")
    port = free_port()
    server(stream_conf(port, b.address, server="        proxy_protocol on;\n"))

    with client("127.0.0.1", port, source=CLIENT_ADDR) as c:
        src_port = c.getsockname()[1]
        c.sendall(b"ping\n")
        (conn,) = b.wait_for_connections(1)
        conn.wait_for(b"ping\n")
    header = f"PROXY TCP4 {CLIENT_ADDR} 127.0.0.1 {src_port} {port}\r\n".encode()
    assert conn.data == header + b"ping\n"
