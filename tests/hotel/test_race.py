"""The concurrency proof, end to end: many real HTTP clients race one real hotel server.

Every test runs for each concurrency strategy on SQLite and on PostgreSQL. Clients are threads
released together by a Barrier, each with its own httpx.Client; the truth afterwards is read
from the database: `audit` says inventory equals the reservations that hold it and that no
night is oversold.
"""

from __future__ import annotations

import random
import ssl
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from scalelab.hotel.audit import AuditReport, audit
from scalelab.hotel.schema import reservation, room_type_inventory
from scalelab.hotel.status import HOLDING
from tests.hotel.conftest import HotelApi, StartHotel

STRATEGIES = ("guarded", "pessimistic", "optimistic", "constraint")

# One TLS context for every client: building one per httpx.Client costs ~20 ms of CPU each.
_TLS = ssl.create_default_context()


def first_night() -> date:
    """Two days ahead in UTC (the server's calendar): safe across a midnight during the test."""
    return datetime.now(UTC).date() + timedelta(days=2)


def stay(start: date, nights: int = 1) -> tuple[str, str]:
    return start.isoformat(), (start + timedelta(days=nights)).isoformat()


Request = tuple[str, str, dict[str, str], dict[str, Any] | None]  # method, path, headers, json


def race(url: str, requests: Sequence[Request]) -> list[httpx.Response | BaseException]:
    """Send every request from its own thread and client, all released at once by a Barrier."""
    count = len(requests)
    barrier = threading.Barrier(count)
    results: list[httpx.Response | BaseException] = [RuntimeError("never ran")] * count

    def run(i: int) -> None:
        method, path, headers, body = requests[i]
        try:
            with httpx.Client(base_url=url, timeout=120, verify=_TLS) as client:
                barrier.wait(timeout=60)
                results[i] = client.request(method, path, headers=headers, json=body)
        except BaseException as e:  # reported to the test, never lost in the thread
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a racing client never finished"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    return results


def responses(results: Sequence[httpx.Response | BaseException]) -> list[httpx.Response]:
    out = [r for r in results if isinstance(r, httpx.Response)]
    assert len(out) == len(results)
    return out


def outcome(r: httpx.Response) -> str:
    """'201', or '409 sold_out' / '409 contention' ...: the status and the error code."""
    if r.status_code < 300:
        return str(r.status_code)
    try:
        code = r.json()["error"]["code"]
    except Exception:  # not our error body: show what came back
        code = r.text[:200]
    return f"{r.status_code} {code}"


def booking(
    headers: dict[str, str], hotel_id: int, room_type_id: int, start: date, nights: int = 1
) -> Request:
    check_in, check_out = stay(start, nights)
    body = {
        "reservationID": f"r-{uuid.uuid4().hex}",
        "hotelID": hotel_id,
        "roomTypeID": room_type_id,
        "startDate": check_in,
        "endDate": check_out,
    }
    return ("POST", "/v1/reservations", headers, body)


def engine_of(api: HotelApi, shard: int = 0) -> Engine:
    engine: Engine = api.app.state.shards.shards[shard].engine
    return engine


def assert_consistent(engine: Engine) -> AuditReport:
    report = audit(engine)
    assert report.ok, [str(m) for m in report.mismatches[:5]]
    assert report.oversold == 0
    return report


def holding(engine: Engine, hotel_id: int, room_type_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(reservation)
                .where(
                    reservation.c.hotel_id == hotel_id,
                    reservation.c.room_type_id == room_type_id,
                    reservation.c.status.in_([s.value for s in HOLDING]),
                )
            ).scalar_one()
        )


def holding_ids(engine: Engine, hotel_id: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(reservation.c.reservation_id).where(
                    reservation.c.hotel_id == hotel_id,
                    reservation.c.status.in_([s.value for s in HOLDING]),
                )
            ).scalars()
        )


