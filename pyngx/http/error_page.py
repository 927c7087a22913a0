"""`error_page`: nginx's ngx_http_send_error_page.

`error_page 404 /404.html` redirects internally (the method becomes GET unless HEAD) and keeps
the original status; `=code` answers with that code, a bare `=` with the status of the page's
own response; `@name` goes to a named location; a URL answers with a redirect (302 unless
`=301/302/303/307/308`).
"""

from __future__ import annotations

from typing import Any

_REDIRECTS = (301, 302, 303, 307, 308)


def run_error_page(r: Any, status: int, target: str, overwrite: int | None) -> bool:
    """True when the error page took over the request."""
    if "$" in target:
        from pyngx.conf.variables import compile_complex

        target = compile_complex(target, r.conn.worker.http.variables)(r)
    if overwrite == -1:
        r.err_status = status
    else:
        r.err_status = overwrite or 0
    r.return_body = None
    if target.startswith("/"):
        if r.method != "HEAD":
            r.method = "GET"
        # The page's own args replace the request's (none: empty), as ngx_http_split_args.
        uri, _, args = target.partition("?")
        r.internal_redirect(uri, args)
        return True
    if target.startswith("@"):
        # A named location keeps the method (nginx changes it for URIs only).
        r.named_redirect(target)
        return True
    r.out.location = target
    code = overwrite if overwrite in _REDIRECTS else 302
    r.err_status = 0
    r.error_page_done = True
    r.finalize(code)
    return True
