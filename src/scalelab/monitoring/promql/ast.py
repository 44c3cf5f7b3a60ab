"""Our own typed PromQL syntax tree, converted once from promql_parser's objects.

promql_parser (a Rust binding) does the parsing; its node objects are loosely typed and a few of
their attributes misbehave (a negative `@` time panics on access), so the evaluator never sees
them: `parse` walks the parser's tree once and builds these frozen dataclasses, with durations
and times in int milliseconds and matchers as `model.Matcher`, each node knowing its value type.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import promql_parser

from ..errors import BadData
from ..model import METRIC_NAME, Matcher, MatchType

_T = TypeVar("_T")


class ValueType(enum.Enum):
    SCALAR = "scalar"
    VECTOR = "vector"
    MATRIX = "matrix"
    STRING = "string"


_DOCUMENTED = {
    ValueType.SCALAR: "scalar",
    ValueType.VECTOR: "instant vector",
    ValueType.MATRIX: "range vector",
    ValueType.STRING: "string",
}


def documented(vtype: ValueType) -> str:
    """The type name Prometheus uses in its error messages."""
    return _DOCUMENTED[vtype]


class AtKind(enum.Enum):
    TIME = "time"
    START = "start"
    END = "end"


@dataclass(frozen=True, slots=True)
class At:
    """An `@` modifier: a fixed time, or the query's start()/end()."""

    kind: AtKind
    time_ms: int = 0


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float

    @property
    def type(self) -> ValueType:
        return ValueType.SCALAR


@dataclass(frozen=True, slots=True)
class StringLiteral:
    value: str

    @property
    def type(self) -> ValueType:
        return ValueType.STRING


@dataclass(frozen=True, slots=True)
class VectorSelector:
    matchers: tuple[Matcher, ...]
    offset_ms: int = 0
    at: At | None = None

    @property
    def type(self) -> ValueType:
        return ValueType.VECTOR


@dataclass(frozen=True, slots=True)
class MatrixSelector:
    selector: VectorSelector
    range_ms: int

    @property
    def type(self) -> ValueType:
        return ValueType.MATRIX


@dataclass(frozen=True, slots=True)
class Subquery:
    expr: Expr
    range_ms: int
    step_ms: int | None
    offset_ms: int = 0
    at: At | None = None

    @property
    def type(self) -> ValueType:
        return ValueType.MATRIX


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    return_type: ValueType

    @property
    def type(self) -> ValueType:
        return self.return_type


@dataclass(frozen=True, slots=True)
class Aggregate:
    op: str
    expr: Expr
    param: Expr | None
    grouping: tuple[str, ...]
    without: bool

    @property
    def type(self) -> ValueType:
        return ValueType.VECTOR


class Card(enum.Enum):
    ONE_TO_ONE = "one-to-one"
    MANY_TO_ONE = "many-to-one"
    ONE_TO_MANY = "one-to-many"
    MANY_TO_MANY = "many-to-many"


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    lhs: Expr
    rhs: Expr
    return_bool: bool = False
    card: Card = Card.ONE_TO_ONE
    on: bool = False
    matching: tuple[str, ...] = ()
    include: tuple[str, ...] = ()

    @property
    def type(self) -> ValueType:
        if self.lhs.type is ValueType.SCALAR and self.rhs.type is ValueType.SCALAR:
            return ValueType.SCALAR
        return ValueType.VECTOR


@dataclass(frozen=True, slots=True)
class Negation:
    expr: Expr

    @property
    def type(self) -> ValueType:
        return self.expr.type


@dataclass(frozen=True, slots=True)
class Paren:
    expr: Expr

    @property
    def type(self) -> ValueType:
        return self.expr.type


Expr = (
    NumberLiteral
    | StringLiteral
    | VectorSelector
    | MatrixSelector
    | Subquery
    | Call
    | Aggregate
    | Binary
    | Negation
    | Paren
)

SET_OPERATORS = frozenset({"and", "or", "unless"})
COMPARISON_OPERATORS = frozenset({"==", "!=", ">", "<", ">=", "<="})

