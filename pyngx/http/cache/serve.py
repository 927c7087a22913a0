"""Sending a cached response (ngx_http_upstream_cache_send + ngx_http_cache_send and the
filters a cached response goes through).

The stored head is turned into the response head by `copy_headers` (the proxy's own
ngx_http_upstream_process_headers, so that proxy_hide_header, proxy_redirect... apply to hits
as to fresh responses; `default_copy_headers` does nginx's defaults without the proxy). Then,
as nginx does for a cached 200:
- the not_modified filter: 304 (validators from the cache file header) or 412;
- the range filter, only when the cached response had `Accept-Ranges` (nginx's
  ngx_http_upstream_copy_allow_ranges for r->cached) or proxy_force_ranges is on; it then
  adds "Accept-Ranges: bytes" itself;
- Content-Length is the stored response's: a response stored without one (chunked or
  close-delimited upstream) goes out chunked to HTTP/1.1 clients, as from nginx;
- HEAD sends the head only.
A body in memory goes out in one write with the head; a large one streams from the file
with flow control.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import Any

from pyngx.http.cache.store import Entry
from pyngx.http.conditional import not_modified
from pyngx.http.request import DONE

# ngx_http_proxy_hide_headers, and what the upstream module never passes as it is.
HIDE = frozenset(
    (
        "date",
        "server",
        "x-pad",
        "x-accel-expires",
        "x-accel-redirect",
        "x-accel-limit-rate",
        "x-accel-buffering",
        "x-accel-charset",
    )
)
NEVER_PASSED = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive"))
STREAM_CHUNK = 256 * 1024

CopyHeaders = Callable[[Any, int, str, list[tuple[str, str]]], None]


def default_copy_headers(r: Any, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
    """nginx's upstream header copy with the proxy module's default hidden headers."""
    out = r.out
    r.status = status
    for name, value in headers:
        low = name.lower()
        if low in HIDE or low in NEVER_PASSED:
            continue
        if low == "content-type":
            out.content_type = value
            out.charset = None
            continue
        out.headers.append((name, value))


def serve_entry(
    r: Any,
    entry: Entry,
    lookup: Any = None,
    *,
    copy_headers: CopyHeaders | None = None,
    force_ranges: bool = False,
) -> int | Coroutine[Any, Any, int]:
    """Send `entry` through the Request API. Returns DONE when sent, a status for the caller
    to finalize with (412), or a coroutine to await (a large body streaming from the file).
    Closes the lookup (and the entry's file) once the body is out."""
    try:
        result = _serve(r, entry, copy_headers or default_copy_headers, force_ranges, lookup)
    except BaseException:
        _done(entry, lookup)
        raise
    if not isinstance(result, int):
        return result
    _done(entry, lookup)
    return result


def _done(entry: Entry, lookup: Any) -> None:
    if lookup is not None:
        lookup.close()
    else:
        entry.close()


def _content_length(headers: list[tuple[str, str]], body_length: int) -> int | None:
    value = None
    for name, v in headers:
        if name.lower() == "content-length":
            value = v.strip()
    if value is None or not value.isdigit():
        return None
    n = int(value)
    return n if n == body_length else body_length


def _serve(
    r: Any, entry: Entry, copy_headers: CopyHeaders, force_ranges: bool, lookup: Any
) -> int | Coroutine[Any, Any, int]:
    status = entry.status
    copy_headers(r, status, entry.reason, entry.headers)
    out = r.out
    size = entry.body_length
    meta = entry.send_meta
    if meta is None:
        meta = entry.send_meta = (
            _content_length(entry.headers, size),
            any(n.lower() == "accept-ranges" for n, _ in entry.headers),
        )
    out.content_length = meta[0]
    h = entry.header
    last_modified = None if h.last_modified == -1 else float(h.last_modified)
    etag = h.etag or None
    if status == 200 and (
        "if-modified-since" in r.headers
        or "if-none-match" in r.headers
        or "if-match" in r.headers
        or "if-unmodified-since" in r.headers
    ):
        code = not_modified(r.headers, 200, last_modified, etag, r.loc.if_modified_since)
        if code == 304:
            r.send_response(304, b"")
            return DONE
        if code is not None:
            # ngx_http_filter_finalize_request: the error page, without the entry's headers.
            r.out = type(out)()
            return code
    if force_ranges or meta[1]:
        out.headers = [(n, v) for n, v in out.headers if n.lower() != "accept-ranges"]
        if (
            status == 200
            and out.content_length is not None
            and r.loc.max_ranges != 0
            and r.version >= (1, 0)
        ):
            out.accept_ranges = True
            if r.headers.get("range") is not None:
                handled = _ranges(r, entry, size, last_modified, etag, lookup)
                if handled is not None:
                    return handled
    if r.method == "HEAD":
        r.send_head()
        r.finish()
        return DONE
    if entry.body is not None:
        if out.content_length is not None:
            r.send_response(status, entry.body)
        else:
            r.status = status
            r.send_head()
            r.send_body(entry.body)
            r.finish()
        return DONE
    r.status = status
    r.send_head()
    return _stream(r, entry, os.dup(entry.fd), 0, size, lookup)


def _ranges(
    r: Any,
    entry: Entry,
    size: int,
    last_modified: float | None,
    etag: str | None,
    lookup: Any,
) -> int | Coroutine[Any, Any, int] | None:
    """The range filter over a cached 200 (None: send the whole response)."""
    from pyngx.http.ranges import multipart_parts, plan_ranges

    out = r.out
    plan = plan_ranges(
        r.headers.get("range"), r.headers.get("if-range"), size, last_modified, etag,
        r.loc.max_ranges,
    )
    if plan is None:
        return None
    out.accept_ranges = False
    if plan.status == 416:
        out.headers.append(("Content-Range", plan.content_range or f"bytes */{size}"))
        return 416
    if plan.multipart_boundary is None:
        start, end = plan.ranges[0]
        out.headers.append(("Content-Range", plan.content_range or ""))
        out.content_length = end - start
        r.status = 206
        if r.method == "HEAD":
            r.send_head()
            r.finish()
            return DONE
        if entry.body is not None or end - start <= STREAM_CHUNK:
            r.send_response(206, entry.read_body(start, end - start))
            return DONE
        r.send_head()
        return _stream(r, entry, os.dup(entry.fd), start, end - start, lookup)
    ctype = out.content_type
    if ctype and out.charset:
        ctype = f"{ctype}; charset={out.charset}"
    parts, closing, length = multipart_parts(plan, ctype, size)
    out.content_type = plan.content_type
    out.charset = None
    out.content_length = length
    r.status = 206
    if r.method == "HEAD":
        r.send_head()
        r.finish()
        return DONE
    chunks: list[bytes] = []
    for head, start, end in parts:
        chunks.append(head)
        chunks.append(entry.read_body(start, end - start))
    chunks.append(closing)
    r.send_response(206, b"".join(chunks))
    return DONE


async def _stream(r: Any, entry: Entry, fd: int, offset: int, count: int, lookup: Any) -> int:
    """A body too large for one read: STREAM_CHUNK pieces, pausing while the client is.
    `fd` is the stream's own (a dup made before the caller could close the entry)."""
    conn = r.conn
    base = entry.header.body_start
    try:
        while count > 0 and not r.done:
            data = os.pread(fd, min(STREAM_CHUNK, count), base + offset)
            if not data:
                break
            r.send_body(data)
            offset += len(data)
            count -= len(data)
            if conn.writing_paused:
                conn.set_timer("send", r.loc.send_timeout)
                await conn.drain()
    finally:
        os.close(fd)
        _done(entry, lookup)
    if not r.done:
        r.finish()
    return DONE


__all__ = ["HIDE", "NEVER_PASSED", "default_copy_headers", "serve_entry"]
