"""`expires`: the Expires and Cache-Control headers (ngx_http_headers_filter_module)."""

from __future__ import annotations

import time
from typing import Any

from pyngx.http.httpdate import http_date

_MAX_EXPIRES = "Thu, 31 Dec 2037 23:55:55 GMT"


def expires_headers(r: Any, spec: tuple[str, float], parts: list[str]) -> None:
    kind, seconds = spec
    if kind == "off":
        return
    if kind == "epoch":
        parts.append("Expires: Thu, 01 Jan 1970 00:00:01 GMT\r\n")
        parts.append("Cache-Control: no-cache\r\n")
        return
    if kind == "max":
        parts.append(f"Expires: {_MAX_EXPIRES}\r\n")
        parts.append("Cache-Control: max-age=315360000\r\n")
        return
    now = time.time()
    if kind == "modified":
        base = r.out.last_modified if r.out.last_modified is not None else now
    else:
        base = now
    expires_at = base + seconds
    parts.append(f"Expires: {http_date(expires_at)}\r\n")
    max_age = int(expires_at - now)
    if seconds < 0 or max_age < 0:
        parts.append("Cache-Control: no-cache\r\n")
    else:
        parts.append(f"Cache-Control: max-age={max_age}\r\n")
