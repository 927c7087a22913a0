"""Directory listings exactly as nginx's autoindex module writes them
(ngx_http_autoindex_module.c): html, json, jsonp and xml.

`scan(path)` reads a directory the way nginx does; `render(uri, entries, ...)` turns the
entries into the response body and its Content-Type. Names are handled as the bytes they are
on disk (str names carry undecodable bytes as surrogates, as os.scandir gives them), because
nginx pads, truncates and escapes bytes, not characters.

nginx's rules, kept here:
- Names starting with "." are not listed. Directories come first, then everything else, each
  group in byte order of the names (strcmp).
- html: the URI (HTML-escaped) in the title and heading, a "../" link, then one line per
  entry: the link (name percent-escaped as a URI component, "/" appended for directories),
  the name HTML-escaped and padded with spaces to 50 columns (directories get their "/"
  inside the 50 when it fits), a space, the mtime as "26-Nov-2026 12:00" (GMT, or shifted by
  the server's current UTC offset with autoindex_localtime), a space, and the size: exact,
  right-aligned in 19 columns ("-" for directories), or with autoindex_exact_size off
  rounded to K/M/G in 7 columns. Columns are counted in bytes, or in UTF-8 characters when
  the response charset is utf-8 (nginx's own UTF-8 decoder; an invalid name counts bytes).
  Longer names are cut to 47 columns followed by "..&gt;".
- json: `{ "name":"...", "type":"directory"|"file"|"other", "mtime":"<HTTP date>"[,
  "size":N] }` per entry, CRLF separated, in [ ]; names escaped as nginx's ngx_escape_json
  does. jsonp wraps it as "/* callback */\\r\\nNAME(...);" -- without a callback it is json.
- xml: <directory|file|other mtime="2026-11-26T12:00:00Z" [size="N"]>name</...>, names
  HTML-escaped, the response charset utf-8.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from urllib.parse import quote_from_bytes

from pyngx.http.httpdate import gmtime, http_date

__all__ = ["Entry", "render", "scan", "jsonp_callback_ok", "NAME_LEN"]

NAME_LEN = 50  # NGX_HTTP_AUTOINDEX_NAME_LEN

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_CONTENT_TYPES = {
    "html": "text/html",
    "json": "application/json",
    "jsonp": "application/javascript",
    "xml": "text/xml; charset=utf-8",
}


@dataclass(slots=True)
class Entry:
    """One directory entry.

    is_dir / is_file / size / mtime: from stat(), following symlinks as nginx does (lstat()
    for a dangling one, which is then neither a directory nor a file: "other").
    """

    name: str
    is_dir: bool
    size: int
    mtime: float
    is_file: bool = True


def _name_bytes(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def scan(path: str) -> list[Entry]:
    """The entries nginx would list for directory `path` (hidden ones skipped).

    Raises OSError as nginx fails: opening the directory (nginx answers ENOENT, ENOTDIR and
    ENAMETOOLONG with 404, EACCES with 403, the rest with 500) or a stat() error other than
    the ones nginx tolerates (500). nginx lists an entry whose stat() fails with ENOENT or
    ELOOP (a dangling or looping symlink) from lstat(), and leaves out one that fails with
    EACCES.
    """
    out: list[Entry] = []
    with os.scandir(path) as it:
        for de in it:
            if de.name.startswith("."):
                continue
            try:
                st = os.stat(de.path)
            except PermissionError:
                continue
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ELOOP):
                    raise
                st = os.lstat(de.path)
            # nginx drops d_type once it has stat()ed: the type is the target's too.
            out.append(
                Entry(
                    de.name,
                    stat.S_ISDIR(st.st_mode),
                    st.st_size,
                    st.st_mtime_ns // 1_000_000_000,
                    stat.S_ISREG(st.st_mode),
                )
            )
    return out


def jsonp_callback_ok(callback: str) -> bool:
    """nginx's check of the callback argument: at most 128 of [A-Za-z0-9_.] (else 400)."""
    return len(callback) <= 128 and _CALLBACK.fullmatch(callback) is not None


_CALLBACK = re.compile(r"[A-Za-z0-9_.]*")


# --------------------------------------------------------------------------------------------
# escaping, on bytes


