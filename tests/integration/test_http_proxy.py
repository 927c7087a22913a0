"""The http proxy against a real origin: what the origin receives, what the client gets.

Request side: the URI rules of proxy_pass (with and without a URI part, variables, unix
sockets), the header list nginx builds (defaults, proxy_set_header with its inheritance,
removal by empty value, pass_request_headers/body, proxy_method, proxy_set_body). Response
side: hidden and passed headers, the upstream's status line, proxy_redirect, intercepted
errors, HEAD/204/304, X-Accel-Redirect, the $upstream_* variables.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.harness import ServerProcess, dead_port, free_port
from tests.http_backend import ClientReader, HttpBackend, http_get, origin

__all__ = ["origin"]
Origin = Callable[..., HttpBackend]


def start(pyngx: ServerFactory, http: str) -> tuple[ServerProcess, int]:
    port = free_port()
    server = pyngx("http {\n" + http.replace("LISTEN", f"listen 127.0.0.1:{port}") + "\n}\n")
    return server, port


def log_lines(server: ServerProcess, name: str, n: int, timeout: float = 5.0) -> list[str]:
    path = Path(server.prefix) / "logs" / name
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


# -- the request: URI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "proxy", "target", "expected"),
    [
        ("/", "", "/a/b?x=1", "/a/b?x=1"),
        ("/", "", "/a%2Fb/../c?x", "/a%2Fb/../c?x"),  # the client's URI, untouched
        ("/a/", "/x/", "/a/b%20c?q=1", "/x/b%20c?q=1"),
        ("/a/", "/", "/a/z", "/z"),
        ("/a", "/x", "/a/z", "/x/z"),
        ("/a/", "/x", "/a/z", "/xz"),
    ],
)
def test_uri_part_replaces_location_prefix(
    pyngx: ServerFactory, origin: Origin, location: str, proxy: str, target: str, expected: str
) -> None:
    b = origin()
    loc = f"location {location} {{ proxy_pass http://{b.address}{proxy}; }}"
    _, port = start(pyngx, f"server {{ LISTEN; {loc} }}")
    r = http_get(port, target)
    assert r.status == 200
    assert r.json()["uri"] == expected


def test_variables_in_proxy_pass(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"upstream grp {{ server {b.address}; }}\n"
        "server { LISTEN;\n"
        f"  location /uri/ {{ proxy_pass http://{b.address}/fixed$is_args$args; }}\n"
        f"  location /none/ {{ proxy_pass http://{b.address}$request_uri; }}\n"
        "  location /byname/ { proxy_pass http://$arg_g; }\n"
        "}",
    )
    assert http_get(port, "/uri/zzz?a=1").json()["uri"] == "/fixed?a=1"
    assert http_get(port, "/none/q%20r?b").json()["uri"] == "/none/q%20r?b"
    r = http_get(port, "/byname/p?g=grp")
    assert r.status == 200 and r.json()["uri"] == "/byname/p?g=grp"
    assert r.json()["headers"][0] == ["Host", "grp"]
    r = http_get(port, f"/byname/p?g={b.address}")
    assert r.status == 200
    assert http_get(port, "/byname/p?g=unknown.invalid").status == 502


def test_unknown_name_in_variable_needs_resolver(pyngx: ServerFactory) -> None:
    server, port = start(pyngx, "server { LISTEN; location / { proxy_pass http://$arg_h; } }")
    assert http_get(port, "/?h=nowhere.invalid").status == 502
    server.wait_for_log(r"no resolver defined to resolve nowhere\.invalid")


def test_unix_socket_upstream(pyngx: ServerFactory, origin: Origin, tmp_path: Path) -> None:
    path = tmp_path / "origin.sock"
    b = origin(unix_path=str(path))
    server, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://unix:{path}; }}\n"
        f"  location /u/ {{ proxy_pass http://unix:{path}:/inner/; }}\n"
        "}",
    )
    r = http_get(port, "/a?b")
    assert r.json()["uri"] == "/a?b"
    assert r.json()["headers"][0] == ["Host", "localhost"]
    assert http_get(port, "/u/x").json()["uri"] == "/inner/x"
    assert b.connections == 2


# -- the request: headers ----------------------------------------------------------------------


def test_default_request_head(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; }} }}")
    r = http_get(
        port,
        "/x",
        headers=[
            ("Host", "front.example"),
            ("User-Agent", "t/1"),
            ("Connection", "keep-alive, Upgrade"),
            ("Upgrade", "h2c"),
            ("TE", "trailers"),
            ("Keep-Alive", "300"),
            ("Expect", "100-continue"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
        ],
    )
    echo = r.json()
    assert echo["version"] == "HTTP/1.0"
    assert echo["headers"] == [
        ["Host", b.address],
        ["Connection", "close"],
        ["User-Agent", "t/1"],
        ["X-Multi", "1"],
        ["X-Multi", "2"],
    ]


def test_proxy_set_header_rules(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        "proxy_set_header X-From-Http http;\n"
        "server { LISTEN;\n"
        f"  location /inherit/ {{ proxy_pass http://{b.address}; }}\n"
        f"  location /own/ {{ proxy_pass http://{b.address};\n"
        "     proxy_set_header Host $host:$server_port; proxy_set_header X-Real-IP $remote_addr;\n"
        "     proxy_set_header User-Agent ''; proxy_set_header X-Empty $http_x_none; }\n"
        f"  location /v11/ {{ proxy_pass http://{b.address}; proxy_http_version 1.1;\n"
        "     proxy_set_header Connection ''; }\n"
        "}",
    )
    hdrs = [("Host", "h.example"), ("User-Agent", "ua"), ("X-Real-IP", "spoofed")]
    echo = http_get(port, "/inherit/", headers=hdrs).json()
    assert echo["headers"] == [
        ["X-From-Http", "http"],
        ["Host", b.address],
        ["Connection", "close"],
        ["User-Agent", "ua"],
        ["X-Real-IP", "spoofed"],
    ]
    echo = http_get(port, "/own/", headers=hdrs).json()
    assert echo["headers"] == [
        ["Host", f"h.example:{port}"],
        ["X-Real-IP", "127.0.0.1"],
        ["Connection", "close"],
    ]
    echo = http_get(port, "/v11/", headers=hdrs).json()
    assert echo["version"] == "HTTP/1.1"
    # A level with any proxy_set_header replaces the inherited list entirely.
    assert echo["headers"] == [
        ["Host", b.address],
        ["User-Agent", "ua"],
        ["X-Real-IP", "spoofed"],
    ]


def test_pass_request_headers_and_body_off(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location /nh/ {{ proxy_pass http://{b.address}; proxy_pass_request_headers off; }}\n"
        f"  location /nb/ {{ proxy_pass http://{b.address}; proxy_pass_request_body off;\n"
        "     proxy_set_header Content-Length ''; }\n"
        f"  location /m/ {{ proxy_pass http://{b.address}; proxy_method PUT;\n"
        "     proxy_set_body 'set:$request_method'; }\n"
        "}",
    )
    echo = http_get(port, "/nh/", headers=[("Host", "x"), ("X-A", "1")]).json()
    assert echo["headers"] == [["Host", b.address], ["Connection", "close"]]
    echo = http_get(port, "/nb/", method="POST", body=b"payload").json()
    assert echo["method"] == "POST" and echo["body_len"] == 0
    assert "Content-Length" not in [h[0] for h in echo["headers"]]
    echo = http_get(port, "/m/", method="POST", body=b"ignored").json()
    assert echo["method"] == "PUT"
    assert echo["body"] == "set:POST"
    assert ["Content-Length", "8"] in echo["headers"]


def test_x_forwarded_for_and_proto(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        "server { LISTEN; location / {\n"
        f"  proxy_pass http://{b.address};\n"
        "  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "  proxy_set_header X-Forwarded-Proto $scheme;\n"
        "  proxy_set_header X-Proxy $proxy_host:$proxy_port; } }",
    )
    echo = http_get(port, "/", headers=[("Host", "h"), ("X-Forwarded-For", "10.0.0.1")]).json()
    got = dict((n, v) for n, v in echo["headers"])
    assert got["X-Forwarded-For"] == "10.0.0.1, 127.0.0.1"
    assert got["X-Forwarded-Proto"] == "http"
    assert got["X-Proxy"] == f"{b.address}:{b.port}"
    echo = http_get(port, "/").json()
    assert dict((n, v) for n, v in echo["headers"])["X-Forwarded-For"] == "127.0.0.1"


# -- the response ------------------------------------------------------------------------------


def test_response_headers_hidden_and_passed(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    b.routes["/r"] = (
        b"HTTP/1.1 203 Not Quite\r\nServer: origin\r\nDate: yesterday\r\nX-Pad: p\r\n"
        b"X-Accel-Charset: c\r\nX-Keep: k\r\nX-Drop: d\r\nContent-Type: text/x; charset=abc\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    _, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://{b.address}; proxy_hide_header X-Drop; }}\n"
        f"  location /p/ {{ proxy_pass http://{b.address}/; proxy_pass_header Server;\n"
        "     proxy_pass_header X-Pad; }\n"
        "}",
    )
    r = http_get(port, "/r")
    assert r.status_line == "HTTP/1.1 203 Not Quite"
    assert r.header_names() == [
        "Server",
        "Date",
        "Content-Type",
        "Content-Length",
        "Connection",
        "X-Keep",
    ]
    assert r.header("Server").startswith("nginx")  # type: ignore[union-attr]
    assert r.header("Content-Type") == "text/x; charset=abc"
    assert r.body == b"ok"
    r = http_get(port, "/p/r")
    assert r.header_names() == [
        "Date",
        "Content-Type",
        "Content-Length",
        "Connection",
        "Server",
        "X-Pad",
        "X-Keep",
        "X-Drop",
    ]
    assert r.header("Server") == "origin"


@pytest.mark.parametrize(
    ("conf", "location", "expected"),
    [
        ("", "http://ORIGIN/x/y", "http://front:PORT/x/y"),
        ("", "/rel", "/rel"),
        ("proxy_redirect off;", "http://ORIGIN/x/y", "http://ORIGIN/x/y"),
        ("proxy_redirect http://ORIGIN/x/ /new/;", "http://ORIGIN/x/y", "http://front:PORT/new/y"),
        ("proxy_redirect http://ORIGIN/x/ https://other/;", "http://ORIGIN/x/y", "https://other/y"),
        (
            "proxy_redirect ~^http://[^/]+/(\\w)/(.*)$ /$2/$1;",
            "http://ORIGIN/x/y",
            "http://front:PORT/y/x",
        ),
        ("proxy_redirect ~*^HTTP://nomatch/ /;", "http://ORIGIN/x/y", "http://ORIGIN/x/y"),
        (
            "proxy_redirect http://$proxy_host/ /via-var/;",
            "http://ORIGIN/z",
            "http://front:PORT/via-var/z",
        ),
    ],
)
def test_proxy_redirect(
    pyngx: ServerFactory, origin: Origin, conf: str, location: str, expected: str
) -> None:
    b = origin()
    conf = conf.replace("ORIGIN", b.address)
    _, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; {conf} }} }}"
    )
    value = location.replace("ORIGIN", b.address).replace("/", "%2F").replace(":", "%3A")
    r = http_get(port, f"/r?status=302&h=Location:{value}", headers=[("Host", "front")])
    assert r.status == 302
    assert r.header("Location") == expected.replace("ORIGIN", b.address).replace("PORT", str(port))


def test_proxy_redirect_default_with_uri_part_and_refresh(
    pyngx: ServerFactory, origin: Origin
) -> None:
    b = origin()
    _, port = start(
        pyngx, f"server {{ LISTEN; location /one/ {{ proxy_pass http://{b.address}/two/; }} }}"
    )
    loc = f"http%3A%2F%2F{b.address}%2Ftwo%2Fpage"
    r = http_get(
        port,
        f"/one/r?status=301&h=Location:{loc}&h=Refresh:5%3B%20url%3D{loc}",
        headers=[("Host", "front")],
    )
    assert r.header("Location") == f"http://front:{port}/one/page"
    assert r.header("Refresh") == "5; url=/one/page"


def test_intercept_errors(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    fallback = origin()
    fallback.routes["/i/x"] = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nfallback"
    )
    _, port = start(
        pyngx,
        "server { LISTEN;\n"
        "  error_page 401 500 503 = @fallback;\n"
        f"  location /i/ {{ proxy_pass http://{b.address}; proxy_intercept_errors on; }}\n"
        f"  location /n/ {{ proxy_pass http://{b.address}; }}\n"
        f"  location @fallback {{ proxy_pass http://{fallback.address}; }}\n"
        "}",
    )
    # Not intercepted: the upstream's own error response.
    r = http_get(port, "/n/x?status=500")
    assert r.status == 500 and r.json()["uri"] == "/n/x?status=500"
    # Intercepted, with error_page to a named location: proxied again, original URI.
    r = http_get(port, "/i/x?status=500")
    assert r.status == 200 and r.body == b"fallback"
    assert fallback.wait_requests(1)[0].target == "/i/x?status=500"
    r = http_get(port, "/i/x?status=401&h=WWW-Authenticate:Basic")
    assert r.status == 200 and r.body == b"fallback"
    assert r.header("WWW-Authenticate") == "Basic"
    # A status without an error_page passes through.
    assert http_get(port, "/i/x?status=502").status == 502


def test_head_204_304(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; }} }}")
    r = http_get(port, "/x?size=1000", method="HEAD")
    assert r.status == 200 and r.header("Content-Length") == "1000"
    assert b.wait_requests(1)[-1].method == "HEAD"
    r = http_get(port, "/x?status=204")
    assert r.status == 204 and r.body == b""  # nginx 1.22 passes its Content-Length on
    r = http_get(port, "/x?status=304")
    assert r.status == 304


def test_x_accel_redirect(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        "server { LISTEN;\n"
        f"  location / {{ proxy_pass http://{b.address}; }}\n"
        f"  location /internal/ {{ internal; proxy_pass http://{b.address}/landed/; }}\n"
        "}",
    )
    r = http_get(
        port,
        "/front?h=X-Accel-Redirect:/internal/file%3Fq%3D1&h=X-Other:1",
        method="POST",
        body=b"x",
    )
    assert r.status == 200
    echo = r.json()
    assert echo["uri"] == "/landed/file?q=1"
    assert echo["method"] == "GET"
    assert r.header("X-Other") is None
    assert http_get(port, "/internal/x").status == 404


def test_upstream_variables_in_access_log(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    dead = dead_port()
    server, port = start(
        pyngx,
        "log_format up '$status $upstream_addr|$upstream_status|$upstream_response_length|"
        "$upstream_bytes_received|$upstream_bytes_sent|$upstream_http_x_a|$upstream_cookie_c|"
        "$upstream_connect_time|$upstream_header_time|$upstream_response_time';\n"
        "access_log logs/up.log up;\n"
        f"upstream two {{ server 127.0.0.1:{dead}; server {b.address}; }}\n"
        "server { LISTEN; location / { proxy_pass http://two; } }",
    )
    target = "/x?h=X-A:aa&h=Set-Cookie:c%3Dcv%3B%20path%3D/"
    r = http_get(port, target)
    assert r.status == 200
    head = f"GET {target} HTTP/1.0\r\nHost: two\r\nConnection: close\r\n\r\n"
    (line,) = log_lines(server, "up.log", 1)
    fields = line.split(" ", 1)[1].split("|")
    assert fields[0] == f"127.0.0.1:{dead}, {b.address}"
    assert fields[1] == "502, 200"
    assert fields[2] == f"0, {len(r.body)}"
    assert fields[3].startswith("0, ") and int(fields[3][3:]) > len(r.body)
    assert fields[4] == f"0, {len(head)}"
    assert fields[5:7] == ["aa", "cv"]
    assert fields[7].startswith("-, 0.0")
    assert fields[8].startswith("-, 0.0")
    assert fields[9].startswith("0.0") and ", 0.0" in fields[9]


def test_status_line_and_http09(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    b.routes["/noreason"] = b"HTTP/1.1 200\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    b.routes["/nine"] = b"this is no http\r\n"
    b.routes["/bad"] = b"HTTP/1.1 200 OK\r\nBad Header: x\r\nConnection: close\r\n\r\n"
    server, port = start(
        pyngx, f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; }} }}"
    )
    r = http_get(port, "/noreason")
    assert r.status_line == "HTTP/1.1 200" and r.body == b"hi"
    assert http_get(port, "/bad").status == 502
    server.wait_for_log(r'upstream sent invalid header: "Bad\\x20\.\.\." while reading response')
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /nine HTTP/1.1\r\nHost: x\r\n\r\n")
        got = s.recv(100)
    assert got == b"this is no http\r\n"
    server.wait_for_log("upstream sent no valid HTTP/1.0 header while reading response header")


def test_pipelined_requests_through_proxy(pyngx: ServerFactory, origin: Origin) -> None:
    b = origin()
    _, port = start(
        pyngx,
        f"server {{ LISTEN; location / {{ proxy_pass http://{b.address}; "
        "proxy_http_version 1.1; } }",
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /2?chunked=1&size=70000 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reader = ClientReader(s)
        r1, r2, r3, r4 = (reader.read() for _ in range(4))
    assert r1.json()["uri"] == "/1"
    assert len(r2.body) == 70000 and r2.header("Transfer-Encoding") == "chunked"
    assert r3.json()["body"] == "abc"
    assert r4.json()["uri"] == "/4"


def test_config_errors(pyngx: ServerFactory) -> None:
    from tests.harness import run_pyngx

    cases = {
        "location ~ /x { proxy_pass http://127.0.0.1:1/y; }": (
            '"proxy_pass" cannot have URI part in location given by regular expression'
        ),
        "location / { proxy_pass ftp://x; }": "invalid URL prefix in",
        "location / { proxy_pass http://b:99999; }": 'invalid port in upstream "b:99999"',
        "location / { proxy_pass http://nonexistent.invalid; }": (
            'host not found in upstream "nonexistent.invalid" in'
        ),
        "location / { proxy_redirect default; proxy_pass http://127.0.0.1:1; }": (
            '"proxy_redirect default" should be placed after the "proxy_pass" directive'
        ),
        "location / { proxy_pass http://127.0.0.1:1; proxy_buffers 1 4k; }": (
            'there must be at least 2 "proxy_buffers"'
        ),
    }
    for body, message in cases.items():
        server = pyngx(
            f"http {{ server {{ listen 127.0.0.1:{free_port()}; {body} }} }}", start=False
        )
        result = run_pyngx(["-t", "-p", str(server.prefix), "-c", str(server.conf_path)])
        assert message in result.stderr, (body, result.stderr)
