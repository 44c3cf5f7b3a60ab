"""Downsampling: the book's 1-minute and 1-hour resolutions for old data.

Keeping min, max, sum and count per window (instead of one averaged value) keeps every
later aggregation exact: an average over a day is sum/count of the windows, not an average of
averages, and max_over_time still sees spikes. Windows are aligned to multiples of the
resolution (window k covers [k*r, (k+1)*r)) and each aggregate is timestamped at the window's
last millisecond, so a value never stands for data after its own timestamp.

Counters get a fifth aggregate, because sum/min/max lose their resets. The counter aggregate is
the series made monotonic (each reset adds the new value, as rate() does), sampled at each
window's end, with two extra samples that keep the raw values at its edges:

- first, the first raw sample itself (t0, v0), unless it already falls on a window end;
- last, the last window end again (the same timestamp twice) carrying the last raw value.

Monotonic values start at v0, so within one block increases are differences of consecutive
samples; across blocks the raw edge values tell whether the counter was reset in between.
`apply_counter_resets` reads any concatenation of such arrays (and of raw samples) back into
one monotonic series. NaNs, the staleness marker included, carry no value and are dropped.

The functions above the writer path are pure (arrays in, arrays out); `downsample_block` reads
a block and writes its downsampled copy through block.py's writer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt

from scalelab.monitoring.block import (
    Block,
    BlockMeta,
    Encode,
    PendingChunk,
    codec,
    write_chunks,
)
from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import Labels, TimestampArray, ValueArray, format_labels
from scalelab.monitoring.segments import AGGREGATE_KINDS, DEFAULT_SEGMENT_SIZE, ChunkKind, ChunkMeta

RESOLUTION_RAW = 0
RESOLUTION_1M = 60_000
RESOLUTION_1H = 3_600_000

Decode = Callable[[bytes], tuple[TimestampArray, ValueArray]]

# +Inf and -Inf in one window make inf - inf (counter increases) and inf + -inf (sums): NaN is
# the right aggregate there, and numpy's warning about it is not an error.
_INF_ARITHMETIC = np.errstate(invalid="ignore", over="ignore")


@dataclass(frozen=True, slots=True)
class Aggregates:
    """One series' non-empty windows at one resolution, oldest first."""

    resolution_ms: int
    timestamps: TimestampArray  # each window's last millisecond
    count: ValueArray
    sum: ValueArray
    min: ValueArray
    max: ValueArray
    counter_timestamps: TimestampArray  # see the module docstring for the two edge samples
    counter_values: ValueArray

    def __len__(self) -> int:
        return len(self.timestamps)

    @classmethod
    def empty(cls, resolution_ms: int) -> Aggregates:
        t = np.empty(0, dtype=np.int64)
        v = np.empty(0, dtype=np.float64)
        return cls(resolution_ms, t, v, v, v, v, t, v)


