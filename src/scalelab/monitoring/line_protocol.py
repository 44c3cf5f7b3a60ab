"""The book's push format: one sample per line, parsed without I/O.

    CPU.load host=webserver01,region=us-east 1613856000 50
    <metric> [<name>=<value>[,<name>=<value>...]] <timestamp> <value>

The book shows the shape but leaves the details open; these are the rules here:
- Fields are separated by one or more spaces or tabs; lines by `\\n` (a trailing `\\r` is
  dropped). Blank lines and lines starting with `#` are skipped. The body is UTF-8.
- Metric name: letters, digits, `_`, `:` and `.`, not starting with a digit. Dots become
  underscores (`CPU.load` -> `CPU_load`), which makes it a valid Prometheus name; so `a.b` and
  `a_b` name the same series.
- Labels (optional): `name=value` pairs separated by commas. Names must be valid Prometheus
  label names, unique, and not start with `__` (reserved, e.g. `__name__`). In values a
  backslash escapes a space, tab, comma, equals sign or backslash (as in InfluxDB's line
  protocol); any other backslash is kept as is, so `path=C:\\tmp` works. A value cannot hold a
  newline or carriage return. An empty value (`host=`) means the label is absent, as in
  Prometheus.
- Timestamp (required: a sans-I/O parser has no clock): an integer or decimal number whose
  magnitude picks its unit, so senders may use any common precision: below 1e11 it is seconds
  (1e11 s is the year 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds
  (InfluxDB's default). Fractions are rounded to the nearest millisecond (half to even).
- Value: a decimal float, `NaN`, or `[+-]Inf`/`Infinity` (any case), as Prometheus accepts.
Any other line raises `errors.ParseError` naming its line number.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable
from decimal import Decimal

from scalelab.monitoring import errors
from scalelab.monitoring.model import METRIC_NAME, Labels, valid_label_name, valid_metric_name

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SECONDS_BELOW, _MILLIS_BELOW, _MICROS_BELOW = 10**11, 10**14, 10**17
_MAX_NUMBER_LENGTH = 64  # longer number tokens are garbage; also keeps int() and Decimal cheap

# A field is a run of non-blank characters or backslash escapes (an escaped blank stays in).
_FIELD = re.compile(r"(?:\\.|\\\Z|[^ \t\\])+", re.DOTALL)
_NAME = re.compile(r"[a-zA-Z_:.][a-zA-Z0-9_:.]*\Z")
_PAIR = re.compile(r"([^=,\\]*)=((?:\\.|\\\Z|[^,\\])*)", re.DOTALL)
_UNESCAPE = re.compile(r"\\([ \t,=\\])")
_ESCAPE = re.compile(r"([ \t,=\\])")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_SPECIAL_FLOAT = re.compile(r"(?i:[+-]?inf(?:inity)?|nan)\Z")
_EXACT = decimal.Context(prec=80, traps=[decimal.InvalidOperation, decimal.Overflow])


def parse_lines(body: bytes) -> list[tuple[Labels, int, float]]:
    """Every sample of a body as (labels with `__name__`, timestamp ms, value), in line order."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = body.count(b"\n", 0, exc.start) + 1
        raise errors.ParseError(f"line {number}: not valid UTF-8") from None
    samples: list[tuple[Labels, int, float]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        try:
            samples.append(parse_line(stripped))
        except ValueError as exc:
            raise errors.ParseError(f"line {number}: {exc}") from None
    return samples


def parse_line(line: str) -> tuple[Labels, int, float]:
    """One non-blank line (no newline); raises ValueError with the reason."""
    fields = _FIELD.findall(line)
    if len(fields) == 4:
        name, label_field, timestamp, value = fields
        pairs = _parse_labels(label_field)
    elif len(fields) == 3:
        name, timestamp, value = fields
        pairs = []
        if "=" in timestamp:
            raise ValueError("missing timestamp or value after the labels")
    elif len(fields) > 4:
        raise ValueError(
            f"{len(fields)} fields, expected at most 4 "
            "(metric labels timestamp value; escape spaces in label values as '\\ ')"
        )
    else:
        raise ValueError("expected '<metric> [<labels>] <timestamp> <value>'")
    if not _NAME.match(name):
        raise ValueError(
            f"invalid metric name {name!r}: use letters, digits, '_', ':' and '.', "
            "not starting with a digit"
        )
    pairs.append((METRIC_NAME, name.replace(".", "_")))
    labels = tuple(sorted(pair for pair in pairs if pair[1] != ""))
    return labels, parse_timestamp(timestamp), parse_value(value)


def _parse_labels(field: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    pos, end = 0, len(field)
    while True:
        match = _PAIR.match(field, pos)
        if match is None:
            bad = field[pos:].split(",", 1)[0]
            raise ValueError(f"bad label {bad!r}: expected name=value")
        name, value = match.group(1), match.group(2)
        if not valid_label_name(name):
            raise ValueError(f"invalid label name {name!r}")
        if name.startswith("__"):
            raise ValueError(f"label name {name!r} is reserved (starts with '__')")
        if name in seen:
            raise ValueError(f"duplicate label name {name!r}")
        seen.add(name)
        if "\\" in value:
            value = _UNESCAPE.sub(r"\1", value)
        pairs.append((name, value))
        pos = match.end()
        if pos == end:
            return pairs
        if field[pos] != "," or pos + 1 == end:
            raise ValueError(f"bad labels {field!r}: expected name=value pairs separated by ','")
        pos += 1


def parse_timestamp(token: str) -> int:
    """Milliseconds since the epoch from seconds, ms, µs or ns, told apart by magnitude."""
    if len(token) > _MAX_NUMBER_LENGTH:
        raise ValueError(f"invalid timestamp {token[:20]!r}...: too long")
    if _INTEGER.match(token):
        millis = _integer_millis(int(token))
    elif _DECIMAL.match(token):
        try:
            millis = _decimal_millis(Decimal(token))
        except decimal.DecimalException:  # an exponent beyond Decimal's range
            raise ValueError(f"timestamp {token!r} is out of range") from None
    else:
        raise ValueError(f"invalid timestamp {token!r}: expected a number")
    if not _INT64_MIN <= millis <= _INT64_MAX:
        raise ValueError(f"timestamp {token!r} is out of range")
    return millis


def _integer_millis(number: int) -> int:
    size = abs(number)
    if size < _SECONDS_BELOW:
        return number * 1000
    if size < _MILLIS_BELOW:
        return number
    if size < _MICROS_BELOW:
        return _divide_rounding(number, 1000)
    return _divide_rounding(number, 1_000_000)


def _decimal_millis(number: Decimal) -> int:
    size = number.copy_abs()
    if size < _SECONDS_BELOW:
        scaled = _EXACT.multiply(number, 1000)
    elif size < _MILLIS_BELOW:
        scaled = number
    elif size < _MICROS_BELOW:
        scaled = _EXACT.divide(number, 1000)
    else:
        scaled = _EXACT.divide(number, 1_000_000)
    if not _INT64_MIN <= scaled <= _INT64_MAX:  # checked before int(), which could be enormous
        return _INT64_MAX + 1  # out of range: the caller rejects it
    return int(_EXACT.to_integral_value(scaled))


def _divide_rounding(number: int, divisor: int) -> int:
    """number / divisor rounded half to even, in exact integer arithmetic."""
    quotient, remainder = divmod(number, divisor)
    if 2 * remainder > divisor or (2 * remainder == divisor and quotient % 2 == 1):
        quotient += 1
    return quotient


def parse_value(token: str) -> float:
    if len(token) <= _MAX_NUMBER_LENGTH and (_DECIMAL.match(token) or _SPECIAL_FLOAT.match(token)):
        return float(token)
    raise ValueError(f"invalid value {token!r}: expected a number, NaN or +Inf/-Inf")


def format_line(labels: Labels, timestamp_ms: int, value: float) -> str:
    """One line (without newline) that `parse_line` reads back as the same sample.

    The timestamp is written in seconds with a millisecond fraction while that is below 1e11 s,
    else in nanoseconds, so the magnitude rule gives back the exact milliseconds. NaN is written
    as `NaN`, so the staleness marker's bit pattern does not survive a round trip.
    """
    name = ""
    parts: list[str] = []
    for label, label_value in labels:
        if label == METRIC_NAME:
            name = label_value
            continue
        if not valid_label_name(label) or label.startswith("__"):
            raise ValueError(f"label name {label!r} cannot be written in line protocol")
        if "\n" in label_value or "\r" in label_value:
            raise ValueError(f"label {label!r}: a value cannot contain a newline")
        if label_value:
            parts.append(label + "=" + _ESCAPE.sub(r"\\\1", label_value))
    if not valid_metric_name(name):
        raise ValueError(f"invalid metric name {name!r}")
    fields = [name]
    if parts:
        fields.append(",".join(parts))
    fields.append(_format_timestamp(timestamp_ms))
    fields.append(_format_value(value))
    return " ".join(fields)


def format_lines(samples: Iterable[tuple[Labels, int, float]]) -> bytes:
    """A body of one line per sample, each ending in a newline."""
    return "".join(f"{format_line(*sample)}\n" for sample in samples).encode()


def _format_timestamp(millis: int) -> str:
    if abs(millis) >= _MILLIS_BELOW:
        return str(millis * 1_000_000)
    sign = "-" if millis < 0 else ""
    seconds, fraction = divmod(abs(millis), 1000)
    return f"{sign}{seconds}.{fraction:03d}" if fraction else f"{sign}{seconds}"


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
