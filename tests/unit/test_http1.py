"""Tests for the sans-I/O HTTP/1.x codec (pyngx/protocols/http1.py).

The expected decisions and texts were taken from Debian's nginx 1.22.1 answering these bytes
(tests/e2e/test_http1_vs_nginx.py keeps a sample of them pinned against the real nginx);
where mainline differs from 1.22, the mainline decision is expected and the case says so.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyngx.protocols import http1
from pyngx.protocols.http1 import (
    LAST_CHUNK,
    STATUS_REASONS,
    ChunkedDecoder,
    HeaderLimits,
    HttpParseError,
    RequestHead,
    ResponseHead,
    UpstreamParseError,
    discardable_prefix,
    encode_chunk,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    split_target,
    status_line,
    validate_host,
)

HOST = b"Host: a\r\n"


def head_of(raw: bytes, **kw: Any) -> RequestHead:
    head = parse_request_head(raw, **kw)
    assert head is not None, raw
    return head


def error_of(raw: bytes, **kw: Any) -> tuple[int, str]:
    """(status, reason) of the first error, from parsing or from the framing checks."""
    try:
        head = parse_request_head(raw, **kw)
        assert head is not None, f"incomplete: {raw!r}"
        request_framing(head, head.target_host)
    except HttpParseError as e:
        return e.status, e.reason
    raise AssertionError(f"accepted: {raw!r}")


# --------------------------------------------------------------------------------------------
# valid requests

VALID: list[tuple[bytes, dict[str, Any]]] = [
    (
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        dict(method="GET", target="/", version=(1, 1), headers=[("Host", "a")], size=27),
    ),
    (
        b"GET /a?b HTTP/1.0\r\n\r\n",
        dict(uri="/a", args="b", request_uri="/a?b", request_line="GET /a?b HTTP/1.0"),
    ),
    # HTTP/0.9: no headers, the head ends with the request line
    (b"GET /\r\n", dict(version=(0, 9), size=7, request_line="GET /", protocol="")),
    (b"GET / \r\n", dict(version=(0, 9), request_line="GET / ")),
    (b"GET /x\nHost: ignored\r\n", dict(version=(0, 9), size=7, headers=[])),
    # bare LF line ends, several spaces, spaces after the version, leading empty lines
    (b"GET / HTTP/1.1\nHost: a\nX: y\n\n", dict(headers=[("Host", "a"), ("X", "y")], size=29)),
    (
        b"GET  /x   HTTP/1.1  \r\nHost: a\r\n\r\n",
        dict(target="/x", request_line="GET  /x   HTTP/1.1  ", protocol="HTTP/1.1  "),
    ),
    (b"\r\n\n\r\r\nGET / HTTP/1.0\r\n\r\n", dict(size=24, request_line="GET / HTTP/1.0")),
    # versions: any 1.x with up to three minor digits, leading zeros allowed
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", dict(version=(1, 2))),
    (b"GET / HTTP/1.999\r\nHost: a\r\n\r\n", dict(version=(1, 999))),
    (b"GET / HTTP/1.0001\r\n\r\n", dict(version=(1, 1), protocol="HTTP/1.0001")),
    # methods: A-Z, '_' and '-'
    (b"G-T_X /x HTTP/1.1\r\nHost: a\r\n\r\n", dict(method="G-T_X")),
    # header values: whitespace around stripped, anything but NUL, CR, LF inside
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nX:\t v \t w \t\r\nY:\r\nZ:   \r\nW: \x01\x7f\xff\r\n\r\n",
        dict(
            headers=[("Host", "a"), ("X", "v \t w"), ("Y", ""), ("Z", ""), ("W", "\x01\x7f\udcff")]
        ),
    ),
    # a name without colon is a header with an empty value; CRs before LF are fine
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nFoo\r\nX: a\r\r\n\r\n",
        dict(headers=[("Host", "a"), ("Foo", ""), ("X", "a")]),
    ),
    # invalid names are dropped (ignore_invalid_headers) and reported for the info log
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nX.Y: v  \r\nA_b: 1\r\n\xff: 2\r\nX.Z:  \r\nQ\r\n\r\n",
        dict(
            headers=[("Host", "a"), ("Q", "")],
            ignored=[
                'client sent invalid header line: "X.Y: v"',
                'client sent invalid header line: "A_b: 1"',
                'client sent invalid header line: "\udcff: 2"',
                'client sent invalid header line: "X.Z:  "',
            ],
        ),
    ),
    # absolute form: $request_uri is the path part, the host comes from the line
    (
        b"GET http://Ex.COM:80/a/../b?x=%41 HTTP/1.1\r\nHost: z\r\n\r\n",
        dict(
            target="http://Ex.COM:80/a/../b?x=%41",
            request_uri="/a/../b?x=%41",
            uri="/b",
            args="x=%41",
            target_host="ex.com",
        ),
    ),
    (b"GET http://ex.com?x HTTP/1.0\r\n\r\n", dict(request_uri="?x", uri="/", args="x")),
    (b"GET http://ex.com HTTP/1.0\r\n\r\n", dict(request_uri="/", uri="/", target_host="ex.com")),
    (b"GET http://h: HTTP/1.0\r\n\r\n", dict(target_host="h")),
    (b"GET ftp+x.y-z://[::1]:8/p HTTP/1.0\r\n\r\n", dict(target_host="[::1]", uri="/p")),
    (b"GET http://[v1.x!$&'()*+,;=_~]/ HTTP/1.0\r\n\r\n", dict(target_host="[v1.x!$&'()*+,;=_~]")),
    # $uri: decoded and normalised; $args untouched
    (
        b"GET /a%2fb%3F%23c%25?q=%20#frag HTTP/1.0\r\n\r\n",
        dict(uri="/a/b?#c%", args="q=%20", request_uri="/a%2fb%3F%23c%25?q=%20#frag"),
    ),
    (b"GET //a///b/./c/. HTTP/1.0\r\n\r\n", dict(uri="/a/b/c/")),
    (b"GET /a/b/%2e%2e/%2E/c HTTP/1.0\r\n\r\n", dict(uri="/a/c")),
    (b"GET /a#b?c HTTP/1.0\r\n\r\n", dict(uri="/a", args="")),
    (b"GET /a?b#c HTTP/1.0\r\n\r\n", dict(uri="/a", args="b")),
    (b"GET /a?b?c HTTP/1.0\r\n\r\n", dict(uri="/a", args="b?c")),
    (b"GET /\xc3\xa9%C3%A9 HTTP/1.0\r\n\r\n", dict(uri="/éé")),
    (b"GET /a\xffb HTTP/1.0\r\n\r\n", dict(uri="/a\udcffb")),
]


@pytest.mark.parametrize(("raw", "expected"), VALID)
def test_valid_requests(raw: bytes, expected: dict[str, Any]) -> None:
    head = head_of(raw)
    for name, value in expected.items():
        assert getattr(head, name) == value, name
    if "size" not in expected:
        assert head.size == len(raw)


def test_pipelined_request_is_not_consumed() -> None:
    first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    head = head_of(first + b"GET /2 HTTP/1.1\r\n")
    assert head.size == len(first)
    assert head_of(bytearray(first)).size == len(first)


# --------------------------------------------------------------------------------------------
# refused requests


def bad_header(lines: bytes, shown: str) -> tuple[bytes, int, str]:
    """A request whose header lines after Host are refused, quoted up to the bad byte."""
    return (
        b"GET / HTTP/1.1\r\n" + HOST + lines,
        400,
        f'client sent invalid header line: "{shown}..."',
    )


INVALID: list[tuple[bytes, int, str]] = [
    # request line
    (b"get / HTTP/1.1\r\n\r\n", 400, "client sent invalid method"),
    (b"GET\r\n", 400, "client sent invalid method"),
    (b" GET / HTTP/1.0\r\n\r\n", 400, "client sent invalid method"),
    (b"G\x00T / HTTP/1.0\r\n\r\n", 400, "client sent invalid method"),
    (b"GET\t/ HTTP/1.0\r\n\r\n", 400, "client sent invalid method"),
    (b"GET / HTTP/2.0\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/10.1\r\n\r\n", 505, "client sent invalid version"),
    (b"GET / HTTP/0.9\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1000\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / http/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1 x\r\n\r\n", 400, "client sent invalid request"),
    (b"GET / HTTP/1.1\r\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a\tb HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /\x7f HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET * HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"OPTIONS * HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET ?x HTTP/1.0\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http:/a HTTP/1.0\r\n\r\n", 400, "client sent invalid request"),
    (b"GET 1http://a/ HTTP/1.0\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http://h_x/p HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http://a:8x/ HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET http://[::1 HTTP/1.0\r\n\r\n", 400, "client sent invalid request"),
    (b"POST /\r\n", 400, "client sent invalid method in HTTP/0.9 request"),
    (b"HEAD /\r\n", 400, "client sent invalid method in HTTP/0.9 request"),
    # request line host and URI, checked once the line is complete
    (b"GET http:///p HTTP/1.1\r\n\r\n", 400, "client sent invalid host in request line"),
    (b"GET http://a..b/p HTTP/1.1\r\n\r\n", 400, "client sent invalid host in request line"),
    (b"GET /%2e%2e HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /.. HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a/../.. HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET //.. HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a%00 HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a%zz HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a% HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    (b"GET /a%2?b HTTP/1.1\r\n\r\n", 400, "client sent invalid request"),
    # the URI is checked before any header arrives
    (b"GET /.. HTTP/1.1\r\nX Y\r\n", 400, "client sent invalid request"),
    # header lines
    bad_header(b"X Y: v\r\n\r\n", "X\\x20"),
    bad_header(b" X: v\r\n\r\n", "\\x20"),
    bad_header(b"X: v\r\n continued\r\n\r\n", "\\x20"),
    bad_header(b"\tX: v\r\n\r\n", "\\x09"),
    bad_header(b": v\r\n\r\n", "\\x3a"),
    bad_header(b"X: a\rb\r\n\r\n", "X: a\\x0d"),
    bad_header(b"X: a \rb\r\n\r\n", "X: a\\x20"),
    bad_header(b"X: \rb\r\n\r\n", "X: \\x0d"),
    bad_header(b"Xo\rb\r\n\r\n", "Xo\\x0d"),
    bad_header(b"X: a\x00b\r\n\r\n", "X: a\\x00"),
    bad_header(b"X: a \x00\r\n\r\n", "X: a \\x00"),
    bad_header(b"X: a\r\x00\r\n\r\n", "X: a\\x0d"),
    bad_header(b"X\x00: a\r\n\r\n", "X\\x00"),
    bad_header(b"X\x7f: a\r\n\r\n", "X\\x7f"),
    bad_header(b"\r\r\n", "\\x0d"),
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", 400, 'client sent HTTP/1.1 request without "Host" header'),
    (b"GET / HTTP/1.2\r\n\r\n", 400, 'client sent HTTP/1.1 request without "Host" header'),
    (b"GET http://x/ HTTP/1.1\r\n\r\n", 400, 'client sent HTTP/1.1 request without "Host" header'),
    (
        b"GET / HTTP/1.1\r\nhOsT: x\r\nHOST: y\r\n\r\n",
        400,
        'client sent duplicate host header: "HOST: y", previous value: "hOsT: x"',
    ),
    (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.0\r\nHost:   \r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: .\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400, "client sent invalid host header"),
    (b"GET http://x/ HTTP/1.1\r\nHost: y..z\r\n\r\n", 400, "client sent invalid host header"),
    # headers nginx wants once
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        400,
        'client sent duplicate header line: "Content-Length: 1", previous value: '
        '"Content-Length: 1"',
    ),
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: 1\r\nif-none-match: 2\r\n\r\n",
        400,
        'client sent duplicate header line: "if-none-match: 2", previous value: "If-None-Match: 1"',
    ),
    # the first error in the head is the one reported
    (
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX Y\r\n",
        400,
        'client sent duplicate host header: "Host: b", previous value: "Host: a"',
    ),
    # body framing
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 1\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        501,
        'client sent unknown "Transfer-Encoding": "gzip"',
    ),
    (
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        'client sent HTTP/1.0 request with "Transfer-Encoding" header',
    ),
    (b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405, "client sent TRACE method"),
    # mainline parses the authority form and refuses the method (1.22: invalid request)
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405, "client sent CONNECT method"),
    (b"CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
    (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "client sent invalid request"),
]


@pytest.mark.parametrize(("raw", "status", "reason"), INVALID)
def test_invalid_requests(raw: bytes, status: int, reason: str) -> None:
    assert error_of(raw) == (status, reason)


def test_http09_errors_are_answered_without_a_header() -> None:
    with pytest.raises(HttpParseError) as e:
        parse_request_head(b"GET /%zz\r\n")
    assert (e.value.status, e.value.http09, e.value.request_line) == (400, True, "GET /%zz")
    with pytest.raises(HttpParseError) as e:
        parse_request_head(b"get /\r\n")
    assert e.value.http09 is False  # the version was not known yet
    assert e.value.request_line == "get /"


# Request smuggling: each of these must be refused, not read two ways.
SMUGGLING: list[tuple[bytes, int, str]] = [
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        400,
        'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
        'client sent duplicate header line: "Transfer-Encoding: chunked", previous value: '
        '"Transfer-Encoding: chunked"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        501,
        'client sent unknown "Transfer-Encoding": "chunked, chunked"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
        'client sent unknown "Transfer-Encoding": "gzip, chunked"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        400,
        'client sent invalid header line: "Transfer-Encoding\\x20..."',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        400,
        'client sent invalid header line: "\\x20..."',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
        'client sent duplicate header line: "Content-Length: 2", previous value: '
        '"Content-Length: 1"',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
        400,
        'client sent invalid "Content-Length" header',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\rX: y\r\n\r\n",
        400,
        'client sent invalid header line: "Content-Length: 1\\x0d..."',
    ),
    (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa1\r\n\r\n",  # Arabic-Indic one
        400,
        'client sent invalid "Content-Length" header',
    ),
]


@pytest.mark.parametrize(("raw", "status", "reason"), SMUGGLING)
def test_smuggling_attempts_are_refused(raw: bytes, status: int, reason: str) -> None:
    assert error_of(raw) == (status, reason)


def test_case_folding_is_ascii_only() -> None:
    # the Kelvin sign lower-cases to "k" in Unicode, not in nginx
    kelvin = "\u212a".encode()
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUN" + kelvin + b"ED\r\n\r\n"
    assert error_of(raw) == (501, 'client sent unknown "Transfer-Encoding": "CHUN\u212aED"')
    raw = b"GET / HTTP/1.0\r\nConnection: \xe2\x84\xaaeep-alive\r\n\r\n"
    assert request_framing(head_of(raw), None).keepalive is False
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chun" + kelvin + b"ed\r\n\r\n"
    with pytest.raises(UpstreamParseError):
        parse_response_head(raw, 4096)
    assert validate_host("\u212a.example") == "\u212a.example"


def test_underscored_transfer_encoding_is_dropped_not_obeyed() -> None:
    # nginx drops "Transfer_Encoding" (invalid name), so the body is framed by Content-Length
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    head = head_of(raw)
    framing = request_framing(head, None)
    assert (framing.chunked, framing.content_length) == (False, 3)
    assert head.ignored == ['client sent invalid header line: "Transfer_Encoding: chunked"']


# --------------------------------------------------------------------------------------------
# the fast path (a complete head of the common shapes in the first buffer) and the step-wise
# path must decide alike


def outcome(raw: bytes, **kw: Any) -> object:
    try:
        return parse_request_head(raw, **kw)
    except HttpParseError as e:
        return (e.status, e.reason, e.http09, e.request_line)


def stepwise_outcome(raw: bytes, **kw: Any) -> object:
    http1._FAST_PATH = False
    try:
        return outcome(raw, **kw)
    finally:
        http1._FAST_PATH = True


@pytest.mark.parametrize(
    "raw", [r for r, _ in VALID] + [r for r, _, _ in INVALID] + [r for r, _, _ in SMUGGLING]
)
def test_fast_path_agrees_with_stepwise_path(raw: bytes) -> None:
    assert outcome(raw) == stepwise_outcome(raw)


# --------------------------------------------------------------------------------------------
# prefixes: None until the request is complete, and an error as soon as nginx sees one

EVERY_PREFIX = [raw for raw, _ in VALID] + [
    b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 5\r\n"
    b"Connection: keep-alive\r\nX_Y: dropped\r\n\r\n"
]


@pytest.mark.parametrize("raw", EVERY_PREFIX)
def test_every_prefix_of_a_valid_request_needs_more(raw: bytes) -> None:
    full = head_of(raw)
    for i in range(full.size):
        assert parse_request_head(raw[:i]) is None, raw[:i]
    for i in range(full.size, len(raw) + 1):
        assert parse_request_head(raw[:i]) == full


@pytest.mark.parametrize(("raw", "status", "reason"), INVALID)
def test_prefixes_of_an_invalid_request_fail_alike(raw: bytes, status: int, reason: str) -> None:
    """A prefix is still acceptable or fails with the full request's parse error."""
    try:
        head = parse_request_head(raw)
        expected: tuple[int, str] | None = None
    except HttpParseError as e:
        expected = (e.status, e.reason)
    else:
        assert head is not None
    for i in range(len(raw)):
        try:
            parse_request_head(raw[:i])
        except HttpParseError as e:
            assert (e.status, e.reason) == expected, raw[:i]


