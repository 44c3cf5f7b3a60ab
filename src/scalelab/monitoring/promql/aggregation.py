"""Aggregation operators (sum, avg, topk, quantile, count_values ...) with by/without.

A series' group depends only on its labels, so groups are found once; rows are sorted by group
and numpy's reduceat folds each group for all steps at once. The order-sensitive operators
(stddev/stdvar's running update, topk/bottomk, quantile) follow Prometheus's arithmetic so that
results match it bit for bit where it matters (an exact 0 for a constant group).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadData, ExecutionError
from ..model import METRIC_NAME, Labels, ValueArray, float_repr, valid_label_name, with_label
from .ast import Aggregate
from .value import BoolArray, IntArray, ScalarBlock, StringValue, VectorBlock

if TYPE_CHECKING:
    from .engine import Evaluator

_SIMPLE = frozenset({"sum", "avg", "count", "min", "max", "group", "stddev", "stdvar"})
_MAX_INT64 = 9223372036854774784.0
_MIN_INT64 = -9223372036854775808.0


def group_key(labels: Labels, grouping: frozenset[str], without: bool) -> Labels:
    """The labels a group keeps, which are also its result's labels."""
    if without:
        return tuple((k, v) for k, v in labels if k not in grouping and k != METRIC_NAME)
    return tuple((k, v) for k, v in labels if k in grouping)


def go_float(value: float) -> str:
    """A float as Go's %v prints it (enough for error messages)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def evaluate(ev: Evaluator, node: Aggregate, steps: IntArray) -> VectorBlock:
    op = node.op
    param = None if node.param is None else ev.eval(node.param, steps)
    vec = ev.eval_vector(node.expr, steps)
    grouping = frozenset(node.grouping)
    if op == "count_values":
        assert isinstance(param, StringValue)
        return _count_values(vec, param.value, grouping, node.without)
    if op not in _SIMPLE and op not in ("topk", "bottomk", "quantile"):
        raise BadData(f"unknown aggregation operator {op!r}")
    if op in ("topk", "bottomk"):
        assert isinstance(param, ScalarBlock)
        for k in param.values.tolist():  # checked at every step, with or without samples
            _k_of(k)
    if len(vec) == 0:
        return VectorBlock.empty(steps.shape[0])
    ids: dict[Labels, int] = {}
    gid = np.fromiter(
        (ids.setdefault(group_key(lab, grouping, node.without), len(ids)) for lab in vec.labels),
        dtype=np.int64,
        count=len(vec.labels),
    )
    if op in ("topk", "bottomk"):
        assert isinstance(param, ScalarBlock)
        return _top(vec, gid, param.values, op == "topk")
    if op == "quantile":
        assert isinstance(param, ScalarBlock)
        return _quantile(vec, gid, list(ids), param.values)
    return _simple(op, vec, gid, list(ids))


def _sorted_groups(gid: IntArray) -> tuple[IntArray, IntArray]:
    order = np.argsort(gid, kind="stable")
    sorted_gid = gid[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_gid[1:] != sorted_gid[:-1]]))
    return order, starts


def _simple(op: str, vec: VectorBlock, gid: IntArray, keys: list[Labels]) -> VectorBlock:
    order, starts = _sorted_groups(gid)
    values, present = vec.values[order], vec.present[order]
    out_present: BoolArray = np.logical_or.reduceat(present, starts, axis=0)
    if op in ("sum", "avg"):
        # -0.0 is the identity of IEEE addition (0.0 would turn a lone -0 into +0).
        total = np.add.reduceat(np.where(present, values, -0.0), starts, axis=0)
        if op == "sum":
            result = total
        else:
            result = total / np.add.reduceat(present.astype(np.float64), starts, axis=0)
    elif op == "count":
        result = np.add.reduceat(present.astype(np.float64), starts, axis=0)
    elif op == "group":
        result = np.ones(out_present.shape)
    elif op == "max":
        result = np.fmax.reduceat(np.where(present, values, np.nan), starts, axis=0)
    elif op == "min":
        result = np.fmin.reduceat(np.where(present, values, np.nan), starts, axis=0)
    else:
        variance = _running_variance(values, present, gid[order], starts)
        result = np.sqrt(variance) if op == "stddev" else variance
    return VectorBlock(keys, np.where(out_present, result, np.nan), out_present)


def _running_variance(
    values: ValueArray, present: BoolArray, sorted_gid: IntArray, starts: IntArray
) -> ValueArray:
    """Welford's update in input order, as Prometheus computes stddev/stdvar."""
    groups, steps = starts.shape[0], values.shape[1]
    rank = np.arange(values.shape[0]) - starts[sorted_gid]
    count = np.zeros((groups, steps))
    mean = np.zeros((groups, steps))
    m2 = np.zeros((groups, steps))
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rank))])
    for k in range(bounds.shape[0] - 1):
        rows = by_rank[bounds[k] : bounds[k + 1]]
        g = sorted_gid[rows]
        x, p = values[rows], present[rows]
        old_count, old_mean, old_m2 = count[g], mean[g], m2[g]
        new_count = old_count + p
        delta = x - old_mean
        new_mean = old_mean + delta / np.maximum(new_count, 1)
        new_m2 = old_m2 + delta * (x - new_mean)
        first = p & (old_count == 0)
        mean[g] = np.where(first, x, np.where(p, new_mean, old_mean))
        m2[g] = np.where(first, 0.0, np.where(p, new_m2, old_m2))
        count[g] = new_count
    result: ValueArray = m2 / count
    return result