def inventory(engine: Engine, hotel_id: int, room_type_id: int) -> dict[date, tuple[int, int]]:
    """date -> (total_reserved, cap) for one room type."""
    inv = room_type_inventory.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(inv.date, inv.total_reserved, inv.total_inventory, inv.overbook_pct).where(
                inv.hotel_id == hotel_id, inv.room_type_id == room_type_id
            )
        ).all()
    return {r.date: (r.total_reserved, r.total_inventory * r.overbook_pct // 100) for r in rows}


# --- servers ---------------------------------------------------------------------------------

Start = Callable[..., HotelApi]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def start(request: pytest.FixtureRequest, start_hotel: StartHotel) -> Start:
    """start(strategy, **settings) -> a real hotel server on this backend with that strategy."""

    def go(strategy: str, **settings: Any) -> HotelApi:
        if request.param == "postgres":
            schema = request.getfixturevalue("postgres_schema")
            return start_hotel("postgres", schema=schema, concurrency=strategy, **settings)
        return start_hotel(concurrency=strategy, **settings)

    return go


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def guests(api: HotelApi, count: int) -> list[dict[str, str]]:
    return [api.guest(f"Racer {i}") for i in range(count)]


# --- the last rooms --------------------------------------------------------------------------


def test_last_rooms(start: Start, strategy: str) -> None:
    api = start(strategy)
    hotel = api.hotel(name="Last Rooms", overbookingPercent=110)
    rt = api.room_type(hotel["id"], 10)  # 10 rooms at 110%: 11 reservable
    night = first_night()
    early = api.guest("Early bird")
    for i in range(6):
        api.ok(api.book(early, f"early-{i}", hotel["id"], rt["id"], night), 201)
    racers = guests(api, 10)

    results = responses(
        race(api.url, [booking(racers[i % 10], hotel["id"], rt["id"], night) for i in range(100)])
    )

    counts = Counter(outcome(r) for r in results)
    assert counts == {"201": 5, "409 sold_out": 95}, counts
    for r in results:
        if r.status_code == 409:
            assert r.json()["error"]["night"] == night.isoformat()
    engine = engine_of(api)
    report = assert_consistent(engine)
    assert report.reservations == 11
    assert holding(engine, hotel["id"], rt["id"]) == 11
    assert inventory(engine, hotel["id"], rt["id"])[night] == (11, 11)
    won = {r.json()["reservationID"] for r in results if r.status_code == 201}
    assert holding_ids(engine, hotel["id"]) == won | {f"early-{i}" for i in range(6)}


def test_optimistic_with_one_attempt_never_oversells(start: Start) -> None:
    """Without retries optimistic locking may turn buyers away (409 contention), never oversell."""
    api = start("optimistic", optimistic_retries=1)
    hotel = api.hotel(name="One Shot")
    rt = api.room_type(hotel["id"], 10)
    night = first_night()
    racers = guests(api, 5)

    results = responses(
        race(api.url, [booking(racers[i % 5], hotel["id"], rt["id"], night) for i in range(60)])
    )

    counts = Counter(outcome(r) for r in results)
    assert set(counts) <= {"201", "409 sold_out", "409 contention"}, counts
    assert 1 <= counts["201"] <= 11
    engine = engine_of(api)
    assert_consistent(engine)
    assert inventory(engine, hotel["id"], rt["id"])[night][0] == counts["201"]


# --- random multi-night ranges ---------------------------------------------------------------


def test_random_multi_night_ranges(start: Start, strategy: str) -> None:
    api = start(strategy)
    hotel = api.hotel(name="Ranges", overbookingPercent=100)
    rt = api.room_type(hotel["id"], 3)
    first = first_night()
    window = [first + timedelta(days=i) for i in range(14)]
    racers = guests(api, 8)
    rng = random.Random(f"ranges-{strategy}")
    stays = []
    for _ in range(80):
        offset = rng.randrange(14)
        stays.append((offset, min(14 - offset, rng.randint(1, 5))))

    results = responses(
        race(
            api.url,
            [
                booking(racers[i % 8], hotel["id"], rt["id"], first + timedelta(days=o), n)
                for i, (o, n) in enumerate(stays)
            ],
        )
    )

    counts = Counter(outcome(r) for r in results)
    assert set(counts) == {"201", "409 sold_out"}, counts
    engine = engine_of(api)
    report = assert_consistent(engine)
    assert report.reservations == counts["201"]
    reserved = inventory(engine, hotel["id"], rt["id"])
    won = [stays[i] for i, r in enumerate(results) if r.status_code == 201]
    for i, night in enumerate(window):
        covering = sum(1 for o, n in won if o <= i < o + n)
        assert reserved[night] == (covering, 3) and covering <= 3, night
    # A refusal names a night that really is full now (nothing frees rooms during the race).
    for r in results:
        if r.status_code == 409:
            full = date.fromisoformat(r.json()["error"]["night"])
            assert reserved[full][0] == 3, full


# --- cancels racing bookings -----------------------------------------------------------------


def test_cancels_mixed_with_bookings(start: Start, strategy: str) -> None:
    """Cancels release rooms while bookings race for them: the counts always agree."""
    api = start(strategy)
    hotel = api.hotel(name="Churn", overbookingPercent=100)
    rt = api.room_type(hotel["id"], 6)
    first = first_night()
    owners = guests(api, 4)
    held = []
    for i in range(6):  # every room of the 4-night window taken: nights 0-1 and nights 2-3
        api.ok(api.book(owners[i % 4], f"held-{i}", hotel["id"], rt["id"], first, 2), 201)
        later = first + timedelta(days=2)
        api.ok(api.book(owners[i % 4], f"kept-{i}", hotel["id"], rt["id"], later, 2), 201)
        held.append((f"held-{i}", owners[i % 4]))
    racers = guests(api, 6)
    rng = random.Random(f"churn-{strategy}")
    requests: list[Request] = [("DELETE", f"/v1/reservations/{rid}", g, None) for rid, g in held]
    requests += [
        booking(racers[i % 6], hotel["id"], rt["id"], first + timedelta(rng.randrange(3)), 2)
        for i in range(40)
    ]
    rng.shuffle(requests)

    results = responses(race(api.url, requests))

    cancels = [r for q, r in zip(requests, results, strict=True) if q[0] == "DELETE"]
    books = [r for q, r in zip(requests, results, strict=True) if q[0] == "POST"]
    assert [outcome(r) for r in cancels] == ["200"] * len(held)
    assert all(r.json()["status"] == "cancelled" for r in cancels)
    counts = Counter(outcome(r) for r in books)
    assert set(counts) <= {"201", "409 sold_out"}, counts
    engine = engine_of(api)
    report = assert_consistent(engine)
    assert report.reservations == 6 + counts["201"]  # the kept ones and the winners
    assert counts["201"] <= 6
    for night, (reserved, cap) in inventory(engine, hotel["id"], rt["id"]).items():
        assert reserved <= cap == 6, night


def test_duplicate_cancels_release_once(start: Start) -> None:
    """Three DELETEs per reservation at once, pending and paid alike: rooms come back once."""
    api = start("guarded")
    hotel = api.hotel(name="Double Cancel", overbookingPercent=100)
    rt = api.room_type(hotel["id"], 20)
    night = first_night()
    owner = api.guest()
    ids = [f"dup-{i}" for i in range(20)]
    for i, rid in enumerate(ids):
        api.ok(api.book(owner, rid, hotel["id"], rt["id"], night, 1 + i % 3), 201)
        if i % 2:
            path = f"/v1/reservations/{rid}/payment"
            api.ok(api.http.post(path, json={"method": "pm_card_ok"}, headers=owner))

    results = responses(
        race(api.url, [("DELETE", f"/v1/reservations/{rid}", owner, None) for rid in ids * 3])
    )

    # Repeating a cancel is harmless, even when two race: every answer is the cancellation.
    assert set(Counter(outcome(r) for r in results)) == {"200"}
    for rid in ids:
        got = api.ok(api.http.get(f"/v1/reservations/{rid}", headers=owner))
        assert got["status"] == ("refunded" if int(rid[4:]) % 2 else "cancelled")
    engine = engine_of(api)
    assert_consistent(engine)
    assert holding_ids(engine, hotel["id"]) == set()
    assert set(inventory(engine, hotel["id"], rt["id"]).values()) == {(0, 20)}


# --- the double click ------------------------------------------------------------------------


def test_same_reservation_id_twenty_times_books_once(start: Start) -> None:
    api = start("guarded")
    hotel = api.hotel(name="Double Click")
    rt = api.room_type(hotel["id"], 5)
    guest = api.guest()
    request = booking(guest, hotel["id"], rt["id"], first_night(), 2)
    assert request[3] is not None
    rid = request[3]["reservationID"]

    results = responses(race(api.url, [request] * 20))

    counts = Counter(outcome(r) for r in results)
    assert set(counts) <= {"201", "409 request_in_flight"}, counts
    created = [r for r in results if r.status_code == 201]
    assert created and len({r.content for r in created}) == 1  # replays carry the same body
    again = api.ok(api.http.post("/v1/reservations", json=request[3], headers=guest), 201)
    assert again == created[0].json()
    engine = engine_of(api)
    assert_consistent(engine)
    assert holding_ids(engine, hotel["id"]) == {rid}
    assert set(inventory(engine, hotel["id"], rt["id"]).values()) >= {(1, 5), (0, 5)}


# --- bugs found on the way -------------------------------------------------------------------


def test_invalid_transition_is_a_409(start_hotel: StartHotel) -> None:
    """Once a 500: InvalidTransition's `status` detail clashed with error_response's argument."""
    api = start_hotel()
    hotel = api.hotel(name="Transitions")
    rt = api.room_type(hotel["id"], 2)
    guest = api.guest()
    api.ok(api.book(guest, "cancel-then-pay", hotel["id"], rt["id"], first_night()), 201)
    api.ok(api.http.delete("/v1/reservations/cancel-then-pay", headers=guest))

    r = api.http.post(
        "/v1/reservations/cancel-then-pay/payment", json={"method": "pm_card_ok"}, headers=guest
    )

    assert outcome(r) == "409 invalid_transition", r.text


def test_cancel_that_loses_a_race_to_another_cancel_is_harmless(
    start_hotel: StartHotel, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = start_hotel()
    hotel = api.hotel(name="Double Cancel")
    rt = api.room_type(hotel["id"], 2)
    guest = api.guest()
    api.ok(api.book(guest, "twice", hotel["id"], rt["id"], first_night()), 201)
    service = api.app.state.reservations
    locate = service._locate

    def read_then_lose(reservation_id: str, guest_id: int | None) -> Any:
        found = locate(reservation_id, guest_id)  # sees "pending"
        monkeypatch.setattr(service, "_locate", locate)
        service.cancel(reservation_id, guest_id)  # the other DELETE commits first
        return found

    monkeypatch.setattr(service, "_locate", read_then_lose)

    r = api.http.delete("/v1/reservations/twice", headers=guest)

    assert_consistent(engine_of(api))
    assert outcome(r) == "200", r.text
    assert r.json()["status"] == "cancelled"
