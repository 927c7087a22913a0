"""Proxied requests that skip the phases: the location a request head leads to, kept on the
head cache's record of that head (connection.HeadRecord), like a replay (replay.py).

Which location serves a request is a function of the head's bytes when the server has no
rewrite script and the location has no rewrite script (rewrite, return, set, if) and no
try_files, and was found by a plain search (no captures, no internal redirect). The first
request with a head runs the phases; when the proxy handler takes its common case for it (a
static proxy_pass without a URI part, the client's URI sent as it came, no body, no cache),
`install` keeps a `ProxyLane` on the head's record. The next request with the same head
bytes on the same port is started from the connection's read callback: the Request gets the
fields the phases would have set (server, location, keepalive) and goes straight to the
exchange (proxy_run.Exchange), where everything from picking the peer on is the usual path:
retries, timeouts, error pages, the access log, $upstream_* variables.

The post-read phase (TLS checks, realip) and the location's preaccess and access handlers
(realip, limit_conn, limit_req, allow/deny) still run for every request: they look at the
connection, not only the head. (A post-read handler that cannot act on the lane's port and
server, by its `applies(port, srv)`, is left out: TLS checks on a plain port, realip with no
settings.) The upstream request head is built per request
(proxy_request.build_head) unless no proxy_set_header has a variable, so $remote_addr or
$proxy_add_x_forwarded_for are evaluated for each request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyngx.http import request as request_mod
from pyngx.http.proxy_conf import VALUE
from pyngx.http.proxy_run import Exchange
from pyngx.http.request import DONE, URI_CHANGES

if TYPE_CHECKING:
    from pyngx.http.connection import HeadRecord, HttpConnection

# What a lane returns to HttpConnection._read_head: a request was started (not answered),
# as _start_request starts one. (A replay returns True: answered.)
STARTED = 2


def lane_allowed(r: Any) -> bool:
    """The phases' part of the conditions (module docstring), for a request the proxy
    handler takes in its common case."""
    record = r.record
    loc = r.loc
    return (
        record is not None
        and record.replay is None
        and not record.head.ignored
        and r.conn.send_fields is None
        and r.srv.script is None
        and loc.script is None
        and loc.try_files is None
        and not r.internal
        and r.uri_changes == URI_CHANGES
        and r.captures is None
        and not r.variables
        and (r.extra is None or r.extra.keys() == {"realip"})  # realip: post-read, per request
        and r.valid_location
        and r.valid_unparsed_uri
    )


class ProxyLane:
    """HeadRecord.replay for a proxied location: (conn, record, rest) -> STARTED or False."""

    __slots__ = ("port", "srv", "loc", "conf", "target", "build_head", "head_bytes", "post_read")

    def __init__(self, r: Any, conf: Any, target: Any, build_head: Any, head: bytes) -> None:
        self.port = r.conn.port
        self.srv = r.srv
        self.loc = r.loc
        self.conf = conf
        self.target = target
        self.build_head = build_head  # proxy_request.build_head (which imports this module)
        # The upstream request head, when no proxy_set_header has a variable: a function of
        # the client's head alone (what build_head's own cache keeps for it).
        self.head_bytes = head if all(item[0] != VALUE for item in conf.plan) else None
        # The post-read handlers that can act on this port and server (a handler's
        # `applies(port, srv)` says; one without it always runs).
        self.post_read = tuple(
            h
            for h in request_mod.POST_READ
            if getattr(h, "applies", None) is None or h.applies(self.port, self.srv)
        )

    def __call__(self, conn: HttpConnection, record: HeadRecord, rest: bytes) -> int:
        if conn.port is not self.port:
            return False
        r = conn.start_known_request(record, rest)
        srv = r.srv = self.srv
        r.loc = srv.conf  # the server level until the location is "found", as _start_request
        try:
            # -- h-tls: the post-read phase looks at the connection (see request.POST_READ)
            for handler in self.post_read:
                st = handler(r)
                if st is not None:
                    r.finalize(st)
                    return STARTED
            # -- end h-tls
            loc = r.loc = self.loc
            # Request._find_location's keepalive check, for the count just made.
            if not (loc.keepalive_timeout > 0 and conn.requests < loc.keepalive_requests):
                r.keepalive = False
            # The preaccess and access phases look at the client: they run for every request
            # (Request.access_phase). One that waits (limit_req's delay) resumes through the
            # phases' own content phase.
            for handler in loc.access_phase:
                st = handler(r)
                if st is not None:
                    if st != DONE:
                        r.finalize(st)
                    return STARTED
            conf = self.conf
            uri = r.request_uri
            ex = Exchange(r, conf, self.target, uri)
            r.upstream = ex
            head = self.head_bytes
            ex.head_bytes = head if head is not None else self.build_head(r, conf, r.method, uri)
            ex.start()
        except Exception as exc:  # a bug costs this request, never the worker
            r._crashed(exc)
        return STARTED


def install(r: Any, conf: Any, target: Any, build_head: Any, head: bytes) -> None:
    """Called by the proxy handler in its common case, with the upstream head it built for
    `r`: keep a lane when the request qualifies."""
    if lane_allowed(r):
        r.record.replay = ProxyLane(r, conf, target, build_head, head)


__all__ = ["STARTED", "ProxyLane", "install", "lane_allowed"]
