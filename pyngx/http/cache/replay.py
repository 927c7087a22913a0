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

The general part (what the request must be, the bytes, the log line) is pyngx/http/replay.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pyngx.conf.variables import split_complex
from pyngx.http.replay import Replay, request_replayable, split_head

if TYPE_CHECKING:
    from pyngx.http.connection import HeadRecord, HttpConnection


class HitReplay(Replay):
    """One replayable hit: a callable kept on a HeadRecord (see the module docstring)."""

    __slots__ = ("zone", "digest", "entry", "slot", "version", "touched")

    def __init__(self, r: Any, lk: Any, pre: bytes, post: bytes) -> None:
        super().__init__(r, pre, post)
        self.zone = lk.zone
        self.digest = lk.digest
        self.entry = lk.entry
        self.slot = lk.node.slot
        self.version = lk.node.version
        self.touched = int(time.time())

    def __call__(self, conn: HttpConnection, record: HeadRecord, rest: bytes) -> bool:
        if not self.admit(conn):
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
        self.send(conn, record, rest)
        return True


def install(r: Any, lk: Any) -> None:
    """After a HIT sent by the phases: keep a replay on the request's head record when the
    response depends on nothing but the head bytes and the entry (module docstring)."""
    if not _replayable(r, lk):
        return
    parts = split_head(r)
    if parts is None:
        return
    pre, post = parts
    r.record.replay = HitReplay(r, lk, pre, post + lk.entry.body)


def _replayable(r: Any, lk: Any) -> bool:
    entry = lk.entry
    node = lk.node
    settings = lk.settings
    return (
        request_replayable(r)
        and r.loc.script is None
        and r.status == 200
        and entry is not None
        and entry.body is not None
        and r.out.content_length == len(entry.body)
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
