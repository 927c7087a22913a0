"""Upstream groups behind the http proxy: keepalive, failures, timeouts, balancing.

The keepalive cache is observed from the origin's side (how many connections it accepted);
failures and timeouts through the status, the error log (nginx's exact lines) and
$upstream_addr/$upstream_status.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, dead_port, free_port
from tests.http_backend import ClientReader, HttpBackend, http_get, origin, pattern

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]
KA = 'proxy_http_version 1.1; proxy_set_header Connection "";'


def start(pyngx: ServerFactory, http: str, **kw: object) -> tuple[ServerProcess, int]:
    port = free_port()
    server = pyngx("http {\n" + http.replace("LISTEN", f"listen 127.0.0.1:{port}") + "\n}\n", **kw)
    return server, port


def log_lines(server: ServerProcess, name: str, n: int, timeout: float = 5.0) -> list[str]:
    path = Path(server.prefix) / "logs" / name
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connects to it hang (a connect timeout)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    time.sleep(0.1)
    yield port
    for c in fillers:
        c.close()
    listener.close()


@pytest.fixture
def sink() -> Iterator[int]:
    """A port that accepts and never reads (a send timeout, once buffers are full)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            accepted.append(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield listener.getsockname()[1]
    stop.set()
    t.join(2)
    for c in accepted:
        c.close()
    listener.close()


# -- keepalive ----------------------------------------------------------------------------------


def test_keepalive_reuses_connections(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 8; }}\n"
        f"upstream plain {{ server {b.address}; }}\n"
        "server { LISTEN;\n"
        f"  location /ka/ {{ proxy_pass http://ka; {KA} }}\n"
        f"  location /no11/ {{ proxy_pass http://ka; }}\n"
        f"  location /plain/ {{ proxy_pass http://plain; {KA} }}\n"
        "}",
    )
    for i in range(20):
        query = ["", "?chunked=1&size=5000", "?size=100000", "?status=204"][i % 4]
        assert http_get(port, f"/ka/{i}{query}").status in (200, 204)
    assert b.connections == 1
    for i in range(5):
        # HTTP/1.0 with Connection: close: the cached connection is used (and closed by the
        # origin), then nothing is left to reuse.
        http_get(port, f"/no11/{i}")
    assert b.connections == 5
    for i in range(5):
        http_get(port, f"/plain/{i}")  # no keepalive in the group: no cache
    assert b.connections == 10
    for i in range(3):
        http_get(port, f"/ka/c{i}?close=1")  # the origin says Connection: close
    assert b.connections == 13


