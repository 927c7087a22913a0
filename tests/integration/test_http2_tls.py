"""HTTP/2 over TLS end to end: ALPN offers h2 only where `http2 on` (or `listen ... http2`)
says so, curl negotiates it, and the same port still serves HTTP/1.1 clients."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trustme

from tests.conftest import ServerFactory
from tests.harness import free_port


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, str, str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.test")
    cert, key, cafile = tmp_path / "a.pem", tmp_path / "a.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    root = tmp_path / "html"
    root.mkdir()
    (root / "index.html").write_text("hello h2\n")
    return root, str(cert), str(key), str(cafile)


def _curl(port: int, cafile: str, *flags: str) -> tuple[str, str]:
    r = subprocess.run(
        [
            "curl",
            "-s",
            "--cacert",
            cafile,
            "--resolve",
            f"a.test:{port}:127.0.0.1",
            "-w",
            "\n%{http_version}",
            *flags,
            f"https://a.test:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    body, _, version = r.stdout.rpartition("\n")
    return body, version


@pytest.mark.parametrize("how", ["http2 on;", "listen-param"])
def test_alpn_h2_and_http11_on_one_port(
    site: tuple[Path, str, str, str], pyngx: ServerFactory, how: str
) -> None:
    root, cert, key, cafile = site
    port = free_port()
    listen = f"127.0.0.1:{port} ssl" + (" http2" if how == "listen-param" else "")
    pyngx(
        f"http {{ access_log off; server {{ listen {listen}; server_name a.test; "
        f"{how if how != 'listen-param' else ''} ssl_certificate {cert}; "
        f"ssl_certificate_key {key}; root {root}; }} }}"
    )
    assert _curl(port, cafile, "--http2") == ("hello h2\n", "2")
    assert _curl(port, cafile, "--http1.1") == ("hello h2\n", "1.1")


def test_no_h2_without_http2(site: tuple[Path, str, str, str], pyngx: ServerFactory) -> None:
    root, cert, key, cafile = site
    port = free_port()
    pyngx(
        f"http {{ access_log off; server {{ listen 127.0.0.1:{port} ssl; server_name a.test; "
        f"ssl_certificate {cert}; ssl_certificate_key {key}; root {root}; }} }}"
    )
    assert _curl(port, cafile, "--http2") == ("hello h2\n", "1.1")
