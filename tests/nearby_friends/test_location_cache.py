"""The location cache over the in-process KV (virtual time) and Redis (real TTLs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence

import pytest

from scalelab.nearby_friends.location_cache import LocationCache, cache_key
from scalelab.nearby_friends.model import Location
from scalelab.storage.kv import KV, MemoryKV, RedisKV

T0 = 1_700_000_000.0


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingKV(MemoryKV):
    """Counts calls, to show get_many is one round trip."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock=clock)
        self.calls: list[str] = []

    def get(self, key: str) -> bytes | None:
        self.calls.append("get")
        return super().get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls.append("get_many")
        return super().get_many(keys)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def kv(request: pytest.FixtureRequest, clock: VirtualClock) -> Iterator[KV]:
    if request.param == "memory":
        yield MemoryKV(clock=clock)
        return
    store = RedisKV(request.getfixturevalue("redis_url"), f"test-nf-{uuid.uuid4().hex}")
    try:
        yield store
    finally:
        store.clear_prefix("")
        store.close()


def test_put_get_delete(kv: KV) -> None:
    cache = LocationCache(kv, ttl=600)
    assert cache.get(1) is None
    first = Location(1, 37.5665, 126.978, T0)
    cache.put(first)
    assert cache.get(1) == first
    moved = Location(1, 37.5700, 126.9820, T0 + 30)
    cache.put(moved)
    assert cache.get(1) == moved  # the latest fix replaces the last
    cache.delete(1)
    assert cache.get(1) is None
    cache.delete(1)  # deleting nothing is fine


def test_get_many(kv: KV) -> None:
    cache = LocationCache(kv, ttl=600)
    fixes = {u: Location(u, 37.0 + u / 10, 127.0, T0 + u) for u in (3, 5, 8)}
    for loc in fixes.values():
        cache.put(loc)
    assert cache.get_many([8, 4, 3, 5, 3]) == fixes
    assert cache.get_many(iter([4, 6])) == {}
    assert cache.get_many([]) == {}


def test_get_many_is_one_round_trip(clock: VirtualClock) -> None:
    kv = CountingKV(clock)
    cache = LocationCache(kv, ttl=600)
    for u in range(1, 401):
        cache.put(Location(u, 37.0, 127.0, T0))
    assert len(cache.get_many(range(1, 401))) == 400
    assert kv.calls == ["get_many"]
    kv.calls.clear()
    cache.get_many([])
    assert kv.calls == []


def test_ttl_expires_silent_users(clock: VirtualClock) -> None:
    cache = LocationCache(MemoryKV(clock=clock), ttl=600)
    cache.put(Location(1, 1.0, 2.0, T0))
    cache.put(Location(2, 1.0, 2.0, T0))
    clock.advance(599)
    cache.put(Location(2, 1.5, 2.0, T0 + 599))  # user 2 keeps sending: the TTL restarts
    assert set(cache.get_many([1, 2])) == {1, 2}
    clock.advance(1)
    assert cache.get(1) is None  # 600 s of silence
    assert cache.get_many([1, 2]) == {2: Location(2, 1.5, 2.0, T0 + 599)}
    clock.advance(599)
    assert cache.get(2) is None


@pytest.mark.redis
def test_redis_is_set_with_ex(redis_url: str) -> None:
    """On Redis one key per user, `{namespace}:loc:{id}`, with its TTL set by the write."""
    import redis

    namespace = f"test-nf-{uuid.uuid4().hex}"
    kv = RedisKV(redis_url, namespace)
    raw = redis.Redis.from_url(redis_url)
    try:
        cache = LocationCache(kv, ttl=600)
        cache.put(Location(42, 1.0, 2.0, T0))
        key = f"{namespace}:{cache_key(42)}"
        assert 0 < raw.pttl(key) <= 600_000
        LocationCache(kv, ttl=0.2).put(Location(43, 1.0, 2.0, T0))
        deadline = time.monotonic() + 10
        while cache.get(43) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.get(43) is None  # expired by Redis itself
        assert cache.get(42) is not None

        async def write_async() -> None:  # the event loop's writes carry the TTL too
            fresh = LocationCache(kv, ttl=600)
            await fresh.put_async(Location(44, 1.0, 2.0, T0))
            await fresh.aio.close()

        asyncio.run(write_async())
        assert 0 < raw.pttl(f"{namespace}:{cache_key(44)}") <= 600_000
    finally:
        kv.clear_prefix("")
        kv.close()
        raw.close()


def test_ttl_must_be_positive() -> None:
    for ttl in (0, -1.0):
        with pytest.raises(ValueError):
            LocationCache(MemoryKV(), ttl=ttl)


def test_the_event_loop_view_shares_the_keys(kv: KV) -> None:
    """put_async (the WebSocket hot path) and the blocking calls (REST) see one cache."""

    async def body() -> None:
        cache = LocationCache(kv, ttl=600)
        try:
            fixes = {u: Location(u, 37.0 + u / 10, 127.0, T0 + u) for u in (3, 5, 8)}
            await asyncio.gather(*(cache.put_async(loc) for loc in fixes.values()))
            assert cache.get_many([3, 5, 8, 9]) == fixes
            assert await cache.get_many_async([8, 4, 3, 5, 3]) == fixes
            assert await cache.get_many_async([]) == {}
            cache.put(Location(9, 1.0, 2.0, T0))
            assert (await cache.get_many_async([9]))[9].lat == 1.0
            await cache.delete_async(3)
            assert cache.get(3) is None
        finally:
            await cache.aio.close()  # the KV itself is the fixture's to close

    asyncio.run(body())
