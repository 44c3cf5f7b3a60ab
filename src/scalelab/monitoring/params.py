"""Prometheus's HTTP API parameter formats: timestamps and durations.

Times are RFC 3339 or Unix seconds with an optional fraction; durations are float seconds or
Prometheus duration strings (`1h30m`, `15s`, `100ms`). Both become int milliseconds, the TSDB's
unit. Errors are `BadData` worded as Prometheus words them, so clients see familiar messages.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from scalelab.monitoring.errors import BadData

# Largest unit first, as Prometheus writes and requires them.
_UNITS_MS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
)
_DURATION = re.compile(
    r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?\Z"
)
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: what Prometheus's APIs print for "never"

# "No bound" for /api/v1/series and friends when start or end is not given.
MIN_TIME_MS = -(2**62)
MAX_TIME_MS = 2**62


def duration_ms(text: str) -> int:
    """Prometheus's duration syntax (`1h30m`, `15s`, `100ms`, `0`) in milliseconds; the one
    reader behind the API, scrape configs, rule files and Alertmanager configs.
    ValueError (worded as Prometheus words it) when it is not one."""
    if text == "":
        raise ValueError("empty duration string")
    if text == "0":
        return 0
    match = _DURATION.match(text)
    if match is None or not any(match.groups()):
        raise ValueError(f'not a valid duration string: "{text}"')
    return sum(int(n) * ms for n, (_, ms) in zip(match.groups(), _UNITS_MS, strict=True) if n)


def format_duration(ms: int) -> str:
    """Prometheus's canonical spelling (model.Duration's String): `1m30s`, `90d`, `0s`; years
    and weeks only when they are exact, since 90d reads better than 12w6d."""
    if ms <= 0:
        return "0s"
    out: list[str] = []
    for unit, size in _UNITS_MS:
        if unit in ("y", "w") and ms % size:
            continue
        if ms >= size:
            out.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(out)


def parse_duration(text: str) -> int:
    """A Prometheus duration string in milliseconds ("0" is allowed, "" is not)."""
    try:
        return duration_ms(text)
    except ValueError:
        raise BadData(f'not a valid duration string: "{text}"') from None


def rfc3339(seconds: float | None) -> str:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction trimmed); None is Go's zero
    time, which Prometheus and Alertmanager print for "never" or "unknown"."""
    if seconds is None:
        return ZERO_TIME
    dt = datetime.fromtimestamp(seconds, UTC)
    frac = f"{dt.microsecond:06d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def rfc3339_ms(t_ms: int | None) -> str:
    """`rfc3339` of a millisecond timestamp, exact (no float rounding on the way)."""
    if t_ms is None:
        return ZERO_TIME
    dt = datetime.fromtimestamp(t_ms // 1000, UTC)
    frac = f"{t_ms % 1000:03d}".rstrip("0")
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


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