def test_keepalive_many_clients_share_the_cache(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 4; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
    readers = [ClientReader(s) for s in socks]
    for round_ in range(10):
        for i, s in enumerate(socks):
            s.sendall(f"GET /r{round_}c{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        for reader in readers:
            assert reader.read().status == 200
    for s in socks:
        s.close()
    assert b.connections <= 4


def test_keepalive_requests_and_timeout(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 2; keepalive_requests 5;\n"
        "  keepalive_timeout 1s; }\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    for i in range(20):
        http_get(port, f"/{i}")
    assert b.connections == 4
    b.wait_idle(timeout=0.1)
    time.sleep(1.6)
    assert b.open_connections == 0  # idle past keepalive_timeout: closed by the proxy
    http_get(port, "/after")
    assert b.connections == 5


def test_keepalive_survives_origin_closing_idle(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 2; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    assert http_get(port, "/1").status == 200
    b.close()  # the origin goes away (closing its side of the cached connection)
    b2 = HttpBackend(port=b.port)
    try:
        time.sleep(0.2)
        assert http_get(port, "/2").status == 200
        assert b2.connections == 1
    finally:
        b2.close()


def test_keepalive_hot_path_pipelined_client(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream ka {{ server {b.address}; keepalive 16; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://ka; {KA} }} }}",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"".join(f"GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(200)))
        reader = ClientReader(s)
        uris = [reader.read().json()["uri"] for _ in range(200)]
    assert uris == [f"/p{i}" for i in range(200)]
    assert b.connections == 1


# -- failures ----------------------------------------------------------------------------------


def test_refused_is_502_with_nginx_error_line(pyngx: ServerFactory) -> None:
    dead = dead_port()
    server, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://127.0.0.1:{dead}/x/; }} }}"
    )
    r = http_get(port, "/a?b", headers=[("Host", "front.example")])
    assert r.status == 502
    line = server.wait_for_log("connect\\(\\) failed")
    assert line.split(" *1 ", 1)[1] == (
        "connect() failed (111: Connection refused) while connecting to upstream, "
        'client: 127.0.0.1, server: , request: "GET /a?b HTTP/1.1", '
        f'upstream: "http://127.0.0.1:{dead}/x/a?b", host: "front.example"'
    )
    assert "[error]" in line


def test_next_upstream_across_dead_peers(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    d1, d2 = dead_port(), dead_port()
    server, port = start(
        pyngx,
        "log_format up '$upstream_addr|$upstream_status';\n"
        "access_log logs/up.log up;\n"
        f"upstream g {{ server 127.0.0.1:{d1}; server 127.0.0.1:{d2}; server {b.address}; }}\n"
        f"upstream off {{ server 127.0.0.1:{d1} max_fails=0; server {b.address}; }}\n"
        f"upstream tries {{ server 127.0.0.1:{d1} max_fails=0; server 127.0.0.1:{d2} max_fails=0;\n"
        f"  server {b.address}; }}\n"
        "server { LISTEN;\n"
        "  location /g/ { proxy_pass http://g; }\n"
        "  location /off/ { proxy_pass http://off; proxy_next_upstream off; }\n"
        "  location /tries/ { proxy_pass http://tries; proxy_next_upstream_tries 2; }\n"
        "}",
    )
    assert http_get(port, "/g/1").status == 200
    assert http_get(port, "/g/2").status == 200  # the dead peers are now disabled
    assert http_get(port, "/off/1").status == 502
    assert http_get(port, "/tries/1").status == 502
    lines = log_lines(server, "up.log", 4)
    assert lines[0] == f"127.0.0.1:{d1}, 127.0.0.1:{d2}, {b.address}|502, 502, 200"
    assert lines[1] == f"{b.address}|200"
    assert lines[2] == f"127.0.0.1:{d1}|502"
    assert lines[3] == f"127.0.0.1:{d1}, 127.0.0.1:{d2}|502, 502"
    server.wait_for_log("upstream server temporarily disabled while connecting to upstream")


def test_next_upstream_on_status_and_non_idempotent(pyngx: ServerFactory, origin: Origin) -> None:
    a, b = origin(), origin()
    server, port = start(
        pyngx,
        "log_format up '$request_method $upstream_addr|$upstream_status';\n"
        "access_log logs/up.log up;\n"
        f"upstream g {{ server {a.address} max_fails=0; server {b.address} max_fails=0; }}\n"
        "server { LISTEN;\n"
        "  location /s/ { proxy_pass http://g; proxy_next_upstream error http_503; }\n"
        "  location /p/ { proxy_pass http://g;\n"
        "     proxy_next_upstream error http_503 non_idempotent; }\n"
        "}",
    )
    # Both answer 503: the second try's answer is passed on (tries exhausted).
    r = http_get(port, "/s/x?status=503")
    assert r.status == 503 and r.json()["uri"] == "/s/x?status=503"
    # POST is not retried unless non_idempotent is given.
    assert http_get(port, "/s/y?status=503", method="POST", body=b"1").status == 503
    assert http_get(port, "/p/y?status=503", method="POST", body=b"1").status == 503
    lines = log_lines(server, "up.log", 3)
    assert lines[0].split("|")[1] == "503, 503"
    assert lines[1].split("|")[1] == "503"
    assert lines[2].split("|")[1] == "503, 503"
    # The retried POST carried its body both times.
    posts = [r for r in a.requests + b.requests if r.method == "POST" and "/p/" in r.target]
    assert len(posts) == 2 and all(p.body == b"1" for p in posts)


def test_no_live_upstreams(pyngx: ServerFactory) -> None:
    dead = dead_port()
    server, port = start(
        pyngx,
        f"upstream g {{ server 127.0.0.1:{dead}; server 127.0.0.1:{dead + 0} backup; }}\n"
        "server { LISTEN; location / { proxy_pass http://g; } }",
    )
    assert http_get(port, "/1").status == 502
    assert http_get(port, "/2").status == 502
    server.wait_for_log('no live upstreams while connecting to upstream, .*upstream: "http://g/2"')


def test_connect_timeout(pyngx: ServerFactory, blackhole: int) -> None:
    server, port = start(
        pyngx,
        "server { LISTEN; location / {\n"
        f"  proxy_pass http://127.0.0.1:{blackhole}; proxy_connect_timeout 500ms; }} }}",
    )
    t0 = time.monotonic()
    r = http_get(port, "/ct")
    assert r.status == 504
    assert 0.4 < time.monotonic() - t0 < 3
    server.wait_for_log(
        r"upstream timed out \(110: Connection timed out\) while connecting to upstream, "
        r".*upstream: \"http://127\.0\.0\.1:\d+/ct\""
    )
    # The abandoned connect leaves nothing behind ("Future exception was never retrieved").
    assert "[alert]" not in server.error_log_text()


def test_client_gone_while_connecting(pyngx: ServerFactory, blackhole: int) -> None:
    """A client that closes while the upstream connect is pending: nginx's info line, the
    connect abandoned without an alert, and the worker serving on."""
    server, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://127.0.0.1:{blackhole}; }}\n"
        "  location = /ok { return 200 ok; } }",
    )
    for i in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(f"GET /gone{i} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            time.sleep(0.3)  # the connect is pending (the blackhole answers no SYN)
        server.wait_for_log(
            rf"\*{i + 1} epoll_wait\(\) reported that client prematurely closed connection "
            rf"while connecting to upstream, .*upstream: \"http://127\.0\.0\.1:\d+/gone{i}\""
        )
    assert http_get(port, "/ok").status == 200
    assert "[alert]" not in server.error_log_text()


def test_read_timeout(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://{b.address}; proxy_read_timeout 500ms; }}\n"
        f"  location /body/ {{ proxy_pass http://{b.address}; proxy_read_timeout 500ms;\n"
        "     proxy_buffering off; }\n"
        "}",
    )
    assert http_get(port, "/x?delay=2").status == 504
    server.wait_for_log(
        r"upstream timed out \(110: Connection timed out\) while reading response header "
        r"from upstream"
    )
    # Mid-body: the head is out, the client sees the response cut short.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /body/y?size=3000&piece=1000&slow=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and len(data.partition(b"\r\n\r\n")[2]) < 3000
    server.wait_for_log(r"upstream timed out \(110: Connection timed out\) while reading upstream")


def test_send_timeout(pyngx: ServerFactory, sink: int) -> None:
    server, port = start(
        pyngx,
        "server { LISTEN; client_max_body_size 100m; location / {\n"
        f"  proxy_pass http://127.0.0.1:{sink}; proxy_send_timeout 500ms; }} }}",
    )
    r = http_get(port, "/s", method="POST", body=pattern(30 * 1024 * 1024), timeout=20)
    assert r.status == 504
    server.wait_for_log(
        r"upstream timed out \(110: Connection timed out\) while sending request to upstream"
    )


def test_premature_close_before_header(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    server, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; }} }}"
    )
    assert http_get(port, "/x?drop=1").status == 502
    server.wait_for_log(
        "upstream prematurely closed connection while reading response header from upstream"
    )


# -- balancing and groups ------------------------------------------------------------------------


def test_round_robin_weights_and_backup(pyngx: ServerFactory, origin: Origin) -> None:
    a, b, c = origin(), origin(), origin()
    server, port = start(
        pyngx,
        "log_format up '$upstream_addr';\naccess_log logs/up.log up;\n"
        f"upstream g {{ server {a.address} weight=2; server {b.address};\n"
        f"  server {c.address} backup; }}\n"
        "server { LISTEN; location / { proxy_pass http://g; } }",
    )
    for i in range(6):
        http_get(port, f"/{i}")
    lines = log_lines(server, "up.log", 6)
    names = {a.address: "A", b.address: "B", c.address: "C"}
    assert [names[x] for x in lines] == ["A", "B", "A", "A", "B", "A"]


@pytest.mark.parametrize("method", ["ip_hash", "hash $arg_k", "hash $arg_k consistent"])
def test_sticky_methods(pyngx: ServerFactory, origin: Origin, method: str) -> None:
    backs = [origin() for _ in range(3)]
    servers = "".join(f"server {x.address}; " for x in backs)
    server, port = start(
        pyngx,
        "log_format up '$arg_k $upstream_addr';\naccess_log logs/up.log up;\n"
        f"upstream g {{ {method}; {servers} }}\n"
        "server { LISTEN; location / { proxy_pass http://g; } }",
    )
    for i in range(12):
        http_get(port, f"/?k={i % 4}")
    lines = log_lines(server, "up.log", 12)
    seen: dict[str, set[str]] = {}
    for line in lines:
        k, addr = line.split(" ")
        seen.setdefault(k, set()).add(addr)
    assert all(len(v) == 1 for v in seen.values())


def test_least_conn_prefers_idle_peer(pyngx: ServerFactory, origin: Origin) -> None:
    a, b = origin(), origin()
    server, port = start(
        pyngx,
        f"upstream g {{ least_conn; server {a.address}; server {b.address}; }}\n"
        "server { LISTEN; location / { proxy_pass http://g; } }",
    )
    slow = threading.Thread(target=http_get, args=(port, "/slow?delay=1.5"), daemon=True)
    slow.start()
    time.sleep(0.3)
    for i in range(4):
        http_get(port, f"/fast{i}")
    slow.join(5)
    busy = a if any(r.target.startswith("/slow") for r in a.requests) else b
    other = b if busy is a else a
    assert len([r for r in other.requests if r.target.startswith("/fast")]) == 4
    assert len([r for r in busy.requests if r.target.startswith("/fast")]) == 0


def test_down_and_max_fails(pyngx: ServerFactory, origin: Origin) -> None:
    a, b = origin(), origin()
    dead = dead_port()
    server, port = start(
        pyngx,
        "log_format up '$upstream_addr';\naccess_log logs/up.log up;\n"
        f"upstream g {{ server {a.address} down; server 127.0.0.1:{dead} max_fails=1 "
        f"fail_timeout=30s; server {b.address}; }}\n"
        "server { LISTEN; location / { proxy_pass http://g; } }",
    )
    for i in range(4):
        assert http_get(port, f"/{i}").status == 200
    assert a.connections == 0
    lines = log_lines(server, "up.log", 4)
    assert sum(f"127.0.0.1:{dead}" in line for line in lines) == 1


def test_upstream_block_config_errors(pyngx: ServerFactory) -> None:
    from tests.harness import run_pyngx

    cases = {
        "upstream b { server 127.0.0.1:1; } server { listen 127.0.0.1:{P}; "
        "location / { proxy_pass http://b:8080; } }": 'upstream "b" may not have port 8080',
        "upstream b { } server { listen 127.0.0.1:{P}; location / { proxy_pass http://b; } }": (
            "no servers are inside upstream"
        ),
        "upstream b { server 127.0.0.1:1 backup; ip_hash; } server { listen 127.0.0.1:{P}; "
        "location / { proxy_pass http://b; } }": 'no servers in upstream "b"',
        "upstream b { ip_hash; server 127.0.0.1:1 backup; }": (
            'balancing method does not support parameter "backup"'
        ),
        "upstream b { server 127.0.0.1:1; keepalive 0; }": 'invalid value "0"',
    }
    for body, message in cases.items():
        body = body.replace("{P}", str(free_port()))
        server = pyngx(f"http {{ {body} }}", start=False)
        result = run_pyngx(["-t", "-p", str(server.prefix), "-c", str(server.conf_path)])
        assert message in result.stderr, (body, result.stderr)
    # A method after `keepalive` replaces it (with nginx's warning).
    server = pyngx(
        "http { upstream b { server 127.0.0.1:1; keepalive 2; least_conn; } }", start=False
    )
    result = run_pyngx(["-t", "-p", str(server.prefix), "-c", str(server.conf_path)])
    assert "load balancing method redefined" in result.stderr


def test_next_upstream_timeout_limits_retries(
    pyngx: ServerFactory, origin: Origin, blackhole: int
) -> None:
    b = origin()
    server, port = start(
        pyngx,
        "log_format up '$upstream_addr|$upstream_status';\naccess_log logs/up.log up;\n"
        f"upstream g {{ server 127.0.0.1:{blackhole} max_fails=0;\n"
        f"  server 127.0.0.1:{blackhole} max_fails=0; server {b.address}; }}\n"
        "server { LISTEN; location / { proxy_pass http://g;\n"
        "  proxy_connect_timeout 400ms; proxy_next_upstream_timeout 300ms; } }",
    )
    # The first try times out after 400ms: past the 300ms budget, no second try.
    assert http_get(port, "/t").status == 504
    (line,) = log_lines(server, "up.log", 1)
    assert line == f"127.0.0.1:{blackhole}|504"


def test_zone_in_http_upstream(pyngx: ServerFactory, origin: Origin) -> None:
    a, b = origin(), origin()
    server, port = start(
        pyngx,
        f"upstream g {{ zone g 64k; server {a.address}; server {b.address}; keepalive 2; }}\n"
        f"server {{ LISTEN; location / {{ proxy_pass http://g; {KA} }} }}",
        workers=2,
    )
    for i in range(8):
        assert http_get(port, f"/{i}").status == 200
    assert len(a.requests) + len(b.requests) == 8
    assert a.requests and b.requests
