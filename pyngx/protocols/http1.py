"""Sans-I/O HTTP/1.x codec: nginx's request head parser, URI normalisation, chunked bodies,
upstream response heads and status lines.

nginx (ngx_http_parse.c, ngx_http_request.c, ngx_http_request_body.c, the proxy and upstream
modules) is the specification: the same inputs are accepted, the same are refused, with the
status nginx answers and the text it writes to the error log.

Design notes
------------
* Sans-I/O, like proxy_protocol.py: the parsers look at whatever the caller has buffered and
  return a result, return None for "need more bytes", or raise. They never consume anything;
  `size` tells the caller where the head ended (a pipelined request or the body follows).
* Whole-head, not byte-by-byte. nginx runs a state machine per byte; doing that in Python would
  cost a function-call's worth of time per byte. The common case (a complete head within
  nginx's first buffer, request line and header lines of the usual shapes) takes a handful of
  C-level calls: one regex for the request line, one fullmatch that checks every header line
  and one findall that takes them all apart, on the block decoded once. Anything else goes the
  step-wise way: per line, bytes.find for the LF, a regex for the usual shape, and only when
  that fails a scan (still regex runs, not single bytes) that finds the exact byte where nginx
  stops and why. Tests hold both ways to the same decisions.
* Fail fast like nginx. nginx answers as soon as the offending byte arrives, so every prefix of
  a request that nginx would refuse is refused here too, while every prefix of an acceptable
  request yields None.
* The buffer limits are a model of nginx's buffers, not a byte count: nginx reads into one
  client_header_buffer_size buffer and, when a line does not fit, moves that line into one of
  large_client_header_buffers (number, size). A line must fit into one large buffer (request
  line: 414 "client sent too long URI"; header line: 494 "client sent too long header line");
  when no large buffer is left, 494 too. `_Buffers` replays that allocation exactly, so a head
  is refused at the same byte as nginx refuses it (parse errors seen before the overflow win,
  as in nginx). The head is assumed to start at the beginning of a fresh buffer, as the first
  request on a connection does; nginx places a pipelined request inside the previous request's
  buffer, which we do not model.
* Headers are checked while they are read, in order, as nginx's header handlers do (duplicate
  Host, duplicate "unique" headers, invalid Host), so the first error is the one nginx reports.
  The checks nginx makes once the head is complete (Host required for HTTP/1.1, Content-Length
  syntax, Transfer-Encoding, TRACE/CONNECT) are request_framing()'s.
* Text is decoded as UTF-8 with surrogateescape, the pyngx convention for variable values: the
  bytes survive a round trip, and file names map to what os.fsencode() gives back.
* Reasons are the message part of nginx's error_log line. nginx caps a whole log line at 2048
  bytes (NGX_MAX_ERROR_STR), which is the logger's business, not ours.
* Where nginx 1.22 (Debian's, used for the differential tests) and current mainline differ, we
  follow mainline and say so: mainline parses "CONNECT host:port" and answers 405 "client sent
  CONNECT method" (1.22: 400 "client sent invalid request"); mainline's chunked parser wants
  CRLF everywhere (1.22 also took a bare LF: ChunkedDecoder(allow_bare_lf=True)); mainline's
  upstream module refuses duplicate or conflicting Content-Length/Transfer-Encoding and an
  unknown Transfer-Encoding in responses (1.22 let Transfer-Encoding: chunked win).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

# --------------------------------------------------------------------------------------------
# errors


class HttpParseError(Exception):
    """A client request nginx refuses: `status` is what nginx finalizes the request with and
    `reason` the text of its error_log line (logged at info, without the ", client: ..." tail).

    494 is nginx's "Request Header Or Cookie Too Large"; its status line says 400 (see
    status_line()). nginx always answers these errors (none closes silently); `http09` is True
    when the request line was already known to be HTTP/0.9, and then the answer is the bare
    error page without a status line or headers. `request_line` is what nginx logs as $request
    (the request line, or the part of it that was received).
    """

    def __init__(
        self, status: int, reason: str, *, http09: bool = False, request_line: str = ""
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.http09 = http09
        self.request_line = request_line

    def __repr__(self) -> str:
        return f"HttpParseError({self.status}, {self.reason!r})"


class UpstreamParseError(Exception):
    """An upstream response nginx refuses (it then tries the next upstream, "invalid_header",
    and answers 502); `reason` is the error_log text (logged at error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Error texts (nginx's ngx_http_client_errors and friends).
INVALID_METHOD = "client sent invalid method"
INVALID_REQUEST = "client sent invalid request"
INVALID_VERSION = "client sent invalid version"
INVALID_09_METHOD = "client sent invalid method in HTTP/0.9 request"
TOO_LONG_URI = "client sent too long URI"
TOO_LARGE_REQUEST = "client sent too large request"
INVALID_HOST_IN_LINE = "client sent invalid host in request line"
INVALID_HOST = "client sent invalid host header"
INVALID_CHUNKED = "client sent invalid chunked body"
UPSTREAM_INVALID_CHUNKED = "upstream sent invalid chunked response"
UPSTREAM_TOO_BIG_HEADER = "upstream sent too big header"
# Not an error: nginx logs this (at error) and relays the whole answer as an HTTP/0.9 body.
UPSTREAM_NO_VALID_HEADER = "upstream sent no valid HTTP/1.0 header"

# nginx truncates a quoted header line in "too long header line" to NGX_MAX_ERROR_STR - 300.
_MAX_LOGGED_LINE = 2048 - 300

_INT64_MAX = (1 << 63) - 1  # NGX_MAX_OFF_T_VALUE


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _lower(s: str) -> str:
    """ASCII-only lower case, like nginx's: str.lower() would also fold, say, the Kelvin sign
    into 'k' and let "CHUN\u212aED" pass for "chunked"."""
    return (
        s.lower()
        if s.isascii()
        else s.encode("utf-8", "surrogateescape").lower().decode("utf-8", "surrogateescape")
    )


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, slots=True)
class HeaderLimits:
    """The per-server settings nginx re-reads once Host has chosen the virtual server."""

    large_header_buffers: tuple[int, int] = (4, 8192)
    underscores_in_headers: bool = False
    ignore_invalid_headers: bool = True


@dataclass(slots=True)
class RequestHead:
    method: str
    # The request target exactly as received (absolute form keeps scheme and host; CONNECT has
    # the authority). nginx's $request_uri is `request_uri`, which differs for absolute forms.
    target: str
    version: tuple[int, int]  # (1, 1), (1, 0), (0, 9)
    headers: list[tuple[str, str]]  # as sent, in order, values stripped; ignored lines left out
    size: int  # bytes of the head, leading empty lines and the final empty line included
    request_line: str  # $request
    request_uri: str = ""  # $request_uri: "/p?x" of "http://h/p?x"
    uri: str = "/"  # $uri: decoded, dots resolved, slashes merged (merge_slashes)
    args: str = ""  # $args: not decoded
    target_host: str | None = None  # validated host of an absolute-form or CONNECT target
    protocol: str = ""  # $server_protocol: "HTTP/1.1", "" for HTTP/0.9
    # error_log texts (info) of header lines dropped by ignore_invalid_headers
    ignored: list[str] = field(default_factory=list)


@dataclass(slots=True)
class BodyFraming:
    content_length: int | None  # None when chunked or no body
    chunked: bool
    keepalive: bool  # after this request, per version and Connection
    expect_continue: bool  # "Expect: 100-continue" on HTTP/1.1
    upgrade: bool  # an Upgrade header and "upgrade" among the Connection tokens
    host: str  # $host: lower-case, port and one trailing dot removed; '' if none


@dataclass(slots=True)
class ResponseHead:
    """An upstream's answer. version (0, 9) means nginx found no status line: the whole
    buffer is body, relayed without a header (see UPSTREAM_NO_VALID_HEADER)."""

    version: tuple[int, int]
    status: int
    reason: str
    headers: list[tuple[str, str]]
    size: int
    status_line: str = ""  # "200 OK": nginx sends the upstream's own status text on
    content_length: int | None = None
    chunked: bool = False
    connection_close: bool = False  # HTTP/1.0 or "Connection: close": no keepalive


# --------------------------------------------------------------------------------------------
# status lines (ngx_http_header_filter_module.c)

STATUS_REASONS: dict[int, str] = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Not Allowed",
    406: "Not Acceptable",
    408: "Request Time-out",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    421: "Misdirected Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

# nginx's own codes for "bad request" flavours: the special response handler answers them
# with a 400 status line (and their own page).
_AS_BAD_REQUEST = frozenset({494, 495, 496, 497})

_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def status_line(status: int, version: str = "HTTP/1.1") -> bytes:
    """The status line nginx sends, CRLF included: b'HTTP/1.1 200 OK\\r\\n'.

    Codes missing from nginx's table go out as the number and one space ('HTTP/1.1 299 ');
    494-497 go out as '400 Bad Request'. nginx itself always writes HTTP/1.1. (For 444 and 499,
    and 408 from a timeout or `return 408`, nginx sends nothing and closes: the caller's call.)
    """
    key = (status, version)
    line = _STATUS_LINES.get(key)
    if line is None:
        code = 400 if status in _AS_BAD_REQUEST else status
        reason = STATUS_REASONS.get(code)
        text = f"{code} {reason}" if reason is not None else f"{code:03d} "
        line = f"{version} {text}\r\n".encode("latin-1")
        if len(_STATUS_LINES) < 4096:
            _STATUS_LINES[key] = line
    return line


# --------------------------------------------------------------------------------------------
# host validation (ngx_http_validate_host)


def validate_host(host: str | bytes) -> str | None:
    """nginx's host check: the host lower-cased, without port and one trailing dot, or None.

    Refused: '..' anywhere, '/', control characters and spaces, an empty host. An IPv6 literal
    keeps its brackets ('[::1]:80' -> '[::1]').
    """
    if isinstance(host, bytes):
        r = _validate_host(host)
        return None if r is None else _dec(r)
    # the same steps on text (what the header parser has at hand): nginx's rules only look at
    # ASCII, and lower() must stay ASCII-only like nginx's
    if _HOST_BAD_STR.search(host) is not None:
        return None
    if host[:1] == "[":
        end = host.find("]")
        host_len = len(host) if end < 0 else end + 1
    else:
        colon = host.find(":")
        host_len = len(host) if colon < 0 else colon
    if host_len and host.rfind(".") == host_len - 1:
        host_len -= 1
    if host_len == 0:
        return None
    return _lower(host[:host_len])


_HOST_BAD_STR = re.compile(r"[\x00-\x20\x7f/]|\.\.")
_HOST_BAD = re.compile(rb"[\x00-\x20\x7f/]|\.\.")


def _validate_host(h: bytes) -> bytes | None:
    if _HOST_BAD.search(h) is not None:
        return None
    if h[:1] == b"[":
        # an IPv6 literal ends at the first ']'; the ':'s inside are not a port
        end = h.find(b"]")
        host_len = len(h) if end < 0 else end + 1
    else:
        colon = h.find(b":")
        host_len = len(h) if colon < 0 else colon
    # nginx remembers the last dot anywhere (in the port too) and drops it if it ends the host
    if host_len and h.rfind(b".") == host_len - 1:
        host_len -= 1
    if host_len == 0:
        return None
    return h[:host_len].lower()


# --------------------------------------------------------------------------------------------
# URI normalisation (ngx_http_parse_complex_uri)

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})|%00")