def test_fail_fast_before_the_line_ends() -> None:
    for partial, reason in [
        (b"GE\x00", "client sent invalid method"),
        (b"GET /a\x01", "client sent invalid request"),
        (b"GET / HTTP/2", "client sent invalid version"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX Y", 'client sent invalid header line: "X\\x20..."'),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX:\x00", 'client sent invalid header line: "X:\\x00..."'),
    ]:
        with pytest.raises(HttpParseError) as e:
            parse_request_head(partial)
        assert e.value.reason == reason
    for partial in [b"GE", b"GET / HTT", b"GET / HTTP/1.1\r\nHost: a\r\nX", b"GET / HTTP/1.1\r"]:
        assert parse_request_head(partial) is None


# --------------------------------------------------------------------------------------------
# nginx's header buffers (client_header_buffer_size 1k, large_client_header_buffers 4 8k)


def request(lines: list[bytes], line: bytes = b"GET / HTTP/1.1", end: bool = True) -> bytes:
    return line + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + (b"\r\n" if end else b"")


def header(i: int, n: int) -> bytes:
    """A header line of n bytes, CRLF included."""
    name = b"X-%d: " % i
    return name + b"a" * (n - len(name) - 2)


def too_long(text: bytes) -> tuple[int, str]:
    return 494, f'client sent too long header line: "{text.decode("latin-1")}..."'


