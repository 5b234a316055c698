"""The metadata cache serves stored versions for good and the newest for a moment only."""

from __future__ import annotations

import time

from registry.metadata_cache import MetadataCache


class Store:
    """A stand-in for the ``tuf_metadata`` table that counts its reads."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], bytes] = {("timestamp", 1): b"t1"}
        self.reads = 0

    def read(self, role: str, version: int | None) -> bytes | None:
        self.reads += 1
        if version is None:
            versions = [v for r, v in self.rows if r == role]
            return self.rows[(role, max(versions))] if versions else None
        return self.rows.get((role, version))


def test_a_stored_version_is_read_once() -> None:
    store = Store()
    cache = MetadataCache(store.read, ttl_s=60)
    assert [cache.get("timestamp", 1) for _ in range(5)] == [b"t1"] * 5
    assert store.reads == 1


def test_an_absent_version_is_asked_again_because_it_may_be_stored_any_time() -> None:
    store = Store()
    cache = MetadataCache(store.read, ttl_s=60)
    assert cache.get("root", 2) is None
    store.rows[("root", 2)] = b"r2"
    assert cache.get("root", 2) == b"r2"


def test_the_newest_is_read_again_after_its_ttl_or_when_this_process_stores_one() -> None:
    store = Store()
    cache = MetadataCache(store.read, ttl_s=0.2)
    assert cache.get("timestamp") == b"t1"
    store.rows[("timestamp", 2)] = b"t2"  # another replica signs a new one
    assert cache.get("timestamp") == b"t1"  # within the ttl
    time.sleep(0.25)
    assert cache.get("timestamp") == b"t2"
    store.rows[("timestamp", 3)] = b"t3"  # this process signs one
    cache.forget_newest()
    assert cache.get("timestamp") == b"t3"


def test_only_the_most_recently_used_versions_are_kept() -> None:
    store = Store()
    store.rows.update({("targets", v): f"v{v}".encode() for v in range(1, 5)})
    cache = MetadataCache(store.read, ttl_s=60, versions=2)
    for v in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
        cache.get("targets", v)
    reads = store.reads
    assert cache.get("targets", 1) == b"v1" and cache.get("targets", 3) == b"v3"
    assert store.reads == reads
    assert cache.get("targets", 2) == b"v2"
    assert store.reads == reads + 1