def _split_uri(raw: bytes) -> tuple[bytes, bytes]:
    """Path and args of a request URI: args start at the first '?', a '#' ends either."""
    q = raw.find(b"?")
    h = raw.find(b"#")
    if h >= 0 and (q < 0 or h < q):
        return raw[:h], b""
    if q < 0:
        return raw, b""
    args = raw[q + 1 :]
    h = args.find(b"#")
    return raw[:q], (args if h < 0 else args[:h])


def _normalise_path(path: bytes, merge_slashes: bool) -> bytes | None:
    """nginx's $uri of a path: %XX decoded, '.' and '..' resolved, '//' merged. None where
    nginx answers 400 (a bad escape, %00, '..' above the root)."""
    if not path:
        return b"/"
    if b"%" in path:
        if _BAD_ESCAPE.search(path) is not None:
            return None
        # nginx decodes as it goes and then treats a decoded byte like a raw one (so %2F is
        # a slash and %2E%2E a parent), except that decoded '%', '#', '?' stay plain
        # characters, which they are after the split at the raw '?' and '#' anyway
        path = unquote_to_bytes(path)
    if b"/." not in path and (not merge_slashes or b"//" not in path):
        return path
    segs = path.split(b"/")
    out: list[bytes] = []
    trailing = False
    last = len(segs) - 1
    for i in range(1, len(segs)):
        s = segs[i]
        trailing = False
        if s == b".":
            trailing = True
        elif s == b"..":
            if not out:
                return None
            out.pop()
            trailing = True
        elif not s and (i == last or merge_slashes):
            trailing = i == last
        else:
            out.append(s)
    res = b"/" + b"/".join(out)
    if trailing and out:
        res += b"/"
    return res


def split_target(target: str, *, merge_slashes: bool = True) -> tuple[str, str, str | None]:
    """($uri, $args, host) of a request target, as nginx derives them from the request line.

    `target` is origin form ('/a/../b?x') or absolute form ('http://Host:8080/p?x', whose host
    is returned validated and lower-cased, without the port). Raises HttpParseError(400)
    where nginx does: 'client sent invalid request' for a bad URI,
    'client sent invalid host in request line' for a bad host.
    """
    raw = target.encode("utf-8", "surrogateescape")
    line = b"GET " + raw + b" HTTP/1.0\n"
    try:
        parsed = _scan_request_line(line, 0, len(line) - 1, True)
    except _LineError:
        raise HttpParseError(400, INVALID_REQUEST, request_line=target) from None
    assert parsed is not None
    uri, args, host = _process_uri(parsed, merge_slashes, target)
    return uri, args, host


# --------------------------------------------------------------------------------------------
# request line (ngx_http_parse_request_line)

