"""pyngx.protocols.http1 against Debian's nginx: hostile raw requests, the same decisions.

Each request is sent to a real nginx (an http server with `return 200`, which echoes the
variables the codec derives) and to parse_request_head()/request_framing(). nginx's answer
must be what the codec decided: the same status line (494 goes out as 400; an HTTP/0.9 error
as a bare page), the same $uri/$args/$request_uri/$host/$request for accepted requests, and
the codec's reason text in nginx's error log. This pins the unit tests' table to the real
nginx. Cases where nginx 1.22 and mainline differ (CONNECT; bare LF in chunked bodies) are
left out: the codec follows mainline there.
"""

from __future__ import annotations

import socket
import time

import pytest

from pyngx.protocols.http1 import (
    ChunkedDecoder,
    HttpParseError,
    parse_request_head,
    request_framing,
    status_line,
)
from tests.conftest import ServerFactory
from tests.harness import ServerProcess, client, free_port, recv_all

pytestmark = pytest.mark.nginx

ECHO = '"U=$uri|A=$args|R=$request_uri|H=$host|Q=$request\\n"'


def http_conf(port: int, settings: str = "", upstream_port: int | None = None) -> str:
    body_location = ""
    upstream = ""
    if upstream_port is not None:
        # a location that reads the whole body (to pass it on), so chunked framing is checked
        body_location = (
            "location /body { client_max_body_size 100; "
            f"proxy_pass http://127.0.0.1:{upstream_port}; }}"
        )
        upstream = (
            f"server {{ listen 127.0.0.1:{upstream_port}; "
            'location / { return 200 "len=$content_length\\n"; } }'
        )
    return (
        "http {\n"
        "  access_log off;\n"
        "  client_body_temp_path body; proxy_temp_path proxy; fastcgi_temp_path fastcgi;\n"
        "  uwsgi_temp_path uwsgi; scgi_temp_path scgi;\n"
        f"  {settings}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 {ECHO}; }} "
        f"{body_location} }}\n"
        f"  {upstream}\n"
        "}\n"
    )


def exchange(port: int, raw: bytes, *, half_close: bool = True) -> bytes:
    """Send `raw`, half-close (so that nginx drops a request it still waits for), and read
    nginx's whole answer."""
    with client("127.0.0.1", port, source=None) as c:
        try:
            c.sendall(raw)
            if half_close:
                c.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # nginx may answer and close before it has read everything
        return recv_all(c, timeout=5, reset_ok=True)


def expected_answer(raw: bytes, **settings: object) -> tuple[str, str, list[str]]:
    """('error', first line, [reason]) | ('ok' or 'ok09', echo line, ignored) | ('none', '', [])"""
    try:
        head = parse_request_head(raw, **settings)  # type: ignore[arg-type]
        if head is None:
            return "none", "", []
        framing = request_framing(head, head.target_host)
    except HttpParseError as e:
        first = "<html>" if e.http09 else status_line(e.status).decode().rstrip("\r\n")
        return "error", first, [e.reason]
    echo = f"U={head.uri}|A={head.args}|R={head.request_uri}|H={framing.host}|Q={head.request_line}"
    return ("ok" if head.version >= (1, 0) else "ok09"), echo, head.ignored


def check(srv: ServerProcess, port: int, raw: bytes, **settings: object) -> str | None:
    """None when nginx agrees with the codec on `raw`, else what differs."""
    kind, line, reasons = expected_answer(raw, **settings)
    mark = srv.log_mark()
    answer = exchange(port, raw)
    if kind == "none":
        return None if answer == b"" else f"nginx answered {answer[:80]!r}, we wait for more"
    if kind == "error":
        got = answer.split(b"\r\n", 1)[0].decode("latin-1")
        if got != line:
            return f"nginx: {got!r}, codec: {line!r} ({reasons[0]})"
    else:
        body = answer.split(b"\r\n\r\n", 1)[-1] if answer.startswith(b"HTTP/") else answer
        got = body.split(b"\n", 1)[0].decode("utf-8", "surrogateescape")
        if kind == "ok" and not answer.startswith(b"HTTP/1.1 200 "):
            return f"nginx answered {answer[:80]!r}, codec accepted"
        if got != line:
            return f"nginx: {got!r}, codec: {line!r}"
    # the texts: nginx caps an error log line at 2048 bytes, so compare the start
    deadline = time.monotonic() + 2
    for reason in reasons:
        text = reason[:1200]
        if not text.isascii():
            continue
        while text not in srv.error_log_text()[mark:]:
            if time.monotonic() > deadline:
                return f"{reason[:200]!r} not in nginx's error log: {srv.error_log_text()[mark:]}"
            time.sleep(0.02)
    return None


def header(i: int, n: int) -> bytes:
    """A header line of n bytes, CRLF included."""
    name = b"X-%d: " % i
    return name + b"a" * (n - len(name) - 2) + b"\r\n"


