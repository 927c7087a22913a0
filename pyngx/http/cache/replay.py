"""Cache hits replayed from memory: the same request head, the same stored response, the
same bytes out, without the request phases.

A proxy_cache HIT is a pure function of the request head's bytes and of the stored entry
when nothing else takes part: no rewrite script, no access-phase handler (allow/deny,
limit_req, limit_conn, realip: they look at the client), no TLS checks, no add_header or
expires, no variables in the cache key or in a bypass, a plain 200 with its body in the
worker's memory. The first such hit is served the normal way; `install` then records on the
head cache's record (connection.HeadRecord) the bytes it sent, cut around the Date line. The
next request with byte-identical head bytes on the same listening port is answered by
`HitReplay.__call__` straight from the connection's read callback: a few checks, one write.

What is checked on every replay, so that it sends exactly what the phases would:
- the entry is still fresh (its valid_sec), still the worker's in-memory copy, and the shared
  keys zone still names this version of it (another worker may have replaced it);
- the connection may be kept alive after it (keepalive_requests, a graceful shutdown): if
  not, the phases run and write `Connection: close` themselves.
Once a second a replay also does what a lookup does to the zone's node (its `inactive`
deadline, its LRU place), so the cache manager sees the entry in use.

The access log is written as for any request: a Request is made for it, with the fields the
phases would have set (status, bytes sent, the upstream state giving $upstream_cache_status).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pyngx.conf.variables import split_complex
from pyngx.http.request import DATE

if TYPE_CHECKING:
    from pyngx.http.connection import HeadRecord, HttpConnection

# The URI-change budget a request starts with (request.URI_CHANGES): unchanged means the
# request went through no rewrite, error_page or internal redirect.
_URI_CHANGES = 11
_DATE_PREFIX = b"\r\nDate: "


class HitReplay:
    """One replayable hit: a callable kept on a HeadRecord (see the module docstring)."""

    __slots__ = (
        "port",
        "srv",
        "loc",
        "zone",
        "digest",
        "entry",
        "slot",
        "version",
        "pre",
        "post",
        "touched",
        "upstream",
        "out",
        "body_sent",
        "size",
    )

    def __init__(self, r: Any, lk: Any, pre: bytes, post: bytes) -> None:
        self.port = r.conn.port
        self.srv = r.srv
        self.loc = r.loc
        self.zone = lk.zone
        self.digest = lk.digest
        self.entry = lk.entry
        self.slot = lk.node.slot
        self.version = lk.node.version
        self.pre = pre
        self.post = post
        self.touched = int(time.time())
        # For the access log: the exchange's $upstream_* (cache status HIT, no tries) and
        # the response head ($sent_http_*), the same for every replay of this hit.
        self.upstream = r.upstream
        self.out = r.out
        self.body_sent = r.body_sent
        self.size = len(pre) + len(DATE.line()) + len(post)

    def __call__(self, conn: HttpConnection, record: HeadRecord, rest: bytes) -> bool:
        if conn.port is not self.port:
            return False
        loc = self.loc
        if conn.requests + 1 >= loc.keepalive_requests or conn.worker.draining:
            return False
        now = int(time.time())
        entry = self.entry
        zone = self.zone
        if (
            entry.header.valid_sec < now
            or zone.hot.entries.get(self.digest) is not entry
            or not zone.index.current(self.slot, self.digest, self.version)
        ):
            record.replay = None
            return False
        if now != self.touched:
            self.touched = now
            if not zone.index.touch(self.slot, self.digest, now, zone.inactive):
                record.replay = None
                return False
        conn.replay_started()
        conn.write(self.pre + DATE.line().encode() + self.post)
        if loc.access_logs:
            self._log(conn, record)
        conn.replay_done(rest)
        return True

    def _log(self, conn: HttpConnection, record: HeadRecord) -> None:
        r = conn.new_request(record)
        r.srv = self.srv
        r.loc = self.loc
        r.status = 200
        r.header_sent = True
        r.done = True
        r.out = self.out
        r.upstream = self.upstream
        r.body_sent = self.body_sent
        r.bytes_sent = self.size
        conn.log_request(r)


def install(r: Any, lk: Any) -> None:
    """After a HIT sent by the phases: keep a replay on the request's head record when the
    response depends on nothing but the head bytes and the entry (module docstring)."""
    record = r.record
    if record is None or not _replayable(r, lk):
        return
    head = r.build_head()
    cut = head.find(_DATE_PREFIX)
    if cut < 0:
        return
    end = head.find(b"\r\n", cut + 2)
    body = lk.entry.body
    record.replay = HitReplay(r, lk, head[: cut + 2], head[end + 2 :] + body)


def _replayable(r: Any, lk: Any) -> bool:
    conn = r.conn
    loc = r.loc
    srv = r.srv
    out = r.out
    entry = lk.entry
    node = lk.node
    settings = lk.settings
    return (
        conn.send_fields is None  # HTTP/1 (an h2 stream has no head records anyway)
        and not conn.is_ssl
        and not conn.port.listens[0].ssl
        and srv.conf.realip is None
        and srv.script is None
        and loc.script is None
        and not loc.access_phase
        and not loc.add_headers
        and loc.expires is None
        and not loc.limit_rate
        and r.limit_rate is None
        and r.method == "GET"
        and (1, 0) <= r.version < (2, 0)
        and r.status == 200
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
        and entry is not None
        and entry.body is not None
        and out.content_length == len(entry.body)
        and r.body_sent == len(entry.body)
        and lk.status == "HIT"
        and node is not None
        and node.slot >= 0
        and lk.zone.hot.entries.get(lk.digest) is entry
        and settings.zone is not None
        and not settings.bypass
        and _head_only_key(settings.key_text)
    )


# Variables whose value a request head determines on a given plain-HTTP listening port (and
# the server it selects). A cache key made only of these (and text) names the same entry for
# the same head bytes; $remote_addr or $server_addr, say, would not.
_HEAD_VARIABLES = frozenset((
    "scheme", "host", "request_uri", "uri", "document_uri", "args", "query_string", "is_args",
    "request_method", "request", "server_protocol", "server_name", "proxy_host", "proxy_port",
))
_HEAD_PREFIXES = ("http_", "arg_", "cookie_")


def _head_only_key(text: str | None) -> bool:
    if text is None:
        return True  # the default key: the upstream URL for this URI
    for part in split_complex(text):
        if isinstance(part, tuple):
            name = part[0]
            if name not in _HEAD_VARIABLES and not name.startswith(_HEAD_PREFIXES):
                return False
    return True


__all__ = ["HitReplay", "install"]
