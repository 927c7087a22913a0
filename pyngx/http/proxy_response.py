"""The upstream's response, as nginx's proxy module reads it: head, body framing, rewrites.

`parse_head` is the proxy's private stand-in for pyngx.protocols.http1's response parser (the
one function to swap once that lands): nginx's ngx_http_parse_status_line and
ngx_http_parse_header_line with upstream rules (underscores allowed, LF-only lines accepted,
a second "HTTP/1.x ..." line ignored, names with controls or spaces rejected). Its result
carries what ngx_http_upstream's header handlers record: status, the verbatim status line
(its reason phrase is passed to the client), Content-Length (the last one, as 1.22 keeps it),
chunked, and `Connection: close` (or an HTTP/1.0 server).

`ChunkedDecoder` decodes a chunked body incrementally with bytes.find (no per-byte loop).
`RedirectRule`s are `proxy_redirect`: they rewrite Location and Refresh values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_BAD_NAME = re.compile(r"[\x00-\x20\x7f]")
_STATUS = re.compile(r"HTTP/(\d+)\.(\d+) ([1-9]\d\d)(?: (.*))?$", re.DOTALL)


class BadHead(Exception):
    """`kind`: "invalid" (upstream sent invalid header), "big" (too big header) or "09"
    (no status line: nginx then relays the bytes as an HTTP/0.9 response)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Head:
    """A parsed response head. `lines` are its header lines ("Name: value"), validated; the
    proxy classifies them in one pass (proxy_run.py), `pairs()` splits them when needed."""

    __slots__ = (
        "status",
        "status_line",
        "lines",
        "size",
        "close",
        "content_length",
        "chunked",
        "accel_redirect",
        "accel_buffering",
        "_pairs",
        "copies",
    )

    def __init__(self, status: int, status_line: str, lines: list[str], size: int, close: bool):
        self.status = status
        self.status_line = status_line
        self.lines = lines
        self.size = size
        self.close = close  # an HTTP/1.0 server; `Connection: close` sets it too (framing)
        self.content_length: int | None = None
        self.chunked = False
        self.accel_redirect: str | None = None
        self.accel_buffering: str | None = None
        self._pairs: list[tuple[str, str]] | None = None
        # A head from the parse cache: its copies to the client's head, by location
        # (proxy_headers.copy_headers), shared by every response with the same bytes.
        self.copies: dict[int, Any] | None = None

    def pairs(self) -> list[tuple[str, str]]:
        pairs = self._pairs
        if pairs is None:
            pairs = []
            for line in self.lines:
                name, _, value = line.partition(":")
                pairs.append((name, value.strip(" ")))
            self._pairs = pairs
        return pairs

    def framing(self) -> None:
        """What ngx_http_upstream's process handlers record, for paths that do not copy the
        headers (the proxy's copy loop records the same as it goes)."""
        for name, value in self.pairs():
            low = name.lower()
            if low == "content-length":
                self.content_length = int(value) if value.isdigit() else None
            elif low == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
            elif low == "connection" and "close" in value.lower():
                self.close = True
            elif low == "x-accel-redirect":
                self.accel_redirect = value
            elif low == "x-accel-buffering" and self.accel_buffering is None:
                self.accel_buffering = value.lower()
        if self.chunked:
            self.content_length = None


# A header name with a space or a tab (or nginx's ignored repeated status line): the exact
# path decides. Control characters anywhere are caught by isprintable().
_SPACE_IN_NAME = re.compile(r"\n[^:\n \t]*[ \t]")

# Parsed heads by their bytes: an upstream answering the same resource sends the same head
# (but for Date, once a second), so most heads are parsed once. A hit makes a fresh Head
# (the copy records framing on it) sharing the validated, never mutated, `lines`; a response
# answered whole (proxy_run.Exchange._whole_response) shares one Head kept with its copy.
HEAD_CACHE_ENTRIES = 256
HEAD_CACHE_MAX = 2048
_HEADS: dict[bytes, tuple[int, str, list[str], bool, dict[int, Any]]] = {}
# The cache itself, for the exchange's hot path (proxy_run.Exchange._whole_response).
HEAD_CACHE = _HEADS


