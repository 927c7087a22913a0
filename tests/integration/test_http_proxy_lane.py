"""Proxied requests started without the phases (pyngx/http/proxy_lane.py).

The first request with a given head runs the phases; the ones after it with the same bytes
on the same port go straight to the proxy. Everything that looks at the client or the
connection must still see each request: variables in proxy_set_header, realip, keepalive
limits, the access log; and a location with anything in its phases (allow/deny, `if`,
`return`) must keep running them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from tests.conftest import ServerFactory
from tests.http_backend import ClientReader, HttpBackend, origin, pattern
from tests.integration.test_http_proxy_upstream import KA, log_lines, start

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]


def _client(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _no_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date:"))


def _header(rec: object, name: str) -> str | None:
    for n, v in rec.headers:  # type: ignore[attr-defined]
        if n.lower() == name.lower():
            return v  # type: ignore[no-any-return]
    return None


REQ = b"GET /l?size=300 HTTP/1.1\r\nHost: lane\r\n\r\n"


def test_lane_evaluates_variables_for_each_request(pyngx: ServerFactory, origin: Origin) -> None:
    """Two clients (127.0.0.23, 127.0.0.24) send byte-identical heads, three each, taking
    turns: the upstream sees each request's own $remote_addr and $connection_requests."""
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA}\n"
        "  proxy_set_header X-Real-IP $remote_addr;\n"
        "  proxy_set_header X-N $connection_requests; } }",
    )
    with _client(port, "127.0.0.23") as a, _client(port, "127.0.0.24") as c:
        ra, rc = ClientReader(a), ClientReader(c)
        for _ in range(3):
            for s, r in ((a, ra), (c, rc)):
                s.sendall(REQ)
                resp = r.read()
                assert resp.status == 200 and resp.body == pattern(300)
    seen = [(_header(rec, "X-Real-IP"), _header(rec, "X-N")) for rec in b.wait_requests(6)]
    assert seen == [
        ("127.0.0.23", "1"),
        ("127.0.0.24", "1"),
        ("127.0.0.23", "2"),
        ("127.0.0.24", "2"),
        ("127.0.0.23", "3"),
        ("127.0.0.24", "3"),
    ]


