"""TEMPORARY stand-in (replaced by the h-static branch)."""

from __future__ import annotations

from pyngx.http.httpdate import parse_http_date


def make_etag(mtime: float, size: int) -> str:
    return f'"{int(mtime):x}-{size:x}"'


def not_modified(
    headers: dict[str, str], status: int, last_modified: float | None, etag: str | None,
    mode: str = "exact",
) -> int | None:
    inm = headers.get("if-none-match")
    if inm is not None and etag is not None:
        tags = [t.strip() for t in inm.split(",")]
        if "*" in tags or etag in tags or etag in [t[2:] for t in tags if t.startswith("W/")]:
            return 304
        return None
    ims = headers.get("if-modified-since")
    if ims is not None and last_modified is not None and mode != "off":
        t = parse_http_date(ims)
        if t is not None and (t == last_modified or (mode == "before" and t >= last_modified)):
            return 304
    return None
