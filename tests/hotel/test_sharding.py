"""Sharding by hotel_id over two databases: two SQLite files, or two PostgreSQL schemas.

A hotel's shard is `hotel_id % 2`; its room types, inventory and reservations live there and
nowhere else, which the tests check by reading each database directly. Reads by reservationID
and a guest's history cross shards; the concurrency guarantee holds on every shard.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, Table, func, select

from scalelab.hotel.audit import audit
from scalelab.hotel.schema import (
    guest,
    hotel,
    idempotency,
    reservation,
    room_type,
    room_type_inventory,
)
from scalelab.storage import sql
from tests.conftest import POSTGRES_URL, fresh_postgres_schema
from tests.hotel.conftest import HotelApi, StartHotel
from tests.hotel.test_race import (
    STRATEGIES,
    assert_consistent,
    booking,
    first_night,
    inventory,
    outcome,
    race,
    responses,
)


@dataclass
class Sharded:
    start: StartHotel
    urls: list[str]
    engines: list[Engine]  # our own connections to each shard, not the server's

    def server(self, **settings: Any) -> HotelApi:
        return self.start(shards=",".join(self.urls), **settings)


def schema_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def second_schema(postgres_schema: str) -> Iterator[str]:
    """Another fresh schema beside postgres_schema (which proves PostgreSQL is reachable)."""
    with fresh_postgres_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sharded(
    request: pytest.FixtureRequest, start_hotel: StartHotel, tmp_path: Path
) -> Iterator[Sharded]:
    if request.param == "sqlite":
        urls = [sql.sqlite_url(tmp_path / "a.db"), sql.sqlite_url(tmp_path / "b.db")]
    else:
        first = request.getfixturevalue("postgres_schema")
        second = request.getfixturevalue("second_schema")
        urls = [schema_url(first), schema_url(second)]
    engines = [sql.create_engine(u, pool_size=2) for u in urls]
    yield Sharded(start_hotel, urls, engines)
    for e in engines:
        e.dispose()


def count(engine: Engine, table: Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def ids(engine: Engine, column: Any) -> set[Any]:
    with engine.connect() as conn:
        return set(conn.execute(select(column)).scalars())


def test_hotels_live_on_their_own_shard(sharded: Sharded) -> None:
    api = sharded.server()
    a, b = sharded.engines
    hotels = [api.hotel(name=f"H{i}") for i in range(4)]
    assert [h["id"] % 2 for h in hotels] == [0, 1, 0, 1]  # round robin; the id names the shard
    types = {h["id"]: api.room_type(h["id"], 4)["id"] for h in hotels}
    guest_headers = api.guest()
    night = first_night()
    for i, h in enumerate(hotels):
        api.ok(api.book(guest_headers, f"own-{i}", h["id"], types[h["id"]], night, 2), 201)

    for shard, engine in enumerate((a, b)):
        mine = {h["id"] for h in hotels if h["id"] % 2 == shard}
        assert ids(engine, hotel.c.id) == mine
        assert ids(engine, room_type.c.hotel_id) == mine
        assert ids(engine, room_type_inventory.c.hotel_id) == mine
        assert ids(engine, reservation.c.hotel_id) == mine
        assert ids(engine, reservation.c.reservation_id) == {
            f"own-{i}" for i, h in enumerate(hotels) if h["id"] in mine
        }
        for h in mine:  # the whole horizon of each of its room types, here and only here
            assert count(engine, room_type_inventory, room_type_inventory.c.hotel_id == h) == 60
            assert inventory(engine, h, types[h])[night][0] == 1
    # Guests and their tokens live in the directory, shard 0.
    assert count(a, guest) == 1 and count(b, guest) == 0
    for engine in (a, b):
        assert_consistent(engine)


def test_reads_and_history_cross_shards(sharded: Sharded) -> None:
    api = sharded.server()
    h0, h1 = api.hotel(name="Even"), api.hotel(name="Odd")
    assert (h0["id"] % 2, h1["id"] % 2) == (0, 1)
    t0, t1 = api.room_type(h0["id"], 3)["id"], api.room_type(h1["id"], 3)["id"]
    me, other = api.guest("Me"), api.guest("Other")
    night = first_night()
    made = []
    for i in range(6):  # alternate shards; reservation ids whose keys hash to either shard
        h, t = (h0, t0) if i % 2 == 0 else (h1, t1)
        rid = f"mine-{i}"
        body = api.ok(api.book(me, rid, h["id"], t, night + timedelta(days=i)), 201)
        assert body["hotelID"] == h["id"]
        made.append(rid)
    api.ok(api.book(other, "theirs", h1["id"], t1, night), 201)
    assert {api.app.state.shards.for_key(rid).index for rid in made} == {0, 1}

    for rid in made:
        got = api.ok(api.http.get(f"/v1/reservations/{rid}", headers=me))
        assert got["reservationID"] == rid
        assert api.ok(api.http.get(f"/v1/reservations/{rid}", headers=api.staff)) == got
        r = api.http.get(f"/v1/reservations/{rid}", headers=other)  # not theirs: not found
        assert r.status_code == 404, r.text

    history = api.ok(api.http.get("/v1/reservations", headers=me))["reservations"]
    assert [r["reservationID"] for r in history] == made[::-1]  # both shards, newest first
    assert {r["hotelID"] % 2 for r in history} == {0, 1}
    stamps = [r["createdAt"] for r in history]
    assert stamps == sorted(stamps, reverse=True)
    limited = api.ok(api.http.get("/v1/reservations?limit=3", headers=me))["reservations"]
    assert [r["reservationID"] for r in limited] == made[::-1][:3]
    staff_view = api.ok(api.http.get("/v1/reservations", headers=api.staff))["reservations"]
    assert {r["reservationID"] for r in staff_view} == {*made, "theirs"}
    one_hotel = api.ok(api.http.get(f"/v1/reservations?hotelID={h1['id']}", headers=me))
    assert [r["reservationID"] for r in one_hotel["reservations"]] == made[::-1][0::2]

    for rid in made[:2]:  # cancels route to the right shard too
        assert api.ok(api.http.delete(f"/v1/reservations/{rid}", headers=me))["status"] == (
            "cancelled"
        )
    for engine in sharded.engines:
        assert_consistent(engine)


def test_reservation_id_reused_on_the_other_shard(sharded: Sharded) -> None:
    api = sharded.server()
    h0, h1 = api.hotel(name="Even"), api.hotel(name="Odd")
    t0, t1 = api.room_type(h0["id"], 10)["id"], api.room_type(h1["id"], 10)["id"]
    me = api.guest()
    night = first_night()
    for rid in ("reuse-a", "reuse-b", "reuse-c", "reuse-d"):
        first = api.ok(api.book(me, rid, h0["id"], t0, night), 201)

        r = api.book(me, rid, h1["id"], t1, night)

        assert outcome(r) == "422 idempotency_key_reused", r.text
        assert r.json()["error"]["reservationID"] == rid
        replay = api.book(me, rid, h0["id"], t0, night)  # the original still replays
        assert replay.status_code == 201 and replay.json() == first
        assert replay.headers["Idempotent-Replayed"] == "true"
    a, b = sharded.engines
    assert count(b, reservation) == 0  # nothing was booked on the other shard
    assert inventory(b, h1["id"], t1)[night] == (0, 11)
    assert count(a, reservation) == 4
    keys = ids(a, idempotency.c.key) | ids(b, idempotency.c.key)
    assert keys == {"reuse-a", "reuse-b", "reuse-c", "reuse-d"}
    for engine in (a, b):
        assert_consistent(engine)


# Every strategy is raced on one database in test_race.py; here the routing is what is new, so
# two strategies by default (optimistic reads outside its transaction), the other two with -m slow.
SHARDED_STRATEGIES = [
    s if s in ("guarded", "optimistic") else pytest.param(s, marks=pytest.mark.slow)
    for s in STRATEGIES
]


@pytest.mark.parametrize("strategy", SHARDED_STRATEGIES)
def test_race_on_shard_1_never_oversells(sharded: Sharded, strategy: str) -> None:
    api = sharded.server(concurrency=strategy)
    h0, h1 = api.hotel(name="Even"), api.hotel(name="Odd")
    assert h1["id"] % 2 == 1
    t0 = api.room_type(h0["id"], 5)["id"]
    t1 = api.room_type(h1["id"], 10, name="Suite")["id"]  # 110%: 11 reservable
    night = first_night()
    racers = [api.guest(f"r{i}") for i in range(6)]
    requests = [booking(racers[i % 6], h1["id"], t1, night, 1 + i % 2) for i in range(50)]
    requests += [booking(racers[i % 6], h0["id"], t0, night) for i in range(10)]

    results = responses(race(api.url, requests))

    odd = Counter(outcome(r) for r in results[:50])
    even = Counter(outcome(r) for r in results[50:])
    assert set(odd) == {"201", "409 sold_out"}, odd
    assert even == {"201": 5, "409 sold_out": 5}, even  # the other shard, just as exact
    a, b = sharded.engines
    assert audit(a).reservations == 5
    assert_consistent(a)
    report = assert_consistent(b)
    assert report.reservations == odd["201"]
    assert inventory(b, h1["id"], t1)[night] == (11, 11)  # one-night stays fill it exactly
    assert count(b, reservation, reservation.c.hotel_id == h0["id"]) == 0
    assert count(a, reservation, reservation.c.hotel_id == h1["id"]) == 0
