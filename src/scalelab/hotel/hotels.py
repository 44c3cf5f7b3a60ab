"""The hotel service and hotel management service: hotels, room types, rooms, and the
room_type_inventory rows generated ahead for the booking horizon.

A room type's `totalInventory` is the number of its rooms in service; changing it (or the
hotel's overbooking percent) rewrites every future inventory row, and the database's CHECK
refuses a change that would leave some night with more reservations than it allows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Row, delete, exc, func, insert, select, update

from scalelab.hotel import schema
from scalelab.hotel.cache import InventoryCache
from scalelab.hotel.errors import InUse, InvalidRequest, NotFound
from scalelab.hotel.model import HotelIn, RoomIn, RoomTypeIn, money, to_minor
from scalelab.hotel.pricing import PricingRules
from scalelab.hotel.schema import hotel, reservation, room, room_type, room_type_inventory
from scalelab.hotel.sharding import Shard, Shards
from scalelab.hotel.status import HOLDING

Clock = Callable[[], float]


def today(clock: Clock) -> date:
    """Dates are UTC calendar days (one timezone for every hotel; see docs/hotel.md)."""
    return datetime.fromtimestamp(clock(), UTC).date()


def hotel_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "address": row.address,
        "city": row.city,
        "currency": row.currency,
        "overbookingPercent": row.overbooking_percent,
        "pricing": PricingRules.from_json(row.pricing).public(),
    }


def room_type_json(row: Row[Any], currency: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "hotelID": row.hotel_id,
        "name": row.name,
        "description": row.description,
        "capacity": row.capacity,
        "basePrice": money(row.base_price, currency),
        "totalInventory": row.total_inventory,
    }


def room_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "hotelID": row.hotel_id,
        "roomTypeID": row.room_type_id,
        "number": row.number,
        "floor": row.floor,
        "inService": bool(row.in_service),
    }


class HotelService:
    def __init__(
        self,
        shards: Shards,
        clock: Clock,
        *,
        horizon_days: int,
        default_overbooking: int,
        cache: InventoryCache | None = None,
    ) -> None:
        self.shards = shards
        self.clock = clock
        self.horizon_days = horizon_days
        self.default_overbooking = default_overbooking
        self.cache = cache
        self._next_shard = 0

    def _forget(self, hotel_id: int, room_type_ids: list[int]) -> None:
        """After staff rewrote future inventory: searches must not show the old counts."""
        if self.cache is not None and room_type_ids:
            self.cache.invalidate_from(
                hotel_id, room_type_ids, today(self.clock), self.horizon_end()
            )

    # -- hotels ------------------------------------------------------------------------

    def _hotel_row(self, conn: Connection, hotel_id: int) -> Row[Any]:
        row = conn.execute(select(hotel).where(hotel.c.id == hotel_id)).one_or_none()
        if row is None:
            raise NotFound(f"no hotel with id {hotel_id}", hotelID=hotel_id)
        return row

    def hotel_row(self, hotel_id: int) -> Row[Any]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            return self._hotel_row(conn, hotel_id)

    def get_hotel(self, hotel_id: int) -> dict[str, Any]:
        shard = self.shards.for_hotel(hotel_id)
        with shard.engine.connect() as conn:
            h = self._hotel_row(conn, hotel_id)
            types = conn.execute(
                select(room_type).where(room_type.c.hotel_id == hotel_id).order_by(room_type.c.id)
            ).all()
        return {**hotel_json(h), "roomTypes": [room_type_json(t, h.currency) for t in types]}

    def create_hotel(self, body: HotelIn) -> dict[str, Any]:
        # Round-robin over shards; the id then routes every later request.
        shard = self.shards.shards[self._next_shard % len(self.shards)]
        self._next_shard += 1
        now = self.clock()
        with shard.write() as conn:
            hotel_id = schema.allocate_id(conn, "hotel", len(self.shards))
            conn.execute(
                insert(hotel).values(
                    id=hotel_id,
                    name=body.name,
                    address=body.address,
                    city=body.city,
                    currency=body.currency,
                    overbooking_percent=body.overbooking_percent or self.default_overbooking,
                    pricing=PricingRules.from_model(body.pricing).to_json(),
                    created_at=now,
                    updated_at=now,
                )
            )
            row = self._hotel_row(conn, hotel_id)
        return {**hotel_json(row), "roomTypes": []}

    def replace_hotel(self, hotel_id: int, body: HotelIn) -> dict[str, Any]:
        shard = self.shards.for_hotel(hotel_id)
        with shard.write() as conn:
            old = self._hotel_row(conn, hotel_id)
            pct = body.overbooking_percent or old.overbooking_percent
            conn.execute(
                update(hotel)
                .where(hotel.c.id == hotel_id)
                .values(
                    name=body.name,
                    address=body.address,
                    city=body.city,
                    currency=body.currency,
                    overbooking_percent=pct,
                    pricing=PricingRules.from_model(body.pricing).to_json(),
                    updated_at=self.clock(),
                )
            )
            if pct != old.overbooking_percent:
                self._rewrite_inventory(
                    conn,
                    room_type_inventory.c.hotel_id == hotel_id,
                    {"overbook_pct": pct},
                    "lowering overbooking",
                )
        result = self.get_hotel(hotel_id)
        if pct != old.overbooking_percent:
            self._forget(hotel_id, [t["id"] for t in result["roomTypes"]])
        return result

    def delete_hotel(self, hotel_id: int) -> None:
        shard = self.shards.for_hotel(hotel_id)
        with shard.write() as conn:
            self._hotel_row(conn, hotel_id)
            self._refuse_if_booked(conn, reservation.c.hotel_id == hotel_id, "hotel")
            conn.execute(
                delete(room_type_inventory).where(room_type_inventory.c.hotel_id == hotel_id)
            )
            conn.execute(
                delete(schema.room_type_rate).where(schema.room_type_rate.c.hotel_id == hotel_id)
            )
            conn.execute(delete(room).where(room.c.hotel_id == hotel_id))
            conn.execute(delete(room_type).where(room_type.c.hotel_id == hotel_id))
            conn.execute(delete(hotel).where(hotel.c.id == hotel_id))

    def _refuse_if_booked(self, conn: Connection, where: Any, what: str) -> None:
        count = conn.execute(
            select(func.count())
            .select_from(reservation)
            .where(
                where,
                reservation.c.status.in_([s.value for s in HOLDING]),
                reservation.c.end_date > today(self.clock),
            )
        ).scalar_one()
        if count:
            raise InUse(
                f"the {what} has {count} current or future reservations", reservations=count
            )

    def _rewrite_inventory(
        self, conn: Connection, where: Any, values: dict[str, Any], action: str
    ) -> None:
        try:
            with conn.begin_nested():
                conn.execute(
                    update(room_type_inventory)
                    .where(where, room_type_inventory.c.date >= today(self.clock))
                    .values(**values, version=room_type_inventory.c.version + 1)
                )
        except exc.IntegrityError as e:
            if schema.OVERSOLD_CHECK not in str(e.orig):
                raise
            raise InUse(
                f"{action} would leave some nights with more reservations than rooms"
            ) from None

    # -- room types --------------------------------------------------------------------

    def _room_type_row(self, conn: Connection, hotel_id: int, room_type_id: int) -> Row[Any]:
        row = conn.execute(
            select(room_type).where(
                room_type.c.id == room_type_id, room_type.c.hotel_id == hotel_id
            )
        ).one_or_none()
        if row is None:
            raise NotFound(
                f"hotel {hotel_id} has no room type {room_type_id}",
                hotelID=hotel_id,
                roomTypeID=room_type_id,
            )
        return row

    def hotel_and_room_type(self, hotel_id: int, room_type_id: int) -> tuple[Row[Any], Row[Any]]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            return (
                self._hotel_row(conn, hotel_id),
                self._room_type_row(conn, hotel_id, room_type_id),
            )

    def room_type_row(self, hotel_id: int, room_type_id: int) -> Row[Any]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            return self._room_type_row(conn, hotel_id, room_type_id)

    def list_room_types(self, hotel_id: int) -> list[dict[str, Any]]:
        return list(self.get_hotel(hotel_id)["roomTypes"])

    def get_room_type(self, hotel_id: int, room_type_id: int) -> dict[str, Any]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            h = self._hotel_row(conn, hotel_id)
            return room_type_json(self._room_type_row(conn, hotel_id, room_type_id), h.currency)

    def create_room_type(self, hotel_id: int, body: RoomTypeIn) -> dict[str, Any]:
        shard = self.shards.for_hotel(hotel_id)
        with shard.write() as conn:
            h = self._hotel_row(conn, hotel_id)
            room_type_id = conn.execute(
                insert(room_type)
                .values(
                    hotel_id=hotel_id,
                    name=body.name,
                    description=body.description,
                    capacity=body.capacity,
                    base_price=to_minor(body.base_price, h.currency),
                    total_inventory=body.total_inventory,
                )
                .returning(room_type.c.id)
            ).scalar_one()
            self._fill_inventory(
                conn, hotel_id, room_type_id, body.total_inventory, h.overbooking_percent, None
            )
            row = self._room_type_row(conn, hotel_id, room_type_id)
        return room_type_json(row, h.currency)

    def replace_room_type(
        self, hotel_id: int, room_type_id: int, body: RoomTypeIn
    ) -> dict[str, Any]:
        shard = self.shards.for_hotel(hotel_id)
        with shard.write() as conn:
            h = self._hotel_row(conn, hotel_id)
            old = self._room_type_row(conn, hotel_id, room_type_id)
            conn.execute(
                update(room_type)
                .where(room_type.c.id == room_type_id)
                .values(
                    name=body.name,
                    description=body.description,
                    capacity=body.capacity,
                    base_price=to_minor(body.base_price, h.currency),
                    total_inventory=body.total_inventory,
                )
            )
            if body.total_inventory != old.total_inventory:
                self._rewrite_inventory(
                    conn,
                    (room_type_inventory.c.hotel_id == hotel_id)
                    & (room_type_inventory.c.room_type_id == room_type_id),
                    {"total_inventory": body.total_inventory},
                    "shrinking the inventory",
                )
            row = self._room_type_row(conn, hotel_id, room_type_id)
        if body.total_inventory != old.total_inventory:
            self._forget(hotel_id, [room_type_id])
        return room_type_json(row, h.currency)

    def delete_room_type(self, hotel_id: int, room_type_id: int) -> None:
        shard = self.shards.for_hotel(hotel_id)
        with shard.write() as conn:
            self._room_type_row(conn, hotel_id, room_type_id)
            self._refuse_if_booked(
                conn,
                (reservation.c.hotel_id == hotel_id) & (reservation.c.room_type_id == room_type_id),
                "room type",
            )
            for table in (room_type_inventory, schema.room_type_rate):
                conn.execute(
                    delete(table).where(
                        table.c.hotel_id == hotel_id, table.c.room_type_id == room_type_id
                    )
                )
            conn.execute(delete(room).where(room.c.room_type_id == room_type_id))
            conn.execute(delete(room_type).where(room_type.c.id == room_type_id))

    # -- inventory horizon -------------------------------------------------------------

    def _fill_inventory(
        self,
        conn: Connection,
        hotel_id: int,
        room_type_id: int,
        total: int,
        pct: int,
        after: date | None,
    ) -> int:
        """Insert inventory rows from max(today, after + 1) up to the horizon."""
        first = today(self.clock)
        if after is not None and after >= first:
            first = after + timedelta(days=1)
        last = today(self.clock) + timedelta(days=self.horizon_days - 1)
        days = (last - first).days + 1
        if days <= 0:
            return 0
        rows = [
            {
                "hotel_id": hotel_id,
                "room_type_id": room_type_id,
                "date": first + timedelta(days=i),
                "total_inventory": total,
                "total_reserved": 0,
                "overbook_pct": pct,
                "version": 0,
            }
            for i in range(days)
        ]
        conn.execute(insert(room_type_inventory), rows)
        return days

    def extend_horizon(self) -> int:
        """Roll the horizon forward (run daily): rows for the days that came into range."""
        added = 0
        for shard in self.shards:
            with shard.engine.connect() as conn:
                types = conn.execute(
                    select(
                        room_type.c.id,
                        room_type.c.hotel_id,
                        room_type.c.total_inventory,
                        hotel.c.overbooking_percent,
                    ).join(hotel, hotel.c.id == room_type.c.hotel_id)
                ).all()
                last = dict(
                    conn.execute(
                        select(
                            room_type_inventory.c.room_type_id, func.max(room_type_inventory.c.date)
                        ).group_by(room_type_inventory.c.room_type_id)
                    ).all()
                )
            for t in types:
                with shard.write() as conn:
                    added += self._fill_inventory(
                        conn,
                        t.hotel_id,
                        t.id,
                        t.total_inventory,
                        t.overbooking_percent,
                        last.get(t.id),
                    )
        return added

    def horizon_end(self) -> date:
        """The last day a stay may end on (the check-out day needs no inventory row)."""
        return today(self.clock) + timedelta(days=self.horizon_days)

    # -- rooms -------------------------------------------------------------------------

    def _room_row(self, conn: Connection, hotel_id: int, room_id: int) -> Row[Any]:
        row = conn.execute(
            select(room).where(room.c.id == room_id, room.c.hotel_id == hotel_id)
        ).one_or_none()
        if row is None:
            raise NotFound(
                f"hotel {hotel_id} has no room {room_id}", hotelID=hotel_id, roomID=room_id
            )
        return row

    def list_rooms(self, hotel_id: int) -> list[dict[str, Any]]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            self._hotel_row(conn, hotel_id)
            rows = conn.execute(
                select(room).where(room.c.hotel_id == hotel_id).order_by(room.c.id)
            ).all()
        return [room_json(r) for r in rows]

    def get_room(self, hotel_id: int, room_id: int) -> dict[str, Any]:
        with self.shards.for_hotel(hotel_id).engine.connect() as conn:
            return room_json(self._room_row(conn, hotel_id, room_id))

    def _write_room(self, hotel_id: int, room_id: int | None, body: RoomIn) -> dict[str, Any]:
        shard: Shard = self.shards.for_hotel(hotel_id)
        values = {
            "room_type_id": body.room_type_id,
            "number": body.number,
            "floor": body.floor,
            "in_service": body.in_service,
        }
        try:
            with shard.write() as conn:
                self._room_type_row(conn, hotel_id, body.room_type_id)
                if room_id is None:
                    room_id = conn.execute(
                        insert(room).values(hotel_id=hotel_id, **values).returning(room.c.id)
                    ).scalar_one()
                else:
                    self._room_row(conn, hotel_id, room_id)
                    conn.execute(update(room).where(room.c.id == room_id).values(**values))
                return room_json(self._room_row(conn, hotel_id, room_id))
        except exc.IntegrityError as e:
            if "room_number_unique" in str(e.orig) or "UNIQUE" in str(e.orig):
                raise InUse(
                    f"hotel {hotel_id} already has a room numbered {body.number!r}"
                ) from None
            raise

    def create_room(self, hotel_id: int, body: RoomIn) -> dict[str, Any]:
        return self._write_room(hotel_id, None, body)

    def replace_room(self, hotel_id: int, room_id: int, body: RoomIn) -> dict[str, Any]:
        return self._write_room(hotel_id, room_id, body)

    def delete_room(self, hotel_id: int, room_id: int) -> None:
        with self.shards.for_hotel(hotel_id).write() as conn:
            self._room_row(conn, hotel_id, room_id)
            busy = conn.execute(
                select(func.count())
                .select_from(schema.room_assignment)
                .where(
                    schema.room_assignment.c.room_id == room_id,
                    schema.room_assignment.c.end_date > today(self.clock),
                )
            ).scalar_one()
            if busy:
                raise InUse(f"room {room_id} is assigned to {busy} current or future stays")
            conn.execute(delete(room).where(room.c.id == room_id))


def pricing_of(row: Row[Any]) -> PricingRules:
    return PricingRules.from_json(row.pricing)


def dumps(data: Any) -> str:
    return orjson.dumps(data).decode()


def check_stay(start: date, end: date, *, first: date, last_end: date, max_nights: int) -> None:
    """The dates a stay may have: not in the past, not too long, inside the horizon."""
    if end <= start:
        raise InvalidRequest("check-out must be after check-in", startDate=str(start))
    if start < first:
        raise InvalidRequest(f"check-in {start} is in the past (today is {first})")
    if (end - start).days > max_nights:
        raise InvalidRequest(f"a stay may cover at most {max_nights} nights")
    if end > last_end:
        raise InvalidRequest(f"bookings open up to check-out on {last_end}")
