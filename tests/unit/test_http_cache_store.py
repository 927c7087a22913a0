"""Cache files (pyngx/http/cache/store.py): nginx's layout and binary format, atomic writes,
reading checks, in-place header updates, the worker's HotCache."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest

from pyngx.http.cache import store as s


def test_hashed_name_is_nginx_levels() -> None:
    name = "b7f54b2df7773722d382f4809d65029c"
    assert s.hashed_name("/data/nginx/cache", (1, 2), name) == f"/data/nginx/cache/c/29/{name}"
    assert s.hashed_name("/c", (), name) == f"/c/{name}"
    assert s.hashed_name("/c", (2,), name) == f"/c/9c/{name}"
    assert s.hashed_name("/c", (1, 1, 2), name) == f"/c/c/9/02/{name}"
    assert s.hashed_name("/c", (2, 2, 2), name) == f"/c/9c/02/65/{name}"


def _nginx_header(**kw: int | bytes) -> bytes:
    """ngx_http_file_cache_header_t as gcc lays it out on x86-64 (version 5)."""
    fields = {
        "version": 5,
        "valid_sec": 0,
        "updating_sec": 0,
        "error_sec": 0,
        "last_modified": -1,
        "date": 0,
        "crc32": 0,
        "valid_msec": 0,
        "header_start": 0,
        "body_start": 0,
        "etag": b"",
        "vary": b"",
        "variant": b"\0" * 16,
    }
    fields.update(kw)
    out = struct.pack(
        "<Qqqqqq", fields["version"], fields["valid_sec"], fields["updating_sec"],
        fields["error_sec"], fields["last_modified"], fields["date"],
    )
    out += struct.pack("<IHHH", fields["crc32"], fields["valid_msec"], fields["header_start"],
                       fields["body_start"])
    etag = fields["etag"]
    vary = fields["vary"]
    assert isinstance(etag, bytes) and isinstance(vary, bytes)
    out += bytes([len(etag)]) + etag.ljust(128, b"\0")
    out += bytes([len(vary)]) + vary.ljust(128, b"\0")
    out += fields["variant"]  # type: ignore[operator]
    return out + b"\0" * 4  # struct padding to 8


def test_header_layout_is_nginx_336_bytes() -> None:
    assert s.HEADER_SIZE == 336
    h = s.FileHeader(
        valid_sec=1795697692,
        date=1795697632,
        crc32=0x55F380A4,
        header_start=373,
        body_start=513,
        etag='"abc"',
        vary="Accept-Encoding",
        variant=b"\x07" * 16,
    )
    expected = _nginx_header(
        valid_sec=1795697692,
        date=1795697632,
        crc32=0x55F380A4,
        header_start=373,
        body_start=513,
        etag=b'"abc"',
        vary=b"Accept-Encoding",
        variant=b"\x07" * 16,
    )
    assert h.pack() == expected
    back = s.FileHeader.unpack(expected)
    assert back == h


def test_long_etag_is_not_kept() -> None:
    h = s.FileHeader(etag='"' + "x" * 200 + '"')
    assert s.FileHeader.unpack(h.pack()).etag == ""


def _nginx_file(key: bytes, head: bytes, body: bytes, **kw: int | bytes) -> bytes:
    """A cache file as nginx 1.22 writes it."""
    header_start = 336 + 6 + len(key) + 1
    hdr = _nginx_header(
        crc32=zlib.crc32(key),
        header_start=header_start,
        body_start=header_start + len(head),
        **kw,
    )
    return hdr + b"\nKEY: " + key + b"\n" + head + body


HEAD = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n"


def test_read_a_file_nginx_wrote(tmp_path: Path) -> None:
    key = b"http://127.0.0.1:28481/v/a?x=1"
    digest = hashlib.md5(key).digest()
    path = tmp_path / digest.hex()
    path.write_bytes(_nginx_file(key, HEAD, b"hello", valid_sec=99, date=42))
    e = s.read_entry(str(path), key, digest)
    assert (e.status, e.reason, e.body, e.fd) == (200, "OK", b"hello", -1)
    assert e.headers == [("Server", "x"), ("Content-Length", "5"), ("X-A", "1")]
    assert (e.header.valid_sec, e.header.date, e.body_length) == (99, 42, 5)
    assert e.key == key.decode()


def test_write_what_nginx_would(tmp_path: Path) -> None:
    key = b"http://h/x"
    header = s.FileHeader(valid_sec=99, date=42)
    prefix = s.file_prefix(header, key, HEAD)
    assert prefix + b"hello" == _nginx_file(key, HEAD, b"hello", valid_sec=99, date=42)


@pytest.mark.parametrize(
    ("mutate", "level", "text"),
    [
        (lambda b: b[:300], "crit", "is too small"),
        (lambda b: b"\x04" + b[1:], "info", "version mismatch"),
        (lambda b: b[:48] + b"\0\0\0\0" + b[52:], "crit", "has md5 collision"),
        (lambda b: b.replace(b"KEY: http://h/x", b"KEY: http://h/y"), "crit", "md5 collision"),
        (lambda b: b[:56] + struct.pack("<H", 65000) + b[58:], "crit", "too long header"),
        (lambda b: b[:187] + b"\xff" + b[188:], "crit", "incorrect vary length"),
        (lambda b: b.replace(b"HTTP/1.1 200", b"XTTP/1.1 200"), "crit", "invalid header"),
    ],
)
def test_read_checks(tmp_path: Path, mutate: object, level: str, text: str) -> None:
    key = b"http://h/x"
    digest = hashlib.md5(key).digest()
    path = tmp_path / "f"
    path.write_bytes(mutate(_nginx_file(key, HEAD, b"hello")))  # type: ignore[operator]
    with pytest.raises(s.ReadError) as info:
        s.read_entry(str(path), key, digest)
    assert info.value.level == level
    assert text in info.value.message
    assert not info.value.missing


def test_read_missing(tmp_path: Path) -> None:
    with pytest.raises(s.ReadError) as info:
        s.read_entry(str(tmp_path / "nope"), b"k", b"\0" * 16)
    assert info.value.missing


def test_body_that_fits_the_hot_cache_is_read_whole(tmp_path: Path) -> None:
    # Larger than the first read, small enough for the HotCache: the entry comes with its
    # body, so hits after a restart are served from memory.
    key = b"k"
    body = os.urandom(s.READ_AHEAD * 2 + 7)
    path = tmp_path / "f"
    path.write_bytes(_nginx_file(key, HEAD, body))
    e = s.read_entry(str(path), key, hashlib.md5(key).digest())
    assert e.body == body and e.fd == -1


def test_large_body_stays_in_the_file(tmp_path: Path) -> None:
    key = b"k"
    body = os.urandom(s.HOT_MAX_ENTRY + 7)
    path = tmp_path / "f"
    path.write_bytes(_nginx_file(key, HEAD, body))
    e = s.read_entry(str(path), key, hashlib.md5(key).digest())
    try:
        assert e.body is None and e.fd >= 0
        assert e.body_length == len(body)
        assert e.read_body() == body
        assert e.read_body(100, 50) == body[100:150]
    finally:
        e.close()
    assert e.fd == -1


def test_parse_head() -> None:
    head = b"HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n"
    assert s.parse_head(head) == (404, "Not Found", [("A", "b")])
    assert s.parse_head(b"HTTP/1.1 200\nA:  b \n\n") == (200, "", [("A", "b")])
    assert s.parse_head(b"garbage") is None
    assert s.parse_head(b"HTTP/1.1 abc OK\r\n\r\n") is None
    assert s.parse_head(b"HTTP/1.1 200 OK\r\nbad line\r\n\r\n") is None


def test_build_head() -> None:
    assert s.build_head(200, "", [("A", "1")]) == b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"
    assert s.build_head(299, "Fine", []) == b"HTTP/1.1 299 Fine\r\n\r\n"


# -- writing -------------------------------------------------------------------------------


def _writer(tmp_path: Path, temp_dir: str | None = None, **kw: object) -> tuple[s.Writer, dict]:
    events: dict[str, object] = {}
    final = str(tmp_path / "c" / "29" / "b7f54b2df7773722d382f4809d65029c")

    def committed(w: s.Writer, st: os.stat_result | None) -> None:
        events["commit"] = st

    def aborted(w: s.Writer) -> None:
        events["abort"] = True

    kw.setdefault("expected", None)
    w = s.Writer(final, temp_dir, b"PREFIX", on_commit=committed, on_abort=aborted, **kw)  # type: ignore[arg-type]
    return w, events


def test_commit_renames_into_place_and_creates_levels(tmp_path: Path) -> None:
    w, ev = _writer(tmp_path, expected=6)
    w.write(b"abc")
    w.write(b"def")
    assert not os.path.exists(w.final)
    assert w.commit()
    assert Path(w.final).read_bytes() == b"PREFIXabcdef"
    assert w.memory_body == b"abcdef"
    assert isinstance(ev["commit"], os.stat_result)
    assert sorted(os.listdir(os.path.dirname(w.final))) == [os.path.basename(w.final)]
    assert oct(os.stat(os.path.dirname(w.final)).st_mode & 0o777) == "0o700"


def test_large_body_spills_to_the_temp_file_next_to_the_entry(tmp_path: Path) -> None:
    w, _ = _writer(tmp_path)
    chunk = b"x" * s.WRITE_FLUSH
    w.write(chunk)
    names = os.listdir(os.path.dirname(w.final))
    assert len(names) == 1 and names[0].startswith(os.path.basename(w.final) + ".")
    assert len(names[0].rsplit(".", 1)[1]) == 10  # nginx's ".NNNNNNNNNN"
    w.write(b"tail")
    assert w.commit()
    assert Path(w.final).read_bytes() == b"PREFIX" + chunk + b"tail"
    assert w.memory_body is None
    assert os.listdir(os.path.dirname(w.final)) == [os.path.basename(w.final)]


def test_use_temp_path_dir(tmp_path: Path) -> None:
    temp = tmp_path / "proxy_temp"
    temp.mkdir()
    w, _ = _writer(tmp_path, str(temp))
    w.write(b"y" * s.WRITE_FLUSH)
    assert len(os.listdir(temp)) == 1
    assert w.commit()
    assert os.listdir(temp) == []
    assert os.path.getsize(w.final) == 6 + s.WRITE_FLUSH


def test_short_body_is_not_stored(tmp_path: Path) -> None:
    w, ev = _writer(tmp_path, expected=10)
    w.write(b"y" * s.WRITE_FLUSH)
    assert not w.commit()
    assert ev.get("abort") and "commit" not in ev
    assert not os.path.exists(w.final)
    assert os.listdir(os.path.dirname(w.final)) == []  # the temporary file is gone


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    w, ev = _writer(tmp_path)
    w.write(b"z" * (s.WRITE_FLUSH + 1))
    w.abort()
    w.abort()
    assert ev["abort"] is True
    assert os.listdir(os.path.dirname(w.final)) == []
    assert not w.commit()


def test_crash_mid_write_never_shows_a_partial_entry(tmp_path: Path) -> None:
    """A worker killed while writing leaves at most a temporary file, never the entry."""
    final = tmp_path / "c" / "29" / "b7f54b2df7773722d382f4809d65029c"
    pid = os.fork()
    if pid == 0:
        try:
            w = s.Writer(str(final), None, b"P", expected=None, on_commit=lambda *a: None,
                         on_abort=lambda *a: None)
            w.write(b"x" * (s.WRITE_FLUSH * 2))
        finally:
            os._exit(9)  # no commit, no cleanup
    os.waitpid(pid, 0)
    assert not final.exists()
    leftovers = os.listdir(final.parent)
    assert len(leftovers) == 1 and leftovers[0].startswith(final.name + ".")


def test_memory_only_writer() -> None:
    got: list[object] = []
    w = s.Writer("redis://x/y", None, b"P", expected=None, on_commit=lambda w, st: got.append(st),
                 on_abort=lambda w: got.append("abort"), memory_limit=10)
    w.write(b"12345")
    assert w.commit() and got == [None] and w.memory_body == b"12345"
    w = s.Writer("redis://x/y", None, b"P", expected=None, on_commit=lambda w, st: got.append(st),
                 on_abort=lambda w: got.append("abort"), memory_limit=10)
    w.write(b"x" * 11)
    assert got[-1] == "abort" and not w.commit()


def test_update_header_in_place(tmp_path: Path) -> None:
    key = b"k"
    digest = hashlib.md5(key).digest()
    path = tmp_path / "f"
    path.write_bytes(_nginx_file(key, HEAD, b"hello", valid_sec=10))
    e = s.read_entry(str(path), key, digest)
    new = s.FileHeader(
        valid_sec=99, date=5, crc32=e.header.crc32, header_start=e.header.header_start,
        body_start=e.header.body_start, last_modified=e.header.last_modified,
    )
    assert s.update_header(str(path), e, new)
    assert s.read_entry(str(path), key, digest).header.valid_sec == 99
    # replaced since it was read: left alone
    path.write_bytes(_nginx_file(key, HEAD, b"hello!", valid_sec=10))
    assert not s.update_header(str(path), e, new)
    assert not s.update_header(str(tmp_path / "gone"), e, new)


def test_fs_size_rounds_to_blocks(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 5000)
    assert s.fs_size(os.stat(f), 4096) == 8192
    assert s.size_on_disk(1, 4096) == 4096
    assert s.size_on_disk(0, 4096) == 0


def test_hot_cache_budget_and_fifo() -> None:
    def entry(i: int, size: int) -> s.Entry:
        return s.Entry(bytes([i]) * 16, "k", "p", s.FileHeader(body_start=100), 200, "", [],
                       b"x" * size, -1, 100 + size, 0)

    hot = s.HotCache(budget=3000, max_entry=1500)
    hot.put(entry(1, 500))
    hot.put(entry(2, 500))
    hot.put(entry(3, 2000))  # too big for one entry
    assert hot.get(bytes([3]) * 16) is None
    hot.put(entry(4, 900))
    hot.put(entry(5, 900))  # evicts the oldest
    assert hot.get(bytes([1]) * 16) is None
    assert hot.get(bytes([5]) * 16) is not None
    assert hot.used <= 3000
    hot.drop(bytes([5]) * 16)
    assert hot.get(bytes([5]) * 16) is None
    big = entry(6, 10)
    big.body = None
    big.fd = 3
    hot.put(big)  # a file-backed entry is never shared
    assert hot.get(bytes([6]) * 16) is None
    hot.clear()
    assert hot.used == 0
