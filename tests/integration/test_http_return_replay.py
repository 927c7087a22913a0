"""`return` with a constant text, replayed for byte-identical heads (pyngx/http/replay.py):
the same responses and access-log lines as the phases give, and nginx 1.22.

The sequences repeat the same head on one kept-alive connection (the first answer runs the
phases and installs the replay, the later ones are replayed), pipeline them, cross
keepalive_requests, and check that answers depending on the client are not replayed.
"""

from __future__ import annotations

import re

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, free_port
from tests.http_client import HttpClient, Response, build_request
from tests.integration.test_http_proxy_upstream import log_lines as read_log_lines

FMT = (
    'log_format r "$request $status $body_bytes_sent $bytes_sent $sent_http_content_type '
    '$connection_requests $upstream_addr";\n'
)


def conf(port: int, srv: str = "") -> str:
    return (
        "http {\n" + FMT
        + f"server {{ listen 127.0.0.1:{port}; access_log logs/access.log r; {srv}\n"
        + '  location = /ok { return 200 "ok"; }\n'
        + '  location = /gone { return 404 "gone\\n"; }\n'
        + "  location = /who { return 200 \"$remote_addr\"; }\n"
        + '  location = /typed { default_type application/json; return 200 "{}"; }\n'
        + "}\n}\n"
    )


def log_lines(server: ServerProcess, n: int) -> list[str]:
    return read_log_lines(server, "access.log", n)


def shape(r: Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return r.status, [(n, v) for n, v in r.headers if n.lower() not in ("date", "server")], r.body


def sequence(port: int, targets: list[str]) -> list[Response]:
    with HttpClient("127.0.0.1", port) as c:
        out = []
        for t in targets:
            c.send(build_request("GET", t, host="localhost"))
            out.append(c.read())
        return out


def test_replayed_returns_match_nginx(pyngx: ServerFactory, nginx: ServerFactory) -> None:
    targets = ["/ok", "/ok", "/ok", "/gone", "/gone", "/gone", "/typed", "/typed", "/ok"]
    results = {}
    for name, factory in (("pyngx", pyngx), ("nginx", nginx)):
        port = free_port()
        server = factory(conf(port))
        got = sequence(port, targets)
        results[name] = ([shape(r) for r in got], log_lines(server, len(targets)))
        heads = [re.sub(rb"Date: [^\r]*", b"", r.raw_head) for r in got[:3]]
        assert len(set(heads)) == 1
        server.stop()
    assert results["pyngx"] == results["nginx"]


def test_pipelined_and_keepalive_requests(pyngx: ServerFactory) -> None:
    port = free_port()
    server = pyngx(conf(port, "keepalive_requests 8;"))
    with HttpClient("127.0.0.1", port) as c:
        c.send(build_request("GET", "/ok", host="localhost") * 8)
        got = [c.read() for _ in range(8)]
        assert [r.body for r in got] == [b"ok"] * 8
        assert [r.header("connection") for r in got] == ["keep-alive"] * 7 + ["close"]
        assert c.closed()
    lines = log_lines(server, 8)
    assert [line.split()[-2] for line in lines] == [str(i) for i in range(1, 9)]


def test_client_dependent_return_is_not_replayed(pyngx: ServerFactory) -> None:
    port = free_port()
    pyngx(conf(port))
    for source in ("127.0.0.23", "127.0.0.24", "127.0.0.23"):
        with HttpClient("127.0.0.1", port, source=source) as c:
            for _ in range(3):
                c.send(build_request("GET", "/who", host="localhost"))
                assert c.read().body == source.encode()


def test_sent_http_connection_variables_match_nginx(
    pyngx: ServerFactory, nginx: ServerFactory
) -> None:
    fmt = 'log_format k "$status $sent_http_connection $sent_http_keep_alive ' \
        '$sent_http_transfer_encoding";\n'
    results = {}
    for name, factory in (("pyngx", pyngx), ("nginx", nginx)):
        port = free_port()
        server = factory(
            "http {\n" + fmt + f"server {{ listen 127.0.0.1:{port}; keepalive_timeout 65 60;"
            " access_log logs/access.log k;\n"
            '  location = /ok { return 200 "ok"; } location = /bad { return 500; } }\n}\n'
        )
        with HttpClient("127.0.0.1", port) as c:
            c.send(build_request("GET", "/ok", host="localhost"))
            c.read()
            c.send(build_request("GET", "/ok", host="localhost", version="HTTP/1.0"))
            c.read()
        for target in ("/ok", "/bad"):
            with HttpClient("127.0.0.1", port) as c:
                c.send(build_request("GET", target, {"Connection": "close"}, host="localhost"))
                c.read()
        results[name] = log_lines(server, 4)
        server.stop()
    assert results["pyngx"] == results["nginx"]
    # At the log phase nginx has cleared r->keepalive: "close" even for a kept connection.
    assert results["pyngx"][0] == "200 close - -"
