"""PromQL functions over instant vectors and scalars, and the table of all functions.

Each function takes the evaluator, the call and the steps, evaluates its arguments and returns
a block. Functions that compute a new value drop the metric name (the result is no longer that
metric), as Prometheus does; label_replace/label_join and sort keep it. The functions over
range vectors (rate, *_over_time ...) live in `range_functions.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadData, ExecutionError
from ..model import METRIC_NAME, Labels, ValueArray, get, valid_label_name, with_label
from . import histogram, range_functions
from .ast import Call, VectorSelector, python_regex, unwrap
from .value import Block, IntArray, ScalarBlock, StringValue, VectorBlock, any_row, collapse

if TYPE_CHECKING:
    from .engine import Evaluator

Handler = Callable[["Evaluator", Call, IntArray], Block]


def drop_name(labels: Labels) -> Labels:
    return tuple((k, v) for k, v in labels if k != METRIC_NAME)


def _vector_arg(ev: Evaluator, node: Call, i: int, steps: IntArray) -> VectorBlock:
    return ev.eval_vector(node.args[i], steps)


def _scalar_arg(ev: Evaluator, node: Call, i: int, steps: IntArray, default: float) -> ValueArray:
    if len(node.args) <= i:
        return np.full(steps.shape[0], default)
    return ev.eval_scalar(node.args[i], steps).values


def _string_arg(ev: Evaluator, node: Call, i: int, steps: IntArray) -> str:
    result = ev.eval(node.args[i], steps)
    assert isinstance(result, StringValue)
    return result.value


def _mapped(vec: VectorBlock, values: ValueArray, present: np.ndarray | None = None) -> VectorBlock:
    """A new value for every sample: the metric name goes."""
    keep = vec.present if present is None else vec.present & present
    return collapse([drop_name(lab) for lab in vec.labels], values, keep)


def _math(fn: Callable[[ValueArray], ValueArray]) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        vec = _vector_arg(ev, node, 0, steps)
        return _mapped(vec, fn(vec.values))

    return handler


def _sgn(v: ValueArray) -> ValueArray:
    return np.where(v < 0, -1.0, np.where(v > 0, 1.0, v))


def _round(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    inverse = 1.0 / _scalar_arg(ev, node, 1, steps, 1.0)
    return _mapped(vec, np.floor(vec.values * inverse + 0.5) / inverse)


def _clamp(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    low = _scalar_arg(ev, node, 1, steps, math.nan)
    high = _scalar_arg(ev, node, 2, steps, math.nan)
    values = np.maximum(low[None, :], np.minimum(high[None, :], vec.values))
    return _mapped(vec, values, np.broadcast_to(~(high < low)[None, :], vec.present.shape))


def _clamp_min(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    low = _scalar_arg(ev, node, 1, steps, math.nan)
    return _mapped(vec, np.maximum(low[None, :], vec.values))


def _clamp_max(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    high = _scalar_arg(ev, node, 1, steps, math.nan)
    return _mapped(vec, np.minimum(high[None, :], vec.values))


def _pi(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    return ScalarBlock(np.full(steps.shape[0], math.pi))


def _time(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    return ScalarBlock(steps / 1000)


def _vector(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    values = _scalar_arg(ev, node, 0, steps, math.nan)
    return VectorBlock([()], values[None, :].copy(), np.ones((1, steps.shape[0]), dtype=bool))


def _scalar(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    if len(vec) == 0:
        return ScalarBlock(np.full(steps.shape[0], math.nan))
    single = vec.present.sum(axis=0) == 1
    row = np.argmax(vec.present, axis=0)
    values = vec.values[row, np.arange(steps.shape[0])]
    return ScalarBlock(np.where(single, values, math.nan))


def _timestamp(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    arg = unwrap(node.args[0])
    if isinstance(arg, VectorSelector):
        labels, times, _, present = ev.instant_samples(arg, steps)
        block = VectorBlock(labels, times / 1000, present).nonempty()
        return _mapped(block, block.values)
    vec = _vector_arg(ev, node, 0, steps)
    return _mapped(vec, np.broadcast_to(steps / 1000, vec.values.shape).copy())


# --- dates -----------------------------------------------------------------------------------


def _date_parts(seconds: ValueArray, part: str) -> ValueArray:
    secs = np.trunc(np.where(np.isfinite(seconds), seconds, 0)).astype(np.int64)
    if part == "minute":
        return ((secs // 60) % 60).astype(np.float64)
    if part == "hour":
        return ((secs // 3600) % 24).astype(np.float64)
    days = secs // 86400
    if part == "day_of_week":
        return ((days + 4) % 7).astype(np.float64)
    day = days.astype("datetime64[D]")
    month = day.astype("datetime64[M]")
    year = day.astype("datetime64[Y]")
    if part == "day_of_month":
        result = (day - month.astype("datetime64[D]")).astype(np.int64) + 1
    elif part == "day_of_year":
        result = (day - year.astype("datetime64[D]")).astype(np.int64) + 1
    elif part == "days_in_month":
        nxt = (month + 1).astype("datetime64[D]")
        result = (nxt - month.astype("datetime64[D]")).astype(np.int64)
    elif part == "month":
        result = month.astype(np.int64) % 12 + 1
    else:
        result = year.astype(np.int64) + 1970
    return np.asarray(result, dtype=np.float64)


def _date(part: str) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        if node.args:
            vec = _vector_arg(ev, node, 0, steps)
        else:
            ones = np.ones((1, steps.shape[0]), dtype=bool)
            vec = VectorBlock([()], (steps / 1000)[None, :], ones)
        values = _date_parts(vec.values, part)
        return _mapped(vec, np.where(np.isfinite(vec.values), values, math.nan))

    return handler


# --- labels ----------------------------------------------------------------------------------


def _go_name(text: str) -> tuple[str, int] | None:
    """The name a Go regexp template reference starts with, and its length (braces included)."""
    brace = text.startswith("{")
    body = text[1:] if brace else text
    i = 0
    while i < len(body) and (body[i].isalnum() or body[i] == "_"):
        i += 1
    if i == 0:
        return None
    if brace:
        if i >= len(body) or body[i] != "}":
            return None
        return body[:i], i + 2
    return body[:i], i


def expand_template(template: str, match: re.Match[str]) -> str:
    """Go's Regexp.ExpandString: $1, ${1}, $name, ${name}, $$; unknown references expand to ""."""
    out: list[str] = []
    rest = template
    while True:
        before, dollar, after = rest.partition("$")
        out.append(before)
        if not dollar:
            break
        if after.startswith("$"):
            out.append("$")
            rest = after[1:]
            continue
        found = _go_name(after)
        if found is None:
            out.append("$")
            rest = after
            continue
        name, length = found
        rest = after[length:]
        if name.isdigit() and not (name.startswith("0") and len(name) > 1) and len(name) < 9:
            index = int(name)
            if index <= (match.re.groups or 0) and match.group(index) is not None:
                out.append(match.group(index))
        elif name in match.re.groupindex and match.group(name) is not None:
            out.append(match.group(name))
    return "".join(out)


