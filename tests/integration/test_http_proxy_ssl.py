"""`proxy_pass https://...` and the proxy_ssl_* directives, against a TLS origin."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_backend import HttpBackend, http_get, origin

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    leaf = ca.issue_cert("origin.test", "localhost", "127.0.0.1")
    cli = ca.issue_cert("client.test")
    other = trustme.CA()
    for name, blob in (
        ("cert", leaf.cert_chain_pems[0].bytes()),
        ("key", leaf.private_key_pem.bytes()),
        ("ca", ca.cert_pem.bytes()),
        ("otherca", other.cert_pem.bytes()),
        ("clicert", cli.cert_chain_pems[0].bytes()),
        ("clikey", cli.private_key_pem.bytes()),
    ):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(blob)
        out[name] = str(path)
    return out


def tls_origin(origin: Origin, pki: dict[str, str], *, client_ca: bool = False) -> HttpBackend:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    if client_ca:
        ctx.load_verify_locations(pki["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return origin(tls=ctx)


def start(pyngx: ServerFactory, http: str) -> tuple[ServerProcess, int]:
    port = free_port()
    server = pyngx("http {\n" + http.replace("LISTEN", f"listen 127.0.0.1:{port}") + "\n}\n")
    return server, port


def test_https_upstream_default_no_verify_no_sni(
    pyngx: ServerFactory, origin: Origin, pki: dict[str, str]
) -> None:
    b = tls_origin(origin, pki)
    _, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass https://127.0.0.1:{b.port}; }} }}"
    )
    r = http_get(port, "/x")
    assert r.status == 200 and r.json()["uri"] == "/x"
    assert b.tls_info[0]["sni"] is None


def test_verify_and_server_name(pyngx: ServerFactory, origin: Origin, pki: dict[str, str]) -> None:
    b = tls_origin(origin, pki)
    server, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location /ok/ {{ proxy_pass https://127.0.0.1:{b.port};\n"
        "     proxy_ssl_server_name on; proxy_ssl_name origin.test;\n"
        f"     proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki['ca']}; }}\n"
        f"  location /wrongname/ {{ proxy_pass https://127.0.0.1:{b.port};\n"
        "     proxy_ssl_name elsewhere.test;\n"
        f"     proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki['ca']}; }}\n"
        f"  location /untrusted/ {{ proxy_pass https://127.0.0.1:{b.port};\n"
        f"     proxy_ssl_verify on; proxy_ssl_trusted_certificate {pki['otherca']}; }}\n"
        "}",
    )
    assert http_get(port, "/ok/1").status == 200
    assert b.tls_info[-1]["sni"] == "origin.test"
    assert http_get(port, "/wrongname/1").status == 502
    server.wait_for_log(
        'upstream SSL certificate does not match "elsewhere.test" while SSL handshaking to upstream'
    )
    assert http_get(port, "/untrusted/1").status == 502
    server.wait_for_log(r"upstream SSL certificate verify error: \(\d+:")


def test_client_certificate(pyngx: ServerFactory, origin: Origin, pki: dict[str, str]) -> None:
    b = tls_origin(origin, pki, client_ca=True)
    _, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location /with/ {{ proxy_pass https://127.0.0.1:{b.port};\n"
        f"     proxy_ssl_certificate {pki['clicert']};\n"
        f"     proxy_ssl_certificate_key {pki['clikey']}; }}\n"
        f"  location /without/ {{ proxy_pass https://127.0.0.1:{b.port}; }}\n"
        "}",
    )
    assert http_get(port, "/with/1").status == 200
    assert ("DNS", "client.test") in b.tls_info[-1]["peer_cert"]["subjectAltName"]
    assert http_get(port, "/without/1").status == 502


def test_session_reuse_and_keepalive(
    pyngx: ServerFactory, origin: Origin, pki: dict[str, str]
) -> None:
    b = tls_origin(origin, pki)
    _, port = start(
        pyngx,
        f"upstream ka {{ server 127.0.0.1:{b.port}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        "  location /ka/ { proxy_pass https://ka; proxy_http_version 1.1;\n"
        '     proxy_set_header Connection ""; }\n'
        f"  location /new/ {{ proxy_pass https://127.0.0.1:{b.port}; }}\n"
        "}",
    )
    for i in range(5):
        assert http_get(port, f"/ka/{i}").status == 200
    assert b.connections == 1
    for i in range(3):
        assert http_get(port, f"/new/{i}").status == 200
    assert b.connections == 4
    # TLS 1.3 session tickets arrive after the handshake; later connections resume.
    assert any(info["reused"] for info in b.tls_info[2:])