def _escape_html(b: bytes) -> bytes:
    # ngx_escape_html: exactly these four.
    if b"&" in b:
        b = b.replace(b"&", b"&amp;")
    if b"<" in b:
        b = b.replace(b"<", b"&lt;")
    if b">" in b:
        b = b.replace(b">", b"&gt;")
    if b'"' in b:
        b = b.replace(b'"', b"&quot;")
    return b


def _escape_uri_component(b: bytes) -> bytes:
    # NGX_ESCAPE_URI_COMPONENT escapes all but ALPHA, DIGIT, "-", ".", "_", "~" -- the same
    # set quote() always keeps -- with upper-case hex.
    return quote_from_bytes(b, safe="").encode("ascii")


_JSON_SPECIAL = re.compile(rb'[\x00-\x1f"\\]')
_JSON_SHORT = {0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x08: b"\\b", 0x0C: b"\\f"}


def _json_char(m: re.Match[bytes]) -> bytes:
    c = m.group()[0]
    if c > 0x1F:
        return b"\\" + m.group()
    return _JSON_SHORT.get(c) or b"\\u00%02X" % c


def _escape_json(b: bytes) -> bytes:
    return _JSON_SPECIAL.sub(_json_char, b)


# --------------------------------------------------------------------------------------------
# nginx's UTF-8 decoder (ngx_utf8_decode): lenient with surrogates, strict with overlongs.


def _utf8_chars(b: bytes) -> list[int] | None:
    """Byte lengths of the characters of `b`, or None where nginx finds it invalid."""
    out: list[int] = []
    i = 0
    n = len(b)
    while i < n:
        u = b[i]
        if u < 0x80:
            out.append(1)
            i += 1
            continue
        if u >= 0xF0:
            u &= 0x07
            valid, more = 0xFFFF, 3
        elif u >= 0xE0:
            u &= 0x0F
            valid, more = 0x7FF, 2
        elif u >= 0xC2:
            u &= 0x1F
            valid, more = 0x7F, 1
        else:
            return None
        if n - i - 1 < more:
            return None
        for j in range(i + 1, i + 1 + more):
            c = b[j]
            if c < 0x80:
                return None
            u = (u << 6) | (c & 0x3F)
        if u <= valid or u > 0x10FFFF:
            return None
        out.append(more + 1)
        i += more + 1
    return out


# --------------------------------------------------------------------------------------------
# formats


def _sort_key(e: Entry) -> tuple[bool, bytes]:
    return (not e.is_dir, _name_bytes(e.name))


def _human_size(length: int) -> bytes:
    if length > 1024 * 1024 * 1024 - 1:
        size, rest = divmod(length, 1024 * 1024 * 1024)
        if rest > 1024 * 1024 * 1024 // 2 - 1:
            size += 1
        return b"%6d%c" % (size, ord("G"))
    if length > 1024 * 1024 - 1:
        size, rest = divmod(length, 1024 * 1024)
        if rest > 1024 * 1024 // 2 - 1:
            size += 1
        return b"%6dM" % size
    if length > 9999:
        size, rest = divmod(length, 1024)
        if rest > 511:
            size += 1
        return b"%6dK" % size
    return b" %6d" % length


def _html_name(name: bytes, is_dir: bool, utf8: bool) -> bytes:
    """The link text and padding of one line: up to the space before the date."""
    chars = _utf8_chars(name) if utf8 and not name.isascii() else None
    width = len(chars) if chars is not None else len(name)
    if chars is not None:
        # Cut at a character boundary: 47 characters if too long, else the whole name.
        keep = sum(chars[: NAME_LEN - 3]) if width > NAME_LEN else len(name)
        shown = _escape_html(name[:keep])
    elif width > NAME_LEN:
        shown = _escape_html(name[: NAME_LEN - 3])
    else:
        shown = _escape_html(name)
    if width > NAME_LEN:
        return shown + b"..&gt;</a>"
    if is_dir and width < NAME_LEN:
        shown += b"/"
        width += 1
    return shown + b"</a>" + b" " * (NAME_LEN - width)


