"""The client's response head from the upstream's (ngx_http_upstream_process_headers).

One pass over the upstream's header lines does everything nginx's header table does: drops the
hidden ones and those the proxy handles itself, records Content-Length, chunked, Connection
and X-Accel-* (whether hidden or not, as nginx's process handlers run first), moves
Content-Type to its field, rewrites Location/Refresh (proxy_redirect) and Set-Cookie
(proxy_cookie_*). What to do with a header is one lookup in a table made per location
(`header_actions`).
"""

from __future__ import annotations

from typing import Any

from pyngx.http.proxy_response import Head, refresh_prefix, rewrite_redirect

# What the response head copy does with a header (ProxyConf.actions, by lower-case name):
# not listed: passed as is.
A_HIDE, A_CT, A_CL, A_TE, A_CONN, A_XAR, A_XAR_PASS, A_XAB, A_XAB_PASS, A_REWRITE = range(10)


def header_actions(hide: frozenset[str], redirects: bool, cookies: bool) -> dict[str, int]:
    """The copy's table for one location: its hidden headers, the headers nginx processes
    itself (never passed: Content-Length, Transfer-Encoding, Connection, Keep-Alive), and the
    rewritten ones (Location/Refresh with proxy_redirect, Set-Cookie with proxy_cookie_*)."""
    actions = {name: A_HIDE for name in hide}
    actions.update(
        {
            "content-length": A_CL,
            "transfer-encoding": A_TE,
            "connection": A_CONN,
            "keep-alive": A_HIDE,
        }
    )
    actions["x-accel-redirect"] = A_XAR if "x-accel-redirect" in hide else A_XAR_PASS
    actions["x-accel-buffering"] = A_XAB if "x-accel-buffering" in hide else A_XAB_PASS
    if "content-type" not in hide:
        actions["content-type"] = A_CT
    if redirects:
        for name in ("location", "refresh"):
            if name not in hide:
                actions[name] = A_REWRITE
    if cookies and "set-cookie" not in hide:
        actions["set-cookie"] = A_REWRITE
    return actions


# ngx_http_upstream_headers_in entries with `redirect` set: kept on X-Accel-Redirect.
# (Content-Type too in nginx, where it only sets a field the new handler sets again.)
REDIRECT_KEEP = frozenset(
    (
        "set-cookie",
        "content-disposition",
        "cache-control",
        "expires",
        "accept-ranges",
    )
)


def copy_headers(ex: Any, head: Head) -> None:
    """ngx_http_upstream_process_headers: the client's response head from the upstream's,
    in one pass that also records Content-Length, chunked, Connection and X-Accel-*
    (nginx's header handlers run whether or not the header is hidden)."""
    r = ex.r
    conf = ex.conf
    out = r.out
    r.status = head.status
    out.status_line = head.status_line
    actions = conf.actions
    headers = out.headers
    copies = head.copies
    if copies is not None:
        hit = copies.get(id(actions))
        if hit is not None and hit[0] is actions:
            _apply_copy(ex, head, hit[1])
            return
    start = len(headers)
    rewritten = False
    ct: str | None = None
    for line in head.lines:
        name, _, value = line.partition(":")
        low = name.lower()
        act = actions.get(low)
        if act is None:
            headers.append((name, value.strip(" ")))
            continue
        if act == A_HIDE:
            continue
        value = value.strip(" ")
        if act == A_CT:
            out.content_type = ct = value
            out.charset = None
            continue
        if act == A_CL:
            head.content_length = int(value) if value.isdigit() else None
            continue
        if act == A_TE:
            if "chunked" in value.lower():
                head.chunked = True  # 1.22: any mention of "chunked"
            continue
        if act == A_CONN:
            if "close" in value.lower():
                head.close = True
            continue
        if act in (A_XAR, A_XAR_PASS):
            head.accel_redirect = value
            if act == A_XAR:
                continue
        elif act in (A_XAB, A_XAB_PASS):
            if head.accel_buffering is None:
                head.accel_buffering = value.lower()
            if act == A_XAB:
                continue
        else:
            rewritten = True  # depends on the request: not cached
            new = _rewrite(ex, low, value)
            if new is None:
                continue
            value = new
        headers.append((name, value))
    if head.chunked:
        head.content_length = None
    if copies is not None and not rewritten:
        if len(copies) >= 64:
            copies.clear()
        status = head.status
        length = head.content_length
        # The body length when Exchange._whole_response may answer with this copy: a 2xx with
        # content, a Content-Length, nothing for X-Accel-* to do; 0 when it may not.
        whole = (
            length
            if 200 <= status < 300
            and status != 204
            and length
            and not head.chunked
            and head.accel_redirect is None
            and head.accel_buffering is None
            else 0
        )
        shared = None
        if whole:
            # The Head every response answered by _whole_response with this copy gets: one
            # object for them all (the same bytes parse the same, and nothing changes a Head
            # once its headers are copied).
            shared = Head(status, head.status_line, head.lines, head.size, head.close)
            shared.content_length = length
            shared.copies = copies
        copies[id(actions)] = (
            actions,
            (
                tuple(headers[start:]),
                ct,
                length,
                head.chunked,
                head.close,
                head.accel_redirect,
                head.accel_buffering,
            ),
            whole,
            shared,
        )
    _finish_copy(ex, head)


def _apply_copy(ex: Any, head: Head, copy: tuple[Any, ...]) -> None:
    """A copy made before for the same head bytes and location (no request-dependent
    rewrite was involved): the same headers and framing, without the per-line pass."""
    out = ex.r.out
    pairs, ct, head.content_length, head.chunked, head.close, xar, xab = copy
    out.headers += pairs
    if ct is not None:
        out.content_type = ct
        out.charset = None
    head.accel_redirect = xar
    head.accel_buffering = xab
    _finish_copy(ex, head)


def _finish_copy(ex: Any, head: Head) -> None:
    conf = ex.conf
    out = ex.r.out
    out.content_length = head.content_length
    if conf.pass_server:
        out.no_server = True
    if conf.pass_date:
        out.no_date = True
    ab = head.accel_buffering
    if ab is not None and not conf.ignore_accel_buffering:
        if ab == "yes":
            ex.buffering = True
        elif ab == "no":
            ex.buffering = False


def _rewrite(ex: Any, low: str, value: str) -> str | None:
    """Location and Refresh (proxy_redirect), Set-Cookie (proxy_cookie_*); None when the
    value moved to the response head's own field (a rewritten relative Location)."""
    r = ex.r
    conf = ex.conf
    redirects = conf.redirects
    if low == "location":
        if redirects is not None and value:
            new = rewrite_redirect(redirects, r, value, 0)
            if new is not None:
                if new.startswith("/") and r.loc.absolute_redirect:
                    # Made absolute by the header filter, as nginx does (only then).
                    r.out.location = new
                    return None
                return new
    elif low == "refresh":
        if redirects is not None:
            at = refresh_prefix(value)
            if at >= 0:
                new = rewrite_redirect(redirects, r, value, at)
                if new is not None:
                    return new
    elif conf.cookie_rewrite is not None:
        return conf.cookie_rewrite(r, value)
    return value


def redirect_keep(head: Head, hide: frozenset[str]) -> list[tuple[str, str]]:
    """The headers that survive an X-Accel-Redirect (nginx's `redirect` flag)."""
    return [
        (name, value)
        for name, value in head.pairs()
        if name.lower() in REDIRECT_KEEP and name.lower() not in hide
    ]


__all__ = ["A_CL", "A_CT", "A_HIDE", "A_REWRITE", "A_XAR", "copy_headers", "header_actions"]
