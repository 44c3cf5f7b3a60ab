"""Demo data for `scalelab up --demo`: a few hotels with room types, rooms and pricing rules,
created through the same service calls the API uses, only when no hotel exists yet."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from scalelab.hotel.hotels import HotelService
from scalelab.hotel.model import HotelIn, PricingIn, RoomIn, RoomTypeIn, SurgeTier
from scalelab.hotel.schema import hotel

HOTELS = (
    ("Harbour View", "1 Quay Street", "Helsinki", "EUR"),
    ("Old Town Inn", "12 Rue Grimaldi", "Monaco", "EUR"),
    ("Alpine Lodge", "5 Städtle", "Vaduz", "CHF"),
)
ROOM_TYPES = (("Single", 1, "89.00", 8), ("Double", 2, "129.00", 12), ("Suite", 4, "310.00", 3))


def seed(hotels: HotelService) -> int:
    """Create the demo hotels if the database has none; how many were created."""
    for shard in hotels.shards:
        with shard.engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(hotel)).scalar_one():
                return 0
    pricing = PricingIn(
        weekend_multiplier=1.15,
        surge=[SurgeTier(occupancy=0.7, multiplier=1.1), SurgeTier(occupancy=0.9, multiplier=1.3)],
    )
    for name, address, city, currency in HOTELS:
        h = hotels.create_hotel(
            HotelIn(name=name, address=address, city=city, currency=currency, pricing=pricing)
        )
        number = 100
        for type_name, capacity, price, count in ROOM_TYPES:
            t = hotels.create_room_type(
                h["id"],
                RoomTypeIn(
                    name=type_name,
                    capacity=capacity,
                    base_price=Decimal(price),
                    total_inventory=count,
                ),
            )
            for _ in range(count):
                number += 1
                hotels.create_room(h["id"], RoomIn(room_type_id=t["id"], number=str(number)))
    return len(HOTELS)
