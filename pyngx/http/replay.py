"""Responses replayed for byte-identical request heads, without the request phases.

Some answers are a pure function of the request head's bytes (and of state that can be
checked cheaply): `return 200 "ok"` with a constant text, a proxy_cache HIT
(pyngx/http/cache/replay.py). The first such request runs through the phases; `install`
then keeps, on the head cache's record of that exact head (connection.HeadRecord), the
bytes the phases wrote, cut around the Date line. The next request with the same head bytes
on the same listening port is answered from the connection's read callback: a few checks,
one (batched) write, the access log line.

`request_replayable` is what every replay needs of the request the phases answered: nothing
in its processing looked at the client or the connection (no TLS checks, no realip, no
access-phase handler, no server rewrite script), nothing varies per request in its head (no
add_header, expires, Location), the response was one whole write with a Content-Length, and
the connection was kept alive. A subclass adds what its content needs.

Checked on every replay (`admit`): the same listening port, and that the connection may be
kept alive after this request (keepalive_requests, graceful shutdown); otherwise the phases
run and write `Connection: close` themselves.

The access log is written as for any request: a Request is made for it with the fields the
phases would have set (status, sizes, response head, `$upstream_*` state).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyngx.http.request import DATE

if TYPE_CHECKING:
    from pyngx.http.connection import HeadRecord, HttpConnection

# The URI-change budget a request starts with (request.URI_CHANGES): unchanged means the
# request went through no rewrite, error_page or internal redirect.
_URI_CHANGES = 11
_DATE_PREFIX = b"\r\nDate: "


def request_replayable(r: Any) -> bool:
    """The phases' part of the conditions (module docstring); `r` has been answered."""
    conn = r.conn
    loc = r.loc
    out = r.out
    return (
        conn.send_fields is None  # HTTP/1 (an h2 stream has no head records anyway)
        and r.record is not None
        and not conn.is_ssl
        and not conn.port.listens[0].ssl
        and r.srv.conf.realip is None
        and r.srv.script is None
        and not loc.access_phase
        and not loc.add_headers
        and loc.expires is None
        and not loc.limit_rate
        and r.limit_rate is None
        and r.method == "GET"
        and (1, 0) <= r.version < (2, 0)
        and r.keepalive
        and not r.chunked
        and not r.internal
        and r.uri_changes == _URI_CHANGES
        and not r.err_status
        and r.captures is None
        and not r.variables
        and r.extra is None
        and r.cleanups is None
        and out.location is None
        and not out.no_date
        and out.content_length is not None
        and r.body_sent == out.content_length
    )


def split_head(r: Any) -> tuple[bytes, bytes] | None:
    """The answered request's head as the phases wrote it, cut around its Date line."""
    head = r.build_head()
    cut = head.find(_DATE_PREFIX)
    if cut < 0:
        return None
    end = head.find(b"\r\n", cut + 2)
    return head[: cut + 2], head[end + 2 :]


class Replay:
    """A replayable answer: the bytes around the Date line and what its log line needs.
    Subclasses are the callables kept on HeadRecord.replay: (conn, record, rest) -> sent."""

    __slots__ = ("port", "srv", "loc", "pre", "post", "status", "upstream", "out", "body_sent",
                 "size")

    def __init__(self, r: Any, pre: bytes, post: bytes) -> None:
        self.port = r.conn.port
        self.srv = r.srv
        self.loc = r.loc
        self.pre = pre
        self.post = post
        self.status = r.status
        self.upstream = r.upstream
        self.out = r.out
        self.body_sent = r.body_sent
        self.size = len(pre) + len(DATE.line()) + len(post)

    def admit(self, conn: HttpConnection) -> bool:
        return (
            conn.port is self.port
            and conn.requests + 1 < self.loc.keepalive_requests
            and not conn.worker.draining
        )

    def send(self, conn: HttpConnection, record: HeadRecord, rest: bytes) -> None:
        conn.replay_started()
        conn.write_parts(self.pre + DATE.line().encode(), self.post)
        if self.loc.access_logs:
            r = conn.new_request(record)
            r.srv = self.srv
            r.loc = self.loc
            r.status = self.status
            r.header_sent = True
            r.done = True
            r.out = self.out
            r.upstream = self.upstream
            r.body_sent = self.body_sent
            r.bytes_sent = self.size
            conn.log_request(r)
        conn.replay_done(rest)


class ReturnReplay(Replay):
    """`return code "constant text"` as a location's only rewrite directive."""

    __slots__ = ()

    def __call__(self, conn: HttpConnection, record: HeadRecord, rest: bytes) -> bool:
        if not self.admit(conn):
            return False
        self.send(conn, record, rest)
        return True


def install_return(r: Any) -> None:
    """After `return` answered `r` (Request.finalize): keep a replay when the script is that
    one constant return and the request qualifies."""
    script = r.loc.script
    if script is None or len(script.ops) != 1:
        return
    op = script.ops[0]
    if not getattr(op, "constant_body", False) or not request_replayable(r):
        return
    parts = split_head(r)
    if parts is None:
        return
    pre, post = parts
    body = r.return_body.encode("utf-8", "surrogateescape")
    r.record.replay = ReturnReplay(r, pre, post + body)


__all__ = ["Replay", "ReturnReplay", "install_return", "request_replayable", "split_head"]
