"""The request head of an HTTP/2 stream: nginx's checks and texts (h2_request.parse_head),
the Host validation, and the mapping of h2's protocol errors to nginx's codes and texts."""

from __future__ import annotations

import pytest
from h2.errors import ErrorCodes
from h2.exceptions import (
    DenialOfServiceError,
    FlowControlError,
    FrameDataMissingError,
    FrameTooLargeError,
    ProtocolError,
)
from hypothesis import given
from hypothesis import strategies as st

from pyngx.http.h2 import describe_error
from pyngx.http.h2_request import parse_head, validate_host

WHILE = " while reading client request headers"
BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x?a=1"), (b":authority", b"a")]


def head(*extra: tuple[bytes, bytes], base: list[tuple[bytes, bytes]] = BASE, **kw: bool):  # type: ignore[no-untyped-def]
    return parse_head([*base, *extra], **kw)


def test_valid_head_builds_request_line_and_host_field() -> None:
    h = head((b"user-agent", b"t"), (b"accept", b"*/*"))
    assert h.status == 0 and h.error == ""
    assert (h.method, h.path, h.scheme) == ("GET", "/x?a=1", "http")
    assert h.request_line == "GET /x?a=1 HTTP/2.0"
    # :authority is entered as a "host" field where it came, as nginx does.
    assert h.headers == [("host", "a"), ("user-agent", "t"), ("accept", "*/*")]
    assert h.host == "a"
    assert h.content_length is None


def test_cookies_are_joined_at_the_end() -> None:
    h = head((b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2"))
    assert h.headers[-1] == ("cookie", "a=1; b=2")
    assert ("x-y", "z") in h.headers
    assert sum(1 for n, _ in h.headers if n == "cookie") == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([(b"Foo", b"b")], 'client sent invalid header name: "Foo"'),
        ([(b"a b", b"c")], 'client sent invalid header name: "a b"'),
        ([(b"x", b"a\nb")], 'client sent header "x" with invalid value: "a\nb"'),
        (
            [(b"host", b"b")],
            'client sent duplicate host header: "host: b", previous value: "host: a"',
        ),
        ([(b":foo", b"a")], 'client sent unknown pseudo-header ":foo"'),
        ([(b":path", b"/y")], "client sent duplicate :path header"),
        ([(b":method", b"GET")], "client sent duplicate :method header"),
        ([(b":scheme", b"https")], "client sent duplicate :scheme header"),
        (
            [(b"content-length", b"1"), (b"content-length", b"1")],
            'client sent duplicate header line: "content-length: 1", '
            'previous value: "content-length: 1"',
        ),
    ],
)
def test_field_errors_are_400_without_request_line(
    fields: list[tuple[bytes, bytes]], message: str
) -> None:
    h = head(*fields)
    assert h.status == 400
    assert h.error == message + WHILE
    assert h.request_line == ""


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ([(b":scheme", b"http"), (b":path", b"/")], "client sent no :method header"),
        ([(b":method", b"GET"), (b":path", b"/")], "client sent no :scheme header"),
        ([(b":method", b"GET"), (b":scheme", b"http")], "client sent no :path header"),
        ([(b":method", b"get"), (b":scheme", b"http")], 'client sent invalid method: "get"'),
        ([(b":method", b""), (b":path", b"/")], "client sent empty :method header"),
        ([(b":path", b"x")], 'client sent invalid :path header: "x"'),
        ([(b":path", b"")], "client sent empty :path header"),
        ([(b":scheme", b"1http")], 'client sent invalid :scheme header: "1http"'),
    ],
)
def test_pseudo_header_errors(base: list[tuple[bytes, bytes]], message: str) -> None:
    h = parse_head(base)
    assert h.status == 400
    assert h.error == message + WHILE


def test_unknown_methods_of_capitals_are_fine() -> None:
    h = head(
        base=[(b":method", b"FOO_BAR-X"), (b":scheme", b"http"), (b":path", b"/")],
    )
    assert h.error == 'client sent HTTP/1.1 request without "Host" header' + WHILE
    assert h.method == "FOO_BAR-X"
    assert h.request_line == "FOO_BAR-X / HTTP/2.0"


def test_missing_host_is_400_with_request_line() -> None:
    h = parse_head(BASE[:3])
    assert h.status == 400
    assert h.request_line == "GET /x?a=1 HTTP/2.0"
    assert h.error.startswith('client sent HTTP/1.1 request without "Host" header')


