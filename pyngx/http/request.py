"""One HTTP request: nginx's phase engine, the header filter, special responses, the log phase.

A request runs synchronously through its phases while it can (return, static files, errors:
no task, no await); a content handler that must wait (the proxy) returns a coroutine, which
runs as the request's one task. Responses go out through `send_head`/`send_body`/`finish`
on the connection; `finalize(status)` is nginx's ngx_http_finalize_request: error pages,
`error_page` redirects, 444, keepalive decisions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pyngx import NGINX_COMPAT_VERSION
from pyngx.core.log import ALERT, ERROR, INFO, NOTICE
from pyngx.http.expires import expires_headers
from pyngx.http.httpdate import http_date
from pyngx.http.locations import REDIRECT_SLASH
from pyngx.http.rewrite import set_captures
from pyngx.http.special_response import SENT_AS, error_page_body, status_line

if TYPE_CHECKING:
    from pyngx.http.connection import HttpConnection
    from pyngx.http.module import LocationConf, ServerConf

URI_CHANGES = 11  # nginx's NGX_HTTP_MAX_URI_CHANGES + 1
SERVER_ON = ("Server", f"nginx/{NGINX_COMPAT_VERSION}")
SERVER_OFF = ("Server", "nginx")
_SERVER_ON_LINE = f"Server: {SERVER_ON[1]}\r\n"
_SERVER_OFF_LINE = f"Server: {SERVER_OFF[1]}\r\n"
# Statuses after which nginx does not keep the connection (ngx_http_special_response_handler).
_CLOSE_AFTER = frozenset((400, 413, 414, 494, 495, 496, 497, 500, 501))
_NO_BODY = frozenset((204, 304))
_REDIRECTS = frozenset((301, 302, 303, 307, 308))
DONE = -1  # a handler's "the response is (being) sent, nothing to finalize"

# -- h-tls: what runs before the server rewrite phase: the TLS checks of nginx's
# ngx_http_process_request (http/ssl.py: 497, 421, 496) and the post-read phase (http/realip.py).
# handler(r) -> None to go on, or a status to finalize the request with.
POST_READ: list[Callable[[Request], int | None]] = []
# -- end h-tls


class _DateCache:
    """The Date header, formatted once a second (nginx caches its time strings too)."""

    __slots__ = ("second", "text", "header")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""
        self.header = ""

    def now(self) -> str:
        s = int(time.time())
        if s != self.second:
            self.second = s
            self.text = http_date(s)
            self.header = f"Date: {self.text}\r\n"
        return self.text

    def line(self) -> str:
        s = int(time.time())
        if s != self.second:
            self.now()
        return self.header


_STATUS_LINES: dict[int, str] = {}


def _status_text(status: int) -> str:
    line = f"HTTP/1.1 {status_line(status).decode()}\r\n"
    if len(_STATUS_LINES) < 1000:
        _STATUS_LINES[status] = line
    return line


_LAST_MODIFIED: dict[float, str] = {}


def _last_modified(t: float) -> str:
    # Files keep their mtime for many requests: format each one once (bounded).
    text = _LAST_MODIFIED.get(t)
    if text is None:
        if len(_LAST_MODIFIED) > 4096:
            _LAST_MODIFIED.clear()
        text = _LAST_MODIFIED[t] = http_date(t)
    return text


DATE = _DateCache()


class ResponseHead:
    __slots__ = (
        "headers",
        "content_type",
        "content_length",
        "last_modified",
        "etag",
        "location",
        "charset",
        "accept_ranges",
        "status_line",
        "no_server",
        "no_date",
    )

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.content_type: str | None = None
        self.content_length: int | None = None
        self.last_modified: float | None = None
        self.etag: str | None = None
        self.location: str | None = None
        self.charset: str | None = None
        self.accept_ranges = False
        # A proxied response: the upstream's status line (after "HTTP/1.x "), and whether
        # its Server/Date were passed (proxy_pass_header), so none of ours is added.
        self.status_line: str | None = None
        self.no_server = False
        self.no_date = False


class Request:
    __slots__ = (
        "conn",
        "srv",
        "loc",
        "method",
        "uri",
        "args",
        "request_uri",
        "request_line",
        "version",
        "headers",
        "header_list",
        "host",
        "keepalive",
        "framing",
        "variables",
        "captures",
        "uri_changed",
        "uri_changes",
        "internal",
        "status",
        "out",
        "return_body",
        "start",
        "header_sent",
        "done",
        "body_sent",
        "bytes_sent",
        "chunked",
        "head_only",
        "task",
        "error_page_done",
        "request_length",
        "body",
        "upstream",
        "filename",
        "on_abort",
        "limit_state",
        "extra",
        "err_status",
        "limit_rate",
        "cleanups",
        "valid_location",
        "valid_unparsed_uri",
        "record",
    )

    def __init__(self, conn: HttpConnection, srv: ServerConf) -> None:
        self.conn = conn
        self.srv = srv
        self.loc: LocationConf = srv.conf
        self.variables: dict[str, str] = {}
        self.captures: Any = None
        self.uri_changed = False
        self.uri_changes = URI_CHANGES
        self.internal = False
        self.status = 0
        self.out = ResponseHead()
        self.return_body: str | None = None
        self.start = time.time()
        self.header_sent = False
        self.done = False
        self.body_sent = 0
        self.bytes_sent = 0
        self.chunked = False
        self.head_only = False
        self.task: asyncio.Task[Any] | None = None
        self.error_page_done = False
        self.upstream: Any = None
        self.filename: str | None = None
        self.on_abort: Callable[[], None] | None = None
        self.limit_state: Any = None
        self.extra: dict[str, Any] | None = None
        self.err_status = 0
        self.limit_rate: int | None = None
        # Run once when the request ends, after its log line (nginx's request pool cleanups:
        # limit_conn gives its counts back there).
        self.cleanups: list[Callable[[], None]] | None = None
        # nginx's r->valid_location / r->valid_unparsed_uri (what proxy_pass sends): cleared
        # when the URI is changed without a new location search (`rewrite ... break`) or at
        # all (any rewrite, `set $args`, an internal redirect).
        self.valid_location = True
        self.valid_unparsed_uri = True
        # The head cache's record of this request's head (connection.HeadRecord), if any.
        self.record: Any = None

    # -- logging --------------------------------------------------------------------------

    def log(self, level: int, message: str) -> None:
        log = self.loc.error_log
        if log.enabled(level):
            log.log(level, message, self.conn.conn_id, self.log_context())

    def log_notice(self, message: str) -> None:
        self.log(NOTICE, message)

    def log_context(self) -> str:
        c = self.conn
        text = f", client: {c.remote_addr}, server: {self.srv.names[0]}"
        if self.request_line:  # none yet: an HTTP/2 head refused field by field
            text += f', request: "{self.request_line}"'
        up = self.upstream
        if up is not None and getattr(up, "current", None):
            text += f', upstream: "{up.current}"'
        host = self.headers.get("host")
        if host is not None:
            text += f', host: "{host}"'
        return text

    # -- phases ---------------------------------------------------------------------------

    def run(self) -> None:
        """Start processing at the server rewrite phase."""
        try:
            # -- h-tls: TLS checks and the post-read phase (see POST_READ)
            for handler in POST_READ:
                st = handler(self)
                if st is not None:
                    self.finalize(st)
                    return
            # -- end h-tls
            self._phases(server_rewrite=True)
        except Exception as exc:  # a bug costs this request, never the worker
            self._crashed(exc)

    def _crashed(self, exc: BaseException) -> None:
        self.conn.worker_log(ALERT, f"request failed: {type(exc).__name__}: {exc}")
        if not self.header_sent:
            self.finalize(500)
        else:
            self.conn.abort()

    def _phases(self, *, server_rewrite: bool, find: bool = True) -> None:
        if server_rewrite and self.srv.script is not None:
            self.loc = self.srv.conf
            before = self.uri, self.args
            st = self.srv.script.run(self)
            if st is not None:
                self.finalize(st)
                return
            if (self.uri, self.args) != before:
                self.valid_unparsed_uri = False
        while True:
            if find:
                st = self._find_location()
                if st is not None:
                    self.finalize(st)
                    return
            find = True
            script = self.loc.script
            if script is not None:
                self.uri_changed = False
                before = self.uri, self.args
                st = script.run(self)
                if st is not None:
                    self.finalize(st)
                    return
                if (self.uri, self.args) != before:
                    self.valid_unparsed_uri = False
                    if self.uri != before[0] and not self.uri_changed:
                        self.valid_location = False  # rewrite ... break
                if self.uri_changed:
                    self.uri_changed = False
                    self.uri_changes -= 1
                    if self.uri_changes == 0:
                        self.log(
                            ERROR,
                            f'rewrite or internal redirection cycle while processing "{self.uri}"',
                        )
                        self.finalize(500)
                        return
                    continue
            break
        self.access_phase()

    def access_phase(self, start: int = 0) -> None:
        """The preaccess and access handlers from index `start` on, then content."""
        handlers = self.loc.access_phase
        for i in range(start, len(handlers)):
            st = handlers[i](self)
            if st is not None:
                if st == DONE:
                    return
                self.finalize(st)
                return
        self.content_phase()

    def resume_access(self, start: int) -> None:
        """Go on after an access-phase handler that returned DONE to wait (limit_req's delay)
        with the handler at `start`; a request that ended meanwhile is left alone."""
        if self.done:
            return
        try:
            self.access_phase(start)
        except Exception as exc:  # a bug costs this request, never the worker
            self._crashed(exc)

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        if self.cleanups is None:
            self.cleanups = []
        self.cleanups.append(fn)

    def run_cleanups(self) -> None:
        """The request is over (answered, aborted or timed out): run its cleanups once."""
        fns, self.cleanups = self.cleanups, None
        for fn in fns or ():
            fn()

    def content_phase(self) -> None:
        """try_files, then the content handler (also resumed by delayed access handlers)."""
        loc = self.loc
        if loc.try_files is not None:
            from pyngx.http.static import try_files

            st = try_files(self)
            if st is not None:
                if st != DONE:
                    self.finalize(st)
                return
        result = loc.content(self)
        if result is None or result == DONE:
            return
        if isinstance(result, int):
            self.finalize(result)
            return
        self.task = asyncio.ensure_future(self._run_async(result))

    async def _run_async(self, coro: Coroutine[Any, Any, int | None]) -> None:
        try:
            st = await coro
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._crashed(exc)
            return
        if st is not None and st != DONE:
            self.finalize(st)

    def _find_location(self) -> int | None:
        srv = self.srv
        found = srv.locations.find(self.uri)
        if found is None:
            self.loc = srv.conf
        else:
            conf, match = found
            if conf is REDIRECT_SLASH:
                return self.redirect_slash()
            self.loc = conf
            if match is not None:
                set_captures(self, match)
        loc = self.loc
        if loc.internal and not self.internal:
            return 404
        cl = self.framing.content_length
        if cl is not None and loc.client_max_body_size and cl > loc.client_max_body_size:
            self.log(ERROR, f"client intended to send too large body: {cl} bytes")
            self.keepalive = False
            return 413
        if not self.keepalive_allowed():
            self.keepalive = False
        return None

    def keepalive_allowed(self) -> bool:
        loc = self.loc
        return loc.keepalive_timeout > 0 and self.conn.requests < loc.keepalive_requests

    def redirect_slash(self) -> int:
        self.out.location = self.uri + "/" + ("?" + self.args if self.args else "")
        return 301

    def internal_redirect(self, uri: str, args: str | None = None) -> None:
        """nginx's ngx_http_internal_redirect: a new location search from server rewrite."""
        self.uri_changes -= 1
        if self.uri_changes == 0:
            self.log(
                ERROR,
                f'rewrite or internal redirection cycle while internally redirecting to "{uri}"',
            )
            self.finalize(500)
            return
        self.uri = uri
        if args is not None:
            self.args = args
        self.internal = True
        self.valid_location = True
        self.valid_unparsed_uri = False
        self.variables = dict(self.variables)
        self.captures = None
        self._fresh_head()
        self._phases(server_rewrite=True)

    def named_redirect(self, name: str) -> None:
        conf = self.srv.locations.named(name)
        if conf is None:
            self.log(ERROR, f'could not find named location "{name}"')
            self.err_status = 0
            self.finalize(500)
            return
        self.uri_changes -= 1
        if self.uri_changes == 0:
            self.log(
                ERROR,
                f'rewrite or internal redirection cycle while redirect to named location "{name}"',
            )
            self.finalize(500)
            return
        self.internal = True
        self.loc = conf
        self._fresh_head()
        self._phases(server_rewrite=False, find=False)

    def _fresh_head(self) -> None:
        # nginx keeps r->headers_out's list across redirects: an intercepted 401's
        # WWW-Authenticate reaches the error page's response (ngx_http_upstream_intercept_errors).
        headers = self.out.headers
        self.out = ResponseHead()
        self.out.headers = headers

    # -- finalize / special responses ------------------------------------------------------

    def finalize(self, status: int) -> None:
        """End the request with `status` when nothing was sent yet (nginx's special response)."""
        if self.done:
            return
        if self.header_sent:
            self.finish()
            return
        if status == 444:
            self.status = 444
            self.keepalive = False
            self.conn.close_request(self, abort=True)
            return
        if status == 499:
            self.status = 499
            self.conn.close_request(self, abort=True)
            return
        if status in _CLOSE_AFTER:
            self.keepalive = False
        if self.return_body is not None and status not in _REDIRECTS:
            # `return code text`: ngx_http_send_response, no error_page involved.
            body = self.return_body.encode("utf-8", "surrogateescape")
            self.out.content_type = self.loc.default_type
            self.send_response(status, body)
            record = self.record
            if record is not None and record.replay is None:
                from pyngx.http.replay import install_return

                install_return(self)
            return
        # ngx_http_special_response_handler: the entity's validators do not describe a page.
        out = self.out
        out.accept_ranges = False
        out.last_modified = None
        out.etag = None
        loc = self.loc
        pages = loc.error_pages
        # ngx_http_special_response_handler: one error_page per request unless recursive.
        if pages and not self.error_page_done and self.uri_changes != 0:
            self.error_page_done = not loc.recursive_error_pages
            page = pages.get(status)
            if page is not None and self._error_page(status, page[0], page[1]):
                return
        self.status = status
        body = error_page_body(status, loc.server_tokens) if status >= 300 else None
        if body is not None:
            self.out.content_type = "text/html"
        self.send_response(status, body or b"")

    def _error_page(self, status: int, target: str, overwrite: int | None) -> bool:
        from pyngx.http.error_page import run_error_page

        return run_error_page(self, status, target, overwrite)

    # -- response writing ------------------------------------------------------------------

    def send_response(self, status: int, body: bytes) -> None:
        """A whole response in one write (most responses)."""
        self.status = status
        out = self.out
        if status in _NO_BODY or status < 200:
            out.content_length = None
            if status == 304:
                # ngx_http_not_modified_header_filter: a 304 carries no entity headers.
                out.content_type = None
                out.accept_ranges = False
            body = b""
        else:
            out.content_length = len(body)
        if self.method == "HEAD" or status in _NO_BODY:
            body = b""
        else:
            self.body_sent = len(body)
        self.bytes_sent = self._write_head(body, last=True)
        self.finish()

    def send_head(self) -> None:
        """The header only: the body follows through send_body (chunked when its length is
        unknown and the client speaks HTTP/1.1)."""
        out = self.out
        # ngx_http_chunked_header_filter: a response that has no body (204, 304, 1xx, HEAD)
        # keeps the connection; one of unknown length goes chunked to an HTTP/1.1 client,
        # else the connection ends with it.
        if (
            out.content_length is None
            and self.method != "HEAD"
            and self.status >= 200
            and self.status not in _NO_BODY
        ):
            if (1, 1) <= self.version < (2, 0) and self.loc.chunked:
                self.chunked = True
            else:
                self.keepalive = False
        last = self.method == "HEAD" or self.status in _NO_BODY
        self.bytes_sent += self._write_head(b"", last=last)

    def _write_head(self, body: bytes, last: bool) -> int:
        """The head (and `body` after it) in the connection's protocol; bytes written.
        An HTTP/2 stream takes the header fields (a HEADERS frame; `last`: nothing follows),
        an HTTP/1 connection the head bytes."""
        send_fields = getattr(self.conn, "send_fields", None)
        if send_fields is not None:
            fields = self.head_fields()
            return send_fields(self.status, fields, body, last)  # type: ignore[no-any-return]
        data = self.build_head()
        if body:
            data += body
        self.conn.write(data)
        return len(data)

    def send_body(self, data: bytes) -> None:
        if self.method == "HEAD" or not data:
            return
        self.body_sent += len(data)
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.bytes_sent += len(data)
        self.conn.write(data)

    def finish(self) -> None:
        """The response is complete: terminate chunked output, log, next request or close."""
        if self.done:
            return
        if self.chunked and self.header_sent:
            self.conn.write(b"0\r\n\r\n")
            self.bytes_sent += 5
        self.done = True
        self.conn.close_request(self)

    def build_head(self) -> bytes:
        """The HTTP/1 head bytes: status line, head_fields, blank line (none for HTTP/0.9)."""
        if self.version < (1, 0):
            self.header_sent = True
            if self.err_status:
                self.status = self.err_status
            return b""
        loc = self.loc
        if self.out.location is None and not loc.add_headers and loc.expires is None:
            return self._plain_head()
        fields = self.head_fields()
        status = self.status
        status_line = self.out.status_line
        if status_line is not None:
            first = f"HTTP/1.1 {status_line}\r\n"
        else:
            first = _STATUS_LINES.get(status) or _status_text(status)
        lines = "".join([f"{name}: {value}\r\n" for name, value in fields])
        return f"{first}{lines}\r\n".encode("latin-1", "replace")

    def _plain_head(self) -> bytes:
        """build_head for a response without Location, add_header or expires (nearly all):
        head_fields' filter in the same order, written as lines directly (no field tuples).
        Keep the two in step."""
        self.header_sent = True
        out = self.out
        if self.err_status:
            self.status = self.err_status
            out.status_line = None
        status = self.status
        if status in SENT_AS:
            status = self.status = SENT_AS[status]
        loc = self.loc
        if status == 204:
            out.content_type = None
            out.last_modified = None
        status_line = out.status_line
        if status_line is not None:
            parts = [f"HTTP/1.1 {status_line}\r\n"]
        else:
            parts = [_STATUS_LINES.get(status) or _status_text(status)]
        if not out.no_server:
            parts.append(_SERVER_OFF_LINE if loc.server_tokens == "off" else _SERVER_ON_LINE)
        if not out.no_date:
            parts.append(DATE.line())
        ct = out.content_type
        if ct is not None:
            if out.charset:
                parts.append(f"Content-Type: {ct}; charset={out.charset}\r\n")
            else:
                parts.append(f"Content-Type: {ct}\r\n")
        if out.content_length is not None:
            parts.append(f"Content-Length: {out.content_length}\r\n")
        if out.last_modified is not None and status in (200, 206, 304):
            parts.append(f"Last-Modified: {_last_modified(out.last_modified)}\r\n")
        if self.version < (2, 0):
            if self.chunked:
                parts.append("Transfer-Encoding: chunked\r\n")
            if self.upgrade_status(status):
                parts.append("Connection: upgrade\r\n")
            elif self.keepalive:
                parts.append("Connection: keep-alive\r\n")
                if loc.keepalive_header:
                    parts.append(f"Keep-Alive: timeout={int(loc.keepalive_header)}\r\n")
            else:
                parts.append("Connection: close\r\n")
        if out.etag is not None:
            parts.append(f"ETag: {out.etag}\r\n")
        headers = out.headers
        if headers:
            parts += [f"{name}: {value}\r\n" for name, value in headers]
        if out.accept_ranges and status == 200:
            parts.append("Accept-Ranges: bytes\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1", "replace")

    def head_fields(self) -> list[tuple[str, str]]:
        """nginx's header filter chain, in its order: the response's (name, value) fields.

        HTTP/1 serialises them (build_head); an HTTP/2 stream sends them as HEADERS, without
        the connection-specific fields.
        """
        self.header_sent = True
        out = self.out
        if self.err_status:
            self.status = self.err_status
            out.status_line = None
        status = self.status
        if status in SENT_AS:
            # nginx's own 494-497 go out (and are logged) as 400.
            status = self.status = SENT_AS[status]
        loc = self.loc
        if status == 204:
            # ngx_http_header_filter: a 204 has no Content-Type or Last-Modified (a
            # proxied Content-Length stays, as nginx 1.22 passes it).
            out.content_type = None
            out.last_modified = None
        location_first = False
        if out.location is not None:
            # nginx's header filter makes any Location starting with "/" absolute (a 201's
            # too) and writes it in its own slot; a full URL stays in the headers list,
            # after Connection (nginx's order).
            location_first = out.location.startswith("/") and loc.absolute_redirect
            self._absolute_location()
        fields = []
        if not out.no_server:
            fields.append(SERVER_OFF if loc.server_tokens == "off" else SERVER_ON)
        if not out.no_date:
            fields.append(("Date", DATE.now()))
        if out.content_type is not None:
            if out.charset:
                fields.append(("Content-Type", f"{out.content_type}; charset={out.charset}"))
            else:
                fields.append(("Content-Type", out.content_type))
        if out.content_length is not None:
            fields.append(("Content-Length", str(out.content_length)))
        if out.last_modified is not None and status in (200, 206, 304):
            fields.append(("Last-Modified", _last_modified(out.last_modified)))
        if out.location is not None and location_first:
            fields.append(("Location", out.location))
        if self.version < (2, 0):
            if self.chunked:
                fields.append(("Transfer-Encoding", "chunked"))
            if self.upgrade_status(status):
                fields.append(("Connection", "upgrade"))
            elif self.keepalive:
                fields.append(("Connection", "keep-alive"))
                if loc.keepalive_header:
                    fields.append(("Keep-Alive", f"timeout={int(loc.keepalive_header)}"))
            else:
                fields.append(("Connection", "close"))
        if out.location is not None and not location_first:
            fields.append(("Location", out.location))
        if out.etag is not None:
            fields.append(("ETag", out.etag))
        fields += out.headers
        if loc.add_headers or loc.expires is not None:
            self._add_headers(fields, status)
        if out.accept_ranges and status == 200:
            fields.append(("Accept-Ranges", "bytes"))
        return fields

    def upgrade_status(self, status: int) -> bool:
        return status == 101

    def _add_headers(self, fields: list[tuple[str, str]], status: int) -> None:
        loc = self.loc
        ok = status in (200, 201, 204, 206, 301, 302, 303, 304, 307, 308)
        expires = loc.expires
        if expires is not None and ok:
            lines: list[str] = []
            expires_headers(self, expires, lines)  # "Name: value\r\n" lines
            for line in lines:
                name, _, value = line.rstrip("\r\n").partition(": ")
                fields.append((name, value))
        for name, value, always in loc.add_headers:
            if ok or always:
                v = value(self)
                if v:
                    fields.append((name, v))

    def _absolute_location(self) -> None:
        out = self.out
        loc_value = out.location
        if not loc_value or not loc_value.startswith("/") or not self.loc.absolute_redirect:
            return
        conn = self.conn
        if self.loc.server_name_in_redirect:
            host = self.srv.names[0]
        else:
            host = self.host or conn.server_addr
        port = conn.server_port
        ssl = conn.is_ssl
        default = 443 if ssl else 80
        port_text = f":{port}" if self.loc.port_in_redirect and port != default else ""
        out.location = f"{'https' if ssl else 'http'}://{host}{port_text}{loc_value}"


__all__ = ["DONE", "Request", "ResponseHead"]

_unused = (INFO,)
