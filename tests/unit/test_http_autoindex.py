"""Unit tests: autoindex listings in nginx's exact bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyngx.http.autoindex import Entry, jsonp_callback_ok, render, scan

T = 1700000000  # 14-Nov-2023 22:13:20 GMT
PAD = " " * 50


def line(name: str, href: str, shown: str, date: str, size: str) -> bytes:
    width = len(shown.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    return f'<a href="{href}">{shown}</a>{PAD[: max(0, 50 - width)]} {date} {size}\r\n'.encode()


def html(uri: str, lines: list[bytes]) -> bytes:
    return (
        (
            f"<html>\r\n<head><title>Index of {uri}</title></head>\r\n<body>\r\n"
            f'<h1>Index of {uri}</h1><hr><pre><a href="../">../</a>\r\n'
        ).encode()
        + b"".join(lines)
        + b"</pre><hr></body>\r\n</html>\r\n"
    )


def test_html_basic() -> None:
    entries = [
        Entry("b.txt", False, 12, T),
        Entry("a dir", True, 4096, T + 60, is_file=False),
        Entry(".hidden", False, 1, T),
        Entry("A.txt", False, 1234567890123, T),
    ]
    body, ctype = render("/x/", entries)
    assert ctype == "text/html"
    assert body == html(
        "/x/",
        [
            line("a dir", "a%20dir/", "a dir/", "14-Nov-2023 22:14", " " * 18 + "-"),
            line("A.txt", "A.txt", "A.txt", "14-Nov-2023 22:13", "      1234567890123"),
            line("b.txt", "b.txt", "b.txt", "14-Nov-2023 22:13", " " * 17 + "12"),
        ],
    )


def test_html_empty_and_escaped_uri() -> None:
    body, _ = render("/a&b <c>/", [])
    assert body == html("/a&amp;b &lt;c&gt;/", [])
    assert render(b"/raw\xff/", [])[0] == html("/raw", []).replace(b"/raw", b"/raw\xff/")


def test_sort_dirs_first_then_bytes() -> None:
    names = ["b", "B", "a", "é", "z", "_", "0"]
    entries = [Entry(n, False, 0, T) for n in names] + [Entry("zdir", True, 0, T)]
    body, _ = render("/", entries, fmt="json")
    order = [chunk.split(b'"')[0] for chunk in body.split(b'"name":"')[1:]]
    assert order == [b"zdir", b"0", b"B", b"_", b"a", b"b", b"z", "é".encode()]


def _name_part(body: bytes) -> bytes:
    first = body.split(b"\r\n")[4]
    return first[first.index(b'">') + 2 :]


@pytest.mark.parametrize(
    ("name", "is_dir", "shown"),
    [
        ("x" * 49, False, b"x" * 49 + b"</a>  "),
        ("y" * 50, False, b"y" * 50 + b"</a> "),
        ("z" * 51, False, b"z" * 47 + b"..&gt;</a> "),
        ("e" * 49, True, b"e" * 49 + b"/</a> "),
        ("d" * 50, True, b"d" * 50 + b"</a> "),
        ("&" * 60, False, b"&amp;" * 47 + b"..&gt;</a> "),
        ("q" * 47 + "&<>", False, b"q" * 47 + b"&amp;&lt;&gt;</a> "),
        # Without a utf-8 charset columns are bytes: cut inside a character.
        ("ü" * 30, False, "ü".encode() * 23 + b"\xc3..&gt;</a> "),
        ("ü" * 20, False, "ü".encode() * 20 + b"</a>" + b" " * 10 + b" "),
    ],
)
def test_html_name_columns(name: str, is_dir: bool, shown: bytes) -> None:
    body, _ = render("/", [Entry(name, is_dir, 1, T)])
    assert _name_part(body).startswith(shown)
    assert _name_part(body)[len(shown) : len(shown) + 17] == b"14-Nov-2023 22:13"


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("ü" * 50, "ü".encode() * 50 + b"</a> "),
        ("ü" * 51, "ü".encode() * 47 + b"..&gt;</a> "),
        ("ü" * 20, "ü".encode() * 20 + b"</a>" + b" " * 30 + b" "),
        ("é" * 30 + "&" * 30, "é".encode() * 30 + b"&amp;" * 17 + b"..&gt;</a> "),
        # Invalid UTF-8 counts bytes even with a utf-8 charset.
        ("bad\udcff" + "x" * 47, b"bad\xff" + b"x" * 43 + b"..&gt;</a> "),
        # nginx's decoder takes encoded surrogates (Python's does not).
        ("\udced\udca0\udc80" * 2, b"\xed\xa0\x80" * 2 + b"</a>" + b" " * 48 + b" "),
    ],
)
def test_html_utf8_columns(name: str, shown: bytes) -> None:
    body, ctype = render("/", [Entry(name, False, 1, T)], charset="UTF-8")
    assert ctype == "text/html"
    assert _name_part(body).startswith(shown)


def test_html_href_escaping() -> None:
    name = "a b!$&'()*+,:;=?@[]^`{|}~-._é#%\"<>\t"
    body, _ = render("/", [Entry(name, False, 1, T)])
    href = body.split(b'<a href="')[2].split(b'"')[0]
    assert href == (
        b"a%20b%21%24%26%27%28%29%2A%2B%2C%3A%3B%3D%3F%40%5B%5D%5E%60%7B%7C%7D~-._%C3%A9%23%25"
        b"%22%3C%3E%09"
    )


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "      0"),
        (9999, "   9999"),
        (10000, "    10K"),
        (10751, "    10K"),
        (10752, "    11K"),
        (1048575, "  1024K"),
        (1048576, "     1M"),
        (1572863, "     1M"),
        (1572864, "     2M"),
        (2**30 - 1, "  1024M"),
        (2**30 + 2**29, "     2G"),
        (5 * 2**40, "  5120G"),
    ],
)
def test_html_human_sizes(size: int, shown: str) -> None:
    body, _ = render("/", [Entry("f", False, size, T)], exact_size=False)
    assert body.split(b"\r\n")[4].endswith(b"22:13 " + shown.encode())


def test_html_human_dir() -> None:
    body, _ = render("/", [Entry("d", True, 4096, T)], exact_size=False)
    assert body.split(b"\r\n")[4].endswith(b"22:13       -")


def test_html_localtime() -> None:
    entries = [Entry("f", False, 1, T)]
    assert b"15-Nov-2023 03:43" in render("/", entries, localtime=True, gmtoff=19800)[0]
    assert b"14-Nov-2023 22:13" in render("/", entries, localtime=False, gmtoff=19800)[0]
    # json and xml are always GMT.
    assert b"22:13:20 GMT" in render("/", entries, fmt="json", localtime=True, gmtoff=3600)[0]


def test_html_dates_clamp() -> None:
    body, _ = render("/", [Entry("old", False, 1, -10), Entry("far", False, 1, 10**14)])
    assert b"01-Jan-1970 00:00" in body
    assert b"31-Dec-9999 23:59" in body


def test_json() -> None:
    entries = [
        Entry("dir", True, 4096, T, is_file=False),
        Entry('q"\\\n\r\t\b\f\x01\x1f\x7f/é', False, 7, T),
        Entry("sock", False, 0, T, is_file=False),
    ]
    body, ctype = render("/", entries, fmt="json")
    assert ctype == "application/json"
    assert body == (
        b'[\r\n{ "name":"dir", "type":"directory", "mtime":"Tue, 14 Nov 2023 22:13:20 GMT" },'
        b'\r\n{ "name":"q\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001F\x7f/\xc3\xa9", "type":"file", '
        b'"mtime":"Tue, 14 Nov 2023 22:13:20 GMT", "size":7 },'
        b'\r\n{ "name":"sock", "type":"other", "mtime":"Tue, 14 Nov 2023 22:13:20 GMT" }'
        b"\r\n]"
    )
    assert render("/", [], fmt="json")[0] == b"[\r\n]"


def test_jsonp() -> None:
    entries = [Entry("f", False, 1, T)]
    body, ctype = render("/", entries, fmt="jsonp", callback="cb.x_1")
    assert ctype == "application/javascript"
    json_body, _ = render("/", entries, fmt="json")
    assert body == b"/* callback */\r\ncb.x_1(" + json_body + b");"
    assert render("/", entries, fmt="jsonp") == (json_body, "application/json")
    assert render("/", entries, fmt="jsonp", callback="") == (json_body, "application/json")
    with pytest.raises(ValueError):
        render("/", entries, fmt="jsonp", callback="a-b")


@pytest.mark.parametrize(
    ("callback", "ok"),
    [("cb", True), ("A.b_9", True), ("c" * 128, True), ("", True), ("c" * 129, False),
     ("a-b", False), ("f(1)", False), ("é", False), ("a b", False)],
)  # fmt: skip
def test_jsonp_callback_ok(callback: str, ok: bool) -> None:
    assert jsonp_callback_ok(callback) is ok


def test_xml() -> None:
    entries = [
        Entry("a&<b>\"'", False, 3, T),
        Entry("d", True, 0, T + 1, is_file=False),
        Entry("link", False, 9, T, is_file=False),
    ]
    body, ctype = render("/", entries, fmt="xml")
    assert ctype == "text/xml; charset=utf-8"
    assert body == (
        b'<?xml version="1.0"?>\r\n<list>\r\n'
        b'<directory mtime="2023-11-14T22:13:21Z">d</directory>\r\n'
        b'<file mtime="2023-11-14T22:13:20Z" size="3">a&amp;&lt;b&gt;&quot;\'</file>\r\n'
        b'<other mtime="2023-11-14T22:13:20Z">link</other>\r\n'
        b"</list>\r\n"
    )


def test_bad_format() -> None:
    with pytest.raises(ValueError):
        render("/", [], fmt="yaml")


def test_scan(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"12345")
    (tmp_path / "d").mkdir()
    (tmp_path / ".h").write_bytes(b"")
    os.symlink("f", tmp_path / "lf")
    os.symlink("d", tmp_path / "ld")
    os.symlink("nowhere", tmp_path / "dangling")
    os.mkfifo(tmp_path / "fifo")
    os.utime(tmp_path / "f", (T, T))
    with open(os.fsencode(tmp_path) + b"/raw\xff", "wb"):
        pass
    got = {e.name: e for e in scan(str(tmp_path))}
    assert set(got) == {"f", "d", "lf", "ld", "dangling", "fifo", "raw\udcff"}
    assert got["f"] == Entry("f", False, 5, T, True)
    assert got["lf"] == Entry("lf", False, 5, T, True)  # the target's type, size, mtime
    assert got["ld"].is_dir and not got["ld"].is_file
    assert not got["dangling"].is_dir and not got["dangling"].is_file
    assert got["dangling"].size == len("nowhere")  # from lstat()
    assert not got["fifo"].is_dir and not got["fifo"].is_file
    assert isinstance(got["f"].mtime, int)


def test_scan_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        scan(str(tmp_path / "file"))