_LEADING_EMPTY = re.compile(rb"[\r\n]*")
_FAST_REQUEST_LINE = re.compile(rb"([A-Z_-]+) (/[^\x00-\x20\x7f]*) HTTP/1\.([0-9])\r?\n")
_METHOD_CH = re.compile(rb"[A-Z_-]*")
_SPACES = re.compile(rb" *")
_SCHEMA_CH = re.compile(rb"[A-Za-z0-9+.-]*")
_HOST_CH = re.compile(rb"[A-Za-z0-9.-]*")
_IP_LITERAL_CH = re.compile(rb"[0-9A-Za-z:._~!$&'()*+,;=-]*")
_DIGITS = re.compile(rb"[0-9]*")
_URI_CH = re.compile(rb"[^\x00-\x20\x7f]*")
_CR, _LF, _SP, _SLASH, _COLON = 13, 10, 32, 47, 58


class _LineError(Exception):
    """The request line is refused at byte `at` (absolute offset)."""

    def __init__(self, at: int, reason: str, status: int = 400, http09: bool = False) -> None:
        self.at = at
        self.reason = reason
        self.status = status
        self.http09 = http09


@dataclass(slots=True)
class _Line:
    method: bytes
    target: bytes
    uri: bytes  # uri_start..uri_end: $request_uri
    empty_path: bool  # "http://h?x": nginx's $uri gets a '/'
    host: bytes | None  # host_start..host_end, port included
    major: int
    minor: int
    request_end: int  # end of $request (before CR/LF)
    end: int  # after the LF
    protocol: bytes


def _expect(buf: bytes, q: int, lim: int, literal: bytes) -> int:
    """Match `literal` at q; returns the offset after it, -1 if the data ends first."""
    avail = buf[q : q + len(literal)] if q + len(literal) <= lim else buf[q:lim]
    if literal.startswith(avail):
        return q + len(literal) if len(avail) == len(literal) else -1
    i = 0
    while avail[i] == literal[i]:
        i += 1
    raise _LineError(q + i, INVALID_REQUEST)


def _scan_request_line(buf: bytes, p: int, end: int, complete: bool) -> _Line | None:
    """Step-wise request line scan from p; `end` is the LF's offset when complete, else the
    end of the data. Returns None when more bytes are needed, raises _LineError at the byte
    where nginx stops."""
    lim = end + 1 if complete else end  # a complete line's LF is scanned like any byte
    q = _METHOD_CH.match(buf, p, lim).end()
    if q == lim:
        return None
    if q == p or buf[q] != _SP:
        raise _LineError(q, INVALID_METHOD)
    method = buf[p:q]
    connect = method == b"CONNECT"
    q = _SPACES.match(buf, q, lim).end()
    if q == lim:
        return None
    target_start = q
    host: bytes | None = None
    empty_path = False
    uri = b"/"  # what nginx takes when the target has no path: the "/" of "://" or "HTTP/"
    uri_start = -1
    c = buf[q]
    if c == _SLASH and not connect:
        uri_start = q
    else:
        if not connect:
            if not 0x61 <= (c | 0x20) <= 0x7A:
                raise _LineError(q, INVALID_REQUEST)
            q = _SCHEMA_CH.match(buf, q, lim).end()
            for want in (_COLON, _SLASH, _SLASH):
                if q == lim:
                    return None
                if buf[q] != want:
                    raise _LineError(q, INVALID_REQUEST)
                q += 1
        host_start = q
        if q == lim:
            return None
        if buf[q] == 0x5B:  # '[': an IP literal
            q = _IP_LITERAL_CH.match(buf, q + 1, lim).end()
            if q == lim:
                return None
            if buf[q] != 0x5D:
                raise _LineError(q, INVALID_REQUEST)
            q += 1
        else:
            q = _HOST_CH.match(buf, q, lim).end()
        if q == lim:
            return None
        port = buf[q] == _COLON
        if port:
            q = _DIGITS.match(buf, q + 1, lim).end()
            if q == lim:
                return None
        host = buf[host_start:q]
        c = buf[q]
        if connect:
            if not port or c != _SP:
                raise _LineError(q, INVALID_REQUEST)
        elif c == _SLASH:
            uri_start = q
        elif c == 0x3F:  # '?': "http://h?x" has an empty path
            uri_start = q
            empty_path = True
        elif c != _SP:
            raise _LineError(q, INVALID_REQUEST)
    if uri_start >= 0:
        q = _URI_CH.match(buf, q, lim).end()
        if q == lim:
            return None
        uri = buf[uri_start:q]
        c = buf[q]
        if c != _SP and c != _CR and c != _LF:
            raise _LineError(q, INVALID_REQUEST)
    target = buf[target_start:q]
    major, minor = 0, 9
    protocol = b""
    if c == _SP:
        q = _SPACES.match(buf, q, lim).end()
        if q == lim:
            return None
        c = buf[q]
        if c == 0x48:  # 'H'
            proto_start = q
            q = _expect(buf, q, lim, b"HTTP/")
            if q < 0:
                return None
            q, major, minor = _scan_version(buf, q, lim)
            if q < 0:
                return None
            if buf[q] == _SP:
                q = _SPACES.match(buf, q, lim).end()
                if q == lim:
                    return None
            c = buf[q]
            # nginx's $server_protocol runs to the end of the line, trailing spaces included
            protocol = buf[proto_start:q]
        if c != _CR and c != _LF:
            raise _LineError(q, INVALID_REQUEST)
    request_end = q
    if c == _CR:
        q += 1
        if q == lim:
            return None
        if buf[q] != _LF:
            raise _LineError(q, INVALID_REQUEST)
    if major == 0 and method != b"GET":
        raise _LineError(q, INVALID_09_METHOD, http09=True)
    return _Line(
        method=method,
        target=target,
        uri=uri,
        empty_path=empty_path,
        host=host,
        major=major,
        minor=minor,
        request_end=request_end,
        end=q + 1,
        protocol=protocol,
    )


def _scan_version(buf: bytes, q: int, lim: int) -> tuple[int, int, int]:
    """After "HTTP/": major '.' minor. Returns (offset after the digits, major, minor) or
    (-1, 0, 0) when the data ends first."""
    if q == lim:
        return -1, 0, 0
    c = buf[q]
    if c < 0x31 or c > 0x39:  # '0' is an invalid request, not an invalid version
        raise _LineError(q, INVALID_REQUEST)
    if c > 0x31:
        raise _LineError(q, INVALID_VERSION, 505)
    q += 1
    if q == lim:
        return -1, 0, 0
    c = buf[q]
    if 0x30 <= c <= 0x39:  # a second major digit makes it >= 10
        raise _LineError(q, INVALID_VERSION, 505)
    if c != 0x2E:
        raise _LineError(q, INVALID_REQUEST)
    q += 1
    e = _DIGITS.match(buf, q, lim).end()
    if e == q:
        if q == lim:
            return -1, 0, 0
        raise _LineError(q, INVALID_REQUEST)
    digits = buf[q:e]
    sig = digits.lstrip(b"0")
    if len(sig) >= 4:
        # nginx refuses a digit once the minor version exceeds 99
        raise _LineError(q + (len(digits) - len(sig)) + 3, INVALID_REQUEST)
    if e == lim:
        return -1, 0, 0
    c = buf[e]
    if c != _SP and c != _CR and c != _LF:
        raise _LineError(e, INVALID_REQUEST)
    return e, 1, int(sig or b"0")


