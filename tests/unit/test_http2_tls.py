"""`upgrade(conn)` over TLS: what http/ssl.py does when ALPN chose "h2" — the HttpConnection
hands its transport (an SSL transport under uvloop, as in the worker) to HTTP/2."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import trustme
import uvloop

from pyngx.http.connection import HttpConnection
from pyngx.http.h2 import H2Connection, upgrade
from tests.h2util import H2Client

from .h2_inprocess import FakeWorker, load


class AlpnConnection(HttpConnection):
    """connection_made as http/ssl.py is to do it: HTTP/2 when ALPN selected "h2"."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        obj = transport.get_extra_info("ssl_object")
        if obj is not None and obj.selected_alpn_protocol() == "h2":
            upgrade(self)


def test_upgrade_over_tls_alpn(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.set_alpn_protocols(["h2"])
    cycle = load(
        tmp_path,
        f"""
        log_format t '$http2 $scheme $https $server_protocol "$request" $status';
        server {{
            listen 127.0.0.1:8443;
            http2 on;
            access_log {tmp_path}/logs/t.log t;
        }}
        """,
    )
    (tmp_path / "html" / "a.txt").write_text("hello\n")
    big = tmp_path / "html" / "big.bin"
    big.write_bytes(bytes(range(256)) * 4000)
    seen: list[Any] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = FakeWorker(loop, cycle)
        assert cycle.http is not None
        port = cycle.http.ports[0]
        server = await loop.create_server(
            lambda: AlpnConnection(worker, port), "127.0.0.1", 0, ssl=server_ctx
        )
        addr = server.sockets[0].getsockname()

        def client() -> None:
            with H2Client(
                addr[1], ssl_context=client_ctx, server_hostname="localhost", window=2000
            ) as c:
                assert c.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
                r = c.get("/a.txt")
                assert (r.status, bytes(r.body)) == (200, b"hello\n")
                r = c.get("/big.bin")
                assert bytes(r.body) == big.read_bytes()
                seen.extend(type(x).__name__ for x in worker.http_connections)

        await loop.run_in_executor(None, client)
        server.close()
        await server.wait_closed()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    assert seen == [H2Connection.__name__]
    lines = (tmp_path / "logs" / "t.log").read_text().splitlines()
    assert lines == [
        'h2 https on HTTP/2.0 "GET /a.txt HTTP/2.0" 200',
        'h2 https on HTTP/2.0 "GET /big.bin HTTP/2.0" 200',
    ]
