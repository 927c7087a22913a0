"""limit_req's leaky bucket (ReqTable) and handler, on pure inputs with a hand-driven clock.

The expected numbers are worked out from nginx's formulas (ngx_http_limit_req_lookup and
_account) in the comments, not from pyngx's code.
"""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace
from typing import Any

import pytest

from pyngx.core.log import ERROR, INFO, NOTICE, WARN
from pyngx.http import limit_req
from pyngx.http.limit_conn import LimitState
from pyngx.http.limit_req import (
    AGAIN,
    BUSY,
    ERR,
    OK,
    HttpLimitReq,
    ReqTable,
    ReqZone,
)
from pyngx.http.request import DONE

T0 = 10_000_000  # a monotonic "now" in ms, far from 0 as the real one is


def _d(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def test_bucket_fills_by_1000_and_drains_at_the_rate() -> None:
    t = ReqTable(64 * 1024)
    rate, burst = 2000, 3000  # 2r/s, burst=3
    k = _d("a")
    # A new key starts empty and is not charged for its first request.
    assert t.lookup(k, rate, burst, True, T0) == (OK, 0)
    assert t.lookup(k, rate, burst, True, T0) == (OK, 1000)
    assert t.lookup(k, rate, burst, True, T0) == (OK, 2000)
    assert t.lookup(k, rate, burst, True, T0) == (OK, 3000)
    # 4000 > burst: refused, and the bucket is left as it was.
    assert t.lookup(k, rate, burst, True, T0) == (BUSY, 4000)
    assert t.get(k) == (3000, T0, 0)
    # 250 ms later 2000 * 250 / 1000 = 500 drained: 3000 - 500 + 1000 = 3500 > 3000.
    assert t.lookup(k, rate, burst, True, T0 + 250) == (BUSY, 3500)
    # 500 ms: 3000 - 1000 + 1000 = 3000, accepted.
    assert t.lookup(k, rate, burst, True, T0 + 500) == (OK, 3000)
    # Long idle: clamped at zero before the request's own 1000 is added... and after.
    assert t.lookup(k, rate, burst, True, T0 + 60_000) == (OK, 0)


def test_integer_arithmetic_truncates_like_c() -> None:
    t = ReqTable(64 * 1024)
    rate = 16  # 1r/m: 1 * 1000 / 60
    k = _d("slow")
    assert t.lookup(k, rate, 5000, True, T0) == (OK, 0)
    # 62 ms: 16 * 62 / 1000 = 0.992 -> 0 drained.
    assert t.lookup(k, rate, 5000, True, T0 + 62) == (OK, 1000)
    # 63 ms more: 16 * 63 / 1000 = 1.008 -> 1.
    assert t.lookup(k, rate, 5000, True, T0 + 125) == (OK, 1999)


def test_clock_going_back() -> None:
    t = ReqTable(64 * 1024)
    k = _d("c")
    t.lookup(k, 1000, 10_000, True, T0)
    # A little back: 0 ms elapsed, and `last` is not moved back.
    assert t.lookup(k, 1000, 10_000, True, T0 - 500) == (OK, 1000)
    assert t.get(k) == (1000, T0, 0)
    # Far back (over a minute): counted as 1 ms (1000 * 1 / 1000 = 1 drained).
    assert t.lookup(k, 1000, 10_000, True, T0 - 120_000) == (OK, 1999)
    assert t.get(k) == (1999, T0 - 120_000, 0)


def test_again_holds_then_account_and_unlock() -> None:
    t = ReqTable(64 * 1024)
    k = _d("h")
    # Not the last limit: checked, held (count 1), accounted later.
    assert t.lookup(k, 1000, 5000, False, T0) == (AGAIN, 0)
    assert t.get(k) == (0, 0, 1)  # a new held bucket has last = 0
    # Accounting: now - 0 is huge, so it drains to 0 and gets its +1000 clamped away.
    assert t.account(k, 1000, T0) == 0
    assert t.get(k) == (0, T0, 0)
    # 100 ms at 1r/s: 0 - 100 + 1000.
    assert t.lookup(k, 1000, 5000, False, T0 + 100) == (AGAIN, 900)
    assert t.get(k) == (0, T0, 1)  # excess is only stored by account()
    t.unlock(k)
    assert t.get(k) == (0, T0, 0)


def test_full_table_evicts_drained_then_oldest() -> None:
    t = ReqTable(8 * 1024)
    n = t.capacity
    for i in range(n):
        assert t.lookup(_d(str(i)), 1000, 0, True, T0 + i)[0] == OK
    assert t._used() == n
    # Nothing drained for a minute yet: the least recently touched go (a sixteenth).
    assert t.lookup(_d("new"), 1000, 0, True, T0 + n) == (OK, 0)
    assert t.get(_d("0")) is None
    assert t.get(_d(str(n - 1))) is not None
    assert t._used() <= n
    # Every key still in the table is findable (deletion kept the probe runs whole).
    kept = [i for i in range(n) if t.get(_d(str(i))) is not None]
    assert len(kept) == t._used() - 1
    # A minute later all are drained: one sweep empties them.
    assert t.lookup(_d("later"), 1000, 0, True, T0 + 200_000)[0] == OK
    assert t._used() <= n


def test_held_buckets_are_never_evicted() -> None:
    t = ReqTable(8 * 1024)
    for i in range(t.capacity):
        assert t.lookup(_d(str(i)), 1000, 0, False, T0)[0] == AGAIN
    assert t.lookup(_d("x"), 1000, 0, True, T0 + 1) == (ERR, 0)


def test_shared_between_processes() -> None:
    t = ReqTable(64 * 1024)
    k = _d("shared")
    pid = os.fork()
    if pid == 0:  # the child: what a second worker does
        code = 0 if t.lookup(k, 1000, 5000, True, T0) == (OK, 0) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.lookup(k, 1000, 5000, True, T0) == (OK, 1000)


# -- the handler --------------------------------------------------------------------------


class FakeLoop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fn: Any, *args: Any) -> None:
        self.timers.append((delay, fn, args))


