"""Unit tests: nginx's error pages and status lines, HTTP dates, and the shipped mime.types."""

from __future__ import annotations

import calendar
import email.utils
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx import NGINX_COMPAT_VERSION
from pyngx.http import httpdate
from pyngx.http.httpdate import clamp_time, http_date, parse_http_date, parse_time
from pyngx.http.special_response import (
    SENT_AS,
    STATUS_LINES,
    error_page_body,
    has_error_page,
    status_line,
)

# --------------------------------------------------------------------------------------------
# error pages

# Content-Length of each page as Debian's nginx 1.22.1 sent it with server_tokens off.
NGINX_PAGE_LENGTHS = {
    301: 162, 302: 138, 303: 146, 307: 164, 308: 164, 400: 150, 401: 172, 404: 146, 416: 190,
    421: 166, 429: 162, 494: 226, 495: 208, 496: 230, 497: 248, 498: 146, 500: 170, 501: 158,
    504: 160, 505: 180, 507: 168,
}  # fmt: skip


def test_404_page_exact() -> None:
    assert error_page_body(404, "off") == (
        b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
        b"<center><h1>404 Not Found</h1></center>\r\n"
        b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


@pytest.mark.parametrize("tokens", ["on", "build"])
def test_tail_with_version(tokens: str) -> None:
    body = error_page_body(500, tokens)
    assert body is not None
    assert body.endswith(
        f"<hr><center>nginx/{NGINX_COMPAT_VERSION}</center>\r\n</body>\r\n</html>\r\n".encode()
    )


@pytest.mark.parametrize(("code", "length"), sorted(NGINX_PAGE_LENGTHS.items()))
def test_page_lengths_match_nginx(code: int, length: int) -> None:
    body = error_page_body(code, "off")
    assert body is not None and len(body) == length


def test_494_to_497_pages() -> None:
    assert error_page_body(494, "off") == (
        b"<html>\r\n<head><title>400 Request Header Or Cookie Too Large</title></head>\r\n"
        b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
        b"<center>Request Header Or Cookie Too Large</center>\r\n"
        b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    for code in (495, 496, 497):
        body = error_page_body(code, "off")
        assert body is not None
        assert b"<center><h1>400 Bad Request</h1></center>" in body
        assert STATUS_LINES[code] == b"400 Bad Request"
        assert SENT_AS[code] == 400
    assert b"The plain HTTP request was sent to HTTPS port" in (error_page_body(497, "on") or b"")


def test_498_is_the_404_page() -> None:
    assert error_page_body(498, "off") == error_page_body(404, "off")
    assert status_line(498) == b"498 "


def test_redirect_titles_differ_from_status_lines() -> None:
    assert b"<title>302 Found</title>" in (error_page_body(302, "off") or b"")
    assert status_line(302) == b"302 Moved Temporarily"
    assert b"401 Authorization Required" in (error_page_body(401, "off") or b"")
    assert status_line(401) == b"401 Unauthorized"


@pytest.mark.parametrize("code", [100, 200, 201, 204, 206, 300, 304, 305, 407, 417, 499, 506, 999])
def test_no_page(code: int) -> None:
    assert error_page_body(code, "off") is None
    assert not has_error_page(code)


def test_every_listed_code_has_a_page() -> None:
    for code in [301, 302, 303, 307, 308, 400, 401, 402, 403, 404, 405, 406, 408, 409, 410,
                 411, 412, 413, 414, 415, 416, 421, 429, 494, 495, 496, 497, 500, 501, 502,
                 503, 504, 505, 507]:  # fmt: skip
        assert has_error_page(code)
        body = error_page_body(code, "off")
        assert body is not None and body.startswith(b"<html>\r\n<head><title>")


def test_bad_server_tokens() -> None:
    with pytest.raises(ValueError):
        error_page_body(404, "maybe")


def test_status_lines() -> None:
    assert status_line(200) == b"200 OK"
    assert status_line(206) == b"206 Partial Content"
    assert status_line(304) == b"304 Not Modified"
    assert status_line(504) == b"504 Gateway Time-out"
    assert status_line(203) == b"203 "
    assert status_line(418) == b"418 "
    assert status_line(999) == b"999 "
    assert status_line(7) == b"007 "


# --------------------------------------------------------------------------------------------
# HTTP dates


def test_http_date_examples() -> None:
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(1700000000) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(1700000000.999) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert http_date(calendar.timegm((2026, 11, 26, 12, 0, 0))) == "Thu, 26 Nov 2026 12:00:00 GMT"


def test_http_date_clamps_like_ngx_gmtime() -> None:
    assert http_date(-5) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(10**15) == "Fri, 31 Dec 9999 23:59:59 GMT"
    assert clamp_time(-0.5) == 0
    assert clamp_time(12.9) == 12


def test_http_date_cache_is_transparent() -> None:
    a = http_date(1700000000)
    b = http_date(1600000000)
    assert http_date(1700000000) == a and http_date(1600000000) == b
    assert httpdate._last_secs == 1600000000


@given(st.integers(min_value=0, max_value=253402300799))
def test_http_date_round_trip(t: int) -> None:
    assert parse_http_date(http_date(t)) == t
    assert email.utils.parsedate_to_datetime(http_date(t)).timestamp() == t


PARSE_CASES = {
    "Tue, 14 Nov 2023 22:13:20 GMT": 1700000000,
    "Tue, 14 Nov 2023 22:13:20": 1700000000,
    "Tue, 14 Nov 2023 22:13:20 GMTgarbage": 1700000000,
    "Xyz, 14 Nov 2023 22:13:20 GMT": 1700000000,  # weekday not checked
    "Tuesday, 14-Nov-23 22:13:20 GMT": 1700000000,
    "Tuesday, 14-Nov-69 22:13:20 GMT": calendar.timegm((2069, 11, 14, 22, 13, 20)),
    "Tuesday, 14-Nov-70 22:13:20 GMT": calendar.timegm((1970, 11, 14, 22, 13, 20)),
    "Tue Nov 14 22:13:20 2023": 1700000000,
    "Sun Nov  6 08:49:37 1994": 784111777,
    "Sun Nov 6 08:49:37 1994": 784111777,
    "Sun, 06 Nov 1994 08:49:37 GMT": 784111777,
    "Sun,   06 Nov 1994 08:49:37 GMT": 784111777,  # spaces after the comma skipped
    "Sun, 06 Nxx 1994 08:49:37 GMT": 784111777,  # months by their first letter(s)
    "Sun, 06 Jzz 1994 08:49:37 GMT": calendar.timegm((1994, 7, 6, 8, 49, 37)),
    "Sun, 06 Jan 1994 08:49:37 GMT": calendar.timegm((1994, 1, 6, 8, 49, 37)),
    "Sun, 06 Mar 1994 08:49:37 GMT": calendar.timegm((1994, 3, 6, 8, 49, 37)),
    "Sun, 06 Mxy 1994 08:49:37 GMT": calendar.timegm((1994, 5, 6, 8, 49, 37)),
    "Sun, 06 Apr 1994 08:49:37 GMT": calendar.timegm((1994, 4, 6, 8, 49, 37)),
    "Sun, 06 Aug 1994 08:49:37 GMT": calendar.timegm((1994, 8, 6, 8, 49, 37)),
    "Thu, 29 Feb 2024 00:00:00 GMT": calendar.timegm((2024, 2, 29, 0, 0, 0)),
    "Thu, 29 Feb 2000 00:00:00 GMT": calendar.timegm((2000, 2, 29, 0, 0, 0)),
    "Thu, 31 Dec 9999 23:59:59 GMT": 253402300799,
    "Thu, 00 Jan 2000 00:00:00 GMT": calendar.timegm((2000, 1, 1, 0, 0, 0)) - 86400,
    "Thu, 01 Jan 1960 00:00:00 GMT": calendar.timegm((1960, 1, 1, 0, 0, 0)),
}

BAD_DATES = [
    "",
    "junk",
    "Tue 14 Nov 2023 22:13:20 GMT",
    "Tue, 14 Nov 2023 24:00:00 GMT",
    "Tue, 14 Nov 2023 22:60:00 GMT",
    "Tue, 14 Nov 2023 22:13:60 GMT",
    "Tue, 31 Nov 2023 22:13:20 GMT",
    "Thu, 29 Feb 2023 00:00:00 GMT",
    "Thu, 29 Feb 1900 00:00:00 GMT",
    "Tue, 14 Nov 23 22:13:20 GMT",
    "Tue, 14-Nov 2023 22:13:20 GMT",
    "Tue, 14 Nov-2023 22:13:20 GMT",
    "Tue, 14 Xov 2023 22:13:20 GMT",
    "Tue, 4 Nov 2023 22:13:20 GMT",
    "Tue, 14 Nov 2023 22:13",
    "Tue, 14 Nov 2023 2:13:20 GMT",
    "Tue Nov 14 22:13:20 23",
    "Tue Nov 14 22:13:20",
    "Tue, 14 Nov 2023 22.13.20 GMT",
    "Thu, 31 Dec 1969 23:59:59 GMT",  # -1: nginx cannot tell it from an error
]


@pytest.mark.parametrize(("text", "expected"), sorted(PARSE_CASES.items()))
def test_parse_http_date(text: str, expected: int) -> None:
    assert parse_http_date(text) == expected
    assert parse_time(text.encode()) == expected


@pytest.mark.parametrize("text", BAD_DATES)
def test_parse_http_date_rejects(text: str) -> None:
    assert parse_http_date(text) is None
    assert parse_time(text) == -1


def test_parse_year_zero_wraps_like_nginx() -> None:
    # nginx's unsigned arithmetic: year 0 in January wraps; the result is some number, not a
    # crash, and is the same each time.
    t = parse_time("Sat, 01 Jan 0000 00:00:00 GMT")
    assert isinstance(t, int) and t == parse_time("Sat, 01 Jan 0000 00:00:00 GMT")


@given(st.binary(max_size=40))
def test_parse_never_raises(data: bytes) -> None:
    t = parse_time(data)
    assert isinstance(t, int) and -(1 << 63) <= t < (1 << 63)


# --------------------------------------------------------------------------------------------
# mime.types


def _mime_file() -> Path:
    return Path(str(resources.files("pyngx") / "data" / "mime.types"))


def _parse_mime(text: str) -> list[tuple[str, str]]:
    body = text[text.index("{") + 1 : text.rindex("}")]
    pairs = []
    for stmt in body.split(";"):
        words = stmt.split()
        if words:
            assert len(words) >= 2, stmt
            pairs.extend((ext, words[0]) for ext in words[1:])
    return pairs


def test_mime_types_shape() -> None:
    text = _mime_file().read_text()
    assert text.lstrip().startswith("types {")
    assert text.rstrip().endswith("}")
    pairs = _parse_mime(text)
    table = dict(pairs)
    assert len(table) == len(pairs), "an extension listed twice"
    for ext, mime in {
        "html": "text/html",
        "htm": "text/html",
        "shtml": "text/html",
        "css": "text/css",
        "js": "application/javascript",
        "json": "application/json",
        "txt": "text/plain",
        "svgz": "image/svg+xml",
        "avif": "image/avif",
        "woff2": "font/woff2",
        "wasm": "application/wasm",
        "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "exe": "application/octet-stream",
        "msm": "application/octet-stream",
        "3gp": "video/3gpp",
        "avi": "video/x-msvideo",
    }.items():
        assert table[ext] == mime, ext
    assert len(table) == 110  # nginx's list: frozen upstream


def test_mime_types_same_as_nginx_ships() -> None:
    debian = Path("/etc/nginx/mime.types")
    if not debian.is_file():
        pytest.skip("no /etc/nginx/mime.types here")
    assert _parse_mime(_mime_file().read_text()) == _parse_mime(debian.read_text())
