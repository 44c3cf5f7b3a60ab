"""Range-vector windows and the reductions over them.

A range block holds its series' samples back to back; `Windows` finds, for every series and
step, the slice [lo, hi) its window covers. Reductions that need every sample of a window
(sum, quantile, regression ...) get the windows in batches, padded to the longest one and laid
out column-per-window so that a loop over sample positions touches contiguous memory.

Where Prometheus's arithmetic is order-sensitive we follow it: compensated (Neumaier) sums
and running means, Welford's variance. Batches of finite values take an equivalent vectorized
path (a pairwise sum, a shifted two-pass variance) that agrees to a few ulps and exactly
where it matters (0 for a constant window); batches with NaN or Inf take the sequential one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..model import ValueArray
from .value import BoolArray, IntArray, RangeBlock

_CELLS_PER_BATCH = 1 << 21


@dataclass(slots=True)
class Batch:
    """Some windows, one per column: values[k, j] is sample k of window j if mask[k, j]."""

    ids: IntArray  # flat window ids: series * steps + step
    values: ValueArray
    mask: BoolArray
    index: IntArray
    source: RangeBlock

    def times(self) -> IntArray:
        result: IntArray = self.source.ts[self.index]
        return result

    def counts(self) -> ValueArray:
        result: ValueArray = self.mask.sum(axis=0).astype(np.float64)
        return result

    def finite(self) -> bool:
        # Padding repeats a window's first sample, so this speaks of the windows' own values.
        return bool(np.isfinite(self.values).all())


class Windows:
    """Where each (series, step) window lies in a range block's sample arrays."""

    def __init__(self, rb: RangeBlock) -> None:
        self.rb = rb
        self.lo, self.hi = rb.windows()
        self.count = self.hi - self.lo
        last = max(rb.ts.shape[0] - 1, 0)
        self.first = np.minimum(self.lo, last)
        self.last = np.clip(self.hi - 1, 0, last)

    def segment_starts(self) -> BoolArray:
        starts = np.zeros(self.rb.ts.shape[0], dtype=bool)
        heads = self.rb.offsets[:-1]
        starts[heads[heads < starts.shape[0]]] = True
        return starts

    def count_pairs(self, flags: BoolArray) -> IntArray:
        """Per window: how many adjacent sample pairs inside it have flags set (flags[k]
        speaks of samples k-1 and k)."""
        total = np.cumsum(flags & ~self.segment_starts(), dtype=np.int64)
        if total.shape[0] == 0:
            return np.zeros_like(self.count)
        result: IntArray = np.where(self.count > 0, total[self.last] - total[self.first], 0)
        return result

    def batches(self, min_count: int) -> Iterator[Batch]:
        """The windows holding at least min_count samples, a bounded number at a time."""
        counts = self.count.ravel()
        chosen = np.flatnonzero(counts >= max(min_count, 1))
        if chosen.shape[0] == 0:
            return
        chosen = chosen[np.argsort(counts[chosen], kind="stable")]
        sizes = counts[chosen]
        lo = self.lo.ravel()
        i = 0
        while i < chosen.shape[0]:
            end = min(chosen.shape[0], i + max(1, _CELLS_PER_BATCH // int(sizes[i])))
            while end > i + 1 and (end - i) * int(sizes[end - 1]) > _CELLS_PER_BATCH:
                end = i + max(1, _CELLS_PER_BATCH // int(sizes[end - 1]))
            ids = chosen[i:end]
            rows = np.arange(int(sizes[end - 1]))[:, None]
            mask = rows < counts[ids][None, :]
            start = lo[ids][None, :]
            index = np.where(mask, start + rows, start)
            yield Batch(ids, self.rb.vals[index], mask, index, self.rb)
            i = end


def kahan_add(
    inc: ValueArray, total: ValueArray, comp: ValueArray
) -> tuple[ValueArray, ValueArray]:
    """One step of Neumaier's compensated sum, as Prometheus's kahanSumInc."""
    t = total + inc
    comp = comp + np.where(np.abs(total) >= np.abs(inc), (total - t) + inc, (inc - t) + total)
    return t, comp


def _masked_sum(b: Batch) -> ValueArray:
    result: ValueArray = np.where(b.mask, b.values, 0.0).sum(axis=0)
    return result


def window_sum(b: Batch) -> ValueArray:
    if b.finite():
        fast = _masked_sum(b)
        if np.isfinite(fast).all():
            return fast
    width = b.values.shape[1]
    total, comp = np.zeros(width), np.zeros(width)
    for x, live in zip(b.values, b.mask, strict=True):
        new_total, new_comp = kahan_add(x, total, comp)
        total, comp = np.where(live, new_total, total), np.where(live, new_comp, comp)
    result: ValueArray = np.where(np.isinf(total), total, total + comp)
    return result


def window_avg(b: Batch) -> ValueArray:
    """Prometheus's compensated running mean (it survives sums that overflow)."""
    if b.finite():
        fast = _masked_sum(b)
        if np.isfinite(fast).all():
            return fast / b.counts()
    width = b.values.shape[1]
    mean, comp, count = np.zeros(width), np.zeros(width), np.zeros(width)
    for x, live in zip(b.values, b.mask, strict=True):
        count = count + live
        stuck = np.isinf(mean) & (
            (np.isinf(x) & ((mean > 0) == (x > 0))) | (~np.isinf(x) & ~np.isnan(x))
        )
        step = live & ~stuck
        new_mean, new_comp = kahan_add(x / count - mean / count, mean, comp)
        mean, comp = np.where(step, new_mean, mean), np.where(step, new_comp, comp)
    result: ValueArray = np.where(np.isinf(mean), mean, mean + comp)
    return result


def window_min(b: Batch) -> ValueArray:
    result: ValueArray = np.fmin.reduce(np.where(b.mask, b.values, np.nan), axis=0)
    return result


def window_max(b: Batch) -> ValueArray:
    result: ValueArray = np.fmax.reduce(np.where(b.mask, b.values, np.nan), axis=0)
    return result


def window_variance(b: Batch) -> ValueArray:
    """Population variance; Welford's compensated update when values are not all finite."""
    if b.finite():
        # Shifting by the first sample keeps large, close values exact.
        shifted = np.where(b.mask, b.values - b.values[0][None, :], 0.0)
        n = b.counts()
        mean = shifted.sum(axis=0) / n
        dev = np.where(b.mask, shifted - mean[None, :], 0.0)
        fast: ValueArray = (dev * dev).sum(axis=0) / n
        constant = (shifted == 0.0).all(axis=0)
        return np.where(constant, 0.0, fast)
    width = b.values.shape[1]
    zeros = np.zeros(width)
    count, mean, c_mean, aux, c_aux = zeros, zeros, zeros, zeros, zeros
    for x, live in zip(b.values, b.mask, strict=True):
        new_count = count + live
        delta = x - (mean + c_mean)
        new_mean, new_c_mean = kahan_add(delta / np.maximum(new_count, 1), mean, c_mean)
        new_aux, new_c_aux = kahan_add(delta * (x - (new_mean + new_c_mean)), aux, c_aux)
        mean, c_mean = np.where(live, new_mean, mean), np.where(live, new_c_mean, c_mean)
        aux, c_aux = np.where(live, new_aux, aux), np.where(live, new_c_aux, c_aux)
        count = new_count
    result: ValueArray = (aux + c_aux) / count
    return result


def window_stddev(b: Batch) -> ValueArray:
    result: ValueArray = np.sqrt(window_variance(b))
    return result


def window_quantile(qs: ValueArray, b: Batch) -> ValueArray:
    """Prometheus's quantile: sort (NaN first), interpolate between the closest ranks."""
    v, m = b.values, b.mask
    nan = np.isnan(v)
    order = np.lexsort((np.where(nan, 0.0, v), ~nan, ~m), axis=0)
    ordered = np.take_along_axis(v, order, axis=0)
    n = b.counts()
    rank = qs * (n - 1)
    lower = np.maximum(0.0, np.floor(rank))
    upper = np.minimum(n - 1, lower + 1)
    weight = rank - np.floor(rank)
    cols = np.arange(v.shape[1])
    top = v.shape[0] - 1
    lo_i = np.clip(np.nan_to_num(lower), 0, top).astype(np.int64)
    hi_i = np.clip(np.nan_to_num(upper), 0, top).astype(np.int64)
    result = ordered[lo_i, cols] * (1 - weight) + ordered[hi_i, cols] * weight
    result = np.where(qs < 0, -math.inf, result)
    out: ValueArray = np.where(qs > 1, math.inf, result)
    return out


def regression(b: Batch, intercept_ms: IntArray) -> tuple[ValueArray, ValueArray]:
    """Least-squares slope (per second) and value at intercept_ms of each window, with
    Prometheus's compensated sums, so that ill-conditioned windows round the same way."""
    width = b.values.shape[1]
    x_all = (b.times() - intercept_ms[None, :]) / 1e3
    sums = [(np.zeros(width), np.zeros(width)) for _ in range(4)]
    for x, y, live in zip(x_all, b.values, b.mask, strict=True):
        for i, inc in enumerate((x, y, x * y, x * x)):
            total, comp = sums[i]
            new_total, new_comp = kahan_add(inc, total, comp)
            sums[i] = (np.where(live, new_total, total), np.where(live, new_comp, comp))
    sum_x, sum_y, sum_xy, sum_x2 = (total + comp for total, comp in sums)
    n = b.counts()
    cov_xy = sum_xy - sum_x * sum_y / n
    var_x = sum_x2 - sum_x * sum_x / n
    slope = cov_xy / var_x
    intercept = sum_y / n - slope * sum_x / n
    first = b.values[0]
    constant = np.where(b.mask, b.values == first[None, :], True).all(axis=0)
    inf = np.isinf(first)
    slope = np.where(constant, np.where(inf, np.nan, 0.0), slope)
    intercept = np.where(constant, np.where(inf, np.nan, first), intercept)
    return slope, intercept


def holt_winters(b: Batch, sf: ValueArray, tf: ValueArray) -> ValueArray:
    """Double exponential smoothing, Prometheus's recurrence, for windows of >= 2 samples."""
    v, m = b.values, b.mask
    s0 = np.zeros(v.shape[1])
    s1 = v[0]
    trend = v[1] - v[0]
    for i in range(1, v.shape[0]):
        live = m[i]
        new_trend = trend if i == 1 else tf * (s1 - s0) + (1 - tf) * trend
        smoothed = sf * v[i] + (1 - sf) * (s1 + new_trend)
        s0 = np.where(live, s1, s0)
        s1 = np.where(live, smoothed, s1)
        trend = np.where(live, new_trend, trend)
    result: ValueArray = s1
    return result
