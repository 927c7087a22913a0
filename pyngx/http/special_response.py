"""nginx's built-in error pages and status lines (ngx_http_special_response.c and the
status table of ngx_http_header_filter_module.c).

Everything is built once at import: the page bodies for each status and server_tokens value
are ready-made bytes, so answering an error costs one dict lookup.

Facts kept from nginx:
- A page is `<html>` head, a title and an `<h1>` with the status line text, then a tail that
  names the server: `nginx/VERSION` (server_tokens on, and build without a build string) or
  `nginx` (off). The page's Content-Type is text/html.
- 494 (request header too large), 495, 496 and 497 (TLS client certificate problems, plain
  HTTP on an HTTPS port) are sent with status 400: their titles say what happened, the `<h1>`
  says "400 Bad Request", and a `<center>` line repeats the reason. 498 (nginx's "canceled")
  gets the 404 page with the status line "498 ".
- Statuses without a page (204, 304, 407, 417, 506, unknown codes, ...) send no body.
- The page titles are not always the status line texts: 302's page says "302 Found" while the
  status line says "302 Moved Temporarily", 401's page says "Authorization Required" while the
  line says "Unauthorized".
- A status with no text in nginx's table is sent as "NNN " (number and a space); see
  status_line().
"""

from __future__ import annotations

from pyngx import NGINX_COMPAT_VERSION
from pyngx.protocols.http1 import STATUS_REASONS

__all__ = [
    "STATUS_LINES",
    "SENT_AS",
    "error_page_body",
    "has_error_page",
    "status_line",
]

_CRLF = "\r\n"

# ngx_http_status_lines: the texts nginx puts on the status line. Codes missing here are sent
# as b"NNN " by status_line().
STATUS_LINES: dict[int, bytes] = {
    code: f"{code} {text}".encode() for code, text in STATUS_REASONS.items()
}
# nginx's own codes for TLS and header-size errors are answered with a 400 status line.
for _code in (494, 495, 496, 497):
    STATUS_LINES[_code] = STATUS_LINES[400]

# The status nginx actually sends for its internal codes (the rest are sent as they are).
SENT_AS: dict[int, int] = {494: 400, 495: 400, 496: 400, 497: 400}


def status_line(status: int) -> bytes:
    """The status line text after "HTTP/1.1 ": b"404 Not Found", or b"NNN " when nginx has none."""
    line = STATUS_LINES.get(status)
    if line is not None:
        return line
    return b"%03d " % status


# The text of the title and <h1> of each page (ngx_http_error_NNN_page).
_TITLES: dict[int, str] = {
    301: "301 Moved Permanently",
    302: "302 Found",
    303: "303 See Other",
    307: "307 Temporary Redirect",
    308: "308 Permanent Redirect",
    400: "400 Bad Request",
    401: "401 Authorization Required",
    402: "402 Payment Required",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Not Allowed",
    406: "406 Not Acceptable",
    408: "408 Request Time-out",
    409: "409 Conflict",
    410: "410 Gone",
    411: "411 Length Required",
    412: "412 Precondition Failed",
    413: "413 Request Entity Too Large",
    414: "414 Request-URI Too Large",
    415: "415 Unsupported Media Type",
    416: "416 Requested Range Not Satisfiable",
    421: "421 Misdirected Request",
    429: "429 Too Many Requests",
    500: "500 Internal Server Error",
    501: "501 Not Implemented",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
    505: "505 HTTP Version Not Supported",
    507: "507 Insufficient Storage",
}

# 494..497: (the reason shown in the title and under the heading).
_REASONS: dict[int, str] = {
    494: "Request Header Or Cookie Too Large",
    495: "The SSL certificate error",
    496: "No required SSL certificate was sent",
    497: "The plain HTTP request was sent to HTTPS port",
}


def _page(title: str, heading: str, extra: str = "") -> str:
    return (
        f"<html>{_CRLF}"
        f"<head><title>{title}</title></head>{_CRLF}"
        f"<body>{_CRLF}"
        f"<center><h1>{heading}</h1></center>{_CRLF}"
        f"{extra}"
    )


def _tail(server: str) -> str:
    return f"<hr><center>{server}</center>{_CRLF}</body>{_CRLF}</html>{_CRLF}"


_HEADS: dict[int, str] = {code: _page(t, t) for code, t in _TITLES.items()}
for _code, _reason in _REASONS.items():
    _HEADS[_code] = _page(f"400 {_reason}", "400 Bad Request", f"<center>{_reason}</center>{_CRLF}")
_HEADS[498] = _HEADS[404]

_TAILS: dict[str, str] = {
    "on": _tail(f"nginx/{NGINX_COMPAT_VERSION}"),
    # "build" adds nginx's build string, which pyngx does not have.
    "build": _tail(f"nginx/{NGINX_COMPAT_VERSION}"),
    "off": _tail("nginx"),
}

_BODIES: dict[str, dict[int, bytes]] = {
    tokens: {code: (head + tail).encode() for code, head in _HEADS.items()}
    for tokens, tail in _TAILS.items()
}


def has_error_page(status: int) -> bool:
    """Whether nginx has a built-in page for `status`."""
    return status in _HEADS


def error_page_body(status: int, server_tokens: str) -> bytes | None:
    """nginx's built-in HTML page for `status` (sent as text/html), None if it has none.

    server_tokens is the directive's value: "on", "off" or "build".
    """
    try:
        bodies = _BODIES[server_tokens]
    except KeyError:
        raise ValueError(f"invalid server_tokens value {server_tokens!r}") from None
    return bodies.get(status)