def _k_of(value: float) -> int:
    if not (value <= _MAX_INT64 and value >= _MIN_INT64):
        raise ExecutionError(f"Scalar value {go_float(value)} overflows int64")
    return int(value)


def _top(vec: VectorBlock, gid: IntArray, ks: ValueArray, largest: bool) -> VectorBlock:
    """topk/bottomk: NaN ranks last either way; ties keep input order."""
    n, steps = vec.values.shape
    chosen = np.zeros((n, steps), dtype=bool)
    first_order: IntArray | None = None
    for j in range(steps):
        k = _k_of(float(ks[j]))
        rows = np.flatnonzero(vec.present[:, j])
        if k < 1 or rows.shape[0] == 0:
            continue
        v = vec.values[rows, j]
        nan = np.isnan(v)
        key = np.where(nan, 0.0, -v if largest else v)
        order = np.lexsort((np.arange(rows.shape[0]), key, nan, gid[rows]))
        g = gid[rows][order]
        starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
        rank = np.arange(order.shape[0]) - np.repeat(starts, np.diff(np.append(starts, g.shape[0])))
        picked = rows[order][rank < k]
        chosen[picked, j] = True
        if steps == 1:
            first_order = picked
    if steps == 1:
        index = first_order if first_order is not None else np.empty(0, dtype=np.int64)
        return VectorBlock(
            [vec.labels[i] for i in index], vec.values[index], chosen[index]
        ).nonempty()
    return VectorBlock(vec.labels, vec.values, chosen).nonempty()


def _quantile(vec: VectorBlock, gid: IntArray, keys: list[Labels], qs: ValueArray) -> VectorBlock:
    groups, steps = len(keys), vec.values.shape[1]
    out = np.full((groups, steps), np.nan)
    out_present = np.zeros((groups, steps), dtype=bool)
    for j in range(steps):
        rows = np.flatnonzero(vec.present[:, j])
        if rows.shape[0] == 0:
            continue
        q = float(qs[j])
        v = vec.values[rows, j]
        nan = np.isnan(v)
        order = np.lexsort((np.where(nan, 0.0, v), ~nan, gid[rows]))
        g, sv = gid[rows][order], v[order]
        starts = np.flatnonzero(np.concatenate([[True], g[1:] != g[:-1]]))
        counts = np.diff(np.append(starts, g.shape[0])).astype(np.float64)
        out_present[g[starts], j] = True
        if q < 0:
            out[g[starts], j] = -math.inf
            continue
        if q > 1:
            out[g[starts], j] = math.inf
            continue
        rank = q * (counts - 1)
        lower = np.maximum(0.0, np.floor(rank))
        upper = np.minimum(counts - 1, lower + 1)
        weight = rank - np.floor(rank)
        lo_v = sv[starts + lower.astype(np.int64)]
        hi_v = sv[starts + upper.astype(np.int64)]
        out[g[starts], j] = lo_v * (1 - weight) + hi_v * weight
    return VectorBlock(keys, out, out_present).nonempty()


def _count_values(
    vec: VectorBlock, label: str, grouping: frozenset[str], without: bool
) -> VectorBlock:
    """Count samples per group and value; the value, formatted, becomes a label."""
    if not valid_label_name(label):
        raise ExecutionError(f'invalid label name "{label}"')
    steps = vec.values.shape[1]
    names = grouping if without else grouping | {label}
    # Whether the value label survives the grouping, and each row's other group labels.
    kept = label in names if not without else label not in grouping and label != METRIC_NAME
    base_ids: dict[Labels, int] = {}
    row_base = np.fromiter(
        (
            base_ids.setdefault(
                group_key(with_label(lab, label, ""), names, without), len(base_ids)
            )
            for lab in vec.labels
        ),
        dtype=np.int64,
        count=len(vec.labels),
    )
    rows, cols = np.nonzero(vec.present)
    if rows.shape[0] == 0:
        return VectorBlock.empty(steps)
    values = vec.values[rows, cols]
    values = np.where(np.isnan(values), np.nan, values)  # one NaN, whatever its payload
    bits = values.view(np.uint64).astype(np.int64) if kept else np.zeros_like(rows)
    pairs, inverse = np.unique(np.stack([row_base[rows], bits]), axis=1, return_inverse=True)
    counts = np.zeros((pairs.shape[1], steps))
    np.add.at(counts, (inverse.ravel(), cols), 1.0)
    bases = list(base_ids)
    labels: list[Labels] = []
    for base, raw in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
        if kept:
            text = float_repr(float(np.array(raw, dtype=np.int64).view(np.float64)))
            labels.append(with_label(bases[base], label, text))
        else:
            labels.append(bases[base])
    present = counts > 0
    return VectorBlock(labels, np.where(present, counts, np.nan), present)
