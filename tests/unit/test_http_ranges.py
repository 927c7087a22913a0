"""Unit tests: nginx's range filter decisions and its multipart/byteranges layout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyngx.http import ranges
from pyngx.http.conditional import make_etag
from pyngx.http.httpdate import http_date
from pyngx.http.ranges import RangePlan, accept_ranges, multipart_parts, plan_ranges

SIZE = 1000
LM = 1700000000
ETAG = make_etag(LM, SIZE)


def plan(value: str | None, size: int = SIZE, **kw: object) -> RangePlan | None:
    return plan_ranges(value, kw.pop("if_range", None), size, LM, ETAG, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-0", [(0, 1)]),
        ("bytes=0-99", [(0, 100)]),
        ("bytes=990-", [(990, 1000)]),
        ("bytes=990-5000", [(990, 1000)]),
        ("bytes=-1", [(999, 1000)]),
        ("bytes=-1000", [(0, 1000)]),
        ("bytes=-5000", [(0, 1000)]),
        ("bytes=0-", [(0, 1000)]),
        ("BYTES=1-2", [(1, 3)]),
        ("Bytes= 1 - 2 , 4 - 5 ", [(1, 3), (4, 6)]),
        ("bytes=5-6,0-1", [(5, 7), (0, 2)]),  # not sorted
        ("bytes=0-0,0-0,0-0", [(0, 1), (0, 1), (0, 1)]),  # not merged
        ("bytes=0-1,5000-6000", [(0, 2)]),  # unsatisfiable ones are dropped
        ("bytes=0-499,500-999", [(0, 500), (500, 1000)]),
    ],
)
def test_satisfiable(value: str, expected: list[tuple[int, int]]) -> None:
    p = plan(value)
    assert p is not None and p.status == 206
    assert p.ranges == expected


@pytest.mark.parametrize(
    "value",
    [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=5-1",
        "bytes=-0",
        "bytes=0-1,",
        "bytes=-  5",
        "bytes=1-2;3-4",
        "bytes=abc",
        "bytes= ",
        "bytes=1-2x",
        "bytes=1--2",
        "bytes=99999999999999999999-",
        "bytes=0-99999999999999999999",
        "bytes=-99999999999999999999",
        "bytes=9223372036854775807-",
        "bytes=5000-6000,7000-",
        "bytes=\t1-2",
    ],
)
def test_unsatisfiable(value: str) -> None:
    p = plan(value)
    assert p == RangePlan(416, [], "bytes */1000", None)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes=",
        "bits=1-2",
        "bytes 1-2",
        "bytes=0-500,400-900",  # more than the whole: ignored
        "bytes=0-499,500-1000,0-0",
        "bytes=-600,-600",
    ],
)
def test_ignored(value: str | None) -> None:
    assert plan(value) is None


def test_max_ranges() -> None:
    assert plan("bytes=0-1", max_ranges=0) is None
    assert plan("bytes=5000-", max_ranges=0) is None
    assert not accept_ranges(0)
    assert accept_ranges(None) and accept_ranges(2)
    assert plan("bytes=0-1,3-4", max_ranges=2) is not None
    assert plan("bytes=0-1,3-4,6-7", max_ranges=2) is None
    # Only satisfiable ranges count against the limit.
    p = plan("bytes=0-1,5000-,6-7", max_ranges=2)
    assert p is not None and p.ranges == [(0, 2), (6, 8)]
    p = plan("bytes=0-1", max_ranges=1)
    assert p is not None and p.content_range == "bytes 0-1/1000"


def test_empty_file() -> None:
    assert plan("bytes=0-", size=0) is None
    assert plan("bytes=-5", size=0) is None
    assert plan("bytes=0-0", size=0) is None
    p = plan("bytes=5-", size=0)
    assert p is not None and p.status == 416 and p.content_range == "bytes */0"


def test_single_range_plan() -> None:
    p = plan("bytes=10-19")
    assert p == RangePlan(206, [(10, 20)], "bytes 10-19/1000", None)
    assert p.content_length == 10
    assert p.content_type is None


@pytest.mark.parametrize(
    ("if_range", "used"),
    [
        (ETAG, True),
        ("W/" + ETAG, False),
        ('"other"', False),
        (ETAG[:-1], False),  # does not end in a quote: read as a date
        (http_date(LM), True),
        (http_date(LM + 1), False),
        ("Tuesday, 14-Nov-23 22:13:20 GMT", True),
        ("garbage", False),
        ('"', False),
    ],
)
def test_if_range(if_range: str, used: bool) -> None:
    p = plan("bytes=1-3", if_range=if_range)
    assert (p is not None) is used


def test_if_range_without_validators() -> None:
    assert plan_ranges("bytes=1-3", ETAG, SIZE, LM, None) is None
    assert plan_ranges("bytes=1-3", http_date(LM), SIZE, None, ETAG) is None
    assert plan_ranges("bytes=1-3", http_date(LM), SIZE, LM + 0.5, ETAG) is not None


def test_boundaries_count_up() -> None:
    a = plan("bytes=0-1,3-4")
    b = plan("bytes=0-1,3-4")
    assert a is not None and b is not None
    assert a.multipart_boundary is not None and b.multipart_boundary is not None
    assert len(a.multipart_boundary) == 20 and a.multipart_boundary.isdigit()
    assert int(b.multipart_boundary) == int(a.multipart_boundary) + 1
    assert a.content_range is None and a.content_length is None
    assert a.content_type == f"multipart/byteranges; boundary={a.multipart_boundary}"
    assert len(ranges.next_boundary()) == 20


def test_multipart_layout() -> None:
    p = RangePlan(206, [(0, 2), (5, 7)], None, "00000000000000000001")
    parts, closing, length = multipart_parts(p, "text/plain", SIZE)
    assert parts == [
        (
            b"\r\n--00000000000000000001\r\nContent-Type: text/plain\r\n"
            b"Content-Range: bytes 0-1/1000\r\n\r\n",
            0,
            2,
        ),
        (
            b"\r\n--00000000000000000001\r\nContent-Type: text/plain\r\n"
            b"Content-Range: bytes 5-6/1000\r\n\r\n",
            5,
            7,
        ),
    ]
    assert closing == b"\r\n--00000000000000000001--\r\n"
    data = bytes(range(48, 58)) * 100
    body = b"".join(h + data[s:e] for h, s, e in parts) + closing
    assert len(body) == length == 202  # what nginx 1.22.1 sent for this request


def test_multipart_without_content_type() -> None:
    p = RangePlan(206, [(0, 1), (1, 2)], None, "7" * 20)
    parts, _, _ = multipart_parts(p, None, 2)
    assert parts[0][0] == b"\r\n--" + b"7" * 20 + b"\r\nContent-Range: bytes 0-0/2\r\n\r\n"
    parts, _, _ = multipart_parts(p, "text/html; charset=utf-8", 2)
    assert b"Content-Type: text/html; charset=utf-8\r\n" in parts[0][0]


def test_multipart_needs_a_multipart_plan() -> None:
    with pytest.raises(ValueError):
        multipart_parts(RangePlan(206, [(0, 1)], "bytes 0-0/1"), None, 1)


_spec = st.one_of(
    st.tuples(st.integers(0, 3000), st.integers(0, 3000)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.integers(0, 3000).map(lambda n: f"{n}-"),
    st.integers(0, 3000).map(lambda n: f"-{n}"),
)


@given(st.lists(_spec, min_size=1, max_size=6), st.integers(0, 2000), st.none() | st.integers(1, 4))
def test_plans_are_sane(specs: list[str], size: int, max_ranges: int | None) -> None:
    p = plan_ranges("bytes=" + ",".join(specs), None, size, None, None, max_ranges)
    if p is None:
        return
    if p.status == 416:
        assert p.ranges == [] and p.content_range == f"bytes */{size}"
        return
    assert p.status == 206
    assert all(0 <= s < e <= size for s, e in p.ranges)
    assert sum(e - s for s, e in p.ranges) <= size
    assert max_ranges is None or len(p.ranges) <= max_ranges
    assert (len(p.ranges) == 1) == (p.multipart_boundary is None)


@given(st.text(max_size=30))
def test_any_header_is_handled(value: str) -> None:
    p = plan_ranges("bytes=" + value, None, SIZE, None, None)
    assert p is None or p.status in (206, 416)
