"""The shared keys zone (pyngx/http/cache/zone.py): nginx's node life cycle, LRU, eviction,
the lock, sharing across processes."""

from __future__ import annotations

import hashlib
import os
import random

from pyngx.http.cache import zone as zn
from pyngx.http.cache.zone import KeysZone

NOW = 1_700_000_000


def d(i: int | str) -> bytes:
    return hashlib.md5(str(i).encode()).digest()


def test_capacity_follows_nginx_8000_keys_per_megabyte() -> None:
    assert KeysZone("z", 1024 * 1024).nodes == 8192
    assert KeysZone("z", 10 * 1024 * 1024).nodes == 81920


def test_new_node_then_uses_and_min_uses() -> None:
    z = KeysZone("z", 64 * 1024)
    st, ev = z.open(d(1), NOW, 600, 3)
    assert (st.rc, st.uses, st.exists, st.referenced) == (zn.DECLINED, 1, False, True)
    assert ev == []
    st, _ = z.open(d(1), NOW, 600, 3)
    assert (st.rc, st.uses) == (zn.AGAIN, 2)
    st, _ = z.open(d(1), NOW, 600, 3)
    assert (st.rc, st.uses) == (zn.OK, 3)
    assert z.peek(d(1))["count"] == 3  # type: ignore[index]


def test_commit_makes_it_exist_and_bumps_versions() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    v1 = z.commit(st.slot, d(1), 4096, NOW + 60, referenced=True)
    node = z.peek(d(1))
    assert node is not None
    assert node["flags"] & zn.F_EXISTS and node["count"] == 0 and node["version"] == v1
    assert z.stats()[0] == 4096
    st, _ = z.open(d(1), NOW, 600, 1, ref=False)
    assert (st.rc, st.exists, st.version, st.valid_sec) == (zn.OK, True, v1, NOW + 60)
    v2 = z.commit(st.slot, d(1), 8192, NOW + 60, referenced=False)
    assert v2 > v1
    assert z.stats()[0] == 8192  # replaced, not added


def test_release_frees_a_node_without_file_when_min_uses_is_1() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    z.release(st.slot, d(1), referenced=True, lock_time=None)
    assert z.peek(d(1)) is None
    assert z.stats()[1] == 0
    # with min_uses > 1 it stays to count uses
    st, _ = z.open(d(2), NOW, 600, 2)
    z.release(st.slot, d(2), referenced=True, lock_time=None, min_uses=2)
    assert z.peek(d(2)) is not None


def test_cached_error_until_it_expires() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    z.release(st.slot, d(1), referenced=True, lock_time=None, error=502, valid_sec=NOW + 5)
    st, _ = z.open(d(1), NOW + 5, 600, 1)
    assert (st.rc, st.error) == (zn.OK, 502)
    st, _ = z.open(d(1), NOW + 6, 600, 1)
    assert (st.rc, st.error) == (zn.DECLINED, 0)  # renewed


def test_lru_order_and_same_second_touches() -> None:
    z = KeysZone("z", 64 * 1024)
    for i in range(5):
        z.open(d(i), NOW + i, 600, 1, ref=False)
    assert list(z.digests()) == [d(i) for i in (4, 3, 2, 1, 0)]
    z.open(d(1), NOW + 10, 600, 1, ref=False)
    assert list(z.digests())[0] == d(1)
    # within the same second the order may stay as it is (expire unchanged)
    z.open(d(3), NOW + 10, 600, 1, ref=False)
    expires = [z.peek(x)["expire"] for x in z.digests()]  # type: ignore[index]
    assert expires == sorted(expires, reverse=True)


def test_full_zone_evicts_lru_unreferenced() -> None:
    z = KeysZone("z", 8 * 128)  # 8 nodes
    for i in range(8):
        st, _ = z.open(d(i), NOW + i, 600, 1, ref=False)
        z.commit(st.slot, d(i), 100, NOW + 60, referenced=False)
    # 0 is the LRU tail; hold it, so 1 goes instead
    z.acquire(z.peek(d(0))["slot"], d(0))  # type: ignore[index]
    st, evicted = z.open(d("new"), NOW + 20, 600, 1)
    assert st.rc == zn.DECLINED
    assert evicted == [d(1)]
    assert z.peek(d(1)) is None
    assert z.stats()[2] == 7  # watermark: count - count / 8


def test_full_zone_all_referenced_is_nomem() -> None:
    z = KeysZone("z", 8 * 128)
    for i in range(8):
        z.open(d(i), NOW, 600, 1)  # referenced
    st, evicted = z.open(d("x"), NOW, 600, 1)
    assert st.rc == zn.NOMEM and evicted == []


def test_cache_lock() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    t = z.lock_entry(st.slot, d(1), 1000, 5000)
    assert t == 6000
    assert z.lock_entry(st.slot, d(1), 2000, 5000) == 0  # held
    assert z.lock_state(st.slot, d(1), 2000) == 4000
    assert z.lock_entry(st.slot, d(1), 6000, 5000) == 11000  # lock_age passed: taken over
    # the first holder giving up must not clear the new holder's flag
    z.release(st.slot, d(1), referenced=False, lock_time=6000)
    assert z.lock_state(st.slot, d(1), 7000) > 0
    z.release(st.slot, d(1), referenced=False, lock_time=11000)
    assert z.lock_state(st.slot, d(1), 7000) == 0


