"""Cache hits replayed from memory (pyngx/http/cache/replay.py): what the client gets and what
is logged must be what the phases give, and nginx's.

A replay answers a request head byte-identical to an earlier HIT's on the same connection
kind; these tests send such heads (on one kept-alive connection, pipelined, from two client
addresses) and check the bytes, the access log, keepalive_requests, expiry, a replaced entry
and stub_status, and that configurations whose answer depends on more than the head bytes
($remote_addr in a key or a header) are not replayed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_backend import HttpBackend, origin, pattern
from tests.http_client import HttpClient, Response, build_request
from tests.integration.test_http_proxy_upstream import log_lines as read_log_lines

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]

FMT = (
    'log_format r "$request $status $body_bytes_sent $bytes_sent $upstream_cache_status '
    '$upstream_addr $upstream_status $sent_http_content_type $sent_http_content_length";\n'
)
REQ = build_request("GET", "/a?size=1000", host="localhost")


def conf(b: HttpBackend, port: int, loc: str = "", srv: str = "", http: str = "") -> str:
    return (
        "http {\n"
        + FMT
        + http
        + "proxy_cache_path CACHEDIR keys_zone=z:1m;\n"
        + f"server {{ listen 127.0.0.1:{port}; access_log logs/access.log r; {srv}\n"
        + f"  location / {{ proxy_pass http://{b.address}; proxy_cache z;"
        + f" proxy_cache_valid 200 1m; {loc} }}\n"
        + "  location = /status { stub_status; }\n"
        + "}\n}\n"
    )


def start(factory: ServerFactory, text: str) -> ServerProcess:
    server = factory(text, start=False)
    server.write_conf(
        server.conf_path.read_text().replace("CACHEDIR", str(Path(server.prefix) / "cache"))
    )
    server.start()
    return server


def log_lines(server: ServerProcess, n: int) -> list[str]:
    return read_log_lines(server, "access.log", n)


def hits(b: HttpBackend, path: str) -> int:
    return sum(1 for rec in b.requests if rec.target.split("?")[0] == path)


def shape(r: Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """The response but its Date (and the Server version, which differs from nginx's)."""
    headers = [(n, v) for n, v in r.headers if n.lower() not in ("date", "server")]
    return r.status, headers, r.body


def run_sequence(port: int, n: int) -> list[Response]:
    with HttpClient("127.0.0.1", port) as c:
        out = []
        for _ in range(n):
            c.send(REQ)
            out.append(c.read())
        return out


def test_replayed_hits_are_the_phases_hits_and_nginxs(
    pyngx: ServerFactory, nginx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    results = {}
    for name, factory in (("pyngx", pyngx), ("nginx", nginx)):
        port = free_port()
        server = start(factory, conf(b, port))
        responses = run_sequence(port, 6)
        results[name] = ([shape(r) for r in responses], log_lines(server, 6)[:6])
        # Replays answer byte for byte what the phases answered (the first HIT), Date aside.
        raw = [re.sub(rb"Date: [^\r]*", b"Date: -", r.raw_head) + r.body for r in responses[1:]]
        assert len(set(raw)) == 1
        assert all(r.body == pattern(1000) for r in responses)
        server.stop()
    assert results["pyngx"] == results["nginx"]
    lines = results["pyngx"][1]
    assert lines[0].split()[6] == "MISS"
    assert len(set(lines[1:])) == 1 and lines[1].split()[6] == "HIT"
    assert hits(b, "/a") == 2  # one per proxy


def test_pipelined_identical_heads_answered_in_order(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    port = free_port()
    server = start(pyngx, conf(b, port))
    run_sequence(port, 2)  # MISS, then a HIT that installs the replay
    with HttpClient("127.0.0.1", port) as c:
        other = build_request("GET", "/b?size=10", host="localhost")
        c.send(REQ * 5 + other + REQ * 5)
        got = [c.read() for _ in range(11)]
    assert [len(r.body) for r in got] == [1000] * 5 + [10] + [1000] * 5
    assert all(r.header("connection") == "keep-alive" for r in got)
    assert len(log_lines(server, 13)) == 13
    assert hits(b, "/a") == 1


def test_keepalive_requests_ends_with_close(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = free_port()
    start(pyngx, conf(b, port, srv="keepalive_requests 5;"))
    with HttpClient("127.0.0.1", port) as c:
        got = []
        for _ in range(5):
            c.send(REQ)
            got.append(c.read())
        assert [r.header("connection") for r in got] == ["keep-alive"] * 4 + ["close"]
        assert c.closed()


def test_expired_entry_is_fetched_again_then_replayed(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nCache-Control: max-age=1\r\n\r\none"
    second = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nCache-Control: max-age=1\r\n\r\ntwo"
    b.routes["/v"] = first
    port = free_port()
    server = start(pyngx, conf(b, port))
    req = build_request("GET", "/v", host="localhost")
    with HttpClient("127.0.0.1", port) as c:
        def get() -> bytes:
            c.send(req)
            return c.read().body

        assert [get() for _ in range(4)] == [b"one"] * 4
        b.routes["/v"] = second
        time.sleep(2.1)
        assert [get() for _ in range(4)] == [b"two"] * 4
    assert hits(b, "/v") == 2
    statuses = [line.split()[6] for line in log_lines(server, 8)]
    assert statuses == ["MISS", "HIT", "HIT", "HIT", "EXPIRED", "HIT", "HIT", "HIT"]


def test_entry_replaced_by_a_bypass_is_not_replayed_stale(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    b.routes["/v"] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
    port = free_port()
    # /v is also reachable through a bypassing location with the same key: it stores anew.
    server = start(
        pyngx,
        conf(b, port, http=f"upstream u {{ server {b.address}; }}\n",
             srv="location /bypass/ { proxy_pass http://u/; proxy_cache z; "
                 "proxy_cache_valid 200 1m; proxy_cache_key http://u/v; "
                 "proxy_cache_bypass 1; }"
                 "location = /v { proxy_pass http://u; proxy_cache z; "
                 "proxy_cache_valid 200 1m; proxy_cache_key http://u/v; }"),
    )
    req = build_request("GET", "/v", host="localhost")
    with HttpClient("127.0.0.1", port) as c:
        def get(r: bytes = req) -> bytes:
            c.send(r)
            return c.read().body

        assert [get() for _ in range(3)] == [b"one"] * 3
        b.routes["/v"] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo"
        assert get(build_request("GET", "/bypass/v", host="localhost")) == b"two"
        assert [get() for _ in range(3)] == [b"two"] * 3
    assert server.running()


def test_client_dependent_answers_are_not_replayed(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    port = free_port()
    start(
        pyngx,
        conf(b, port, loc="add_header X-Client $remote_addr;",
             srv="location /k/ { proxy_pass http://" + b.address + "; proxy_cache z; "
                 "proxy_cache_valid 200 1m; proxy_cache_key $remote_addr$request_uri; }"),
    )
    for source in ("127.0.0.23", "127.0.0.24", "127.0.0.23", "127.0.0.24"):
        with HttpClient("127.0.0.1", port, source=source) as c:
            for _ in range(3):
                c.send(REQ)
                assert c.read().header("x-client") == source
            for _ in range(3):
                c.send(build_request("GET", "/k/x?size=5", host="localhost"))
                assert c.read().status == 200
    assert hits(b, "/a") == 1
    assert hits(b, "/k/x") == 2  # one entry per client address


def test_stub_status_counts_replayed_requests(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    port = free_port()
    start(pyngx, conf(b, port))
    run_sequence(port, 12)
    with HttpClient("127.0.0.1", port) as c:
        c.send(build_request("GET", "/status", host="localhost"))
        text = c.read().body.decode()
    accepts, handled, requests = (int(x) for x in text.splitlines()[2].split())
    assert (accepts, handled, requests) == (2, 2, 13)