def test_request_line_fits_one_large_buffer() -> None:
    for n, ok in [(1024, True), (8192, True), (8193, False)]:
        line = b"GET /" + b"a" * (n - len(b"GET / HTTP/1.1\r\n")) + b" HTTP/1.1"
        raw = request([b"Host: a"], line)
        if ok:
            assert head_of(raw).size == len(raw)
        else:
            assert error_of(raw) == (414, "client sent too long URI")
    # refused as soon as 8192 bytes of an unfinished line are in, not before
    assert parse_request_head(b"GET /" + b"a" * 8186) is None
    with pytest.raises(HttpParseError) as e:
        parse_request_head(b"GET /" + b"a" * 8187)
    assert (e.value.status, e.value.reason) == (414, "client sent too long URI")
    assert len(e.value.request_line) == 8192


def test_header_line_fits_one_large_buffer() -> None:
    assert head_of(request([b"Host: a", header(1, 8192)]))
    raw = request([b"Host: a", header(1, 8193)])
    assert error_of(raw) == too_long(header(1, 8193)[:1748])
    # parse errors before the limit win, those after it are never seen
    bad = request([b"Host: a", b"X-1: " + b"a" * 8100 + b"\x00"])
    assert error_of(bad)[0] == 400
    bad = request([b"Host: a", b"X-1: " + b"a" * 8300 + b"\x00"])
    assert error_of(bad)[0] == 494


