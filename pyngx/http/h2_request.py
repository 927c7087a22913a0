"""The request head of one HTTP/2 stream, checked as nginx checks it (sans-I/O).

nginx walks the decoded header block field by field (ngx_http_v2_state_process_header):
pseudo-headers (`:method`, `:path`, `:scheme`, `:authority`) and regular fields are validated
as they come and the first bad one answers 400 before the request line exists; `:authority`
is entered as a `host` field; `cookie` fields are collected and joined with "; " into one
field at the end (ngx_http_v2_construct_cookie_header). Then the request line is built
("GET /x HTTP/2.0") and ngx_http_process_request_header's checks run (Host present and valid,
Content-Length, Transfer-Encoding).

`parse_head` returns an H2Head: `error` holds the info line of a 400 (or 501), `notes` the
info lines of fields that were ignored (`ignore_invalid_headers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Methods nginx knows by name (ngx_http_v2_parse_method); others must be [A-Z_-]+.
_KNOWN_METHODS = frozenset(
    (
        "GET",
        "POST",
        "HEAD",
        "OPTIONS",
        "PROPFIND",
        "PUT",
        "MKCOL",
        "DELETE",
        "COPY",
        "MOVE",
        "PROPPATCH",
        "LOCK",
        "UNLOCK",
        "PATCH",
        "TRACE",
        "CONNECT",
    )
)
_METHOD_RE = re.compile(r"[A-Z_-]+\Z")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
# A header name is fine when made of these (and '_' with underscores_in_headers).
_NAME_OK = re.compile(rb"[a-z0-9-]+\Z")
_NAME_OK_US = re.compile(rb"[a-z0-9_-]+\Z")
# Bytes that make a name a protocol error (400), not just an invalid (ignorable) header.
_NAME_BAD = re.compile(rb"[\x00-\x20\x7f:A-Z]")
_VALUE_BAD = re.compile(rb"[\x00\r\n]")
# Headers nginx keeps one of (ngx_http_process_unique_header_line): a second one is a 400.
_UNIQUE = frozenset(
    (
        "content-length",
        "content-range",
        "if-modified-since",
        "if-unmodified-since",
        "if-match",
        "if-none-match",
        "if-range",
        "transfer-encoding",
        "expect",
        "authorization",
    )
)
_WHILE = " while reading client request headers"


@dataclass(slots=True)
class H2Head:
    method: str = ""
    path: str = ""
    scheme: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    host: str | None = None  # the Host value as received (from :authority or host)
    content_length: int | None = None
    request_line: str = ""
    status: int = 0  # 400/501 when the head is refused
    error: str = ""  # the info line for that status
    notes: list[str] = field(default_factory=list)
    size: int = 0  # decoded bytes of names and values (nginx's header limit counts these)


def parse_head(
    fields: list[tuple[bytes, bytes]],
    *,
    underscores: bool = False,
    ignore_invalid: bool = True,
    ended: bool = False,
) -> H2Head:
    """Check one stream's decoded header block (`ended`: it carried END_STREAM)."""
    head = H2Head()
    headers = head.headers
    cookies: list[str] = []
    seen: dict[str, str] = {}
    name_ok = _NAME_OK_US if underscores else _NAME_OK
    for raw_name, raw_value in fields:
        head.size += len(raw_name) + len(raw_value)
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        pseudo = raw_name[:1] == b":"
        check = raw_name[1:] if pseudo else raw_name
        invalid = False
        if not name_ok.match(check):
            if _NAME_BAD.search(check) or not check:
                return _fail(head, f'client sent invalid header name: "{name}"')
            invalid = True
        if _VALUE_BAD.search(raw_value):
            return _fail(head, f'client sent header "{name}" with invalid value: "{value}"')
        if pseudo:
            if not _pseudo(head, name[1:], value, seen):
                return head
            continue
        if invalid and ignore_invalid:
            head.notes.append(f'client sent invalid header: "{name}"{_WHILE}')
            continue
        if name == "cookie":
            cookies.append(value)
            continue
        if not _regular(head, name, value, seen):
            return head
        headers.append((name, value))
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))
    return _request_header(head, ended)


