"""`return`, `set`, `geo` and `split_clients` in stream servers, under nginx 1.22 and pyngx.

Every test runs once per implementation (the `server` fixture) with the same assertions, so
pyngx is held to what nginx answers. split_clients is checked key by key against a Python
model of nginx's algorithm (MurmurHash2, cumulative shares of 0xffffffff): nginx passing the
same test shows the model, and so pyngx, place every key where nginx does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyngx.stream.split_clients import murmur_hash2
from tests.conftest import ServerFactory
from tests.harness import Backend, client, free_port, recv_all

pytestmark = pytest.mark.nginx
BackendFactory = Callable[..., Backend]


def ask(port: int, source: str = "127.0.0.23") -> bytes:
    with client("127.0.0.1", port, source=source) as s:
        return recv_all(s)


def test_return_answers_each_client(server: ServerFactory) -> None:
    port, empty = free_port(), free_port()
    server(
        "stream {\n"
        f'  server {{ listen 127.0.0.1:{port}; return "$remote_addr $server_port\\n"; }}\n'
        f'  server {{ listen 127.0.0.1:{empty}; return ""; }}\n'
        "}\n"
    )
    assert ask(port, "127.0.0.23") == f"127.0.0.23 {port}\n".encode()
    assert ask(port, "127.0.0.24") == f"127.0.0.24 {port}\n".encode()
    assert ask(empty) == b""


def test_set_in_return_and_access_log(server: ServerFactory, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "set.log"
    server(
        "stream {\n"
        "  log_format f '[$k] [$later] [$unset] $status $bytes_sent';\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        '    set $k "v-$remote_addr";\n'
        "    set $later $k.$k;\n"  # a later `set` sees an earlier one
        f'    return "$k $later\\n"; access_log {log} f; }}\n'
        # $unset is only set in another server: empty here, not "-".
        f"  server {{ listen 127.0.0.1:{free_port()}; set $unset x; return x; }}\n"
        "}\n"
    )
    assert ask(port, "127.0.0.24") == b"v-127.0.0.24 v-127.0.0.24.v-127.0.0.24\n"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not log.read_text():
        time.sleep(0.05)
    assert log.read_text() == "[v-127.0.0.24] [v-127.0.0.24.v-127.0.0.24] [] 200 39\n"


GEO = (
    # Declared after the servers that use them: nginx resolves names after the block.
    "  geo $g {\n"
    "    default none;\n"
    "    127.0.0.0/8 lo;\n"
    "    127.0.0.16/28 sixteen;\n"
    "    127.0.0.24 host24;\n"
    "    127.0.0.30/31 gone;\n"
    "    delete 127.0.0.30/31;\n"
    "    ::1 six;\n"
    "  }\n"
    "  geo $r {\n"
    "    ranges;\n"
    "    default out;\n"
    "    127.0.0.1-127.0.0.20 low;\n"
    "    127.0.0.21-127.0.0.40 mid;\n"
    "    127.0.0.25-127.0.0.25 inner;\n"
    "    127.0.0.200-127.0.1.10 wide;\n"
    "  }\n"
)
GEO_VAR = (
    "  geo $ip $byvar {\n"
    "    default d;\n"
    "    10.0.0.0/8 ten;\n"
    "    10.1.0.0/16 ten-one;\n"
    "    2001:db8::/32 doc6;\n"
    "    255.255.255.255 none;\n"  # where an unparsable address lands
    "  }\n"
)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("127.0.0.23", "sixteen sixteen mid"),
        ("127.0.0.24", "host24 sixteen mid"),
        ("127.0.0.25", "sixteen sixteen inner"),
        ("127.0.0.30", "sixteen sixteen mid"),  # its /31 was deleted
        ("127.0.0.10", "lo lo low"),
        ("127.0.0.250", "lo lo wide"),
        ("127.0.1.5", "lo lo wide"),
        ("127.0.1.11", "lo lo out"),
    ],
)
def test_geo_cidr_and_ranges(server: ServerFactory, source: str, expected: str) -> None:
    port = free_port()
    server(
        "stream {\n"
        f'  server {{ listen 127.0.0.1:{port}; return "$g $h $r"; }}\n'
        "  map $remote_addr $h { default $g; ~^127\\.0\\.0\\.(2[0-9])$ sixteen; }\n" + GEO + "}\n"
    )
    assert ask(port, source).decode() == expected


def test_geo_by_variable_and_ipv6(server: ServerFactory) -> None:
    cases = {
        "10.2.3.4": "ten",
        "10.1.9.9": "ten-one",
        "11.0.0.1": "d",
        "2001:db8::7": "doc6",
        "::ffff:10.1.0.1": "ten-one",  # IPv4-mapped: looked up as IPv4
        "2002::1": "d",
        "not-an-address": "none",
    }
    ports = {ip: free_port() for ip in cases}
    servers = "".join(
        f'  server {{ listen 127.0.0.1:{p}; set $ip "{ip}"; return $byvar; }}\n'
        for ip, p in ports.items()
    )
    server("stream {\n" + servers + GEO_VAR + "}\n")
    for ip, want in cases.items():
        assert ask(ports[ip]).decode() == want, ip


def test_geo_routes_proxy_pass(server: ServerFactory, backend: BackendFactory) -> None:
    a, b = backend(banner=b"A\n"), backend(banner=b"B\n")
    port = free_port()
    server(
        "stream {\n"
        f"  server {{ listen 127.0.0.1:{port}; proxy_pass $route; }}\n"
        f"  geo $route {{ default {a.address}; 127.0.0.24/32 group_b; }}\n"
        f"  upstream group_b {{ server {b.address}; }}\n"
        "}\n"
    )
    for source, banner in (("127.0.0.23", b"A\n"), ("127.0.0.24", b"B\n")):
        with client("127.0.0.1", port, source=source) as s:
            assert s.recv(16) == banner


PARTS = [(50, "a"), (200, "b"), (3025, "c"), (1, "d")]  # hundredths of a percent; then "*"


def expected_split(key: str) -> str:
    """nginx's choice, modelled independently of pyngx's CompiledSplit."""
    h = murmur_hash2(key.encode())
    last = 0
    for share, value in PARTS:
        last += share * 0xFFFFFFFF // 10000
        if h < last:
            return value
    return "rest"


def test_split_clients_matches_nginx_key_by_key(server: ServerFactory) -> None:
    port = free_port()
    server(
        "stream {\n"
        f'  server {{ listen 127.0.0.1:{port}; return "$remote_addr $split\\n"; }}\n'
        '  split_clients "k-${remote_addr}x" $split {\n'
        "    0.5% a;\n    2% b;\n    30.25% c;\n    0.01% d;\n    * rest;\n  }\n"
        "}\n"
    )
    seen = set()
    for i in range(200):
        source = f"127.0.{1 + i // 250}.{1 + i % 250}"
        want = expected_split(f"k-{source}x")
        assert ask(port, source).decode() == f"{source} {want}\n"
        seen.add(want)
    assert {"b", "c", "rest"} <= seen
