"""The inventory cache (the book's Redis, key `hotelID_roomTypeID_date`): a read-through cache
for availability searches only.

Bookings never read it: they claim rooms in the database, the source of truth, so a stale
entry can show a room that is gone (the booking then answers 409) but can never oversell.
Writers delete the keys of the nights they changed after their transaction commits, and every
entry also expires (at most `ttl` seconds, and never outlives its own date), which bounds how
stale a search can be when a delete races a read-through fill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta

from scalelab.storage.kv import KV

Clock = Callable[[], float]
Counts = tuple[int, int, int]  # total_inventory, total_reserved, overbook_pct


def cache_key(hotel_id: int, room_type_id: int, night: date) -> str:
    return f"{hotel_id}_{room_type_id}_{night.isoformat()}"


class InventoryCache:
    def __init__(self, kv: KV, clock: Clock, ttl: float = 60.0) -> None:
        self.kv = kv
        self.clock = clock
        self.ttl = ttl
        self.hits = 0
        self.misses = 0

    def get(self, hotel_id: int, room_type_id: int, nights: Sequence[date]) -> list[Counts | None]:
        values = self.kv.get_many([cache_key(hotel_id, room_type_id, n) for n in nights])
        out: list[Counts | None] = []
        for value in values:
            if value is None:
                self.misses += 1
                out.append(None)
            else:
                self.hits += 1
                a, b, c = value.split(b",")
                out.append((int(a), int(b), int(c)))
        return out

    def put(self, hotel_id: int, room_type_id: int, rows: Iterable[tuple[date, Counts]]) -> None:
        now = self.clock()
        by_ttl: dict[float, dict[str, bytes]] = {}
        for night, (inv, reserved, pct) in rows:
            end_of_day = datetime.combine(night + timedelta(days=1), time(), UTC).timestamp()
            ttl = min(self.ttl, end_of_day - now)
            if ttl <= 0:
                continue
            by_ttl.setdefault(ttl, {})[cache_key(hotel_id, room_type_id, night)] = (
                f"{inv},{reserved},{pct}".encode()
            )
        for ttl, items in by_ttl.items():
            self.kv.set_many(items, ttl)

    def invalidate(self, hotel_id: int, room_type_id: int, nights: Sequence[date]) -> None:
        if nights:
            self.kv.delete(*(cache_key(hotel_id, room_type_id, n) for n in nights))

    def invalidate_from(
        self, hotel_id: int, room_type_ids: Sequence[int], first: date, last: date
    ) -> None:
        """Drop every night in [first, last] of the room types (staff changed inventory)."""
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
        for room_type_id in room_type_ids:
            self.invalidate(hotel_id, room_type_id, days)

    def close(self) -> None:
        self.kv.close()
