"""The pure static-file pieces checked against Debian's nginx byte for byte.

One nginx serves a tmp directory with files of known mtimes; each test asks it something and
compares the answer with what pyngx's functions decide or produce for the same input: error
pages (via `return NNN;`), status lines, autoindex in every format, ETag/Last-Modified, a table
of Range requests and a table of conditional requests. nginx's server_tokens is off, so the
pages carry no version (the one `server_tokens on` location has its version swapped for ours).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyngx import NGINX_COMPAT_VERSION
from pyngx.http import autoindex
from pyngx.http.conditional import make_etag, not_modified, stat_mtime
from pyngx.http.httpdate import http_date
from pyngx.http.ranges import accept_ranges, multipart_parts, plan_ranges
from pyngx.http.special_response import error_page_body, status_line
from tests.harness import (
    REPO_ROOT,
    Nginx,
    client,
    free_port,
    nginx_available,
    nginx_conf,
    recv_all,
)

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(not nginx_available(), reason="needs Debian's nginx"),
]

MIME_TYPES = REPO_ROOT / "pyngx" / "data" / "mime.types"
MTIME = 1700000000  # Tue, 14 Nov 2023 22:13:20 GMT
DIR_MTIME = 1600000000
LOCAL_OFFSET = 5 * 3600 + 30 * 60  # nginx runs with TZ=PYN-5:30
BODY = bytes(range(48, 58)) * 100  # f.txt: 1000 bytes "0123456789..."

# Statuses with a page, and some without (nginx sends those with an empty body).
PAGE_CODES = [301, 302, 303, 307, 308, 400, 401, 402, 403, 404, 405, 406, 409, 410, 411, 412,
              413, 414, 415, 416, 421, 429, 494, 495, 496, 497, 498, 500, 501, 502, 503, 504,
              505, 507]  # fmt: skip
NO_PAGE_CODES = [407, 417, 418, 422, 426, 430, 451, 506, 508, 599, 600, 999]
# Statuses below 300 and 304 are not special responses; their status lines still count.
PLAIN_CODES = [200, 201, 202, 203, 204, 205, 206, 207, 300, 304, 305, 306, 309]


# --------------------------------------------------------------------------------------------
# the document root


def _touch(
    path: Path | bytes, data: bytes = b"", mtime: int = MTIME, size: int | None = None
) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if size is not None:
            f.truncate(size)
    os.utime(path, (mtime, mtime))


def _make_root(root: Path) -> None:
    root.mkdir()
    _touch(root / "f.txt", BODY)
    _touch(root / "empty.txt")
    auto = root / "auto"
    auto.mkdir()
    names = [
        "plain.txt",
        "a b.txt",
        "ü-umlaut-é.txt",
        "x" * 49,
        "y" * 50,
        "z" * 51,
        "ü" * 49,
        "ü" * 50,
        "ü" * 51,
        "&<>\"'.html",
        "q" * 47 + "&<>",
        "&" * 60,
        "colon:x",
        "tab\tname",
        "new\nline",
        "!$'()*+,;=@[]^`{|}~",
        "é" * 30 + "&" * 30,
        "日本語のファイル名.txt",
        ".hidden",
    ]
    for i, name in enumerate(names):
        _touch(auto / name, b"x" * i, mtime=MTIME + 3600 * i + 59)
    _touch(os.fsencode(auto) + b"/bad\xff\xfename", b"!")
    for size in (0, 9999, 10000, 10751, 10752, 1048575, 1048576, 1572863, 1572864,
                 2**30 - 1, 2**30 + 2**29, 5 * 2**30):  # fmt: skip
        _touch(auto / f"size{size}", size=size)
    for name in ("sub", "d" * 50, "e" * 49, "é" * 50, "dir & <b>", ".hiddendir"):
        (auto / name).mkdir()
    _touch(auto / "dir & <b>" / "inner.txt", b"in")
    os.symlink("plain.txt", auto / "link-to-file")
    os.symlink("sub", auto / "link-to-dir")
    os.symlink("nowhere", auto / "dangling")
    for name in ("sub", "d" * 50, "e" * 49, "é" * 50, "dir & <b>", ".hiddendir"):
        os.utime(auto / name, (DIR_MTIME, DIR_MTIME))


def _conf(port: int, root: Path) -> str:
    auto = root / "auto"
    returns = "".join(
        f"        location = /r{code} {{ return {code}; }}\n"
        for code in PAGE_CODES + NO_PAGE_CODES + PLAIN_CODES
    )
    return f"""
