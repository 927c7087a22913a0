"""nginx's HTTP cache (proxy_cache): the parts that do not need the proxy.

Modules:
    directives  proxy_cache_path, proxy_cache, proxy_cache_* (and proxy_ignore_headers,
                proxy_no_cache) -> `loc.cache` (CacheSettings, None when not caching)
    policy      the pure decisions: cacheable or not, valid until when, stale use, variants
    zone        the keys zone: the index shared by all workers (shared memory, LRU)
    store       cache files in nginx's own format and layout; atomic writes; HotCache
    lookups     one request's lookup / lock wait / store (the proxy drives it)
    serve       sending a cached response (conditional requests, ranges, HEAD)
    manager     the cache loader and manager (worker 0, a thread)
    redis_store the `proxy_cache_path redis://...` extension

The API for the proxy (see docs/http-cache.md, "Integrating with the proxy"):

    lk = start_lookup(r, loc.cache, key=default_key)   # sync; or: lk = await lookup(...)
    while lk.action == WAIT: await lk.wait()
    lk.status                # $upstream_cache_status (None: the cache is not used)
    lk.action                # SERVE | SERVE_AND_UPDATE | UPSTREAM | ERROR
    serve_entry(r, lk.entry, lk, copy_headers=...)     # DONE, a status, or a coroutine
    w = store_writer(r, loc.cache, lk, status, headers, raw_head=..., expected_length=...)
    w.write(data); w.commit() / w.abort()              # w is None: not cacheable
    lk.stale("error") / lk.revalidation_headers() / revalidated(...) / store_error(...)
    lk.close()               # always safe; done by commit/abort/serve_entry
"""

from __future__ import annotations

from pyngx.http.cache.lookups import (
    WAIT,
    CacheLookup,
    lookup,
    revalidated,
    start_lookup,
    store_error,
    store_writer,
)
from pyngx.http.cache.policy import (
    BYPASS,
    CACHE_STATUSES,
    ERROR,
    EXPIRED,
    HIT,
    MISS,
    REVALIDATED,
    SERVE,
    SERVE_AND_UPDATE,
    STALE,
    UPDATING,
    UPSTREAM,
)
from pyngx.http.cache.serve import default_copy_headers, serve_entry
from pyngx.http.cache.store import Entry, Writer

# Request headers the proxy must not pass upstream when the location caches
# (ngx_http_proxy_cache_headers): the cache answers conditional and range requests itself.
# Revalidation sends its own If-Modified-Since / If-None-Match (lk.revalidation_headers()).
UNFORWARDED_HEADERS = frozenset(
    ("if-modified-since", "if-unmodified-since", "if-none-match", "if-match", "range", "if-range")
)


def register(reg: object) -> None:
    """The cache directives (module convention of pyngx/http/modules.py)."""
    from pyngx.http.cache import directives

    directives.register(reg)  # type: ignore[arg-type]


def declare(nodes: list[object], table: object, http: object) -> list[object]:
    from pyngx.http.cache import directives

    return directives.declare(nodes, table, http)  # type: ignore[arg-type]


def configure(ctx: object, loc: object) -> None:
    from pyngx.http.cache import directives

    directives.configure(ctx, loc)  # type: ignore[arg-type]


def finish(http: object, conf: object) -> None:
    from pyngx.http.cache import directives

    directives.finish(http, conf)  # type: ignore[arg-type]


__all__ = [
    "BYPASS",
    "CACHE_STATUSES",
    "ERROR",
    "EXPIRED",
    "HIT",
    "MISS",
    "REVALIDATED",
    "SERVE",
    "SERVE_AND_UPDATE",
    "STALE",
    "UNFORWARDED_HEADERS",
    "UPDATING",
    "UPSTREAM",
    "WAIT",
    "CacheLookup",
    "Entry",
    "Writer",
    "configure",
    "declare",
    "default_copy_headers",
    "finish",
    "lookup",
    "register",
    "revalidated",
    "serve_entry",
    "start_lookup",
    "store_error",
    "store_writer",
]
