"""The PromQL engine: evaluates a parsed expression over a `model.Querier`.

Every node is evaluated once for all the steps of a query (an instant query is a range query
of one step), producing the blocks of `value.py`. Selectors read storage once per node and
find each step's sample with numpy's searchsorted; functions, aggregations and binary
operators live in their own modules and work on whole blocks.

Semantics follow Prometheus 2.42: an instant selector takes the newest sample in
[t - lookback, t] unless it is a staleness marker; a range selector takes the samples in the
closed interval [t - range, t] without staleness markers; `offset` and `@` move t, `@` to a
fixed time (or the query's start()/end()) at every step; subqueries evaluate their expression
at steps aligned to multiples of their resolution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..errors import BadData, ExecutionError, QueryTimeout, TooManySamples
from ..model import Labels, Matcher, Querier, Series, stale_mask
from . import aggregation, binary, functions
from .ast import (
    Aggregate,
    At,
    AtKind,
    Binary,
    Call,
    Expr,
    MatrixSelector,
    Negation,
    NumberLiteral,
    Paren,
    StringLiteral,
    Subquery,
    ValueType,
    VectorSelector,
    documented,
    parse,
)
from .value import (
    Block,
    IntArray,
    Matrix,
    RangeBlock,
    Sample,
    Scalar,
    ScalarBlock,
    SeriesPoints,
    String,
    StringValue,
    Value,
    Vector,
    VectorBlock,
    check_unique,
)

MAX_POINTS_PER_SERIES = 11_000
_TOO_MANY = "query processing would load too many samples into memory in query execution"


class Evaluator:
    """One query's evaluation: its storage, limits, deadline and the query's start/end."""

    def __init__(
        self,
        querier: Querier,
        *,
        lookback_ms: int,
        max_samples: int,
        deadline: float,
        subquery_step_ms: int,
        query_start: int,
        query_end: int,
    ) -> None:
        self.querier = querier
        self.lookback_ms = lookback_ms
        self.max_samples = max_samples
        self.deadline = deadline
        self.subquery_step_ms = subquery_step_ms
        self.query_start = query_start
        self.query_end = query_end
        self._current = 0

    # --- limits ----------------------------------------------------------------------------

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise QueryTimeout("query timed out in expression evaluation")

    def _account(self, extra: int) -> None:
        self._current += extra
        if self._current > self.max_samples:
            raise TooManySamples(_TOO_MANY)

    # --- dispatch --------------------------------------------------------------------------

    def eval(self, expr: Expr, steps: IntArray) -> Block:
        """Evaluate expr at every timestamp of steps (int64 milliseconds, ascending)."""
        self.check_deadline()
        before = self._current
        result = self._eval(expr, steps)
        self._current = before
        self._account(result.samples())
        return result

    def _eval(self, expr: Expr, steps: IntArray) -> Block:
        if isinstance(expr, NumberLiteral):
            return ScalarBlock(np.full(steps.shape[0], expr.value))
        if isinstance(expr, StringLiteral):
            return StringValue(expr.value)
        if isinstance(expr, Paren):
            return self._eval(expr.expr, steps)
        if isinstance(expr, VectorSelector):
            return self.vector_selector(expr, steps)
        if isinstance(expr, MatrixSelector):
            return self.matrix_selector(expr, steps)
        if isinstance(expr, Subquery):
            return self.subquery(expr, steps)
        if isinstance(expr, Negation):
            return self._negate(self.eval(expr.expr, steps))
        if isinstance(expr, Binary):
            return binary.evaluate(self, expr, steps)
        if isinstance(expr, Aggregate):
            return aggregation.evaluate(self, expr, steps)
        if isinstance(expr, Call):
            return functions.call(self, expr, steps)
        raise ExecutionError(f"unhandled expression {expr!r}")

    def eval_vector(self, expr: Expr, steps: IntArray) -> VectorBlock:
        result = self.eval(expr, steps)
        assert isinstance(result, VectorBlock), type(result)
        return result

    def eval_scalar(self, expr: Expr, steps: IntArray) -> ScalarBlock:
        result = self.eval(expr, steps)
        assert isinstance(result, ScalarBlock), type(result)
        return result

    def eval_range(self, expr: Expr, steps: IntArray) -> RangeBlock:
        result = self.eval(expr, steps)
        assert isinstance(result, RangeBlock), type(result)
        return result

    @staticmethod
    def _negate(block: Block) -> Block:
        if isinstance(block, ScalarBlock):
            return ScalarBlock(-block.values)
        assert isinstance(block, VectorBlock)
        labels = [functions.drop_name(lab) for lab in block.labels]
        check_unique(labels)
        return VectorBlock(labels, -block.values, block.present)

    # --- selectors -------------------------------------------------------------------------

    def ref_times(self, at: At | None, offset_ms: int, steps: IntArray) -> IntArray:
        """The time each step reads at: the step itself, or the @ time, minus the offset."""
        if at is None:
            base = steps
        else:
            fixed = {AtKind.START: self.query_start, AtKind.END: self.query_end}
            when = fixed.get(at.kind, at.time_ms)
            base = np.full(steps.shape[0], when, dtype=np.int64)
        return base - offset_ms

    def select(
        self, matchers: Sequence[Matcher], mint: int, maxt: int, *, count: bool = True
    ) -> tuple[list[Labels], np.ndarray, np.ndarray, IntArray]:
        """Matching series' samples in [mint, maxt], concatenated: labels, ts, vals, offsets.

        Loaded samples count against max_samples unless count is False (an instant
        selector counts only the samples it picks, as Prometheus does)."""
        found: list[Series] = self.querier.select(matchers, mint, maxt)
        self.check_deadline()
        found = [s for s in found if s.timestamps.shape[0]]
        found.sort(key=lambda s: s.labels)
        lengths = [s.timestamps.shape[0] for s in found]
        if count:
            self._account(sum(lengths))
        offsets = np.zeros(len(found) + 1, dtype=np.int64)
        if found:
            np.cumsum(lengths, out=offsets[1:])
            ts = np.concatenate([s.timestamps for s in found]).astype(np.int64, copy=False)
            vals = np.concatenate([s.values for s in found]).astype(np.float64, copy=False)
        else:
            ts, vals = np.empty(0, dtype=np.int64), np.empty(0)
        return [s.labels for s in found], ts, vals, offsets

    def instant_samples(
        self, node: VectorSelector, steps: IntArray
    ) -> tuple[list[Labels], np.ndarray, np.ndarray, np.ndarray]:
        """Per series and step: the sample the selector sees (labels, times, values, present)."""
        refs = self.ref_times(node.at, node.offset_ms, steps)
        labels, ts, vals, offsets = self.select(
            node.matchers, int(refs.min()) - self.lookback_ms, int(refs.max()), count=False
        )
        n, count = len(labels), steps.shape[0]
        if n == 0:
            shape = (0, count)
            return labels, np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape, bool)
        base = min(int(refs.min()) - self.lookback_ms, int(ts.min()))
        span = max(int(refs.max()), int(ts.max())) - base + 1
        if span * (n + 1) < 2**62:
            series_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
            keys = series_of * span + (ts - base)
            targets = (np.arange(n, dtype=np.int64) * span)[:, None] + (refs - base)[None, :]
            idx = np.searchsorted(keys, targets, side="right") - 1
        else:
            idx = np.empty((n, count), dtype=np.int64)
            for i in range(n):
                a, b = int(offsets[i]), int(offsets[i + 1])
                idx[i] = a + np.searchsorted(ts[a:b], refs, side="right") - 1
        safe = np.maximum(idx, 0)
        sample_t = ts[safe]
        sample_v = vals[safe]
        present = (idx >= offsets[:-1, None]) & (sample_t >= (refs - self.lookback_ms)[None, :])
        present &= ~stale_mask(sample_v)
        return labels, sample_t, np.where(present, sample_v, np.nan), present

    def vector_selector(self, node: VectorSelector, steps: IntArray) -> VectorBlock:
        labels, _, values, present = self.instant_samples(node, steps)
        return VectorBlock(labels, values, present).nonempty()

    def matrix_selector(self, node: MatrixSelector, steps: IntArray) -> RangeBlock:
        sel = node.selector
        refs = self.ref_times(sel.at, sel.offset_ms, steps)
        labels, ts, vals, offsets = self.select(
            sel.matchers, int(refs.min()) - node.range_ms, int(refs.max())
        )
        fresh = ~stale_mask(vals)
        if not fresh.all():
            series_of = np.repeat(np.arange(len(labels)), np.diff(offsets))
            counts = np.bincount(series_of[fresh], minlength=len(labels))
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            ts, vals = ts[fresh], vals[fresh]
        return RangeBlock(labels, ts, vals, offsets, node.range_ms, refs)

    def subquery(self, node: Subquery, steps: IntArray) -> RangeBlock:
        step = node.step_ms or self.subquery_step_ms
        refs = self.ref_times(node.at, node.offset_ms, steps)
        first = int(refs.min()) - node.range_ms
        start = -((-first) // step) * step
        inner_steps = np.arange(start, int(refs.max()) + 1, step, dtype=np.int64)
        if inner_steps.shape[0] == 0:
            return RangeBlock(
                [], np.empty(0, np.int64), np.empty(0), np.zeros(1, np.int64), 0, refs
            )
        inner = self.eval(node.expr, inner_steps)
        if isinstance(inner, ScalarBlock):
            inner = VectorBlock(
                [()], inner.values[None, :], np.ones((1, inner_steps.shape[0]), bool)
            )
        assert isinstance(inner, VectorBlock)
        inner = inner.nonempty()
        rows, cols = np.nonzero(inner.present)
        offsets = np.zeros(len(inner.labels) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(inner.labels)), out=offsets[1:])
        return RangeBlock(
            inner.labels,
            inner_steps[cols],
            inner.values[rows, cols],
            offsets,
            node.range_ms,
            refs,
        )


class Engine:
    """Evaluates PromQL over a Querier, with Prometheus's limits.

    `max_samples` bounds the samples held at once (loaded from storage plus intermediate
    results); `timeout_s` bounds a query's wall time; `subquery_step_ms` is the resolution of
    a subquery that gives none (Prometheus uses the global evaluation interval, 1m).
    """

    def __init__(
        self,
        querier: Querier,
        *,
        lookback_delta_ms: int = 300_000,
        max_samples: int = 50_000_000,
        timeout_s: float = 120.0,
        subquery_step_ms: int = 60_000,
    ) -> None:
        self.querier = querier
        self.lookback_delta_ms = lookback_delta_ms
        self.max_samples = max_samples
        self.timeout_s = timeout_s
        self.subquery_step_ms = subquery_step_ms

    def _evaluator(self, start: int, end: int) -> Evaluator:
        return Evaluator(
            self.querier,
            lookback_ms=self.lookback_delta_ms,
            max_samples=self.max_samples,
            deadline=time.monotonic() + self.timeout_s,
            subquery_step_ms=self.subquery_step_ms,
            query_start=start,
            query_end=end,
        )

    def instant(self, query: str, time_ms: int) -> Value:
        """Evaluate query at one time, as Prometheus's /api/v1/query does."""
        expr = parse(query)
        steps = np.array([time_ms], dtype=np.int64)
        ev = self._evaluator(time_ms, time_ms)
        with np.errstate(all="ignore"):
            result = ev.eval(expr, steps)
        if isinstance(result, ScalarBlock):
            return Scalar(time_ms, float(result.values[0]))
        if isinstance(result, StringValue):
            return String(time_ms, result.value)
        if isinstance(result, RangeBlock):
            return _range_block_matrix(result)
        samples = [
            Sample(labels, time_ms, float(result.values[i, 0]))
            for i, labels in enumerate(result.labels)
            if result.present[i, 0]
        ]
        return Vector(samples)

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> Matrix:
        """Evaluate query at start, start+step, ... <= end, as /api/v1/query_range does."""
        if step_ms <= 0:
            raise BadData(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if end_ms < start_ms:
            raise BadData("end timestamp must not be before start time")
        if (end_ms - start_ms) / step_ms > MAX_POINTS_PER_SERIES:
            raise BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        expr = parse(query)
        if expr.type not in (ValueType.VECTOR, ValueType.SCALAR):
            raise BadData(
                f'invalid expression type "{documented(expr.type)}" for range query, '
                "must be Scalar or instant Vector"
            )
        steps = np.arange(start_ms, end_ms + 1, step_ms, dtype=np.int64)
        ev = self._evaluator(start_ms, end_ms)
        with np.errstate(all="ignore"):
            result = ev.eval(expr, steps)
        if isinstance(result, ScalarBlock):
            return Matrix([SeriesPoints((), steps.tolist(), result.values.tolist())])
        assert isinstance(result, VectorBlock)
        series: list[SeriesPoints] = []
        for i in sorted(range(len(result.labels)), key=lambda i: result.labels[i]):
            mask = result.present[i]
            series.append(
                SeriesPoints(
                    result.labels[i], steps[mask].tolist(), result.values[i, mask].tolist()
                )
            )
        return Matrix(series)


def _range_block_matrix(block: RangeBlock) -> Matrix:
    lo, hi = block.windows()
    series: list[SeriesPoints] = []
    for i, labels in enumerate(block.labels):
        a, b = int(lo[i, 0]), int(hi[i, 0])
        if b > a:
            series.append(SeriesPoints(labels, block.ts[a:b].tolist(), block.vals[a:b].tolist()))
    return Matrix(series)
