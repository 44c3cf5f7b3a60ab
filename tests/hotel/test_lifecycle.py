"""The reservation status state machine: the table itself, and every path through the API.

    pending --payment_succeeded--> paid --refund--> refunded
    pending --payment_failed-----> rejected
    pending --cancel / expire----> cancelled

Payments go to a `SimulatedProvider` whose sleep is recorded, not waited, so a provider
timeout costs no time; servers run on a `VirtualClock` so expiry and check-in days are exact.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.hotel.errors import InvalidTransition
from scalelab.hotel.payment import SimulatedProvider
from scalelab.hotel.status import (
    FINAL,
    HOLDING,
    TRANSITIONS,
    Event,
    Status,
    next_status,
    releases_rooms,
)
from tests.hotel.conftest import HotelApi, StartHotel, VirtualClock

TODAY = date(2030, 1, 1)
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC).timestamp()
D = TODAY + timedelta(days=10)


class FakeSleep:
    """Records the durations asked for instead of waiting them."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Env:
    def __init__(
        self, api: HotelApi, provider: SimulatedProvider, sleep: FakeSleep, clock: VirtualClock
    ) -> None:
        self.api = api
        self.provider = provider
        self.sleep = sleep
        self.clock = clock
        self.hotel_id = api.hotel()["id"]
        self.type_id = api.room_type(self.hotel_id, 2, basePrice="100.00")["id"]  # 2 reservable
        self.guest = api.guest()

    def book(self, rid: str, start: date = D, **extra: Any) -> httpx.Response:
        return self.api.book(self.guest, rid, self.hotel_id, self.type_id, start, **extra)

    def get(self, rid: str) -> dict[str, Any]:
        return dict(self.api.ok(self.api.http.get(f"/v1/reservations/{rid}", headers=self.guest)))

    def pay(self, rid: str, method: str = "pm_card_ok") -> httpx.Response:
        return self.api.http.post(
            f"/v1/reservations/{rid}/payment", json={"method": method}, headers=self.guest
        )

    def cancel(self, rid: str) -> httpx.Response:
        return self.api.http.delete(f"/v1/reservations/{rid}", headers=self.guest)

    def left(self, start: date = D) -> int:
        r = self.api.http.get(
            f"/v1/hotels/{self.hotel_id}/availability",
            params={"check_in": start.isoformat(), "check_out": (start + timedelta(1)).isoformat()},
        )
        return int(self.api.ok(r)["roomTypes"][0]["roomsLeft"])


def start_env(start_hotel: StartHotel, **settings: Any) -> Env:
    sleep = FakeSleep()
    provider = SimulatedProvider(sleep=sleep, rng=random.Random(7))
    clock = VirtualClock(T0)
    api = start_hotel(clock=clock, provider=provider, **settings)
    return Env(api, provider, sleep, clock)


@pytest.fixture
def env(start_hotel: StartHotel) -> Env:
    return start_env(start_hotel)


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    return dict(err)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the table ---------------------------------------------------------------------------


@given(st.sampled_from(Status), st.sampled_from(Event))
def test_next_status_follows_the_table(status: Status, event: Event) -> None:
    if (status, event) in TRANSITIONS:
        assert next_status(status, event) is TRANSITIONS[(status, event)]
        assert next_status(status.value, event) is TRANSITIONS[(status, event)]
        assert status not in FINAL
    else:
        with pytest.raises(InvalidTransition) as info:
            next_status(status, event)
        assert info.value.details == {"status": status.value, "event": event.value}
        assert info.value.status == 409


@given(st.sampled_from(sorted(FINAL)), st.sampled_from(Event))
def test_no_transition_leaves_a_final_status(status: Status, event: Event) -> None:
    with pytest.raises(InvalidTransition):
        next_status(status, event)


@given(st.lists(st.sampled_from(Event), max_size=8))
def test_any_event_sequence_walks_the_table(events: list[Event]) -> None:
    """Applying events, skipping refused ones, only ever visits what the table allows."""
    status = Status.PENDING
    for event in events:
        try:
            after = next_status(status, event)
        except InvalidTransition:
            continue
        assert TRANSITIONS[(status, event)] is after
        # Rooms are released exactly when leaving the holding statuses.
        assert releases_rooms(status, after) == (status in HOLDING and after not in HOLDING)
        status = after
    assert status in set(Status)