# The binding's enums do not hash, so these are looked up by equality.
_MATCH_TYPES = (
    (promql_parser.MatchOp.Equal, MatchType.EQUAL),
    (promql_parser.MatchOp.NotEqual, MatchType.NOT_EQUAL),
    (promql_parser.MatchOp.Re, MatchType.REGEX),
    (promql_parser.MatchOp.NotRe, MatchType.NOT_REGEX),
)
_CARDS = (
    (promql_parser.VectorMatchCardinality.OneToOne, Card.ONE_TO_ONE),
    (promql_parser.VectorMatchCardinality.ManyToOne, Card.MANY_TO_ONE),
    (promql_parser.VectorMatchCardinality.OneToMany, Card.ONE_TO_MANY),
    (promql_parser.VectorMatchCardinality.ManyToMany, Card.MANY_TO_MANY),
)
_VALUE_TYPES = (
    (promql_parser.ValueType.Scalar, ValueType.SCALAR),
    (promql_parser.ValueType.Vector, ValueType.VECTOR),
    (promql_parser.ValueType.Matrix, ValueType.MATRIX),
    (promql_parser.ValueType.String, ValueType.STRING),
)


def _lookup(table: tuple[tuple[Any, _T], ...], key: Any) -> _T:
    for theirs, ours in table:
        if key == theirs:
            return ours
    raise BadData(f"unsupported syntax element {key!r}")


# The Debug form of a Rust SystemTime, our way to read an `@` time before the epoch.
_SYSTEM_TIME = re.compile(r"At\(\s*SystemTime\s*\{\s*tv_sec:\s*(-?\d+),\s*tv_nsec:\s*(\d+)")


def _register_2x_functions() -> None:
    """holt_winters is 2.x's name for what 3.x calls double_exponential_smoothing."""
    try:
        promql_parser.parse("holt_winters(x[1m], 0.5, 0.5)")
    except ValueError:
        matrix, scalar = promql_parser.ValueType.Matrix, promql_parser.ValueType.Scalar
        fn = promql_parser.Function(
            "holt_winters", [matrix, scalar, scalar], promql_parser.ValueType.Vector
        )
        promql_parser.register_extra_functions([fn])


_register_2x_functions()


def parse(query: str) -> Expr:
    """Parse a PromQL expression; syntax errors become `BadData` with the parser's message."""
    try:
        raw = promql_parser.parse(query)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the binding also raises pyo3's PanicException
        raise BadData(str(exc).strip() or "parse error") from None
    try:
        return _convert(raw)
    except (OverflowError, ValueError) as exc:
        raise BadData(str(exc)) from None


def _ms(delta: timedelta | None) -> int:
    if delta is None:
        return 0
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


# Beyond this an @ time would overflow int64 milliseconds on the way through the engine.
_MAX_AT_MS = 2**62


def _at(node: Any) -> At | None:
    modifier = node.at
    if modifier is None:
        return None
    kind = modifier.type
    if kind == promql_parser.AtModifierType.Start:
        return At(AtKind.START)
    if kind == promql_parser.AtModifierType.End:
        return At(AtKind.END)
    # The binding panics when asked for a time before the epoch, so the time is read from the
    # node's Debug form (the node's own @ comes last, after any inside a subquery).
    found = _SYSTEM_TIME.findall(repr(node))
    if not found:
        raise BadData("cannot read the @ modifier's time")
    seconds, nanos = found[-1]
    time_ms = int(seconds) * 1000 + int(nanos) // 1_000_000
    if abs(time_ms) > _MAX_AT_MS:
        raise BadData(f"timestamp out of bounds for @ modifier: {int(seconds)}")
    return At(AtKind.TIME, time_ms)


_LEADING_FLAGS = re.compile(r"\(\?([ims]+)\)")


