"""`pass`: hand a connection to another listen of the configuration (nginx 1.25.5+).

Selective TLS termination: `ssl_preread` + `map` + `pass` terminate TLS for one server name
(pyngx's certificate) and pass the others through to a TLS backend (its certificate).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import trustme

from tests.conftest import ServerFactory
from tests.e2e.test_sni_tls_backends import TlsBackend
from tests.harness import Backend, client, free_port, recv_exactly

BackendFactory = Callable[..., Backend]


def test_pass_to_a_plain_listen_keeps_the_client_address(
    pyngx: ServerFactory, backend: BackendFactory
) -> None:
    b = backend(mode="echo")
    front, inner = free_port(), free_port()
    srv = pyngx(
        "stream {\n"
        f"  server {{ listen 127.0.0.1:{front}; pass 127.0.0.1:{inner}; }}\n"
        f"  server {{ listen 127.0.0.1:{inner}; proxy_pass {b.address}; proxy_protocol on; }}\n"
        "}\n"
    )
    with client("127.0.0.1", front, source="127.0.0.23") as c:
        cport = c.getsockname()[1]
        c.sendall(b"hello")
        header = f"PROXY TCP4 127.0.0.23 127.0.0.1 {cport} {inner}\r\n".encode()
        assert recv_exactly(c, len(header) + 5) == header + b"hello"
    assert "[alert]" not in srv.error_log_text()


def test_selective_tls_termination_by_server_name(
    pyngx: ServerFactory, backend: BackendFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ours = ca.issue_cert("term.test")
    cert, key = tmp_path / "term.pem", tmp_path / "term.key"
    ours.cert_chain_pems[0].write_to_path(str(cert))
    ours.private_key_pem.write_to_path(str(key))
    our_fp = hashlib.sha256(
        ssl.PEM_cert_to_DER_cert(ours.cert_chain_pems[0].bytes().decode())
    ).hexdigest()
    tls_backend = TlsBackend(ca, "other.test")
    plain = backend(mode="echo")
    front, term, through = free_port(), free_port(), free_port()
    try:
        pyngx(
            "stream {\n"
            "  map $ssl_preread_server_name $dest {\n"
            f"    term.test 127.0.0.1:{term};\n"
            f"    default   127.0.0.1:{through};\n"
            "  }\n"
            f"  server {{ listen 127.0.0.1:{front}; ssl_preread on; pass $dest; }}\n"
            f"  server {{ listen 127.0.0.1:{term} ssl; ssl_certificate {cert};\n"
            f"           ssl_certificate_key {key}; proxy_pass {plain.address}; }}\n"
            f"  server {{ listen 127.0.0.1:{through};"
            f" proxy_pass 127.0.0.1:{tls_backend.port}; }}\n"
            "}\n"
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(ctx)
        with (
            socket.create_connection(("127.0.0.1", front), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="term.test") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None and hashlib.sha256(der).hexdigest() == our_fp
            tls.sendall(b"decrypted by pyngx")
            assert recv_exactly(tls, 18) == b"decrypted by pyngx"  # echoed in plain text
        with (
            socket.create_connection(("127.0.0.1", front), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="other.test") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            assert hashlib.sha256(der).hexdigest() == tls_backend.fingerprint
            assert tls.recv(64) == b"other.test\n"
    finally:
        tls_backend.close()


def test_pass_to_an_unknown_address_is_an_error_for_that_connection(
    pyngx: ServerFactory,
) -> None:
    front = free_port()
    srv = pyngx(f"stream {{\n  server {{ listen 127.0.0.1:{front}; pass 127.0.0.1:1; }}\n}}\n")
    with client("127.0.0.1", front) as c:
        assert c.recv(10) == b""
    srv.wait_for_log("no listening socket found")


def test_pass_to_itself_ends_that_connection_only(pyngx: ServerFactory) -> None:
    front = free_port()
    srv = pyngx(f"stream {{ server {{ listen 127.0.0.1:{front}; pass 127.0.0.1:{front}; }} }}\n")
    for _ in range(3):
        with client("127.0.0.1", front) as c:
            assert c.recv(10) == b""
    srv.wait_for_log('too many "pass" hops')
    assert "[alert]" not in srv.error_log_text()