http {{
    include {MIME_TYPES};
    default_type application/octet-stream;
    server_tokens off;
    access_log off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
{returns}
        location = /tokens-on {{ server_tokens on; return 404; }}
        location = /no-lm {{ return 200 "text"; }}
        location /auto/ {{ autoindex on; }}
        location /autou/ {{ alias {auto}/; autoindex on; charset utf-8; }}
        location /autoh/ {{ alias {auto}/; autoindex on; autoindex_exact_size off; }}
        location /autoj/ {{ alias {auto}/; autoindex on; autoindex_format json; }}
        location /autop/ {{ alias {auto}/; autoindex on; autoindex_format jsonp; }}
        location /autox/ {{ alias {auto}/; autoindex on; autoindex_format xml; }}
        location /autol/ {{ alias {auto}/; autoindex on; autoindex_localtime on; }}
        location /noetag/ {{ alias {root}/; etag off; }}
        location /before/ {{ alias {root}/; if_modified_since before; }}
        location /imsoff/ {{ alias {root}/; if_modified_since off; }}
        location /max2/ {{ alias {root}/; max_ranges 2; }}
        location /max0/ {{ alias {root}/; max_ranges 0; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("static")
    root = tmp / "www"
    _make_root(root)
    port = free_port()
    prefix = Nginx.prefix_dir(tmp)
    server = Nginx(tmp, nginx_conf(_conf(port, root), prefix=prefix))
    # A fixed UTC offset without DST (POSIX TZ: local = UTC + 5:30) for autoindex_localtime.
    server.env = {**os.environ, "TZ": "PYN-5:30"}
    server.start()
    try:
        yield port, root
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# a raw HTTP/1.0 client


@dataclass
class Response:
    status_line: bytes
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def fetch(port: int, target: str, headers: dict[str, str] | None = None) -> Response:
    lines = [f"GET {target} HTTP/1.0", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with client("127.0.0.1", port) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        raw = recv_all(sock)
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    first, *rest = head.split(b"\r\n")
    parsed = []
    for line in rest:
        k, _, v = line.decode("latin-1").partition(":")
        parsed.append((k, v.strip()))
    return Response(first, parsed, body)


def parsed(headers: dict[str, str]) -> dict[str, str]:
    """The headers as nginx's parser hands them on: lower-case names, values without the
    spaces around them."""
    return {k.lower(): v.strip(" ") for k, v in headers.items()}


# --------------------------------------------------------------------------------------------
# error pages and status lines


@pytest.mark.parametrize("code", PAGE_CODES + NO_PAGE_CODES)
def test_error_page(site: tuple[int, Path], code: int) -> None:
    port, _ = site
    r = fetch(port, f"/r{code}")
    assert r.status_line == b"HTTP/1.1 " + status_line(code)
    page = error_page_body(code, "off")
    if page is None:
        assert r.body == b""
        assert r.header("Content-Length") == "0"
        assert r.header("Content-Type") is None
    else:
        assert r.body == page
        assert r.header("Content-Type") == "text/html"
        assert r.header("Content-Length") == str(len(page))


@pytest.mark.parametrize("code", PLAIN_CODES)
def test_status_line(site: tuple[int, Path], code: int) -> None:
    port, _ = site
    assert fetch(port, f"/r{code}").status_line == b"HTTP/1.1 " + status_line(code)


def test_error_page_server_tokens_on(site: tuple[int, Path]) -> None:
    port, _ = site
    r = fetch(port, "/tokens-on")
    body = r.body.replace(b"nginx/1.22.1", b"nginx/" + NGINX_COMPAT_VERSION.encode())
    assert body == error_page_body(404, "on")


# --------------------------------------------------------------------------------------------
# autoindex


AUTOINDEX_CASES = {
    "html": ("/auto/", {}),
    "html-utf8": ("/autou/", {"charset": "utf-8"}),
    "html-human": ("/autoh/", {"exact_size": False}),
    "json": ("/autoj/", {"fmt": "json"}),
    "jsonp": ("/autop/?callback=cb.x_1", {"fmt": "jsonp", "callback": "cb.x_1"}),
    "jsonp-no-callback": ("/autop/", {"fmt": "jsonp"}),
    "jsonp-empty-callback": ("/autop/?callback=", {"fmt": "jsonp", "callback": ""}),
    "xml": ("/autox/", {"fmt": "xml"}),
    "html-localtime": ("/autol/", {"localtime": True, "gmtoff": LOCAL_OFFSET}),
}


@pytest.mark.parametrize("case", list(AUTOINDEX_CASES))
def test_autoindex(site: tuple[int, Path], case: str) -> None:
    port, root = site
    target, kwargs = AUTOINDEX_CASES[case]
    r = fetch(port, target)
    assert r.status == 200
    body, content_type = autoindex.render(
        target.partition("?")[0], autoindex.scan(str(root / "auto")), **kwargs
    )
    if kwargs.get("charset"):
        content_type += "; charset=" + kwargs["charset"]
    assert r.header("Content-Type") == content_type
    assert body.split(b"\r\n") == r.body.split(b"\r\n")  # line by line: readable diffs
    assert body == r.body


def test_autoindex_escaped_uri(site: tuple[int, Path]) -> None:
    port, root = site
    r = fetch(port, "/auto/dir%20%26%20%3Cb%3E/")
    body, _ = autoindex.render("/auto/dir & <b>/", autoindex.scan(str(root / "auto/dir & <b>")))
    assert r.status == 200
    assert body == r.body


@pytest.mark.parametrize("callback", ["a-b", "x" * 129, "f(1)"])
def test_autoindex_bad_callback(site: tuple[int, Path], callback: str) -> None:
    port, _ = site
    assert not autoindex.jsonp_callback_ok(callback)
    assert fetch(port, f"/autop/?callback={callback}").status == 400


def test_autoindex_long_callback_ok(site: tuple[int, Path]) -> None:
    port, root = site
    callback = "c" * 128
    assert autoindex.jsonp_callback_ok(callback)
    r = fetch(port, f"/autop/?callback={callback}")
    body, _ = autoindex.render(
        "/autop/", autoindex.scan(str(root / "auto")), fmt="jsonp", callback=callback
    )
    assert body == r.body


# --------------------------------------------------------------------------------------------
# ETag, Last-Modified, Content-Type


@pytest.mark.parametrize("name", ["f.txt", "empty.txt", "auto/plain.txt", "auto/&<>\"'.html"])
def test_etag_and_last_modified(site: tuple[int, Path], name: str) -> None:
    port, root = site
    st = os.stat(root / name)
    r = fetch(port, "/" + name.replace("&", "%26").replace("<", "%3C").replace('"', "%22"))
    assert r.status == 200
    assert r.header("ETag") == make_etag(stat_mtime(st), st.st_size)
    assert r.header("Last-Modified") == http_date(stat_mtime(st))


def _mime_table() -> dict[str, str]:
    text = MIME_TYPES.read_text()
    body = text[text.index("{") + 1 : text.rindex("}")]
    table = {}
    for stmt in body.split(";"):
        words = stmt.split()
        for ext in words[1:]:
            table[ext] = words[0]
    return table


def test_mime_types_served(site: tuple[int, Path]) -> None:
    port, root = site
    table = _mime_table()
    for ext in ("html", "css", "js", "json", "png", "svgz", "woff2", "wasm", "avif", "pptx",
                "mp4", "exe", "7z", "txt"):  # fmt: skip
        _touch(root / f"m.{ext}")
        assert fetch(port, f"/m.{ext}").header("Content-Type") == table[ext], ext


# --------------------------------------------------------------------------------------------
# ranges

RANGES = [
    "bytes=0-0",
    "bytes=0-99",
    "bytes=990-",
    "bytes=990-2000",
    "bytes=-1",
    "bytes=-10",
    "bytes=-1000",
    "bytes=-5000",
    "bytes=0-",
    "bytes=999-999",
    "bytes=1000-",
    "bytes=5000-6000",
    "bytes=5-1",
    "bytes=-0",
    "bytes=0-1,5-6",
    "bytes=0-1,5-6,900-",
    "bytes=5-6,0-1",
    "bytes=0-500,400-900",
    "bytes=0-499,500-999",
    "bytes=0-499,500-1000",
    "bytes=0-0,0-0,0-0",
    "bytes=0-1,5000-6000",
    "bytes=5000-6000,7000-",
    "bytes=0-1,",
    "bytes= 1 - 2 , 4 - 5 ",
    "bytes=-  5",
    "bytes=1-2;3-4",
    "bytes=abc",
    "bytes=",
    "bytes= ",
    "BYTES=1-2",
    "bits=1-2",
    "bytes=1-2x",
    "bytes=99999999999999999999-",
    "bytes=9223372036854775807-",
    "bytes=1--2",
]


def _check_range(
    port: int,
    target: str,
    headers: dict[str, str],
    size: int,
    st: os.stat_result,
    max_ranges: int | None = None,
) -> None:
    r = fetch(port, target, headers)
    lm = stat_mtime(st)
    h = parsed(headers)
    plan = plan_ranges(h.get("range"), h.get("if-range"), size, lm, make_etag(lm, size), max_ranges)
    body = BODY if size == len(BODY) else b""
    if plan is None:
        assert r.status == 200, (headers, r)
        assert r.body == body
        assert (r.header("Accept-Ranges") == "bytes") == accept_ranges(max_ranges)
        return
    assert r.status == plan.status, (headers, r)
    if plan.status == 416:
        assert r.header("Content-Range") == plan.content_range
        assert r.body == error_page_body(416, "off")
        return
    assert r.header("Accept-Ranges") is None
    if plan.multipart_boundary is None:
        start, end = plan.ranges[0]
        assert r.header("Content-Range") == plan.content_range
        assert r.header("Content-Length") == str(plan.content_length)
        assert r.body == body[start:end]
        return
    content_type = r.header("Content-Type")
    assert content_type is not None
    prefix = "multipart/byteranges; boundary="
    assert content_type.startswith(prefix)
    boundary = content_type[len(prefix) :]
    assert len(boundary) == len(plan.multipart_boundary)
    plan.multipart_boundary = boundary  # nginx's counter is not ours
    parts, closing, length = multipart_parts(plan, "text/plain", size)
    expected = b"".join(head + body[start:end] for head, start, end in parts) + closing
    assert r.body == expected
    assert r.header("Content-Length") == str(length)
    assert r.header("Content-Range") is None


@pytest.mark.parametrize("value", RANGES)
def test_range(site: tuple[int, Path], value: str) -> None:
    port, root = site
    _check_range(port, "/f.txt", {"Range": value}, 1000, os.stat(root / "f.txt"))


@pytest.mark.parametrize("value", ["bytes=0-", "bytes=-5", "bytes=5-", "bytes=0-0"])
def test_range_empty_file(site: tuple[int, Path], value: str) -> None:
    port, root = site
    _check_range(port, "/empty.txt", {"Range": value}, 0, os.stat(root / "empty.txt"))


@pytest.mark.parametrize(
    ("location", "max_ranges", "value"),
    [
        ("/max2/", 2, "bytes=0-1,5-6"),
        ("/max2/", 2, "bytes=0-1,5-6,8-9"),
        ("/max2/", 2, "bytes=0-1,5000-,8-9"),
        ("/max0/", 0, "bytes=0-1"),
        ("/max0/", 0, "bytes=5000-"),
    ],
)
def test_range_max_ranges(
    site: tuple[int, Path], location: str, max_ranges: int, value: str
) -> None:
    port, root = site
    st = os.stat(root / "f.txt")
    _check_range(port, location + "f.txt", {"Range": value}, 1000, st, max_ranges)


def _if_range_values(st: os.stat_result) -> list[str]:
    lm = stat_mtime(st)
    etag = make_etag(lm, st.st_size)
    return [
        etag,
        "W/" + etag,
        '"other"',
        etag[:-1],
        http_date(lm),
        http_date(lm + 1),
        http_date(lm - 1),
        "Tuesday, 14-Nov-23 22:13:20 GMT",
        "Tue Nov 14 22:13:20 2023",
        "garbage",
        '"',
    ]


def test_if_range(site: tuple[int, Path]) -> None:
    port, root = site
    st = os.stat(root / "f.txt")
    for value in _if_range_values(st):
        for target in ("/f.txt", "/noetag/f.txt"):
            headers = {"Range": "bytes=1-3", "If-Range": value}
            r = fetch(port, target, headers)
            lm = stat_mtime(st)
            etag = None if "noetag" in target else make_etag(lm, st.st_size)
            plan = plan_ranges("bytes=1-3", value, 1000, lm, etag)
            assert r.status == (200 if plan is None else plan.status), (target, value)


# --------------------------------------------------------------------------------------------
# conditional requests


def _conditional_cases(lm: int, etag: str) -> list[dict[str, str]]:
    weak = "W/" + etag
    return [
        {},
        {"If-None-Match": etag},
        {"If-None-Match": weak},
        {"If-None-Match": '"x", ' + etag},
        {"If-None-Match": '"x",\t W/' + etag + " ,"},
        {"If-None-Match": '"x"'},
        {"If-None-Match": "*"},
        {"If-None-Match": " *"},
        {"If-None-Match": etag + "x"},
        {"If-None-Match": etag + " x"},
        {"If-Modified-Since": http_date(lm)},
        {"If-Modified-Since": http_date(lm + 1)},
        {"If-Modified-Since": http_date(lm - 1)},
        {"If-Modified-Since": "Tuesday, 14-Nov-23 22:13:20 GMT"},
        {"If-Modified-Since": "Tue Nov 14 22:13:20 2023"},
        {"If-Modified-Since": "junk"},
        {"If-Modified-Since": http_date(lm), "If-None-Match": '"x"'},
        {"If-Modified-Since": http_date(lm - 1), "If-None-Match": etag},
        {"If-Modified-Since": http_date(lm), "If-None-Match": etag},
        {"If-Match": etag},
        {"If-Match": weak},
        {"If-Match": '"x"'},
        {"If-Match": "*"},
        {"If-Match": '"a", ' + etag},
        {"If-Unmodified-Since": http_date(lm)},
        {"If-Unmodified-Since": http_date(lm - 1)},
        {"If-Unmodified-Since": http_date(lm + 100)},
        {"If-Unmodified-Since": "junk"},
        {"If-Match": '"x"', "If-None-Match": etag},
        {"If-Unmodified-Since": http_date(lm - 1), "If-Modified-Since": http_date(lm)},
        {"If-Match": etag, "If-None-Match": etag},
    ]


@pytest.mark.parametrize(
    ("location", "mode", "with_etag"),
    [
        ("/", "exact", True),
        ("/noetag/", "exact", False),
        ("/before/", "before", True),
        ("/imsoff/", "off", True),
    ],
)
def test_conditional(site: tuple[int, Path], location: str, mode: str, with_etag: bool) -> None:
    port, root = site
    st = os.stat(root / "f.txt")
    lm = stat_mtime(st)
    etag = make_etag(lm, st.st_size)
    for headers in _conditional_cases(lm, etag):
        r = fetch(port, location + "f.txt", headers)
        decided = not_modified(
            parsed(headers),
            200,
            lm,
            etag if with_etag else None,
            mode,
        )
        assert r.status == (decided or 200), (location, headers)
        if decided == 412:
            assert r.body == error_page_body(412, "off")
        if decided == 304:
            assert r.body == b""
            assert r.header("Content-Length") is None
            assert r.header("Accept-Ranges") is None


def test_conditional_without_last_modified(site: tuple[int, Path]) -> None:
    port, root = site
    st = os.stat(root / "f.txt")
    lm = stat_mtime(st)
    for headers in _conditional_cases(lm, make_etag(lm, st.st_size)):
        r = fetch(port, "/no-lm", headers)
        decided = not_modified(parsed(headers), 200, None, None)
        assert r.status == (decided or 200), headers


def test_conditional_before_date_variants(site: tuple[int, Path]) -> None:
    port, root = site
    st = os.stat(root / "f.txt")
    lm = stat_mtime(st)
    for delta in (-86400, -1, 0, 1, 86400):
        for location, mode in (("/", "exact"), ("/before/", "before")):
            headers = {"If-Modified-Since": http_date(lm + delta)}
            r = fetch(port, location + "f.txt", headers)
            decided = not_modified({"if-modified-since": headers["If-Modified-Since"]}, 200,
                                   lm, None, mode)  # fmt: skip
            assert r.status == (decided or 200), (mode, delta)