def _process_uri(
    line: _Line, merge_slashes: bool, request_line: str
) -> tuple[str, str, str | None]:
    """ngx_http_process_request_uri and the request line host check, in nginx's order:
    ($uri, $args, validated host of the target)."""
    http09 = line.major == 0
    path, args = _split_uri(line.uri)
    norm = _normalise_path(b"/" + path if line.empty_path else path, merge_slashes)
    if norm is None:
        raise HttpParseError(400, INVALID_REQUEST, http09=http09, request_line=request_line)
    target_host = None
    if line.host is not None:
        h = _validate_host(line.host)
        if h is None:
            raise HttpParseError(
                400, INVALID_HOST_IN_LINE, http09=http09, request_line=request_line
            )
        target_host = _dec(h)
    return _dec(norm), _dec(args), target_host


_COMPLEX_URI = re.compile(rb"%|/\.|#|//")
_COMPLEX_URI_KEEP_SLASHES = re.compile(rb"%|/\.|#")


def _simple_uri(path: bytes, merge_slashes: bool) -> bool:
    """Whether nginx takes $uri of this origin-form URI as it is (no escapes, dot segments,
    merged slashes or fragment)."""
    return (_COMPLEX_URI if merge_slashes else _COMPLEX_URI_KEEP_SLASHES).search(path) is None


# --------------------------------------------------------------------------------------------
# header lines (ngx_http_parse_header_line)

# A complete header line in its common shape; anything else goes to _scan_header_line.
_FAST_HEADER = re.compile(rb"([A-Za-z0-9-]+):[ \t]*([^\x00\r\n]*)\r?\n")
_NAME_CH = re.compile(rb"[^\x00-\x20\x7f:]*")
_WS = re.compile(rb"[ \t]*")
_VALUE_CH = re.compile(rb"[^\x00\r\n]*")
_CRS = re.compile(rb"\r*")
_TOKEN = re.compile(rb"[A-Za-z0-9-]*")
_TOKEN_US = re.compile(rb"[A-Za-z0-9_-]*")


class _HeaderError(Exception):
    """A header line nginx refuses: detected at byte `at`; logged up to `header_end` and the
    byte there as \\xNN."""

    def __init__(self, at: int, header_end: int) -> None:
        self.at = at
        self.header_end = header_end


# _scan_header_line gives (name, value, header_end) for a complete line; header_end is one of
# these for the empty line that ends the head and for an upstream's repeated "HTTP/..." line
_END_OF_HEAD = -1
_IGNORED_LINE = -2
_END = (b"", b"", _END_OF_HEAD)
_IGNORE = (b"", b"", _IGNORED_LINE)


def _scan_header_line(
    buf: bytes, p: int, end: int, complete: bool, upstream: bool
) -> tuple[bytes, bytes, int] | None:
    """One header line from p; `end` is the LF's offset when complete, else the data's end."""
    lim = end + 1 if complete else end
    if p == lim:
        return None
    c = buf[p]
    if c == _LF:
        return _END
    if c == _CR:
        if p + 1 == lim:
            return None
        if buf[p + 1] == _LF:
            return _END
        raise _HeaderError(p + 1, p)
    q = _NAME_CH.match(buf, p, lim).end()
    if upstream and buf.startswith(b"HTTP/", p) and q >= p + 5:
        return _IGNORE if complete else None
    if q == lim:
        return None
    c = buf[q]
    if q == p:
        raise _HeaderError(p, p)  # a control character, space or ':' first
    if c == _COLON:
        j = _WS.match(buf, q + 1, lim).end()
        k = _VALUE_CH.match(buf, j, lim).end()
        if k == lim:
            return None
        c = buf[k]
        value = buf[j:k].rstrip(b" \t")
        header_end = j + len(value) if value else k
        if c == 0:
            raise _HeaderError(k, k)
        if c == _CR:
            e = _CRS.match(buf, k, lim).end()
            if e == lim:
                return None
            if buf[e] != _LF:
                raise _HeaderError(e, header_end)
        return buf[p:q], value, header_end
    if c == _CR:
        e = _CRS.match(buf, q, lim).end()
        if e == lim:
            return None
        if buf[e] != _LF:
            raise _HeaderError(e, q)
        return buf[p:q], b"", q
    if c == _LF:
        return buf[p:q], b"", q
    raise _HeaderError(q, q)  # a control character or space in the name


def _invalid_line_text(buf: bytes, p: int, header_end: int) -> str:
    return f"{_dec(buf[p:header_end])}\\x{buf[header_end]:02x}..."


# --------------------------------------------------------------------------------------------
# nginx's header buffers


class _Buffers:
    """Replays ngx_http_alloc_large_header_buffer: where each line of the head lands."""

    __slots__ = ("cap", "pos", "busy", "num", "size")

    def __init__(self, first: int, pos: int, large: tuple[int, int]) -> None:
        self.cap = first
        self.pos = pos
        self.busy = 0
        self.num, self.size = large

    def limit(self) -> int:
        """How many bytes of the next line nginx takes in before it gives up on the line."""
        room = self.cap - self.pos
        if room >= self.size or self.busy >= self.num:
            return room
        return self.size

    def place(self, length: int) -> None:
        """A complete line of `length` bytes (within limit()) goes in."""
        if length <= self.cap - self.pos:
            self.pos += length
        else:
            self.cap = self.size
            self.pos = length
            self.busy += 1


# --------------------------------------------------------------------------------------------
# request head


_UNIQUE = frozenset(
    {
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-match",
        b"if-none-match",
        b"content-length",
        b"content-range",
        b"if-range",
        b"transfer-encoding",
        b"expect",
        b"authorization",
    }
)


def _duplicate(
    kind: str, name: str, value: str, prev: tuple[bytes, bytes] | tuple[str, str]
) -> str:
    pn, pv = (_dec(x) if isinstance(x, bytes) else x for x in prev)
    return f'client sent duplicate {kind}: "{name}: {value}", previous value: "{pn}: {pv}"'


# The fast path: a complete head in nginx's first buffer, with a request line and header
# lines of the common shapes. Then no buffer limit can matter, and one fullmatch checks all the
# header lines while one findall takes them apart; anything else goes the step-wise way.
_FAST_PATH = True
_HEAD_END = re.compile(rb"\n\r?\n")
_HEADER_BLOCK = re.compile(r"(?:[A-Za-z0-9-]+:[ \t]*[^\x00\r\n]*\r?\n)*")
_HEADER_PAIR = re.compile(r"([A-Za-z0-9-]+):[ \t]*((?:[^\x00\r\n]*[^\x00\r\n \t])?)[ \t]*\r?\n")
_UNIQUE_STR = frozenset(u.decode() for u in _UNIQUE)
_WATCHED = _UNIQUE_STR | {"host"}


