"""The http proxy's pure parts: response heads, chunked bodies, URIs, headers, the cache."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyngx.conf.variables import VariableTable
from pyngx.http.proxy import (
    DEFAULT_HEADERS,
    _header_plan,
    escape_uri,
    upstream_uri,
)
from pyngx.http.proxy_headers import A_CL, A_CT, A_HIDE, A_REWRITE, A_XAR, header_actions
from pyngx.http.proxy_response import (
    BadHead,
    ChunkedDecoder,
    ChunkedError,
    RedirectRule,
    parse_head,
    refresh_prefix,
    rewrite_redirect,
    set_cookie_value,
)
from pyngx.http.upstream_groups import ProxyUrlError, parse_proxy_url
from pyngx.http.upstream_pool import KeepalivePool, UpstreamConn

# -- response heads ---------------------------------------------------------------------------


def test_parse_head_common() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nX-Sp:   v  \r\n"
        b"Connection: keep-alive\r\n\r\nhello"
    )
    head = parse_head(data, 4096)
    assert head is not None
    assert (head.status, head.status_line, head.size) == (200, "200 OK", len(data) - 5)
    assert head.close is False
    assert head.pairs() == [
        ("Server", "x"),
        ("Content-Length", "5"),
        ("X-Sp", "v"),
        ("Connection", "keep-alive"),
    ]
    head.framing()
    assert head.content_length == 5 and not head.chunked


@pytest.mark.parametrize(
    ("data", "status_line", "close", "lines"),
    [
        (b"HTTP/1.1 200\r\n\r\n", "200", False, []),
        (b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n", "404 Not Found", True, ["A: b"]),
        (b"HTTP/1.1 299 Fine Thanks\r\n\r\n", "299 Fine Thanks", False, []),
        (b"HTTP/1.1 200 OK\nA: 1\nB: 2\n\nbody", "200 OK", False, ["A: 1", "B: 2"]),
        (b"HTTP/1.1 200 OK\r\nHTTP/1.1 200 OK\r\nA: 1\r\n\r\n", "200 OK", False, ["A: 1"]),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "200 OK", False, ["NoColon"]),
        (b"HTTP/1.1 200 OK\r\nA:\tb\r\n\r\n", "200 OK", False, ["A:\tb"]),
        (b"HTTP/2.0 200 OK\r\n\r\n", "200 OK", False, []),
    ],
)
def test_parse_head_variants(data: bytes, status_line: str, close: bool, lines: list[str]) -> None:
    head = parse_head(data, 4096)
    assert head is not None
    assert (head.status_line, head.close, head.lines) == (status_line, close, lines)


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b"garbage\r\n\r\n", "09", "upstream sent no valid HTTP/1.0 header"),
        (b"HTTP/1.1 abc\r\n\r\n", "09", "upstream sent no valid HTTP/1.0 header"),
        (b"HTTP/1.1 2000 X\r\n\r\n", "09", "upstream sent no valid HTTP/1.0 header"),
        (
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "invalid",
            'upstream sent invalid header: "Bad\\x20..."',
        ),
        (
            b"HTTP/1.1 200 OK\r\nA\x01: x\r\n\r\n",
            "invalid",
            'upstream sent invalid header: "A\\x01..."',
        ),
        (
            b"HTTP/1.1 200 OK\r\nA: x\x00y\r\n\r\n",
            "invalid",
            'upstream sent invalid header: "A: x\\x00..."',
        ),
        (
            b"HTTP/1.1 200 OK\r\nX: " + b"y" * 5000 + b"\r\n\r\n",
            "big",
            "upstream sent too big header",
        ),
    ],
)
def test_parse_head_errors(data: bytes, kind: str, message: str) -> None:
    with pytest.raises(BadHead) as info:
        parse_head(data, 4096)
    assert (info.value.kind, info.value.message) == (kind, message)


def test_parse_head_incomplete_and_too_big() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n", 4096) is None
    assert parse_head(b"HTT", 4096) is None
    with pytest.raises(BadHead):
        parse_head(b"HTTP/1.1 200 OK\r\nA: " + b"b" * 100, 64)
    with pytest.raises(BadHead):
        parse_head(b"no http here", 4096)


def test_framing_rules_of_1_22() -> None:
    head = parse_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: gzip, Chunked\r\nConnection: Keep-Alive, close\r\n"
        b"X-Accel-Redirect: /x\r\nX-Accel-Buffering: No\r\n\r\n",
        4096,
    )
    assert head is not None
    head.framing()
    assert head.chunked and head.content_length is None and head.close
    assert head.accel_redirect == "/x" and head.accel_buffering == "no"


# -- chunked bodies ------------------------------------------------------------------------------


def encode_chunks(pieces: list[bytes], ext: bool, trailer: bool) -> bytes:
    out = bytearray()
    for p in pieces:
        out += b"%x" % len(p) + (b";name=value" if ext else b"") + b"\r\n" + p + b"\r\n"
    out += b"0\r\n" + (b"X-Trailer: 1\r\n" if trailer else b"") + b"\r\n"
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=40),
    ext=st.booleans(),
    trailer=st.booleans(),
    extra=st.binary(max_size=20),
)
def test_chunked_decoder_any_split(
    pieces: list[bytes], cuts: list[int], ext: bool, trailer: bool, extra: bytes
) -> None:
    data = encode_chunks(pieces, ext, trailer) + extra
    decoder = ChunkedDecoder()
    out = bytearray()
    pos = 0
    for cut in [*cuts, len(data)]:
        if decoder.done:
            break
        part = data[pos : pos + cut]
        pos += len(part)
        for piece in decoder.feed(part):
            out += piece
        if pos >= len(data):
            break
    assert decoder.done
    assert bytes(out) == b"".join(pieces)
    assert decoder.extra + data[pos:] == extra


@pytest.mark.parametrize("bad", [b"zz\r\n", b"5\r\nhelloXX", b"-1\r\n", b"1" * 17 + b"\r\n"])
def test_chunked_decoder_rejects(bad: bytes) -> None:
    with pytest.raises(ChunkedError):
        ChunkedDecoder().feed(bad)


# -- URIs -------------------------------------------------------------------------------------


def test_escape_uri() -> None:
    assert escape_uri(b"/a b#c%d?e") == b"/a%20b%23c%25d%3Fe"
    assert escape_uri(b"/caf\xc3\xa9~+&=;:@") == b"/caf%C3%A9~+&=;:@"
    assert escape_uri(b"/\x00\x1f\x7f") == b"/%00%1F%7F"
    assert escape_uri(b"/plain") == b"/plain"


@given(st.binary(max_size=100))
def test_escape_uri_round_trip(data: bytes) -> None:
    from urllib.parse import unquote_to_bytes

    escaped = escape_uri(data)
    assert unquote_to_bytes(escaped) == data
    assert all(0x21 <= b < 0x7F and b not in b"#?" for b in escaped)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://127.0.0.1:8080", ("127.0.0.1", 8080, "", "127.0.0.1:8080", "8080", False)),
        ("http://b", ("b", None, "", "b", "80", False)),
        ("http://b:80/x/", ("b", 80, "/x/", "b", "80", False)),
        ("https://b", ("b", None, "", "b", "443", True)),
        ("https://b:8443/p?q", ("b", 8443, "/p?q", "b:8443", "8443", True)),
        ("HTTP://B:81", ("B", 81, "", "B:81", "81", False)),
        ("http://[::1]:9000/z", ("[::1]", 9000, "/z", "[::1]:9000", "9000", False)),
        ("http://unix:/tmp/s.sock", ("unix:/tmp/s.sock", None, "", "localhost", "", False)),
        ("http://unix:/tmp/s.sock:/u/", ("unix:/tmp/s.sock", None, "/u/", "localhost", "", False)),
        ("http://b?x", ("b", None, "?x", "b", "80", False)),
    ],
)
def test_parse_proxy_url(text: str, expected: tuple[Any, ...]) -> None:
    u = parse_proxy_url(text)
    assert (u.host, u.port, u.uri, u.host_header, u.port_text, u.ssl) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://x", "invalid URL prefix"),
        ("unix:/x", "invalid URL prefix"),
        ("http://", 'no host in upstream ""'),
        ("http://b:99999", 'invalid port in upstream "b:99999"'),
        ("http://b:0/x", 'invalid port in upstream "b:0/x"'),
    ],
)
def test_parse_proxy_url_errors(text: str, message: str) -> None:
    with pytest.raises(ProxyUrlError) as info:
        parse_proxy_url(text)
    assert str(info.value) == message


def fake_request(**kw: Any) -> Any:
    base = dict(
        uri="/a/b c",
        args="",
        request_uri="/a/b%20c",
        internal=False,
        valid_location=True,
        valid_unparsed_uri=True,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def conf(location: str) -> Any:
    return SimpleNamespace(location=location)


@pytest.mark.parametrize(
    ("req", "location", "part", "variables", "expected"),
    [
        ({}, "/", "", False, "/a/b%20c"),
        ({"request_uri": "/a/../b//c?x"}, "/", "", False, "/a/../b//c?x"),
        ({"request_uri": "http://h:1/p?q"}, "/", "", False, "/p?q"),
        ({"request_uri": "http://h"}, "/", "", False, "/"),
        ({}, "/a/", "/x/", False, "/x/b%20c"),
        ({"args": "k=v"}, "/a/", "/x/", False, "/x/b%20c?k=v"),
        ({"uri": "/a/b", "request_uri": "/a/b"}, "/a/", "/x/", False, "/x/b"),
        ({"uri": "/a/b c", "request_uri": "/a/b c"}, "/a/", "/x/", False, "/x/b c"),
        ({"internal": True, "uri": "/a/b c", "request_uri": "/z"}, "/a/", "/", False, "/b%20c"),
        (
            {"valid_location": False, "valid_unparsed_uri": False, "uri": "/new"},
            "/a/",
            "/x/",
            False,
            "/new",
        ),
        (
            {"valid_unparsed_uri": False, "uri": "/a/é", "request_uri": "/a/é", "args": "q"},
            "/",
            "",
            False,
            "/a/é?q",
        ),
        ({"valid_unparsed_uri": False, "internal": True, "uri": "/é"}, "/", "", False, "/%C3%A9"),
        ({}, "/a/", "/fixed?v", True, "/fixed?v"),
        ({}, "", "", True, "/a/b%20c"),
    ],
)
def test_upstream_uri(
    req: dict[str, Any], location: str, part: str, variables: bool, expected: str
) -> None:
    assert upstream_uri(fake_request(**req), conf(location), part, variables) == expected


# -- request and response header tables ------------------------------------------------------


def test_header_plan_merges_like_nginx() -> None:
    table = VariableTable()
    table.add("remote_addr", lambda r: "1.2.3.4")
    target = SimpleNamespace(host_header="b:81", port_text="81")
    plan, skip = _header_plan(
        [("X-Real-IP", "$remote_addr"), ("host", "h.example"), ("Accept", "")],
        table,
        target,  # type: ignore[arg-type]
    )
    # The configured ones first (empty value: removed, but not passed from the client either),
    # then nginx's defaults that were not overridden (Host was, case-insensitively).
    names = [item[1] if isinstance(item, tuple) else item for item in plan]
    assert names[0] == "X-Real-IP"
    assert names[1].startswith("host: h.example\r\nConnection: close\r\n")
    assert skip == {n.lower() for n, _ in DEFAULT_HEADERS} | {"x-real-ip", "accept"}


def test_proxy_host_folded_into_constants() -> None:
    target = SimpleNamespace(host_header="b:81", port_text="81")
    plan, _ = _header_plan([("X-P", "$proxy_host|$proxy_port")], VariableTable(), target)  # type: ignore[arg-type]
    assert plan[0].startswith("X-P: b:81|81\r\nHost: b:81\r\n")


def test_header_actions() -> None:
    hide = frozenset({"date", "server", "x-accel-redirect", "x-secret"})
    actions = header_actions(hide, redirects=True, cookies=False)
    assert actions["content-length"] == A_CL and actions["keep-alive"] == A_HIDE
    assert actions["x-secret"] == A_HIDE and actions["x-accel-redirect"] == A_XAR
    assert actions["content-type"] == A_CT and actions["location"] == A_REWRITE
    assert "set-cookie" not in actions
    actions = header_actions(hide | {"content-type", "location"}, redirects=True, cookies=True)
    assert actions["content-type"] == A_HIDE and actions["location"] == A_HIDE
    assert actions["set-cookie"] == A_REWRITE


def test_redirect_rules() -> None:
    import re

    def const(text: str) -> Any:
        return lambda r: text

    prefix = RedirectRule(const("http://up/x/"), None, lambda r, m: "/new/")
    regex = RedirectRule(None, re.compile(r"^http://up/(\w+)$"), lambda r, m: f"/r/{m.group(1)}")
    rules = [prefix, regex]
    assert rewrite_redirect(rules, None, "http://up/x/y?z", 0) == "/new/y?z"
    assert rewrite_redirect(rules, None, "http://up/abc", 0) == "/r/abc"
    assert rewrite_redirect(rules, None, "http://UP/x/y", 0) is None
    value = "5; url=http://up/x/next"
    at = refresh_prefix(value)
    assert rewrite_redirect(rules, None, value, at) == "5; url=/new/next"
    assert refresh_prefix("5") == -1


def test_set_cookie_value() -> None:
    headers = [("Set-Cookie", "a=1; Path=/"), ("X", "b=0"), ("set-cookie", " b = 2 ")]
    assert set_cookie_value(headers, "a") == "1"
    assert set_cookie_value(headers, "b") == "2"
    assert set_cookie_value(headers, "c") is None


# -- the keepalive cache -----------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, *args: Any) -> None:
        pass


def test_keepalive_pool_lru_and_limits() -> None:
    loop = asyncio.new_event_loop()
    try:
        pool = KeepalivePool(2, 3, 60.0, 3600.0)

        def conn(key: str) -> UpstreamConn:
            c = UpstreamConn(loop, key)
            c.connection_made(FakeTransport())  # type: ignore[arg-type]
            return c

        a1, a2, b1 = conn("a"), conn("a"), conn("b")
        assert pool.put(a1) and pool.put(a2)
        assert pool.put(b1)  # over the limit: the least recently cached (a1) goes...
        assert not a1.closed
        loop.run_until_complete(asyncio.sleep(0))  # ...at the end of the loop's round
        assert a1.closed and not a2.closed
        assert pool.get("a") is a2
        assert pool.get("a") is None
        assert pool.get("b") is b1
        worn = conn("a")
        worn.requests = 3  # keepalive_requests reached
        assert not pool.put(worn)
        idle = conn("c")
        assert pool.put(idle)
        idle.data_received(b"unexpected")  # an idle connection that speaks is closed
        assert idle.closed and pool.get("c") is None
        gone = conn("d")
        assert pool.put(gone)
        gone.connection_lost(None)
        assert pool.get("d") is None
    finally:
        loop.close()


def test_keepalive_pool_surplus_serves_the_same_round() -> None:
    """Connections given back over the limit are still there for the requests read in the
    same round of the event loop; only what is left over at its end is closed."""
    loop = asyncio.new_event_loop()
    try:
        pool = KeepalivePool(1, 100, 60.0, 3600.0)
        conns = []
        for _ in range(3):
            c = UpstreamConn(loop, "a")
            c.connection_made(FakeTransport())  # type: ignore[arg-type]
            conns.append(c)
            assert pool.put(c)
        taken = pool.get("a"), pool.get("a")
        assert taken == (conns[2], conns[1])
        loop.run_until_complete(asyncio.sleep(0))
        assert not any(c.closed for c in conns)
        assert pool.get("a") is conns[0]
        # Given back again, three over a limit of one: the two least recent are closed.
        for c in conns:
            assert pool.put(c)
        loop.run_until_complete(asyncio.sleep(0))
        assert [c.closed for c in conns] == [True, True, False]
        assert len(pool.lru) == 1
    finally:
        loop.close()


def test_auto_redirect_and_content_handler(tmp_path: Any) -> None:
    from pyngx.core.cycle import load_cycle
    from pyngx.core.paths import Paths
    from pyngx.http import proxy

    conf = tmp_path / "p.conf"
    conf.write_text(
        "error_log stderr;\nevents {}\nhttp { access_log off; server { listen 127.0.0.1:1;\n"
        "  location /a/ { proxy_pass http://127.0.0.1:2; }\n"
        "  location /b { proxy_pass http://127.0.0.1:2; }\n"
        "  location = /c/ { proxy_pass http://127.0.0.1:2; }\n"
        "  location ~ /d/ { proxy_pass http://127.0.0.1:2; }\n"
        "  location /e/ { root /tmp; }\n"
        "  location /f/ { proxy_pass http://127.0.0.1:2; location /f/g/ { } }\n"
        "} }\n"
    )
    cycle = load_cycle(Paths(str(tmp_path) + "/", str(conf)))
    from pyngx.http.locations import REDIRECT_SLASH
    from pyngx.http.static import serve

    tree = cycle.http.servers[0].locations

    def conf(uri: str) -> Any:
        found = tree.find(uri)
        return None if found is None else found[0]

    # nginx's auto_redirect: a proxied prefix ending in "/" answers its bare name with a 301.
    assert conf("/a") is REDIRECT_SLASH
    assert conf("/c") is REDIRECT_SLASH
    assert conf("/b") is not REDIRECT_SLASH and conf("/b").content is proxy.handler
    assert conf("/e") is None  # no auto_redirect without proxy_pass
    assert conf("/f/g") is conf("/f/x")  # the nested /f/g/ has no proxy_pass of its own
    assert conf("/a/x").content is proxy.handler
    assert conf("/e/x").content is serve
    assert conf("/f/g/x").content is serve
    cycle.files.close()