def test_the_table_is_the_books() -> None:
    assert TRANSITIONS == {
        (Status.PENDING, Event.PAYMENT_SUCCEEDED): Status.PAID,
        (Status.PENDING, Event.PAYMENT_FAILED): Status.REJECTED,
        (Status.PENDING, Event.CANCEL): Status.CANCELLED,
        (Status.PENDING, Event.EXPIRE): Status.CANCELLED,
        (Status.PAID, Event.REFUND): Status.REFUNDED,
    }
    assert FINAL == {Status.REFUNDED, Status.CANCELLED, Status.REJECTED}
    assert HOLDING == {Status.PENDING, Status.PAID}
    assert not releases_rooms(Status.PENDING, Status.PAID)
    assert releases_rooms(Status.PAID, Status.REFUNDED)
    assert releases_rooms(Status.PENDING, Status.CANCELLED)
    assert releases_rooms(Status.PENDING, Status.REJECTED)
    with pytest.raises(ValueError):
        next_status("checked_in", Event.CANCEL)


# -- payment -------------------------------------------------------------------------------


def test_pay_then_refund(env: Env) -> None:
    booked = env.api.ok(env.book("r1", nights=2), 201)
    assert booked["status"] == "pending"
    assert booked["totalPrice"] == {"amount": "200.00", "currency": "USD"}
    assert booked["expiresAt"] == iso(T0 + 900)
    assert env.left() == 1

    paid = env.api.ok(env.pay("r1"))
    assert paid["status"] == "paid"
    assert paid["expiresAt"] is None
    [(ref, charge)] = env.provider.charges().items()
    assert charge == ("r1", 20000, "USD")
    assert paid["paymentRef"] == ref
    assert env.get("r1")["status"] == "paid"
    assert env.left() == 1  # paid still holds the room

    # Paying twice is harmless: same answer, nothing charged again, whatever the method.
    assert env.api.ok(env.pay("r1")) == paid
    assert env.api.ok(env.pay("r1", "pm_card_declined")) == paid
    assert list(env.provider.charges()) == [ref]

    refunded = env.api.ok(env.cancel("r1"))
    assert refunded["status"] == "refunded"
    assert refunded["cancelReason"] == "guest"
    assert refunded["paymentRef"] == ref
    assert env.provider.refunded() == {ref}
    assert env.left() == 2
    assert env.left(D + timedelta(1)) == 2
    # Cancelling again changes nothing; paying a refunded reservation is refused.
    assert env.api.ok(env.cancel("r1"))["status"] == "refunded"
    assert env.provider.refunded() == {ref}
    assert env.left() == 2