def _fast_head(
    data: bytes, start: int, rl: re.Match[bytes], end: re.Match[bytes], merge_slashes: bool
) -> RequestHead | None:
    block = data[rl.end() : end.start() + 1].decode("utf-8", "surrogateescape")
    if _HEADER_BLOCK.fullmatch(block) is None:
        return None
    lf = rl.end() - 1
    request_line = _dec(data[start : lf - 1 if data[lf - 1] == _CR else lf])
    path = rl.group(2)
    target = _dec(path)
    if _simple_uri(path, merge_slashes):
        qm = target.find("?")
        uri, args = (target, "") if qm < 0 else (target[:qm], target[qm + 1 :])
    else:
        line = _Line(path, path, path, False, None, 1, 1, 0, 0, b"")
        uri, args, _ = _process_uri(line, merge_slashes, request_line)
    headers: list[tuple[str, str]] = _HEADER_PAIR.findall(block)
    host_line: tuple[str, str] | None = None
    seen: dict[str, tuple[str, str]] | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _WATCHED:
            if lname == "host":
                if host_line is not None:
                    raise HttpParseError(
                        400,
                        _duplicate("host header", name, value, host_line),
                        request_line=request_line,
                    )
                host_line = (name, value)
                if validate_host(value) is None:
                    raise HttpParseError(400, INVALID_HOST, request_line=request_line)
            else:
                if seen is None:
                    seen = {}
                prev = seen.get(lname)
                if prev is not None:
                    raise HttpParseError(
                        400,
                        _duplicate("header line", name, value, prev),
                        request_line=request_line,
                    )
                seen[lname] = (name, value)
    minor = data[rl.start(3)] - 0x30
    return RequestHead(
        rl.group(1).decode(),
        target,
        (1, minor),
        headers,
        end.end(),
        request_line,
        target,
        uri,
        args,
        None,
        _PROTOCOLS[minor],
    )


_PROTOCOLS = [f"HTTP/1.{d}" for d in range(10)]


def parse_request_head(
    buf: bytes | bytearray,
    *,
    header_buffer_size: int = 1024,
    large_header_buffers: tuple[int, int] = (4, 8192),
    underscores_in_headers: bool = False,
    ignore_invalid_headers: bool = True,
    merge_slashes: bool = True,
    server_limits: Callable[[str], HeaderLimits | None] | None = None,
) -> RequestHead | None:
    """Parse the request head at the start of `buf` as nginx does.

    Returns None while more bytes are needed and the bytes so far are acceptable; raises
    HttpParseError as soon as nginx would answer with an error. The settings are the default
    server's (client_header_buffer_size, large_client_header_buffers, underscores_in_headers,
    ignore_invalid_headers, merge_slashes); `server_limits(host)` may return the settings of
    the server that the host selects, which nginx applies to the header lines after Host.
    """
    data = bytes(buf) if isinstance(buf, bytearray) else buf
    n = len(data)
    start = _LEADING_EMPTY.match(data).end()
    if start == n:
        return None
    if _FAST_PATH:
        rl = _FAST_REQUEST_LINE.match(data, start)
        if rl is not None:
            end = _HEAD_END.search(data, rl.end() - 1)
            if (
                end is not None
                # nginx reuses its first buffer while it holds nothing but empty lines
                and start % header_buffer_size + end.end() - start <= header_buffer_size
                and rl.group(1) != b"CONNECT"
            ):
                head = _fast_head(data, start, rl, end, merge_slashes)
                if head is not None:
                    return head
    bufs = _Buffers(header_buffer_size, start % header_buffer_size, large_header_buffers)
    line = _request_line(data, start, bufs)
    if line is None:
        return None
    request_line = _dec(data[start : line.request_end])
    path = line.uri
    if line.host is None and not line.empty_path and _simple_uri(path, merge_slashes):
        qm = path.find(b"?")
        if qm < 0:
            uri, args = _dec(path), ""
        else:
            uri, args = _dec(path[:qm]), _dec(path[qm + 1 :])
        target_host = None
    else:
        uri, args, target_host = _process_uri(line, merge_slashes, request_line)
    head = RequestHead(
        method=_dec(line.method),
        target=_dec(line.target),
        version=(line.major, line.minor),
        headers=[],
        size=line.end,
        request_line=request_line,
        request_uri=_dec(path),
        uri=uri,
        args=args,
        target_host=target_host,
        protocol=_dec(line.protocol),
    )
    if line.major == 0:
        return head  # HTTP/0.9 has no headers
    underscores = underscores_in_headers
    ignore_invalid = ignore_invalid_headers
    if target_host is not None and server_limits is not None:
        new = server_limits(target_host)
        if new is not None:
            bufs.num, bufs.size = new.large_header_buffers
            underscores = new.underscores_in_headers
            ignore_invalid = new.ignore_invalid_headers

    headers = head.headers
    host_line: tuple[bytes, bytes] | None = None
    server_known = target_host is not None
    seen: dict[bytes, tuple[bytes, bytes]] = {}
    # the last header line: where it started (nginx's header_name_start), and where nginx
    # wrote the NULs that end the name and the value of a line it took
    prev: tuple[int, int, int] = (-1, -1, -1)
    p = line.end
    fast_header = _FAST_HEADER.match
    while True:
        lf = data.find(b"\n", p)
        limit = bufs.limit()
        m = fast_header(data, p) if 0 <= lf < p + limit else None
        if m is not None:
            name = m.group(1)
            value = m.group(2).rstrip(b" \t")
            valid = True
            header_end = m.start(2) + len(value)
        else:
            complete = lf >= 0
            try:
                parsed = _scan_header_line(data, p, lf if complete else n, complete, False)
            except _HeaderError as e:
                if e.at - p < limit:
                    text = _invalid_line_text(data, p, e.header_end)
                    raise HttpParseError(
                        400, f'client sent invalid header line: "{text}"', request_line=request_line
                    ) from None
                parsed = None  # nginx runs out of buffer before it gets to the bad byte
            length = (lf + 1 if parsed is not None else n) - p
            if parsed is None or length > limit:
                if length < limit:
                    return None
                raise HttpParseError(
                    494, _too_long(data, p, limit, prev), request_line=request_line
                )
            name, value, header_end = parsed
            if header_end == _END_OF_HEAD:
                bufs.place(length)
                head.size = lf + 1
                return head
            valid = (_TOKEN_US if underscores else _TOKEN).fullmatch(name) is not None
        bufs.place(lf + 1 - p)
        line_start = p
        p = lf + 1
        if not valid and ignore_invalid:
            prev = (line_start, -1, -1)
            head.ignored.append(
                f'client sent invalid header line: "{_dec(data[line_start:header_end])}"'
            )
            continue
        prev = (line_start, line_start + len(name), header_end)
        lname = name.lower()
        if lname == b"host":
            if host_line is not None:
                raise HttpParseError(
                    400,
                    _duplicate("host header", _dec(name), _dec(value), host_line),
                    request_line=request_line,
                )
            host_line = (name, value)
            h = _validate_host(value)
            if h is None:
                raise HttpParseError(400, INVALID_HOST, request_line=request_line)
            if not server_known:
                server_known = True
                if server_limits is not None:
                    new = server_limits(_dec(h))
                    if new is not None:
                        bufs.num, bufs.size = new.large_header_buffers
                        underscores = new.underscores_in_headers
                        ignore_invalid = new.ignore_invalid_headers
        elif lname in _UNIQUE:
            earlier = seen.get(lname)
            if earlier is not None:
                raise HttpParseError(
                    400,
                    _duplicate("header line", _dec(name), _dec(value), earlier),
                    request_line=request_line,
                )
            seen[lname] = (name, value)
        headers.append((_dec(name), _dec(value)))


