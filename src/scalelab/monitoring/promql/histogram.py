"""histogram_quantile over classic histograms (cumulative `le` buckets).

Buckets of one histogram share every label but `le`; their bounds are fixed, so each
histogram is sorted by bound once and its quantile computed for all steps in one pass (steps
where only some buckets have a value fall back to a per-step pass). The arithmetic is
Prometheus's: coalesce equal bounds, force counts monotonic, interpolate linearly inside the
bucket that holds the rank, answer the upper bound of the second-last bucket past it.
"""

from __future__ import annotations

import math

import numpy as np

from ..model import METRIC_NAME, Labels, ValueArray, get
from .value import VectorBlock, any_row, collapse

BUCKET_LABEL = "le"


def parse_go_float(text: str) -> float | None:
    """Go's strconv.ParseFloat, close enough for bucket bounds; None when it would fail."""
    if not text or text != text.strip() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float.fromhex(text)
    except ValueError:
        return None


def _quantiles(qs: ValueArray, bounds: ValueArray, counts: ValueArray) -> ValueArray:
    """One histogram at several steps: bounds sorted ascending, counts (buckets x steps)."""
    steps = counts.shape[1]
    out = np.full(steps, math.nan)
    if bounds[-1] == math.inf:
        starts = np.flatnonzero(np.concatenate([[True], bounds[1:] != bounds[:-1]]))
        uniq = bounds[starts]
        summed = (
            np.add.reduceat(counts, starts, axis=0) if starts.shape[0] < bounds.shape[0] else counts
        )
        mono = np.where(np.isnan(summed), summed, np.fmax.accumulate(summed, axis=0))
        if uniq.shape[0] >= 2:
            out = _interpolate(qs, uniq, mono)
    out = np.where(qs < 0, -math.inf, out)
    return np.where(qs > 1, math.inf, out)


def _interpolate(qs: ValueArray, bounds: ValueArray, mono: ValueArray) -> ValueArray:
    last = bounds.shape[0] - 1
    observations = mono[-1]
    rank = qs * observations
    reached = mono[:-1] >= rank[None, :]
    b = np.where(reached.any(axis=0), np.argmax(reached, axis=0), last)
    cols = np.arange(mono.shape[1])
    prev = np.maximum(b - 1, 0)
    below = np.where(b > 0, mono[prev, cols], 0.0)
    start = np.where(b > 0, bounds[prev], 0.0)
    end = bounds[b]
    inside = start + (end - start) * ((rank - below) / (mono[b, cols] - below))
    result = np.where(b == last, bounds[last - 1], inside)
    result = np.where((b == 0) & (bounds[0] <= 0), bounds[0], result)
    return np.where(observations == 0, math.nan, result)


def histogram_quantile(qs: ValueArray, vec: VectorBlock) -> VectorBlock:
    groups: dict[Labels, list[tuple[int, float]]] = {}
    for i, labels in enumerate(vec.labels):
        bound = parse_go_float(get(labels, BUCKET_LABEL))
        if bound is None:
            continue
        signature = tuple((k, v) for k, v in labels if k != BUCKET_LABEL)
        groups.setdefault(signature, []).append((i, bound))
    steps = vec.values.shape[1]
    out_labels: list[Labels] = []
    out_values: list[ValueArray] = []
    out_present: list[np.ndarray] = []
    for signature, members in groups.items():
        rows = np.array([m[0] for m in members], dtype=np.int64)
        bounds = np.array([m[1] for m in members])
        order = np.argsort(bounds, kind="stable")
        rows, bounds = rows[order], bounds[order]
        counts, present = vec.values[rows], vec.present[rows]
        result = np.full(steps, math.nan)
        full = present.all(axis=0)
        if full.any():
            result[full] = _quantiles(qs[full], bounds, counts[:, full])
        partial = np.flatnonzero(present.any(axis=0) & ~full)
        for j in partial.tolist():
            have = present[:, j]
            result[j] = _quantiles(qs[j : j + 1], bounds[have], counts[have, j : j + 1])[0]
        out_labels.append(tuple((k, v) for k, v in signature if k != METRIC_NAME))
        out_values.append(result)
        out_present.append(any_row(present))
    if not out_labels:
        return VectorBlock.empty(steps)
    return collapse(out_labels, np.stack(out_values), np.stack(out_present))