def test_start_update_once() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    z.commit(st.slot, d(1), 10, NOW - 1, referenced=True)
    assert z.start_update(st.slot, d(1)) == 0
    assert z.start_update(st.slot, d(1)) == -1  # UPDATING for everyone else
    z.commit(st.slot, d(1), 10, NOW + 60, referenced=False)
    assert z.start_update(st.slot, d(1)) == 0  # the store cleared it
    assert z.start_update(st.slot, d("gone")) == -2


def test_expire_inactive_lru_first_and_locked_entries() -> None:
    z = KeysZone("z", 64 * 1024)
    for i in range(4):
        st, _ = z.open(d(i), NOW + i, 10, 1, ref=False)
        z.commit(st.slot, d(i), 100, NOW + 99, referenced=False)
    z.acquire(z.peek(d(1))["slot"], d(1))  # type: ignore[index]
    files, locked, wait = z.expire_inactive(NOW + 12, 10, 100)
    assert files == [d(0), d(2)]
    assert locked == [(d(1), 1)]
    assert wait == 1  # d(3) expires at NOW + 13
    assert z.stats()[0] == 200
    files, locked, wait = z.expire_inactive(NOW + 12, 10, 1)
    assert (files, wait) == ([], 1)


def test_expire_inactive_limit() -> None:
    z = KeysZone("z", 64 * 1024)
    for i in range(5):
        z.open(d(i), NOW, 10, 1, ref=False)
    files, _locked, wait = z.expire_inactive(NOW + 100, 10, 2)
    assert wait == 0 and z.stats()[1] == 3
    assert files == []  # nodes without files
    _files, _locked, wait = z.expire_inactive(NOW + 100, 10, 10)
    assert wait == 10 and z.stats()[1] == 0


def test_forced_expire() -> None:
    z = KeysZone("z", 64 * 1024)
    assert z.forced_expire() == (None, 10)
    st, _ = z.open(d(1), NOW, 600, 1)
    assert z.forced_expire() == (None, 1)  # referenced
    z.commit(st.slot, d(1), 50, NOW + 9, referenced=True)
    assert z.forced_expire() == (d(1), 0)
    assert z.stats() == (0, 0, z.nodes)


def test_loader_add_and_cold() -> None:
    z = KeysZone("z", 64 * 1024)
    assert z.cold
    assert z.start_loading(123)
    assert not z.start_loading(456)
    assert z.add(d(1), 4096, NOW, 600)
    assert z.add(d(1), 4096, NOW, 600)  # again: only refreshed
    assert z.stats()[0] == 4096
    z.done_loading(complete=True)
    assert not z.cold
    assert not z.start_loading(1)
    st, _ = z.open(d(1), NOW, 600, 1)
    assert st.exists and st.version == 0


def test_mark_exists_and_forget() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    z.mark_exists(st.slot, d(1), 4096, NOW + 5)
    assert z.stats()[0] == 4096
    z.mark_exists(st.slot, d(1), 4096, NOW + 5)
    assert z.stats()[0] == 4096
    z.forget(st.slot, d(1))
    assert z.stats()[0] == 0
    assert not z.peek(d(1))["flags"] & zn.F_EXISTS  # type: ignore[index]


def test_random_churn_against_a_model() -> None:
    """Opens, commits, releases and evictions keep the chains, the LRU list and the
    counters consistent with a plain dict."""
    z = KeysZone("z", 64 * 128)  # 64 nodes
    rng = random.Random(5)
    keys = [d(i) for i in range(200)]
    held: dict[bytes, int] = {}
    for step in range(20000):
        k = rng.choice(keys)
        op = rng.random()
        if op < 0.5:
            st, evicted = z.open(k, NOW + step // 10, 600, 1, ref=k not in held)
            for e in evicted:
                assert e not in held
            if st.rc == zn.NOMEM:
                continue
            if k not in held:
                held[k] = st.slot
            if rng.random() < 0.5:
                z.commit(st.slot, k, 4096, NOW + 10**6, referenced=True)
                held.pop(k, None)
        elif op < 0.8 and held:
            k = rng.choice(list(held))
            z.release(held.pop(k), k, referenced=True, lock_time=None)
        else:
            digest, _wait = z.forced_expire()
            assert digest is None or digest not in held
    present = list(z.digests())
    assert len(present) == len(set(present)) == z.stats()[1] <= z.nodes
    size = sum(z.peek(k)["fs_size"] for k in present if z.peek(k)["flags"] & zn.F_EXISTS)  # type: ignore[index]
    assert size == z.stats()[0]
    for k in held:
        assert z.peek(k) is not None


def test_shared_between_processes() -> None:
    z = KeysZone("z", 64 * 1024)
    st, _ = z.open(d(1), NOW, 600, 1)
    pid = os.fork()
    if pid == 0:  # the child stores; the parent must see it
        try:
            z.commit(st.slot, d(1), 4096, NOW + 60, referenced=True)
            s2, _ = z.open(d(2), NOW, 600, 1)
            z.lock_entry(s2.slot, d(2), 1000, 5000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    node = z.peek(d(1))
    assert node is not None and node["flags"] & zn.F_EXISTS and node["version"] > 0
    assert z.lock_state(z.peek(d(2))["slot"], d(2), 2000) == 4000  # type: ignore[index]


def test_shared_zone_survives_a_reload_when_unchanged() -> None:
    a = zn.shared_zone("reload-test", 65536, "/x", (1, 2))
    assert zn.shared_zone("reload-test", 65536, "/x", (1, 2)) is a
    assert zn.shared_zone("reload-test", 65536, "/x", (2,)) is not a
    assert zn.shared_zone("reload-test", 131072, "/x", (2,)) is not a
