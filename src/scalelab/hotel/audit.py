"""The invariant the whole design protects, checked from the database alone: for every
(hotel, room type, night), total_reserved equals the rooms of the reservations that hold
inventory (pending or paid) covering that night, and never exceeds what overbooking allows.

Run after a crash (`scalelab hotel audit`), by the crash test, and by the bench.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine, select

from scalelab.hotel.model import nights
from scalelab.hotel.schema import reservation, room_type_inventory
from scalelab.hotel.status import HOLDING


@dataclass(frozen=True)
class Mismatch:
    hotel_id: int
    room_type_id: int
    night: date
    total_reserved: int
    held: int  # rooms of holding reservations covering the night
    cap: int

    def __str__(self) -> str:
        return (
            f"hotel {self.hotel_id} room type {self.room_type_id} {self.night}: "
            f"inventory says {self.total_reserved} reserved, reservations hold {self.held}, "
            f"cap {self.cap}"
        )


@dataclass(frozen=True)
class AuditReport:
    nights_checked: int
    reservations: int
    oversold: int  # nights with more held than the cap allows
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.oversold


def audit(engine: Engine) -> AuditReport:
    held: Counter[tuple[int, int, date]] = Counter()
    count = 0
    with engine.connect() as conn:
        for r in conn.execute(
            select(
                reservation.c.hotel_id,
                reservation.c.room_type_id,
                reservation.c.start_date,
                reservation.c.end_date,
                reservation.c.rooms,
            ).where(reservation.c.status.in_([s.value for s in HOLDING]))
        ):
            count += 1
            for night in nights(r.start_date, r.end_date):
                held[(r.hotel_id, r.room_type_id, night)] += r.rooms
        rows = conn.execute(
            select(
                room_type_inventory.c.hotel_id,
                room_type_inventory.c.room_type_id,
                room_type_inventory.c.date,
                room_type_inventory.c.total_inventory,
                room_type_inventory.c.total_reserved,
                room_type_inventory.c.overbook_pct,
            )
        ).all()
    mismatches = []
    oversold = 0
    for row in rows:
        key = (row.hotel_id, row.room_type_id, row.date)
        cap = row.total_inventory * row.overbook_pct // 100
        have = held.pop(key, 0)
        if have > cap:
            oversold += 1
        if have != row.total_reserved or have > cap:
            mismatches.append(
                Mismatch(row.hotel_id, row.room_type_id, row.date, row.total_reserved, have, cap)
            )
    for (hotel_id, room_type_id, night), have in held.items():  # held with no inventory row
        mismatches.append(Mismatch(hotel_id, room_type_id, night, 0, have, 0))
    return AuditReport(len(rows), count, oversold, tuple(mismatches))
