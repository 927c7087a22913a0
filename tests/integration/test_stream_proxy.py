"""pyngx's stream proxy beyond what Debian's nginx 1.22 can be compared on.

PROXY v2 towards upstreams (nginx mainline's `proxy_protocol v2`), headers split across
segments, slow headers, v2 headers from clients, rate limits and bulk integrity.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_all, recv_exactly, recv_until

CLIENT = "127.0.0.23"
BackendFactory = Callable[..., Backend]


def conf(port: int, upstream: str, extra: str = "", listen: str = "", http: str = "") -> str:
    return (
        "stream {\n"
        f"{http}"
        f"  server {{ listen 127.0.0.1:{port}{listen}; proxy_pass {upstream}; {extra} }}\n"
        "}\n"
    )


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_proxy_protocol_v2_header_with_crc32c(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(banner=b"* OK\r\n")
    port = free_port()
    pyngx(conf(port, b.address, "proxy_protocol v2;"))
    with client("127.0.0.1", port, source=CLIENT) as c:
        cport = c.getsockname()[1]
        assert recv_until(c, b"\r\n") == b"* OK\r\n"
        c.sendall(b"a LOGOUT\r\n")
        (conn,) = b.wait_for_connections(1)
        data = conn.wait_for(b"LOGOUT\r\n")
    parsed = pp.parse(data)
    assert parsed is not None
    header, consumed = parsed
    assert data[consumed:] == b"a LOGOUT\r\n"
    assert (header.version, header.command, header.family, header.transport) == (
        2,
        pp.Command.PROXY,
        pp.Family.INET,
        pp.Transport.STREAM,
    )
    assert (header.src_addr, header.src_port, header.dst_addr, header.dst_port) == (
        CLIENT,
        cport,
        "127.0.0.1",
        port,
    )
    crc = header.tlv(pp.PP2_TYPE_CRC32C)
    assert crc is not None
    raw = bytearray(data[:consumed])
    at = bytes(raw).index(b"\x03\x00\x04" + crc) + 3
    raw[at : at + 4] = bytes(4)
    assert int.from_bytes(crc, "big") == _crc32c(bytes(raw))


def test_header_split_across_segments_is_reassembled(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    pyngx(
        conf(
            port,
            b.address,
            "proxy_protocol on; set_real_ip_from 127.0.0.0/8;",
            listen=" proxy_protocol",
        )
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"PROXY TCP4 192.0.2.7 ")
        time.sleep(0.2)
        c.sendall(b"198.51.100.1 4242 25\r\nhel")
        time.sleep(0.1)
        c.sendall(b"lo")
        expected = f"PROXY TCP4 192.0.2.7 127.0.0.1 4242 {port}\r\nhello".encode()
        assert recv_exactly(c, len(expected)) == expected


def test_slow_header_is_closed_after_proxy_protocol_timeout(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend()
    port = free_port()
    srv = pyngx(conf(port, b.address, "proxy_protocol_timeout 1s;", listen=" proxy_protocol"))
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.sendall(b"PROXY TCP4 ")
        start = time.monotonic()
        assert recv_all(c, timeout=5, reset_ok=True) == b""
        assert time.monotonic() - start < 4
    line = srv.wait_for_log("client timed out")
    assert line.endswith(
        "client timed out (110: Connection timed out) while reading PROXY protocol, "
        f"client: {CLIENT}, server: 127.0.0.1:{port}"
    )
    assert "[info]" in line
    assert b.connections == []


def test_v2_header_from_client_with_realip_and_variables(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    b = backend(mode="echo")
    port = free_port()
    log = tmp_path / "pp.log"
    fmt = (
        "$remote_addr:$remote_port $proxy_protocol_addr:$proxy_protocol_port "
        "$proxy_protocol_server_addr:$proxy_protocol_server_port $status"
    )
    srv = pyngx(
        conf(
            port,
            b.address,
            f"proxy_protocol on; set_real_ip_from {CLIENT}; access_log {log} pp;",
            listen=" proxy_protocol",
            http=f"  log_format pp '{fmt}';\n",
        )
    )
    header = pp.encode_v2(
        pp.Command.PROXY, pp.Transport.STREAM, "2001:db8::1", 1234, "2001:db8::2", 993
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        c.sendall(header + b"x")
        expected = f"PROXY TCP6 2001:db8::1 127.0.0.1 1234 {port}\r\nx".encode()
        assert recv_exactly(c, len(expected)) == expected
    srv.wait_for_log("disconnected")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not log.read_text():
        time.sleep(0.05)
    assert log.read_text() == "2001:db8::1:1234 2001:db8::1:1234 2001:db8::2:993 200\n"


def test_header_from_untrusted_source_is_not_used(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    pyngx(
        conf(
            port,
            b.address,
            "proxy_protocol on; set_real_ip_from 10.0.0.0/8;",
            listen=" proxy_protocol",
        )
    )
    with client("127.0.0.1", port, source=CLIENT) as c:
        cport = c.getsockname()[1]
        c.sendall(b"PROXY TCP4 192.0.2.7 198.51.100.1 4242 25\r\ny")
        expected = f"PROXY TCP4 {CLIENT} 127.0.0.1 {cport} {port}\r\ny".encode()
        assert recv_exactly(c, len(expected)) == expected


def test_bulk_both_directions_at_once(pyngx: ServerFactory, backend: BackendFactory) -> None:
    """32 MiB through an echo backend while reading concurrently: every byte comes back."""
    b = backend(mode="echo", keep_data=False)
    port = free_port()
    pyngx(conf(port, b.address))
    payload = os.urandom(32 << 20)
    got = hashlib.sha256()
    received = 0
    with client("127.0.0.1", port, source=CLIENT, timeout=30) as c:

        def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                c.sendall(view[i : i + (1 << 20)])

        t = threading.Thread(target=send)
        t.start()
        while received < len(payload):
            chunk = c.recv(1 << 20)
            assert chunk
            got.update(chunk)
            received += len(chunk)
        t.join(30)
    assert got.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_upload_rate_limit(pyngx: ServerFactory, backend: BackendFactory) -> None:
    b = backend(mode="sink-hash")
    port = free_port()
    pyngx(conf(port, b.address, "proxy_upload_rate 256k; proxy_half_close on;"))
    payload = os.urandom(768 * 1024)
    start = time.monotonic()
    with client("127.0.0.1", port, source=CLIENT, timeout=20) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        digest = recv_all(c, timeout=20)
    elapsed = time.monotonic() - start
    assert digest.decode() == hashlib.sha256(payload).hexdigest()
    # 768 KiB at 256 KiB/s: nginx allows the first second's worth at once, so >= ~2 s.
    assert elapsed >= 1.5, elapsed


def test_client_bytes_sent_before_upstream_answers_keep_order(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    """Bytes that arrive while the upstream connect is in flight follow the header, in order."""
    b = backend(mode="record")
    port = free_port()
    pyngx(conf(port, b.address, "proxy_protocol on;"))
    for i in range(20):
        with client("127.0.0.1", port, source=CLIENT) as c:
            cport = c.getsockname()[1]
            c.sendall(f"early {i}\r\n".encode())
            (conn,) = b.wait_for_connections(i + 1)[i:]
            data = conn.wait_for(b"\r\n" + f"early {i}\r\n".encode())
            assert data == f"PROXY TCP4 {CLIENT} 127.0.0.1 {cport} {port}\r\nearly {i}\r\n".encode()
