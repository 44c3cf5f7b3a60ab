"""What every part of the monitoring system shares: series identity, samples, matchers.

A series is named by its label set, kept as a tuple of (name, value) pairs sorted by name, with
the metric name under `__name__` as Prometheus does; tuples hash and compare cheaply and are
the dict keys of the head block and the query engine. Timestamps are int milliseconds since the
epoch, values float64, as in Prometheus. A query reads samples through `Querier`, which the head
block, the persisted blocks and the test doubles all implement.

Staleness: Prometheus marks a series that vanished from a scrape with one special NaN (bit
pattern 0x7ff0000000000002); storage keeps it like any sample, and queries treat it as "no
value from here on". Any other NaN is an ordinary value.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Labels = tuple[tuple[str, str], ...]
TimestampArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float64]

METRIC_NAME = "__name__"

STALE_NAN_BITS = 0x7FF0000000000002
STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
_BITS = struct.Struct("<Q")
_FLOAT = struct.Struct("<d")

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def is_stale(value: float) -> bool:
    """True only for Prometheus's staleness marker, not for other NaNs."""
    return value != value and _BITS.unpack(_FLOAT.pack(value))[0] == STALE_NAN_BITS


def stale_mask(values: ValueArray) -> npt.NDArray[np.bool_]:
    """Which entries of a float64 array are staleness markers."""
    mask: npt.NDArray[np.bool_] = values.view(np.uint64) == np.uint64(STALE_NAN_BITS)
    return mask


def labels_of(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """A canonical label set: sorted by name, empty values dropped (Prometheus: "" = absent)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return tuple(sorted((k, v) for k, v in items if v != ""))


def get(labels: Labels, name: str) -> str:
    """A label's value, or "" when the series does not have it."""
    for k, v in labels:
        if k == name:
            return v
    return ""


def metric_name(labels: Labels) -> str:
    return get(labels, METRIC_NAME)


def without(labels: Labels, names: Iterable[str]) -> Labels:
    drop = set(names)
    return tuple((k, v) for k, v in labels if k not in drop)


def keep_only(labels: Labels, names: Iterable[str]) -> Labels:
    keep = set(names)
    return tuple((k, v) for k, v in labels if k in keep)


def with_label(labels: Labels, name: str, value: str) -> Labels:
    """labels with name set to value ("" removes it), still canonical."""
    rest = [(k, v) for k, v in labels if k != name]
    if value != "":
        rest.append((name, value))
    return tuple(sorted(rest))


def format_labels(labels: Labels) -> str:
    """`name{a="1", b="2"}`, the way Prometheus prints a series."""
    name = metric_name(labels)
    inner = ", ".join(f'{k}="{_escape(v)}"' for k, v in labels if k != METRIC_NAME)
    return f"{name}{{{inner}}}" if inner or not name else name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def valid_label_name(name: str) -> bool:
    return bool(_LABEL_NAME.match(name))


def valid_metric_name(name: str) -> bool:
    return bool(_METRIC_NAME.match(name))


class MatchType(enum.Enum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher; regexes are anchored at both ends, as in Prometheus."""

    type: MatchType
    name: str
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.type in (MatchType.REGEX, MatchType.NOT_REGEX):
            try:
                compiled = re.compile(f"(?s:{self.value})\\Z")
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.value!r}: {exc}") from None
            object.__setattr__(self, "_regex", compiled)

    @classmethod
    def equal(cls, name: str, value: str) -> Matcher:
        return cls(MatchType.EQUAL, name, value)

    def matches(self, value: str) -> bool:
        """Does a label value ("" when the label is absent) satisfy this matcher?"""
        if self.type is MatchType.EQUAL:
            return value == self.value
        if self.type is MatchType.NOT_EQUAL:
            return value != self.value
        assert self._regex is not None
        hit = self._regex.match(value) is not None
        return hit if self.type is MatchType.REGEX else not hit

    def matches_empty(self) -> bool:
        """True when series *without* the label match too (e.g. `x=""`, `x!="a"`, `x=~".*"`)."""
        return self.matches("")

    def __str__(self) -> str:
        return f'{self.name}{self.type.value}"{_escape(self.value)}"'


def matches_all(labels: Labels, matchers: Sequence[Matcher]) -> bool:
    return all(m.matches(get(labels, m.name)) for m in matchers)


@dataclass(frozen=True, slots=True)
class Series:
    """One series' samples in a time range, oldest first."""

    labels: Labels
    timestamps: TimestampArray
    values: ValueArray

    def __len__(self) -> int:
        return len(self.timestamps)


class Querier(Protocol):
    """Read access to stored samples; `mint`/`maxt` are inclusive milliseconds."""

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        """Every series matching all matchers that has a sample in [mint, maxt]."""
        ...

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        """Sorted label names of the matching series (all series when matchers is empty)."""
        ...

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        """Sorted values of one label over the matching series."""
        ...


class MetricType(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    GAUGE_HISTOGRAM = "gaugehistogram"
    SUMMARY = "summary"
    INFO = "info"
    STATESET = "stateset"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class MetricMetadata:
    """What an exposition's # TYPE / # HELP / # UNIT lines say of a metric family."""

    type: MetricType = MetricType.UNKNOWN
    help: str = ""
    unit: str = ""


def float_repr(value: float) -> str:
    """A sample value as Prometheus's JSON API writes it: Go's FormatFloat(v, 'f', -1, 64),
    the shortest digits that round-trip, never an exponent; "NaN", "+Inf", "-Inf".

    Python's repr has the same shortest digits, so it is the answer whenever it shows no
    exponent (the hot path of every query result); Decimal spells out the rest."""
    text = repr(value)
    if "e" not in text and "n" not in text:  # no exponent, not inf or nan
        return text[:-2] if text.endswith(".0") else text
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(text), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class Appender(Protocol):
    """A write transaction: samples become visible (and durable) together at `commit`.

    `append` raises `errors.LimitExceeded` when a new series would pass the active-series
    limit, and `errors.OutOfOrderSample` for a sample older than the series' last one.
    """

    def append(self, labels: Labels, t: int, v: float) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


@runtime_checkable
class RefAppender(Appender, Protocol):
    """An Appender that can also append by series ref, as Prometheus's Append(ref, ...) does:
    a caller that appends the same series again and again (a scrape loop) keeps the opaque
    ref it got back and so spares the storage finding the series by its label set."""

    def append_ref(self, ref: object, labels: Labels, t: int, v: float) -> object:
        """Append to the series `ref` names (None: find it by `labels`, which must be the
        series' labels either way); returns the ref to pass next time."""
        ...

    def hold(self, refs: Iterable[object]) -> None:
        """Reserve for this transaction the series of refs the caller is about to append
        to (refs from append_ref; anything else is ignored). A speed-up only: doing nothing
        is a correct implementation."""
        ...


@dataclass(frozen=True, slots=True)
class Exposition:
    """One parsed scrape body: samples in exposition order, and metadata per metric family."""

    samples: list[tuple[Labels, float, int | None]]  # (labels, value, timestamp ms or None)
    metadata: dict[str, MetricMetadata]