def test_large_buffers_run_out() -> None:
    # each 5000-byte line needs a large buffer of its own once the first one is full
    assert head_of(request([b"Host: a"] + [header(i, 5000) for i in range(4)]))
    raw = request([b"Host: a"] + [header(i, 5000) for i in range(5)])
    # the fifth line is quoted as far as it got into the last buffer (at most 1748 bytes)
    assert error_of(raw) == too_long(header(4, 5000)[:1748])
    raw = request([b"Host: a"] + [header(i, 8000) for i in range(4)] + [b"X-4: " + b"b" * 300])
    assert error_of(raw) == too_long(b"X-4: " + b"b" * (8192 - 8000 - 5))
    # many small headers: 1k + 4 * 8k minus the partial lines moved along
    small = [b"X-%d: %s" % (i, b"v" * 50) for i in range(500)]
    assert head_of(request([b"Host: a"] + small))
    small = [b"X-%d: %s" % (i, b"v" * 50) for i in range(700)]
    assert error_of(request([b"Host: a"] + small))[0] == 494


def test_line_filling_the_last_buffer_is_quoted_with_nginx_nuls() -> None:
    # four 8192-byte lines fill all four large buffers exactly: nginx gives up at once, before
    # any further byte, and quotes the last line as its buffer holds it by then, with NULs
    # written after the name and after the value
    raw = request([b"Host: a"] + [header(i, 8192) for i in range(4)], end=False)
    with pytest.raises(HttpParseError) as e:
        parse_request_head(raw)
    shown = bytearray(header(3, 8192)[:1748])
    shown[3] = 0
    assert (e.value.status, e.value.reason) == too_long(bytes(shown))


def test_quoted_line_after_a_unique_header() -> None:
    # the same, when the line that fills the last buffer is one nginx checks for duplicates
    last = b"If-Match: " + b"a" * (8192 - 12)
    raw = request([b"Host: a"] + [header(i, 8192) for i in range(3)] + [last], end=False)
    with pytest.raises(HttpParseError) as e:
        parse_request_head(raw)
    shown = bytearray(last[:1748])
    shown[8] = 0
    assert (e.value.status, e.value.reason) == too_long(bytes(shown))


def test_too_large_request() -> None:
    # the request line fills the only large buffer: no header line to quote
    raw = request([b"Host: a"], b"GET /" + b"a" * 1008 + b" HTTP/1.1")
    assert error_of(raw, header_buffer_size=512, large_header_buffers=(1, 1024)) == (
        494,
        "client sent too large request",
    )


