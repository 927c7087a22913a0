"""The proxy's use of the HTTP cache (pyngx/http/cache/): nginx's ngx_http_upstream_cache and
the cache parts of ngx_http_upstream_send_response / _next / _finalize_request.

The content handler (proxy_request.py) looks the request up once its Exchange (with the target)
exists, so that the default key is the upstream URL nginx hashes: schema + $proxy_host (or
"unix:path:") + the URI sent. A hit is served here through the proxy's own header copy (hidden
headers, proxy_redirect, cookie rewriting apply to hits as in nginx). Anything else goes
upstream with `ex.cache` set; proxy_run.py then stores the response (`writer`), refreshes an
entry on a 304 (proxy_cache_revalidate), serves the expired entry on failures
(proxy_cache_use_stale) or caches nginx's own 502/504.

A background update (proxy_cache_background_update, STALE) has no client to answer: it is a
small fetch of its own (`_background`), one connection, no retries, stored like a miss.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from pyngx.core.log import ERROR
from pyngx.http import cache
from pyngx.http.cache import replay
from pyngx.http.proxy_headers import copy_headers
from pyngx.http.proxy_response import BadHead, ChunkedDecoder, ChunkedError, Head, parse_head
from pyngx.http.request import DONE

# proxy_cache_use_stale's words for the failure types (ngx_http_upstream_next's ft_type).
FT_ERROR = 0x2
FT_TIMEOUT = 0x4
FT_INVALID_HEADER = 0x8
FT_NOLIVE = 0x40000000
STALE_CONDITION = {
    FT_ERROR: "error",
    FT_TIMEOUT: "timeout",
    FT_INVALID_HEADER: "invalid_header",
    FT_NOLIVE: "no_live",
    0x10: "http_500",
    0x20: "http_502",
    0x40: "http_503",
    0x80: "http_504",
    0x100: "http_403",
    0x200: "http_404",
    0x400: "http_429",
}

_BG_TASKS: set[asyncio.Task[None]] = set()


def default_key(target: Any, uri: str) -> str:
    """nginx's key when no proxy_cache_key is set: ctx->vars.key_start + the URI sent."""
    if target.unix:
        # "http://unix:/path:/uri" -> "http://unix:/path:" (the path ends at its ':').
        url: str = target.url
        start = len(target.schema) + 5
        colon = url.find(":", start)
        prefix = url[: colon + 1] if colon >= 0 else url + ":"
        return prefix + uri
    return f"{target.schema}{target.host_header}{uri}"


