"""Binary operators: arithmetic, comparison and set operators, with vector matching.

Between two vectors, series are paired by a signature (the `on` labels, or every label but
the `ignoring` ones and the metric name). Pairs are found once from the labels, then every
step is computed at once over a (pairs x steps) array; the per-step rules Prometheus enforces
(one match per signature, unique results) become counts over the same arrays.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ExecutionError
from ..model import METRIC_NAME, Labels, ValueArray, get
from .ast import COMPARISON_OPERATORS, SET_OPERATORS, Binary, Card
from .value import (
    Block,
    BoolArray,
    IntArray,
    ScalarBlock,
    VectorBlock,
    any_row,
    collapse,
)

if TYPE_CHECKING:
    from .engine import Evaluator

# Operators whose result drops the metric name (atan2 keeps it, as in Prometheus 2.x).
NAME_DROPPING = frozenset({"+", "-", "*", "/", "%", "^"})


def arithmetic(op: str, a: ValueArray, b: ValueArray) -> ValueArray:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    if op == "%":
        return np.fmod(a, b)  # Go's math.Mod: the sign of the dividend
    if op == "^":
        return np.power(a, b)
    if op == "atan2":
        return np.arctan2(a, b)
    raise ExecutionError(f"operator {op!r} not allowed here")


_COMPARISONS = {
    "==": np.equal,
    "!=": np.not_equal,
    ">": np.greater,
    "<": np.less,
    ">=": np.greater_equal,
    "<=": np.less_equal,
}


def compare(op: str, a: ValueArray, b: ValueArray) -> BoolArray:
    if op not in _COMPARISONS:
        raise ExecutionError(f"operator {op!r} not allowed here")
    return np.asarray(_COMPARISONS[op](a, b), dtype=np.bool_)


def go_labels(labels: Labels) -> str:
    """A label set the way Go's labels.String prints it in error messages."""
    inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels)
    return "{" + inner + "}"


def evaluate(ev: Evaluator, node: Binary, steps: IntArray) -> Block:
    lhs = ev.eval(node.lhs, steps)
    rhs = ev.eval(node.rhs, steps)
    if isinstance(lhs, ScalarBlock) and isinstance(rhs, ScalarBlock):
        if node.op in COMPARISON_OPERATORS:
            return ScalarBlock(compare(node.op, lhs.values, rhs.values).astype(np.float64))
        return ScalarBlock(arithmetic(node.op, lhs.values, rhs.values))
    if isinstance(lhs, VectorBlock) and isinstance(rhs, ScalarBlock):
        return _vector_scalar(node, lhs, rhs.values, swap=False)
    if isinstance(lhs, ScalarBlock) and isinstance(rhs, VectorBlock):
        return _vector_scalar(node, rhs, lhs.values, swap=True)
    assert isinstance(lhs, VectorBlock) and isinstance(rhs, VectorBlock)
    ev.check_deadline()
    if node.op in SET_OPERATORS:
        return _set_operation(node, lhs, rhs)
    return _vector_vector(node, lhs, rhs)


def _drop_name(labels: Labels) -> Labels:
    return tuple((k, v) for k, v in labels if k != METRIC_NAME)


def _vector_scalar(node: Binary, vec: VectorBlock, scalar: ValueArray, swap: bool) -> VectorBlock:
    left: ValueArray = vec.values
    right: ValueArray = np.broadcast_to(scalar[None, :], vec.values.shape)
    if swap:
        left, right = right, left
    present = vec.present
    if node.op in COMPARISON_OPERATORS:
        cond = compare(node.op, left, right)
        if node.return_bool:
            values = cond.astype(np.float64)
        else:
            values = vec.values
            present = present & cond
    else:
        values = arithmetic(node.op, left, right)
    if node.op in NAME_DROPPING or node.return_bool:
        return collapse([_drop_name(lab) for lab in vec.labels], values, present)
    return VectorBlock(vec.labels, values, present).nonempty()


def _signature(labels: Labels, on: bool, names: frozenset[str]) -> Labels:
    if on:
        return tuple((n, get(labels, n)) for n in sorted(names))
    return tuple((k, v) for k, v in labels if k not in names and k != METRIC_NAME)


def _signature_ids(
    node: Binary, lhs: VectorBlock, rhs: VectorBlock
) -> tuple[IntArray, IntArray, list[Labels]]:
    names = frozenset(node.matching)
    ids: dict[Labels, int] = {}
    out: list[IntArray] = []
    for block in (lhs, rhs):
        row_ids = [
            ids.setdefault(_signature(lab, node.on, names), len(ids)) for lab in block.labels
        ]
        out.append(np.asarray(row_ids, dtype=np.int64))
    return out[0], out[1], list(ids)


def _any_by(ids: IntArray, present: BoolArray, groups: int) -> BoolArray:
    """has[g, j]: some row with id g is present at step j."""
    has = np.zeros((groups, present.shape[1]), dtype=bool)
    np.logical_or.at(has, ids, present)
    return has


def _set_operation(node: Binary, lhs: VectorBlock, rhs: VectorBlock) -> VectorBlock:
    lids, rids, sigs = _signature_ids(node, lhs, rhs)
    if node.op == "or":
        lhs_has = _any_by(lids, lhs.present, len(sigs))
        extra = rhs.present & ~lhs_has[rids]
        return collapse(
            lhs.labels + rhs.labels,
            np.concatenate([lhs.values, rhs.values]),
            np.concatenate([lhs.present, extra]),
        )
    rhs_has = _any_by(rids, rhs.present, len(sigs))
    matched = rhs_has[lids]
    present = lhs.present & (matched if node.op == "and" else ~matched)
    return VectorBlock(lhs.labels, lhs.values, present).nonempty()