def window_end(t: TimestampArray, resolution_ms: int) -> TimestampArray:
    """The last millisecond of the window each timestamp falls in."""
    ends: TimestampArray = (t // resolution_ms) * resolution_ms + (resolution_ms - 1)
    return ends


def _check_resolution(resolution_ms: int) -> None:
    if resolution_ms <= 0:
        raise ValueError(f"resolution must be positive, not {resolution_ms} ms")


def _clean(t: TimestampArray, v: ValueArray) -> tuple[TimestampArray, ValueArray]:
    """Drop NaNs; sort by time and keep the first of equal timestamps if needed."""
    t = np.asarray(t, dtype=np.int64)
    v = np.asarray(v, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError("timestamps and values must be 1-D arrays of the same length")
    keep = ~np.isnan(v)
    if not keep.all():
        t, v = t[keep], v[keep]
    if t.size > 1 and np.any(t[1:] <= t[:-1]):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        first = np.concatenate(([True], t[1:] != t[:-1]))
        t, v = t[first], v[first]
    return t, v


def _windows(t: TimestampArray, resolution_ms: int) -> npt.NDArray[np.intp]:
    """Index of the first sample of each window (t sorted)."""
    w = t // resolution_ms
    starts: npt.NDArray[np.intp] = np.concatenate(([0], np.flatnonzero(w[1:] != w[:-1]) + 1))
    return starts


def _counter_series(
    t: TimestampArray, mono: ValueArray, last_raw: float, resolution_ms: int
) -> tuple[TimestampArray, ValueArray]:
    """The counter aggregate from a monotonic series whose first value is the raw first."""
    starts = _windows(t, resolution_ms)
    ends = np.append(starts[1:], t.size) - 1
    ct = window_end(t[starts], resolution_ms)
    cv = mono[ends]
    if t[0] < ct[0]:
        ct = np.concatenate(([t[0]], ct))
        cv = np.concatenate(([mono[0]], cv))
    ct = np.append(ct, ct[-1])
    cv = np.append(cv, last_raw)
    return ct, cv


def _monotonic(v: ValueArray) -> ValueArray:
    """v with resets undone: a drop counts the new value as the increase, as rate() does."""
    if v.size == 0:
        return v
    d = np.diff(v)
    inc = np.where(d >= 0, d, v[1:])
    mono: ValueArray = np.concatenate(([v[0]], v[0] + np.cumsum(inc)))
    return mono


@_INF_ARITHMETIC
def downsample(timestamps: TimestampArray, values: ValueArray, resolution_ms: int) -> Aggregates:
    """Aggregate raw samples into windows of resolution_ms."""
    _check_resolution(resolution_ms)
    t, v = _clean(timestamps, values)
    if t.size == 0:
        return Aggregates.empty(resolution_ms)
    starts = _windows(t, resolution_ms)
    count = np.diff(np.append(starts, t.size)).astype(np.float64)
    ct, cv = _counter_series(t, _monotonic(v), float(v[-1]), resolution_ms)
    return Aggregates(
        resolution_ms,
        window_end(t[starts], resolution_ms),
        count,
        np.add.reduceat(v, starts),
        np.minimum.reduceat(v, starts),
        np.maximum.reduceat(v, starts),
        ct,
        cv,
    )


def downsample_chunks(chunks: Iterable[bytes], resolution_ms: int, decode: Decode) -> Aggregates:
    """Aggregate a series given as raw chunks (in time order), decoded with decode."""
    parts = [decode(c) for c in chunks]
    if not parts:
        return Aggregates.empty(resolution_ms)
    t = np.concatenate([p[0] for p in parts])
    v = np.concatenate([p[1] for p in parts])
    return downsample(t, v, resolution_ms)


@_INF_ARITHMETIC
def apply_counter_resets(
    timestamps: TimestampArray, values: ValueArray
) -> tuple[TimestampArray, ValueArray, float]:
    """One monotonic counter series from raw samples and/or counter aggregates, in order.

    A sample at the same timestamp as the one before is a raw-value marker: it is not output,
    but the next sample's increase is measured from it. Samples that go back in time (from
    overlapping chunks) are skipped. Returns (timestamps, monotonic values, last raw value).
    """
    t = np.asarray(timestamps, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    t, v = t[keep], v[keep]
    if t.size == 0:
        return t, v, float("nan")
    before = np.maximum.accumulate(t)
    forward = np.concatenate(([True], t[1:] >= before[:-1]))
    t, v = t[forward], v[forward]
    prev = np.concatenate(([v[0]], v[:-1]))
    inc = np.where(v >= prev, v - prev, v)
    inc[0] = 0.0
    normal = np.concatenate(([True], t[1:] != t[:-1]))
    mono: ValueArray = v[0] + np.cumsum(inc[normal])
    out_t: TimestampArray = t[normal]
    return out_t, mono, float(v[-1])


@_INF_ARITHMETIC
def downsample_aggregates(aggr: Aggregates, resolution_ms: int) -> Aggregates:
    """Aggregate already-downsampled windows into coarser ones (1m -> 1h)."""
    _check_resolution(resolution_ms)
    if aggr.resolution_ms <= 0 or resolution_ms % aggr.resolution_ms:
        raise ValueError(
            f"{resolution_ms} ms is not a multiple of the input's {aggr.resolution_ms} ms"
        )
    if len(aggr) == 0:
        return Aggregates.empty(resolution_ms)
    t = aggr.timestamps
    starts = _windows(t, resolution_ms)
    mt, mv, last_raw = apply_counter_resets(aggr.counter_timestamps, aggr.counter_values)
    if mt.size:
        ct, cv = _counter_series(mt, mv, last_raw, resolution_ms)
    else:
        ct, cv = mt, mv
    return Aggregates(
        resolution_ms,
        window_end(t[starts], resolution_ms),
        np.add.reduceat(aggr.count, starts),
        np.add.reduceat(aggr.sum, starts),
        np.minimum.reduceat(aggr.min, starts),
        np.maximum.reduceat(aggr.max, starts),
        ct,
        cv,
    )


# --- the block writer path ------------------------------------------------------------------


def _split(t: TimestampArray, size: int) -> list[tuple[int, int]]:
    """Chunk boundaries of at most ~size samples that never part equal timestamps."""
    bounds, start = [], 0
    while start < t.size:
        end = min(start + size, t.size)
        while end < t.size and t[end] == t[end - 1]:
            end += 1
        bounds.append((start, end))
        start = end
    return bounds


def _source_aggregates(block: Block, labels: Labels, chunks: list[ChunkMeta]) -> Aggregates:
    """A downsampled block's series read back into Aggregates."""
    lo, hi = block.meta.min_time, block.meta.max_time
    arrays: dict[ChunkKind, tuple[TimestampArray, ValueArray]] = {}
    for kind in AGGREGATE_KINDS:
        mine = [c for c in chunks if c.kind is kind]
        empty = (np.empty(0, np.int64), np.empty(0, np.float64))
        arrays[kind] = block.read_samples(labels, mine, lo, hi) if mine else empty
    t = arrays[ChunkKind.COUNT][0]
    for kind in (ChunkKind.SUM, ChunkKind.MIN, ChunkKind.MAX):
        if not np.array_equal(arrays[kind][0], t):
            raise StorageError(
                f"block {block.meta.id}: series {format_labels(labels)}: aggregates are not aligned"
            )
    return Aggregates(
        block.meta.resolution_ms,
        t,
        arrays[ChunkKind.COUNT][1],
        arrays[ChunkKind.SUM][1],
        arrays[ChunkKind.MIN][1],
        arrays[ChunkKind.MAX][1],
        *arrays[ChunkKind.COUNTER],
    )


def downsample_block(
    source: Block,
    out_dir: Path,
    resolution_ms: int,
    *,
    encode: Encode | None = None,
    block_id: str | None = None,
    chunk_samples: int = 120,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> BlockMeta:
    """Write source's data at a coarser resolution (raw -> 1m, 1m -> 1h) as a new block."""
    have = source.meta.resolution_ms
    if resolution_ms <= have or (have and resolution_ms % have):
        raise ValueError(f"cannot downsample {have} ms data to {resolution_ms} ms")
    enc = encode if encode is not None else cast(Encode, codec("encode"))

    def series() -> Iterator[tuple[Labels, list[PendingChunk]]]:
        for labels, chunks in source.iter_series():
            if have:
                aggr = downsample_aggregates(
                    _source_aggregates(source, labels, chunks), resolution_ms
                )
            else:
                t, v = source.read_samples(
                    labels, chunks, source.meta.min_time, source.meta.max_time
                )
                aggr = downsample(t, v, resolution_ms)
            out: list[PendingChunk] = []
            for kind, t, v in (
                (ChunkKind.COUNT, aggr.timestamps, aggr.count),
                (ChunkKind.SUM, aggr.timestamps, aggr.sum),
                (ChunkKind.MIN, aggr.timestamps, aggr.min),
                (ChunkKind.MAX, aggr.timestamps, aggr.max),
                (ChunkKind.COUNTER, aggr.counter_timestamps, aggr.counter_values),
            ):
                for a, b in _split(t, chunk_samples):
                    data = enc(t[a:b], v[a:b])
                    out.append((kind, int(t[a]), int(t[b - 1]), b - a, data))
            yield labels, out

    lo, hi = source.meta.min_time, source.meta.max_time
    time_range = (lo - lo % resolution_ms, hi - hi % resolution_ms + resolution_ms - 1)
    return write_chunks(
        out_dir,
        series(),
        resolution_ms=resolution_ms,
        block_id=block_id,
        time_range=time_range,
        level=source.meta.level,
        sources=source.meta.sources,
        parents=[source.meta.id],
        segment_size=segment_size,
    )