def test_host_header_instead_of_authority() -> None:
    h = parse_head([*BASE[:3], (b"host", b"Example.COM.:8080")])
    assert h.status == 0
    assert h.host == "Example.COM.:8080"


def test_invalid_headers_are_ignored_with_a_note() -> None:
    h = head((b"foo.bar", b"1"), (b"ok", b"2"))
    assert h.status == 0
    assert h.headers[-1] == ("ok", "2")
    assert h.notes == ['client sent invalid header: "foo.bar"' + WHILE]
    h = head((b"foo.bar", b"1"), ignore_invalid=False)
    assert ("foo.bar", "1") in h.headers


def test_underscores_follow_the_directive() -> None:
    assert head((b"x_y", b"1")).notes  # ignored by default
    h = head((b"x_y", b"1"), underscores=True)
    assert ("x_y", "1") in h.headers and not h.notes


def test_content_length_and_transfer_encoding() -> None:
    assert head((b"content-length", b"12")).content_length == 12
    h = head((b"content-length", b"12"), ended=True)
    assert (h.status, h.error) == (400, "client prematurely closed stream" + WHILE)
    assert head((b"content-length", b"0"), ended=True).status == 0
    assert head((b"transfer-encoding", b"chunked")).status == 0
    h = head((b"transfer-encoding", b"gzip"))
    assert h.status == 501
    h = head((b"transfer-encoding", b"chunked"), (b"content-length", b"1"))
    assert h.status == 400


def test_size_counts_names_and_values() -> None:
    h = head((b"abc", b"12345"))
    assert h.size == sum(len(n) + len(v) for n, v in BASE) + 8


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com:8080", "example.com"),
        ("[::1]:80", "[::1]"),
        (".a", ".a"),
        ("a..b", None),
        ("a/b", None),
        ("a b", None),
        ("", None),
        (".", None),
        (":80", None),
    ],
)
def test_validate_host(host: str, expected: str | None) -> None:
    assert validate_host(host) == expected


@given(st.text(max_size=40))
def test_validate_host_never_raises(text: str) -> None:
    out = validate_host(text)
    assert out is None or (out == out.lower() and not out.endswith("."))


@given(
    st.lists(st.tuples(st.binary(min_size=0, max_size=12), st.binary(max_size=12)), max_size=12),
    st.booleans(),
)
def test_parse_head_never_raises(fields: list[tuple[bytes, bytes]], ended: bool) -> None:
    h = parse_head(fields, ended=ended)
    assert h.status in (0, 400, 501)
    if h.status == 0:
        assert h.request_line.endswith(" HTTP/2.0")


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (
            ProtocolError("Invalid HTTP/2 preamble."),
            ErrorCodes.PROTOCOL_ERROR,
            "invalid connection preface",
        ),
        (
            FlowControlError("May not increment flow control window past 2147483647"),
            ErrorCodes.FLOW_CONTROL_ERROR,
            "client violated connection flow control: "
            "received WINDOW_UPDATE frame with window increment not allowed",
        ),
        (DenialOfServiceError("x"), ErrorCodes.ENHANCE_YOUR_CALM, "client sent too large header"),
        (FrameTooLargeError("x"), ErrorCodes.FRAME_SIZE_ERROR, "client sent too large frame"),
        (
            FrameDataMissingError("x"),
            ErrorCodes.FRAME_SIZE_ERROR,
            "client sent frame with incorrect length",
        ),
        (
            ProtocolError(
                "Received frame with invalid header: Stream ID must be non-zero for DataFrame"
            ),
            ErrorCodes.PROTOCOL_ERROR,
            "client sent DATA frame with incorrect identifier",
        ),
        (
            ProtocolError("Error decoding header block: x"),
            ErrorCodes.COMPRESSION_ERROR,
            "client sent invalid encoded header field",
        ),
        (
            ProtocolError("Invalid frame during header block."),
            ErrorCodes.PROTOCOL_ERROR,
            "client sent inappropriate frame while CONTINUATION was expected",
        ),
        (
            ProtocolError("Received pushed stream"),
            ErrorCodes.PROTOCOL_ERROR,
            "client sent PUSH_PROMISE frame",
        ),
    ],
)
def test_describe_error(exc: ProtocolError, code: int, text: str) -> None:
    assert describe_error(exc) == (code, text)
