"""Downsampling: per-window aggregates against numpy, and counters across resets and blocks."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring import downsample as ds
from scalelab.monitoring.model import STALE_NAN, TimestampArray, ValueArray

RESOLUTIONS = [1_000, 7_000, ds.RESOLUTION_1M]


def true_increase(v: ValueArray) -> float:
    """What rate() sees over raw samples: a drop means the counter restarted from zero."""
    d = np.diff(v)
    return float(np.where(d >= 0, d, v[1:]).sum())


raw_series = st.lists(
    st.tuples(st.integers(-200_000, 400_000), st.floats(-1e6, 1e6, allow_nan=False)),
    min_size=1,
    max_size=200,
    unique_by=lambda p: p[0],
).map(lambda ps: sorted(ps))


@settings(max_examples=150)
@given(raw_series, st.sampled_from(RESOLUTIONS))
def test_aggregates_equal_numpy_per_window(pairs: list[tuple[int, float]], res: int) -> None:
    t = np.array([p[0] for p in pairs], dtype=np.int64)
    v = np.array([p[1] for p in pairs])
    a = ds.downsample(t, v, res)
    windows = sorted({int(x) // res for x in t})
    assert a.timestamps.tolist() == [w * res + res - 1 for w in windows]
    for i, w in enumerate(windows):
        part = v[(t // res) == w]
        assert a.count[i] == part.size
        assert a.min[i] == part.min() and a.max[i] == part.max()
        assert a.sum[i] == pytest.approx(part.sum(), rel=1e-9, abs=1e-6)
    assert a.resolution_ms == res and len(a) == len(windows)


counters = st.lists(
    st.tuples(st.integers(1, 20_000), st.integers(0, 50), st.booleans()), min_size=1, max_size=300
)


def make_counter(steps: list[tuple[int, int, bool]]) -> tuple[TimestampArray, ValueArray]:
    """A counter that grows by each step and restarts from a small value when the flag is set."""
    t, v, now, value = [], [], 0, 0.0
    for gap, inc, reset in steps:
        now += gap
        value = float(inc) if reset else value + inc
        t.append(now)
        v.append(value)
    return np.array(t, dtype=np.int64), np.array(v)


@settings(max_examples=150)
@given(counters, st.sampled_from(RESOLUTIONS))
def test_counter_aggregate_preserves_increases_across_resets(
    steps: list[tuple[int, int, bool]], res: int
) -> None:
    t, v = make_counter(steps)
    a = ds.downsample(t, v, res)
    mt, mv, last = ds.apply_counter_resets(a.counter_timestamps, a.counter_values)
    assert mv[-1] - mv[0] == pytest.approx(true_increase(v))
    assert last == v[-1] and mv[0] == v[0] and a.counter_values[0] == v[0]
    # one sample per window, at its end, holding the monotonic counter at the window's last sample
    mono = v[0] + np.concatenate(([0.0], np.cumsum(np.where(np.diff(v) >= 0, np.diff(v), v[1:]))))
    w = t // res
    ends = np.flatnonzero(np.append(w[1:] != w[:-1], True))
    window_values = mv[-len(ends) :]
    assert mt[-len(ends) :].tolist() == (w[ends] * res + res - 1).tolist()
    np.testing.assert_allclose(window_values, mono[ends])
    assert np.all(np.diff(mv) >= 0)


@settings(max_examples=100)
@given(counters, st.integers(0, 299), st.booleans())
def test_counter_aggregates_of_consecutive_blocks_join(
    steps: list[tuple[int, int, bool]], cut: int, reset_at_cut: bool
) -> None:
    """Concatenated counter aggregates of two blocks still give the true increase."""
    res = ds.RESOLUTION_1M
    t, v = make_counter(steps)
    boundary = ((int(t[min(cut, t.size - 1)]) // res) + 1) * res  # blocks are window-aligned
    j = int(np.searchsorted(t, boundary))
    if reset_at_cut and j < len(steps):
        steps[j] = (steps[j][0], 0, True)  # the counter restarts where the blocks meet
        t, v = make_counter(steps)
    first, second = t < boundary, t >= boundary
    parts = [ds.downsample(t[m], v[m], res) for m in (first, second) if m.any()]
    ct = np.concatenate([p.counter_timestamps for p in parts])
    cv = np.concatenate([p.counter_values for p in parts])
    _, mv, last = ds.apply_counter_resets(ct, cv)
    assert mv[-1] - mv[0] == pytest.approx(true_increase(v)) and last == v[-1]


@settings(max_examples=100)
@given(raw_series)
def test_hour_from_minutes_equals_hour_from_raw(pairs: list[tuple[int, float]]) -> None:
    t = np.array([p[0] for p in pairs], dtype=np.int64) * 100  # spread over ~16 hours
    v = np.array([p[1] for p in pairs])
    direct = ds.downsample(t, v, ds.RESOLUTION_1H)
    twice = ds.downsample_aggregates(ds.downsample(t, v, ds.RESOLUTION_1M), ds.RESOLUTION_1H)
    assert twice.resolution_ms == ds.RESOLUTION_1H
    np.testing.assert_array_equal(twice.timestamps, direct.timestamps)
    for field in ("count", "min", "max"):
        np.testing.assert_array_equal(getattr(twice, field), getattr(direct, field))
    np.testing.assert_allclose(twice.sum, direct.sum, rtol=1e-9, atol=1e-6)
    c = np.abs(v)  # as a counter (non-negative), the counter aggregate must agree too
    direct = ds.downsample(t, c, ds.RESOLUTION_1H)
    twice = ds.downsample_aggregates(ds.downsample(t, c, ds.RESOLUTION_1M), ds.RESOLUTION_1H)
    np.testing.assert_array_equal(twice.counter_timestamps, direct.counter_timestamps)
    np.testing.assert_allclose(twice.counter_values, direct.counter_values, rtol=1e-9)


def test_counter_edges_and_marker() -> None:
    t = np.array([1_000, 20_000, 59_999, 61_000, 150_000])
    v = np.array([5.0, 7.0, 2.0, 4.0, 1.0])  # resets at 59_999 and 150_000
    a = ds.downsample(t, v, 60_000)
    assert a.timestamps.tolist() == [59_999, 119_999, 179_999]
    assert a.count.tolist() == [3, 1, 1] and a.sum.tolist() == [14, 4, 1]
    assert a.min.tolist() == [2, 4, 1] and a.max.tolist() == [7, 4, 1]
    # first raw sample, monotonic value at each window end, then the last raw value again
    assert a.counter_timestamps.tolist() == [1_000, 59_999, 119_999, 179_999, 179_999]
    assert a.counter_values.tolist() == [5.0, 9.0, 11.0, 12.0, 1.0]


def test_nans_and_staleness_markers_are_dropped() -> None:
    t = np.array([0, 10, 20, 30])
    v = np.array([1.0, STALE_NAN, float("nan"), 3.0])
    a = ds.downsample(t, v, 1000)
    assert a.count.tolist() == [2] and a.sum.tolist() == [4.0] and a.max.tolist() == [3.0]
    empty = ds.downsample(t[1:3], v[1:3], 1000)
    assert len(empty) == 0 and empty.counter_values.size == 0


def test_unsorted_and_duplicate_timestamps() -> None:
    a = ds.downsample(np.array([30, 10, 10, 20]), np.array([3.0, 1.0, 9.0, 2.0]), 1000)
    assert a.count.tolist() == [3] and a.sum.tolist() == [6.0]  # the first of equal times wins


def test_downsample_chunks_decodes_with_the_given_codec() -> None:
    def dec(data: bytes) -> tuple[TimestampArray, ValueArray]:
        n = struct.unpack_from("<I", data)[0]
        return np.frombuffer(data, "<i8", n, 4), np.frombuffer(data, "<f8", n, 4 + 8 * n)

    def enc(t: list[int], v: list[float]) -> bytes:
        return struct.pack(f"<I{len(t)}q{len(v)}d", len(t), *t, *v)

    a = ds.downsample_chunks([enc([0, 999], [1.0, 2.0]), enc([1000], [5.0])], 1000, dec)
    assert a.timestamps.tolist() == [999, 1999] and a.sum.tolist() == [3.0, 5.0]
    assert len(ds.downsample_chunks([], 1000, dec)) == 0


def test_bad_resolutions() -> None:
    t, v = np.array([1]), np.array([1.0])
    with pytest.raises(ValueError):
        ds.downsample(t, v, 0)
    with pytest.raises(ValueError):
        ds.downsample(t, np.array([1.0, 2.0]), 1000)
    with pytest.raises(ValueError, match="multiple"):
        ds.downsample_aggregates(ds.downsample(t, v, 60_000), 90_000)
    assert len(ds.downsample_aggregates(ds.Aggregates.empty(60_000), 3_600_000)) == 0


def test_infinities_of_both_signs_aggregate_to_nan_without_warnings() -> None:
    agg = ds.downsample(
        np.array([0, 1000, 2000, 3000]), np.array([1.0, np.inf, -np.inf, 2.0]), 60_000
    )
    assert np.isnan(agg.sum[0]) and agg.min[0] == -np.inf and agg.max[0] == np.inf