def _counts_exceed(keys: IntArray, mask: BoolArray) -> bool:
    """Do two rows with the same key share a step where both are set?"""
    if keys.shape[0] == 0 or np.unique(keys).shape[0] == keys.shape[0]:
        return False
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((uniq.shape[0], mask.shape[1]), dtype=np.int64)
    np.add.at(counts, inverse, mask.astype(np.int64))
    return bool((counts > 1).any())


def _check_one_side(
    node: Binary, one: VectorBlock, one_ids: IntArray, active: BoolArray, sigs: list[Labels]
) -> None:
    if one_ids.shape[0] == np.unique(one_ids).shape[0]:
        return
    counts = np.zeros((len(sigs), one.present.shape[1]), dtype=np.int64)
    np.add.at(counts, one_ids, one.present.astype(np.int64))
    bad = (counts > 1) & active[None, :]
    if not bad.any():
        return
    sig_ids, step_ids = np.nonzero(bad)
    first = int(np.argmin(step_ids))
    sig, step = int(sig_ids[first]), int(step_ids[first])
    rows = [i for i in range(len(one.labels)) if one_ids[i] == sig and one.present[i, step]]
    earlier, later = one.labels[rows[0]], one.labels[rows[1]]
    if node.on:
        keep = set(node.matching)
        matched = tuple((k, v) for k, v in later if k in keep)
    else:
        drop = set(node.matching)
        matched = tuple((k, v) for k, v in later if k not in drop and k != METRIC_NAME)
    side = "left" if node.card is Card.ONE_TO_MANY else "right"
    raise ExecutionError(
        f"found duplicate series for the match group {go_labels(matched)} on the {side} "
        f"hand-side of the operation: [{go_labels(later)}, {go_labels(earlier)}]"
        ";many-to-many matching not allowed: matching labels must be unique on one side"
    )


def _result_labels(node: Binary, many: Labels, one: Labels) -> Labels:
    out = dict(many)
    if node.op in NAME_DROPPING:
        out.pop(METRIC_NAME, None)
    if node.card is Card.ONE_TO_ONE:
        if node.on:
            keep = set(node.matching)
            out = {k: v for k, v in out.items() if k in keep}
        else:
            for name in node.matching:
                out.pop(name, None)
    for name in node.include:
        value = get(one, name)
        if value:
            out[name] = value
        else:
            out.pop(name, None)
    if node.return_bool:
        out.pop(METRIC_NAME, None)
    return tuple(sorted(out.items()))


def _vector_vector(node: Binary, lhs: VectorBlock, rhs: VectorBlock) -> VectorBlock:
    steps = lhs.present.shape[1]
    if len(lhs) == 0 or len(rhs) == 0:
        return VectorBlock.empty(steps)
    lids, rids, sigs = _signature_ids(node, lhs, rhs)
    many, one, many_ids, one_ids = lhs, rhs, lids, rids
    if node.card is Card.ONE_TO_MANY:
        many, one, many_ids, one_ids = rhs, lhs, rids, lids
    active = any_row(many.present) & any_row(one.present)
    _check_one_side(node, one, one_ids, active, sigs)

    one_rows: dict[int, list[int]] = {}
    for j, sig in enumerate(one_ids.tolist()):
        one_rows.setdefault(sig, []).append(j)
    pair_many: list[int] = []
    pair_one: list[int] = []
    for i, sig in enumerate(many_ids.tolist()):
        for j in one_rows.get(sig, ()):
            pair_many.append(i)
            pair_one.append(j)
    if not pair_many:
        return VectorBlock.empty(steps)
    pm = np.asarray(pair_many, dtype=np.int64)
    po = np.asarray(pair_one, dtype=np.int64)
    present = many.present[pm] & one.present[po] & active[None, :]
    left, right = many.values[pm], one.values[po]
    if node.card is Card.ONE_TO_MANY:
        left, right = right, left
    if node.op in COMPARISON_OPERATORS:
        cond = compare(node.op, left, right)
        if node.return_bool:
            values = cond.astype(np.float64)
        else:
            values = left
            present = present & cond
    else:
        values = arithmetic(node.op, left, right)

    cache: dict[tuple[int, int], Labels] = {}
    labels: list[Labels] = []
    for i, j in zip(pair_many, pair_one, strict=True):
        key = (i, j)
        if key not in cache:
            cache[key] = _result_labels(node, many.labels[i], one.labels[j])
        labels.append(cache[key])

    sig_of_pair = many_ids[pm]
    if node.card is Card.ONE_TO_ONE:
        if _counts_exceed(sig_of_pair, present):
            raise ExecutionError(
                "multiple matches for labels: many-to-one matching must be explicit "
                "(group_left/group_right)"
            )
    else:
        label_ids: dict[Labels, int] = {}
        lab_of_pair = np.fromiter(
            (label_ids.setdefault(lab, len(label_ids)) for lab in labels),
            dtype=np.int64,
            count=len(labels),
        )
        if _counts_exceed(sig_of_pair * (len(label_ids) + 1) + lab_of_pair, present):
            raise ExecutionError(
                "multiple matches for labels: grouping labels must ensure unique matches"
            )
    return collapse(labels, values, present)