def test_leading_empty_lines_reuse_the_first_buffer() -> None:
    for k in (1020, 1022, 1024, 1030, 2048, 3000):
        raw = b"\r\n" * (k // 2) + request([b"Host: a", header(1, 8000)])
        assert head_of(raw).size == len(raw)
    assert discardable_prefix(b"\r\n" * 1000 + b"GET") == 1024
    assert discardable_prefix(b"\r\n" * 10 + b"GET") == 0
    assert parse_request_head(b"\r\n" * 100000) is None


def test_small_buffers() -> None:
    kw: dict[str, Any] = dict(header_buffer_size=128, large_header_buffers=(1, 1024))
    assert head_of(request([b"Host: a", header(1, 1022)]), **kw)
    # the final CRLF does not fit any more: nginx quotes the part of it it has
    assert error_of(request([b"Host: a", header(1, 1023)]), **kw) == too_long(b"\r")
    assert error_of(request([b"Host: a", header(1, 1025)]), **kw) == too_long(
        (header(1, 1025) + b"\r\n")[:1024]
    )
    kw = dict(header_buffer_size=2048, large_header_buffers=(3, 1024))
    # a line longer than a large buffer still fits the bigger first buffer
    assert head_of(request([b"Host: a", header(1, 1500)]), **kw)


def test_server_limits_apply_after_host() -> None:
    raw = request([b"Host: big", b"X_Y: 1", header(1, 9000)])
    assert error_of(raw)[0] == 494
    seen: list[str] = []

    def limits(host: str) -> HeaderLimits | None:
        seen.append(host)
        return HeaderLimits((4, 16384), underscores_in_headers=True) if host == "big" else None

    head = head_of(raw, server_limits=limits)
    assert seen == ["big"]
    assert ("X_Y", "1") in head.headers
    head = head_of(request([b"Host: y"], b"GET http://big/ HTTP/1.1"), server_limits=limits)
    assert seen == ["big", "big"]


# --------------------------------------------------------------------------------------------
# settings


def test_underscores_and_invalid_headers_settings() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nA_b: 1\r\n_x: 2\r\nx.y: 3\r\n\r\n"
    head = head_of(raw, underscores_in_headers=True)
    assert head.headers == [("Host", "a"), ("A_b", "1"), ("_x", "2")]
    assert head.ignored == ['client sent invalid header line: "x.y: 3"']
    head = head_of(raw, ignore_invalid_headers=False)
    assert head.headers == [("Host", "a"), ("A_b", "1"), ("_x", "2"), ("x.y", "3")]
    assert head.ignored == []


def test_merge_slashes_off() -> None:
    for target, uri in [
        ("/a//b/./../c", "/a//c"),
        ("//..", "/"),
        ("/a//..", "/a/"),
        ("/a//.", "/a//"),
        ("//a", "//a"),
        ("/a///", "/a///"),
    ]:
        assert split_target(target, merge_slashes=False)[0] == uri
        raw = b"GET %s HTTP/1.0\r\n\r\n" % target.encode()
        assert head_of(raw, merge_slashes=False).uri == uri


# --------------------------------------------------------------------------------------------
# split_target and validate_host


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/", ("/", "", None)),
        ("/a/./b/../c?x#y", ("/a/c", "x", None)),
        ("/%41%2F%2e%2E/x", ("/x", "", None)),
        ("/a/b/%2e%2e%2f%2e%2e", ("/", "", None)),
        ("/a/...", ("/a/...", "", None)),
        ("/a/..b", ("/a/..b", "", None)),
        ("/./", ("/", "", None)),
        ("/.", ("/", "", None)),
        ("/a//../b", ("/b", "", None)),
        ("/a/.//b", ("/a/b", "", None)),
        ("/a?%zz", ("/a", "%zz", None)),
        ("/%23?%23", ("/#", "%23", None)),
        ("/a+b%2b", ("/a+b+", "", None)),
        ("http://H.com:8/p?q", ("/p", "q", "h.com")),
        ("http://A?#x", ("/", "", "a")),
        ("http://a.b.c./p", ("/p", "", "a.b.c")),
    ],
)
def test_split_target(target: str, expected: tuple[str, str, str | None]) -> None:
    assert split_target(target) == expected


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/..", "client sent invalid request"),
        ("/%00?x", "client sent invalid request"),
        ("/a%?b", "client sent invalid request"),
        ("/a%0", "client sent invalid request"),
        ("*", "client sent invalid request"),
        ("", "client sent invalid request"),
        ("/a b", "client sent invalid request"),
        ("http://a..b/", "client sent invalid host in request line"),
    ],
)
def test_split_target_errors(target: str, reason: str) -> None:
    with pytest.raises(HttpParseError) as e:
        split_target(target)
    assert (e.value.status, e.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("a", "a"),
        ("A.Example.COM.:8080", "a.example.com"),
        ("[::1]:80", "[::1]"),
        ("[::1].", "[::1]"),
        ("[a", "[a"),
        ("[a]b", "[a]"),
        (".a", ".a"),
        ("a.", "a"),
        ("a.:80", "a"),
        ("a:b:c", "a"),
        ("a\\b", "a\\b"),
        ("\udcc3\udca9", "é"),  # the same bytes
        ("\udcff", "\udcff"),
        ("é", "é"),
        ("", None),
        ("   ", None),
        ("a..b", None),
        ("a:8..0", None),
        ("a/b", None),
        ("a b", None),
        ("a\x00", None),
        ("a\x7f", None),
        (".", None),
        (":80", None),
    ],
)
def test_validate_host(host: str, expected: str | None) -> None:
    assert validate_host(host) == expected


