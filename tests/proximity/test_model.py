from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from scalelab.proximity.model import BusinessIn, is_open


def make(**kw: object) -> BusinessIn:
    return BusinessIn.model_validate({"name": "x", "latitude": 1, "longitude": 2, **kw})


def test_hours_normalise_weekday_names() -> None:
    b = make(hours={"Monday": [["09:00", "17:00"]], "SAT": [["10:00", "24:00"]]})
    assert set(b.hours) == {"mon", "sat"}


@pytest.mark.parametrize(
    "hours",
    [
        {"funday": [["09:00", "10:00"]]},
        {"mon": [["9:00", "10:00"]]},
        {"mon": [["09:00", "25:00"]]},
        {"mon": [["10:00", "10:00"]]},
        {"mon": [["24:00", "10:00"]]},
    ],
)
def test_bad_hours_rejected(hours: object) -> None:
    with pytest.raises(ValidationError):
        make(hours=hours)


@pytest.mark.parametrize(
    "field,value",
    [
        ("latitude", 90.5),
        ("longitude", -181),
        ("latitude", float("nan")),
        ("name", ""),
        ("timezone", "Mars/Olympus"),
    ],
)
def test_bad_fields_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        make(**{field: value})
    assert field in str(err.value)


def test_extra_fields_rejected() -> None:
    with pytest.raises(ValidationError):
        make(owner="me")


PARIS = {"mon": [("22:00", "02:00")], "tue": [("09:00", "17:00")]}


@pytest.mark.parametrize(
    "utc,expected",
    [
        # 2026-11-23 is a Monday; Paris is UTC+1 in November.
        (datetime(2026, 11, 23, 20, 59, tzinfo=UTC), False),  # 21:59 Mon
        (datetime(2026, 11, 23, 21, 0, tzinfo=UTC), True),  # 22:00 Mon opens
        (datetime(2026, 11, 24, 0, 59, tzinfo=UTC), True),  # 01:59 Tue, Monday's night
        (datetime(2026, 11, 24, 1, 0, tzinfo=UTC), False),  # 02:00 Tue closes
        (datetime(2026, 11, 24, 8, 0, tzinfo=UTC), True),  # 09:00 Tue
        (datetime(2026, 11, 24, 16, 0, tzinfo=UTC), False),  # 17:00 Tue closed
        (datetime(2026, 11, 29, 23, 30, tzinfo=UTC), False),  # 00:30 Mon: Sunday had no night
    ],
)
def test_is_open_in_local_time(utc: datetime, expected: bool) -> None:
    assert is_open(PARIS, "Europe/Paris", utc) is expected


def test_is_open_follows_daylight_saving() -> None:
    hours = {"sun": [("09:00", "10:00")]}
    # 2026-03-29: Europe/Paris switches to UTC+2; 09:30 local is 07:30 UTC.
    assert is_open(hours, "Europe/Paris", datetime(2026, 3, 29, 7, 30, tzinfo=UTC))
    assert not is_open(hours, "Europe/Paris", datetime(2026, 3, 29, 8, 30, tzinfo=UTC))


def test_all_day_and_naive_instant() -> None:
    hours = {"wed": [("00:00", "24:00")]}
    assert is_open(hours, "UTC", datetime(2026, 11, 25, 23, 59, tzinfo=UTC))
    with pytest.raises(ValueError):
        is_open(hours, "UTC", datetime(2026, 11, 25, 12, 0))
