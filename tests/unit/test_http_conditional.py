"""Unit tests: nginx's not_modified filter rules and file ETags."""

from __future__ import annotations

import os

import pytest

from pyngx.http.conditional import etag_matches, make_etag, not_modified, stat_mtime
from pyngx.http.httpdate import http_date

LM = 1700000000
ETAG = make_etag(LM, 1000)
DATE = http_date(LM)


def test_make_etag() -> None:
    assert make_etag(1700000000, 1000) == '"6553f100-3e8"'
    assert make_etag(1700000000.9, 0) == '"6553f100-0"'
    assert make_etag(0, 0) == '"0-0"'
    # %x of a negative time_t prints its two's complement.
    assert make_etag(-1, 5) == '"ffffffffffffffff-5"'


def test_stat_mtime_uses_nanoseconds(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "f")
    open(path, "wb").close()
    os.utime(path, ns=(0, 1700000000_999999999))
    assert stat_mtime(os.stat(path)) == 1700000000


@pytest.mark.parametrize(
    ("header", "weak", "expected"),
    [
        ("*", False, True),
        ("*", True, True),
        (ETAG, False, True),
        (ETAG, True, True),
        ("W/" + ETAG, False, False),
        ("W/" + ETAG, True, True),
        ('"a", ' + ETAG, False, True),
        ('"a",' + ETAG + ',"b"', False, True),
        ('"a" ,\t' + ETAG + " \t", False, True),
        (ETAG + "x", False, False),
        (ETAG + " x", False, False),
        (ETAG + " x, " + ETAG, False, True),
        ('"a", "b"', True, False),
        (ETAG[:-1], False, False),
        (", , " + ETAG, False, True),
        ("", False, False),
        (" *", False, False),
        ("*, " + ETAG, False, True),
    ],
)
def test_etag_matches(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, ETAG, weak) is expected


def test_etag_matches_weak_response_etag() -> None:
    weak_etag = "W/" + ETAG
    assert etag_matches(ETAG, weak_etag, weak=True)
    assert etag_matches(weak_etag, weak_etag, weak=True)
    assert not etag_matches(ETAG, weak_etag, weak=False)
    assert etag_matches(weak_etag, weak_etag, weak=False)  # byte for byte
    assert not etag_matches(ETAG, None, weak=True)
    assert etag_matches("*", None, weak=False)


CASES: list[tuple[dict[str, str], str, int | None]] = [
    ({}, "exact", None),
    ({"if-none-match": ETAG}, "exact", 304),
    ({"if-none-match": "W/" + ETAG}, "exact", 304),
    ({"if-none-match": '"x"'}, "exact", None),
    ({"if-none-match": "*"}, "exact", 304),
    ({"if-modified-since": DATE}, "exact", 304),
    ({"if-modified-since": http_date(LM + 1)}, "exact", None),
    ({"if-modified-since": http_date(LM + 1)}, "before", 304),
    ({"if-modified-since": http_date(LM - 1)}, "before", None),
    ({"if-modified-since": DATE}, "off", None),
    ({"if-modified-since": "junk"}, "exact", None),
    ({"if-modified-since": "junk"}, "before", None),
    # nginx ANDs the two: both must say "not modified".
    ({"if-modified-since": DATE, "if-none-match": '"x"'}, "exact", None),
    ({"if-modified-since": http_date(LM - 1), "if-none-match": ETAG}, "exact", None),
    ({"if-modified-since": DATE, "if-none-match": ETAG}, "exact", 304),
    ({"if-modified-since": DATE, "if-none-match": ETAG}, "off", None),
    ({"if-match": ETAG}, "exact", None),
    ({"if-match": "W/" + ETAG}, "exact", 412),
    ({"if-match": '"x"'}, "exact", 412),
    ({"if-match": "*"}, "exact", None),
    ({"if-unmodified-since": DATE}, "exact", None),
    ({"if-unmodified-since": http_date(LM + 5)}, "exact", None),
    ({"if-unmodified-since": http_date(LM - 1)}, "exact", 412),
    ({"if-unmodified-since": "junk"}, "exact", 412),
    ({"if-match": '"x"', "if-none-match": ETAG}, "exact", 412),
    ({"if-match": ETAG, "if-none-match": ETAG}, "exact", 304),
    ({"if-unmodified-since": http_date(LM - 1), "if-none-match": ETAG}, "exact", 412),
]


@pytest.mark.parametrize(("headers", "mode", "expected"), CASES)
def test_not_modified(headers: dict[str, str], mode: str, expected: int | None) -> None:
    assert not_modified(headers, 200, LM, ETAG, mode) == expected
    assert not_modified(headers, 200, LM + 0.75, ETAG, mode) == expected  # whole seconds


@pytest.mark.parametrize("status", [201, 204, 206, 301, 304, 404, 500])
def test_only_200_is_touched(status: int) -> None:
    assert not_modified({"if-none-match": "*", "if-match": '"x"'}, status, LM, ETAG) is None


def test_without_last_modified_or_etag() -> None:
    assert not_modified({"if-unmodified-since": DATE}, 200, None, ETAG) == 412
    assert not_modified({"if-modified-since": DATE}, 200, None, ETAG) is None
    assert not_modified({"if-none-match": ETAG}, 200, None, ETAG) == 304
    assert not_modified({"if-none-match": ETAG}, 200, LM, None) is None
    assert not_modified({"if-none-match": "*"}, 200, None, None) == 304
    assert not_modified({"if-match": "*"}, 200, None, None) is None
    assert not_modified({"if-match": ETAG}, 200, LM, None) == 412