def _request(keys: dict[str, str], handler: HttpLimitReq) -> Any:
    r = SimpleNamespace()
    r.keys = keys
    r.limit_state = None
    r.logged = []
    r.log = lambda level, text: r.logged.append((level, text))
    r.loc = SimpleNamespace(access_phase=(object(), handler, object()))
    r.conn = SimpleNamespace(loop=FakeLoop(), worker=None)
    r.resume_access = lambda i: None
    return r


def _zone(name: str, rate: int, size: int = 64 * 1024) -> ReqZone:
    zone = ReqZone(name, size, f"$k_{name}", lambda r, n=name: r.keys.get(n, ""), rate)
    zone.table = ReqTable(size)  # not shared(): that would keep the table across tests
    return zone


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    now = [T0]
    monkeypatch.setattr(limit_req, "now_ms", lambda: now[0])
    return now


def test_nodelay_burst_then_reject(clock: list[int]) -> None:
    zone = _zone("one", 1000)
    h = HttpLimitReq(
        ((zone, 2000, limit_req.NGX_MAX_INT_T_VALUE // 1000 * 1000),), ERROR, 503, False
    )
    results = []
    for _ in range(4):
        r = _request({"one": "client"}, h)
        results.append((h(r), r.limit_state.req))
    assert results == [(None, 1), (None, 1), (None, 1), (503, 3)]
    assert r.logged == [(ERROR, 'limiting requests, excess: 3.000 by zone "one"')]


def test_delay_is_excess_over_rate_and_resumes_after_the_handler(clock: list[int]) -> None:
    zone = _zone("one", 10_000)  # 10r/s
    h = HttpLimitReq(((zone, 5000, 0),), WARN, 503, False)
    assert h(_request({"one": "k"}, h)) is None  # new: excess 0, no delay
    r = _request({"one": "k"}, h)
    assert h(r) == DONE
    assert r.limit_state.req == 2  # DELAYED
    ((delay, fn, args),) = r.conn.loop.timers
    # excess 1000 at 10000 (10r/s): 1000 * 1000 / 10000 = 100 ms.
    assert delay == pytest.approx(0.1)
    assert args == (2,)  # the handler after this one
    assert r.logged == [(NOTICE, 'delaying request, excess: 1.000, by zone "one"')]
    # A request already decided (resumed, or after an internal redirect) declines.
    assert h(r) is None and len(r.conn.loop.timers) == 1


def test_delay_threshold(clock: list[int]) -> None:
    zone = _zone("one", 1000)
    h = HttpLimitReq(((zone, 5000, 2000),), ERROR, 503, False)  # burst=5 delay=2
    states = []
    for _ in range(5):
        r = _request({"one": "k"}, h)
        h(r)
        states.append(r.limit_state.req)
    # excess 0, 1000, 2000 pass; 3000 and 4000 are over delay=2 -> delayed.
    assert states == [1, 1, 1, 2, 2]
    assert r.conn.loop.timers[0][0] == pytest.approx(2.0)  # (4000 - 2000) * 1000 / 1000 ms


def test_several_limits_longest_delay_wins(clock: list[int]) -> None:
    fast, slow = _zone("fast", 100_000), _zone("slow", 1000)
    h = HttpLimitReq(((slow, 5000, 0), (fast, 5000, 0)), ERROR, 503, False)
    h(_request({"fast": "k", "slow": "k"}, h))
    r = _request({"fast": "k", "slow": "k"}, h)
    assert h(r) == DONE
    # slow: 1000 * 1000 / 1000 = 1000 ms; fast: 1000 * 1000 / 100000 = 10 ms.
    assert r.conn.loop.timers[0][0] == pytest.approx(1.0)
    assert r.logged == [(WARN, 'delaying request, excess: 1.000, by zone "slow"')]
    # Both buckets were charged and let go.
    assert slow.table.get(_d("k")) == (1000, T0, 0)  # type: ignore[union-attr]
    assert fast.table.get(_d("k")) == (1000, T0, 0)  # type: ignore[union-attr]


def test_rejection_by_a_later_limit_lets_go_of_the_earlier(clock: list[int]) -> None:
    a, b = _zone("a", 1000), _zone("b", 1000)
    h = HttpLimitReq(((a, 5000, 0), (b, 1000, 0)), INFO, 429, False)
    h(_request({"a": "x", "b": "y"}, h))
    h(_request({"b": "y"}, h))
    r = _request({"a": "x", "b": "y"}, h)
    assert h(r) == 429
    assert r.logged == [(INFO, 'limiting requests, excess: 2.000 by zone "b"')]
    # `a` was looked at (held) but not charged: still as the first request left it
    # (accounted then: excess 0 at T0), and no longer held.
    assert a.table.get(_d("x")) == (0, T0, 0)  # type: ignore[union-attr]


def test_empty_keys_decline_and_leave_the_status_unset(clock: list[int]) -> None:
    zone = _zone("one", 1000)
    h = HttpLimitReq(((zone, 0, 0),), ERROR, 503, False)
    r = _request({}, h)
    assert h(r) is None
    assert r.limit_state is None or r.limit_state.req == 0


def test_dry_run(clock: list[int]) -> None:
    zone = _zone("one", 1000)
    h = HttpLimitReq(((zone, 1000, 0),), ERROR, 503, True)
    states = []
    for _ in range(3):
        r = _request({"one": "k"}, h)
        assert h(r) is None
        states.append(r.limit_state.req)
    assert states == [1, 4, 5]  # PASSED, DELAYED_DRY_RUN, REJECTED_DRY_RUN
    assert r.logged == [(ERROR, 'limiting requests, dry run, excess: 2.000 by zone "one"')]
    assert r.conn.loop.timers == []


def test_status_variable_names() -> None:
    r = SimpleNamespace(limit_state=None)
    assert limit_req._status_variable(r) is None
    r.limit_state = LimitState()
    for value, name in enumerate(limit_req.STATUS_NAMES[1:], 1):
        r.limit_state.req = value
        assert limit_req._status_variable(r) == name
