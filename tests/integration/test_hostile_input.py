"""Hostile bytes on a `listen ... proxy_protocol` port: each bad connection is closed alone,
no worker crashes (no [alert] lines), and a good session running alongside loses nothing."""

from __future__ import annotations

import random
import socket
from collections.abc import Callable

from pyngx.protocols import proxy_protocol as pp
from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_exactly

BackendFactory = Callable[..., Backend]


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:  # a v2 signature followed by random bytes
        return pp.V2_SIGNATURE + rng.randbytes(rng.randrange(0, 64))
    if kind == 2:  # a valid v2 header with one byte flipped
        h = bytearray(
            pp.encode_v2(
                pp.Command.PROXY,
                pp.Transport.STREAM,
                "10.0.0.1",
                1,
                "10.0.0.2",
                2,
                [(pp.PP2_TYPE_AUTHORITY, b"x" * 20)],
            )
        )
        h[rng.randrange(12, len(h))] ^= 1 << rng.randrange(8)
        return bytes(h)
    if kind == 3:  # v1 with random fields
        fields = [
            rng.choice(["TCP4", "TCP6", "UNKNOWN", "UDP4", ""]),
            rng.choice(["1.2.3.4", "::1", "999.1.1.1", "x"]),
            rng.choice(["5.6.7.8", "::2", ""]),
            str(rng.randrange(-5, 70000)),
            str(rng.randrange(-5, 70000)),
        ]
        return ("PROXY " + " ".join(fields) + rng.choice(["\r\n", "\n", "\r", ""])).encode()
    if kind == 4:  # an oversized v2 length
        return pp.V2_SIGNATURE + b"\x21\x11\xff\xff" + rng.randbytes(100)
    return b"PROXY " + b"A" * rng.randrange(100, 200)


def test_garbage_headers_close_only_their_connection(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    port = free_port()
    srv = pyngx(
        f"stream {{ server {{ listen 127.0.0.1:{port} proxy_protocol; proxy_pass {b.address};"
        " proxy_protocol_timeout 1s; } }\n",
        workers=2,
    )
    rng = random.Random(20261126)
    with client("127.0.0.1", port, source="127.0.0.23", timeout=10) as good:
        good.sendall(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 25\r\n")
        for i in range(300):
            s = socket.socket()
            s.bind(("127.0.0.24", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            try:
                s.sendall(_garbage(rng))
                if i % 3 == 0:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            s.close()
            msg = b"still here %d\n" % i
            good.sendall(msg)
            assert recv_exactly(good, len(msg), timeout=10) == msg
    text = srv.error_log_text()
    assert "[alert]" not in text
    assert "[crit]" not in text
    assert "Traceback" not in srv.stderr_text()
