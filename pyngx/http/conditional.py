"""Conditional requests: nginx's not_modified filter (ngx_http_not_modified_filter_module.c),
the `if_modified_since off|exact|before` directive, and the ETag nginx makes for files.

The filter runs on the response head before the range filter, only for a 200 response of the
main request. nginx's order and rules, which differ from RFC 9110 in places:

1. If-Unmodified-Since: 412 unless the response has a Last-Modified and the header's date
   (as ngx_parse_http_time reads it; an unparsable date counts as -1) is >= it.
2. If-Match: 412 unless the value is exactly "*" or lists the response's ETag (strong
   comparison: a W/ tag only matches itself character for character).
3. If-Modified-Since and/or If-None-Match present: 304 only if every one present says "not
   modified" -- nginx ANDs them rather than letting If-None-Match take precedence:
   - If-Modified-Since says "modified" when `if_modified_since off`, when the response has no
     Last-Modified, or when the date differs from Last-Modified (`exact`) / is older than it
     (`before`).
   - If-None-Match says "modified" unless it is "*" or lists the ETag (weak comparison: a W/
     prefix on either side is ignored).
A 304 drops the body, Content-Type, Content-Length, Accept-Ranges and Content-Encoding; a 412
is nginx's error page. Both are for the caller to do.

The ETag list parse is nginx's: entries separated by commas with spaces/tabs around them, an
entry matching when it starts with the tag and only blanks follow up to the next comma.
"""

from __future__ import annotations

import os

from pyngx.http.httpdate import parse_time

__all__ = ["IMS_MODES", "make_etag", "not_modified", "etag_matches", "stat_mtime"]

IMS_MODES = ("off", "exact", "before")

_U64 = 1 << 64


def stat_mtime(st: os.stat_result) -> int:
    """A file's mtime in whole seconds as nginx sees it (st_mtim.tv_sec).

    st_mtime (a float) can round x.9999999 up to the next second; st_mtime_ns cannot.
    """
    return st.st_mtime_ns // 1_000_000_000


def make_etag(mtime: float, size: int) -> str:
    """The ETag nginx gives a file: '"%xT-%xO"' of its mtime and size, quotes included."""
    secs = int(mtime // 1)
    # %x prints the two's complement of a negative time_t / off_t.
    return f'"{secs % _U64:x}-{size % _U64:x}"'


def etag_matches(header: str, etag: str | None, weak: bool) -> bool:
    """nginx's ngx_http_test_if_match: does the If-(None-)Match list name `etag`?"""
    if header == "*":
        return True
    if etag is None:
        return False
    if weak and len(etag) > 2 and etag.startswith("W/"):
        etag = etag[2:]
    n = len(etag)
    end = len(header)
    start = 0
    while start < end:
        if weak and end - start > 2 and header.startswith("W/", start):
            start += 2
        if n > end - start:
            return False
        if header.startswith(etag, start):
            start += n
            while start < end and header[start] in " \t":
                start += 1
            if start == end or header[start] == ",":
                return True
        # Skip to the next entry: past the comma and any blanks or further commas.
        comma = header.find(",", start)
        if comma < 0:
            return False
        start = comma
        while start < end and header[start] in " \t,":
            start += 1
    return False


def _modified_since(ims: str, last_modified: int | None, mode: str) -> bool:
    """ngx_http_test_if_modified: True means "modified" (send the full response)."""
    if last_modified is None or mode == "off":
        return True
    t = parse_time(ims)
    if t == last_modified:
        return False
    return mode == "exact" or t < last_modified


def not_modified(
    headers: dict[str, str],
    status: int,
    last_modified: float | None,
    etag: str | None,
    mode: str = "exact",
) -> int | None:
    """What nginx's not_modified filter makes of a response: 304, 412, or None (send it).

    headers: the request's headers, lower-case names -> (first) value.
    status: the response status; only 200 is ever changed.
    last_modified: the response's Last-Modified (epoch seconds) or None when it has none.
    etag: the response's ETag as sent (quotes, W/ prefix) or None.
    mode: the if_modified_since directive: "off", "exact" or "before".
    """
    if status != 200:
        return None
    lm = None if last_modified is None else int(last_modified // 1)

    iums = headers.get("if-unmodified-since")
    if iums is not None and (lm is None or not parse_time(iums) >= lm):
        return 412

    im = headers.get("if-match")
    if im is not None and not etag_matches(im, etag, weak=False):
        return 412

    ims = headers.get("if-modified-since")
    inm = headers.get("if-none-match")
    if ims is None and inm is None:
        return None
    if ims is not None and _modified_since(ims, lm, mode):
        return None
    if inm is not None and not etag_matches(inm, etag, weak=True):
        return None
    return 304
