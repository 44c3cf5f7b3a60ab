"""Dynamic pricing: worked examples, then the properties the booking path relies on."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.hotel.model import PricingIn, SurgeTier, nights
from scalelab.hotel.pricing import (
    PricingRules,
    occupancy,
    quote_night,
    quote_stay,
)

FRIDAY = date(2025, 6, 13)
WEDNESDAY = date(2025, 6, 11)
SUNDAY = date(2025, 6, 15)

TIERED = PricingRules(
    weekend_multiplier=Decimal("1.2"),
    surge=((Decimal("0.7"), Decimal("1.1")), (Decimal("0.9"), Decimal("1.5"))),
)


def test_calendar_anchors() -> None:
    assert (FRIDAY.weekday(), WEDNESDAY.weekday(), SUNDAY.weekday()) == (4, 2, 6)


def test_friday_night_takes_weekend_multiplier() -> None:
    q = quote_night(FRIDAY, 10_000, 0, 10, TIERED)
    assert (q.price, q.weekend, q.surge, q.base) == (12_000, True, Decimal(1), 10_000)


def test_sunday_night_is_a_weekday_by_default() -> None:
    q = quote_night(SUNDAY, 10_000, 0, 10, TIERED)
    assert (q.price, q.weekend) == (10_000, False)


def test_weekend_nights_are_configurable() -> None:
    rules = PricingRules(weekend_multiplier=Decimal("2"), weekend_nights=frozenset({6}))
    assert quote_night(SUNDAY, 100, 0, 1, rules).price == 200
    assert quote_night(FRIDAY, 100, 0, 1, rules).price == 100


@pytest.mark.parametrize(
    ("reserved", "surge", "price"),
    [
        (0, Decimal(1), 10_000),
        (6, Decimal(1), 10_000),  # 0.6: below the first tier
        (7, Decimal("1.1"), 11_000),  # exactly 0.7 reaches it
        (8, Decimal("1.1"), 11_000),
        (9, Decimal("1.5"), 15_000),  # the highest tier reached wins
        (11, Decimal("1.5"), 15_000),  # overbooked: occupancy above 1
    ],
)
def test_surge_tier_crossing(reserved: int, surge: Decimal, price: int) -> None:
    q = quote_night(WEDNESDAY, 10_000, reserved, 10, TIERED)
    assert (q.surge, q.price) == (surge, price)


def test_weekend_and_surge_multiply() -> None:
    assert quote_night(FRIDAY, 10_000, 7, 10, TIERED).price == 13_200  # 1.2 * 1.1


@pytest.mark.parametrize("digits", [28, 60, 100])
def test_threshold_compared_exactly_not_after_rounding(digits: int) -> None:
    # 2/3 rounded to `digits` digits ends in ...667, a hair above 2/3: 2 of 3 rooms reserved
    # must not reach it, whatever precision a division would round the occupancy to.
    with localcontext(prec=digits):
        above_two_thirds = Decimal(2) / Decimal(3)
    rules = PricingRules(surge=((above_two_thirds, Decimal(2)),))
    assert quote_night(WEDNESDAY, 100, 2, 3, rules).surge == 1
    assert quote_night(WEDNESDAY, 100, 3, 3, rules).surge == 2


def test_highest_threshold_tier_wins_even_with_a_lower_multiplier() -> None:
    rules = PricingRules(surge=((Decimal("0.5"), Decimal(2)), (Decimal("0.8"), Decimal("1.1"))))
    assert quote_night(WEDNESDAY, 100, 9, 10, rules).surge == Decimal("1.1")


def test_bankers_rounding_of_half_cents() -> None:
    rules = PricingRules(weekend_multiplier=Decimal("1.5"))
    assert quote_night(FRIDAY, 1, 0, 1, rules).price == 2  # 1.5 -> 2
    assert quote_night(FRIDAY, 5, 0, 1, rules).price == 8  # 7.5 -> 8
    assert quote_night(FRIDAY, 3, 0, 1, rules).price == 4  # 4.5 -> 4


def test_occupancy() -> None:
    assert occupancy(3, 4) == Decimal("0.75")
    assert occupancy(0, 0) == Decimal(1)
    assert occupancy(11, 10) == Decimal("1.1")
    with pytest.raises(ValueError):
        occupancy(-1, 3)


def test_empty_inventory_counts_as_full() -> None:
    assert quote_night(WEDNESDAY, 100, 0, 0, TIERED).surge == Decimal("1.5")


def test_quote_stay_example() -> None:
    stay = nights(date(2025, 6, 12), date(2025, 6, 15))  # Thu, Fri, Sat nights
    q = quote_stay(stay, [10_000, 10_000, 12_000], [0, 7, 9], [10, 10, 10], TIERED, rooms=2)
    assert [n.price for n in q.nights] == [10_000, 13_200, 21_600]
    assert q.per_room == 44_800
    assert q.total == 89_600


def test_quote_stay_rejects_mismatched_lengths_and_no_rooms() -> None:
    with pytest.raises(ValueError):
        quote_stay([WEDNESDAY], [1, 2], [0], [1], TIERED)
    with pytest.raises(ValueError):
        quote_stay([WEDNESDAY], [1], [0], [], TIERED)
    with pytest.raises(ValueError):
        quote_stay([WEDNESDAY], [1], [0], [1], TIERED, rooms=0)


def test_json_defaults_and_stored_shape() -> None:
    assert PricingRules.from_json("{}") == PricingRules()
    assert PricingRules.from_json('{"weekendMultiplier": 1.5}') == PricingRules(
        weekend_multiplier=Decimal("1.5")
    )
    tiers = [SurgeTier(occupancy=0.7, multiplier=1.1), SurgeTier(occupancy=0.9, multiplier=1.5)]
    model = PricingIn(weekend_multiplier=1.2, surge=tiers)
    assert TIERED.public() == model.model_dump(by_alias=True, mode="json")
    # Tiers stored out of order read back sorted.
    assert PricingRules.from_model(PricingIn(weekend_multiplier=1.2, surge=tiers[::-1])) == TIERED


def test_from_json_rejects_invalid_rules() -> None:
    for text in ("not json", "[]", '{"weekendNights": [7]}', '{"surge": [{"occupancy": 0}]}'):
        with pytest.raises(ValueError):
            PricingRules.from_json(text)


# --- properties ---------------------------------------------------------------------------

multipliers = st.floats(min_value=1, max_value=10, allow_nan=False)
thresholds = st.floats(min_value=0.01, max_value=1.1, allow_nan=False)


@st.composite
def pricing_models(draw: st.DrawFn, monotone: bool = False) -> PricingIn:
    n = draw(st.integers(0, 10))
    occ = draw(st.lists(thresholds, min_size=n, max_size=n))
    mult = draw(st.lists(multipliers, min_size=n, max_size=n))
    if monotone:  # multipliers rise with the threshold, as a sane hotel configures them
        occ, mult = sorted(occ), sorted(mult)
    return PricingIn(
        weekend_multiplier=draw(st.floats(min_value=0.1, max_value=10, allow_nan=False)),
        weekend_nights=draw(st.lists(st.integers(0, 6), max_size=7)),
        surge=[SurgeTier(occupancy=o, multiplier=m) for o, m in zip(occ, mult, strict=True)],
    )


days = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1))
bases = st.integers(0, 10**9)


@given(pricing_models())
def test_json_round_trip(m: PricingIn) -> None:
    rules = PricingRules.from_model(m)
    assert PricingRules.from_json(rules.to_json()) == rules
    assert PricingRules.from_json(rules.to_json()).public() == rules.public()


@given(pricing_models(monotone=True), days, bases, st.integers(0, 1000), st.data())
def test_price_non_decreasing_in_reserved(
    m: PricingIn, night: date, base: int, inventory: int, data: st.DataObject
) -> None:
    rules = PricingRules.from_model(m)
    low = data.draw(st.integers(0, inventory + 200))
    high = data.draw(st.integers(low, inventory + 200))
    assert (
        quote_night(night, base, low, inventory, rules).price
        <= quote_night(night, base, high, inventory, rules).price
    )


@given(pricing_models(), days, bases, st.integers(0, 200), st.integers(0, 200))
def test_weekday_nights_ignore_weekend_multiplier(
    m: PricingIn, night: date, base: int, reserved: int, inventory: int
) -> None:
    rules = PricingRules.from_model(m)
    flat = PricingRules(weekend_nights=frozenset(), surge=rules.surge)
    q = quote_night(night, base, reserved, inventory, rules)
    assert q.weekend == (night.weekday() in rules.weekend_nights)
    if not q.weekend:
        assert q.price == quote_night(night, base, reserved, inventory, flat).price


@given(
    pricing_models(),
    days,
    st.lists(st.tuples(bases, st.integers(0, 50), st.integers(0, 50)), max_size=30),
    st.integers(1, 9),
)
def test_stay_total_is_nights_times_rooms(
    m: PricingIn, start: date, per_night: list[tuple[int, int, int]], rooms: int
) -> None:
    rules = PricingRules.from_model(m)
    stay = [start + timedelta(days=i) for i in range(len(per_night))]
    b, r, i = ([t[k] for t in per_night] for k in range(3))
    q = quote_stay(stay, b, r, i, rules, rooms=rooms)
    singles = [quote_night(*args, rules) for args in zip(stay, b, r, i, strict=True)]
    assert list(q.nights) == singles
    assert q.per_room == sum(n.price for n in singles)
    assert q.total == q.per_room * rooms == sum(n.price for n in q.nights) * rooms