def _request_line(data: bytes, start: int, bufs: _Buffers) -> _Line | None:
    """The request line at `start`, placed into nginx's buffers; None if incomplete."""
    lf = data.find(b"\n", start)
    limit = bufs.limit()
    fast = _FAST_REQUEST_LINE.match(data, start) if 0 <= lf < start + limit else None
    if fast is not None and fast.group(1) != b"CONNECT":
        digit = fast.start(3)
        line = _Line(
            method=fast.group(1),
            target=fast.group(2),
            uri=fast.group(2),
            empty_path=False,
            host=None,
            major=1,
            minor=data[digit] - 0x30,
            request_end=lf - 1 if data[lf - 1] == _CR else lf,
            end=lf + 1,
            protocol=data[digit - 7 : digit + 1],
        )
        bufs.place(lf + 1 - start)
        return line
    complete = lf >= 0
    parsed: _Line | None
    try:
        parsed = _scan_request_line(data, start, lf if complete else len(data), complete)
    except _LineError as e:
        if e.at - start < limit:
            raise HttpParseError(
                e.status, e.reason, http09=e.http09, request_line=_line_text(data, start)
            ) from None
        parsed = None  # the line outgrows nginx's buffer before the bad byte
    length = (lf + 1 if parsed is not None else len(data)) - start
    if parsed is None or length > limit:
        if length < limit:
            return None
        raise HttpParseError(414, TOO_LONG_URI, request_line=_dec(data[start : start + limit]))
    bufs.place(length)
    return parsed


def _line_text(data: bytes, start: int) -> str:
    """What nginx logs as $request before the request line is complete: up to CR or LF."""
    m = re.compile(rb"[^\r\n]*").match(data, start)
    assert m is not None
    return _dec(data[start : m.end()])


def _too_long(data: bytes, p: int, limit: int, prev: tuple[int, int, int]) -> str:
    if limit == 0:
        # the previous line filled the last buffer: nginx quotes that line, as it is in its
        # buffer by now, with NULs after the name and the value of a line it took
        start, name_end, value_end = prev
        if start < 0:
            return TOO_LARGE_REQUEST
        shown = bytearray(data[start : min(p, start + _MAX_LOGGED_LINE)])
        for i in (name_end, value_end):
            if start <= i < start + len(shown):
                shown[i - start] = 0
        text = _dec(bytes(shown))
    else:
        text = _dec(data[p : p + min(limit, _MAX_LOGGED_LINE)])
    return f'client sent too long header line: "{text}..."'


def discardable_prefix(buf: bytes | bytearray, header_buffer_size: int = 1024) -> int:
    """How many leading bytes of `buf` (empty lines before a request) a caller may drop
    without changing any later decision: nginx keeps reusing its first buffer for them, so
    only their count modulo the buffer size matters."""
    k = _LEADING_EMPTY.match(buf).end()
    return k - k % header_buffer_size


# --------------------------------------------------------------------------------------------
# request framing (ngx_http_process_request_header and the header handlers)


