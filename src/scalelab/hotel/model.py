"""Request bodies (validated by pydantic) and the date and money rules they share.

The JSON names follow the book's API (`startDate`, `hotelID`, `roomTypeID`, `reservationID`);
money goes over the wire as {"amount": "123.45", "currency": "EUR"} and lives as integer
minor units everywhere else.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RESERVATION_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")

# ISO 4217 currencies without minor units; every other code is taken to have two.
ZERO_DECIMAL = frozenset({"JPY", "KRW", "ISK", "CLP", "VND", "XAF", "XOF", "PYG", "UGX"})


def minor_digits(currency: str) -> int:
    return 0 if currency in ZERO_DECIMAL else 2


def to_minor(amount: Decimal | str | int | float, currency: str) -> int:
    """A decimal amount as integer minor units, refusing fractions the currency lacks."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError(f"not a number: {amount!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError("amount must be a finite number >= 0")
    scaled = value.scaleb(minor_digits(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{currency} amounts have at most {minor_digits(currency)} decimals")
    return int(scaled)


def money(minor: int, currency: str) -> dict[str, str]:
    digits = minor_digits(currency)
    amount = Decimal(minor).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))
    return {"amount": str(amount), "currency": currency}


def round_minor(value: Decimal) -> int:
    """Banker's rounding to a whole minor unit, as accounting ledgers do."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def nights(start: date, end: date) -> list[date]:
    """The nights of a stay: check-in day up to, not including, check-out day."""
    return [start + timedelta(days=i) for i in range((end - start).days)]


Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SurgeTier(_Body):
    occupancy: float = Field(gt=0, le=1.1, description="share of inventory reserved, 0..1.1")
    multiplier: float = Field(ge=1, le=10)


class PricingIn(_Body):
    weekend_multiplier: float = Field(1.0, ge=0.1, le=10, alias="weekendMultiplier")
    weekend_nights: list[int] = Field(
        default_factory=lambda: [4, 5],
        alias="weekendNights",
        description="weekdays (Monday=0) whose nights count as weekend; default Fri and Sat",
    )
    surge: list[SurgeTier] = Field(default_factory=list, max_length=10)

    @field_validator("weekend_nights")
    @classmethod
    def _weekdays(cls, v: list[int]) -> list[int]:
        if any(d < 0 or d > 6 for d in v):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        return sorted(set(v))


class HotelIn(_Body):
    name: Name
    address: str = Field("", max_length=500)
    city: str = Field("", max_length=100)
    currency: str = Field("USD", pattern=CURRENCY.pattern)
    overbooking_percent: int | None = Field(None, ge=100, le=200, alias="overbookingPercent")
    pricing: PricingIn = Field(default_factory=PricingIn)


class RoomTypeIn(_Body):
    name: Name
    description: str = Field("", max_length=2000)
    capacity: int = Field(2, ge=1, le=20, description="most guests per room")
    base_price: Decimal = Field(alias="basePrice", ge=0, max_digits=14, allow_inf_nan=False)
    total_inventory: int = Field(alias="totalInventory", ge=0, le=100_000)


class RoomIn(_Body):
    room_type_id: int = Field(alias="roomTypeID", ge=1)
    number: str = Field(min_length=1, max_length=20)
    floor: int | None = Field(None, ge=-10, le=500)
    in_service: bool = Field(True, alias="inService")


class RateIn(_Body):
    date: date
    price: Decimal = Field(ge=0, max_digits=14, allow_inf_nan=False)


class RatesIn(_Body):
    rates: list[RateIn] = Field(min_length=1, max_length=800)


class GuestIn(_Body):
    name: Name
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class PaymentIn(_Body):
    method: str = Field(
        min_length=1,
        max_length=64,
        description="the simulated provider's test method: pm_card_ok, pm_card_declined, "
        "pm_card_timeout",
    )


class ReservationIn(_Body):
    reservation_id: str = Field(alias="reservationID", pattern=RESERVATION_ID.pattern)
    hotel_id: int = Field(alias="hotelID", ge=1)
    room_type_id: int = Field(alias="roomTypeID", ge=1)
    start_date: date = Field(alias="startDate")
    end_date: date = Field(alias="endDate")
    rooms: int = Field(1, ge=1, le=9)
    guests: int = Field(1, ge=1, le=50)
    guest: dict[str, Any] | None = Field(
        None, description="the guest's details as given (name...); kept with the reservation"
    )
    payment: PaymentIn | None = Field(None, description="pay at once with this method")

    @field_validator("hotel_id", "room_type_id", mode="before")
    @classmethod
    def _numeric_id(cls, v: Any) -> Any:
        # The book's example sends ids as strings ("hotelID": "123").
        if isinstance(v, str) and v.isdigit():
            return int(v)
        return v

    @model_validator(mode="after")
    def _stay(self) -> ReservationIn:
        if self.end_date <= self.start_date:
            raise ValueError("endDate must be after startDate")
        return self

    def fingerprint_fields(self) -> dict[str, Any]:
        """What makes two requests with one reservationID the same request."""
        return self.model_dump(mode="json", by_alias=True)
