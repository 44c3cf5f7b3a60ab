"""Prometheus's HTTP API parameter formats: timestamps and durations.

Times are RFC 3339 or Unix seconds with an optional fraction; durations are float seconds or
Prometheus duration strings (`1h30m`, `15s`, `100ms`). Both become int milliseconds, the TSDB's
unit. Errors are `BadData` worded as Prometheus words them, so clients see familiar messages.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from scalelab.monitoring.errors import BadData

_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
    "y": 365 * 86_400_000,
}
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z"
)
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")

# "No bound" for /api/v1/series and friends when start or end is not given.
MIN_TIME_MS = -(2**62)
MAX_TIME_MS = 2**62


def parse_duration(text: str) -> int:
    """A Prometheus duration string in milliseconds ("0" is allowed, "" is not)."""
    if text == "0":
        return 0
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groups()):
        raise BadData(f'not a valid duration string: "{text}"')
    return sum(
        int(n) * _UNITS_MS[unit] for n, unit in zip(match.groups(), _ORDER, strict=True) if n
    )


def parse_time(text: str, name: str = "time") -> int:
    """Unix seconds (float) or RFC 3339, in milliseconds."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
        return round(seconds * 1000)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadData(
            f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp'
        ) from None
    if parsed.tzinfo is None:
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid timestamp')
    return round(parsed.timestamp() * 1000)


def parse_step(text: str, name: str = "step") -> int:
    """A query step or timeout: float seconds or a duration string, in milliseconds."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except BadData:
            raise BadData(
                f'invalid parameter "{name}": cannot parse "{text}" to a valid duration'
            ) from None
    if math.isnan(seconds) or math.isinf(seconds):
        raise BadData(f'invalid parameter "{name}": cannot parse "{text}" to a valid duration')
    return round(seconds * 1000)