def parse_head(buf: bytes, limit: int) -> Head | None:
    """The response head at the start of `buf`, None while incomplete; raises BadHead.

    `limit` is proxy_buffer_size: a head that does not fit is "too big".
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return _parse_lf_head(buf, limit)
    size = end + 4
    if size > limit:
        raise BadHead("big", "upstream sent too big header")
    key = buf if len(buf) == size else buf[:size]
    hit = _HEADS.get(key)
    if hit is not None:
        head = Head(hit[0], hit[1], hit[2], size, hit[3])
        head.copies = hit[4]
        return head
    text = buf[:end].decode("latin-1")
    lines = text.split("\r\n")
    if text.count("\n") != len(lines) - 1:
        return _parse_lf_head(buf, limit)  # a bare LF somewhere: maybe an earlier end
    if not text.replace("\r\n", "").isprintable() or _SPACE_IN_NAME.search(text):
        return _parse_exact(text.split("\n"), size)
    first = lines[0]
    if (
        first[:7] == "HTTP/1."
        and first[8:9] == " "
        and first[9:12].isdigit()
        and first[9] != "0"
        and (len(first) == 12 or first[12] == " ")
    ):
        del lines[0]
        status, close = int(first[9:12]), first[7] == "0"
        head = Head(status, first[9:], lines, size, close)
        if size <= HEAD_CACHE_MAX:
            if len(_HEADS) >= HEAD_CACHE_ENTRIES:
                _HEADS.clear()
            head.copies = {}
            _HEADS[bytes(key)] = (status, first[9:], lines, close, head.copies)
        return head
    return _parse_exact(text.split("\n"), size)


def _parse_lf_head(buf: bytes, limit: int) -> Head | None:
    """Heads with LF-only line ends (accepted by nginx), or not complete yet."""
    candidates = []
    for marker, extra in ((b"\n\n", 2), (b"\n\r\n", 3), (b"\r\n\r\n", 4)):
        i = buf.find(marker)
        if i >= 0:
            candidates.append((i, i + extra))
    if not candidates:
        if not buf.startswith(b"HTTP/"[: len(buf)]):
            raise BadHead("09", "upstream sent no valid HTTP/1.0 header")
        if len(buf) >= limit:
            raise BadHead("big", "upstream sent too big header")
        return None
    end, size = min(candidates)
    if size > limit:
        raise BadHead("big", "upstream sent too big header")
    return _parse_exact(buf[:end].decode("latin-1").split("\n"), size)


def _parse_exact(raw: list[str], size: int) -> Head:
    """Line by line, with nginx's errors (raw lines may end with CR)."""
    lines = [line[:-1] if line.endswith("\r") else line for line in raw]
    first = lines[0]
    m = _STATUS.match(first)
    if m is None:
        raise BadHead("09", "upstream sent no valid HTTP/1.0 header")
    out = []
    for line in lines[1:]:
        if line.startswith("HTTP/"):
            continue  # IIS may repeat its status line; nginx skips it
        name, _colon, value = line.partition(":")
        bad = _BAD_NAME.search(name)
        if bad is not None:
            raise BadHead(
                "invalid",
                f'upstream sent invalid header: "{name[: bad.start()]}\\x'
                f'{ord(bad.group()):02X}..."',
            )
        if "\x00" in value:
            raise BadHead(
                "invalid",
                f'upstream sent invalid header: "{name}:{value[: value.index(chr(0))]}\\x00..."',
            )
        out.append(line)
    close = (int(m.group(1)), int(m.group(2))) < (1, 1)
    return Head(int(m.group(3)), first[m.start(3) :], out, size, close)


# -- chunked bodies -------------------------------------------------------------------------

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_HEX = re.compile(rb"[0-9A-Fa-f]+")
MAX_CHUNK_LINE = 4096


class ChunkedError(Exception):
    pass


