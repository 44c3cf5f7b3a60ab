"""The hotel REST API end to end, through a real server and httpx.

Every server runs on a `VirtualClock` fixed at TODAY noon UTC, so dates, weekdays and the
inventory horizon (60 days, the fixture's default) are the same on every run.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from scalelab.hotel.schema import room_type_inventory
from tests.hotel.conftest import STAFF, HotelApi, StartHotel, VirtualClock

TODAY = date(2030, 1, 1)  # a Tuesday
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC).timestamp()
D = TODAY + timedelta(days=7)
# A Friday at least a week ahead: the default weekend nights are Friday and Saturday.
FRIDAY = TODAY + timedelta(days=7 + (4 - TODAY.weekday()) % 7)


def day(n: int) -> date:
    return D + timedelta(days=n)


@pytest.fixture
def api(start_hotel: StartHotel) -> HotelApi:
    return start_hotel(clock=VirtualClock(T0))


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the JSON error shape {"error": {"code", "message", ...}}; return the inner dict."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def rooms_left(api: HotelApi, hotel_id: int, start: date, end: date, guests: int = 1) -> dict:
    """{roomTypeID: roomsLeft} of an availability search."""
    r = api.http.get(
        f"/v1/hotels/{hotel_id}/availability",
        params={"check_in": start.isoformat(), "check_out": end.isoformat(), "guests": guests},
    )
    return {t["roomTypeID"]: t["roomsLeft"] for t in api.ok(r)["roomTypes"]}


def search(api: HotelApi, hotel_id: int, start: date, end: date, guests: int = 1) -> dict:
    r = api.http.get(
        f"/v1/hotels/{hotel_id}/availability",
        params={"check_in": start.isoformat(), "check_out": end.isoformat(), "guests": guests},
    )
    return dict(api.ok(r))


def usd(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "USD"}


# -- hotels, room types, rooms, rates --------------------------------------------------


def test_hotel_crud(api: HotelApi) -> None:
    body = {"name": "Grand", "address": "1 Main St", "city": "Seoul", "currency": "EUR"}
    r = api.http.post("/v1/hotels", json=body, headers=api.staff)
    created = api.ok(r, 201)
    hotel_id = created["id"]
    assert r.headers["location"] == f"/v1/hotels/{hotel_id}"
    assert created == {
        "id": hotel_id,
        "name": "Grand",
        "address": "1 Main St",
        "city": "Seoul",
        "currency": "EUR",
        "overbookingPercent": 110,
        "pricing": {"weekendMultiplier": 1.0, "weekendNights": [4, 5], "surge": []},
        "roomTypes": [],
    }
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}")) == created

    new = {"name": "Grand Palace", "city": "Busan", "currency": "EUR", "overbookingPercent": 120}
    replaced = api.ok(api.http.put(f"/v1/hotels/{hotel_id}", json=new, headers=api.staff))
    assert replaced == {
        **created,
        "name": "Grand Palace",
        "address": "",
        "city": "Busan",
        "overbookingPercent": 120,
    }
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}")) == replaced

    r = api.http.delete(f"/v1/hotels/{hotel_id}", headers=api.staff)
    assert r.status_code == 204 and r.content == b""
    err = error(api.http.get(f"/v1/hotels/{hotel_id}"), 404, "not_found")
    assert err["hotelID"] == hotel_id
    error(api.http.delete(f"/v1/hotels/{hotel_id}", headers=api.staff), 404, "not_found")
    error(api.http.put(f"/v1/hotels/{hotel_id}", json=new, headers=api.staff), 404, "not_found")


def test_room_type_crud(api: HotelApi) -> None:
    hotel_id = api.hotel(currency="EUR")["id"]
    body = {"name": "Double", "description": "two beds", "capacity": 2, "basePrice": "120.50"}
    r = api.http.post(
        f"/v1/hotels/{hotel_id}/room-types",
        json={**body, "totalInventory": 5},
        headers=api.staff,
    )
    created = api.ok(r, 201)
    type_id = created["id"]
    assert r.headers["location"] == f"/v1/hotels/{hotel_id}/room-types/{type_id}"
    assert created == {
        "id": type_id,
        "hotelID": hotel_id,
        "name": "Double",
        "description": "two beds",
        "capacity": 2,
        "basePrice": {"amount": "120.50", "currency": "EUR"},
        "totalInventory": 5,
    }
    path = f"/v1/hotels/{hotel_id}/room-types/{type_id}"
    assert api.ok(api.http.get(path)) == created
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}/room-types")) == {"roomTypes": [created]}
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}"))["roomTypes"] == [created]

    new = {"name": "Suite", "capacity": 4, "basePrice": "300", "totalInventory": 7}
    replaced = api.ok(api.http.put(path, json=new, headers=api.staff))
    assert replaced == {
        **created,
        "name": "Suite",
        "description": "",
        "capacity": 4,
        "basePrice": {"amount": "300.00", "currency": "EUR"},
        "totalInventory": 7,
    }
    assert api.ok(api.http.get(path)) == replaced
    # The new inventory is what availability counts from: 7 * 110 // 100 = 7.
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 7}

    r = api.http.delete(path, headers=api.staff)
    assert r.status_code == 204 and r.content == b""
    err = error(api.http.get(path), 404, "not_found")
    assert err["roomTypeID"] == type_id
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}/room-types")) == {"roomTypes": []}
    error(api.http.delete(path, headers=api.staff), 404, "not_found")


def test_room_crud_and_duplicate_number(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 2)["id"]
    rooms = f"/v1/hotels/{hotel_id}/rooms"
    r = api.http.post(
        rooms, json={"roomTypeID": type_id, "number": "101", "floor": 1}, headers=api.staff
    )
    created = api.ok(r, 201)
    room_id = created["id"]
    assert r.headers["location"] == f"{rooms}/{room_id}"
    assert created == {
        "id": room_id,
        "hotelID": hotel_id,
        "roomTypeID": type_id,
        "number": "101",
        "floor": 1,
        "inService": True,
    }
    dup = api.http.post(rooms, json={"roomTypeID": type_id, "number": "101"}, headers=api.staff)
    error(dup, 409, "in_use")
    other = api.ok(
        api.http.post(rooms, json={"roomTypeID": type_id, "number": "102"}, headers=api.staff),
        201,
    )
    assert api.ok(api.http.get(rooms, headers=api.staff)) == {"rooms": [created, other]}
    # Renumbering a room onto another's number is the same conflict.
    renumber = {"roomTypeID": type_id, "number": "101"}
    error(api.http.put(f"{rooms}/{other['id']}", json=renumber, headers=api.staff), 409, "in_use")

    new = {"roomTypeID": type_id, "number": "101A", "floor": 2, "inService": False}
    replaced = api.ok(api.http.put(f"{rooms}/{room_id}", json=new, headers=api.staff))
    assert replaced == {**created, "number": "101A", "floor": 2, "inService": False}
    assert api.ok(api.http.get(f"{rooms}/{room_id}", headers=api.staff)) == replaced

    r = api.http.delete(f"{rooms}/{room_id}", headers=api.staff)
    assert r.status_code == 204
    err = error(api.http.get(f"{rooms}/{room_id}", headers=api.staff), 404, "not_found")
    assert err["roomID"] == room_id
    assert api.ok(api.http.get(rooms, headers=api.staff)) == {"rooms": [other]}
    # A room of a room type the hotel does not have.
    bad = api.http.post(rooms, json={"roomTypeID": 9999, "number": "9"}, headers=api.staff)
    error(bad, 404, "not_found")


def test_rates_put_and_get(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 3, basePrice="100.00")["id"]
    path = f"/v1/hotels/{hotel_id}/room-types/{type_id}/rates"
    body = {
        "rates": [
            {"date": day(1).isoformat(), "price": "150"},
            {"date": day(2).isoformat(), "price": "80.25"},
        ]
    }
    assert api.ok(api.http.put(path, json=body, headers=api.staff)) == {"updated": 2}
    got = api.ok(api.http.get(path, params={"from": day(0).isoformat(), "to": day(3).isoformat()}))
    assert got == {
        "rates": [
            {"date": day(0).isoformat(), "price": usd("100.00")},
            {"date": day(1).isoformat(), "price": usd("150.00")},
            {"date": day(2).isoformat(), "price": usd("80.25")},
        ]
    }
    # Overwriting one date keeps the other.
    again = {"rates": [{"date": day(1).isoformat(), "price": "99.99"}]}
    assert api.ok(api.http.put(path, json=again, headers=api.staff)) == {"updated": 1}
    got = api.ok(api.http.get(path, params={"from": day(1).isoformat(), "to": day(3).isoformat()}))
    assert [r["price"]["amount"] for r in got["rates"]] == ["99.99", "80.25"]
    bad = api.http.get(path, params={"from": day(3).isoformat(), "to": day(1).isoformat()})
    error(bad, 422, "invalid_request")


def test_unknown_hotel_and_room_type_are_404_json(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 1)["id"]
    guest = api.guest()
    stay = {"check_in": day(0).isoformat(), "check_out": day(1).isoformat()}
    rates = {"from": day(0).isoformat(), "to": day(1).isoformat()}
    missing = 999_999
    responses = {
        "get hotel": api.http.get(f"/v1/hotels/{missing}"),
        "list room types": api.http.get(f"/v1/hotels/{missing}/room-types"),
        "list rooms": api.http.get(f"/v1/hotels/{missing}/rooms", headers=api.staff),
        "availability": api.http.get(f"/v1/hotels/{missing}/availability", params=stay),
        "get room type": api.http.get(f"/v1/hotels/{hotel_id}/room-types/{missing}"),
        "room type of another hotel": api.http.get(f"/v1/hotels/{missing}/room-types/{type_id}"),
        "rates": api.http.get(f"/v1/hotels/{hotel_id}/room-types/{missing}/rates", params=rates),
        "new room type": api.http.post(
            f"/v1/hotels/{missing}/room-types",
            json={"name": "X", "basePrice": "1", "totalInventory": 1},
            headers=api.staff,
        ),
        "book unknown hotel": api.book(guest, "nf-1", missing, type_id, day(0)),
        "book unknown room type": api.book(guest, "nf-2", hotel_id, missing, day(0)),
        "get reservation": api.http.get("/v1/reservations/nope", headers=guest),
    }
    for name, r in responses.items():
        assert r.status_code == 404, (name, r.text)
        error(r, 404, "not_found")
    assert (
        error(responses["get hotel"], 404, "not_found")["message"] == f"no hotel with id {missing}"
    )


# -- auth -------------------------------------------------------------------------------


def test_no_or_bad_token_is_401(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 1)["id"]
    body = {
        "reservationID": "a-1",
        "hotelID": hotel_id,
        "roomTypeID": type_id,
        "startDate": day(0).isoformat(),
        "endDate": day(1).isoformat(),
    }
    bad = {"Authorization": "Bearer not-a-token"}
    basic = {"Authorization": "Basic " + STAFF}
    for headers in ({}, bad, basic):
        error(api.http.post("/v1/hotels", json={"name": "X"}, headers=headers), 401, "unauthorized")
        error(api.http.post("/v1/reservations", json=body, headers=headers), 401, "unauthorized")
        error(api.http.get("/v1/reservations", headers=headers), 401, "unauthorized")
        error(api.http.get("/v1/reservations/a-1", headers=headers), 401, "unauthorized")
        error(api.http.delete(f"/v1/hotels/{hotel_id}", headers=headers), 401, "unauthorized")
    # Nothing above changed anything.
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}"))["name"] == "Hotel"
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 1}


def test_guest_token_on_every_staff_endpoint_is_403(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 2)["id"]
    room = api.ok(
        api.http.post(
            f"/v1/hotels/{hotel_id}/rooms",
            json={"roomTypeID": type_id, "number": "1"},
            headers=api.staff,
        ),
        201,
    )
    guest = api.guest()
    rt = {"name": "X", "basePrice": "1", "totalInventory": 1}
    rm = {"roomTypeID": type_id, "number": "2"}
    rates = {"rates": [{"date": day(0).isoformat(), "price": "1"}]}
    h = f"/v1/hotels/{hotel_id}"
    calls = [
        ("POST", "/v1/hotels", {"name": "X"}),
        ("PUT", h, {"name": "X"}),
        ("DELETE", h, None),
        ("POST", f"{h}/room-types", rt),
        ("PUT", f"{h}/room-types/{type_id}", rt),
        ("DELETE", f"{h}/room-types/{type_id}", None),
        ("POST", f"{h}/rooms", rm),
        ("PUT", f"{h}/rooms/{room['id']}", rm),
        ("DELETE", f"{h}/rooms/{room['id']}", None),
        ("PUT", f"{h}/room-types/{type_id}/rates", rates),
        ("GET", f"{h}/rooms", None),
        ("GET", f"{h}/rooms/{room['id']}", None),
    ]
    got = {
        (method, path): api.http.request(method, path, json=body, headers=guest)
        for method, path, body in calls
    }
    assert {k: r.status_code for k, r in got.items()} == {k: 403 for k in got}
    for r in got.values():
        error(r, 403, "forbidden")
    # None of them had an effect.
    hotel = api.ok(api.http.get(h))
    assert hotel["name"] == "Hotel" and [t["name"] for t in hotel["roomTypes"]] == ["Double"]
    assert api.ok(api.http.get(f"{h}/rooms", headers=api.staff)) == {"rooms": [room]}
    got_rates = api.ok(
        api.http.get(
            f"{h}/room-types/{type_id}/rates",
            params={"from": day(0).isoformat(), "to": day(1).isoformat()},
        )
    )
    assert got_rates["rates"][0]["price"] == usd("100.00")
    # And staff cannot book: reservations are made with a guest's token.
    r = api.book(api.staff, "staff-1", hotel_id, type_id, day(0))
    error(r, 403, "forbidden")


def test_guests_see_only_their_own_reservations(start_hotel: StartHotel) -> None:
    clock = VirtualClock(T0)
    api = start_hotel(clock=clock)
    h1 = api.hotel(name="One")["id"]
    t1 = api.room_type(h1, 5)["id"]
    h2 = api.hotel(name="Two")["id"]
    t2 = api.room_type(h2, 5)["id"]
    alice, bob = api.guest("Alice"), api.guest("Bob")
    api.ok(api.book(alice, "alice-1", h1, t1, day(0)), 201)
    clock.advance(1)
    api.ok(api.book(alice, "alice-2", h2, t2, day(1)), 201)
    clock.advance(1)
    api.ok(api.book(bob, "bob-1", h1, t1, day(2)), 201)

    def ids(headers: dict[str, str], **params: Any) -> set[str]:
        r = api.http.get("/v1/reservations", headers=headers, params=params)
        return {x["reservationID"] for x in api.ok(r)["reservations"]}

    assert ids(alice) == {"alice-1", "alice-2"}
    assert ids(bob) == {"bob-1"}
    # A guest's hotel filter only narrows their own history.
    assert ids(bob, hotelID=h2) == set()
    assert ids(alice, hotelID=h1) == {"alice-1"}

    # Another guest's reservation does not exist for them, by GET or DELETE.
    error(api.http.get("/v1/reservations/bob-1", headers=alice), 404, "not_found")
    error(api.http.delete("/v1/reservations/bob-1", headers=alice), 404, "not_found")
    error(
        api.http.post("/v1/reservations/bob-1/payment", json={"method": "x"}, headers=alice),
        404,
        "not_found",
    )
    assert api.ok(api.http.get("/v1/reservations/bob-1", headers=bob))["status"] == "pending"
    assert (
        api.ok(api.http.get("/v1/reservations/alice-1", headers=alice))["guestID"]
        != (api.ok(api.http.get("/v1/reservations/bob-1", headers=bob))["guestID"])
    )

    # Staff sees everything and filters by hotel and status.
    assert ids(api.staff) == {"alice-1", "alice-2", "bob-1"}
    assert ids(api.staff, hotelID=h1) == {"alice-1", "bob-1"}
    assert ids(api.staff, hotelID=h2) == {"alice-2"}
    assert api.ok(api.http.delete("/v1/reservations/bob-1", headers=api.staff))["status"] == (
        "cancelled"
    )
    assert ids(api.staff, status="cancelled") == {"bob-1"}
    assert ids(api.staff, status="pending") == {"alice-1", "alice-2"}
    assert ids(api.staff, status="pending", hotelID=h1) == {"alice-1"}
    assert ids(api.staff, status="paid") == set()
    listed = api.ok(api.http.get("/v1/reservations", headers=api.staff))["reservations"]
    assert [x["reservationID"] for x in listed] == ["bob-1", "alice-2", "alice-1"]  # newest first
    assert ids(api.staff, limit=1) == {"bob-1"}
    assert ids(alice, limit=1) == {"alice-2"}
    error(
        api.http.get("/v1/reservations", params={"status": "bogus"}, headers=api.staff),
        422,
        "validation_error",
    )


# -- validation -------------------------------------------------------------------------


def test_invalid_reservations_are_422_naming_the_problem(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 3, capacity=2)["id"]
    guest = api.guest()

    def body(start: date, end: date, **extra: Any) -> dict[str, Any]:
        return {
            "reservationID": "v-1",
            "hotelID": hotel_id,
            "roomTypeID": type_id,
            "startDate": start.isoformat(),
            "endDate": end.isoformat(),
            **extra,
        }

    horizon_end = TODAY + timedelta(days=60)
    cases: list[tuple[str, Any, str, str]] = [
        ("end == start", body(day(1), day(1)), "validation_error", "endDate must be after"),
        ("end < start", body(day(2), day(1)), "validation_error", "endDate must be after"),
        ("past start", body(TODAY - timedelta(days=1), day(0)), "invalid_request", "in the past"),
        ("31 nights", body(day(0), day(31)), "invalid_request", "at most 30 nights"),
        (
            "beyond horizon",
            body(horizon_end - timedelta(days=5), horizon_end + timedelta(days=1)),
            "invalid_request",
            f"up to check-out on {horizon_end.isoformat()}",
        ),
        ("too many guests", body(day(0), day(1), guests=3), "invalid_request", "at most 2"),
        (
            "too many guests, 2 rooms",
            body(day(0), day(1), guests=5, rooms=2),
            "invalid_request",
            "at most 4",
        ),
        ("unknown field", body(day(0), day(1), color="red"), "validation_error", "color"),
        (
            "bad date",
            {**body(day(0), day(1)), "startDate": "2030-02-30"},
            "validation_error",
            "startDate",
        ),
        (
            "missing hotel",
            {k: v for k, v in body(day(0), day(1)).items() if k != "hotelID"},
            "validation_error",
            "hotelID",
        ),
        (
            "bad key",
            {**body(day(0), day(1)), "reservationID": "a b"},
            "validation_error",
            "reservationID",
        ),
    ]
    for name, payload, code, needle in cases:
        r = api.http.post("/v1/reservations", json=payload, headers=guest)
        err = error(r, 422, code)
        assert needle in err["message"], (name, err)
    r = api.http.post(
        "/v1/reservations",
        content=b'{"reservationID": "v-1", ',
        headers={**guest, "content-type": "application/json"},
    )
    assert "JSON" in error(r, 422, "validation_error")["message"]
    r = api.http.post("/v1/reservations", json=[1, 2], headers=guest)
    error(r, 422, "validation_error")
    # The unknown field names itself in the details too.
    r = api.http.post("/v1/reservations", json=body(day(0), day(1), color="red"), headers=guest)
    assert error(r, 422, "validation_error")["fields"] == [
        {"field": "color", "message": "Extra inputs are not permitted"}
    ]

    # Availability refuses the same dates.
    for start, end in [(day(1), day(1)), (TODAY - timedelta(days=1), day(0)), (day(0), day(31))]:
        r = api.http.get(
            f"/v1/hotels/{hotel_id}/availability",
            params={"check_in": start.isoformat(), "check_out": end.isoformat()},
        )
        error(r, 422, "invalid_request")
    r = api.http.get(f"/v1/hotels/{hotel_id}/availability", params={"check_in": "soon"})
    error(r, 422, "validation_error")

    # The server still serves, nothing was booked, and the refused key is still free.
    assert api.http.get("/healthz").status_code == 200
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 3}
    assert api.ok(api.http.get("/v1/reservations", headers=guest)) == {"reservations": []}
    booked = api.ok(
        api.http.post("/v1/reservations", json=body(day(0), day(1)), headers=guest), 201
    )
    assert booked["reservationID"] == "v-1" and booked["status"] == "pending"
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 2}


def test_invalid_management_bodies_are_422(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    cases = [
        ("/v1/hotels", {"name": ""}, "name"),
        ("/v1/hotels", {"name": "X", "currency": "euro"}, "currency"),
        ("/v1/hotels", {"name": "X", "overbookingPercent": 90}, "overbookingPercent"),
        ("/v1/hotels", {"name": "X", "stars": 5}, "stars"),
        (
            f"/v1/hotels/{hotel_id}/room-types",
            {"name": "X", "basePrice": "-1", "totalInventory": 1},
            "basePrice",
        ),
        (f"/v1/hotels/{hotel_id}/room-types", {"name": "X", "basePrice": "1"}, "totalInventory"),
    ]
    for path, payload, needle in cases:
        err = error(api.http.post(path, json=payload, headers=api.staff), 422, "validation_error")
        assert needle in err["message"], (payload, err)
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}"))["roomTypes"] == []


# -- availability and price ---------------------------------------------------------------


def test_rooms_left_is_the_minimum_over_the_nights(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    busy = api.room_type(hotel_id, 10, name="Busy")["id"]
    quiet = api.room_type(hotel_id, 4, name="Quiet")["id"]
    g = api.guest()
    # cap = floor(10 * 110 / 100) = 11 per night
    api.ok(api.book(g, "r1", hotel_id, busy, day(0), nights=1, rooms=3), 201)
    api.ok(api.book(g, "r2", hotel_id, busy, day(1), nights=1, rooms=5), 201)
    api.ok(api.book(g, "r3", hotel_id, busy, day(2), nights=1, rooms=1), 201)
    api.ok(api.book(g, "r4", hotel_id, busy, day(0), nights=3, rooms=1), 201)
    # reserved per night: day0 4, day1 6, day2 2, day3 0
    assert rooms_left(api, hotel_id, day(0), day(1)) == {busy: 7, quiet: 4}
    assert rooms_left(api, hotel_id, day(1), day(2)) == {busy: 5, quiet: 4}
    assert rooms_left(api, hotel_id, day(2), day(3)) == {busy: 9, quiet: 4}
    assert rooms_left(api, hotel_id, day(3), day(4)) == {busy: 11, quiet: 4}
    assert rooms_left(api, hotel_id, day(0), day(4)) == {busy: 5, quiet: 4}
    assert rooms_left(api, hotel_id, day(2), day(4)) == {busy: 9, quiet: 4}
    # Fill day 3; any stay covering it is then unavailable.
    api.ok(api.book(g, "r5", hotel_id, busy, day(3), nights=1, rooms=9), 201)
    api.ok(api.book(g, "r6", hotel_id, busy, day(3), nights=1, rooms=2), 201)
    found = search(api, hotel_id, day(0), day(4))
    assert found["nights"] == 4
    assert [(t["roomTypeID"], t["roomsLeft"], t["available"]) for t in found["roomTypes"]] == [
        (busy, 0, False),
        (quiet, 4, True),
    ]
    # A multi-night booking over the full night fails as a whole: no night is claimed.
    error(api.book(g, "r7", hotel_id, busy, day(1), nights=3), 409, "sold_out")
    assert rooms_left(api, hotel_id, day(0), day(3)) == {busy: 5, quiet: 4}


def test_guests_filter_drops_smaller_room_types(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    single = api.room_type(hotel_id, 2, name="Single", capacity=1)["id"]
    double = api.room_type(hotel_id, 2, name="Double", capacity=2)["id"]
    family = api.room_type(hotel_id, 2, name="Family", capacity=4)["id"]
    assert set(rooms_left(api, hotel_id, day(0), day(1))) == {single, double, family}
    assert set(rooms_left(api, hotel_id, day(0), day(1), guests=2)) == {double, family}
    assert set(rooms_left(api, hotel_id, day(0), day(1), guests=3)) == {family}
    assert set(rooms_left(api, hotel_id, day(0), day(1), guests=4)) == {family}
    assert rooms_left(api, hotel_id, day(0), day(1), guests=5) == {}
    found = search(api, hotel_id, day(0), day(1), guests=3)
    assert found["guests"] == 3
    assert [(t["name"], t["capacity"]) for t in found["roomTypes"]] == [("Family", 4)]


def test_price_combines_rate_override_weekend_and_surge_and_is_fixed_at_booking(
    api: HotelApi,
) -> None:
    assert FRIDAY.weekday() == 4
    wed, thu, fri = FRIDAY - timedelta(days=2), FRIDAY - timedelta(days=1), FRIDAY
    pricing = {"weekendMultiplier": 1.5, "surge": [{"occupancy": 0.5, "multiplier": 1.25}]}
    hotel_id = api.hotel(pricing=pricing)["id"]
    type_id = api.room_type(hotel_id, 4, basePrice="100.00")["id"]
    rates_path = f"/v1/hotels/{hotel_id}/room-types/{type_id}/rates"
    override = {"rates": [{"date": wed.isoformat(), "price": "80.00"}]}
    api.ok(api.http.put(rates_path, json=override, headers=api.staff))
    g = api.guest()
    # Two of four rooms on Thursday: occupancy 0.5 reaches the surge tier.
    api.ok(api.book(g, "thu-2", hotel_id, type_id, thu, nights=1, rooms=2), 201)

    found = search(api, hotel_id, wed, fri + timedelta(days=1))
    [quote] = found["roomTypes"]
    expected_nights = [
        {"date": wed.isoformat(), **usd("80.00")},  # the date's own rate
        {"date": thu.isoformat(), **usd("125.00")},  # 100 * 1.25 surge
        {"date": fri.isoformat(), **usd("150.00")},  # 100 * 1.5 weekend
    ]
    assert quote["nightlyPrices"] == expected_nights
    assert quote["totalPrice"] == usd("355.00")

    booked = api.ok(api.book(g, "stay", hotel_id, type_id, wed, nights=3), 201)
    assert booked["totalPrice"] == usd("355.00")
    assert booked["nightlyPrices"] == expected_nights

    # Two rooms cost twice each night.
    sat = fri + timedelta(days=1)
    two = api.ok(api.book(g, "stay-2", hotel_id, type_id, sat, nights=1, rooms=2), 201)
    assert two["totalPrice"] == usd("300.00")

    # The rate changes afterwards: new quotes change, the reservation's price does not.
    later = {"rates": [{"date": wed.isoformat(), "price": "500.00"}]}
    api.ok(api.http.put(rates_path, json=later, headers=api.staff))
    [requote] = search(api, hotel_id, wed, fri + timedelta(days=1))["roomTypes"]
    assert requote["totalPrice"] == usd("775.00")
    again = api.ok(api.http.get("/v1/reservations/stay", headers=g))
    assert again["totalPrice"] == usd("355.00")
    assert again["nightlyPrices"] == expected_nights
    # Same for the hotel's rules.
    api.ok(api.http.put(f"/v1/hotels/{hotel_id}", json={"name": "Hotel"}, headers=api.staff))
    assert api.ok(api.http.get("/v1/reservations/stay", headers=g))["totalPrice"] == usd("355.00")


# -- overbooking --------------------------------------------------------------------------


def test_default_overbooking_is_110_percent(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 10)["id"]
    g = api.guest()
    assert rooms_left(api, hotel_id, day(0), day(2)) == {type_id: 11}
    for i in range(11):
        api.ok(api.book(g, f"ob-{i}", hotel_id, type_id, day(0), nights=2), 201)
    err = error(api.book(g, "ob-11", hotel_id, type_id, day(0), nights=2), 409, "sold_out")
    assert err["night"] == day(0).isoformat()
    assert rooms_left(api, hotel_id, day(0), day(2)) == {type_id: 0}
    # The next night is untouched.
    assert rooms_left(api, hotel_id, day(2), day(3)) == {type_id: 11}
    listed = api.ok(api.http.get("/v1/reservations", headers=g))["reservations"]
    assert len(listed) == 11


def test_overbooking_100_percent_is_exactly_the_inventory(api: HotelApi) -> None:
    hotel_id = api.hotel(overbookingPercent=100)["id"]
    type_id = api.room_type(hotel_id, 3)["id"]
    g = api.guest()
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 3}
    api.ok(api.book(g, "a", hotel_id, type_id, day(0), rooms=2), 201)
    error(api.book(g, "b", hotel_id, type_id, day(0), rooms=2), 409, "sold_out")
    api.ok(api.book(g, "c", hotel_id, type_id, day(0)), 201)
    error(api.book(g, "d", hotel_id, type_id, day(0)), 409, "sold_out")
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 0}


def test_shrinking_inventory_below_reservations_is_409_in_use(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 3)["id"]  # 3 * 110 // 100 = 3 reservable
    g = api.guest()
    for i in range(3):
        api.ok(api.book(g, f"s-{i}", hotel_id, type_id, day(5)), 201)
    path = f"/v1/hotels/{hotel_id}/room-types/{type_id}"
    body = {"name": "Double", "basePrice": "100.00"}
    error(api.http.put(path, json={**body, "totalInventory": 2}, headers=api.staff), 409, "in_use")
    # Nothing changed: neither the room type nor its inventory.
    assert api.ok(api.http.get(path))["totalInventory"] == 3
    assert rooms_left(api, hotel_id, day(4), day(5)) == {type_id: 3}
    assert rooms_left(api, hotel_id, day(5), day(6)) == {type_id: 0}
    # Lowering the hotel's overbooking below the bookings is refused the same way...
    api.ok(api.http.put(path, json={**body, "totalInventory": 10}, headers=api.staff))
    api.ok(api.book(g, "s-3", hotel_id, type_id, day(5), rooms=8), 201)  # 11 of 11
    r = api.http.put(
        f"/v1/hotels/{hotel_id}",
        json={"name": "Hotel", "overbookingPercent": 100},
        headers=api.staff,
    )
    error(r, 409, "in_use")
    assert api.ok(api.http.get(f"/v1/hotels/{hotel_id}"))["overbookingPercent"] == 110
    # ...and deleting what has current reservations too.
    error(api.http.delete(path, headers=api.staff), 409, "in_use")
    error(api.http.delete(f"/v1/hotels/{hotel_id}", headers=api.staff), 409, "in_use")
    # Growing it is fine and makes room at once.
    api.ok(api.http.put(path, json={**body, "totalInventory": 20}, headers=api.staff))
    assert rooms_left(api, hotel_id, day(5), day(6)) == {type_id: 22 - 11}


# -- the inventory cache ------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_cache_never_causes_an_oversell(start_hotel: StartHotel, cache: bool) -> None:
    api = start_hotel(clock=VirtualClock(T0), cache_enabled=cache)
    hotel_id = api.hotel(overbookingPercent=100)["id"]
    type_id = api.room_type(hotel_id, 2)["id"]
    alice, bob = api.guest(), api.guest()
    assert rooms_left(api, hotel_id, day(0), day(2)) == {type_id: 2}  # fills the cache
    api.ok(api.book(alice, "c-1", hotel_id, type_id, day(0), nights=2), 201)
    assert rooms_left(api, hotel_id, day(0), day(2)) == {type_id: 1}
    api.ok(api.book(bob, "c-2", hotel_id, type_id, day(1), nights=1), 201)  # the last room
    assert rooms_left(api, hotel_id, day(0), day(2)) == {type_id: 0}
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 1}
    error(api.book(bob, "c-3", hotel_id, type_id, day(1)), 409, "sold_out")
    # Cancelling gives it back, in the search too.
    api.ok(api.http.delete("/v1/reservations/c-2", headers=bob))
    assert rooms_left(api, hotel_id, day(1), day(2)) == {type_id: 1}

    # Someone else (another process, say) takes the last room behind the cache's back:
    # the search may show it as free, the booking still says sold out.
    engine = api.app.state.shards.for_hotel(hotel_id).engine
    with engine.begin() as conn:
        conn.execute(
            update(room_type_inventory)
            .where(
                room_type_inventory.c.hotel_id == hotel_id,
                room_type_inventory.c.room_type_id == type_id,
                room_type_inventory.c.date == day(1),
            )
            .values(total_reserved=2)
        )
    shown = rooms_left(api, hotel_id, day(1), day(2))[type_id]
    assert shown == (1 if cache else 0)  # stale only when a cache answers
    error(api.book(bob, "c-4", hotel_id, type_id, day(1)), 409, "sold_out")
    with engine.connect() as conn:
        reserved = conn.execute(
            room_type_inventory.select().where(
                room_type_inventory.c.hotel_id == hotel_id,
                room_type_inventory.c.date == day(1),
            )
        ).one()
    assert reserved.total_reserved == 2


def test_history_limit_agrees_with_the_full_order_on_equal_timestamps(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 5)["id"]
    g = api.guest()
    for rid in ("c", "b", "a"):  # the clock stands still: one created_at for all three
        api.ok(api.book(g, rid, hotel_id, type_id, day(0)), 201)
    full = api.ok(api.http.get("/v1/reservations", headers=g))["reservations"]
    assert [x["reservationID"] for x in full] == ["c", "b", "a"]
    first = api.ok(api.http.get("/v1/reservations", headers=g, params={"limit": 1}))
    assert [x["reservationID"] for x in first["reservations"]] == ["c"]


def test_booking_up_to_the_horizon_edge(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 1)["id"]
    g = api.guest()
    last_end = TODAY + timedelta(days=60)  # the fixture's 60-day horizon
    assert rooms_left(api, hotel_id, last_end - timedelta(days=3), last_end) == {type_id: 1}
    booked = api.book(g, "edge", hotel_id, type_id, last_end - timedelta(days=3), nights=3)
    assert api.ok(booked, 201)["endDate"] == last_end.isoformat()
    assert rooms_left(api, hotel_id, last_end - timedelta(days=1), last_end) == {type_id: 0}
    late = api.book(g, "late", hotel_id, type_id, last_end - timedelta(days=3), nights=4)
    error(late, 422, "invalid_request")


def test_search_sees_an_inventory_change_at_once(api: HotelApi) -> None:
    hotel_id = api.hotel()["id"]
    type_id = api.room_type(hotel_id, 0)["id"]
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 0}  # cached
    path = f"/v1/hotels/{hotel_id}/room-types/{type_id}"
    body = {"name": "Double", "basePrice": "100.00", "totalInventory": 5}
    api.ok(api.http.put(path, json=body, headers=api.staff))
    # The booking itself reads the database and succeeds...
    api.ok(api.book(api.guest(), "x", hotel_id, type_id, day(1)), 201)
    # ...but the search for a night the booking did not touch still says "sold out".
    assert rooms_left(api, hotel_id, day(0), day(1)) == {type_id: 5}
