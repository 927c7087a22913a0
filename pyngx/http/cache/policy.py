"""What nginx's proxy cache decides, as pure functions (no I/O, no clock: `now` is passed in).

The rules are ngx_http_upstream.c's and ngx_http_file_cache.c's:

Storing a response (ngx_http_upstream_process_headers / _send_response):
- the request method must be in proxy_cache_methods (GET and HEAD always are);
- the response header lines are read in order, each known one updating the entry's validity
  (`valid_sec`, 0 = not set by the headers) and three flags:
  * `X-Accel-Expires: N` sets valid = now + N, `@T` sets valid = T, and both clear `no_cache`
    and `expired`; `0` makes the response not cacheable; anything else is ignored;
  * `Cache-Control`: `no-cache`, `no-store` or `private` anywhere (case-insensitive substring,
    as nginx searches) sets `no_cache`; `s-maxage=N` (preferred) or `max-age=N` sets valid =
    now + N and clears `expired` (N = 0 sets `no_cache`, a non-digit before `,` `;` or space
    makes it not cacheable). A Cache-Control line after X-Accel-Expires set the validity only
    contributes its extensions: `stale-while-revalidate=N` (updating and error windows) and
    `stale-if-error=N` (error window);
  * `Expires` is used only when nothing set the validity before it; a date in the past or an
    invalid one sets `expired`;
  * `Set-Cookie` makes the response not cacheable; `Vary: *` too; the other Vary values are
    joined with ", " (more than 128 bytes: not cacheable) and give the entry a variant;
  * each of these is skipped when named in proxy_ignore_headers.
  Then `no_cache` or `expired` make the response not cacheable, proxy_no_cache (any value
  not empty and not "0") too, and without a validity from the headers the first matching
  proxy_cache_valid line gives one (`any` matches every status; none: not cached).
  These are nginx 1.23's rules (its fix of ticket #964); 1.22 applied them in header order,
  so that e.g. an Expires in the past before `Cache-Control: max-age` prevented caching.
  The precedence is the same in every order here: X-Accel-Expires > Cache-Control > Expires
  > proxy_cache_valid.

Using an entry (ngx_http_file_cache_read and ngx_http_upstream_cache):
- fresh while valid_sec >= now (seconds, as nginx compares them);
- expired: the first request to see it becomes the updater (STALE internally), the others
  see UPDATING; an expired entry may still be served within its stale-while-revalidate window
  or with `proxy_cache_use_stale updating`, with a background update if configured, and on
  upstream errors listed in proxy_cache_use_stale or within stale-if-error (STALE);
- $upstream_cache_status: MISS, BYPASS, EXPIRED, STALE, UPDATING, REVALIDATED, HIT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pyngx.http.httpdate import parse_time

MISS, BYPASS, EXPIRED, STALE, UPDATING, REVALIDATED, HIT = (
    "MISS",
    "BYPASS",
    "EXPIRED",
    "STALE",
    "UPDATING",
    "REVALIDATED",
    "HIT",
)
CACHE_STATUSES = (MISS, BYPASS, EXPIRED, STALE, UPDATING, REVALIDATED, HIT)

# proxy_ignore_headers values (ngx_http_upstream_ignore_headers_masks), lower-cased.
IGNORABLE = (
    "x-accel-redirect",
    "x-accel-expires",
    "x-accel-limit-rate",
    "x-accel-buffering",
    "x-accel-charset",
    "expires",
    "cache-control",
    "set-cookie",
    "vary",
)

# proxy_cache_use_stale values (ngx_http_proxy_next_upstream_masks).
STALE_CONDITIONS = (
    "error",
    "timeout",
    "invalid_header",
    "updating",
    "non_idempotent",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "http_403",
    "http_404",
    "http_429",
    "off",
)

# nginx's NGX_HTTP_CACHE_VARY_LEN / NGX_HTTP_CACHE_ETAG_LEN (cache file header fields).
VARY_LEN = 128
ETAG_LEN = 128
# time_t in the cache file header; a huge max-age must not overflow it.
MAX_TIME = (1 << 62) - 1


def declines(values: Iterable[str]) -> bool:
    """ngx_http_test_predicates: proxy_cache_bypass / proxy_no_cache hold when any value is
    neither empty nor "0"."""
    return any(v and v != "0" for v in values)


def valid_for_status(table: Sequence[tuple[int, int]], status: int) -> int:
    """ngx_http_file_cache_valid: seconds from the first proxy_cache_valid entry matching
    `status` (status 0 is `any`), 0 when none does."""
    for code, seconds in table:
        if code == 0 or code == status:
            return seconds
    return 0


@dataclass(slots=True)
class Freshness:
    """What the response header lines say about caching (u->cacheable, u->headers_in
    no_cache/expired, r->cache valid_sec/updating_sec/error_sec/vary)."""

    cacheable: bool = True
    no_cache: bool = False
    expired: bool = False
    valid_sec: int = 0
    updating_sec: int = 0
    error_sec: int = 0
    vary: str | None = None
    reason: str = ""

    def refuse(self, reason: str) -> None:
        if self.cacheable:
            self.cacheable = False
            self.reason = reason


def _atoi(text: str) -> int | None:
    """ngx_atoi: one or more ASCII digits, nothing else."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _directive_number(value: str, start: int) -> int | None:
    """The digits of a Cache-Control directive value, up to `,` `;` space or the end;
    None when another character comes first (nginx then refuses to cache)."""
    n = 0
    for ch in value[start:]:
        if ch in ",; ":
            break
        if "0" <= ch <= "9":
            n = n * 10 + (ord(ch) - 48)
            continue
        return None
    return n