def python_regex(pattern: str) -> str:
    """Go's regexp lets `(?i)` open a pattern anywhere (even inside the group Prometheus
    wraps around it); Python 3.11 only accepts global flags first, so a leading flag group
    becomes a scoped one: `(?i)abc` -> `(?i:abc)`."""
    found = _LEADING_FLAGS.match(pattern)
    if found is None:
        return pattern
    return f"(?{found.group(1)}:{pattern[found.end() :]})"


def _matchers(selector: Any) -> tuple[Matcher, ...]:
    if selector.matchers.or_matchers:
        raise BadData("'or' between label matchers is not supported (added in Prometheus 3)")
    out: list[Matcher] = []
    if selector.name is not None:
        out.append(Matcher(MatchType.EQUAL, METRIC_NAME, str(selector.name)))
    for m in selector.matchers.matchers:
        try:
            kind = _lookup(_MATCH_TYPES, m.op)
            value = str(m.value)
            if kind in (MatchType.REGEX, MatchType.NOT_REGEX):
                value = python_regex(value)
            out.append(Matcher(kind, str(m.name), value))
        except ValueError as exc:
            raise BadData(str(exc)) from None
    return tuple(out)


def _vector_selector(node: Any) -> VectorSelector:
    return VectorSelector(_matchers(node), _ms(node.offset), _at(node))


def _convert(node: Any) -> Expr:
    if isinstance(node, promql_parser.NumberLiteral):
        return NumberLiteral(float(node.val))
    if isinstance(node, promql_parser.StringLiteral):
        return StringLiteral(str(node.val))
    if isinstance(node, promql_parser.VectorSelector):
        return _vector_selector(node)
    if isinstance(node, promql_parser.MatrixSelector):
        return MatrixSelector(_vector_selector(node.vector_selector), _ms(node.range))
    if isinstance(node, promql_parser.SubqueryExpr):
        step = _ms(node.step) if node.step is not None else None
        return Subquery(
            _convert(node.expr), _ms(node.range), step or None, _ms(node.offset), _at(node)
        )
    if isinstance(node, promql_parser.ParenExpr):
        return Paren(_convert(node.expr))
    if isinstance(node, promql_parser.UnaryExpr):
        return Negation(_convert(node.expr))
    if isinstance(node, promql_parser.Call):
        func = node.func
        args = tuple(_convert(a) for a in node.args)
        return Call(str(func.name), args, _lookup(_VALUE_TYPES, func.return_type))
    if isinstance(node, promql_parser.AggregateExpr):
        return _aggregate(node)
    if isinstance(node, promql_parser.BinaryExpr):
        return _binary(node)
    raise BadData(f"unsupported expression {type(node).__name__}")


def _aggregate(node: Any) -> Aggregate:
    modifier = node.modifier
    grouping: tuple[str, ...] = ()
    without = False
    if modifier is not None:
        grouping = tuple(str(n) for n in modifier.labels)
        without = modifier.type == promql_parser.AggModifierType.Without
    param = None if node.param is None else _convert(node.param)
    return Aggregate(str(node.op), _convert(node.expr), param, grouping, without)


def _binary(node: Any) -> Binary:
    op = str(node.op)
    lhs, rhs = _convert(node.lhs), _convert(node.rhs)
    modifier = node.modifier
    if modifier is None:
        card = Card.MANY_TO_MANY if op in SET_OPERATORS else Card.ONE_TO_ONE
        return Binary(op, lhs, rhs, card=card)
    matching = modifier.matching
    on = matching is not None and matching.type == promql_parser.LabelModifierType.Include
    names = () if matching is None else tuple(str(n) for n in matching.labels)
    include = tuple(str(n) for n in (modifier.group_labels or ()))
    return Binary(
        op,
        lhs,
        rhs,
        return_bool=bool(modifier.return_bool),
        card=_lookup(_CARDS, modifier.card),
        on=on,
        matching=names,
        include=include,
    )


def unwrap(expr: Expr) -> Expr:
    """The expression inside any parentheses."""
    while isinstance(expr, Paren):
        expr = expr.expr
    return expr