def test_lane_answers_and_logs_as_the_phases(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx,
        "log_format v '$status $request $uri $args $connection_requests $request_length "
        "$body_bytes_sent $bytes_sent $server_name $host $upstream_addr $upstream_status "
        "$upstream_response_length $sent_http_content_length';\n"
        "access_log logs/v.log v;\n"
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; server_name lane; location /l {{ proxy_pass http://ka; {KA} }} }}",
    )
    with _client(port) as s:
        reader = ClientReader(s)
        responses = []
        for _ in range(5):
            s.sendall(REQ)
            responses.append(reader.read())
    heads = {_no_date(r.raw_head) for r in responses}
    assert len(heads) == 1
    assert all(r.body == pattern(300) for r in responses)
    lines = log_lines(server, "v.log", 5)
    assert len(lines) == 5
    fields = [line.split(" ") for line in lines]
    assert [f[6] for f in fields] == ["1", "2", "3", "4", "5"]  # $connection_requests
    first = fields[0][:6] + fields[0][7:]
    for f in fields[1:]:
        assert f[:6] + f[7:] == first
    assert first[:6] == ["200", "GET", "/l?size=300", "HTTP/1.1", "/l", "size=300"]
    assert fields[0][10:] == ["lane", "lane", b.address, "200", "300", "300"]
    assert b.connections == 1


def test_lane_keeps_keepalive_requests(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; keepalive_requests 3; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    with _client(port) as s:
        reader = ClientReader(s)
        got = []
        for _ in range(3):
            s.sendall(REQ)
            got.append(reader.read().header("Connection"))
        assert got == ["keep-alive", "keep-alive", "close"]
        assert s.recv(100) == b""


def test_lane_pipelined_in_order(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    other = b"GET /l?size=77 HTTP/1.1\r\nHost: lane\r\n\r\n"
    with _client(port) as s:
        reader = ClientReader(s)
        s.sendall(REQ)
        assert reader.read().body == pattern(300)
        s.sendall(REQ * 3 + other + REQ * 2)
        sizes = [len(reader.read().body) for _ in range(6)]
    assert sizes == [300, 300, 300, 77, 300, 300]


def test_lane_keeps_the_access_phase(pyngx: ServerFactory, origin: Origin) -> None:
    """allow/deny and `if` look at the client: the same head from another address is
    refused after the allowed client's requests went through (allow/deny run on the lane,
    an `if` keeps its location off it)."""
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        f"  location /l {{ allow 127.0.0.23; deny all; proxy_pass http://ka; {KA} }}\n"
        f"  location /i {{ if ($remote_addr = 127.0.0.24) {{ return 418; }}\n"
        f"    proxy_pass http://ka; {KA} }}\n"
        "}",
    )
    head_i = REQ.replace(b"/l?", b"/i?")
    with _client(port, "127.0.0.23") as a:
        ra = ClientReader(a)
        for _ in range(3):
            for req in (REQ, head_i):
                a.sendall(req)
                assert ra.read().status == 200
    with _client(port, "127.0.0.24") as c:
        rc = ClientReader(c)
        for _ in range(2):
            c.sendall(REQ)
            assert rc.read().status == 403
            c.sendall(head_i)
            assert rc.read().status == 418


def test_lane_runs_realip(pyngx: ServerFactory, origin: Origin) -> None:
    """realip at the server level: the address comes from the head, the client's own
    address decides trust, so every request is looked at (realip runs in the post-read
    phase and, inherited by the location, in its preaccess phase)."""
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        "server { LISTEN; set_real_ip_from 127.0.0.23; real_ip_header X-Forwarded-For;\n"
        f"  location / {{ proxy_pass http://ka; {KA} proxy_set_header X-Client $remote_addr; }}\n"
        "}",
    )
    req = b"GET /r?size=5 HTTP/1.1\r\nHost: lane\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
    for source in ("127.0.0.23", "127.0.0.24", "127.0.0.23"):
        with _client(port, source) as s:
            reader = ClientReader(s)
            for _ in range(2):
                s.sendall(req)
                assert reader.read().status == 200
    seen = [_header(rec, "X-Client") for rec in b.wait_requests(6)]
    assert seen == ["10.1.2.3"] * 2 + ["127.0.0.24"] * 2 + ["10.1.2.3"] * 2


def test_lane_runs_limit_req(pyngx: ServerFactory, origin: Origin) -> None:
    """limit_req counts every request, per client, on the lane too: refused over the rate,
    and delayed within the burst (the delayed request goes on through the phases)."""
    b = origin()
    _, port = start(
        pyngx,
        "limit_req_zone $binary_remote_addr zone=once:1m rate=1r/m;\n"
        "limit_req_zone $binary_remote_addr zone=slow:1m rate=20r/s;\n"
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        "server { LISTEN;\n"
        f"  location /l {{ limit_req zone=once; proxy_pass http://ka; {KA} }}\n"
        f"  location /d {{ limit_req zone=slow burst=5; proxy_pass http://ka; {KA} }}\n"
        "}",
    )
    for source, wanted in (("127.0.0.23", [200, 503, 503]), ("127.0.0.24", [200, 503])):
        with _client(port, source) as s:
            reader = ClientReader(s)
            got = []
            for _ in wanted:
                s.sendall(REQ)
                got.append(reader.read().status)
            assert got == wanted, source
    delayed = REQ.replace(b"/l?", b"/d?")
    with _client(port, "127.0.0.25") as s:
        reader = ClientReader(s)
        s.sendall(delayed * 4)
        assert [reader.read().status for _ in range(4)] == [200] * 4


def test_lane_per_virtual_server(pyngx: ServerFactory, origin: Origin) -> None:
    """Two servers on one port, chosen by Host: each head keeps its own server's location."""
    b1, b2 = origin(), origin()
    _, port = start(
        pyngx,
        f"upstream one {{ server {b1.address}; keepalive 4; }}\n"
        f"upstream two {{ server {b2.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; server_name one; location / {{ proxy_pass http://one; {KA} }} }}\n"
        f"server {{ LISTEN; server_name two; location / {{ proxy_pass http://two; {KA} }} }}",
    )
    with _client(port) as s:
        reader = ClientReader(s)
        for _ in range(3):
            for host in (b"one", b"two"):
                s.sendall(REQ.replace(b"Host: lane", b"Host: " + host))
                assert reader.read().status == 200
    assert len(b1.wait_requests(3)) == 3
    assert len(b2.wait_requests(3)) == 3


def test_lane_upstream_failure_is_the_usual_one(pyngx: ServerFactory, origin: Origin) -> None:
    """A lane request whose upstream went away gets the exchange's 502 and error line."""
    b = origin()
    server, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    with _client(port) as s:
        reader = ClientReader(s)
        s.sendall(REQ)
        assert reader.read().status == 200
        b.close()
        s.sendall(REQ)
        assert reader.read().status == 502
    errors = log_lines(server, "error.log", 1)
    assert any("upstream" in line and "[error]" in line for line in errors), errors
