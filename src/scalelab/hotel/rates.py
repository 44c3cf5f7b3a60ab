"""The rate service: a room type's price per date. A date without its own rate costs the room
type's base price; pricing.py's rules (weekend, occupancy surge) apply on top at quote time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from scalelab.hotel.model import RatesIn, money, nights, to_minor
from scalelab.hotel.schema import room_type_rate
from scalelab.hotel.sharding import Shards


def base_prices(
    conn: Connection, hotel_id: int, room_type_id: int, days: Sequence[date], default: int
) -> list[int]:
    """The price before rules for every day, in order."""
    if not days:
        return []
    rows = conn.execute(
        select(room_type_rate.c.date, room_type_rate.c.price).where(
            room_type_rate.c.hotel_id == hotel_id,
            room_type_rate.c.room_type_id == room_type_id,
            room_type_rate.c.date >= days[0],
            room_type_rate.c.date <= days[-1],
        )
    ).all()
    special = {r.date: int(r.price) for r in rows}
    return [special.get(d, default) for d in days]


def set_rates(
    shards: Shards, hotel_id: int, room_type_id: int, currency: str, body: RatesIn
) -> int:
    """Upsert (delete then insert, in one transaction) the given dates' rates."""
    values = {r.date: to_minor(r.price, currency) for r in body.rates}
    with shards.for_hotel(hotel_id).write() as conn:
        conn.execute(
            delete(room_type_rate).where(
                room_type_rate.c.hotel_id == hotel_id,
                room_type_rate.c.room_type_id == room_type_id,
                room_type_rate.c.date.in_(list(values)),
            )
        )
        conn.execute(
            insert(room_type_rate),
            [
                {"hotel_id": hotel_id, "room_type_id": room_type_id, "date": d, "price": p}
                for d, p in sorted(values.items())
            ],
        )
    return len(values)


def list_rates(
    shards: Shards,
    hotel_id: int,
    room_type_id: int,
    currency: str,
    default: int,
    start: date,
    end: date,
) -> list[dict[str, Any]]:
    days = nights(start, end)
    with shards.for_hotel(hotel_id).engine.connect() as conn:
        prices = base_prices(conn, hotel_id, room_type_id, days, default)
    return [
        {"date": d.isoformat(), "price": money(p, currency)}
        for d, p in zip(days, prices, strict=True)
    ]