# --------------------------------------------------------------------------------------------
# request framing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", (None, False, True, False, False, "a")),
        (b"GET / HTTP/1.0\r\n\r\n", (None, False, False, False, False, "")),
        (b"GET /\r\n", (None, False, False, False, False, "")),
        (
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: A.b.:80\r\n\r\n",
            (None, False, True, False, False, "a.b"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-CLOSEx\r\n\r\n",
            (None, False, False, False, False, "a"),
        ),
        # the last Connection header that names close or keep-alive wins
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
            (None, False, True, False, False, "a"),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\nExpect: 100-Continue\r\n\r\n",
            (7, False, True, True, False, "a"),
        ),
        (
            b"POST / HTTP/1.0\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
            (0, False, False, False, False, ""),
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
            (None, True, True, False, False, "a"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: ws\r\n\r\n",
            (None, False, True, False, True, "a"),
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            (None, False, True, False, False, "a"),
        ),
        # the request line's host wins over Host
        (
            b"GET http://X.org/ HTTP/1.1\r\nHost: y\r\n\r\n",
            (None, False, True, False, False, "x.org"),
        ),
    ],
)
def test_request_framing(raw: bytes, expected: tuple[Any, ...]) -> None:
    head = head_of(raw)
    f = request_framing(head, head.target_host)
    assert (f.content_length, f.chunked, f.keepalive, f.expect_continue, f.upgrade, f.host) == (
        expected
    )


def test_request_framing_checks_hand_made_heads() -> None:
    head = RequestHead("GET", "/", (1, 1), [("Host", "a"), ("host", "b")], 0, "GET / HTTP/1.1")
    with pytest.raises(HttpParseError) as e:
        request_framing(head, None)
    assert e.value.reason == (
        'client sent duplicate host header: "host: b", previous value: "Host: a"'
    )


# --------------------------------------------------------------------------------------------
# fuzzing: only HttpParseError, and decisions that never change as bytes arrive

REQUEST_BITS = st.sampled_from(
    [
        b"GET ",
        b"POST ",
        b"/",
        b"/a",
        b"%2e",
        b"%",
        b"?",
        b"#",
        b"..",
        b".",
        b"//",
        b" ",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"http://",
        b"[::1]",
        b":80",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: a",
        b"Host: ",
        b"Content-Length: 1",
        b"Transfer-Encoding: chunked",
        b"X_Y: z",
        b"X: ",
        b":",
        b"\x00",
        b"\t",
        b"\x7f",
        b"\xff",
        b"a",
        b"Z",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.lists(REQUEST_BITS, max_size=30).map(b"".join)))
def test_fuzz_requests(raw: bytes) -> None:
    kw: dict[str, Any] = dict(header_buffer_size=16, large_header_buffers=(3, 48))
    assert outcome(raw, header_buffer_size=4096) == stepwise_outcome(raw, header_buffer_size=4096)
    try:
        head = parse_request_head(raw, **kw)
    except HttpParseError as e:
        assert e.status in (400, 414, 494, 505)
        # the same bytes and more give the same error
        with pytest.raises(HttpParseError) as again:
            parse_request_head(raw + b"\r\n\r\nmore", **kw)
        assert (again.value.status, again.value.reason) == (e.status, e.reason)
        return
    if head is None:
        return
    assert 0 < head.size <= len(raw)
    assert parse_request_head(raw[: head.size], **kw) == head
    assert parse_request_head(raw + b"more", **kw) == head
    assert head.uri.startswith("/")
    try:
        request_framing(head, head.target_host)
    except HttpParseError as e:
        assert e.status in (400, 405, 501)


HEADER_TEXT = st.lists(
    st.sampled_from([b"a", b"Host", b"-", b"_", b".", b":", b" ", b"\t", b"\r", b"\x00", b"\xff"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"get"]),
    st.lists(REQUEST_BITS, max_size=6).map(b"".join),
    st.sampled_from([b" HTTP/1.1\r\n", b" HTTP/1.0\n", b" HTTP/1.1 \r\n"]),
    st.lists(HEADER_TEXT, max_size=6),
)
def test_fuzz_whole_heads(method: bytes, target: bytes, version: bytes, lines: list[bytes]) -> None:
    """Complete heads, so that the fast path gets its share: both paths agree."""
    raw = method + b" /" + target + version + b"".join(x + b"\r\n" for x in lines) + b"\r\n"
    assert outcome(raw) == stepwise_outcome(raw)
    assert outcome(raw, merge_slashes=False) == stepwise_outcome(raw, merge_slashes=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_split_target(raw: bytes) -> None:
    target = "/" + raw.decode("utf-8", "surrogateescape")
    try:
        uri, args, host = split_target(target)
    except HttpParseError as e:
        assert e.status == 400
        return
    assert uri.startswith("/") and host is None
    assert "/./" not in uri and "/../" not in uri and "//" not in uri


# --------------------------------------------------------------------------------------------
# chunked bodies


def decode(data: bytes, **kw: Any) -> tuple[bytes, ChunkedDecoder]:
    d = ChunkedDecoder(**kw)
    return b"".join(d.feed(data)), d


CHUNKED_VALID = [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b'5;ext=1;y="a b"\r\nhello\r\n0;x\r\nTrailer: 1\r\nT2: x\r\n\r\n', b"hello"),
    (b"5 \r\nhello\r\n0\t\r\n\r\n", b"hello"),
    (b"5 anything at all\x00\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", b"0123456789abcdefghij"),
    (b"0000000000000000000000000005\r\nhello\r\n000\r\n\r\n", b"hello"),
    (b"1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n", b"\n\r"),
    (b"0\r\n\r\n", b""),
]


@pytest.mark.parametrize(("wire", "body"), CHUNKED_VALID)
def test_chunked_valid(wire: bytes, body: bytes) -> None:
    out, d = decode(wire + b"NEXT")
    assert out == body
    assert d.done and d.rest == b"NEXT"


@pytest.mark.parametrize(("wire", "body"), CHUNKED_VALID)
def test_chunked_split_anywhere(wire: bytes, body: bytes) -> None:
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            d = ChunkedDecoder()
            out = d.feed(wire[:i]) + d.feed(wire[i:j]) + d.feed(wire[j:] + b"X")
            assert b"".join(out) == body
            assert d.done and d.rest == b"X"


