"""The realip module against a real pyngx: clients bound to distinct loopback addresses (trusted
proxies and untrusted ones) send X-Real-IP, X-Forwarded-For chains and other headers; the
access log shows the address each request ended up with.

Differential checks against nginx are in tests/e2e/test_http_ssl_vs_nginx.py.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, client, client_unix, free_port, recv_all, run_pyngx

LOG = (
    "log_format rip '$remote_addr|$remote_port|$realip_remote_addr|$realip_remote_port|$uri';\n"
    "access_log logs/rip.log rip;\n"
)
TRUSTED = "127.0.0.2"
UNTRUSTED = "127.0.0.3"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    for d in ("", "loc", "rec", "hdr"):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "index.html").write_text("ok\n")
    return root


def get(
    port: int, path: str = "/", headers: str = "", *, source: str = TRUSTED
) -> tuple[int, bytes]:
    with client("127.0.0.1", port, source=source) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode("latin-1"))
        data = recv_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def lines(srv: ServerProcess, n: int) -> list[list[str]]:
    path = Path(srv.prefix) / "logs" / "rip.log"
    deadline = time.monotonic() + 5
    while True:
        got = path.read_text().splitlines() if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            assert len(got) >= n, got
            return [x.split("|") for x in got]
        time.sleep(0.05)


def run_cases(
    pyngx: ServerFactory, site: Path, conf: str, cases: list[tuple[str, str, str, str]]
) -> ServerProcess:
    """cases: (source, path, headers, expected $remote_addr[:port])."""
    port = free_port()
    srv = pyngx(
        "http {\n" + LOG + f"  server {{ listen 127.0.0.1:{port}; root {site}; {conf} }}\n}}\n"
    )
    for source, path, headers, _ in cases:
        status, _ = get(port, path, headers, source=source)
        assert status == 200
    got = lines(srv, len(cases))
    for (source, _path, headers, want), row in zip(cases, got, strict=True):
        addr, port_text, real, real_port, _uri = row
        want_addr, _, want_port = want.partition("#")
        assert addr == want_addr, (source, headers, row)
        if want_addr == source:
            assert port_text == real_port and int(port_text) > 0, row
        else:
            assert port_text == want_port, (source, headers, row)
        assert real == source and int(real_port) > 0, row
    return srv


def test_x_real_ip(pyngx: ServerFactory, site: Path) -> None:
    run_cases(
        pyngx,
        site,
        f"set_real_ip_from {TRUSTED};",
        [
            (TRUSTED, "/", "X-Real-IP: 192.0.2.1\r\n", "192.0.2.1"),
            (UNTRUSTED, "/", "X-Real-IP: 192.0.2.1\r\n", UNTRUSTED),
            (TRUSTED, "/", "", TRUSTED),
            (TRUSTED, "/", "X-Real-IP: junk\r\n", TRUSTED),
            (TRUSTED, "/", "X-Real-IP: 192.0.2.1:8080\r\n", "192.0.2.1#8080"),
            (TRUSTED, "/", "X-Real-IP: [2001:db8::1]:443\r\n", "2001:db8::1#443"),
            (TRUSTED, "/", "X-Real-IP: 2001:DB8:0:0:0:0:0:1\r\n", "2001:db8::1"),
            (TRUSTED, "/", "X-Real-IP: ::ffff:192.0.2.9\r\n", "::ffff:192.0.2.9"),
            (TRUSTED, "/", "X-Real-IP: 010.1.1.1\r\n", "10.1.1.1"),
            (TRUSTED, "/", "X-Real-IP: 255.255.255.255\r\n", TRUSTED),
            # The first X-Real-IP counts.
            (TRUSTED, "/", "X-Real-IP: 192.0.2.3\r\nX-Real-IP: 192.0.2.4\r\n", "192.0.2.3"),
        ],
    )


XFF_CONF = (
    f"set_real_ip_from {TRUSTED}; set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For;"
)
XFF_CASES = [
    ("192.0.2.1, 10.1.1.1", "10.1.1.1", "192.0.2.1"),
    ("192.0.2.1,10.2.2.2, 10.1.1.1", "10.1.1.1", "192.0.2.1"),
    ("10.3.3.3, 10.2.2.2", "10.2.2.2", "10.3.3.3"),  # all trusted: the leftmost
    ("junk, 10.1.1.1", "10.1.1.1", "10.1.1.1"),  # stops at what it cannot read
    ("192.0.2.1, 10.1.1.1, ", "10.1.1.1", "192.0.2.1"),  # trailing separators
    ("192.0.2.7", "192.0.2.7", "192.0.2.7"),
    ("", "127.0.0.2", "127.0.0.2"),  # empty header: unchanged
]


@pytest.mark.parametrize("recursive", [False, True], ids=["flat", "recursive"])
def test_x_forwarded_for_chains(pyngx: ServerFactory, site: Path, recursive: bool) -> None:
    rec = " real_ip_recursive on;" if recursive else ""
    cases = [
        (TRUSTED, "/", f"X-Forwarded-For: {xff}\r\n", want_rec if recursive else want)
        for xff, want, want_rec in XFF_CASES
    ]
    # Several X-Forwarded-For headers: walked from the last one.
    cases.append(
        (
            TRUSTED,
            "/",
            "X-Forwarded-For: 192.0.2.5, 10.9.9.9\r\nX-Forwarded-For: 10.1.1.1\r\n",
            "192.0.2.5" if recursive else "10.1.1.1",
        )
    )
    # From an untrusted peer nothing changes.
    cases.append((UNTRUSTED, "/", "X-Forwarded-For: 192.0.2.1, 10.1.1.1\r\n", UNTRUSTED))
    run_cases(pyngx, site, XFF_CONF + rec, cases)


def test_other_header_and_levels(pyngx: ServerFactory, site: Path) -> None:
    """Server level at post-read; a location's settings only where the server's did not
    replace the address (the preaccess phase)."""
    conf = (
        f"set_real_ip_from {TRUSTED}; real_ip_header X-Client;\n"
        "    location /loc/ { real_ip_header X-Other; }\n"
        "    location /rec/ { set_real_ip_from 10.0.0.0/8; real_ip_header X-Forwarded-For;"
        " real_ip_recursive on; }\n"
    )
    run_cases(
        pyngx,
        site,
        conf,
        [
            (TRUSTED, "/", "x-client: 192.0.2.1\r\n", "192.0.2.1"),
            # Already replaced at post-read with the server's header.
            (TRUSTED, "/loc/", "X-Client: 192.0.2.2\r\nX-Other: 192.0.2.3\r\n", "192.0.2.2"),
            # Not replaced at post-read: the location's header at preaccess.
            (TRUSTED, "/loc/", "X-Other: 192.0.2.3\r\n", "192.0.2.3"),
            # The location trusts 10/8 but not 127.0.0.2: nothing happens.
            (TRUSTED, "/rec/", "X-Forwarded-For: 192.0.2.4, 10.1.1.1\r\n", TRUSTED),
        ],
    )


def test_keepalive_gets_the_connection_address_back(pyngx: ServerFactory, site: Path) -> None:
    port = free_port()
    srv = pyngx(
        "http {\n" + LOG + f"  server {{ listen 127.0.0.1:{port}; root {site}; "
        f"set_real_ip_from {TRUSTED}; }}\n}}\n"
    )
    with client("127.0.0.1", port, source=TRUSTED) as s:
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Real-IP: 192.0.2.1\r\n\r\n"
            b"GET /loc/ HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: x\r\nX-Real-IP: 192.0.2.8\r\nConnection: close\r\n\r\n"
        )
        data = recv_all(s)
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b"HTTP/1.1 404" in data
    got = lines(srv, 3)
    assert [row[0] for row in got] == ["192.0.2.1", TRUSTED, "192.0.2.8"]
    assert got[0][2] == got[1][2] == got[2][2] == TRUSTED
    assert got[0][3] == got[1][3] == got[1][1], got  # the same connection's port throughout
    # The error log names the client by its replaced address too.
    line = srv.wait_for_log(r"/missing")
    assert re.search(r"client: 192\.0\.2\.8, server: ", line), line


def test_unix_socket_peer(pyngx: ServerFactory, site: Path, tmp_path: Path) -> None:
    sock_path = tmp_path / "http.sock"
    srv = pyngx(
        "http {\n" + LOG + f"  server {{ listen unix:{sock_path}; root {site}; "
        "set_real_ip_from unix:; }\n}\n"
    )
    for headers in ("X-Real-IP: 192.0.2.1\r\n", ""):
        with client_unix(sock_path) as s:
            s.sendall(f"GET / HTTP/1.0\r\nHost: x\r\n{headers}\r\n".encode())
            assert recv_all(s).startswith(b"HTTP/1.1 200")
    got = lines(srv, 2)
    assert got[0][:4] == ["192.0.2.1", "", "unix:", ""]
    assert got[1][:4] == ["unix:", "", "unix:", ""]


def test_set_real_ip_from_checks(tmp_path: Path) -> None:
    def check(directive: str) -> str:
        conf = tmp_path / "t.conf"
        conf.write_text(
            f"error_log {tmp_path}/e.log; pid {tmp_path}/p;\nevents {{}}\n"
            f"http {{ access_log off; server {{ listen 127.0.0.1:{free_port()}; {directive} }} }}\n"
        )
        res = run_pyngx(["-t", "-p", f"{tmp_path}/", "-c", str(conf)])
        return res.stderr

    text = check("set_real_ip_from 192.0.2.1/24;")
    assert re.search(r"\[warn\] .*low address bits of 192\.0\.2\.1/24 are meaningless in ", text)
    text = check("set_real_ip_from 1.2.3.4/33;")
    assert 'host not found in set_real_ip_from "1.2.3.4/33" in ' in text, text
    text = check("set_real_ip_from localhost; set_real_ip_from ::1/128;")
    assert "test is successful" in text, text
    text = check("real_ip_recursive maybe;")
    assert 'invalid value "maybe" in "real_ip_recursive" directive, it must be "on" or "off"' in (
        text
    ), text


def test_realip_on_ipv6_listener(pyngx: ServerFactory, site: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port("::1")
    srv = pyngx(
        "http {\n" + LOG + f"  server {{ listen [::1]:{port}; root {site}; "
        "set_real_ip_from ::1; real_ip_header X-Forwarded-For; }\n}\n"
    )
    with client("::1", port, source=None) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n")
        assert recv_all(s).startswith(b"HTTP/1.1 200")
    row = lines(srv, 1)[0]
    assert row[0] == "192.0.2.1" and row[2] == "::1", row
