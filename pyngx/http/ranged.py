"""Sending a file for a Range request (nginx's range filters over the static handler)."""

from __future__ import annotations

import os
from typing import Any

from pyngx.http.ranges import multipart_parts, plan_ranges
from pyngx.http.request import DONE

# Ranges up to this many bytes are read and sent in one write.
SMALL_RANGE = 256 * 1024


def send_ranges(r: Any, fd: int, size: int) -> int | None:
    """206/416 for the request's Range header, or None to send the whole file (200)."""
    out = r.out
    plan = plan_ranges(
        r.headers.get("range"),
        r.headers.get("if-range"),
        size,
        out.last_modified,
        out.etag,
        r.loc.max_ranges,
    )
    if plan is None:
        return None
    out.accept_ranges = False
    if plan.status == 416:
        out.headers.append(("Content-Range", plan.content_range or f"bytes */{size}"))
        out.last_modified = None
        return 416
    if plan.multipart_boundary is None:
        start, end = plan.ranges[0]
        out.headers.append(("Content-Range", plan.content_range or ""))
        r.status = 206
        out.content_length = end - start
        if r.method == "HEAD":
            r.send_head()
            r.finish()
            return DONE
        if end - start <= SMALL_RANGE:
            r.send_head()
            r.send_body(os.pread(fd, end - start, start))
            r.finish()
            return DONE
        from pyngx.http.static import _stream_and_done

        r.send_head()
        return _stream_and_done(r, os.dup(fd), start, end - start)
    ctype = out.content_type
    if ctype and out.charset:
        ctype = f"{ctype}; charset={out.charset}"
    parts, closing, length = multipart_parts(plan, ctype, size)
    out.content_type = plan.content_type
    out.charset = None
    out.content_length = length
    r.status = 206
    r.send_head()
    if r.method != "HEAD":
        chunks = []
        for head, start, end in parts:
            chunks.append(head)
            chunks.append(os.pread(fd, end - start, start))
        chunks.append(closing)
        r.send_body(b"".join(chunks))
    r.finish()
    return DONE