def test_chunked_byte_by_byte_and_after_done() -> None:
    wire = b"3\r\nabc\r\n2;e\r\nde\r\n0\r\nA: b\r\n\r\n"
    d = ChunkedDecoder()
    out = b"".join(piece for b in wire for piece in d.feed(bytes([b])))
    assert out == b"abcde" and d.done and d.rest == b""
    assert d.feed(b"GET / HTTP/1.1") == [] and d.rest == b"GET / HTTP/1.1"


def test_chunked_data_is_not_copied() -> None:
    d = ChunkedDecoder()
    assert d.feed(b"10000\r\n") == []
    block = b"x" * 4096
    assert d.feed(block)[0] is block


@pytest.mark.parametrize(
    "wire",
    [
        b"0x5\r\nhello\r\n",
        b"-5\r\n",
        b"+5\r\n",
        b"\r\n5\r\nhello\r\n",
        b" 5\r\n",
        b";\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\r\r\n",
        b"5\r\nhello\n",  # bare LF: mainline refuses (1.22 took it)
        b"5\nhello\r\n",
        b"5;x\nhello\r\n",
        b"0\r\n\n",
        b"0\r\nX: y\n\r\n",
        b"0\r\n\r\r\n",
        b"5\rhello",
        b"fffffffffffffffffffff\r\n",
        b"7fffffffffffffff\r\n",
        b"800000000000000\r\n",
        b"1000000000000000\r\n",
        b"g\r\n",
    ],
)
def test_chunked_invalid(wire: bytes) -> None:
    d = ChunkedDecoder()
    with pytest.raises(HttpParseError) as e:
        d.feed(wire)
    assert (e.value.status, e.value.reason) == (400, "client sent invalid chunked body")
    with pytest.raises(HttpParseError):
        d.feed(b"0\r\n\r\n")  # a failed decoder stays failed


def test_chunked_huge_sizes() -> None:
    # the largest size nginx takes is 2**59 - 1 (it checks before each further byte)
    d = ChunkedDecoder()
    assert d.feed(b"7ffffffffffffff\r\nabc") == [b"abc"]
    d = ChunkedDecoder()
    assert d.feed(b"7ffffffffffffff") == []  # the 16th digit would go over, not this
    with pytest.raises(HttpParseError):
        d.feed(b"f")
    with pytest.raises(HttpParseError) as e:
        ChunkedDecoder(max_size=1 << 20).feed(b"7ffffffffffffff\r\nx")
    assert e.value.status == 413


def test_chunked_bare_lf_as_nginx_122() -> None:
    out, d = decode(b"5\nhello\n0\n\n", allow_bare_lf=True)
    assert (out, d.done) == (b"hello", True)
    out, d = decode(b"5;x\nhello\r\n0\nT: 1\n\nrest", allow_bare_lf=True)
    assert (out, d.done, d.rest) == (b"hello", True, b"rest")


def test_chunked_max_size() -> None:
    with pytest.raises(HttpParseError) as e:
        decode(b"65\r\n" + b"a" * 101 + b"\r\n0\r\n\r\n", max_size=100)
    assert (e.value.status, e.value.reason) == (
        413,
        "client intended to send too large chunked body: 0+101 bytes",
    )
    d = ChunkedDecoder(max_size=100)
    assert d.feed(b"32\r\n" + b"a" * 50 + b"\r\n") == [b"a" * 50]
    # nginx checks once the first byte of the chunk's data is there
    assert d.feed(b"33\r\n") == []
    with pytest.raises(HttpParseError) as e:
        d.feed(b"a")
    assert e.value.reason == "client intended to send too large chunked body: 50+51 bytes"
    out, d = decode(b"64\r\n" + b"a" * 100 + b"\r\n0\r\n\r\n", max_size=100)
    assert len(out) == 100 and d.done
    out, d = decode(b"64\r\n" + b"a" * 100 + b"\r\n0\r\n\r\n", max_size=0)  # 0: no limit
    assert d.done


def test_chunked_upstream_errors() -> None:
    with pytest.raises(UpstreamParseError) as e:
        ChunkedDecoder(upstream=True).feed(b"x\r\n")
    assert e.value.reason == "upstream sent invalid chunked response"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.data())
