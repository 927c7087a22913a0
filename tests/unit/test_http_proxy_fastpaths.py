"""The proxy's per-request shortcuts give what the full paths give (pyngx/http/proxy_*.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from pyngx.http.proxy_headers import copy_headers, header_actions
from pyngx.http.proxy_response import parse_head
from pyngx.http.request import ResponseHead

HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 3\r\nX-A: 1\r\nConnection: close\r\n\r\n"
)


def _copy(head_bytes: bytes, actions: dict[str, int], **conf: Any) -> tuple[Any, Any, Any]:
    head = parse_head(head_bytes + b"abc", 4096)
    assert head is not None
    settings = {"pass_server": False, "pass_date": False, "ignore_accel_buffering": False}
    settings.update(conf)
    c = SimpleNamespace(actions=actions, redirects=None, cookie_rewrite=None, **settings)
    r = SimpleNamespace(out=ResponseHead(), status=0, loc=None)
    ex = SimpleNamespace(r=r, conf=c, buffering=True)
    copy_headers(ex, head)
    return head, r, ex


def test_parse_head_cached_is_fresh_and_equal() -> None:
    a = parse_head(HEAD + b"abc", 4096)
    b = parse_head(HEAD, 4096)
    assert a is not None and b is not None and a is not b
    for h in (a, b):
        assert (h.status, h.status_line, h.size, h.close) == (200, "200 OK", len(HEAD), False)
        assert h.lines == a.lines and h.content_length is None and not h.chunked
    old = HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")
    c = parse_head(old, 4096)
    assert c is not None and c.close
    # The size limit is checked before the cache.
    try:
        parse_head(HEAD, 20)
    except Exception as exc:  # BadHead
        assert "too big" in str(exc)
    else:
        raise AssertionError("no BadHead")


def test_copy_headers_cached_copy_is_the_same() -> None:
    actions = header_actions(frozenset(("date", "server")), False, False)
    results = [_copy(HEAD, actions) for _ in range(3)]
    for head, r, _ex in results:
        assert r.status == 200
        assert r.out.headers == [("X-A", "1")]
        assert r.out.content_type == "text/plain"
        assert r.out.content_length == 3 and head.content_length == 3
        assert head.close and not head.chunked
    # Another location (other actions) gets its own copy.
    other = header_actions(frozenset(("date",)), False, False)
    _head, r, _ex = _copy(HEAD, other)
    assert r.out.headers == [("Server", "up"), ("X-A", "1")]
    # The cached copy appends to headers already there (kept across redirects).
    head = parse_head(HEAD, 4096)
    assert head is not None
    c = SimpleNamespace(
        actions=actions,
        redirects=None,
        cookie_rewrite=None,
        pass_server=True,
        pass_date=False,
        ignore_accel_buffering=False,
    )
    r2 = SimpleNamespace(out=ResponseHead(), status=0, loc=None)
    r2.out.headers.append(("WWW-Authenticate", "x"))
    copy_headers(SimpleNamespace(r=r2, conf=c, buffering=True), head)
    assert r2.out.headers == [("WWW-Authenticate", "x"), ("X-A", "1")] and r2.out.no_server


def test_copy_without_content_type_does_not_cache_the_previous_one() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Accel-Buffering: no\r\n\r\n"
    actions = header_actions(frozenset(), False, False)
    for _ in range(2):
        head = parse_head(raw, 4096)
        assert head is not None
        c = SimpleNamespace(
            actions=actions,
            redirects=None,
            cookie_rewrite=None,
            pass_server=False,
            pass_date=False,
            ignore_accel_buffering=False,
        )
        r = SimpleNamespace(out=ResponseHead(), status=0, loc=None)
        r.out.content_type = "earlier/type"
        ex = SimpleNamespace(r=r, conf=c, buffering=True)
        copy_headers(ex, head)
        assert r.out.content_type == "earlier/type"
        assert head.accel_buffering == "no" and ex.buffering is False
        assert r.out.headers == [("X-Accel-Buffering", "no")]


def test_rewritten_headers_are_not_cached() -> None:
    raw = b"HTTP/1.1 302 Found\r\nLocation: http://up/x\r\nContent-Length: 0\r\n\r\n"
    actions = header_actions(frozenset(), True, False)
    seen = []
    for _n in range(2):
        head = parse_head(raw, 4096)
        assert head is not None
        c = SimpleNamespace(
            actions=actions,
            redirects=[],
            cookie_rewrite=None,
            pass_server=False,
            pass_date=False,
            ignore_accel_buffering=False,
        )
        r = SimpleNamespace(out=ResponseHead(), status=0, loc=SimpleNamespace())
        copy_headers(SimpleNamespace(r=r, conf=c, buffering=True), head)
        seen.append(r.out.headers)
        assert not head.copies
    assert seen[0] == seen[1] == [("Location", "http://up/x")]


def _proxy_confs(tmp_path: Any, body: str) -> tuple[Any, Any]:
    from pyngx.core.cycle import load_cycle
    from pyngx.core.paths import Paths

    conf = tmp_path / "p.conf"
    conf.write_text(
        "error_log stderr;\nevents {}\nhttp { access_log off; server { listen 127.0.0.1:1;\n"
        + body
        + "} }\n"
    )
    cycle = load_cycle(Paths(str(tmp_path) + "/", str(conf)))
    srv = cycle.http.servers[0]
    return cycle, srv


def test_build_head_cached_equals_built(tmp_path: Any) -> None:
    from pyngx.http.proxy_request import _build_head, build_head

    cycle, srv = _proxy_confs(
        tmp_path,
        '  location /a { proxy_pass http://127.0.0.1:2; proxy_set_header X-U "$uri"; }\n'
        '  location /b { proxy_pass http://127.0.0.1:2; proxy_set_header Connection ""; }\n',
    )
    try:
        hl = [("Host", "x"), ("User-Agent", "t"), ("Connection", "close")]
        for path, uri in (("/a", "/a/1"), ("/b", "/b/1"), ("/b", "/b/2")):
            conf = srv.locations.find(path)[0].proxy
            for extra in (None, {}, {"proxy_body_length": 3}, {"proxy_chunked": True}):
                r = SimpleNamespace(extra=extra, header_list=hl, uri=uri, args="", variables={})
                first = build_head(r, conf, "GET", uri)
                again = build_head(r, conf, "GET", uri)
                assert first == again == _build_head(r, conf, "GET", uri)
                if extra:
                    assert (b"Content-Length: 3\r\n" in first) or (
                        b"Transfer-Encoding: chunked\r\n" in first
                    )
            # Another list with other contents is not confused with the cached one.
            other = [("Host", "x"), ("X-Other", "1")]
            r = SimpleNamespace(extra=None, header_list=other, uri=uri, args="", variables={})
            assert b"X-Other: 1\r\n" in build_head(r, conf, "GET", uri)
            assert build_head(r, conf, "POST", uri).startswith(b"POST ")
    finally:
        cycle.files.close()
