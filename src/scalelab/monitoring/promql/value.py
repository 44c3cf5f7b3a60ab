"""Values: the blocks the evaluator passes between nodes, and the results a query returns.

Inside the evaluator an instant vector is evaluated at every step of the query at once, as a
dense block: one row per series, one column per step, a float64 value matrix and a bool
"present" matrix (a series may have a value at some steps and not others). numpy then does the
arithmetic of a whole range query in a few array operations. A range vector (the argument of
`rate` and friends) is kept as the series' raw samples plus, per step, the time its window ends.

The public results (`Vector`, `Matrix`, `Scalar`, `String`) are what `Engine.instant` and
`Engine.range` return; `to_json()` gives exactly the `data` member of Prometheus's HTTP API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ExecutionError
from ..model import Labels, TimestampArray, ValueArray, float_repr

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

SAME_LABELSET = "vector cannot contain metrics with the same labelset"


@dataclass(slots=True)
class VectorBlock:
    """An instant vector at every step: values[i, j] is series i at step j if present[i, j]."""

    labels: list[Labels]
    values: ValueArray
    present: BoolArray

    @classmethod
    def empty(cls, steps: int) -> VectorBlock:
        return cls([], np.empty((0, steps)), np.zeros((0, steps), dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def steps(self) -> int:
        return int(self.values.shape[1])

    def samples(self) -> int:
        return int(np.count_nonzero(self.present))

    def take(self, rows: IntArray | list[int]) -> VectorBlock:
        index = np.asarray(rows, dtype=np.int64)
        return VectorBlock([self.labels[i] for i in index], self.values[index], self.present[index])

    def nonempty(self) -> VectorBlock:
        """Drop the series that have no value at any step."""
        keep = self.present.any(axis=1)
        if keep.all():
            return self
        return self.take(np.flatnonzero(keep))


@dataclass(slots=True)
class ScalarBlock:
    """A scalar at every step (always present, possibly NaN)."""

    values: ValueArray

    def samples(self) -> int:
        return int(self.values.shape[0])


@dataclass(slots=True)
class StringValue:
    value: str

    def samples(self) -> int:
        return 1


@dataclass(slots=True)
class RangeBlock:
    """Range-vector samples: series i is ts/vals[offsets[i]:offsets[i+1]], oldest first,
    staleness markers removed; at step j its window is [ends[j] - range_ms, ends[j]]."""

    labels: list[Labels]
    ts: TimestampArray
    vals: ValueArray
    offsets: IntArray
    range_ms: int
    ends: IntArray

    def samples(self) -> int:
        return int(self.ts.shape[0])

    def windows(self) -> tuple[IntArray, IntArray]:
        """lo, hi of shape (series, steps): the window of series i at step j is [lo, hi)."""
        n, steps = len(self.labels), self.ends.shape[0]
        if n == 0:
            empty = np.zeros((0, steps), dtype=np.int64)
            return empty, empty
        starts = self.ends - self.range_ms
        base = min(int(starts.min()), int(self.ts.min()) if self.ts.size else 0)
        top = max(int(self.ends.max()), int(self.ts.max()) if self.ts.size else 0)
        span = top - base + 1
        if span * (n + 1) < 2**62:
            series_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(self.offsets))
            keys = series_of * span + (self.ts - base)
            row = (np.arange(n, dtype=np.int64) * span)[:, None]
            lo = np.searchsorted(keys, row + (starts - base)[None, :], side="left")
            hi = np.searchsorted(keys, row + (self.ends - base)[None, :], side="right")
            return lo.astype(np.int64), hi.astype(np.int64)
        lo = np.empty((n, steps), dtype=np.int64)
        hi = np.empty((n, steps), dtype=np.int64)
        for i in range(n):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            seg = self.ts[a:b]
            lo[i] = a + np.searchsorted(seg, starts, side="left")
            hi[i] = a + np.searchsorted(seg, self.ends, side="right")
        return lo, hi


Block = VectorBlock | ScalarBlock | StringValue | RangeBlock


def any_row(mask: BoolArray) -> BoolArray:
    """Per step (column): is any series (row) set?"""
    return np.asarray(mask.any(axis=0), dtype=np.bool_)


def collapse(labels: list[Labels], values: ValueArray, present: BoolArray) -> VectorBlock:
    """Merge rows that carry the same labels; two of them present at one step is an error."""
    first: dict[Labels, int] = {}
    dup = False
    for i, lab in enumerate(labels):
        if lab in first:
            dup = True
        else:
            first[lab] = i
    if not dup:
        return VectorBlock(labels, values, present).nonempty()
    group = np.fromiter((first[lab] for lab in labels), dtype=np.int64, count=len(labels))
    uniq, inverse = np.unique(group, return_inverse=True)
    counts = np.zeros((uniq.shape[0], present.shape[1]), dtype=np.int64)
    np.add.at(counts, inverse, present.astype(np.int64))
    if (counts > 1).any():
        raise ExecutionError(SAME_LABELSET)
    chosen = np.full(counts.shape, -1, dtype=np.int64)
    rows = np.broadcast_to(np.arange(len(labels))[:, None], present.shape)
    np.maximum.at(chosen, inverse, np.where(present, rows, -1))
    out_present = chosen >= 0
    cols = np.broadcast_to(np.arange(present.shape[1])[None, :], chosen.shape)
    out_values = np.where(out_present, values[np.maximum(chosen, 0), cols], np.nan)
    out_labels = [labels[int(g)] for g in uniq]
    return VectorBlock(out_labels, out_values, out_present).nonempty()


def check_unique(labels: list[Labels]) -> None:
    """Prometheus rejects a range-function result whose series collide, whatever their steps."""
    if len(set(labels)) != len(labels):
        raise ExecutionError(SAME_LABELSET)


# --- public results -------------------------------------------------------------------------


format_value = float_repr  # the name the engine and its tests use


def _point(t_ms: int, value: float) -> list[Any]:
    return [t_ms / 1000, format_value(value)]


def _points(times: list[int], values: list[float]) -> list[list[Any]]:
    seconds = (np.asarray(times, dtype=np.int64) / 1000).tolist()
    return list(map(list, zip(seconds, map(format_value, values), strict=True)))


def _metric(labels: Labels) -> dict[str, str]:
    return dict(labels)


@dataclass(frozen=True, slots=True)
class Sample:
    labels: Labels
    t_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class Vector:
    """An instant vector, in Prometheus's result order."""

    samples: list[Sample] = field(default_factory=list)
    result_type = "vector"

    def to_json(self) -> dict[str, Any]:
        return {
            "resultType": "vector",
            "result": [
                {"metric": _metric(s.labels), "value": _point(s.t_ms, s.value)}
                for s in self.samples
            ],
        }


@dataclass(frozen=True, slots=True)
class SeriesPoints:
    labels: Labels
    timestamps: list[int]
    values: list[float]


@dataclass(frozen=True, slots=True)
class Matrix:
    """A range vector, or the result of a range query (series sorted by labels)."""

    series: list[SeriesPoints] = field(default_factory=list)
    result_type = "matrix"

    def to_json(self) -> dict[str, Any]:
        return {
            "resultType": "matrix",
            "result": [
                {"metric": _metric(s.labels), "values": _points(s.timestamps, s.values)}
                for s in self.series
            ],
        }


@dataclass(frozen=True, slots=True)
class Scalar:
    t_ms: int
    value: float
    result_type = "scalar"

    def to_json(self) -> dict[str, Any]:
        return {"resultType": "scalar", "result": _point(self.t_ms, self.value)}


@dataclass(frozen=True, slots=True)
class String:
    t_ms: int
    value: str
    result_type = "string"

    def to_json(self) -> dict[str, Any]:
        return {"resultType": "string", "result": [self.t_ms / 1000, self.value]}


Value = Vector | Matrix | Scalar | String
