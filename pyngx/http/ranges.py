"""Byte ranges: nginx's range filter (ngx_http_range_filter_module.c).

`plan_ranges` decides what nginx's range header filter does with a 200 response whose length
is known; `multipart_parts` lays out a multi-range body byte for byte. The caller checks the
filter's preconditions first (HTTP/1.0 or later, status 200, Content-Length known, the content
handler allows ranges, not a subrequest) and runs the not_modified filter before this one.

nginx's rules, kept here:
- Range is used only if its value starts with "bytes=" (any case) and is at least 7 long.
- If-Range: a value ending in '"' (2 chars or more) is an entity tag compared byte for byte
  with the response's ETag; anything else is a date that must equal Last-Modified. A mismatch,
  or a missing ETag/Last-Modified, means the whole response.
- The ranges: `a-b`, `a-`, `-n`, separated by commas, spaces allowed around numbers and the
  dash (not between a suffix dash and its number), nothing else. A syntax error or a number
  beyond 2^63-1 is 416. `b` past the end is cut to the end; a range starting past the end is
  skipped; if every range is skipped, 416. A skipped range starting at 0 (only possible when
  the response is empty) means the whole response instead.
- Ranges are neither sorted nor merged. If more ranges than max_ranges are satisfiable, or
  their lengths add up to more than the response, the Range header is ignored (whole
  response): that is how nginx fends off overlapping-range amplification.
- One range: 206 with Content-Range "bytes a-b/size". Several: 206 multipart/byteranges with
  a 20-digit zero-padded boundary from a counter (nginx's ngx_next_temp_number, "%0muA"),
  each part "CRLF--boundary CRLF [Content-Type: t CRLF] Content-Range: bytes a-b/size CRLF
  CRLF data", closed by "CRLF--boundary-- CRLF".
- 416 carries Content-Range "bytes */size" and nginx's error page.
- When the Range header is ignored (plan_ranges returns None), nginx adds
  "Accept-Ranges: bytes" to the 200 -- except with max_ranges 0, which turns ranges off.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from pyngx.http.httpdate import parse_time

__all__ = [
    "RangePlan",
    "plan_ranges",
    "multipart_parts",
    "next_boundary",
    "accept_ranges",
]

_MAX_OFF_T = (1 << 63) - 1

# One range spec at a position: "a-b", "a-" or "-n", with nginx's optional spaces. The
# caller checks that what follows is a comma or the end.
_SPEC = re.compile(rb" *(?:([0-9]+) *- *([0-9]+)? *|-([0-9]+) *)")

# nginx's boundary counter; shared across workers in nginx, per process here.
_boundary_counter = itertools.count(1)


def next_boundary() -> str:
    """The next multipart boundary: nginx's counter as 20 zero-padded digits ("%0muA")."""
    return f"{next(_boundary_counter):020d}"


@dataclass(slots=True)
class RangePlan:
    """What to send for a Range request.

    status: 206 (ranges to send) or 416 (none satisfiable).
    ranges: (start, end-exclusive) pairs in the client's order; empty for 416.
    content_range: the Content-Range value for a single range or a 416, else None.
    multipart_boundary: set when several ranges go out as multipart/byteranges.
    """

    status: int
    ranges: list[tuple[int, int]] = field(default_factory=list)
    content_range: str | None = None
    multipart_boundary: str | None = None

    @property
    def content_type(self) -> str | None:
        """The response Content-Type for a multipart plan (None otherwise)."""
        if self.multipart_boundary is None:
            return None
        return f"multipart/byteranges; boundary={self.multipart_boundary}"

    @property
    def content_length(self) -> int | None:
        """Content-Length of a single-range plan (multipart: see multipart_parts)."""
        if self.status == 206 and self.multipart_boundary is None:
            start, end = self.ranges[0]
            return end - start
        return None


def accept_ranges(max_ranges: int | None) -> bool:
    """Whether a 200 whose Range was not used carries "Accept-Ranges: bytes"."""
    return max_ranges != 0


