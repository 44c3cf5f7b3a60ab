"""Availability and price search: per room type of a hotel, the rooms left for every night of
a stay and the price of the stay, read through the inventory cache."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Connection, select

from scalelab.hotel import rates
from scalelab.hotel.cache import Counts, InventoryCache
from scalelab.hotel.hotels import HotelService, check_stay, today
from scalelab.hotel.model import money, nights
from scalelab.hotel.pricing import PricingRules, quote_stay
from scalelab.hotel.schema import room_type, room_type_inventory


def _read_counts(
    conn: Connection, hotel_id: int, room_type_id: int, days: list[date]
) -> dict[date, Counts]:
    rows = conn.execute(
        select(
            room_type_inventory.c.date,
            room_type_inventory.c.total_inventory,
            room_type_inventory.c.total_reserved,
            room_type_inventory.c.overbook_pct,
        ).where(
            room_type_inventory.c.hotel_id == hotel_id,
            room_type_inventory.c.room_type_id == room_type_id,
            room_type_inventory.c.date >= days[0],
            room_type_inventory.c.date <= days[-1],
        )
    ).all()
    return {r.date: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


class AvailabilityService:
    def __init__(
        self, hotels: HotelService, cache: InventoryCache | None, *, max_nights: int
    ) -> None:
        self.hotels = hotels
        self.cache = cache
        self.max_nights = max_nights

    def counts(
        self, conn: Connection, hotel_id: int, room_type_id: int, days: list[date]
    ) -> list[Counts]:
        cached: list[Counts | None] = (
            self.cache.get(hotel_id, room_type_id, days) if self.cache else [None] * len(days)
        )
        missing = [d for d, c in zip(days, cached, strict=True) if c is None]
        if missing:
            fresh = _read_counts(conn, hotel_id, room_type_id, missing)
            if self.cache is not None:
                self.cache.put(hotel_id, room_type_id, fresh.items())
            cached = [
                c if c is not None else fresh.get(d) for d, c in zip(days, cached, strict=True)
            ]
        return [c if c is not None else (0, 0, 100) for c in cached]

    def search(self, hotel_id: int, check_in: date, check_out: date, guests: int) -> dict[str, Any]:
        clock = self.hotels.clock
        check_stay(
            check_in,
            check_out,
            first=today(clock),
            last_end=self.hotels.horizon_end(),
            max_nights=self.max_nights,
        )
        days = nights(check_in, check_out)
        shard = self.hotels.shards.for_hotel(hotel_id)
        results = []
        with shard.engine.connect() as conn:
            h = self.hotels._hotel_row(conn, hotel_id)
            rules = PricingRules.from_json(h.pricing)
            types = conn.execute(
                select(room_type)
                .where(room_type.c.hotel_id == hotel_id, room_type.c.capacity >= guests)
                .order_by(room_type.c.id)
            ).all()
            for t in types:
                counts = self.counts(conn, hotel_id, t.id, days)
                left = min(max(inv * pct // 100 - res, 0) for inv, res, pct in counts)
                bases = rates.base_prices(conn, hotel_id, t.id, days, int(t.base_price))
                q = quote_stay(
                    days,
                    bases,
                    [c[1] for c in counts],
                    [c[0] for c in counts],
                    rules,
                )
                results.append(
                    {
                        "roomTypeID": t.id,
                        "name": t.name,
                        "capacity": t.capacity,
                        "roomsLeft": left,
                        "available": left > 0,
                        "totalPrice": money(q.per_room, h.currency),
                        "nightlyPrices": [
                            {"date": n.night.isoformat(), **money(n.price, h.currency)}
                            for n in q.nights
                        ],
                    }
                )
        return {
            "hotelID": hotel_id,
            "checkIn": check_in.isoformat(),
            "checkOut": check_out.isoformat(),
            "guests": guests,
            "nights": len(days),
            "roomTypes": results,
        }