class ChunkedDecoder:
    """Incremental chunked decoder: feed() returns the data pieces; `done` after the last
    chunk and the trailer; `extra` holds bytes that followed the body."""

    __slots__ = ("state", "remaining", "pending", "done", "extra")

    def __init__(self) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.pending = b""
        self.done = False
        self.extra = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self.pending:
            data = self.pending + data
            self.pending = b""
        out: list[bytes] = []
        pos = 0
        n = len(data)
        state = self.state
        while pos < n:
            if state == _DATA:
                take = self.remaining
                if take >= n - pos:
                    take = n - pos
                    out.append(data if pos == 0 else data[pos:])
                else:
                    out.append(data[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    state = _DATA_END
            elif state == _SIZE:
                i = data.find(b"\n", pos)
                if i < 0:
                    self.pending = data[pos:]
                    if len(self.pending) > MAX_CHUNK_LINE:
                        raise ChunkedError("chunk size line too long")
                    break
                line = data[pos:i]
                pos = i + 1
                size_text = line.split(b";", 1)[0].strip(b" \t\r")
                if _HEX.fullmatch(size_text) is None or len(size_text) > 16:
                    raise ChunkedError("invalid chunk size")
                size = int(size_text, 16)
                if size:
                    self.remaining = size
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _DATA_END:
                c = data[pos]
                if c == 13:  # CR
                    if pos + 1 == n:
                        self.pending = b"\r"
                        pos = n
                        break
                    if data[pos + 1] != 10:
                        raise ChunkedError("no CRLF after chunk data")
                    pos += 2
                elif c == 10:
                    pos += 1
                else:
                    raise ChunkedError("no CRLF after chunk data")
                state = _SIZE
            elif state == _TRAILER:
                i = data.find(b"\n", pos)
                if i < 0:
                    self.pending = data[pos:]
                    if len(self.pending) > MAX_CHUNK_LINE:
                        raise ChunkedError("trailer line too long")
                    break
                line = data[pos:i]
                pos = i + 1
                if line in (b"", b"\r"):
                    state = _DONE
                    self.done = True
                    self.extra = data[pos:]
                    break
            else:  # _DONE
                self.extra += data[pos:]
                break
        self.state = state
        return out


# -- proxy_redirect ----------------------------------------------------------------------------

Value = Callable[[Any], str]


class RedirectRule:
    """One `proxy_redirect`: a prefix (complex value, case-sensitive) or a regex."""

    __slots__ = ("pattern", "regex", "replacement")

    def __init__(
        self,
        pattern: Value | None,
        regex: re.Pattern[str] | None,
        replacement: Callable[[Any, re.Match[str] | None], str],
    ) -> None:
        self.pattern = pattern
        self.regex = regex
        self.replacement = replacement

    def apply(self, r: Any, value: str, prefix: int) -> str | None:
        rest = value[prefix:]
        if self.regex is not None:
            m = self.regex.match(rest)
            if m is None:
                return None
            return value[:prefix] + self.replacement(r, m)
        assert self.pattern is not None
        pat = self.pattern(r)
        if not rest.startswith(pat):
            return None
        return value[:prefix] + self.replacement(r, None) + rest[len(pat) :]


def rewrite_redirect(rules: list[RedirectRule], r: Any, value: str, prefix: int) -> str | None:
    for rule in rules:
        new = rule.apply(r, value, prefix)
        if new is not None:
            return new
    return None


def refresh_prefix(value: str) -> int:
    """Where the URL of a Refresh value starts (after `url=`), or -1."""
    i = value.lower().find("url=")
    return -1 if i < 0 else i + 4


def set_cookie_value(headers: list[tuple[str, str]], name: str) -> str | None:
    """$upstream_cookie_NAME: the value NAME has in a Set-Cookie line of the response."""
    for n, v in headers:
        if n.lower() != "set-cookie":
            continue
        first = v.split(";", 1)[0]
        k, eq, val = first.partition("=")
        if eq and k.strip() == name:
            return val.strip()
    return None


__all__ = [
    "BadHead",
    "ChunkedDecoder",
    "ChunkedError",
    "HEAD_CACHE",
    "Head",
    "RedirectRule",
    "parse_head",
    "refresh_prefix",
    "rewrite_redirect",
    "set_cookie_value",
]