def test_declined_payment_rejects_and_releases(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    assert env.left() == 1
    err = error(env.pay("r1", "pm_card_declined"), 402, "payment_declined")
    assert err["message"] == "card declined"
    assert err["reservationID"] == "r1"
    got = env.get("r1")
    assert (got["status"], got["cancelReason"], got["paymentRef"]) == ("rejected", "declined", None)
    assert env.left() == 2
    assert env.provider.charges() == {}


def test_unknown_payment_method_declines(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    err = error(env.pay("r1", "pm_card_amex_typo"), 402, "payment_declined")
    assert "pm_card_amex_typo" in err["message"]
    assert env.get("r1")["status"] == "rejected"


def test_payment_timeout_keeps_the_reservation_pending(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    err = error(env.pay("r1", "pm_card_timeout"), 504, "payment_timeout")
    assert err["reservationID"] == "r1"
    assert env.sleep.calls == [5.0]  # payment_timeout_seconds, waited on virtual time
    got = env.get("r1")
    assert got["status"] == "pending" and got["paymentRef"] is None
    assert env.left() == 1  # still holding its room
    assert env.provider.charges() == {}
    # The payment may be retried.
    assert env.api.ok(env.pay("r1"))["status"] == "paid"
    assert env.left() == 1


def test_booking_with_payment_in_the_body(env: Env) -> None:
    r = env.book("r1", payment={"method": "pm_card_ok"})
    paid = env.api.ok(r, 201)
    assert paid["status"] == "paid"
    [ref] = env.provider.charges()
    assert paid["paymentRef"] == ref
    assert r.headers["location"] == "/v1/reservations/r1"
    assert env.get("r1")["status"] == "paid"
    replay = env.book("r1", payment={"method": "pm_card_ok"})
    assert replay.status_code == 201 and replay.content == r.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert list(env.provider.charges()) == [ref]
    assert env.left() == 1


def test_booking_with_a_declined_payment_is_402_and_replays(env: Env) -> None:
    r = env.book("r1", payment={"method": "pm_card_declined"})
    err = error(r, 402, "payment_declined")
    assert err["reservationID"] == "r1"
    reservation = r.json()["reservation"]
    assert reservation["reservationID"] == "r1"
    assert reservation["status"] == "rejected"
    assert reservation["cancelReason"] == "declined"
    assert "location" not in r.headers
    assert env.left() == 2
    replay = env.book("r1", payment={"method": "pm_card_declined"})
    assert replay.status_code == 402
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == r.content
    assert env.left() == 2
    assert env.get("r1")["status"] == "rejected"


def test_booking_with_a_payment_timeout_is_504_and_stays_pending(env: Env) -> None:
    r = env.book("r1", payment={"method": "pm_card_timeout"})
    error(r, 504, "payment_timeout")
    assert r.json()["reservation"]["status"] == "pending"
    assert env.get("r1")["status"] == "pending"
    assert env.left() == 1
    # The booking is not repeated; the guest pays the pending reservation instead.
    replay = env.book("r1", payment={"method": "pm_card_timeout"})
    assert replay.status_code == 504 and replay.content == r.content
    assert env.left() == 1
    assert env.api.ok(env.pay("r1"))["status"] == "paid"


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_pending(env: Env) -> None:
    env.api.ok(env.book("r1", nights=3), 201)
    assert env.left() == 1
    cancelled = env.api.ok(env.cancel("r1"))
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelReason"] == "guest"
    assert cancelled["expiresAt"] is None
    for n in range(3):
        assert env.left(D + timedelta(n)) == 2
    again = env.cancel("r1")
    assert again.status_code == 200
    assert again.json()["status"] == "cancelled"
    assert again.json() == env.api.ok(env.cancel("r1"))
    assert env.left() == 2
    # The freed rooms book again.
    env.api.ok(env.book("r2"), 201)
    env.api.ok(env.book("r3"), 201)
    error(env.book("r4"), 409, "sold_out")


def test_unknown_reservation(env: Env) -> None:
    error(env.cancel("nope"), 404, "not_found")
    error(env.pay("nope"), 404, "not_found")
    error(env.api.http.post("/v1/reservations/nope/check-in", headers=env.guest), 404, "not_found")


# -- expiry ----------------------------------------------------------------------------------


def poll(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.02)


def test_unpaid_reservations_expire(start_hotel: StartHotel) -> None:
    env = start_env(start_hotel, pending_timeout_seconds=60, expiry_interval_seconds=0.05)
    later = D + timedelta(days=5)
    early = env.api.ok(env.book("early", start=later), 201)
    assert early["expiresAt"] == iso(T0 + 60)
    env.clock.advance(30)
    booked = env.api.ok(env.book("unpaid"), 201)
    assert booked["expiresAt"] == iso(T0 + 90)
    env.api.ok(env.book("paid"), 201)
    env.api.ok(env.pay("paid"))
    assert env.left() == 0

    env.clock.advance(31)  # T0 + 61: "early" is due, "unpaid" is not
    poll(lambda: env.get("early")["status"] == "cancelled")
    # The sweep that expired "early" saw the clock at T0 + 61: "unpaid" had 29 s left.
    assert env.get("unpaid")["status"] == "pending"
    assert env.left(later) == 2
    assert env.left() == 0

    env.clock.advance(30)  # T0 + 91
    poll(lambda: env.get("unpaid")["status"] == "cancelled")
    got = env.get("unpaid")
    assert got["cancelReason"] == "expired"
    assert got["expiresAt"] is None
    assert got["updatedAt"] == iso(T0 + 91)
    assert env.left() == 1
    paid = env.get("paid")
    assert (paid["status"], paid["expiresAt"]) == ("paid", None)  # paid ones never expire
    # The released room books again.
    env.api.ok(env.book("next"), 201)
    assert env.left() == 0


# -- check-in ---------------------------------------------------------------------------------


def test_check_in_assigns_concrete_rooms(start_hotel: StartHotel) -> None:
    sleep = FakeSleep()
    provider = SimulatedProvider(sleep=sleep, rng=random.Random(7))
    clock = VirtualClock(T0)
    api = start_hotel(clock=clock, provider=provider)
    hotel_id = api.hotel(overbookingPercent=200)["id"]
    type_id = api.room_type(hotel_id, 2)["id"]  # 2 * 200 // 100 = 4 reservable, 2 real rooms
    room_ids = [
        api.ok(
            api.http.post(
                f"/v1/hotels/{hotel_id}/rooms",
                json={"roomTypeID": type_id, "number": str(101 + i)},
                headers=api.staff,
            ),
            201,
        )["id"]
        for i in range(2)
    ]
    g = api.guest()

    def check_in(rid: str) -> httpx.Response:
        return api.http.post(f"/v1/reservations/{rid}/check-in", headers=g)

    for rid, nights in (("a", 2), ("b", 1), ("c", 3)):
        api.ok(api.book(g, rid, hotel_id, type_id, TODAY, nights=nights), 201)
        api.ok(
            api.http.post(
                f"/v1/reservations/{rid}/payment", json={"method": "pm_card_ok"}, headers=g
            )
        )
    api.ok(api.book(g, "p", hotel_id, type_id, TODAY), 201)  # pending
    api.ok(api.book(g, "later", hotel_id, type_id, TODAY + timedelta(days=3)), 201)
    api.ok(
        api.http.post("/v1/reservations/later/payment", json={"method": "pm_card_ok"}, headers=g)
    )

    a = api.ok(check_in("a"))
    assert a["roomIDs"] == [room_ids[0]]
    assert a["status"] == "paid"
    assert api.ok(api.http.get("/v1/reservations/a", headers=g))["roomIDs"] == [room_ids[0]]
    assert api.ok(check_in("a"))["roomIDs"] == [room_ids[0]]  # again: the same room
    b = api.ok(check_in("b"))
    assert b["roomIDs"] == [room_ids[1]]
    err = error(check_in("c"), 409, "no_room_free")
    assert err["needed"] == 1 and err["found"] == 0
    assert api.ok(api.http.get("/v1/reservations/c", headers=g))["roomIDs"] == []
    # Not yet its first night.
    error(check_in("later"), 422, "invalid_request")

    # Refunding a checked-in stay frees its room for the next guest.
    assert api.ok(api.http.delete("/v1/reservations/a", headers=g))["status"] == "refunded"
    assert api.ok(check_in("c"))["roomIDs"] == [room_ids[0]]
    # Tomorrow "b" has checked out: its room is free for a stay starting then.
    clock.advance(24 * 3600)
    tomorrow = TODAY + timedelta(days=1)
    api.ok(api.book(g, "d", hotel_id, type_id, tomorrow), 201)
    api.ok(api.http.post("/v1/reservations/d/payment", json={"method": "pm_card_ok"}, headers=g))
    assert api.ok(check_in("d"))["roomIDs"] == [room_ids[1]]


# -- refused transitions -------------------------------------------------------------------


def refused(r: httpx.Response, current: str) -> None:
    err = error(r, 409, "invalid_transition")
    assert current in err["message"]


def test_paying_a_refunded_reservation_is_409(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    env.api.ok(env.pay("r1"))
    env.api.ok(env.cancel("r1"))
    refused(env.pay("r1"), "refunded")
    assert env.get("r1")["status"] == "refunded"
    assert len(env.provider.charges()) == 1
    assert env.left() == 2


def test_a_rejected_reservation_can_be_neither_paid_nor_cancelled(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    error(env.pay("r1", "pm_card_declined"), 402, "payment_declined")
    refused(env.cancel("r1"), "rejected")
    refused(env.pay("r1"), "rejected")
    assert env.get("r1")["status"] == "rejected"
    assert env.provider.charges() == {}
    assert env.left() == 2


def test_paying_a_cancelled_reservation_is_409(env: Env) -> None:
    env.api.ok(env.book("r1"), 201)
    env.api.ok(env.cancel("r1"))
    refused(env.pay("r1"), "cancelled")
    assert env.get("r1")["status"] == "cancelled"
    assert env.provider.charges() == {}
    assert env.left() == 2


def test_paying_after_expiry_is_409(start_hotel: StartHotel) -> None:
    env = start_env(start_hotel, pending_timeout_seconds=60, expiry_interval_seconds=0.05)
    env.api.ok(env.book("r1"), 201)
    env.clock.advance(61)
    poll(lambda: env.get("r1")["status"] == "cancelled")
    refused(env.pay("r1"), "cancelled")
    assert env.provider.charges() == {}
    assert env.get("r1")["cancelReason"] == "expired"
    assert env.left() == 2


def test_checking_in_a_pending_reservation_is_409(env: Env) -> None:
    env.api.ok(
        env.api.http.post(
            f"/v1/hotels/{env.hotel_id}/rooms",
            json={"roomTypeID": env.type_id, "number": "1"},
            headers=env.api.staff,
        ),
        201,
    )
    env.api.ok(env.book("r1", start=TODAY), 201)
    r = env.api.http.post("/v1/reservations/r1/check-in", headers=env.guest)
    refused(r, "pending")
    assert env.get("r1")["roomIDs"] == []
