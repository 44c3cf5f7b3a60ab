"""The inventory cache: same contract in memory and on Redis, shared across servers, and never
a cause of an oversell."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from scalelab.hotel.cache import InventoryCache, cache_key
from scalelab.storage.kv import KV, MemoryKV, RedisKV
from tests.hotel.conftest import HotelApi, StartHotel, VirtualClock

DAY = date(2027, 3, 5)
NOON = datetime(2027, 3, 5, 12, tzinfo=UTC).timestamp()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def kv_and_clock(request: pytest.FixtureRequest) -> Iterator[tuple[KV, VirtualClock]]:
    clock = VirtualClock(NOON)
    kv: KV
    if request.param == "memory":
        kv = MemoryKV(clock=clock)
    else:
        kv = RedisKV(request.getfixturevalue("redis_url"), f"hotel-test-{uuid.uuid4().hex}")
    yield kv, clock
    kv.clear_prefix("")
    kv.close()


def test_key_is_the_books(kv_and_clock: tuple[KV, VirtualClock]) -> None:
    assert cache_key(12, 3, DAY) == "12_3_2027-03-05"


def test_put_get_invalidate(kv_and_clock: tuple[KV, VirtualClock]) -> None:
    kv, clock = kv_and_clock
    cache = InventoryCache(kv, clock, ttl=60)
    days = [DAY + timedelta(days=i) for i in range(3)]
    assert cache.get(1, 2, days) == [None, None, None]
    cache.put(1, 2, [(days[0], (10, 4, 110)), (days[2], (10, 0, 110))])
    assert cache.get(1, 2, days) == [(10, 4, 110), None, (10, 0, 110)]
    assert cache.get(1, 3, days) == [None, None, None]  # another room type
    cache.invalidate(1, 2, days[:1])
    assert cache.get(1, 2, days) == [None, None, (10, 0, 110)]
    cache.invalidate_from(1, [2, 3], DAY, DAY + timedelta(days=5))
    assert cache.get(1, 2, days) == [None, None, None]
    assert (cache.hits, cache.misses) == (3, 12)


def test_an_entry_never_outlives_its_night(kv_and_clock: tuple[KV, VirtualClock]) -> None:
    kv, clock = kv_and_clock
    clock.now = datetime(2027, 3, 5, 23, 59, 30, tzinfo=UTC).timestamp()
    cache = InventoryCache(kv, clock, ttl=3600)
    cache.put(1, 2, [(DAY, (5, 1, 100)), (DAY + timedelta(days=1), (5, 1, 100))])
    if isinstance(kv, RedisKV):
        ttls = [kv._client.pttl(kv._key(cache_key(1, 2, d))) for d in (DAY, DAY + timedelta(1))]
        assert 0 < ttls[0] <= 30_000 and ttls[1] > 3_000_000
    else:
        clock.advance(31)
        assert cache.get(1, 2, [DAY, DAY + timedelta(days=1)]) == [None, (5, 1, 100)]
    cache.put(1, 2, [(DAY - timedelta(days=1), (5, 1, 100))])  # already past: not stored
    assert cache.get(1, 2, [DAY - timedelta(days=1)]) == [None]


def _rooms_left(api: HotelApi, hotel_id: int, day: date) -> int:
    found = api.ok(
        api.http.get(
            f"/v1/hotels/{hotel_id}/availability",
            params={"check_in": day.isoformat(), "check_out": (day + timedelta(1)).isoformat()},
        )
    )
    return int(found["roomTypes"][0]["roomsLeft"])


@pytest.mark.redis
def test_two_servers_share_one_redis_cache(
    start_hotel: StartHotel, redis_url: str, tmp_path: Path
) -> None:
    """Server B's booking reaches server A's searches at once: B deletes the shared keys."""
    namespace = f"hotel-test-{uuid.uuid4().hex}"
    db = f"sqlite:///{tmp_path}/shared.db"
    a = start_hotel(database_url=db, cache_url=redis_url, cache_namespace=namespace)
    b = start_hotel(database_url=db, cache_url=redis_url, cache_namespace=namespace)
    hotel = a.hotel(overbookingPercent=100)
    room_type = a.room_type(hotel["id"], 2)
    today = datetime.now(UTC).date()
    assert _rooms_left(a, hotel["id"], today) == 2  # fills the cache
    a.ok(b.book(b.guest(), "from-b", hotel["id"], room_type["id"], today), 201)
    assert _rooms_left(a, hotel["id"], today) == 1
    raw = RedisKV(redis_url, namespace)
    try:
        assert raw.get(cache_key(hotel["id"], room_type["id"], today)) == b"2,1,100"
    finally:
        raw.clear_prefix("")
        raw.close()


def test_a_stale_cache_never_oversells(start_hotel: StartHotel) -> None:
    """Poison the cache with 'nothing reserved' for a full night: search believes it, the
    booking asks the database and is refused."""
    api = start_hotel()
    hotel = api.hotel(overbookingPercent=100)
    room_type = api.room_type(hotel["id"], 1)
    today = datetime.now(UTC).date()
    guest = api.guest()
    api.ok(api.book(guest, "first", hotel["id"], room_type["id"], today), 201)
    cache: InventoryCache = api.app.state.availability.cache
    cache.put(hotel["id"], room_type["id"], [(today, (1, 0, 100))])
    assert _rooms_left(api, hotel["id"], today) == 1  # stale, as poisoned
    r = api.book(guest, "second", hotel["id"], room_type["id"], today)
    assert r.status_code == 409 and r.json()["error"]["code"] == "sold_out"
    assert _rooms_left(api, hotel["id"], today) == 0  # the refusal dropped the stale entry
