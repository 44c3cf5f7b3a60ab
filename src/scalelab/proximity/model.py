"""Businesses and their opening hours: data and rules, no I/O.

Opening hours are per weekday lists of [open, close] local times in the business's IANA time
zone. A close earlier than the open (22:00-02:00) runs past midnight into the next day; "24:00"
closes at midnight. `is_open` takes the instant to check, so callers pass their clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")

Latitude = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180.0, le=180.0, allow_inf_nan=False)]


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class BusinessIn(BaseModel):
    """What an owner sends to create or replace a business."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    latitude: Latitude
    longitude: Longitude
    category: str = Field(default="other", min_length=1, max_length=60)
    address: str = Field(default="", max_length=300)
    city: str = Field(default="", max_length=100)
    country: str = Field(default="", max_length=2, description="ISO 3166-1 alpha-2")
    phone: str = Field(default="", max_length=40)
    website: str = Field(default="", max_length=300)
    timezone: str = Field(default="UTC", max_length=64)
    hours: dict[str, list[tuple[str, str]]] = Field(default_factory=dict)

    @field_validator("category")
    @classmethod
    def _category(cls, v: str) -> str:
        return v.lower()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {v!r}") from None
        return v

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for day, spans in v.items():
            key = day.lower()[:3]
            if key not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}; use one of {', '.join(WEEKDAYS)}")
            for start, end in spans:
                for t in (start, end):
                    if not _HHMM.match(t):
                        raise ValueError(f"{day}: time {t!r} is not HH:MM (00:00-24:00)")
                if start == end or start == "24:00":
                    raise ValueError(f"{day}: interval {start}-{end} is empty")
            out[key] = [(s, e) for s, e in spans]
        return out


class Business(BusinessIn):
    """A stored business: the owner's fields plus what the service assigns."""

    model_config = ConfigDict(extra="ignore")

    id: int
    created_at: datetime
    updated_at: datetime

    def public(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["hours"] = {d: [list(s) for s in spans] for d, spans in self.hours.items()}
        return data


def is_open(hours: Mapping[str, Sequence[Sequence[str]]], tz: str, at: datetime) -> bool:
    """Whether a business with these hours is open at the instant `at` (timezone-aware)."""
    if at.tzinfo is None:
        raise ValueError("is_open needs a timezone-aware instant")
    local = at.astimezone(ZoneInfo(tz))
    now = local.hour * 60 + local.minute
    today = WEEKDAYS[local.weekday()]
    yesterday = WEEKDAYS[(local - timedelta(days=1)).weekday()]
    for start, end in hours.get(today, []):
        s, e = _minutes(start), _minutes(end)
        if (s < e and s <= now < e) or (e < s and now >= s):
            return True
    for start, end in hours.get(yesterday, []):
        s, e = _minutes(start), _minutes(end)
        if e < s and now < e:
            return True
    return False
