"""TEMPORARY stand-in (replaced by the h-static branch)."""

from __future__ import annotations

from pyngx import NGINX_COMPAT_VERSION

STATUS_LINES: dict[int, bytes] = {
    200: b"200 OK", 201: b"201 Created", 204: b"204 No Content", 206: b"206 Partial Content",
    301: b"301 Moved Permanently", 302: b"302 Moved Temporarily", 304: b"304 Not Modified",
    400: b"400 Bad Request", 403: b"403 Forbidden", 404: b"404 Not Found",
    405: b"405 Not Allowed", 413: b"413 Request Entity Too Large", 500: b"500 Internal Server Error",
    502: b"502 Bad Gateway", 503: b"503 Service Temporarily Unavailable", 504: b"504 Gateway Time-out",
}


def error_page_body(status: int, server_tokens: str) -> bytes | None:
    line = STATUS_LINES.get(status)
    if line is None or status < 300 or status == 304:
        return None
    tail = "nginx" if server_tokens == "off" else f"nginx/{NGINX_COMPAT_VERSION}"
    t = line.decode()
    return (
        f"<html>\r\n<head><title>{t}</title></head>\r\n<body>\r\n<center><h1>{t}</h1></center>\r\n"
        f"<hr><center>{tail}</center>\r\n</body>\r\n</html>\r\n"
    ).encode()