def _if_range_ok(if_range: str, last_modified: float | None, etag: str | None) -> bool:
    if len(if_range) >= 2 and if_range.endswith('"'):
        return etag is not None and if_range == etag
    if last_modified is None:
        return False
    return parse_time(if_range) == int(last_modified // 1)


_DECLINED = object()
_UNSATISFIABLE = object()


def _parse(spec: bytes, size: int, limit: int) -> list[tuple[int, int]] | object:
    """ngx_http_range_parse on the text after "bytes=": the ranges, _DECLINED or
    _UNSATISFIABLE."""
    ranges: list[tuple[int, int]] = []
    total = 0
    pos = 0
    n = len(spec)
    while True:
        m = _SPEC.match(spec, pos)
        if m is None:
            return _UNSATISFIABLE
        pos = m.end()
        if pos < n and spec[pos] != 0x2C:  # must be followed by ',' or the end
            return _UNSATISFIABLE
        first, last, suffix = m.group(1, 2, 3)
        if suffix is not None:
            length = int(suffix)
            if length > _MAX_OFF_T:
                return _UNSATISFIABLE
            start = size - length if length < size else 0
            end = size
        else:
            start = int(first)
            if start > _MAX_OFF_T:
                return _UNSATISFIABLE
            if last is None:
                end = size
            else:
                end = int(last)
                if end > _MAX_OFF_T:
                    return _UNSATISFIABLE
                end = size if end >= size else end + 1
        if start < end:
            ranges.append((start, end))
            if total > _MAX_OFF_T - (end - start):
                return _UNSATISFIABLE
            total += end - start
            if len(ranges) > limit:
                return _DECLINED
        elif start == 0:
            return _DECLINED
        if pos >= n:
            break
        pos += 1  # the comma; a trailing one leaves nothing for the next spec: 416
    if not ranges:
        return _UNSATISFIABLE
    if total > size:
        return _DECLINED
    return ranges


def plan_ranges(
    range_header: str | None,
    if_range: str | None,
    size: int,
    last_modified: float | None,
    etag: str | None,
    max_ranges: int | None = None,
) -> RangePlan | None:
    """nginx's range header filter for a 200 response of `size` bytes.

    Returns None to send the whole response (no usable Range, If-Range mismatch, too many or
    too much, max_ranges 0), else a RangePlan (206 or 416).
    max_ranges: the max_ranges directive (None: unlimited).
    """
    if max_ranges == 0 or range_header is None or len(range_header) < 7:
        return None
    if range_header[:6].lower() != "bytes=":
        return None
    if if_range is not None and not _if_range_ok(if_range, last_modified, etag):
        return None
    spec = range_header[6:].encode("latin-1", "replace")
    limit = max_ranges if max_ranges is not None else _MAX_OFF_T
    result = _parse(spec, size, limit)
    if result is _DECLINED:
        return None
    if result is _UNSATISFIABLE or not isinstance(result, list):
        return RangePlan(416, [], f"bytes */{size}")
    if len(result) == 1:
        start, end = result[0]
        return RangePlan(206, result, f"bytes {start}-{end - 1}/{size}")
    return RangePlan(206, result, None, next_boundary())


def multipart_parts(
    plan: RangePlan, content_type: str | None, size: int
) -> tuple[list[tuple[bytes, int, int]], bytes, int]:
    """The multipart/byteranges body of a plan with several ranges, as nginx writes it.

    content_type: the response's own Content-Type including any "; charset=..." (None or ''
    for none: the parts then have no Content-Type line).
    Returns ([(part head, start, end-exclusive), ...], closing boundary, Content-Length); the
    body is each head followed by the file's bytes [start, end), then the closing bytes.
    """
    if plan.multipart_boundary is None:
        raise ValueError("not a multipart range plan")
    boundary = plan.multipart_boundary.encode("ascii")
    head = b"\r\n--" + boundary + b"\r\n"
    if content_type:
        head += b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
    head += b"Content-Range: bytes "
    parts = []
    total = 0
    for start, end in plan.ranges:
        part = head + b"%d-%d/%d\r\n\r\n" % (start, end - 1, size)
        parts.append((part, start, end))
        total += len(part) + end - start
    closing = b"\r\n--" + boundary + b"--\r\n"
    return parts, closing, total + len(closing)
