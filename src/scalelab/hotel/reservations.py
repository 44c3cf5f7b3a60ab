"""The reservation service: book, read, pay, cancel, expire and check in.

A booking is one database transaction on the hotel's shard: the configured concurrency
strategy claims the rooms of every night (all or none) and, inside the same transaction, the
reservation row is written with its price fixed from the rates and occupancy it saw. The
idempotency record (idempotency.py) is claimed before and completed after, in the same
transaction when the key's home shard is the hotel's.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, exc, select, update

from scalelab.hotel import concurrency, rates, rooms
from scalelab.hotel.cache import InventoryCache
from scalelab.hotel.concurrency import Hold, Night, Strategy
from scalelab.hotel.errors import (
    HotelError,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    PaymentDeclined,
    PaymentTimeout,
    SoldOut,
)
from scalelab.hotel.hotels import HotelService, check_stay, today
from scalelab.hotel.idempotency import Claimed, IdempotencyStore, Replay, fingerprint
from scalelab.hotel.model import ReservationIn, money, nights
from scalelab.hotel.payment import PaymentOutcome, PaymentProvider
from scalelab.hotel.pricing import PricingRules, quote_stay
from scalelab.hotel.schema import reservation
from scalelab.hotel.sharding import Shard, Shards
from scalelab.hotel.status import Event, Status, next_status, releases_rooms

Clock = Callable[[], float]
Response = tuple[int, bytes]


def iso_time(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reservation_json(row: Row[Any], room_ids: list[int] | None = None) -> dict[str, Any]:
    prices = orjson.loads(row.nightly_prices)
    out = {
        "reservationID": row.reservation_id,
        "hotelID": row.hotel_id,
        "roomTypeID": row.room_type_id,
        "startDate": row.start_date.isoformat(),
        "endDate": row.end_date.isoformat(),
        "rooms": row.rooms,
        "guests": row.guests,
        "status": row.status,
        "guestID": row.guest_id,
        "guest": orjson.loads(row.guest_info),
        "totalPrice": money(row.total_price, row.currency),
        "nightlyPrices": [
            {"date": d, **money(p, row.currency)}
            for d, p in zip(
                (n.isoformat() for n in nights(row.start_date, row.end_date)), prices, strict=True
            )
        ],
        "createdAt": iso_time(row.created_at),
        "updatedAt": iso_time(row.updated_at),
        "expiresAt": iso_time(row.expires_at),
        "paymentRef": row.payment_ref,
        "cancelReason": row.cancel_reason,
    }
    if room_ids is not None:
        out["roomIDs"] = room_ids
    return out


def error_body(err: HotelError, **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": err.code, "message": str(err), **err.details}, **extra})


class _KeyTaken(Exception):
    """The one-step path lost its key to a concurrent request with the same reservationID."""


class ReservationService:
    def __init__(
        self,
        shards: Shards,
        hotels: HotelService,
        idempotency: IdempotencyStore,
        strategy: Strategy,
        provider: PaymentProvider,
        cache: InventoryCache | None,
        clock: Clock,
        *,
        pending_timeout: float,
        payment_timeout: float,
        max_nights: int,
    ) -> None:
        self.shards = shards
        self.hotels = hotels
        self.idempotency = idempotency
        self.strategy = strategy
        self.provider = provider
        self.cache = cache
        self.clock = clock
        self.pending_timeout = pending_timeout
        self.payment_timeout = payment_timeout
        self.max_nights = max_nights
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    # -- booking -----------------------------------------------------------------------

    def create(self, guest_id: int, body: ReservationIn) -> tuple[int, bytes, bool]:
        """Book (and pay, when the body carries a payment): (status, JSON body, replayed)."""
        key = body.reservation_id
        fp = fingerprint(guest_id, body.fingerprint_fields())
        one_step = (
            self.shards.for_key(key) is self.shards.for_hotel(body.hotel_id)
            and body.payment is None
        )
        if one_step and not self.idempotency.exists(key):
            # A new key whose whole answer is one transaction on one database: the record is
            # written as done inside the booking (one commit instead of three).
            h, t = self._validate(body)
            try:
                return (*self._book(guest_id, body, h, t, None, fp), False)
            except _KeyTaken:
                pass  # a concurrent request with this key won: answer as it did, below
        # The key first: a repeated request gets its original answer even when the same
        # request would no longer validate (its check-in day passed, the hotel changed).
        claim = self.idempotency.claim(key, guest_id, body.hotel_id, fp)
        if isinstance(claim, Replay):
            self._count("replayed")
            return claim.status, claim.body, True
        try:
            h, t = self._validate(body)
            return (*self._book(guest_id, body, h, t, claim, fp), False)
        except BaseException:
            # Nothing decided (invalid, or failed before booking): release the key so a
            # corrected or retried request runs. A committed booking is found again by
            # _book's IntegrityError path.
            self.idempotency.abandon(key)
            raise

    def _validate(self, body: ReservationIn) -> tuple[Row[Any], Row[Any]]:
        """The hotel and room type rows, once the request is known to make sense."""
        h, t = self.hotels.hotel_and_room_type(body.hotel_id, body.room_type_id)
        check_stay(
            body.start_date,
            body.end_date,
            first=today(self.clock),
            last_end=self.hotels.horizon_end(),
            max_nights=self.max_nights,
        )
        if body.guests > t.capacity * body.rooms:
            raise InvalidRequest(
                f"{body.rooms} room(s) of this type sleep at most {t.capacity * body.rooms}",
                capacity=t.capacity,
            )
        return h, t

    def _book(
        self,
        guest_id: int,
        body: ReservationIn,
        h: Row[Any],
        t: Row[Any],
        claim: Claimed | None,
        fp: str,
    ) -> Response:
        """Claim the rooms and write the reservation. claim None: the one-step path, where
        the idempotency record is inserted as done in the same transaction."""
        key = body.reservation_id
        shard = self.shards.for_hotel(body.hotel_id)
        atomic = self.shards.for_key(key) is shard and body.payment is None
        if claim is not None and claim.taken_over:
            # The request that held this key died; did its booking commit?
            existing = self._row(shard, key)
            if existing is not None:
                result = (201, orjson.dumps(reservation_json(existing)))
                self.idempotency.complete(key, *result)
                return result
        hold = Hold(body.hotel_id, body.room_type_id, body.start_date, body.end_date, body.rooms)
        rules = PricingRules.from_json(h.pricing)
        now = self.clock()

        def finish(conn: Connection, claimed: list[Night]) -> bytes:
            days = [n.date for n in claimed]
            bases = rates.base_prices(conn, body.hotel_id, body.room_type_id, days, t.base_price)
            quote = quote_stay(
                days,
                bases,
                [n.reserved_before for n in claimed],
                [n.total_inventory for n in claimed],
                rules,
                body.rooms,
            )
            conn.execute(
                reservation.insert().values(
                    reservation_id=key,
                    hotel_id=body.hotel_id,
                    room_type_id=body.room_type_id,
                    start_date=body.start_date,
                    end_date=body.end_date,
                    rooms=body.rooms,
                    guests=body.guests,
                    status=Status.PENDING.value,
                    guest_id=guest_id,
                    guest_info=orjson.dumps(body.guest or {}).decode(),
                    total_price=quote.total,
                    currency=h.currency,
                    nightly_prices=orjson.dumps(
                        [n.price * body.rooms for n in quote.nights]
                    ).decode(),
                    created_at=now,
                    updated_at=now,
                    expires_at=now + self.pending_timeout,
                )
            )
            row = conn.execute(select(reservation).where(reservation.c.reservation_id == key)).one()
            payload = orjson.dumps(reservation_json(row))
            if claim is None:
                self.idempotency.insert_done(conn, key, guest_id, body.hotel_id, fp, 201, payload)
            elif atomic:
                self.idempotency.complete_in(conn, key, 201, payload)
            return payload

        try:
            payload = self.strategy.reserve(shard.engine, hold, finish)
        except SoldOut as err:
            self._count("sold_out")
            self._invalidate(hold)  # a search showed rooms that were gone: refresh it
            result = (409, error_body(err))
            if claim is None:
                try:
                    with self.shards.for_key(key).write() as conn:
                        self.idempotency.insert_done(
                            conn, key, guest_id, body.hotel_id, fp, *result
                        )
                except exc.IntegrityError:
                    raise _KeyTaken from None
            else:
                self.idempotency.complete(key, *result)
            return result
        except exc.IntegrityError:
            if claim is None:
                raise _KeyTaken from None
            # The key's earlier request booked, then failed before recording its answer (and
            # its claim was abandoned): the reservation row is the answer.
            existing = self._row(shard, key)
            if existing is None:
                raise
            result = (201, orjson.dumps(reservation_json(existing)))
            self.idempotency.complete(key, *result)
            return result
        self._invalidate(hold)
        self._count("booked")
        if body.payment is None:
            if not atomic:
                self.idempotency.complete(key, 201, payload)
            return 201, payload
        result = self._pay_for_create(shard, key, body.payment.method)
        self.idempotency.complete(key, *result)
        return result

    def _pay_for_create(self, shard: Shard, key: str, method: str) -> Response:
        try:
            return 201, orjson.dumps(self._pay(shard, key, method))
        except (PaymentDeclined, PaymentTimeout) as err:
            row = self._row(shard, key)
            assert row is not None
            return err.status, error_body(err, reservation=reservation_json(row))

    def _invalidate(self, hold: Hold) -> None:
        if self.cache is not None:
            self.cache.invalidate(hold.hotel_id, hold.room_type_id, hold.nights())

    # -- reading -----------------------------------------------------------------------

    def _row(self, shard: Shard, reservation_id: str) -> Row[Any] | None:
        with shard.engine.connect() as conn:
            return conn.execute(
                select(reservation).where(reservation.c.reservation_id == reservation_id)
            ).one_or_none()

    def _locate(self, reservation_id: str, guest_id: int | None) -> tuple[Shard, Row[Any]]:
        """The reservation's shard and row; guests asking for another's get NotFound."""
        owner = self.idempotency.owner(reservation_id)
        row = None
        shard = None
        if owner is not None and (guest_id is None or owner[1] == guest_id):
            shard = self.shards.for_hotel(owner[0])
            row = self._row(shard, reservation_id)
        if row is None or shard is None:
            raise NotFound(f"no reservation {reservation_id!r}", reservationID=reservation_id)
        return shard, row

    def get(self, reservation_id: str, guest_id: int | None) -> dict[str, Any]:
        shard, row = self._locate(reservation_id, guest_id)
        with shard.engine.connect() as conn:
            assigned = rooms.assignments(conn, reservation_id)
        return reservation_json(row, assigned)

    def history(
        self,
        guest_id: int | None,
        *,
        hotel_id: int | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first. Guests are not the shard key, so every shard is asked."""
        conds = []
        if guest_id is not None:
            conds.append(reservation.c.guest_id == guest_id)
        if hotel_id is not None:
            conds.append(reservation.c.hotel_id == hotel_id)
        if status is not None:
            conds.append(reservation.c.status == status)
        shards = [self.shards.for_hotel(hotel_id)] if hotel_id is not None else list(self.shards)
        rows: list[Row[Any]] = []
        for shard in shards:
            with shard.engine.connect() as conn:
                rows.extend(
                    conn.execute(
                        select(reservation)
                        .where(and_(True, *conds))
                        .order_by(
                            reservation.c.created_at.desc(), reservation.c.reservation_id.desc()
                        )
                        .limit(limit)
                    ).all()
                )
        rows.sort(key=lambda r: (r.created_at, r.reservation_id), reverse=True)
        return [reservation_json(r) for r in rows[:limit]]

    # -- status changes ----------------------------------------------------------------

    def _transition(
        self, shard: Shard, reservation_id: str, event: Event, **values: Any
    ) -> Row[Any]:
        """Apply event in one transaction; leaving a holding status releases the rooms."""
        with shard.write() as conn:
            q = select(reservation).where(reservation.c.reservation_id == reservation_id)
            if not shard.is_sqlite:
                q = q.with_for_update()
            row = conn.execute(q).one_or_none()
            if row is None:
                raise NotFound(f"no reservation {reservation_id!r}", reservationID=reservation_id)
            before = Status(row.status)
            after = next_status(before, event)
            conn.execute(
                update(reservation)
                .where(reservation.c.reservation_id == reservation_id)
                .values(
                    status=after.value,
                    updated_at=self.clock(),
                    expires_at=row.expires_at if after is Status.PENDING else None,
                    **values,
                )
            )
            hold = Hold(row.hotel_id, row.room_type_id, row.start_date, row.end_date, row.rooms)
            if releases_rooms(before, after):
                concurrency.release(conn, hold)
                rooms.unassign(conn, reservation_id)
            new = conn.execute(q).one()
        if releases_rooms(before, after):
            self._invalidate(hold)
        self._count(after.value)
        return new

    def cancel(self, reservation_id: str, guest_id: int | None) -> dict[str, Any]:
        """Cancel a pending reservation, or refund a paid one; repeating it is harmless."""
        shard, row = self._locate(reservation_id, guest_id)
        status = Status(row.status)
        if status in (Status.CANCELLED, Status.REFUNDED):
            return reservation_json(row)
        event = Event.REFUND if status is Status.PAID else Event.CANCEL
        try:
            new = self._transition(shard, reservation_id, event, cancel_reason="guest")
        except InvalidTransition:
            # Another cancel (or the expiry sweeper) got there between our read and our
            # transaction: if it ended where we were going, repeating it is harmless.
            _, now = self._locate(reservation_id, guest_id)
            if now.status in (Status.CANCELLED.value, Status.REFUNDED.value):
                return reservation_json(now)
            raise
        if event is Event.REFUND and row.payment_ref:
            self.provider.refund(row.payment_ref)
        return reservation_json(new)

    def pay(self, reservation_id: str, guest_id: int | None, method: str) -> dict[str, Any]:
        shard, row = self._locate(reservation_id, guest_id)
        if row.status == Status.PAID.value:
            return reservation_json(row)  # paid already: a retried payment changes nothing
        return self._pay(shard, reservation_id, method)

    def _pay(self, shard: Shard, reservation_id: str, method: str) -> dict[str, Any]:
        row = self._row(shard, reservation_id)
        if row is None:
            raise NotFound(f"no reservation {reservation_id!r}")
        next_status(row.status, Event.PAYMENT_SUCCEEDED)  # refuse early if not pending
        result = self.provider.charge(
            reservation_id, row.total_price, row.currency, method, self.payment_timeout
        )
        if result.outcome is PaymentOutcome.TIMEOUT:
            self._count("payment_timeout")
            raise PaymentTimeout(
                "the payment provider did not answer in time; the reservation stays pending "
                "and the payment may be retried",
                reservationID=reservation_id,
            )
        if result.outcome is PaymentOutcome.DECLINED:
            self._transition(shard, reservation_id, Event.PAYMENT_FAILED, cancel_reason="declined")
            raise PaymentDeclined(result.message, reservationID=reservation_id)
        try:
            new = self._transition(
                shard, reservation_id, Event.PAYMENT_SUCCEEDED, payment_ref=result.payment_ref
            )
        except InvalidTransition:
            # It expired (or was cancelled) while the provider was charging: give it back.
            assert result.payment_ref is not None
            self.provider.refund(result.payment_ref)
            raise
        return reservation_json(new)

    def expire_due(self, limit: int = 500) -> int:
        """Cancel pending reservations whose hold ran out, releasing their rooms."""
        now = self.clock()
        expired = 0
        for shard in self.shards:
            with shard.engine.connect() as conn:
                due = (
                    conn.execute(
                        select(reservation.c.reservation_id)
                        .where(
                            reservation.c.status == Status.PENDING.value,
                            reservation.c.expires_at <= now,
                        )
                        .limit(limit)
                    )
                    .scalars()
                    .all()
                )
            for reservation_id in due:
                try:
                    self._transition(shard, reservation_id, Event.EXPIRE, cancel_reason="expired")
                    expired += 1
                except InvalidTransition:
                    pass  # paid or cancelled meanwhile
        return expired

    def check_in(self, reservation_id: str, guest_id: int | None) -> dict[str, Any]:
        """Give a paid reservation concrete rooms, from its first night until check-out."""
        shard, row = self._locate(reservation_id, guest_id)
        if row.status != Status.PAID.value:
            raise InvalidTransition(
                f"only a paid reservation can check in (this one is {row.status})",
                status=row.status,
            )
        day: date = today(self.clock)
        if not row.start_date <= day < row.end_date:
            raise InvalidRequest(
                f"check-in is open from {row.start_date} until the last night before {row.end_date}"
            )
        assigned = rooms.assign_rooms(
            shard.engine,
            reservation_id=reservation_id,
            hotel_id=row.hotel_id,
            room_type_id=row.room_type_id,
            start=row.start_date,
            end=row.end_date,
            rooms=row.rooms,
            now=self.clock(),
        )
        return reservation_json(row, assigned)
