"""allow/deny and satisfy in http: real pyngx processes, clients from distinct loopback sources."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_access_helpers import A, B, C, get, status


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "html"
    for d in ("", "open", "sub", "err"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "index.html").write_text(f"page {d or 'root'}\n")
    return root


def _server(
    pyngx: ServerFactory, tmp_path: Path, body: str, **kwargs: object
) -> tuple[int, ServerProcess]:
    port = free_port()
    root = _site(tmp_path)
    srv = pyngx(
        "http {\n"
        f"  access_log {tmp_path}/access.log;\n"
        f"  server {{ listen 127.0.0.1:{port}; server_name localhost; root {root};\n"
        f"{body}\n"
        "  }\n"
        "}\n",
        **kwargs,  # type: ignore[arg-type]
    )
    return port, srv


def test_first_matching_rule_wins_and_403_is_logged(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(
        pyngx, tmp_path, f"deny {B};\n allow 127.0.0.0/24;\n allow {C};\n deny all;"
    )
    assert status(port, "/", source=A) == 200
    assert status(port, "/", source=C) == 200
    code, headers, body = get(port, "/", source=B)
    assert code == 403
    assert b"<title>403 Forbidden</title>" in body
    line = srv.wait_for_log("access forbidden by rule")
    assert re.search(
        r"\[error\] \d+#\d+: \*\d+ access forbidden by rule, client: 127\.0\.0\.24, "
        rf'server: localhost, request: "GET / HTTP/1\.1", host: "127\.0\.0\.1:{port}"$',
        line,
    ), line


def test_networks_and_deny_all(pyngx: ServerFactory, tmp_path: Path) -> None:
    # 127.0.0.24/31 covers .24 and .25; the low bits of .23/30 only earn a warning.
    port, _ = _server(pyngx, tmp_path, "deny 127.0.0.24/31;\n allow 127.0.0.23/30;\n deny all;")
    assert [status(port, "/", source=s) for s in (A, B, C, "127.0.0.1")] == [200, 403, 403, 403]


def test_location_rules_replace_the_servers(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        f"deny {B};\n"
        " location /open/ { allow all; }\n"
        " location /sub/ { }\n"  # no rules of its own: the server's apply
        f" location = /only-b/ {{ allow {B}; deny all; }}",
    )
    assert status(port, "/open/", source=B) == 200
    assert status(port, "/sub/", source=B) == 403
    assert status(port, "/sub/", source=A) == 200
    assert status(port, "/only-b/", source=A) == 403
    assert status(port, "/only-b/", source=B) == 404  # allowed, then no such directory


def test_http_level_rules_are_inherited(pyngx: ServerFactory, tmp_path: Path) -> None:
    port = free_port()
    root = _site(tmp_path)
    pyngx(f"http {{\n  deny {A};\n  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n")
    assert status(port, "/", source=A) == 403
    assert status(port, "/", source=B) == 200


def test_satisfy_any_with_rules_alone_answers_as_all(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, srv = _server(pyngx, tmp_path, f"satisfy any;\n deny {B};")
    assert status(port, "/", source=A) == 200
    assert status(port, "/", source=B) == 403
    srv.wait_for_log("access forbidden by rule")


def test_error_page_for_403(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(
        pyngx,
        tmp_path,
        f"error_page 403 /err/;\n location / {{ deny {B}; }}\n location /err/ {{ }}",
    )
    code, _, body = get(port, "/", source=B)
    assert (code, body) == (403, b"page err\n")


def test_keepalive_connection_goes_on_after_403(pyngx: ServerFactory, tmp_path: Path) -> None:
    port, _ = _server(pyngx, tmp_path, f"location /open/ {{ }}\n location / {{ deny {B}; }}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(B, 0))
    try:
        got = []
        for path in ("/", "/open/", "/"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            got.append(resp.status)
        assert got == [403, 200, 403]
    finally:
        conn.close()


def test_unix_socket_clients(pyngx: ServerFactory, tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    port = free_port()
    root = _site(tmp_path)
    pyngx(
        "http {\n"
        f"  server {{ listen unix:{path}; listen 127.0.0.1:{port}; root {root};\n"
        "    deny unix:;\n  }\n"
        "}\n"
    )

    def unix_status() -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(path))
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        finally:
            s.close()
        return int(data.split(b" ", 2)[1])

    assert unix_status() == 403
    assert status(port, "/", source=A) == 200


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_rules(pyngx: ServerFactory, tmp_path: Path) -> None:
    port = free_port("::1")
    root = _site(tmp_path)
    pyngx(
        "http {\n"
        f"  server {{ listen [::1]:{port}; root {root};\n"
        "    location /v4/ { deny 127.0.0.0/8; }\n"  # IPv4 rules never match an IPv6 client
        "    location /v6/ { deny ::1; }\n"
        "    location /all/ { deny all; }\n  }\n"
        "}\n"
    )
    probe: Callable[[str], int] = lambda p: status(port, p, source=None, host="::1")  # noqa: E731
    assert probe("/v4/") == 404
    assert probe("/v6/") == 403
    assert probe("/all/") == 403
