"""Dynamic pricing (the book's "rate" varying with the day and the demand), as pure functions.

A night's price for one room is

    round_minor(base * weekend * surge)

where `weekend` is the hotel's weekend multiplier when the night's weekday is one of its weekend
nights (1 otherwise), and `surge` is the multiplier of the highest surge tier whose occupancy
threshold the room type has reached *before* this booking (1 when none). Occupancy is
reserved / inventory, so with overbooking it can exceed 1.

Money is integer minor units; the arithmetic is `Decimal` so a 1.1 multiplier is exactly 1.1,
and the one rounding step is banker's rounding, as ledgers do. Nothing here does I/O: the
caller reads the base rates and inventory rows and passes them in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from fractions import Fraction
from typing import Any

from scalelab.hotel.model import PricingIn, round_minor

# Wide enough that base (<= 14 digits) * two multipliers is exact before the one rounding.
_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)
_ONE = Decimal(1)


def _dec(value: float) -> Decimal:
    """A JSON float as the decimal it was written as (1.1 -> Decimal('1.1'), not 1.1000000...)."""
    return Decimal(repr(float(value)))


@dataclass(frozen=True)
class PricingRules:
    """One hotel's pricing rules; stored as JSON text in the hotel row (schema `hotel.pricing`)."""

    weekend_multiplier: Decimal = Decimal(1)
    weekend_nights: frozenset[int] = frozenset({4, 5})  # weekday() of the night: Fri, Sat
    surge: tuple[tuple[Decimal, Decimal], ...] = ()  # (occupancy threshold, multiplier)

    def __post_init__(self) -> None:
        # Keep tiers sorted (ties by multiplier) so equal rules compare equal and the
        # highest reached tier is simply the last one reached.
        object.__setattr__(self, "weekend_nights", frozenset(self.weekend_nights))
        object.__setattr__(self, "surge", tuple(sorted(self.surge)))

    @classmethod
    def from_model(cls, m: PricingIn) -> PricingRules:
        return cls(
            weekend_multiplier=_dec(m.weekend_multiplier),
            weekend_nights=frozenset(m.weekend_nights),
            surge=tuple((_dec(t.occupancy), _dec(t.multiplier)) for t in m.surge),
        )

    @classmethod
    def from_json(cls, text: str) -> PricingRules:
        """Rules from the stored JSON; missing keys take defaults. Raises ValueError if invalid."""
        return cls.from_model(PricingIn.model_validate(json.loads(text)))

    def to_json(self) -> str:
        return json.dumps(self.public())

    def public(self) -> dict[str, Any]:
        """The camelCase shape of `PricingIn.model_dump(by_alias=True, mode="json")`."""
        return {
            "weekendMultiplier": float(self.weekend_multiplier),
            "weekendNights": sorted(self.weekend_nights),
            "surge": [
                {"occupancy": float(threshold), "multiplier": float(multiplier)}
                for threshold, multiplier in self.surge
            ],
        }


@dataclass(frozen=True)
class NightQuote:
    night: date
    base: int  # minor units before rules
    price: int  # minor units after rules, for one room
    weekend: bool
    surge: Decimal  # the surge multiplier applied (1 when none)


@dataclass(frozen=True)
class StayQuote:
    nights: tuple[NightQuote, ...]
    per_room: int  # sum of night prices for one room
    total: int  # per_room * rooms


def occupancy(reserved: int, inventory: int) -> Decimal:
    """Share of the inventory reserved; a room type with no rooms counts as full."""
    if reserved < 0 or inventory < 0:
        raise ValueError("reserved and inventory must be >= 0")
    if inventory == 0:
        return Decimal(1)
    with localcontext(_CONTEXT):
        return Decimal(reserved) / Decimal(inventory)


def _surge_multiplier(reserved: int, inventory: int, rules: PricingRules) -> Decimal:
    """The multiplier of the highest tier reached, compared exactly (2/3 is not 0.667)."""
    share = Fraction(1) if inventory == 0 else Fraction(reserved, inventory)
    reached = _ONE
    for threshold, multiplier in rules.surge:
        if Fraction(threshold) > share:
            break  # tiers ascend: none further is reached either
        reached = multiplier
    return reached


def quote_night(
    night: date, base: int, reserved: int, inventory: int, rules: PricingRules
) -> NightQuote:
    """One room's price for one night, given the rooms reserved before this booking."""
    if base < 0:
        raise ValueError("base price must be >= 0")
    occupancy(reserved, inventory)  # validates the counts
    weekend = night.weekday() in rules.weekend_nights
    surge = _surge_multiplier(reserved, inventory, rules)
    with localcontext(_CONTEXT):
        value = Decimal(base) * (rules.weekend_multiplier if weekend else _ONE) * surge
        price = round_minor(value)
    return NightQuote(night=night, base=base, price=price, weekend=weekend, surge=surge)


def quote_stay(
    nights: Sequence[date],
    bases: Sequence[int],
    reserved: Sequence[int],
    inventory: Sequence[int],
    rules: PricingRules,
    rooms: int = 1,
) -> StayQuote:
    """A stay's price: each night quoted alone (rounded per night), then times the rooms."""
    if not len(nights) == len(bases) == len(reserved) == len(inventory):
        raise ValueError(
            f"one base, reserved and inventory per night: got {len(nights)} nights, "
            f"{len(bases)} bases, {len(reserved)} reserved, {len(inventory)} inventory"
        )
    if rooms < 1:
        raise ValueError("rooms must be >= 1")
    quotes = tuple(
        quote_night(n, b, r, i, rules)
        for n, b, r, i in zip(nights, bases, reserved, inventory, strict=True)
    )
    per_room = sum(q.price for q in quotes)
    return StayQuote(nights=quotes, per_room=per_room, total=per_room * rooms)