def parse_freshness(
    headers: Iterable[tuple[str, str]], ignore: frozenset[str] | set[str], now: int
) -> Freshness:
    """Read the upstream response's header lines as nginx's header handlers do.

    headers: (name, value) in the order received; names in any case.
    ignore: proxy_ignore_headers, lower-cased.
    """
    f = Freshness()
    xae_seen = expires_seen = False
    vary_values: list[str] = []
    for name, value in headers:
        low = name.lower()
        if low == "x-accel-expires":
            if xae_seen:
                continue  # nginx ignores a duplicate line
            xae_seen = True
            if low in ignore:
                continue
            _x_accel_expires(f, value, now)
        elif low == "cache-control":
            if low in ignore:
                continue
            _cache_control(f, value, now, xae_seen)
        elif low == "expires":
            if expires_seen:
                continue
            expires_seen = True
            if low in ignore or f.valid_sec != 0:
                continue
            t = parse_time(value)
            if t == -1 or t < now:
                f.expired = True
                continue
            f.valid_sec = min(t, MAX_TIME)
        elif low == "set-cookie":
            if low not in ignore:
                f.refuse("Set-Cookie")
        elif low == "vary":
            if low in ignore:
                continue
            if value == "*":
                f.refuse("Vary: *")
            vary_values.append(value)
    if vary_values and "vary" not in ignore:
        vary = ", ".join(vary_values)
        if len(vary.encode("latin-1", "replace")) > VARY_LEN:
            f.refuse("Vary too long")
        f.vary = vary
    if f.no_cache:
        f.refuse("Cache-Control")
    elif f.expired:
        f.refuse("Expires")
    return f


def _x_accel_expires(f: Freshness, value: str, now: int) -> None:
    if not value.startswith("@"):
        n = _atoi(value)
        if n is None:
            return
        if n == 0:
            f.refuse("X-Accel-Expires: 0")
            return
        f.valid_sec = min(now + n, MAX_TIME)
    else:
        n = _atoi(value[1:])
        if n is None:
            return
        f.valid_sec = min(n, MAX_TIME)
    f.no_cache = False
    f.expired = False


