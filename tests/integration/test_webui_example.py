"""The seed's second pattern, from examples/webui-behind-pyngx.conf itself: pyngx terminates TLS
for the mail server's web UI and forwards plain HTTP with the headers that make OAuth, OIDC
and JMAP discovery URLs come out right.

The example runs unchanged except for what a test must change: ports (443/80 → free high
ports), the certificate paths and the upstream address (8080 → the test origin). A real
curl, bound to 127.0.0.23, talks to it by name (SNI + Host `mail.example.com`).
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import trustme

from tests.conftest import ServerFactory
from tests.harness import REPO_ROOT, free_port
from tests.http_backend import (
    HttpBackend,
    origin,
    read_ws_frame,
    ws_client_handshake,
    ws_frame,
)

__all__ = ["origin"]  # the fixture, used by name

EXAMPLE = REPO_ROOT / "examples" / "webui-behind-pyngx.conf"
CLIENT = "127.0.0.23"
NAME = "mail.example.com"


def _adapted(tmp_path: Path, origin_port: int, https: int, http: int) -> tuple[str, str]:
    ca = trustme.CA()
    leaf = ca.issue_cert(NAME)
    cert, key, cafile = tmp_path / "full.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    text = EXAMPLE.read_text()
    # Only the body of the example: the harness writes the main directives (pid, logs, ...).
    body = text[text.index("http {") :]
    body = body.replace("/etc/ssl/mail.example.com/fullchain.pem", str(cert))
    body = body.replace("/etc/ssl/mail.example.com/privkey.pem", str(key))
    body = body.replace("127.0.0.1:8080", f"127.0.0.1:{origin_port}")
    body = body.replace("logs/access.log", f"{tmp_path}/access.log")
    body = re.sub(r"listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;", body)
    body = re.sub(r"listen \[::\]:443 ssl;", "", body)
    body = re.sub(r"listen 80;", f"listen 127.0.0.1:{http};", body)
    body = re.sub(r"listen \[::\]:80;", "", body)
    return body, str(cafile)


def _curl(cafile: str, port: int, path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--interface", CLIENT, "--cacert", cafile,
         "--resolve", f"{NAME}:{port}:127.0.0.1", *extra, f"https://{NAME}:{port}{path}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


def test_webui_example_forwards_the_public_url(
    tmp_path: Path, pyngx: ServerFactory, origin: Callable[..., HttpBackend]
) -> None:
    backend = origin()
    https, http = free_port(), free_port()
    body, cafile = _adapted(tmp_path, backend.port, https, http)
    pyngx(body)

    r = _curl(cafile, https, "/.well-known/jmap?x=1")
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)
    assert echo["uri"] == "/.well-known/jmap?x=1"
    rec = backend.wait_requests(1)[0]
    assert rec.header("Host") == NAME
    assert rec.header("X-Forwarded-For") == CLIENT
    assert rec.header("X-Real-IP") == CLIENT
    assert rec.header("X-Forwarded-Proto") == "https"
    assert rec.header("X-Forwarded-Host") == NAME
    assert rec.version == "HTTP/1.1"
    # An ordinary request does not ask the upstream to close: the connection is kept.
    assert rec.header("Connection") is None

    # A second request reuses the kept-alive upstream connection.
    _curl(cafile, https, "/jmap/session")
    backend.wait_requests(2)
    assert backend.connections == 1

    # Plain HTTP only redirects to HTTPS, with the public name.
    r = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", f"Host: {NAME}", f"http://127.0.0.1:{http}/login?next=/"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert r.stdout == f"301 https://{NAME}/login?next=/"

    # The access log line names the real client.
    log = (tmp_path / "access.log").read_text()
    assert log.startswith(f"{CLIENT} - - [")


def test_webui_example_jmap_push_websocket(
    tmp_path: Path, pyngx: ServerFactory, origin: Callable[..., HttpBackend]
) -> None:
    backend = origin()
    https, http = free_port(), free_port()
    body, cafile = _adapted(tmp_path, backend.port, https, http)
    pyngx(body)
    ctx = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", https), timeout=10, source_address=(CLIENT, 0))
    with ctx.wrap_socket(raw, server_hostname=NAME) as s:
        head, reader = ws_client_handshake(s, "/jmap/ws", NAME)
        assert head.startswith(b"HTTP/1.1 101 ")
        for payload in (b"hello", b"x" * 70000):
            s.sendall(ws_frame(0x2, payload))
            frame = read_ws_frame(reader)
            assert frame is not None and frame[1] == payload
