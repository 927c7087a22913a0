"""Cache files in nginx's layout and format; writing them atomically; a per-worker copy of
small hot entries.

Layout: the file of a key is named by the MD5 hex of the key, under `levels` directories
taken from the end of the name (ngx_create_hashed_filename): with levels=1:2 the key whose
MD5 is b7f54b2df7773722d382f4809d65029c lives in `path/c/29/b7f5...029c`.

Format (byte for byte nginx 1.22's on x86-64 Linux, NGX_HTTP_CACHE_VERSION 5, so that pyngx
and nginx can read each other's caches and `grep KEY:` works as it does with nginx):

    ngx_http_file_cache_header_t   336 bytes, little-endian, C struct alignment:
        version u64, valid_sec i64, updating_sec i64, error_sec i64, last_modified i64,
        date i64, crc32 u32 (of the key), valid_msec u16, header_start u16, body_start u16,
        etag_len u8, etag[128], vary_len u8, vary[128], variant[16] (MD5), 4 bytes padding
    "\\nKEY: " key "\\n"          (header_start points after it)
    the upstream response head as received, status line to the empty line
    the body                     (body_start points at it)

Writing: a response goes to a temporary file and is renamed into place when complete, so a
reader (or a crash) never sees a partial entry. With use_temp_path=off the temporary file is
the entry's name plus ".NNNNNNNNNN" in the same directory (nginx's own choice; the loader
skips such names); with use_temp_path=on it is in the temporary directory (nginx's
proxy_temp_path, `proxy_temp` in the prefix, as pyngx has no proxy_temp_path), and a rename
across file systems becomes a copy.

Reading: one pread of READ_AHEAD bytes covers the header, the key, the response head and,
for most entries, the whole body: such an entry needs no file descriptor afterwards, and the
worker keeps it in its HotCache (bounded by HOT_MAX_ENTRY and HOT_BUDGET) so that later hits
cost no system call. The shared zone's per-key version tells a worker its copy is current.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ngx_http_file_cache_header_t, NGX_HTTP_CACHE_VERSION 5.
CACHE_VERSION = 5
HEADER = struct.Struct("<Q5qI3HB128sB128s16s4x")
HEADER_SIZE = HEADER.size  # 336
KEY_PREFIX = b"\nKEY: "
ETAG_LEN = 128
VARY_LEN = 128
MAX_BODY_START = 0xFFFF  # body_start is a u_short in nginx's header

READ_AHEAD = 64 * 1024
HOT_MAX_ENTRY = 256 * 1024
HOT_BUDGET = 64 * 1024 * 1024
WRITE_FLUSH = 256 * 1024

_TEMP_COUNTER = itertools.count(1)


def hashed_name(root: str, levels: tuple[int, ...], hexname: str) -> str:
    """ngx_create_hashed_filename: `root/<last level[0] chars>/<the level[1] before>/.../hex`."""
    parts = [root]
    end = len(hexname)
    for n in levels:
        parts.append(hexname[end - n : end])
        end -= n
    parts.append(hexname)
    return "/".join(parts)


def key_bytes(key: str) -> bytes:
    """A cache key as nginx hashes it: request bytes arrive as latin-1 characters."""
    try:
        return key.encode("latin-1")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class FileHeader:
    """The fields of ngx_http_file_cache_header_t."""

    valid_sec: int = 0
    updating_sec: int = 0
    error_sec: int = 0
    last_modified: int = -1
    date: int = 0
    crc32: int = 0
    valid_msec: int = 0
    header_start: int = 0
    body_start: int = 0
    etag: str = ""
    vary: str = ""
    variant: bytes = b"\0" * 16
    version: int = CACHE_VERSION
    bad_vary: bool = False  # vary_len beyond VARY_LEN in a file read

    def pack(self) -> bytes:
        etag = self.etag.encode("latin-1", "replace")
        if len(etag) > ETAG_LEN:
            etag = b""  # nginx does not keep a longer one
        vary = self.vary.encode("latin-1", "replace")[:VARY_LEN]
        return HEADER.pack(
            self.version,
            self.valid_sec,
            self.updating_sec,
            self.error_sec,
            self.last_modified,
            self.date,
            self.crc32 & 0xFFFFFFFF,
            self.valid_msec,
            self.header_start,
            self.body_start,
            len(etag),
            etag,
            len(vary) if self.vary else 0,
            vary,
            self.variant if self.vary else b"\0" * 16,
        )

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> FileHeader:
        (
            version,
            valid_sec,
            updating_sec,
            error_sec,
            last_modified,
            date,
            crc,
            valid_msec,
            header_start,
            body_start,
            etag_len,
            etag,
            vary_len,
            vary,
            variant,
        ) = HEADER.unpack_from(data)
        bad_vary = vary_len > VARY_LEN
        return cls(
            valid_sec,
            updating_sec,
            error_sec,
            last_modified,
            date,
            crc,
            valid_msec,
            header_start,
            body_start,
            etag[: min(etag_len, ETAG_LEN)].decode("latin-1"),
            "" if bad_vary else vary[:vary_len].decode("latin-1"),
            bytes(variant),
            version,
            bad_vary,
        )


def header_start_for(key: bytes) -> int:
    return HEADER_SIZE + len(KEY_PREFIX) + len(key) + 1


def file_prefix(header: FileHeader, key: bytes, head: bytes) -> bytes:
    """Everything before the body; header_start/body_start are filled in here."""
    header.header_start = header_start_for(key)
    header.body_start = header.header_start + len(head)
    header.crc32 = zlib.crc32(key)
    return b"".join((header.pack(), KEY_PREFIX, key, b"\n", head))


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]] | None:
    """The stored response head: (status, reason, headers in order); None if unusable."""
    text = head.decode("latin-1")
    lines = text.split("\n")
    if not lines:
        return None
    status_line = lines[0].rstrip("\r")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    status = int(parts[1])
    if not 100 <= status <= 999:
        return None
    reason = parts[2] if len(parts) > 2 else ""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if not line:
            break
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            if line[0] in " \t" and headers:
                continue  # obsolete folding: nginx rejects it upstream; never stored
            return None
        headers.append((name, value.strip(" \t")))
    return status, reason, headers


def build_head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    """A response head for a store when the proxy did not keep the raw one."""
    from pyngx.http.special_response import status_line

    line = f"HTTP/1.1 {status} {reason}".rstrip() if reason else None
    first = line.encode("latin-1", "replace") if line else b"HTTP/1.1 " + status_line(status)
    out = [first, b"\r\n"]
    for name, value in headers:
        out.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    out.append(b"\r\n")
    return b"".join(out)


@dataclass(slots=True, eq=False)
class Entry:
    """A cached response: what serving and revalidating it need.

    The body is in `body` when it fit in the first read (the usual case), otherwise it is
    `length - body_start` bytes of the open file `fd` from `body_start` (the caller closes
    it with `close()`; a shared in-memory copy is never closed).
    """

    digest: bytes
    key: str
    path: str
    header: FileHeader
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes | None
    fd: int
    length: int
    inode: int
    version: int = 0
    size: int = 0  # bytes it takes in the HotCache
    extra: dict[str, Any] = field(default_factory=dict)
    # Worked out once by serve.py: (Content-Length to send or None, ranges allowed).
    send_meta: tuple[int | None, bool] | None = None

    @property
    def body_length(self) -> int:
        return self.length - self.header.body_start

    def read_body(self, offset: int = 0, count: int | None = None) -> bytes:
        """Body bytes [offset, offset+count) (from memory, or pread from the file)."""
        n = self.body_length - offset if count is None else count
        if self.body is not None:
            return self.body[offset : offset + n]
        return os.pread(self.fd, n, self.header.body_start + offset)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class ReadError(Exception):
    """An entry that cannot be used; `level`/`message` are nginx's log line for it."""

    def __init__(self, level: str, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.level = level
        self.message = message
        self.missing = missing  # ENOENT: simply no entry


def read_entry(path: str, key: bytes, digest: bytes) -> Entry:
    """Open and check the cache file of `key` (ngx_http_file_cache_open/_read).

    The variant check is the caller's (it needs the request's headers).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ReadError("info", "", missing=True) from None
        raise ReadError("crit", f'open() "{path}" failed ({exc.errno}: {exc.strerror})') from None
    try:
        st = os.fstat(fd)
        data = os.pread(fd, READ_AHEAD, 0)
        if len(data) >= HEADER_SIZE:
            body_start = FileHeader.unpack(data).body_start
            if len(data) < body_start <= st.st_size:
                data = os.pread(fd, body_start, 0)
        if len(data) < st.st_size <= HOT_MAX_ENTRY:
            # Small enough for the worker's HotCache: read it whole, so the hits after this
            # one (after a restart, another worker's store) are served from memory.
            data = os.pread(fd, st.st_size, 0)
        entry = parse_entry(data, st.st_size, key, digest, path)
        entry.inode = st.st_ino
        if entry.body is None:
            entry.fd = fd
        else:
            os.close(fd)
        return entry
    except ReadError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise ReadError("crit", f'read() "{path}" failed ({exc.errno}: {exc.strerror})') from None


def parse_entry(data: bytes, size: int, key: bytes, digest: bytes, path: str) -> Entry:
    """Check and parse the first bytes of an entry of `size` bytes (all of it when the body
    fits); the body is in memory when `data` holds it all. Raises ReadError."""
    header_start = header_start_for(key)
    if len(data) < header_start:
        raise ReadError("crit", f'cache file "{path}" is too small')
    h = FileHeader.unpack(data)
    if h.version != CACHE_VERSION:
        raise ReadError("info", f'cache file "{path}" version mismatch')
    if h.crc32 != zlib.crc32(key) or h.header_start != header_start:
        raise ReadError("crit", f'cache file "{path}" has md5 collision')
    at = HEADER_SIZE + len(KEY_PREFIX)
    if data[at : at + len(key)] != key:
        raise ReadError("crit", f'cache file "{path}" has md5 collision')
    if h.bad_vary:
        raise ReadError("crit", f'cache file "{path}" has incorrect vary length')
    if h.body_start < h.header_start or h.body_start > min(size, len(data)):
        raise ReadError("crit", f'cache file "{path}" has too long header')
    parsed = parse_head(bytes(data[h.header_start : h.body_start]))
    if parsed is None:
        raise ReadError("crit", f'cache file "{path}" contains invalid header')
    status, reason, headers = parsed
    body = bytes(data[h.body_start : size]) if size <= len(data) else None
    return Entry(digest, key.decode("latin-1"), path, h, status, reason, headers, body, -1, size, 0)


def update_header(path: str, entry: Entry, header: FileHeader) -> bool:
    """ngx_http_file_cache_update_header: rewrite the header of a revalidated entry in place,
    unless the file was replaced since it was read (inode, size, validators differ)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if st.st_ino != entry.inode or st.st_size != entry.length:
            return False
        old = FileHeader.unpack(os.pread(fd, HEADER_SIZE, 0))
        h0 = entry.header
        if (
            old.version != CACHE_VERSION
            or old.last_modified != h0.last_modified
            or old.crc32 != h0.crc32
            or old.header_start != h0.header_start
            or old.body_start != h0.body_start
        ):
            return False
        os.pwrite(fd, header.pack(), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def fs_size(st: os.stat_result, bsize: int) -> int:
    """The space a file takes, in bytes rounded up to blocks (nginx's fs_size, in bytes)."""
    used = max(st.st_size, st.st_blocks * 512)
    return (used + bsize - 1) // bsize * bsize


def size_on_disk(length: int, bsize: int) -> int:
    """fs_size for a file known by its length only."""
    return (length + bsize - 1) // bsize * bsize


def temp_suffix() -> str:
    """nginx's temporary names end in a dot and 10 digits."""
    n = (os.getpid() * 100003 + next(_TEMP_COUNTER)) % 10_000_000_000
    return f"{n:010d}"


def _open_temp(final: str, temp_dir: str | None) -> tuple[int, str]:
    for _ in range(8):
        name = f"{final}.{temp_suffix()}" if temp_dir is None else f"{temp_dir}/{temp_suffix()}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            return fd, name
        except FileExistsError:
            continue
        except FileNotFoundError:
            os.makedirs(os.path.dirname(name), 0o700, exist_ok=True)
    raise OSError(errno.EEXIST, "could not create a temporary file", final)


def rename_into_place(temp: str, final: str) -> None:
    """ngx_ext_rename_file: create the level directories if needed; across file systems,
    copy to a temporary name beside the target, then rename."""
    try:
        os.rename(temp, final)
        return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(final), 0o700, exist_ok=True)
        try:
            os.rename(temp, final)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    beside = f"{final}.{temp_suffix()}"
    shutil.copyfile(temp, beside)
    os.rename(beside, final)
    os.unlink(temp)


class Writer:
    """One response on its way into the cache: `write` body pieces, then `commit` (rename
    into place, index it) or `abort` (nothing becomes visible).

    The head and small bodies are kept in memory and written in one go at commit; larger
    bodies are written as they come, in WRITE_FLUSH pieces.
    """

    def __init__(
        self,
        final: str,
        temp_dir: str | None,
        prefix: bytes,
        *,
        expected: int | None,
        on_commit: Callable[[Writer, os.stat_result | None], None],
        on_abort: Callable[[Writer], None],
        memory_limit: int | None = None,
    ) -> None:
        self.final = final
        self.temp_dir = temp_dir
        self.prefix = prefix
        self.expected = expected
        self.on_commit = on_commit
        self.on_abort = on_abort
        self.pieces: list[bytes] = [prefix]
        self.buffered = len(prefix)
        self.written = 0  # body bytes received
        self.fd = -1
        self.temp = ""
        self.spilled = False  # pieces went to the file: the body is not all in memory
        self.done = False
        self.error: str | None = None
        self.memory_body: bytes | None = None
        # A store without files (redis): everything stays in memory, up to this much.
        self.memory_limit = memory_limit

    def write(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.written += len(data)
        self.pieces.append(data)
        self.buffered += len(data)
        if self.memory_limit is not None:
            if self.buffered > self.memory_limit:
                self.error = "entry too large for the store"
                self.abort()
        elif self.buffered >= WRITE_FLUSH:
            self._flush()

    def _flush(self) -> None:
        try:
            if self.fd < 0:
                self.fd, self.temp = _open_temp(self.final, self.temp_dir)
            data = b"".join(self.pieces)
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            self.error = f"{exc.strerror} ({exc.errno})"
            self.abort()
            return
        if len(self.pieces) > 1 or self.spilled:
            self.spilled = True
        self.pieces = []
        self.buffered = 0

    def body_if_in_memory(self) -> bytes | None:
        """The whole body, when it never left memory (for the worker's HotCache)."""
        if self.spilled:
            return None
        return b"".join(self.pieces[1:])

    def commit(self) -> bool:
        """The response is complete: make the entry visible. False if it was not stored
        (incomplete body, write error)."""
        if self.done:
            return False
        if self.expected is not None and self.written != self.expected:
            self.abort()
            return False
        body = self.body_if_in_memory()
        if self.memory_limit is not None:
            self.done = True
            self.memory_body = body
            self.on_commit(self, None)
            return True
        self._flush()
        if self.done:  # the flush failed
            return False
        self.done = True
        try:
            st = os.fstat(self.fd)
            os.close(self.fd)
            self.fd = -1
            rename_into_place(self.temp, self.final)
        except OSError as exc:
            self.error = f"{exc.strerror} ({exc.errno})"
            self._discard()
            self.on_abort(self)
            return False
        self.memory_body = body
        self.on_commit(self, st)
        return True

    def abort(self) -> None:
        """Drop the response (upstream error, client gone, not cacheable after all)."""
        if self.done:
            return
        self.done = True
        self._discard()
        self.on_abort(self)

    def _discard(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        if self.temp:
            try:
                os.unlink(self.temp)
            except OSError:
                pass
        self.pieces = []


class HotCache:
    """A worker's copies of small entries, by digest: FIFO-evicted within a byte budget.

    A copy is used only while the shared zone shows the same version for its key.
    """

    def __init__(self, budget: int = HOT_BUDGET, max_entry: int = HOT_MAX_ENTRY) -> None:
        self.budget = budget
        self.max_entry = max_entry
        self.used = 0
        self.entries: dict[bytes, Entry] = {}

    def get(self, digest: bytes) -> Entry | None:
        return self.entries.get(digest)

    def put(self, entry: Entry) -> None:
        if entry.body is None or entry.fd >= 0:
            return
        size = len(entry.body) + entry.header.body_start + 256
        if size > self.max_entry:
            return
        old = self.entries.pop(entry.digest, None)
        if old is not None:
            self.used -= old.size
        entry.size = size
        while self.entries and self.used + size > self.budget:
            victim = next(iter(self.entries))
            self.used -= self.entries.pop(victim).size
        self.entries[entry.digest] = entry
        self.used += size

    def drop(self, digest: bytes) -> None:
        old = self.entries.pop(digest, None)
        if old is not None:
            self.used -= old.size

    def clear(self) -> None:
        self.entries.clear()
        self.used = 0


__all__ = [
    "CACHE_VERSION",
    "HEADER_SIZE",
    "Entry",
    "FileHeader",
    "HotCache",
    "ReadError",
    "Writer",
    "build_head",
    "file_prefix",
    "fs_size",
    "hashed_name",
    "key_bytes",
    "parse_head",
    "parse_entry",
    "read_entry",
    "rename_into_place",
    "size_on_disk",
    "update_header",
]
