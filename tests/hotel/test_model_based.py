"""The reservation service against a plain-Python model of rooms and statuses (CONVENTIONS 8).

Random bookings (multi-night, several rooms), payments that succeed, fail or time out,
cancellations, and the clock moving past the pending timeout, on a real SQLite database: after
every step each reservation's status matches the model, bookings succeed exactly when the
model has room on every night, and the audit (inventory == reservations holding it) holds.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from scalelab.hotel.audit import audit
from scalelab.hotel.concurrency import make_strategy
from scalelab.hotel.errors import InvalidTransition, PaymentDeclined, PaymentTimeout
from scalelab.hotel.hotels import HotelService
from scalelab.hotel.idempotency import IdempotencyStore
from scalelab.hotel.model import HotelIn, ReservationIn, RoomTypeIn, nights
from scalelab.hotel.payment import SimulatedProvider
from scalelab.hotel.reservations import ReservationService
from scalelab.hotel.sharding import Shards
from scalelab.storage import sql
from tests.hotel.conftest import VirtualClock

DAY0 = date(2027, 5, 3)
PENDING_TIMEOUT = 600.0
INVENTORY = 3  # at 100%: cap 3 a night
METHODS = ["pm_card_ok", "pm_card_declined", "pm_card_timeout"]


@dataclass
class Booked:
    start: date
    end: date
    rooms: int
    status: str
    expires_at: float


class ReservationMachine(RuleBasedStateMachine):
    reservations = Bundle("reservations")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = VirtualClock(datetime(2027, 5, 3, 8, tzinfo=UTC).timestamp())
        self.engine = sql.create_engine(sql.sqlite_url(Path(self.tmp.name) / "h.db"))
        shards = Shards([self.engine])
        shards.create_schema()
        self.hotels = HotelService(shards, self.clock, horizon_days=20, default_overbooking=100)
        self.service = ReservationService(
            shards,
            self.hotels,
            IdempotencyStore(shards, self.clock, 30.0),
            make_strategy("guarded"),
            SimulatedProvider(sleep=lambda _: None),
            None,
            self.clock,
            pending_timeout=PENDING_TIMEOUT,
            payment_timeout=1.0,
            max_nights=7,
        )
        self.model: dict[str, Booked] = {}
        self.counter = 0

    @initialize()
    def hotel(self) -> None:
        h = self.hotels.create_hotel(HotelIn(name="H", overbooking_percent=100))
        self.hotel_id = h["id"]
        self.type_id = self.hotels.create_room_type(
            self.hotel_id,
            RoomTypeIn(name="Double", base_price=Decimal(90), total_inventory=INVENTORY),
        )["id"]

    def _held(self, night: date) -> int:
        return sum(
            b.rooms
            for b in self.model.values()
            if b.status in ("pending", "paid") and b.start <= night < b.end
        )

    @rule(
        target=reservations,
        offset=st.integers(0, 5),
        length=st.integers(1, 4),
        rooms=st.integers(1, 2),
    )
    def book(self, offset: int, length: int, rooms: int) -> str:
        self.counter += 1
        rid = f"r{self.counter}"
        start = DAY0 + timedelta(days=offset)
        end = start + timedelta(days=length)
        fits = all(self._held(n) + rooms <= INVENTORY for n in nights(start, end))
        body = ReservationIn(
            reservationID=rid,
            hotelID=self.hotel_id,
            roomTypeID=self.type_id,
            startDate=start,
            endDate=end,
            rooms=rooms,
            guests=1,
        )
        status, payload, replayed = self.service.create(7, body)
        assert not replayed
        assert status == (201 if fits else 409), (status, payload)
        if fits:
            got = orjson.loads(payload)
            assert got["status"] == "pending"
            self.model[rid] = Booked(start, end, rooms, "pending", self.clock() + PENDING_TIMEOUT)
        else:
            assert orjson.loads(payload)["error"]["code"] == "sold_out"
        return rid

    @rule(
        rid=reservations,
        method=st.sampled_from(["pm_card_ok", "pm_card_declined", "pm_card_timeout"]),
    )
    def pay(self, rid: str, method: str) -> None:
        b = self.model.get(rid)
        try:
            got = self.service.pay(rid, 7, method)
        except InvalidTransition:
            assert b is not None and b.status not in ("pending", "paid")
            return
        except PaymentDeclined:
            assert b is not None and b.status == "pending" and method == "pm_card_declined"
            b.status = "rejected"
            return
        except PaymentTimeout:
            assert b is not None and b.status == "pending" and method == "pm_card_timeout"
            return
        except Exception as exc:  # a sold-out booking has no reservation: NotFound
            assert b is None, exc
            return
        assert b is not None
        if b.status == "pending":
            assert method == "pm_card_ok"
            b.status = "paid"
        assert got["status"] == b.status == "paid"

    @rule(rid=consumes(reservations))
    def cancel(self, rid: str) -> None:
        b = self.model.get(rid)
        try:
            got = self.service.cancel(rid, 7)
        except InvalidTransition:
            assert b is not None and b.status == "rejected"
            return
        except Exception as exc:
            assert b is None, exc
            return
        assert b is not None
        b.status = {"pending": "cancelled", "paid": "refunded"}.get(b.status, b.status)
        assert got["status"] == b.status

    @rule(seconds=st.sampled_from([60.0, PENDING_TIMEOUT + 1]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        expired = self.service.expire_due()
        due = [
            b for b in self.model.values() if b.status == "pending" and b.expires_at <= self.clock()
        ]
        for b in due:
            b.status = "cancelled"
        assert expired == len(due)

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "hotel_id"):
            return
        report = audit(self.engine)
        assert report.ok, [str(m) for m in report.mismatches]
        for rid, b in self.model.items():
            assert self.service.get(rid, 7)["status"] == b.status, rid

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()


ReservationMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReservations = ReservationMachine.TestCase
