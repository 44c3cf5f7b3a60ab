"""Functions over range vectors: rate and friends, the *_over_time family, deriv, holt_winters.

A range vector is its series' samples plus, per step, a window [end - range, end]; the
windows of every series and step are found with one searchsorted. Functions that need only a
window's ends or a count (rate, irate, changes, last_over_time ...) index the sample arrays
directly, with cumulative sums for per-window totals; the others reduce batches of padded
windows (`windows.py`).

Every result drops the metric name except last_over_time's, and two results with one label
set are an error even at different steps, as in Prometheus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ExecutionError
from ..model import METRIC_NAME, Labels, MatchType, ValueArray, labels_of
from .ast import Call, Expr, MatrixSelector, ValueType, VectorSelector, unwrap
from .value import Block, BoolArray, IntArray, RangeBlock, VectorBlock, any_row, check_unique
from .windows import (
    Batch,
    Windows,
    holt_winters,
    regression,
    window_avg,
    window_max,
    window_min,
    window_quantile,
    window_stddev,
    window_sum,
    window_variance,
)

if TYPE_CHECKING:
    from .engine import Evaluator

Handler = Callable[["Evaluator", Call, IntArray], Block]


def _drop_name(labels: Labels) -> Labels:
    return tuple((k, v) for k, v in labels if k != METRIC_NAME)


def _finish(
    rb: RangeBlock, values: ValueArray, present: BoolArray, keep_name: bool = False
) -> VectorBlock:
    labels = rb.labels if keep_name else [_drop_name(lab) for lab in rb.labels]
    block = VectorBlock(labels, np.where(present, values, np.nan), present).nonempty()
    check_unique(block.labels)
    return block


def _scalars(ev: Evaluator, node: Call, steps: IntArray) -> dict[int, ValueArray]:
    """The scalar arguments, evaluated at every step."""
    return {
        i: ev.eval_scalar(arg, steps).values
        for i, arg in enumerate(node.args)
        if arg.type is ValueType.SCALAR
    }


WindowFn = Callable[[Batch], ValueArray]


def _apply(w: Windows, min_count: int, fn: WindowFn, ev: Evaluator) -> ValueArray:
    """fn over every window with at least min_count samples; NaN elsewhere."""
    out = np.full(w.count.size, np.nan)
    for batch in w.batches(min_count):
        ev.check_deadline()
        out[batch.ids] = fn(batch)
    return out.reshape(w.count.shape)


# --- rate, increase, delta, irate, idelta ---------------------------------------------------


def _reset_correction(w: Windows) -> ValueArray:
    """Per window: the sum of the values before each counter reset inside it."""
    vals = w.rb.vals
    drops = np.zeros(vals.shape[0])
    if vals.shape[0] > 1:
        drops[1:] = np.where(vals[1:] < vals[:-1], vals[:-1], 0.0)
    drops[w.segment_starts()] = 0.0
    infinite = np.isinf(drops)
    finite = np.cumsum(np.where(infinite, 0.0, drops))
    inf_count = np.cumsum(infinite, dtype=np.int64)
    if finite.shape[0] == 0:
        return np.zeros(w.count.shape)
    total = finite[w.last] - finite[w.first]
    return np.where(inf_count[w.last] > inf_count[w.first], math.inf, total)


def _extrapolated(counter: bool, per_second: bool) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        rb = ev.eval_range(node.args[0], steps)
        w = Windows(rb)
        if rb.ts.shape[0] == 0:
            return VectorBlock.empty(steps.shape[0])
        ok = w.count >= 2
        t0, t1 = rb.ts[w.first], rb.ts[w.last]
        v0, v1 = rb.vals[w.first], rb.vals[w.last]
        result = v1 - v0
        if counter:
            result = result + _reset_correction(w)
        to_start = (t0 - (rb.ends - rb.range_ms)[None, :]) / 1000
        to_end = (rb.ends[None, :] - t1) / 1000
        sampled = (t1 - t0) / 1000
        average = sampled / (w.count - 1)
        if counter:
            to_zero = sampled * (v0 / result)
            to_start = np.where((result > 0) & (v0 >= 0) & (to_zero < to_start), to_zero, to_start)
        threshold = average * 1.1
        interval = sampled + np.where(to_start < threshold, to_start, average / 2)
        interval = interval + np.where(to_end < threshold, to_end, average / 2)
        result = result * (interval / sampled)
        if per_second:
            result = result / (rb.range_ms / 1000)
        return _finish(rb, result, ok)

    return handler


def _instant_delta(per_second: bool) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        rb = ev.eval_range(node.args[0], steps)
        w = Windows(rb)
        if rb.ts.shape[0] == 0:
            return VectorBlock.empty(steps.shape[0])
        prev = np.maximum(w.last - 1, 0)
        last_v, prev_v = rb.vals[w.last], rb.vals[prev]
        interval = rb.ts[w.last] - rb.ts[prev]
        ok = (w.count >= 2) & (interval != 0)
        if per_second:
            result = np.where(last_v < prev_v, last_v, last_v - prev_v) / (interval / 1000)
        else:
            result = last_v - prev_v
        return _finish(rb, result, ok)

    return handler


def _pair_counter(changes: bool) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        rb = ev.eval_range(node.args[0], steps)
        w = Windows(rb)
        vals = rb.vals
        flags = np.zeros(vals.shape[0], dtype=bool)
        if vals.shape[0] > 1:
            cur, prev = vals[1:], vals[:-1]
            if changes:
                flags[1:] = (cur != prev) & ~(np.isnan(cur) & np.isnan(prev))
            else:
                flags[1:] = cur < prev
        return _finish(rb, w.count_pairs(flags).astype(np.float64), w.count >= 1)

    return handler


# --- *_over_time -----------------------------------------------------------------------------


def _over_time(fn: WindowFn) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        rb = ev.eval_range(node.args[0], steps)
        w = Windows(rb)
        return _finish(rb, _apply(w, 1, fn, ev), w.count >= 1)

    return handler


def _quantile_over_time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    qs = _scalars(ev, node, steps)[0]
    rb = ev.eval_range(node.args[1], steps)
    w = Windows(rb)
    n_steps = steps.shape[0]

    def fn(b: Batch) -> ValueArray:
        return window_quantile(qs[b.ids % n_steps], b)

    return _finish(rb, _apply(w, 1, fn, ev), w.count >= 1)


def _count_over_time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    return _finish(rb, w.count.astype(np.float64), w.count >= 1)


def _last_over_time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    if rb.ts.shape[0] == 0:
        return VectorBlock.empty(steps.shape[0])
    return _finish(rb, rb.vals[w.last], w.count >= 1, keep_name=True)


def _present_over_time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    return _finish(rb, np.ones(w.count.shape), w.count >= 1)


def absent_labels(arg: Expr) -> Labels:
    """The labels absent() and absent_over_time() report: the selector's equality matchers
    (a name matched twice is left out), as Prometheus does."""
    arg = unwrap(arg)
    if isinstance(arg, MatrixSelector):
        arg = arg.selector
    if not isinstance(arg, VectorSelector):
        return ()
    out: dict[str, str] = {}
    seen: set[str] = set()
    for m in arg.matchers:
        if m.name == METRIC_NAME:
            continue
        if m.type is MatchType.EQUAL and m.name not in seen:
            out[m.name] = m.value
            seen.add(m.name)
        else:
            out.pop(m.name, None)
    return labels_of(out)


def _absent_over_time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    missing = ~any_row(w.count > 0)
    ones = np.ones((1, steps.shape[0]))
    return VectorBlock([absent_labels(node.args[0])], ones, missing[None, :]).nonempty()


# --- regression and smoothing ----------------------------------------------------------------


def _deriv(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)

    def fn(b: Batch) -> ValueArray:
        return regression(b, b.times()[0])[0]

    return _finish(rb, _apply(w, 2, fn, ev), w.count >= 2)


def _predict_linear(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    durations = _scalars(ev, node, steps)[1]
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    n_steps = steps.shape[0]

    def fn(b: Batch) -> ValueArray:
        slope, intercept = regression(b, steps[b.ids % n_steps])
        result: ValueArray = slope * durations[b.ids % n_steps] + intercept
        return result

    return _finish(rb, _apply(w, 2, fn, ev), w.count >= 2)


def _go_f(value: float) -> str:
    """Go's %f."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:f}"