def _atoof(value: str) -> int | None:
    """ngx_atoof: digits only, no sign, no spaces, at most 2^63-1."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    n = int(value)
    return n if n <= _INT64_MAX else None


def request_framing(head: RequestHead, host_from_target: str | None) -> BodyFraming:
    """The checks nginx makes once the head is complete, and what they decide.

    Raises HttpParseError as nginx does: duplicate or invalid Host, duplicate unique headers
    (also caught by parse_request_head, in header order), HTTP/1.1 without Host, an invalid
    Content-Length, Transfer-Encoding on HTTP/1.0, both Content-Length and
    Transfer-Encoding, a Transfer-Encoding other than "chunked" (501), CONNECT and TRACE (405).
    """
    rl = head.request_line
    http09 = head.version < (1, 0)
    host: str | None = host_from_target
    host_line: tuple[str, str] | None = None
    seen: dict[str, tuple[str, str]] = {}
    connection = 0  # nginx's connection_type: 0, 1 close, 2 keep-alive
    conn_tokens: list[str] = []
    upgrade = False
    for name, value in head.headers:
        lname = _lower(name)
        if lname == "host":
            if host_line is not None:
                raise HttpParseError(
                    400, _duplicate("host header", name, value, host_line), request_line=rl
                )
            host_line = (name, value)
            h = validate_host(value)
            if h is None:
                raise HttpParseError(400, INVALID_HOST, request_line=rl)
            if host is None:
                host = h
        elif lname in _UNIQUE_STR:
            prev_s = seen.get(lname)
            if prev_s is not None:
                raise HttpParseError(
                    400, _duplicate("header line", name, value, prev_s), request_line=rl
                )
            seen[lname] = (name, value)
        elif lname == "connection":
            low = _lower(value)
            # nginx looks for the words anywhere in the value, last header wins
            if "close" in low:
                connection = 1
            elif "keep-alive" in low:
                connection = 2
            conn_tokens.extend(t.strip() for t in low.split(","))
        elif lname == "upgrade":
            upgrade = True
    if host_line is None and head.version > (1, 0):
        raise HttpParseError(
            400, 'client sent HTTP/1.1 request without "Host" header', request_line=rl
        )
    content_length: int | None = None
    cl = seen.get("content-length")
    if cl is not None:
        content_length = _atoof(cl[1])
        if content_length is None:
            raise HttpParseError(
                400, 'client sent invalid "Content-Length" header', request_line=rl
            )
    chunked = False
    te = seen.get("transfer-encoding")
    if te is not None:
        if head.version < (1, 1):
            raise HttpParseError(
                400,
                'client sent HTTP/1.0 request with "Transfer-Encoding" header',
                request_line=rl,
            )
        if _lower(te[1]) == "chunked":
            if cl is not None:
                raise HttpParseError(
                    400,
                    'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
                    request_line=rl,
                )
            chunked = True
        else:
            raise HttpParseError(
                501, f'client sent unknown "Transfer-Encoding": "{te[1]}"', request_line=rl
            )
    if head.method == "CONNECT":
        raise HttpParseError(405, "client sent CONNECT method", request_line=rl)
    if head.method == "TRACE":
        raise HttpParseError(405, "client sent TRACE method", request_line=rl)
    if connection == 1:
        keepalive = False
    elif connection == 2:
        keepalive = True
    else:
        keepalive = head.version > (1, 0)
    expect = seen.get("expect")
    return BodyFraming(
        content_length=None if chunked else content_length,
        chunked=chunked,
        keepalive=keepalive and not http09,
        expect_continue=(
            expect is not None and head.version >= (1, 1) and _lower(expect[1]) == "100-continue"
        ),
        upgrade=upgrade and "upgrade" in conn_tokens,
        host=host or "",
    )


# --------------------------------------------------------------------------------------------
# chunked bodies (ngx_http_parse_chunked)

# States, named after the byte (run) expected next.
_C_SIZE = 0  # hex digits of a chunk size, then ';', ' ', '\t' or CR
_C_EXT = 1  # chunk extension: anything up to CR
_C_SIZE_LF = 2  # the LF after the size line's CR
_C_DATA = 3
_C_DATA_CR = 4  # the CR after the data
_C_DATA_LF = 5
_C_TRAILER = 6  # start of a trailer line, or the CR of the final empty line
_C_TRAILER_LINE = 7  # a trailer line: anything up to CR
_C_TRAILER_LF = 8  # the LF ending a trailer line
_C_END_LF = 9  # the LF of the final empty line
_C_DONE = 10
_C_FAILED = 11

_HEX = re.compile(rb"[0-9A-Fa-f]*")
_NOT_CRLF = re.compile(rb"[^\r\n]*")
_SIZE_LIMIT = _INT64_MAX // 16  # nginx refuses any further byte of a size above this
_EXT_START = frozenset(b"; \t")


class ChunkedDecoder:
    """Incremental decoder of a chunked body, with nginx's rules.

    feed() returns the decoded data pieces (slices of the input; the input itself when it is
    all chunk data). It raises HttpParseError(400, 'client sent invalid chunked body') at the
    first byte nginx refuses, and HttpParseError(413, 'client intended to send too large
    chunked body: N+M bytes') when a chunk would take the body over `max_size`
    (client_max_body_size; None or 0: no limit), checked as nginx does once the first byte of
    that chunk's data is there. Chunk extensions and trailer lines are skipped, never kept.
    `done` is set after the last chunk and the trailers; `rest` holds what followed the body.

    `upstream=True` raises UpstreamParseError('upstream sent invalid chunked response')
    instead; `allow_bare_lf=True` also takes a lone LF as a line end, as nginx 1.22 did
    (mainline wants CRLF).
    """

    __slots__ = (
        "max_size",
        "received",
        "done",
        "rest",
        "_state",
        "_size",
        "_digits",
        "_check",
        "_upstream",
        "_bare_lf",
    )

    def __init__(
        self, max_size: int | None = None, *, upstream: bool = False, allow_bare_lf: bool = False
    ) -> None:
        self.max_size = max_size or None
        self.received = 0  # bytes announced by the chunks so far (nginx's content_length_n)
        self.done = False
        self.rest = b""
        self._state = _C_SIZE
        self._size = 0  # the size being read, then what is left of the chunk's data
        self._digits = 0
        self._check = False  # the max_size check waits for the chunk's first data byte
        self._upstream = upstream
        self._bare_lf = allow_bare_lf

    def _invalid(self) -> Exception:
        self._state = _C_FAILED
        if self._upstream:
            return UpstreamParseError(UPSTREAM_INVALID_CHUNKED)
        return HttpParseError(400, INVALID_CHUNKED)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self.done:
            self.rest += bytes(data)
            return []
        if self._state == _C_FAILED:
            raise self._invalid()
        buf = data if isinstance(data, bytes) else bytes(data)
        n = len(buf)
        out: list[bytes] = []
        p = 0
        state = self._state
        bare_lf = self._bare_lf
        while p < n:
            if state == _C_DATA:
                if self._check:
                    self._check = False
                    self._check_size()
                left = self._size
                if left >= n - p:
                    out.append(buf if p == 0 else buf[p:])
                    self._size = left - (n - p)
                    p = n
                    if self._size == 0:
                        state = _C_DATA_CR
                    break
                out.append(buf[p : p + left])
                p += left
                self._size = 0
                state = _C_DATA_CR
            elif state == _C_SIZE:
                e = _HEX.match(buf, p).end()
                if e > p:
                    self._add_digits(buf[p:e])
                    p = e
                    if p == n:
                        break
                c = buf[p]
                if self._digits == 0 or self._size > _SIZE_LIMIT:
                    raise self._invalid()
                p += 1
                if c == _CR:
                    state = _C_SIZE_LF
                elif c in _EXT_START:
                    state = _C_EXT
                elif c == _LF and bare_lf:
                    state = self._size_line_done()
                else:
                    raise self._invalid()
            elif state in (_C_EXT, _C_TRAILER_LINE):
                p = _NOT_CRLF.match(buf, p).end()
                if p == n:
                    break
                c = buf[p]
                p += 1
                if c == _CR:
                    state = _C_SIZE_LF if state == _C_EXT else _C_TRAILER_LF
                elif bare_lf:
                    state = self._size_line_done() if state == _C_EXT else _C_TRAILER
                else:
                    raise self._invalid()
            else:
                c = buf[p]
                p += 1
                if state == _C_SIZE_LF:
                    if c != _LF:
                        raise self._invalid()
                    state = self._size_line_done()
                elif state == _C_DATA_CR:
                    if c == _CR:
                        state = _C_DATA_LF
                    elif c == _LF and bare_lf:
                        state = _C_SIZE
                    else:
                        raise self._invalid()
                elif state in (_C_DATA_LF, _C_TRAILER_LF):
                    if c != _LF:
                        raise self._invalid()
                    state = _C_SIZE if state == _C_DATA_LF else _C_TRAILER
                elif state == _C_TRAILER:
                    if c == _CR:
                        state = _C_END_LF
                    elif c == _LF:
                        if not bare_lf:
                            raise self._invalid()
                        state = self._finish(buf, p)
                        break
                    else:
                        state = _C_TRAILER_LINE
                else:  # _C_END_LF
                    if c != _LF:
                        raise self._invalid()
                    state = self._finish(buf, p)
                    break
        self._state = state
        return out

    def _add_digits(self, run: bytes) -> None:
        # nginx checks the size against _SIZE_LIMIT before taking each further digit
        size = self._size
        if self._digits == 0:
            size = int(run[:1], 16)
            rest = run[1:]
        else:
            rest = run
        self._digits += len(run)
        if size == 0:
            rest = rest.lstrip(b"0")
        if rest:
            if len(rest) > 16:
                raise self._invalid()
            before_last = (size << (4 * (len(rest) - 1))) | int(rest[:-1] or b"0", 16)
            if before_last > _SIZE_LIMIT:
                raise self._invalid()
            size = (before_last << 4) | int(rest[-1:], 16)
        if size > _INT64_MAX - 5:
            raise self._invalid()
        self._size = size

    def _size_line_done(self) -> int:
        self._digits = 0
        if self._size == 0:
            return _C_TRAILER
        self._check = True
        return _C_DATA

    def _check_size(self) -> None:
        size = self._size
        if self.max_size is not None and self.max_size - self.received < size:
            self._state = _C_FAILED
            raise HttpParseError(
                413,
                f"client intended to send too large chunked body: {self.received}+{size} bytes",
            )
        self.received += size

    def _finish(self, buf: bytes, p: int) -> int:
        self.done = True
        self.rest = buf[p:]
        return _C_DONE


def encode_chunk(data: bytes) -> bytes:
    """One chunk as nginx's chunked filter writes it (lower-case hex size); b'' for no data,
    since an empty chunk would end the body: that is LAST_CHUNK."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# --------------------------------------------------------------------------------------------
# upstream response head (ngx_http_parse_status_line, the proxy and upstream modules)

_STATUS_LINE = re.compile(rb"HTTP/([1-9][0-9]*)\.([0-9]+) +([0-9]{3})(?:([ .])([^\r\n]*))?\r?\n")
# every prefix of a status line that may still become one
_STATUS_PREFIX = re.compile(
    rb"(?:H(?:T(?:T(?:P(?:/(?:[1-9][0-9]*(?:\.(?:[0-9]+(?: +(?:[0-9]{1,2}|[0-9]{3}"
    rb"(?:[ .][^\r\n]*)?\r?)?)?)?)?)?)?)?)?)?)?"
)
_VERSION_DIGITS = re.compile(rb"HTTP/([0-9]*)(?:\.([0-9]*))?")


def _version_overflow(buf: bytes, n: int) -> bool:
    """nginx refuses a version digit once major or minor exceeds 99."""
    m = _VERSION_DIGITS.match(buf, 0, n)
    if m is None:
        return False
    return any(g is not None and len(g.lstrip(b"0")) >= 4 for g in m.groups())


class _UpstreamHeaders:
    """The upstream module's header handlers that can refuse a response (mainline)."""

    __slots__ = ("content_length", "cl_line", "te_line", "chunked", "close")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.cl_line: tuple[str, str] | None = None
        self.te_line: tuple[str, str] | None = None
        self.chunked = False
        self.close = False

    def add(self, name: str, value: str) -> None:
        lname = _lower(name)
        if lname == "content-length":
            if self.cl_line is not None:
                raise UpstreamParseError(_upstream_duplicate(name, value, self.cl_line))
            if self.te_line is not None:
                raise UpstreamParseError(_UPSTREAM_CL_AND_TE)
            self.cl_line = (name, value)
            self.content_length = _atoof(value)
            if self.content_length is None:
                raise UpstreamParseError(
                    f'upstream sent invalid "Content-Length" header: "{name}: {value}"'
                )
        elif lname == "transfer-encoding":
            if self.te_line is not None:
                raise UpstreamParseError(_upstream_duplicate(name, value, self.te_line))
            if self.cl_line is not None:
                raise UpstreamParseError(_UPSTREAM_CL_AND_TE)
            self.te_line = (name, value)
            if _lower(value) != "chunked":
                raise UpstreamParseError(f'upstream sent unknown "Transfer-Encoding": "{value}"')
            self.chunked = True
        elif lname == "connection" and "close" in _lower(value):
            self.close = True


_UPSTREAM_CL_AND_TE = (
    'upstream sent "Content-Length" and "Transfer-Encoding" headers at the same time'
)


def _upstream_duplicate(name: str, value: str, prev: tuple[str, str]) -> str:
    return (
        f'upstream sent duplicate header line: "{name}: {value}", '
        f'previous value: "{prev[0]}: {prev[1]}"'
    )


def parse_response_head(buf: bytes | bytearray, max_size: int) -> ResponseHead | None:
    """Parse an upstream's status line and headers as nginx's proxy module does.

    `max_size` is proxy_buffer_size: a head that does not end within it raises
    UpstreamParseError('upstream sent too big header'). An answer that does not start with a
    valid status line is, as in nginx, an HTTP/0.9 answer: version (0, 9), status 200, no
    headers, size 0 (all of it is body; nginx logs UPSTREAM_NO_VALID_HEADER and relays it
    without a header). Returns None while more bytes are needed.
    """
    data = bytes(buf) if isinstance(buf, bytearray) else buf
    n = min(len(data), max_size)
    m = _STATUS_LINE.match(data, 0, n)
    if m is None or _version_overflow(data, m.end()):
        lf = data.find(b"\n", 0, n)
        partial = data[:n] if lf < 0 else None
        if (
            partial is not None
            and _STATUS_PREFIX.fullmatch(partial) is not None
            and not _version_overflow(data, n)
        ):
            if len(data) >= max_size:
                raise UpstreamParseError(UPSTREAM_TOO_BIG_HEADER)
            return None
        return ResponseHead(
            version=(0, 9), status=200, reason="", headers=[], size=0, connection_close=True
        )
    major = int(m.group(1))
    minor = int(m.group(2))
    status = int(m.group(3))
    text = m.group(5) or b""
    status_text = data[m.start(3) : m.end(5) if m.group(5) is not None else m.end(3)]
    state = _UpstreamHeaders()
    headers: list[tuple[str, str]] = []
    p = m.end()
    end = _HEAD_END.search(data, p - 1, n) if _FAST_PATH else None
    block = data[p : end.start() + 1].decode("utf-8", "surrogateescape") if end else ""
    if end is not None and _UPSTREAM_HEADER_BLOCK.fullmatch(block) is not None:
        # the fast path, as for requests: every line of the common shape, one findall
        headers = _UPSTREAM_HEADER_PAIR.findall(block)
        for name, value in headers:
            if name.lower() in _UPSTREAM_WATCHED:
                state.add(name, value)
        p = end.end()
    else:
        p = _upstream_header_lines(data, p, n, max_size, state, headers)
        if p < 0:
            return None
    return ResponseHead(
        version=(major, minor),
        status=status,
        reason=_dec(text),
        headers=headers,
        size=p,
        status_line=_dec(status_text),
        content_length=state.content_length,
        chunked=state.chunked,
        connection_close=state.close or (major, minor) < (1, 1),
    )


_UPSTREAM_HEADER_BLOCK = re.compile(r"(?:[A-Za-z0-9_-]+:[ \t]*[^\x00\r\n]*\r?\n)*")
_UPSTREAM_HEADER_PAIR = re.compile(
    r"([A-Za-z0-9_-]+):[ \t]*((?:[^\x00\r\n]*[^\x00\r\n \t])?)[ \t]*\r?\n"
)
_UPSTREAM_WATCHED = frozenset({"content-length", "transfer-encoding", "connection"})


def _upstream_header_lines(
    data: bytes,
    p: int,
    n: int,
    max_size: int,
    state: _UpstreamHeaders,
    headers: list[tuple[str, str]],
) -> int:
    """The header lines from p, step by step: the offset after the head, -1 for more."""
    while True:
        lf = data.find(b"\n", p, n)
        complete = lf >= 0
        try:
            parsed = _scan_header_line(data, p, lf if complete else n, complete, True)
        except _HeaderError as e:
            raise UpstreamParseError(
                f'upstream sent invalid header: "{_invalid_line_text(data, p, e.header_end)}"'
            ) from None
        if parsed is None:
            if len(data) >= max_size:
                raise UpstreamParseError(UPSTREAM_TOO_BIG_HEADER)
            return -1
        name, value, header_end = parsed
        p = lf + 1
        if header_end == _END_OF_HEAD:
            return p
        if header_end == _IGNORED_LINE:
            continue
        sname, svalue = _dec(name), _dec(value)
        state.add(sname, svalue)
        headers.append((sname, svalue))


def response_framing(head: ResponseHead, request_method: str) -> tuple[int | None, bool, bool]:
    """(content_length or None, chunked, read until close) of an upstream's answer.

    No body after HEAD, 1xx, 204 and 304 (nginx's proxy knows no 1xx but 101, which it
    turns into a tunnel); then chunked, then Content-Length, else the body lasts until the
    upstream closes (and always so for an HTTP/0.9 answer). Raises UpstreamParseError for the
    header combinations mainline nginx refuses.
    """
    if head.version < (1, 0):
        return None, False, True
    state = _UpstreamHeaders()
    for name, value in head.headers:
        state.add(name, value)
    if request_method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return 0, False, False
    if state.chunked:
        return None, True, False
    if state.content_length is not None:
        return state.content_length, False, False
    return None, False, True
