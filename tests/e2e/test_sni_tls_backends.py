"""SNI routing to three real TLS backends, each with its own certificate, TLS untouched.

The client completes a real handshake through the proxy and must see the certificate of the
backend its server name maps to (compared by SHA-256 fingerprint), under nginx and pyngx.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import trustme

from tests.conftest import ServerFactory
from tests.harness import free_port


class TlsBackend:
    """Accepts TLS connections, says its name, closes; bounded by the test's lifetime."""

    def __init__(self, ca: trustme.CA, name: str) -> None:
        self.name = name
        cert = ca.issue_cert(name)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self.ctx)
        self.fingerprint = hashlib.sha256(
            ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
        ).hexdigest()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(self.name.encode() + b"\n")
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def tls_backends() -> Iterator[tuple[trustme.CA, list[TlsBackend]]]:
    ca = trustme.CA()
    backends = [TlsBackend(ca, name) for name in ("a.test", "b.test", "c.test")]
    yield ca, backends
    for b in backends:
        b.close()


def test_sni_routes_to_the_backend_with_that_certificate(
    server: ServerFactory, tls_backends: tuple[trustme.CA, list[TlsBackend]]
) -> None:
    ca, (a, b, c) = tls_backends
    port = free_port()
    server(
        "stream {\n"
        "  map $ssl_preread_server_name $backend {\n"
        f"    a.test 127.0.0.1:{a.port};\n"
        f"    b.test 127.0.0.1:{b.port};\n"
        f"    default 127.0.0.1:{c.port};\n"
        "  }\n"
        f"  server {{ listen 127.0.0.1:{port}; ssl_preread on; proxy_pass $backend; }}\n"
        "}\n"
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    for backend in (a, b, c, a):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=backend.name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            assert hashlib.sha256(der).hexdigest() == backend.fingerprint
            assert tls.recv(64) == backend.name.encode() + b"\n"
