"""Static content: nginx's index, autoindex and static handlers, and `try_files`.

The URI maps to a path by `root` (root + uri) or `alias` (alias replaces the location's
prefix; in a regex location the alias is the whole path). Files up to SMALL_FILE are read
and written in one go (one write for head and body); larger ones stream in LARGE_CHUNK
pieces with flow control, so a slow client holds a bounded amount of memory.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from pyngx.core.log import CRIT, ERROR
from pyngx.http.conditional import make_etag, not_modified, stat_mtime
from pyngx.http.request import DONE

_CONDITIONAL = ("if-modified-since", "if-none-match", "if-match", "if-unmodified-since")

SMALL_FILE = 256 * 1024
LARGE_CHUNK = 256 * 1024


def document_root(r: Any) -> str | None:
    loc = r.loc
    if loc.root_fn is not None:
        root = loc.root_fn(r)
        if loc.alias:
            return root
        return r.conn.worker.cycle.paths.full(root) if not root.startswith("/") else root
    return loc.root


def map_uri_to_path(r: Any, uri: str | None = None) -> str | None:
    """ngx_http_map_uri_to_path: the filesystem path for `uri` (default: r.uri)."""
    loc = r.loc
    uri = r.uri if uri is None else uri
    root = document_root(r)
    if root is None:
        return None
    if loc.alias:
        if loc.alias_regex:
            # In a regex location the alias (with captures) is the whole path.
            return root
        name = loc.alias_name
        if uri.startswith(name):
            return root + uri[len(name) :]
        return root + uri
    return root + uri


def _mime(r: Any, path_uri: str) -> str:
    loc = r.loc
    slash = path_uri.rfind("/")
    dot = path_uri.rfind(".")
    if dot > slash + 0 and dot > slash:
        ext = path_uri[dot + 1 :].lower()
        t = loc.types.get(ext)
        if t is not None:
            return t
    return loc.default_type


def _open_error(r: Any, path: str, exc: OSError) -> int:
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        if r.loc.log_not_found:
            r.log(ERROR, f'open() "{path}" failed ({code}: {os.strerror(code)})')
        return 404
    if code == errno.EACCES:
        r.log(ERROR, f'open() "{path}" failed ({code}: {os.strerror(code)})')
        return 403
    r.log(CRIT, f'open() "{path}" failed ({code}: {os.strerror(code or 0)})')
    return 500


def serve(r: Any) -> int | None:
    """The default content handler: index (uri ends with '/'), autoindex, static."""
    method = r.method
    if method not in ("GET", "HEAD", "POST"):
        return 405
    uri = r.uri
    if uri.endswith("/"):
        return _index(r)
    path = map_uri_to_path(r)
    if path is None:
        return 500
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return _open_error(r, path, exc)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            fd = -1
            location = uri + "/"
            if r.args:
                location += "?" + r.args
            r.out.location = location
            return 301
        if not stat.S_ISREG(st.st_mode):
            r.log(CRIT, f'"{path}" is not a regular file')
            return 404
        if method == "POST":
            return 405
        return send_file(r, fd, st, path)
    finally:
        if fd >= 0:
            os.close(fd)


def send_file(r: Any, fd: int, st: os.stat_result, path: str) -> int | None:
    out = r.out
    size = st.st_size
    out.content_type = _mime(r, r.uri)
    out.last_modified = float(stat_mtime(st))
    if r.loc.etag:
        out.etag = make_etag(stat_mtime(st), size)
    r.status = 200
    headers = r.headers
    if any(h in headers for h in _CONDITIONAL):
        st_code = not_modified(r.headers, 200, out.last_modified, out.etag, r.loc.if_modified_since)
        if st_code is not None:
            if st_code == 304:
                r.send_response(304, b"")
                return DONE
            return st_code
    out.accept_ranges = r.loc.max_ranges != 0
    if r.headers.get("range") is not None and r.loc.max_ranges != 0:
        from pyngx.http.ranged import send_ranges

        handled = send_ranges(r, fd, size)
        if handled is not None:
            return handled
    if r.method == "HEAD":
        out.content_length = size
        r.status = 200
        r.send_head()
        r.finish()
        return DONE
    if size <= SMALL_FILE:
        data = os.pread(fd, size, 0) if size else b""
        r.send_response(200, data)
        return DONE
    out.content_length = size
    r.status = 200
    return _stream_file(r, os.dup(fd), 0, size)


async def _stream_range(r: Any, fd: int, offset: int, count: int, finish: bool = True) -> None:
    conn = r.conn
    try:
        while count > 0 and not r.done:
            n = min(LARGE_CHUNK, count)
            data = os.pread(fd, n, offset)
            if not data:
                break
            r.send_body(data)
            offset += len(data)
            count -= len(data)
            if conn.writing_paused:
                conn.set_timer("send", r.loc.send_timeout)
                await conn.drain()
    finally:
        os.close(fd)
    if finish and not r.done:
        r.finish()


def _stream_file(r: Any, fd: int, offset: int, count: int) -> Any:
    r.send_head()
    return _stream_and_done(r, fd, offset, count)


async def _stream_and_done(r: Any, fd: int, offset: int, count: int) -> int:
    await _stream_range(r, fd, offset, count)
    return DONE


def _index(r: Any) -> int | None:
    """ngx_http_index_handler: the first index file that exists → internal redirect."""
    loc = r.loc
    if r.method not in ("GET", "HEAD", "POST"):
        return 405
    dir_path = map_uri_to_path(r)
    if dir_path is None:
        return 500
    for name in loc.index:
        if "$" in name:
            from pyngx.conf.variables import compile_complex

            name = compile_complex(name, r.conn.worker.http.variables)(r)
        if name.startswith("/"):
            # An absolute index is the last resort: redirect to it whether it exists or not.
            r.internal_redirect(name, None)
            return DONE
        path = dir_path + name
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            if exc.errno == errno.EACCES:
                r.log(ERROR, f'"{path}" is forbidden ({exc.errno}: {os.strerror(exc.errno)})')
                return 403
            r.log(CRIT, f'stat() "{path}" failed ({exc.errno}: {os.strerror(exc.errno or 0)})')
            return 500
        del st
        r.internal_redirect(r.uri + name, None)
        return DONE
    # No index file: autoindex, or 403/404 as nginx's index and static modules answer.
    try:
        st = os.stat(dir_path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if loc.log_not_found:
                r.log(
                    ERROR, f'"{dir_path}{loc.index[0]}" is not found (2: No such file or directory)'
                )
            return 404
        return 403
    if not stat.S_ISDIR(st.st_mode):
        return 404
    if getattr(loc, "autoindex", False):
        from pyngx.http.autoindex_handler import autoindex

        return autoindex(r, dir_path)
    r.log(ERROR, f'directory index of "{dir_path}" is forbidden')
    return 403


def try_files(r: Any) -> int | None:
    """ngx_http_try_files_handler: the first existing file (or dir/) wins, else the last arg."""
    from pyngx.conf.variables import compile_complex

    loc = r.loc
    args: list[str] = loc.try_files
    table = r.conn.worker.http.variables
    for arg in args[:-1]:
        value = compile_complex(arg, table)(r) if "$" in arg else arg
        is_dir = value.endswith("/")
        test = value[:-1] if is_dir and len(value) > 1 else value
        path = map_uri_to_path(r, test)
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if is_dir != stat.S_ISDIR(st.st_mode):
            continue
        if not is_dir and not stat.S_ISREG(st.st_mode):
            continue
        # Found: the request goes on with this uri in the same location.
        if not loc.alias:
            r.uri = value if not is_dir else test + "/"
        else:
            r.uri = value
        return None_continue(r)
    last = args[-1]
    if last.startswith("="):
        return int(last[1:])
    value = compile_complex(last, table)(r) if "$" in last else last
    if value.startswith("@"):
        r.named_redirect(value)
        return DONE
    uri, _, qargs = value.partition("?")
    r.internal_redirect(uri, qargs if "?" in value else None)
    return DONE


def None_continue(r: Any) -> int | None:  # noqa: N802 - reads as the phase result it is
    """try_files found a file: go on to the content phase with the new uri."""
    handler = r.loc.content
    if handler is None:
        result = serve(r)
    else:
        result = handler(r)
    if result is None or result == DONE:
        return DONE
    if isinstance(result, int):
        return result
    import asyncio

    r.task = asyncio.ensure_future(r._run_async(result))
    return DONE