HOST = b"Host: a\r\n"
G11 = b"GET / HTTP/1.1\r\n"
P11 = b"POST / HTTP/1.1\r\nHost: a\r\n"

CASES: dict[str, bytes] = {
    "plain": G11 + HOST + b"\r\n",
    "lower-case method": b"get / HTTP/1.1\r\n" + HOST + b"\r\n",
    "method with - and _": b"G-T_X / HTTP/1.1\r\n" + HOST + b"\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
    "HTTP/10.0": b"GET / HTTP/10.0\r\n\r\n",
    "HTTP/1.1000": b"GET / HTTP/1.1000\r\n\r\n",
    "HTTP/1.999": b"GET / HTTP/1.999\r\n" + HOST + b"\r\n",
    "HTTP/0.9 GET": b"GET /a?b\r\n",
    "HTTP/0.9 POST": b"POST /\r\n",
    "HTTP/0.9 bad URI": b"GET /%zz\r\n",
    "asterisk": b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n",
    "absolute URI": b"GET http://Ex.COM:80/a/../b?x=%41 HTTP/1.1\r\nHost: z\r\n\r\n",
    "absolute URI without path": b"GET http://ex.com?x HTTP/1.1\r\nHost: z\r\n\r\n",
    "absolute URI, bad host": b"GET http://a..b/p HTTP/1.1\r\n" + HOST + b"\r\n",
    "absolute URI, empty host": b"GET http:///p HTTP/1.1\r\n" + HOST + b"\r\n",
    "absolute URI, underscore": b"GET http://a_b/p HTTP/1.1\r\n" + HOST + b"\r\n",
    "%00": b"GET /a%00b HTTP/1.1\r\n" + HOST + b"\r\n",
    "bad escape": b"GET /a%zz HTTP/1.1\r\n" + HOST + b"\r\n",
    "above the root": b"GET /a/../.. HTTP/1.1\r\n" + HOST + b"\r\n",
    "encoded dots above the root": b"GET /%2e%2E HTTP/1.1\r\n" + HOST + b"\r\n",
    "dots, slashes, escapes": b"GET //a/./b/../%2Fc%3f%23?q=%20#f HTTP/1.1\r\n" + HOST + b"\r\n",
    "fragment before args": b"GET /a#b?c HTTP/1.1\r\n" + HOST + b"\r\n",
    "tab in URI": b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n",
    "control byte, line unfinished": b"GET /a\x01",
    "leading empty lines": b"\r\n\n\r\n" + G11 + HOST + b"\r\n",
    "bare LF": b"GET /x HTTP/1.1\nHost: a\nX: y\n\n",
    "header without colon": G11 + HOST + b"Foo\r\n\r\n",
    "invalid names dropped": G11 + HOST + b"X.Y: v\r\nA_b: 1\r\n@: 2\r\n\r\n",
    "space in header name": G11 + HOST + b"X Y: v\r\n\r\n",
    "obs-fold": G11 + HOST + b"X: v\r\n continued\r\n\r\n",
    "NUL in value": G11 + HOST + b"X: a\x00b\r\n\r\n",
    "CR in value": G11 + HOST + b"X: a\rb\r\n\r\n",
    "CR CR LF ends a header": G11 + HOST + b"X: a\r\r\n\r\n",
    "CR CR LF ends the head": G11 + HOST + b"\r\r\n",
    "colon first": G11 + HOST + b": v\r\n\r\n",
    "duplicate Host": G11 + b"hOsT: x\r\nHOST: y\r\n\r\n",
    "Host with slash": G11 + b"Host: a/b\r\n\r\n",
    "empty Host": G11 + b"Host:\r\n\r\n",
    "Host with dots and port": G11 + b"Host: A.Example.COM.:8080\r\n\r\n",
    "HTTP/1.1 without Host": G11 + b"\r\n",
    "line host wins": b"GET http://X.org/ HTTP/1.1\r\nHost: y\r\n\r\n",
    "duplicate Expect": G11 + HOST + b"Expect: a\r\nExpect: b\r\n\r\n",
    "duplicate Content-Length": P11 + b"Content-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    "negative Content-Length": P11 + b"Content-Length: -1\r\n\r\n",
    "huge Content-Length": P11 + b"Content-Length: 9223372036854775808\r\n\r\n",
    "Content-Length and chunked": P11 + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
    "chunked and Content-Length": P11 + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    "Transfer-Encoding gzip": P11 + b"Transfer-Encoding: gzip\r\n\r\n",
    "chunked, chunked": P11 + b"Transfer-Encoding: chunked, chunked\r\n\r\n",
    "Kelvin sign in chunked": P11 + b"Transfer-Encoding: CHUN\xe2\x84\xaaED\r\n\r\n",
    "duplicate chunked": P11 + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    "space before colon": P11 + b"Transfer-Encoding : chunked\r\n\r\n",
    "Transfer_Encoding dropped": P11 + b"Transfer_Encoding: chunked\r\nContent-Length: 1\r\n\r\nx",
    "chunked on HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TRACE": b"TRACE / HTTP/1.1\r\n" + HOST + b"\r\n",
    "too long URI": b"GET /" + b"a" * 8180 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
    "longest URI": b"GET /" + b"a" * 8177 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
    "too long header line": G11 + HOST + header(1, 8193) + b"\r\n",
    "longest header line": G11 + HOST + header(1, 8192) + b"\r\n",
    "large buffers used up": G11 + HOST + b"".join(header(i, 5000) for i in range(5)) + b"\r\n",
    "last buffer full": G11 + HOST + b"".join(header(i, 8192) for i in range(4)),
    "unfinished": G11 + HOST + b"X: y\r\n",
}


