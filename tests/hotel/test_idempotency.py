"""Idempotent reservations: the reservationID as the IETF Idempotency-Key, through the real API.

Replays are checked byte for byte, and "booked once" is checked against the inventory the
availability search reads and the reservations staff can list, never against counters in
the test.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, update

from scalelab.hotel.idempotency import fingerprint
from scalelab.hotel.model import ReservationIn
from scalelab.hotel.schema import idempotency
from tests.hotel.conftest import HotelApi, StartHotel, VirtualClock

TODAY = date(2030, 1, 1)
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC).timestamp()
D = TODAY + timedelta(days=10)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


@pytest.fixture
def api(start_hotel: StartHotel, clock: VirtualClock) -> HotelApi:
    return start_hotel(clock=clock)


def body(reservation_id: str, hotel_id: int, type_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "reservationID": reservation_id,
        "hotelID": hotel_id,
        "roomTypeID": type_id,
        "startDate": D.isoformat(),
        "endDate": (D + timedelta(days=2)).isoformat(),
        **extra,
    }


def post(api: HotelApi, headers: dict[str, str], payload: dict[str, Any]) -> httpx.Response:
    return api.http.post("/v1/reservations", json=payload, headers=headers)


def rooms_left(api: HotelApi, hotel_id: int, type_id: int) -> int:
    r = api.http.get(
        f"/v1/hotels/{hotel_id}/availability",
        params={"check_in": D.isoformat(), "check_out": (D + timedelta(days=2)).isoformat()},
    )
    [found] = [t for t in api.ok(r)["roomTypes"] if t["roomTypeID"] == type_id]
    return int(found["roomsLeft"])


def all_reservations(api: HotelApi) -> list[dict[str, Any]]:
    return list(api.ok(api.http.get("/v1/reservations", headers=api.staff))["reservations"])


def error_code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def setup(api: HotelApi, inventory: int = 5, **hotel: Any) -> tuple[int, int]:
    hotel_id = api.hotel(**hotel)["id"]
    return hotel_id, api.room_type(hotel_id, inventory)["id"]


def register(api: HotelApi, email: str) -> tuple[int, dict[str, str]]:
    data = api.ok(api.http.post("/v1/guests", json={"name": "G", "email": email}), 201)
    return int(data["guestID"]), {"Authorization": f"Bearer {data['token']}"}


# -- replays and mismatches ---------------------------------------------------------------


def test_same_request_replays_the_same_response_and_books_once(api: HotelApi) -> None:
    hotel_id, type_id = setup(api, inventory=5)  # 5 reservable
    g = api.guest()
    first = post(api, g, body("k-1", hotel_id, type_id))
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert first.headers["location"] == "/v1/reservations/k-1"
    for _ in range(3):
        again = post(api, g, body("k-1", hotel_id, type_id))
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == "/v1/reservations/k-1"
        assert again.content == first.content
    # The same request with its keys in another order, or the id as a string, is the same.
    reordered = dict(reversed(list(body("k-1", hotel_id, type_id).items())))
    reordered["hotelID"] = str(hotel_id)
    again = post(api, g, reordered)
    assert again.status_code == 201 and again.content == first.content
    assert rooms_left(api, hotel_id, type_id) == 4
    assert [x["reservationID"] for x in all_reservations(api)] == ["k-1"]


def test_same_key_different_body_is_422(api: HotelApi) -> None:
    hotel_id, type_id = setup(api)
    g = api.guest()
    first = post(api, g, body("k-1", hotel_id, type_id))
    assert first.status_code == 201
    for changed in (
        body("k-1", hotel_id, type_id, rooms=2),
        body("k-1", hotel_id, type_id, guests=2),
        {**body("k-1", hotel_id, type_id), "endDate": (D + timedelta(days=3)).isoformat()},
        body("k-1", hotel_id, type_id, guest={"name": "Kim"}),
    ):
        r = post(api, g, changed)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "idempotency_key_reused"
        assert r.json()["error"]["reservationID"] == "k-1"
        assert "idempotent-replayed" not in r.headers
    assert rooms_left(api, hotel_id, type_id) == 4
    # The original still replays afterwards.
    assert post(api, g, body("k-1", hotel_id, type_id)).content == first.content


def test_same_key_from_another_guest_is_422(api: HotelApi) -> None:
    hotel_id, type_id = setup(api)
    alice, bob = api.guest(), api.guest()
    first = post(api, alice, body("k-1", hotel_id, type_id))
    assert first.status_code == 201
    r = post(api, bob, body("k-1", hotel_id, type_id))
    assert r.status_code == 422
    assert error_code(r) == "idempotency_key_reused"
    assert b"k-1" in r.content and first.content not in r.content  # nothing of alice's leaks
    assert api.http.get("/v1/reservations/k-1", headers=bob).status_code == 404
    assert api.ok(api.http.get("/v1/reservations", headers=bob)) == {"reservations": []}
    assert rooms_left(api, hotel_id, type_id) == 4


def test_sold_out_answer_replays_as_the_same_409(api: HotelApi) -> None:
    hotel_id, type_id = setup(api, inventory=1, overbookingPercent=100)
    alice, bob = api.guest(), api.guest()
    assert post(api, alice, body("a-1", hotel_id, type_id)).status_code == 201
    sold_out = post(api, bob, body("b-1", hotel_id, type_id))
    assert sold_out.status_code == 409
    assert error_code(sold_out) == "sold_out"
    # A room comes free; the same request still answers what it answered the first time.
    api.ok(api.http.delete("/v1/reservations/a-1", headers=alice))
    assert rooms_left(api, hotel_id, type_id) == 1
    replay = post(api, bob, body("b-1", hotel_id, type_id))
    assert replay.status_code == 409
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == sold_out.content
    assert rooms_left(api, hotel_id, type_id) == 1
    # A new key books it.
    assert post(api, bob, body("b-2", hotel_id, type_id)).status_code == 201
    assert rooms_left(api, hotel_id, type_id) == 0


def test_idempotency_key_header_must_equal_the_reservation_id(api: HotelApi) -> None:
    hotel_id, type_id = setup(api)
    g = api.guest()
    r = post(api, {**g, "Idempotency-Key": '"other"'}, body("k-1", hotel_id, type_id))
    assert r.status_code == 422, r.text
    assert error_code(r) == "invalid_request"
    assert "Idempotency-Key" in r.json()["error"]["message"]
    assert rooms_left(api, hotel_id, type_id) == 4 + 1  # nothing booked (5 reservable)
    # The draft's quoted form and the bare form of the same key are both accepted.
    quoted = post(api, {**g, "Idempotency-Key": '"k-1"'}, body("k-1", hotel_id, type_id))
    assert quoted.status_code == 201
    bare = post(api, {**g, "Idempotency-Key": "k-1"}, body("k-1", hotel_id, type_id))
    assert bare.status_code == 201 and bare.headers["idempotent-replayed"] == "true"
    assert bare.content == quoted.content
    assert rooms_left(api, hotel_id, type_id) == 4


def test_a_request_refused_before_booking_leaves_the_key_free(api: HotelApi) -> None:
    hotel_id, type_id = setup(api)
    g = api.guest()
    too_many = post(api, g, body("k-1", hotel_id, type_id, guests=3))  # capacity 2
    assert too_many.status_code == 422 and error_code(too_many) == "invalid_request"
    ok = post(api, g, body("k-1", hotel_id, type_id))
    assert ok.status_code == 201 and "idempotent-replayed" not in ok.headers


# -- double click ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_double_click_books_once(
    request: pytest.FixtureRequest, start_hotel: StartHotel, backend: str
) -> None:
    schema = request.getfixturevalue("postgres_schema") if backend == "postgres" else None
    api = start_hotel(backend, schema=schema, clock=VirtualClock(T0))
    hotel_id, type_id = setup(api, inventory=10)  # 11 reservable
    g = api.guest()
    payload = body("click", hotel_id, type_id)
    n = 20
    barrier = threading.Barrier(n)
    results: list[tuple[int, bytes, str | None] | BaseException] = [ValueError("not run")] * n

    def click(i: int) -> None:
        try:
            with httpx.Client(base_url=api.url, timeout=60) as client:
                barrier.wait(timeout=30)
                r = client.post("/v1/reservations", json=payload, headers=g)
                results[i] = (r.status_code, r.content, r.headers.get("idempotent-replayed"))
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=click, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    answers = [r for r in results if not isinstance(r, BaseException)]
    created = [r for r in answers if r[0] == 201]
    in_flight = [r for r in answers if r[0] == 409]
    assert len(created) + len(in_flight) == n, [r[:1] + r[2:] for r in answers]
    assert created, "at least one click must get the reservation"
    for _, content, _ in in_flight:
        assert httpx.Response(409, content=content).json()["error"]["code"] == "request_in_flight"
    assert len({content for _, content, _ in created}) == 1  # one reservation, one body
    assert sum(1 for r in created if r[2] is None) == 1  # exactly one original, the rest replays
    assert rooms_left(api, hotel_id, type_id) == 10
    listed = all_reservations(api)
    assert [(x["reservationID"], x["status"]) for x in listed] == [("click", "pending")]
    # After the storm, a late click replays the one answer.
    late = post(api, g, payload)
    assert late.status_code == 201 and late.headers["idempotent-replayed"] == "true"
    assert late.content == created[0][1]


# -- leases ----------------------------------------------------------------------------------


def put_in_flight(
    api: HotelApi, guest_id: int, payload: dict[str, Any], lease_until: float
) -> None:
    """What a request that died after claiming its key leaves behind."""
    key = payload["reservationID"]
    fp = fingerprint(guest_id, ReservationIn.model_validate(payload).fingerprint_fields())
    engine = api.app.state.shards.for_key(key).engine
    with engine.begin() as conn:
        conn.execute(
            insert(idempotency).values(
                key=key,
                guest_id=guest_id,
                hotel_id=payload["hotelID"],
                fingerprint=fp,
                state="in_flight",
                lease_until=lease_until,
                created_at=lease_until - 30,
            )
        )


def test_expired_lease_of_a_dead_request_is_taken_over(api: HotelApi, clock: VirtualClock) -> None:
    hotel_id, type_id = setup(api)
    guest_id, g = register(api, "dead@example.org")
    payload = body("k-dead", hotel_id, type_id)
    put_in_flight(api, guest_id, payload, lease_until=clock.now - 1)
    r = post(api, g, payload)
    assert r.status_code == 201, r.text
    assert "idempotent-replayed" not in r.headers
    assert r.json()["reservationID"] == "k-dead" and r.json()["status"] == "pending"
    assert rooms_left(api, hotel_id, type_id) == 4
    again = post(api, g, payload)
    assert again.status_code == 201 and again.content == r.content
    assert again.headers["idempotent-replayed"] == "true"
    assert rooms_left(api, hotel_id, type_id) == 4


def test_live_lease_answers_409_in_flight(api: HotelApi, clock: VirtualClock) -> None:
    hotel_id, type_id = setup(api)
    guest_id, g = register(api, "slow@example.org")
    payload = body("k-slow", hotel_id, type_id)
    put_in_flight(api, guest_id, payload, lease_until=clock.now + 3600)
    r = post(api, g, payload)
    assert r.status_code == 409, r.text
    assert error_code(r) == "request_in_flight"
    assert r.json()["error"]["reservationID"] == "k-slow"
    assert rooms_left(api, hotel_id, type_id) == 5
    assert all_reservations(api) == []
    # A different body under the same key is still a mismatch, not "in flight".
    r = post(api, g, body("k-slow", hotel_id, type_id, rooms=2))
    assert r.status_code == 422 and error_code(r) == "idempotency_key_reused"
    # Once the lease runs out, the next attempt books.
    clock.advance(3601)
    r = post(api, g, payload)
    assert r.status_code == 201, r.text
    assert rooms_left(api, hotel_id, type_id) == 4


def test_taking_over_a_lease_whose_booking_committed_books_nothing_more(
    api: HotelApi, clock: VirtualClock
) -> None:
    """The dead request had booked but not recorded its response: answer with that booking."""
    hotel_id, type_id = setup(api)
    g = api.guest()
    payload = body("k-half", hotel_id, type_id)
    first = post(api, g, payload)
    assert first.status_code == 201
    engine = api.app.state.shards.for_key("k-half").engine
    with engine.begin() as conn:
        conn.execute(
            update(idempotency)
            .where(idempotency.c.key == "k-half")
            .values(
                state="in_flight",
                lease_until=clock.now - 1,
                response_status=None,
                response_body=None,
            )
        )
    r = post(api, g, payload)
    assert r.status_code == 201, r.text
    assert r.json() == first.json()
    assert rooms_left(api, hotel_id, type_id) == 4
    assert [x["reservationID"] for x in all_reservations(api)] == ["k-half"]
    with engine.connect() as conn:
        state = conn.execute(
            select(idempotency.c.state).where(idempotency.c.key == "k-half")
        ).scalar_one()
    assert state == "done"
    replay = post(api, g, payload)
    assert replay.headers["idempotent-replayed"] == "true" and replay.content == r.content


def test_replay_still_answers_after_the_check_in_day_has_passed(
    api: HotelApi, clock: VirtualClock
) -> None:
    hotel_id, type_id = setup(api)
    g = api.guest()
    payload = {**body("k-1", hotel_id, type_id), "startDate": TODAY.isoformat()}
    payload["endDate"] = (TODAY + timedelta(days=1)).isoformat()
    first = post(api, g, payload)
    assert first.status_code == 201, first.text
    clock.advance(2 * 24 * 3600)
    replay = post(api, g, payload)
    assert replay.status_code == 201, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