def _render_html(
    uri: bytes,
    entries: list[Entry],
    exact_size: bool,
    shift: int,
    utf8: bool,
) -> bytes:
    title = _escape_html(uri)
    out = [
        b"<html>\r\n<head><title>Index of ",
        title,
        b"</title></head>\r\n<body>\r\n<h1>Index of ",
        title,
        b'</h1><hr><pre><a href="../">../</a>\r\n',
    ]
    for e in entries:
        name = _name_bytes(e.name)
        href = _escape_uri_component(name)
        if e.is_dir:
            href += b"/"
        tm = gmtime(int(e.mtime // 1) + shift)
        date = b"%02d-%s-%d %02d:%02d " % (
            tm.tm_mday,
            _MONTHS[tm.tm_mon - 1].encode(),
            tm.tm_year,
            tm.tm_hour,
            tm.tm_min,
        )
        if exact_size:
            size = b"                  -" if e.is_dir else b"%19d" % e.size
        else:
            size = b"      -" if e.is_dir else _human_size(e.size)
        out.append(
            b'<a href="%s">%s %s%s\r\n' % (href, _html_name(name, e.is_dir, utf8), date, size)
        )
    out.append(b"</pre><hr></body>\r\n</html>\r\n")
    return b"".join(out)


def _kind(e: Entry) -> bytes:
    if e.is_dir:
        return b"directory"
    return b"file" if e.is_file else b"other"


def _render_json(entries: list[Entry], callback: str | None) -> bytes:
    items = []
    for e in entries:
        item = b'{ "name":"%s", "type":"%s", "mtime":"%s' % (
            _escape_json(_name_bytes(e.name)),
            _kind(e),
            http_date(e.mtime).encode(),
        )
        if not e.is_dir and e.is_file:
            item += b'", "size":%d }' % e.size
        else:
            item += b'" }'
        items.append(item)
    body = b"[" + b"".join(b"\r\n" + item + b"," for item in items)
    if items:
        body = body[:-1]  # nginx strips the last comma
    body += b"\r\n]"
    if callback:
        body = b"/* callback */\r\n" + callback.encode("ascii") + b"(" + body + b");"
    return body


def _render_xml(entries: list[Entry]) -> bytes:
    out = [b'<?xml version="1.0"?>\r\n<list>\r\n']
    for e in entries:
        kind = _kind(e)
        tm = gmtime(e.mtime)
        line = b'<%s mtime="%4d-%02d-%02dT%02d:%02d:%02dZ' % (
            kind,
            tm.tm_year,
            tm.tm_mon,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
        )
        if not e.is_dir and e.is_file:
            line += b'" size="%d' % e.size
        out.append(b'%s">%s</%s>\r\n' % (line, _escape_html(_name_bytes(e.name)), kind))
    out.append(b"</list>\r\n")
    return b"".join(out)


def render(
    uri: str | bytes,
    entries: list[Entry],
    fmt: str = "html",
    exact_size: bool = True,
    localtime: bool = False,
    callback: str | None = None,
    *,
    charset: str | None = None,
    gmtoff: int | None = None,
) -> tuple[bytes, str]:
    """The listing of `entries` for request URI `uri` (decoded, ending in "/").

    fmt: autoindex_format (html, json, jsonp, xml); exact_size / localtime: the
    autoindex_exact_size / autoindex_localtime flags; callback: the jsonp callback argument
    (check it with jsonp_callback_ok first: nginx answers 400 to a bad one; an empty or
    missing one makes jsonp plain json); charset: the response charset (utf-8 makes html
    columns count characters); gmtoff: UTC offset in seconds for localtime (default: the
    server's current one, as nginx uses its cached current offset for every entry).
    Hidden entries are skipped and the rest sorted as nginx does.

    Returns (body, Content-Type). For html/json/jsonp the charset, if any, is the caller's to
    add to the Content-Type; xml is always utf-8 and says so.
    """
    if fmt not in _CONTENT_TYPES:
        raise ValueError(f"invalid autoindex format {fmt!r}")
    listed = sorted((e for e in entries if not _name_bytes(e.name).startswith(b".")), key=_sort_key)
    if fmt == "jsonp":
        if not callback:
            fmt = "json"
        elif not jsonp_callback_ok(callback):
            raise ValueError(f"invalid jsonp callback {callback!r}")
    if fmt == "html":
        shift = 0
        if localtime:
            shift = gmtoff if gmtoff is not None else time.localtime().tm_gmtoff
        utf8 = charset is not None and charset.lower() == "utf-8"
        body = _render_html(_name_bytes(uri), listed, exact_size, shift, utf8)
    elif fmt == "xml":
        body = _render_xml(listed)
    else:
        body = _render_json(listed, callback if fmt == "jsonp" else None)
    return body, _CONTENT_TYPES[fmt]