def _cache_control(f: Freshness, value: str, now: int, xae_seen: bool) -> None:
    low = value.lower()
    if not (f.valid_sec != 0 and xae_seen):
        if "no-cache" in low or "no-store" in low or "private" in low:
            f.no_cache = True
            return
        at = low.find("s-maxage=")
        skip = 9
        if at < 0:
            at = low.find("max-age=")
            skip = 8
        if at >= 0:
            n = _directive_number(value, at + skip)
            if n is None:
                f.refuse("Cache-Control")
                return
            if n == 0:
                f.no_cache = True
                return
            f.valid_sec = min(now + n, MAX_TIME)
            f.expired = False
    at = low.find("stale-while-revalidate=")
    if at >= 0:
        n = _directive_number(value, at + 23)
        if n is None:
            f.refuse("Cache-Control")
            return
        f.updating_sec = f.error_sec = n
    at = low.find("stale-if-error=")
    if at >= 0:
        n = _directive_number(value, at + 15)
        if n is None:
            f.refuse("Cache-Control")
            return
        f.error_sec = n


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to store a response, until when, and why not."""

    cacheable: bool
    valid_sec: int = 0
    reason: str = ""


def decide(
    status: int,
    fresh: Freshness,
    valid_table: Sequence[tuple[int, int]],
    now: int,
    *,
    no_cache: bool = False,
) -> Decision:
    """ngx_http_upstream_send_response's cache part: store, and until when.

    no_cache: proxy_no_cache held for the request (see `declines`).
    """
    if not fresh.cacheable:
        return Decision(False, reason=fresh.reason)
    if no_cache:
        return Decision(False, reason="proxy_no_cache")
    valid = fresh.valid_sec
    if valid == 0:
        seconds = valid_for_status(valid_table, status)
        if seconds:
            valid = now + seconds
    if not valid:
        return Decision(False, reason=f"no validity for status {status}")
    return Decision(True, valid)


def validators(status: int, headers: Iterable[tuple[str, str]]) -> tuple[int, str]:
    """The (last_modified, etag) nginx keeps in the cache file header: those of a 200 or 206
    response (-1 and "" otherwise, or when absent). An ETag longer than 128 bytes is not
    kept, as nginx does not."""
    if status not in (200, 206):
        return -1, ""
    last_modified = -1
    etag = ""
    lm_seen = etag_seen = False
    for name, value in headers:
        low = name.lower()
        if low == "last-modified" and not lm_seen:
            lm_seen = True
            last_modified = parse_time(value)
        elif low == "etag" and not etag_seen:
            etag_seen = True
            etag = value
    if len(etag.encode("latin-1", "replace")) > ETAG_LEN:
        etag = ""
    return last_modified, etag


_NORMALIZED = frozenset(("accept-charset", "accept-encoding", "accept-language"))


def variant_hash(
    main_digest: bytes, vary: str, header_list: Iterable[tuple[str, str]]
) -> bytes:
    """ngx_http_file_cache_vary: the secondary key of a Vary'd response, from the request's
    values of the header fields named in `vary` (all lines of each, joined by ","; the
    Accept-Charset/-Encoding/-Language tokens with their spaces taken out)."""
    md5 = hashlib.md5(main_digest)
    lines = list(header_list)
    for name in _vary_names(vary.lower()):
        md5.update(name.encode("latin-1", "replace"))
        md5.update(b":")
        normalize = name in _NORMALIZED
        multiple = False
        for hname, hvalue in lines:
            if hname.lower() != name:
                continue
            if not normalize:
                if multiple:
                    md5.update(b",")
                md5.update(hvalue.encode("latin-1", "replace"))
                multiple = True
                continue
            for token in _vary_names(hvalue):
                if multiple:
                    md5.update(b",")
                md5.update(token.encode("latin-1", "replace"))
                multiple = True
        md5.update(b"\r\n")
    return md5.digest()


def _vary_names(text: str) -> list[str]:
    """Tokens separated by spaces and commas, up to the first empty one (nginx's loop)."""
    out: list[str] = []
    for part in text.replace(",", " ").split(" "):
        if part:
            out.append(part)
    return out


def range_cacheable(range_value: str | None, max_offset: int | None) -> bool:
    """ngx_http_upstream_cache_check_range: may a request with this Range header populate
    the cache (proxy_cache_max_range_offset; None = no limit)?"""
    if range_value is None or max_offset is None:
        return True
    if max_offset == 0:
        return False
    if len(range_value) < 7 or range_value[:6].lower() != "bytes=":
        return True
    p = 6
    n = len(range_value)
    while p < n and range_value[p] == " ":
        p += 1
    if p < n and range_value[p] == "-":
        return False
    start = p
    while p < n and "0" <= range_value[p] <= "9":
        p += 1
    offset = int(range_value[start:p]) if p > start else 0
    return offset < max_offset


@dataclass(frozen=True, slots=True)
class EntryState:
    """An entry's times against the clock (ngx_http_file_cache_read)."""

    expired: bool
    stale_updating: bool  # within stale-while-revalidate
    stale_error: bool  # within stale-if-error


def entry_state(valid_sec: int, updating_sec: int, error_sec: int, now: int) -> EntryState:
    if valid_sec >= now:
        return EntryState(False, False, False)
    return EntryState(True, valid_sec + updating_sec >= now, valid_sec + error_sec >= now)


# What the lookup's caller does next.
SERVE = "serve"  # send the entry (HIT, STALE/UPDATING served stale)
SERVE_AND_UPDATE = "serve_update"  # send the entry, and fetch a new one in the background
UPSTREAM = "upstream"  # go to the upstream; store the response if cacheable
ERROR = "error"  # finalize with the cached error status


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # $upstream_cache_status
    action: str
    cacheable: bool = True


def classify(
    opened: str,
    *,
    use_stale_updating: bool,
    stale_updating: bool,
    background_update: bool,
    background_request: bool = False,
) -> Outcome:
    """ngx_http_upstream_cache's switch on ngx_http_file_cache_open's result.

    opened: "hit" (fresh entry), "error" (a cached error status), "stale" (expired, this
    request became the updater), "updating" (expired, another request is updating it),
    "miss" (no entry: go fetch it), "scarce" (min_uses not reached, or the cache lock
    timed out: fetch without storing).
    """
    may_serve_stale = (use_stale_updating or stale_updating) and not background_request
    if opened == "hit":
        return Outcome(HIT, SERVE)
    if opened == "error":
        return Outcome(HIT, ERROR)
    if opened == "stale":
        if may_serve_stale and background_update:
            return Outcome(STALE, SERVE_AND_UPDATE)
        return Outcome(EXPIRED, UPSTREAM)
    if opened == "updating":
        if may_serve_stale:
            return Outcome(UPDATING, SERVE)
        return Outcome(EXPIRED, UPSTREAM)
    if opened == "miss":
        return Outcome(MISS, UPSTREAM)
    if opened == "scarce":
        return Outcome(MISS, UPSTREAM, cacheable=False)
    raise ValueError(opened)


def stale_allowed(use_stale: frozenset[str], condition: str, stale_error: bool) -> bool:
    """ngx_http_upstream_next / _test_next: may an EXPIRED entry be sent (as STALE) when the
    upstream failed with `condition` ("error", "timeout", "invalid_header", "http_500", ...)?
    `no_live` (no live upstreams) counts as "error", as nginx's merge makes it."""
    if condition == "no_live":
        condition = "error"
    return condition in use_stale or stale_error


def revalidation_headers(last_modified: int, etag: str) -> list[tuple[str, str]]:
    """proxy_cache_revalidate: the conditional headers for an EXPIRED entry
    ($upstream_cache_last_modified, $upstream_cache_etag)."""
    from pyngx.http.httpdate import http_date

    out: list[tuple[str, str]] = []
    if last_modified != -1:
        out.append(("If-Modified-Since", http_date(last_modified)))
    if etag:
        out.append(("If-None-Match", etag))
    return out


def revalidated_valid(
    not_modified: Freshness,
    cached: Freshness,
    valid_table: Sequence[tuple[int, int]],
    cached_status: int,
    now: int,
) -> tuple[int, int, int]:
    """(valid_sec, updating_sec, error_sec) of an entry the upstream revalidated with 304:
    the 304's own freshness headers first, then those of the cached response read again,
    then proxy_cache_valid for the cached status (ngx_http_upstream_test_next). valid_sec 0:
    the entry's header stays as it is."""
    if not_modified.valid_sec:
        return not_modified.valid_sec, not_modified.updating_sec, not_modified.error_sec
    if cached.valid_sec:
        return cached.valid_sec, cached.updating_sec, cached.error_sec
    seconds = valid_for_status(valid_table, cached_status)
    if seconds:
        return now + seconds, not_modified.updating_sec, not_modified.error_sec
    return 0, 0, 0


__all__ = [
    "BYPASS",
    "CACHE_STATUSES",
    "ERROR",
    "EXPIRED",
    "HIT",
    "IGNORABLE",
    "MISS",
    "REVALIDATED",
    "SERVE",
    "SERVE_AND_UPDATE",
    "STALE",
    "STALE_CONDITIONS",
    "UPDATING",
    "UPSTREAM",
    "Decision",
    "EntryState",
    "Freshness",
    "Outcome",
    "classify",
    "declines",
    "decide",
    "entry_state",
    "parse_freshness",
    "range_cacheable",
    "revalidated_valid",
    "revalidation_headers",
    "stale_allowed",
    "valid_for_status",
    "validators",
    "variant_hash",
]