def test_requests_vs_nginx(nginx: ServerFactory) -> None:
    port = free_port()
    srv = nginx(http_conf(port))
    srv.wait_for_port("127.0.0.1", port)
    failures = {}
    for name, raw in CASES.items():
        problem = check(srv, port, raw)
        if problem is not None:
            failures[name] = problem
    assert not failures, failures


SETTINGS_CASES: dict[str, bytes] = {
    "first buffer only": G11 + HOST + header(1, 90) + b"\r\n",
    "one large buffer": G11 + HOST + header(1, 1022) + b"\r\n",
    "final CRLF does not fit": G11 + HOST + header(1, 1023) + b"\r\n",
    "line too long": G11 + HOST + header(1, 1025) + b"\r\n",
    "too large request": b"GET /" + b"a" * 1008 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
    "underscores kept, invalid names kept": G11 + HOST + b"A_b: 1\r\nx.y: 2\r\n\r\n",
    "slashes not merged": b"GET //a//b/./../c HTTP/1.0\r\n\r\n",
}


def test_settings_vs_nginx(nginx: ServerFactory) -> None:
    port = free_port()
    srv = nginx(
        http_conf(
            port,
            "client_header_buffer_size 128; large_client_header_buffers 1 1024; "
            "underscores_in_headers on; ignore_invalid_headers off; merge_slashes off;",
        )
    )
    srv.wait_for_port("127.0.0.1", port)
    settings = dict(
        header_buffer_size=128,
        large_header_buffers=(1, 1024),
        underscores_in_headers=True,
        ignore_invalid_headers=False,
        merge_slashes=False,
    )
    failures = {}
    for name, raw in SETTINGS_CASES.items():
        problem = check(srv, port, raw, **settings)
        if problem is not None:
            failures[name] = problem
    assert not failures, failures


# no half-close here: nginx would drop the proxied request as abandoned
CHUNKED = (
    b"POST /body HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
)

CHUNKED_CASES: dict[str, bytes] = {
    "plain": b"5\r\nhello\r\n0\r\n\r\n",
    "extensions and trailers": b"5;a=b\r\nhello\r\n3 x\r\nabc\r\n0;x\r\nT: 1\r\nU: 2\r\n\r\n",
    "leading zeros": b"0000000000000000000000005\r\nhello\r\n0\r\n\r\n",
    "0x prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "data too long": b"5\r\nhelloX\r\n0\r\n\r\n",
    "empty line first": b"\r\n5\r\nhello\r\n0\r\n\r\n",
    "huge size": b"7fffffffffffffff\r\n",
    "huger size": b"fffffffffffffffffffff\r\n",
    "largest size": b"7ffffffffffffff\r\nabc",
    "over client_max_body_size": b"65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n",
    "over it in the second chunk": b"32\r\n" + b"a" * 50 + b"\r\n33\r\n" + b"a" * 51 + b"\r\n",
    "exactly client_max_body_size": b"64\r\n" + b"a" * 100 + b"\r\n0\r\n\r\n",
}


def test_chunked_bodies_vs_nginx(nginx: ServerFactory) -> None:
    port, upstream_port = free_port(), free_port()
    srv = nginx(http_conf(port, upstream_port=upstream_port))
    srv.wait_for_port("127.0.0.1", port)
    failures = {}
    for name, body in CHUNKED_CASES.items():
        decoder = ChunkedDecoder(max_size=100)
        try:
            data = b"".join(decoder.feed(body))
            expected = f"len={len(data)}" if decoder.done else ""
            reason = ""
        except HttpParseError as e:
            expected = status_line(e.status).decode().rstrip("\r\n")
            reason = e.reason
        mark = srv.log_mark()
        answer = exchange(port, CHUNKED + body, half_close=False)
        if expected.startswith("len="):
            got = answer.split(b"\r\n\r\n", 1)[-1].split(b"\n", 1)[0].decode()
        else:
            got = answer.split(b"\r\n", 1)[0].decode("latin-1")
        if got != expected:
            failures[name] = f"nginx: {got!r}, codec: {expected!r}"
        elif reason and reason not in srv.wait_for_log("client ", since=mark):
            failures[name] = f"{reason!r} not logged"
    assert not failures, failures