def copier(ex: Any) -> Callable[[Any, int, str, list[tuple[str, str]]], None]:
    """The stored head through the proxy's own copy (proxy_headers.copy_headers)."""

    def copy(r: Any, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        line = f"{status} {reason}" if reason else str(status)
        head = Head(status, line, [f"{n}: {v}" for n, v in headers], 0, False)
        copy_headers(ex, head)

    return copy


def serve(r: Any, ex: Any, lk: Any, entry: Any) -> int | Coroutine[Any, Any, int]:
    """serve_entry with the proxy's header copy and proxy_force_ranges."""
    result = cache.serve_entry(
        r, entry, lk, copy_headers=copier(ex), force_ranges=ex.conf.force_ranges
    )
    if result == DONE and r.record is not None and r.record.replay is None:
        replay.install(r, lk)
    return result


def serve_now(r: Any, ex: Any, lk: Any, entry: Any) -> None:
    """serve() from a callback (a stale entry or a revalidated one): a status is finalized
    with, a streamed body becomes the request's task."""
    r.out = type(r.out)()
    result = serve(r, ex, lk, entry)
    if isinstance(result, int):
        if result != DONE:
            r.finalize(result)
        return
    r.task = asyncio.ensure_future(r._run_async(result))


def start(r: Any, ex: Any, go: Callable[[], int | None]) -> Any:
    """The cache step of the content handler. `go()` sends the request upstream (the
    handler's remainder) and returns what the handler returns."""
    s = r.loc.cache
    lk = cache.start_lookup(r, s, key=default_key(ex.target, ex.uri))
    if lk.status is None and lk.action != cache.ERROR:
        return go()  # the method is not cached: nothing to store
    ex.cache = lk
    if lk.action == cache.WAIT:
        return _wait(r, ex, lk, go)
    return _dispatch(r, ex, lk, go)


async def _wait(r: Any, ex: Any, lk: Any, go: Callable[[], int | None]) -> int | None:
    try:
        while lk.action == cache.WAIT:
            await lk.wait()
    except BaseException:
        lk.close()
        raise
    if r.done:
        lk.close()
        return DONE
    result = _dispatch(r, ex, lk, go)
    if isinstance(result, int) or result is None:
        return result
    return await result  # type: ignore[no-any-return]


def _dispatch(r: Any, ex: Any, lk: Any, go: Callable[[], int | None]) -> Any:
    action = lk.action
    if action == cache.SERVE:
        return serve(r, ex, lk, lk.entry)
    if action == cache.ERROR:
        lk.close()
        return lk.error
    if action == cache.SERVE_AND_UPDATE:
        bg = lk.for_background()
        entry = lk.entry
        _spawn(_background(r, ex, bg))
        return serve(r, ex, lk, entry)
    if lk.upstream_method != r.method:
        ex.method = lk.upstream_method  # HEAD -> GET (proxy_cache_convert_head)
    return go()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _BG_TASKS.add(task)
    task.add_done_callback(_BG_TASKS.discard)


# -- the background update ------------------------------------------------------------------


async def _background(r: Any, ex: Any, lk: Any) -> None:
    """proxy_cache_background_update: fetch the expired entry again without a client."""
    from pyngx.http.proxy_request import build_head

    conf = ex.conf
    try:
        head_bytes = build_head(r, conf, lk.upstream_method, ex.uri, lk)
        peer_conf = _peer(ex)
        if peer_conf is not None:
            await asyncio.wait_for(
                _fetch(r, ex, lk, peer_conf.addr, head_bytes),
                conf.connect_timeout + conf.read_timeout + conf.send_timeout,
            )
    except (OSError, EOFError, TimeoutError, BadHead, ChunkedError):
        r.log(ERROR, "cache background update failed")
    except asyncio.CancelledError:
        pass
    finally:
        lk.close()


def _peer(ex: Any) -> Any:
    """One peer of the group (the balancer's choice), freed at once: a background update
    makes no retries and does not count in the balancer's state."""
    holder = ex.target.group.group
    balancer = holder.balancer
    loop = asyncio.get_running_loop()
    pick = balancer.start(loop.time(), None)
    peer = balancer.get(pick)
    if peer is None:
        return None
    balancer.free(peer, pick, failed=False)
    return peer.conf


async def _fetch(r: Any, ex: Any, lk: Any, addr: Any, head_bytes: bytes) -> None:
    conf = ex.conf
    ssl_ctx = conf.ssl.ctx if ex.target.ssl and conf.ssl is not None else None
    if addr.family == socket.AF_UNIX:
        reader, out = await asyncio.open_unix_connection(addr.address, ssl=ssl_ctx)
    else:
        reader, out = await asyncio.open_connection(
            addr.address[0], addr.address[1], ssl=ssl_ctx,
            server_hostname=ex.target.host_header.partition(":")[0] if ssl_ctx else None,
        )
    try:
        body = ex.body
        out.write(head_bytes + (b"".join(body) if body else b""))
        data = b""
        head = None
        while head is None:
            more = await reader.read(65536)
            if not more:
                raise EOFError
            data += more
            head = parse_head(data, conf.buffer_size)
        head.framing()
        pairs = head.pairs()
        rest = data[head.size :]
        if head.status == 304:
            cache.revalidated(r, lk.settings, lk, pairs)
            return
        w = cache.store_writer(
            r, lk.settings, lk, head.status, pairs, raw_head=data[: head.size],
            reason=head.status_line[4:], expected_length=head.content_length,
        )
        if w is None:
            return
        try:
            await _body(reader, w, head, rest, lk.upstream_method == "HEAD")
        except BaseException:
            w.abort()
            raise
        w.commit()
    finally:
        out.close()


async def _body(reader: Any, w: Any, head: Head, rest: bytes, no_body: bool) -> None:
    """The de-chunked body into the cache writer."""
    if head.status in (204, 304) or no_body:
        return
    if head.chunked:
        decoder = ChunkedDecoder()
        while True:
            for piece in decoder.feed(rest):
                w.write(piece)
            if decoder.done:
                break
            rest = await reader.read(65536)
            if not rest:
                raise EOFError
    else:
        left = head.content_length
        while True:
            if left is not None:
                rest = rest[:left]
                left -= len(rest)
            if rest:
                w.write(rest)
            if left == 0:
                break
            rest = await reader.read(65536)
            if not rest:
                if left is not None:
                    raise EOFError
                break


__all__ = ["STALE_CONDITION", "copier", "default_key", "serve", "serve_now", "start"]