def test_chunked_round_trip(pieces: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    d = ChunkedDecoder()
    out: list[bytes] = []
    last = 0
    for c in cuts + [len(wire)]:
        out += d.feed(wire[last:c])
        last = c
    assert b"".join(out) == b"".join(pieces) and d.done


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_chunked(raw: bytes) -> None:
    d = ChunkedDecoder(max_size=50)
    try:
        out = d.feed(raw)
    except HttpParseError as e:
        assert e.status in (400, 413)
        return
    assert sum(map(len, out)) <= len(raw)


def test_encode_chunk() -> None:
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert encode_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"


# --------------------------------------------------------------------------------------------
# upstream response heads


def response_outcome(raw: bytes, max_size: int) -> object:
    try:
        return parse_response_head(raw, max_size)
    except UpstreamParseError as e:
        return e.reason


def response(raw: bytes, max_size: int = 4096) -> ResponseHead:
    head = parse_response_head(raw, max_size)
    assert head is not None, raw
    return head


def test_response_head() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y \r\n\r\nhello"
    head = response(raw)
    assert head == ResponseHead(
        version=(1, 1),
        status=200,
        reason="OK",
        headers=[("Content-Length", "5"), ("X", "y")],
        size=len(raw) - 5,
        status_line="200 OK",
        content_length=5,
    )
    assert response_framing(head, "GET") == (5, False, False)
    assert response_framing(head, "HEAD") == (0, False, False)
    for i in range(head.size):
        assert parse_response_head(raw[:i], 4096) is None


@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        (b"HTTP/1.0 404 Not Found\r\n\r\n", dict(version=(1, 0), connection_close=True)),
        (b"HTTP/1.1 200\r\n\r\n", dict(status_line="200", reason="")),
        (b"HTTP/1.1 299\nA: b\n\n", dict(status=299, headers=[("A", "b")])),
        (b"HTTP/1.1  200 OK\r\n\r\n", dict(status=200)),
        (b"HTTP/2.0 200 OK\r\n\r\n", dict(version=(2, 0))),
        (b"HTTP/1.1 403.1 Forbidden\r\n\r\n", dict(status=403, status_line="403.1 Forbidden")),
        (b"HTTP/1.1 200 Fine Thanks\r\n\r\n", dict(reason="Fine Thanks")),
        # IIS repeats the status line: nginx skips it
        (
            b"HTTP/1.1 200 OK\r\nHTTP/1.1 201 X\r\nFoo\r\nA_b.c: 1\r\n\r\n",
            dict(headers=[("Foo", ""), ("A_b.c", "1")]),
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n", dict(connection_close=True)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", dict(chunked=True)),
    ],
)
def test_response_heads(raw: bytes, fields: dict[str, Any]) -> None:
    head = response(raw)
    for name, value in fields.items():
        assert getattr(head, name) == value, name
    http1._FAST_PATH = False
    try:
        assert response(raw) == head
    finally:
        http1._FAST_PATH = True


@pytest.mark.parametrize(
    "raw",
    [
        b"ICY 200 OK\r\n\r\nbody",
        b"HTTP/1.1 2000 OK\r\n",
        b"HTTP/1.1 200OK\r\n",
        b"HTTP/0.9 200 OK\r\n",
        b"HTTP/1.1000 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\r\n",
        b"<html>",
        b"HTTP/1.1 20x",
    ],
)
def test_response_http09(raw: bytes) -> None:
    head = response(raw)
    assert (head.version, head.status, head.size, head.headers) == ((0, 9), 200, 0, [])
    assert response_framing(head, "GET") == (None, False, True)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nX Y: 1\r\n\r\n", 'upstream sent invalid header: "X\\x20..."'),
        (b"HTTP/1.1 200 OK\r\nX: a\x00\r\n\r\n", 'upstream sent invalid header: "X: a\\x00..."'),
        (b"HTTP/1.1 200 OK\r\nA: " + b"x" * 5000, "upstream sent too big header"),
        (b"HTTP/1.1 200 OK\r\nA: " + b"x" * 4073 + b"\r\n\r\n", "upstream sent too big header"),
        (b"HTTP/1.1 200 O" + b"K" * 5000, "upstream sent too big header"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time',
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time',
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            'upstream sent duplicate header line: "Content-Length: 3", previous value: '
            '"Content-Length: 2"',
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            'upstream sent invalid "Content-Length" header: "Content-Length: x"',
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            'upstream sent unknown "Transfer-Encoding": "gzip"',
        ),
    ],
)
def test_response_errors(raw: bytes, reason: str) -> None:
    assert response_outcome(raw, 4096) == reason
    http1._FAST_PATH = False
    try:
        assert response_outcome(raw, 4096) == reason
    finally:
        http1._FAST_PATH = True


def test_response_head_exactly_max_size() -> None:
    raw = b"HTTP/1.1 200 OK\r\nA: " + b"x" * 100 + b"\r\n\r\n"
    assert response(raw, max_size=len(raw)).size == len(raw)
    with pytest.raises(UpstreamParseError):
        parse_response_head(raw, len(raw) - 1)
    assert parse_response_head(raw[:-1], len(raw)) is None


@pytest.mark.parametrize(
    ("raw", "method", "expected"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "GET", (0, False, False)),
        (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET", (0, False, False)),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "GET", (0, False, False)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", (None, True, False)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "GET", (0, False, False)),
        (b"HTTP/1.1 200 OK\r\n\r\n", "GET", (None, False, True)),
        (b"HTTP/1.1 200 OK\r\n\r\n", "HEAD", (0, False, False)),
    ],
)
def test_response_framing(raw: bytes, method: str, expected: tuple[Any, ...]) -> None:
    assert response_framing(response(raw), method) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(HEADER_TEXT, max_size=6), st.integers(20, 200))
def test_fuzz_response_paths_agree(lines: list[bytes], max_size: int) -> None:
    raw = b"HTTP/1.1 200 OK\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\nbody"
    fast = response_outcome(raw, max_size)
    http1._FAST_PATH = False
    try:
        assert response_outcome(raw, max_size) == fast
    finally:
        http1._FAST_PATH = True


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_response(raw: bytes) -> None:
    try:
        head = parse_response_head(b"HTTP/1.1 200 OK\r\n" + raw, 100)
    except UpstreamParseError:
        return
    if head is not None:
        response_framing(head, "GET")


# --------------------------------------------------------------------------------------------
# status lines


def test_status_lines() -> None:
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(302) == b"HTTP/1.1 302 Moved Temporarily\r\n"
    assert status_line(503) == b"HTTP/1.1 503 Service Temporarily Unavailable\r\n"
    for code in (494, 495, 496, 497):
        assert status_line(code) == b"HTTP/1.1 400 Bad Request\r\n"
    assert status_line(299) == b"HTTP/1.1 299 \r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    assert status_line(42) == b"HTTP/1.1 042 \r\n"
    assert status_line(200, "HTTP/1.0") == b"HTTP/1.0 200 OK\r\n"
    # nginx 1.22's table: every code it sends a text for
    assert sorted(STATUS_REASONS) == [
        200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 402, 403, 404, 405,
        406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 421, 429, 500, 501, 502, 503, 504,
        505, 507,
    ]  # fmt: skip
