"""The shared hash table of limit_conn zones: counting, limits, deletion, fullness, sharing."""

from __future__ import annotations

import hashlib
import os
import random

from pyngx.stream.limit_conn import Table


def _d(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=16).digest()


def test_count_limit_and_release() -> None:
    t = Table(32 * 1024)
    a = _d(1)
    assert t.acquire(a, 2) == 1
    assert t.acquire(a, 2) == 2
    assert t.acquire(a, 2) == 0  # at the limit
    t.release(a)
    assert t.count(a) == 1
    t.release(a)
    assert t.count(a) == 0
    assert t._used() == 0


def test_random_churn_matches_a_dict() -> None:
    """Backward-shift deletion keeps every key findable through any order of operations."""
    t = Table(4096)  # a small table: long probe runs, wrap-around
    rng = random.Random(7)
    model: dict[bytes, int] = {}
    keys = [_d(i) for i in range(t.capacity)]
    for _ in range(20000):
        k = rng.choice(keys)
        if rng.random() < 0.55:
            got = t.acquire(k, 3)
            if model.get(k, 0) >= 3:
                assert got == 0
            else:
                model[k] = model.get(k, 0) + 1
                assert got == model[k]
        elif model.get(k):
            t.release(k)
            model[k] -= 1
            if not model[k]:
                del model[k]
    for k in keys:
        assert t.count(k) == model.get(k, 0)
    assert t._used() == len(model)


def test_full_table_refuses_new_keys_only() -> None:
    t = Table(4096)
    for i in range(t.capacity):
        assert t.acquire(_d(i), 5) == 1
    assert t.acquire(_d(10**6), 5) is None
    assert t.acquire(_d(0), 5) == 2  # a known key still counts
    t.release(_d(3))
    assert t.acquire(_d(10**6), 5) == 1


def test_counts_are_shared_with_forked_children() -> None:
    t = Table(32 * 1024)
    pid = os.fork()
    if pid == 0:
        code = 0 if t.acquire(_d(1), 10) == 1 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert t.acquire(_d(1), 10) == 2
