"""KeysZone.current / touch: the lock-free check and the once-a-second refresh that replayed
cache hits (pyngx/http/cache/replay.py) use instead of a lookup."""

from __future__ import annotations

from pyngx.http.cache import zone as zn
from pyngx.http.cache.zone import KeysZone


def stored(z: KeysZone, digest: bytes) -> tuple[int, int]:
    node, _ = z.open(digest, 100, 10, 1, ref=True)
    version = z.commit(node.slot, digest, 200, 150, referenced=True)
    return node.slot, version


def test_current_names_the_stored_version_only() -> None:
    z = KeysZone("z", 64 * 1024)
    digest = bytes(range(16))
    slot, version = stored(z, digest)
    assert z.current(slot, digest, version)
    assert not z.current(slot, digest, version + 1)
    assert not z.current(slot, bytes(16), version)
    # A new store (another worker's, a bypass) bumps the version.
    _, newer = stored(z, digest)
    assert newer != version
    assert not z.current(slot, digest, version)
    assert z.current(slot, digest, newer)
    # Deleted (the manager, inactive): no longer current.
    z.forget(slot, digest)
    assert not z.current(slot, digest, newer)


def test_touch_refreshes_inactive_deadline_and_lru() -> None:
    z = KeysZone("z", 64 * 1024)
    a, b = bytes(range(16)), bytes(range(1, 17))
    slot_a, _ = stored(z, a)
    stored(z, b)
    assert z.c[z._bucket_base - 0 + 0] is not None  # the zone is mapped
    assert z.touch(slot_a, a, 200, 10)
    base = zn.HEADER_CELLS + slot_a * zn.NODE_CELLS
    assert z.c[base + zn.N_EXPIRE] == 210
    assert z.c[zn.H_HEAD] == slot_a  # most recently used
    assert not z.touch(slot_a, bytes(16), 200, 10)
