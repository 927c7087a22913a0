"""One port, routed by SNI without terminating TLS: `ssl_preread`, `map`, `proxy_pass $var`.

The same configuration runs under nginx and pyngx; each client sends a real ClientHello made
by Python's ssl module, and must reach the backend its server name maps to, which receives
the ClientHello bytes untouched. The access log values must be the same for both.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_until

BackendFactory = Callable[..., Backend]


def client_hello(server_name: str | None, alpn: list[str]) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


CASES = [
    ("mail.example.com", ["imap"], b"A\n"),
    ("MAIL.EXAMPLE.COM", ["imap"], b"A\n"),  # map strings ignore case
    ("www.example.org", ["h2", "http/1.1"], b"B\n"),
    ("other.test", [], b"C\n"),
    (None, [], b"C\n"),
]


def _run(factory: ServerFactory, backend: BackendFactory, tmp_path: Path, tag: str) -> str:
    a, b, c = backend(banner=b"A\n"), backend(banner=b"B\n"), backend(banner=b"C\n")
    port = free_port()
    log = tmp_path / f"{tag}.log"
    srv = factory(
        "stream {\n"
        "  map $ssl_preread_server_name $backend {\n"
        "    hostnames;\n"
        f"    mail.example.com {a.address};\n"
        "    *.example.org    group_b;\n"
        f"    default          {c.address};\n"
        "  }\n"
        f"  upstream group_b {{ server {b.address}; }}\n"
        "  log_format sni '[$ssl_preread_server_name] [$ssl_preread_alpn_protocols] "
        "[$ssl_preread_protocol] $status';\n"
        f"  server {{ listen 127.0.0.1:{port}; ssl_preread on; proxy_pass $backend;\n"
        f"           access_log {log} sni; }}\n"
        "}\n"
    )
    for name, alpn, banner in CASES:
        hello = client_hello(name, alpn)
        with client("127.0.0.1", port) as s:
            s.sendall(hello)
            assert recv_until(s, b"\n") == banner, name
        target = {b"A\n": a, b"B\n": b, b"C\n": c}[banner]
        conn = target.connections[-1]
        assert conn.wait_for_bytes(len(hello)) == hello  # passed through untouched
    with client("127.0.0.1", port) as s:  # not TLS at all: the default route, at once
        s.sendall(b"EHLO plain\r\n")
        assert recv_until(s, b"\n") == b"C\n"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and log.read_text().count("\n") < len(CASES) + 1:
        time.sleep(0.05)
    srv.stop()
    return log.read_text()


@pytest.mark.nginx
def test_sni_routing_equals_nginx(
    pyngx: ServerFactory, nginx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    ours = _run(pyngx, backend, tmp_path, "pyngx")
    theirs = _run(nginx, backend, tmp_path, "nginx")
    assert ours == theirs
    assert re.search(r"^\[mail\.example\.com\] \[imap\] \[TLSv1\.3\] 200$", ours, re.M)
