"""Inventory rows exist for the whole booking horizon, and the horizon rolls forward."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select

from scalelab.hotel.errors import InUse, InvalidRequest
from scalelab.hotel.hotels import HotelService, check_stay
from scalelab.hotel.model import HotelIn, RoomTypeIn
from scalelab.hotel.schema import room_type_inventory
from scalelab.hotel.sharding import Shards
from tests.hotel.conftest import VirtualClock

START = datetime(2027, 1, 10, 9, tzinfo=UTC).timestamp()
DAY0 = date(2027, 1, 10)


def _span(engine: Engine, room_type_id: int) -> tuple[date, date, int]:
    inv = room_type_inventory.c
    with engine.connect() as conn:
        first, last, count = conn.execute(
            select(func.min(inv.date), func.max(inv.date), func.count()).where(
                inv.room_type_id == room_type_id
            )
        ).one()
    return first, last, count


def test_rows_cover_the_horizon_and_roll_forward(sql_engine: Engine) -> None:
    clock = VirtualClock(START)
    shards = Shards([sql_engine])
    shards.create_schema()
    hotels = HotelService(shards, clock, horizon_days=10, default_overbooking=110)
    h = hotels.create_hotel(HotelIn(name="H"))
    t = hotels.create_room_type(
        h["id"], RoomTypeIn(name="Double", base_price=Decimal("80"), total_inventory=4)
    )
    assert _span(sql_engine, t["id"]) == (DAY0, DAY0 + timedelta(days=9), 10)
    assert hotels.extend_horizon() == 0  # nothing new today
    clock.advance(3 * 86400)
    assert hotels.extend_horizon() == 3
    assert _span(sql_engine, t["id"]) == (DAY0, DAY0 + timedelta(days=12), 13)
    assert hotels.extend_horizon() == 0  # idempotent
    assert hotels.horizon_end() == DAY0 + timedelta(days=13)


def test_new_rows_carry_the_current_inventory_and_overbooking(sql_engine: Engine) -> None:
    clock = VirtualClock(START)
    shards = Shards([sql_engine])
    shards.create_schema()
    hotels = HotelService(shards, clock, horizon_days=5, default_overbooking=110)
    h = hotels.create_hotel(HotelIn(name="H", overbooking_percent=120))
    body = RoomTypeIn(name="Twin", base_price=Decimal("50"), total_inventory=3)
    t = hotels.create_room_type(h["id"], body)
    hotels.replace_room_type(h["id"], t["id"], body.model_copy(update={"total_inventory": 7}))
    clock.advance(86400)
    hotels.extend_horizon()
    inv = room_type_inventory.c
    with sql_engine.connect() as conn:
        rows = conn.execute(
            select(inv.date, inv.total_inventory, inv.overbook_pct)
            .where(inv.room_type_id == t["id"])
            .order_by(inv.date)
        ).all()
    assert [(r.total_inventory, r.overbook_pct) for r in rows] == [(7, 120)] * 6
    # Shrinking below what is reserved is refused by the CHECK, and nothing changes.
    with shards.shards[0].write() as conn:
        conn.execute(room_type_inventory.update().values(total_reserved=8))  # 7 rooms at 120%
    with pytest.raises(InUse):
        hotels.replace_room_type(h["id"], t["id"], body.model_copy(update={"total_inventory": 1}))
    assert hotels.get_room_type(h["id"], t["id"])["totalInventory"] == 7


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        (DAY0, DAY0, "after check-in"),
        (DAY0 - timedelta(days=1), DAY0 + timedelta(days=1), "in the past"),
        (DAY0, DAY0 + timedelta(days=31), "at most 30 nights"),
        (DAY0 + timedelta(days=710), DAY0 + timedelta(days=731), "up to check-out"),
    ],
)
def test_stay_rules(start: date, end: date, problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        check_stay(start, end, first=DAY0, last_end=DAY0 + timedelta(days=730), max_nights=30)
    check_stay(
        DAY0, DAY0 + timedelta(days=30), first=DAY0, last_end=DAY0 + timedelta(30), max_nights=30
    )