def _holt_winters(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    scalars = _scalars(ev, node, steps)
    sfs, tfs = scalars[1], scalars[2]
    rb = ev.eval_range(node.args[0], steps)
    w = Windows(rb)
    used = (w.count >= 1).any(axis=0)
    for sf, tf in zip(sfs[used].tolist(), tfs[used].tolist(), strict=True):
        if not 0 < sf < 1:
            raise ExecutionError(
                f"invalid smoothing factor. Expected: 0 < sf < 1, got: {_go_f(sf)}"
            )
        if not 0 < tf < 1:
            raise ExecutionError(f"invalid trend factor. Expected: 0 < tf < 1, got: {_go_f(tf)}")
    n_steps = steps.shape[0]

    def fn(b: Batch) -> ValueArray:
        return holt_winters(b, sfs[b.ids % n_steps], tfs[b.ids % n_steps])

    return _finish(rb, _apply(w, 2, fn, ev), w.count >= 2)


FUNCTIONS: dict[str, Handler] = {
    "rate": _extrapolated(counter=True, per_second=True),
    "increase": _extrapolated(counter=True, per_second=False),
    "delta": _extrapolated(counter=False, per_second=False),
    "irate": _instant_delta(per_second=True),
    "idelta": _instant_delta(per_second=False),
    "changes": _pair_counter(changes=True),
    "resets": _pair_counter(changes=False),
    "sum_over_time": _over_time(window_sum),
    "avg_over_time": _over_time(window_avg),
    "min_over_time": _over_time(window_min),
    "max_over_time": _over_time(window_max),
    "stdvar_over_time": _over_time(window_variance),
    "stddev_over_time": _over_time(window_stddev),
    "quantile_over_time": _quantile_over_time,
    "count_over_time": _count_over_time,
    "last_over_time": _last_over_time,
    "present_over_time": _present_over_time,
    "absent_over_time": _absent_over_time,
    "deriv": _deriv,
    "predict_linear": _predict_linear,
    "holt_winters": _holt_winters,
    "double_exponential_smoothing": _holt_winters,
}
