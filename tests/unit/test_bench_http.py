"""The pure parts of bench/http_bench.py and bench/procs.py: wrk's report, startup errors."""

from __future__ import annotations

import pytest

from bench.http_bench import BODY_1K, BODY_100K, parse_wrk
from bench.procs import _strip_log_prefix

WRK_OK = """Running 2s test @ http://127.0.0.1:18081/ok
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.77ms    7.73ms 117.99ms   69.25%
    Req/Sec     4.08k     1.41k    9.85k    90.00%
  Latency Distribution
     50%  812.00us
     75%   19.68ms
     90%   25.16ms
     99%    1.20s
  12250 requests in 3.02s, 1.74MB read
Requests/sec:   4056.69
Transfer/sec:    590.28KB
"""

WRK_ERRORS = """Running 1s test @ http://127.0.0.1:1/
  1 threads and 64 connections
  Latency Distribution
     50%    1.00ms
     75%    1.00ms
     90%    1.00ms
     99%    2.00ms
  100 requests in 1.00s, 10.00KB read
  Socket errors: connect 3, read 0, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:    100.00
Transfer/sec:     10.00KB
"""


def test_parse_wrk_units() -> None:
    r = parse_wrk(WRK_OK)
    assert r["req/s"] == 4056.69
    assert r["requests"] == 12250
    assert r["p50 ms"] == pytest.approx(0.812)
    assert r["p75 ms"] == pytest.approx(19.68)
    assert r["p99 ms"] == pytest.approx(1200.0)
    assert r["errors"] == {}


def test_parse_wrk_errors() -> None:
    r = parse_wrk(WRK_ERRORS)
    assert r["errors"] == {"connect": 3, "timeout": 2, "non-2xx/3xx": 7}
    assert r["p99 ms"] == 2.0


def test_parse_wrk_refuses_other_text() -> None:
    with pytest.raises(ValueError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_bodies() -> None:
    assert len(BODY_1K) == 1024
    assert len(BODY_100K) == 100 * 1024
    assert b'"' not in BODY_1K and b"\\" not in BODY_1K  # it goes into `return 200 "..."`


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (
            '2026/11/26 13:01:23 [emerg] 4082#0: unknown directive "proxy_cache_path" in /c:1',
            '[emerg] unknown directive "proxy_cache_path" in /c:1',
        ),
        (
            'pyngx: [emerg] unknown directive "proxy_cache" in /c:3',
            '[emerg] unknown directive "proxy_cache" in /c:3',
        ),
        ("[emerg] already short", "[emerg] already short"),
        ("Traceback (most recent call last):", "Traceback (most recent call last):"),
    ],
)
def test_strip_log_prefix(line: str, want: str) -> None:
    assert _strip_log_prefix(line) == want