def _label_replace(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    dst = _string_arg(ev, node, 1, steps)
    replacement = _string_arg(ev, node, 2, steps)
    src = _string_arg(ev, node, 3, steps)
    pattern = _string_arg(ev, node, 4, steps)
    try:
        regex = re.compile(f"(?:{python_regex(pattern)})\\Z")
    except re.error:
        raise ExecutionError(f"invalid regular expression in label_replace(): {pattern}") from None
    if not valid_label_name(dst):
        raise ExecutionError(f"invalid destination label name in label_replace(): {dst}")
    labels: list[Labels] = []
    for lab in vec.labels:
        match = regex.match(get(lab, src))
        labels.append(
            lab if match is None else with_label(lab, dst, expand_template(replacement, match))
        )
    return collapse(labels, vec.values, vec.present)


def _label_join(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    dst = _string_arg(ev, node, 1, steps)
    sep = _string_arg(ev, node, 2, steps)
    sources = [_string_arg(ev, node, i, steps) for i in range(3, len(node.args))]
    for name in sources:
        if not valid_label_name(name):
            raise ExecutionError(f"invalid source label name in label_join(): {name}")
    if not valid_label_name(dst):
        raise ExecutionError(f"invalid destination label name in label_join(): {dst}")
    labels = [with_label(lab, dst, sep.join(get(lab, s) for s in sources)) for lab in vec.labels]
    return collapse(labels, vec.values, vec.present)


def _absent(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    vec = _vector_arg(ev, node, 0, steps)
    missing = ~any_row(vec.present)
    block = VectorBlock(
        [range_functions.absent_labels(node.args[0])], np.ones((1, steps.shape[0])), missing[None]
    )
    return block.nonempty()


def _sort(descending: bool) -> Handler:
    def handler(ev: Evaluator, node: Call, steps: IntArray) -> Block:
        vec = _vector_arg(ev, node, 0, steps)
        if steps.shape[0] != 1 or len(vec) < 2:
            return vec
        values = vec.values[:, 0]
        nan = np.isnan(values)
        key = np.where(nan, 0.0, -values if descending else values)
        return vec.take(np.lexsort((key, nan)))

    return handler


def _histogram_quantile(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    qs = _scalar_arg(ev, node, 0, steps, math.nan)
    vec = _vector_arg(ev, node, 1, steps)
    return histogram.histogram_quantile(qs, vec)


_MATH: dict[str, Callable[[ValueArray], ValueArray]] = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "ln": np.log,
    "log2": np.log2,
    "log10": np.log10,
    "sgn": _sgn,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "deg": lambda v: v * 180 / math.pi,
    "rad": lambda v: v * math.pi / 180,
}

FUNCTIONS: dict[str, Handler] = {name: _math(fn) for name, fn in _MATH.items()}
FUNCTIONS.update(
    {
        "round": _round,
        "clamp": _clamp,
        "clamp_min": _clamp_min,
        "clamp_max": _clamp_max,
        "pi": _pi,
        "time": _time,
        "vector": _vector,
        "scalar": _scalar,
        "timestamp": _timestamp,
        "label_replace": _label_replace,
        "label_join": _label_join,
        "absent": _absent,
        "sort": _sort(descending=False),
        "sort_desc": _sort(descending=True),
        "histogram_quantile": _histogram_quantile,
    }
)
for _part in (
    "minute",
    "hour",
    "day_of_week",
    "day_of_month",
    "day_of_year",
    "days_in_month",
    "month",
    "year",
):
    FUNCTIONS[_part] = _date(_part)
FUNCTIONS.update(range_functions.FUNCTIONS)


def call(ev: Evaluator, node: Call, steps: IntArray) -> Block:
    handler = FUNCTIONS.get(node.name)
    if handler is None:
        raise BadData(f'unknown function with name "{node.name}"')
    return handler(ev, node, steps)