def _pseudo(head: H2Head, name: str, value: str, seen: dict[str, str]) -> bool:
    if name == "path":
        if head.path:
            return _fail_false(head, "client sent duplicate :path header")
        if not value:
            return _fail_false(head, "client sent empty :path header")
        if value[0] != "/":
            return _fail_false(head, f'client sent invalid :path header: "{value}"')
        head.path = value
    elif name == "method":
        if head.method:
            return _fail_false(head, "client sent duplicate :method header")
        if not value:
            return _fail_false(head, "client sent empty :method header")
        if value not in _KNOWN_METHODS and not _METHOD_RE.match(value):
            return _fail_false(head, f'client sent invalid method: "{value}"')
        head.method = value
    elif name == "scheme":
        if head.scheme:
            return _fail_false(head, "client sent duplicate :scheme header")
        if not value:
            return _fail_false(head, "client sent empty :scheme header")
        if not _SCHEME_RE.match(value):
            return _fail_false(head, f'client sent invalid :scheme header: "{value}"')
        head.scheme = value
    elif name == "authority":
        # Entered as a "host" field, through the same handler as a Host header.
        if not _regular(head, "host", value, seen):
            return False
        head.headers.append(("host", value))
    else:
        return _fail_false(head, f'client sent unknown pseudo-header ":{name}"')
    return True


def _regular(head: H2Head, name: str, value: str, seen: dict[str, str]) -> bool:
    if name == "host":
        if head.host is not None:
            return _fail_false(
                head,
                f'client sent duplicate host header: "host: {value}", '
                f'previous value: "host: {head.host}"',
            )
        if validate_host(value) is None:
            return _fail_false(head, "client sent invalid host header")
        head.host = value
    elif name in _UNIQUE:
        prev = seen.get(name)
        if prev is not None:
            return _fail_false(
                head,
                f'client sent duplicate header line: "{name}: {value}", '
                f'previous value: "{name}: {prev}"',
            )
        seen[name] = value
    return True


def _request_header(head: H2Head, ended: bool) -> H2Head:
    """ngx_http_v2_construct_request_line, then ngx_http_process_request_header."""
    if not head.method:
        return _fail(head, "client sent no :method header")
    if not head.scheme:
        return _fail(head, "client sent no :scheme header")
    if not head.path:
        return _fail(head, "client sent no :path header")
    head.request_line = f"{head.method} {head.path} HTTP/2.0"
    if head.host is None:
        return _fail(head, 'client sent HTTP/1.1 request without "Host" header')
    headers = head.headers
    cl = te = None
    for name, value in headers:
        if name == "content-length":
            cl = value
        elif name == "transfer-encoding":
            te = value
    if cl is not None:
        if not cl.isdigit() or not cl.isascii() or len(cl) > 18:
            return _fail(head, 'client sent invalid "Content-Length" header')
        head.content_length = int(cl)
    if te is not None:
        if te.lower() != "chunked":
            return _fail(head, f'client sent unknown "Transfer-Encoding": "{te}"', 501)
        if cl is not None:
            return _fail(
                head,
                'client sent "Content-Length" and "Transfer-Encoding" headers at the same time',
            )
    if head.content_length and ended:
        return _fail(head, "client prematurely closed stream")
    return head


def validate_host(host: str) -> str | None:
    """ngx_http_validate_host: the host lower-cased without port and trailing dot, or None."""
    end = len(host)
    dot_pos = end
    state = 0  # 0: usual, 1: inside an IPv6 literal, 2: the rest (port)
    for i, ch in enumerate(host):
        if ch == ".":
            if dot_pos == i - 1:
                return None
            dot_pos = i
        elif ch == ":":
            if state == 0:
                end = i
                state = 2
        elif ch == "[":
            if i == 0:
                state = 1
        elif ch == "]":
            if state == 1:
                end = i + 1
                state = 2
        elif ch == "/" or ch <= " " or ch == "\x7f":
            return None
    if dot_pos == end - 1:
        end -= 1
    if end <= 0:
        return None
    return host[:end].lower()


def _fail(head: H2Head, message: str, status: int = 400, *, suffix: str = _WHILE) -> H2Head:
    head.status = status
    head.error = message + suffix
    return head


def _fail_false(head: H2Head, message: str) -> bool:
    _fail(head, message)
    return False


__all__ = ["H2Head", "parse_head", "validate_host"]
