"""The OpenMetrics 1.0 text parser (content type `application/openmetrics-text`).

Strict, as its conformance suite demands: `# EOF` ends the body (one LF may follow), no blank
lines or comments, single spaces, no whitespace or trailing comma in label sets; TYPE/HELP/UNIT
at most once per family and before its samples; families contiguous and their possible sample
names unclaimed by another family; per type the allowed suffixes and the counter-like rules
(not NaN, not negative, integer counts), ordered buckets ending in `le="+Inf"`,
`_count`/`_sum` together, quantiles in [0, 1], stateset and info values; a metric's samples
contiguous with non-decreasing timestamps. Exemplars (on counter `_total` and histogram
`_bucket` only, at most 128 label characters) are validated, then dropped, as Prometheus does
unless exemplar storage is on. `_created` samples are kept as ordinary series: Prometheus drops
them only when created timestamp ingestion is enabled. Timestamps are seconds; like
Prometheus's int64(ts * 1000) we multiply in float64 and truncate toward zero (clamped to
int64).

What both formats share (label sets, errors, `le`/`quantile` spelling) is in
exposition_syntax.py; `exposition.parse` is the entry point that picks the format.
"""

from __future__ import annotations

import re
from bisect import insort

from scalelab.monitoring.exposition_syntax import (
    INT64_MAX,
    INT64_MIN,
    LABEL_ESCAPES,
    LNAME,
    LNAME_AT,
    NAME,
    NAME_AT,
    NUMBER,
    NUMBER_RE,
    PAIR,
    QUOTED_AT,
    REAL,
    duplicate_error,
    fail,
    normalized_bound,
    unescape,
)
from scalelab.monitoring.model import (
    METRIC_NAME,
    Exposition,
    Labels,
    MetricMetadata,
    MetricType,
)

# Possessive quantifiers: nothing after a name, a label value or a label set can be matched by
# giving characters back, and not trying saves a sixth of the matching time.
_OM_FAST = re.compile(
    rf'({NAME}+)(?:\{{((?:{LNAME}+="[^"\\]*+"(?:,{LNAME}+="[^"\\]*+")*+)?)\}})?'
    rf" ({NUMBER})(?: ({REAL}))?\Z"
)
_REAL_RE = re.compile(rf"{REAL}\Z")
_OM_META = re.compile(rf"# (HELP|TYPE|UNIT) ({NAME})(?: (.*))?\Z", re.S)
_UNIT_RE = re.compile(r"[a-zA-Z0-9_:]*\Z")

_OM_TYPES = {t.value: t for t in MetricType}
_SUFFIXES: dict[MetricType, tuple[str, ...]] = {
    MetricType.COUNTER: ("_total", "_created"),
    MetricType.GAUGE: ("",),
    MetricType.HISTOGRAM: ("_bucket", "_count", "_sum", "_created"),
    MetricType.GAUGE_HISTOGRAM: ("_bucket", "_gcount", "_gsum"),
    MetricType.SUMMARY: ("", "_count", "_sum", "_created"),
    MetricType.INFO: ("_info",),
    MetricType.STATESET: ("",),
    MetricType.UNKNOWN: ("",),
}
_HISTOGRAMS = (MetricType.HISTOGRAM, MetricType.GAUGE_HISTOGRAM)
_COUNTER, _GAUGE, _UNKNOWN = MetricType.COUNTER, MetricType.GAUGE, MetricType.UNKNOWN
_EXEMPLAR_MAX_CHARS = 128


def _to_float(text: str, lineno: int, line: str) -> float:
    """float() of a token already matched by NUMBER, rejecting overflow as Go's ParseFloat."""
    v = float(text)
    if v - v != 0.0 and text[-1] not in "fFyYnN":
        raise fail(lineno, f"number {text!r} out of range", line)
    return v


def decode_openmetrics(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        shown = data[start : end if end >= 0 else len(data)].decode("utf-8", "backslashreplace")
        raise fail(data.count(b"\n", 0, exc.start) + 1, "invalid UTF-8", shown) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the LF that may follow "# EOF"
    return lines


def _ms(seconds: float) -> int:
    """Prometheus's int64(ts * 1000): float multiply, truncation toward zero, int64-clamped."""
    ms = seconds * 1000.0
    if ms >= 9.223372036854775808e18:
        return INT64_MAX
    if ms < -9.223372036854775808e18:
        return INT64_MIN
    return int(ms)


def _om_value_ts(part: str, what: str, lineno: int, line: str) -> tuple[str, str | None]:
    """`number [SP timestamp]`, the tail of a sample or of an exemplar."""
    tokens = part.split(" ")
    if len(tokens) > 2 or not all(tokens):
        raise fail(lineno, f"expected '{what} [timestamp]' separated by single spaces", line)
    if not NUMBER_RE.match(tokens[0]):
        raise fail(lineno, f"invalid {what} {tokens[0]!r}", line)
    if len(tokens) == 1:
        return tokens[0], None
    if not _REAL_RE.match(tokens[1]):
        raise fail(lineno, f"invalid timestamp {tokens[1]!r}", line)
    return tokens[0], tokens[1]


def _om_labels(text: str, i: int, lineno: int, line: str) -> tuple[list[tuple[str, str]], int]:
    """The label set opening at text[i]; returns the pairs and the index after `}`."""
    i += 1
    pairs: list[tuple[str, str]] = []
    if text.startswith("}", i):
        return pairs, i + 1
    while True:
        m = LNAME_AT.match(text, i)
        if m is None:
            raise fail(lineno, "expected a label name", line)
        if not text.startswith("=", m.end()):
            raise fail(lineno, f"expected '=' after label name {m.group()!r}", line)
        q = QUOTED_AT.match(text, m.end() + 1)
        if q is None:
            raise fail(lineno, f"expected a quoted value for label {m.group()!r}", line)
        pairs.append((m.group(), unescape(q.group(1), LABEL_ESCAPES)))
        i = q.end()
        if text.startswith(",", i):
            i += 1
        elif text.startswith("}", i):
            return pairs, i + 1
        else:
            raise fail(lineno, "expected ',' or '}' after a label value", line)


def _om_sample(line: str, lineno: int) -> tuple[str, list[tuple[str, str]], str, str | None, bool]:
    """The careful path: escapes and exemplars. Returns name, pairs, value, ts, has exemplar."""
    m = NAME_AT.match(line)
    if m is None:
        raise fail(lineno, "expected a metric name", line)
    name, i = m.group(), m.end()
    pairs: list[tuple[str, str]] = []
    if line.startswith("{", i):
        pairs, i = _om_labels(line, i, lineno, line)
    if not line.startswith(" ", i):
        raise fail(lineno, "expected a single space and a value after the series", line)
    head, exemplar, tail = line[i + 1 :].partition(" # ")
    value, ts = _om_value_ts(head, "value", lineno, line)
    if exemplar:
        if not tail.startswith("{"):
            raise fail(lineno, "expected a label set after '# ' (exemplar)", line)
        ex_pairs, j = _om_labels(tail, 0, lineno, line)
        if sum(len(k) + len(v) for k, v in ex_pairs) > _EXEMPLAR_MAX_CHARS:
            raise fail(lineno, "exemplar labels longer than 128 characters", line)
        if len(dict(ex_pairs)) != len(ex_pairs):
            raise fail(lineno, "repeated exemplar label", line)
        if not tail.startswith(" ", j):
            raise fail(lineno, "expected a single space and a value after exemplar labels", line)
        ex_value, ex_ts = _om_value_ts(tail[j + 1 :], "exemplar value", lineno, line)
        _to_float(ex_value, lineno, line)
        if ex_ts is not None:
            _to_float(ex_ts, lineno, line)
    return name, pairs, value, ts, bool(exemplar)


class _Point:
    """The histogram MetricPoint being read: what its end-of-point checks need."""

    __slots__ = ("le", "bucket", "count", "has_sum", "gsum", "negative", "lineno", "line")

    def __init__(self, lineno: int, line: str) -> None:
        self.le: float | None = None  # threshold of the last bucket
        self.bucket = 0.0  # value of the last bucket
        self.count: float | None = None
        self.has_sum = False
        self.gsum: float | None = None
        self.negative = False  # any bucket below zero
        self.lineno = lineno
        self.line = line


class _Family:
    """A metric family while its lines are read."""

    __slots__ = (
        *("name", "type", "help", "unit", "declared", "names"),
        *("groups", "group", "group_ts", "point"),
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.type = MetricType.UNKNOWN
        self.help = ""
        self.unit = ""
        self.declared: set[str] = set()  # which of TYPE, HELP, UNIT were given
        self.names: dict[str, str] = {name: ""}  # sample name -> suffix
        self.groups: set[Labels] = set()  # metrics (label sets) seen
        self.group: Labels | None = None  # the current metric
        self.group_ts: float | None = None
        self.point: _Point | None = None


class OpenMetricsParser:
    """One body's worth of state: families seen, which family owns each sample name."""

    def __init__(self) -> None:
        self.samples: list[tuple[Labels, float, int | None]] = []
        self.append = self.samples.append
        self.metadata: dict[str, MetricMetadata] = {}
        self.owner: dict[str, str] = {}  # family or sample name -> the family that may use it
        self.family: _Family | None = None

    def run(self, lines: list[str]) -> Exposition:
        fast = _OM_FAST.match
        pairs_of = PAIR.findall
        sample = self.sample
        eof = 0
        for lineno, line in enumerate(lines, 1):
            if eof:
                raise fail(lineno, "text after # EOF", line)
            if not line:
                raise fail(lineno, "blank line", line)
            if line[0] == "#":
                if line == "# EOF":
                    eof = lineno
                else:
                    self.metadata_line(lineno, line)
                continue
            m = fast(line)
            if m is not None:
                name, inner, value, ts = m.groups()
                sample(lineno, line, name, pairs_of(inner) if inner else [], value, ts, False)
            else:
                sample(lineno, line, *_om_sample(line, lineno))
        if not eof:
            raise fail(len(lines) + 1, "missing '# EOF' at the end", "")
        if self.family is not None:
            self.finish(self.family)
        return Exposition(samples=self.samples, metadata=self.metadata)

    def start(self, name: str, lineno: int, line: str) -> _Family:
        """Open a new family, which must not have appeared yet nor be a name another claims."""
        if self.family is not None:
            self.finish(self.family)
        owner = self.owner.get(name)
        if owner == name:
            raise fail(lineno, f"metric family {name} appears again, not in one block", line)
        if owner is not None:
            raise fail(lineno, f"name {name} clashes with metric family {owner}", line)
        self.owner[name] = name
        family = self.family = _Family(name)
        return family

    def finish(self, family: _Family) -> None:
        if family.point is not None:
            self.end_point(family, family.point)
        if family.declared:
            self.metadata[family.name] = MetricMetadata(family.type, family.help, family.unit)

    def metadata_line(self, lineno: int, line: str) -> None:
        m = _OM_META.match(line)
        if m is None:
            raise fail(lineno, "expected '# HELP', '# TYPE', '# UNIT' or '# EOF'", line)
        kind, name, arg = m.groups()
        if arg is None:
            raise fail(lineno, f"{kind} needs a space and text after the metric name", line)
        family = self.family
        if family is None or family.name != name:
            family = self.start(name, lineno, line)
        elif family.group is not None:  # it has samples
            raise fail(lineno, f"{kind} of {name} after its samples", line)
        if kind in family.declared:
            raise fail(lineno, f"second {kind} of {name}", line)
        family.declared.add(kind)
        if kind == "TYPE":
            mtype = _OM_TYPES.get(arg)
            if mtype is None:
                raise fail(lineno, f"invalid metric type {arg!r}", line)
            family.type = mtype
            family.names = {}
            for suffix in _SUFFIXES[mtype]:
                full = name + suffix
                owner = self.owner.get(full, name)
                if owner != name:
                    raise fail(lineno, f"{full} already belongs to metric family {owner}", line)
                self.owner[full] = name
                family.names[full] = suffix
        elif kind == "HELP":
            family.help = unescape(arg, LABEL_ESCAPES)
        else:
            if not _UNIT_RE.match(arg):
                raise fail(lineno, f"invalid unit {arg!r}", line)
            if arg and not name.endswith("_" + arg):
                raise fail(lineno, f"metric name {name} does not end with _{arg}", line)
            family.unit = arg
        if family.unit and family.type in (MetricType.INFO, MetricType.STATESET):
            raise fail(lineno, f"{family.type.value} {name} cannot have a unit", line)

    def sample(
        self,
        lineno: int,
        line: str,
        name: str,
        pairs: list[tuple[str, str]],
        value: str,
        ts: str | None,
        exemplar: bool,
    ) -> None:
        family = self.family
        suffix = None if family is None else family.names.get(name)
        if family is None or suffix is None:
            if family is not None and self.owner.get(name) == family.name:
                expected = ", ".join(family.names)
                raise fail(
                    lineno, f"{family.type.value} {family.name} has samples {expected}", line
                )
            family = self.start(name, lineno, line)
            suffix = ""
        v = float(value)
        if v - v != 0.0 and value[-1] not in "fFyYnN":
            raise fail(lineno, f"value {value!r} out of range", line)
        mtype = family.type
        special: str | None = None  # the label that tells samples of one metric apart
        le: float | None = None
        if mtype is _COUNTER:
            if suffix == "_total" and not v >= 0:
                raise fail(lineno, "a counter's _total must not be NaN or negative", line)
        elif mtype is not _GAUGE and mtype is not _UNKNOWN:
            special, le = self.check_typed(family, suffix, pairs, v, lineno, line)
        if exemplar and not (
            (suffix == "_total" and mtype is _COUNTER)
            or (suffix == "_bucket" and mtype in _HISTOGRAMS)
        ):
            raise fail(lineno, "exemplars only go on counter _total and bucket samples", line)

        if pairs:
            seen = dict(pairs)
            if len(seen) != len(pairs) or METRIC_NAME in seen:
                raise duplicate_error([*pairs, (METRIC_NAME, name)], lineno, line)
            if "" in seen.values():
                pairs = [p for p in pairs if p[1]]
            pairs.sort()
            key = tuple(pairs) if special is None else tuple([p for p in pairs if p[0] != special])
            insort(pairs, (METRIC_NAME, name))
            labels = tuple(pairs)
        else:
            labels = ((METRIC_NAME, name),)
            key = ()

        if ts is None:
            tsf = None
        else:
            tsf = float(ts)
            if tsf - tsf != 0.0:
                raise fail(lineno, f"timestamp {ts!r} out of range", line)
        if key != family.group:
            if key in family.groups:
                raise fail(lineno, "samples of one metric must be together", line)
            family.groups.add(key)
            family.group = key
            family.group_ts = tsf
            new_point = True
        else:
            prev = family.group_ts
            if tsf is None or prev is None:
                if tsf is not prev:
                    raise fail(lineno, "one metric's samples mix with and without timestamps", line)
            elif tsf < prev:
                raise fail(lineno, "timestamps of one metric go backwards", line)
            new_point = tsf != prev
            family.group_ts = tsf
        if mtype in _HISTOGRAMS:
            point = family.point
            if point is None or new_point:
                if point is not None:
                    self.end_point(family, point)
                point = family.point = _Point(lineno, line)
            self.add_to_point(point, suffix, v, le, lineno, line)
        self.append((labels, v, None if tsf is None else _ms(tsf)))

    def check_typed(
        self,
        family: _Family,
        suffix: str,
        pairs: list[tuple[str, str]],
        v: float,
        lineno: int,
        line: str,
    ) -> tuple[str | None, float | None]:
        """Rules of histogram, summary, info and stateset samples; normalizes le and quantile
        in pairs. Returns the label that tells this metric's samples apart, and the bucket's le.
        """
        mtype = family.type
        if mtype is MetricType.INFO:
            if v != 1:
                raise fail(lineno, "an info sample's value must be 1", line)
            return None, None
        if mtype is MetricType.STATESET:
            if not any(k == family.name for k, _ in pairs):
                raise fail(lineno, f"stateset sample without its {family.name!r} label", line)
            if v != 0 and v != 1:
                raise fail(lineno, "a stateset sample's value must be 0 or 1", line)
            return family.name, None
        if suffix in ("_count", "_gcount"):
            if not v >= 0 or not v.is_integer():
                raise fail(lineno, f"{suffix} must be a non-negative integer", line)
        elif suffix == "_sum" or suffix == "_gsum":
            if v != v or (suffix == "_sum" and v < 0):
                raise fail(lineno, f"{suffix} must not be NaN or negative", line)
        elif suffix == "_bucket":
            index, text = _find(pairs, "le")
            if text is None or not NUMBER_RE.match(text) or text.lower().endswith("nan"):
                raise fail(lineno, "a bucket needs an le label with a number", line)
            le = float(text)
            if le == float("inf") and text != "+Inf":
                raise fail(lineno, 'the +Inf bucket must be written le="+Inf"', line)
            if not v >= 0 or not v.is_integer():
                raise fail(lineno, "a bucket's value must be a non-negative integer", line)
            pairs[index] = ("le", normalized_bound(text))
            return "le", le
        elif suffix == "" and mtype is MetricType.SUMMARY:
            index, text = _find(pairs, "quantile")
            if text is None or not NUMBER_RE.match(text) or not 0 <= float(text) <= 1:
                raise fail(lineno, "a quantile sample needs a quantile label in [0, 1]", line)
            if v < 0:
                raise fail(lineno, "a quantile's value must not be negative", line)
            pairs[index] = ("quantile", normalized_bound(text))
            return "quantile", None
        return None, None

    def add_to_point(
        self, point: _Point, suffix: str, v: float, le: float | None, lineno: int, line: str
    ) -> None:
        if suffix == "_bucket" and le is not None:
            if point.le is not None and le <= point.le:
                raise fail(lineno, "buckets must be in increasing le order", line)
            if v < point.bucket:
                raise fail(lineno, "bucket values must not decrease", line)
            point.le, point.bucket = le, v
            point.negative = point.negative or le < 0
        elif suffix == "_count" or suffix == "_gcount":
            point.count = v
        elif suffix == "_sum":
            point.has_sum = True
        elif suffix == "_gsum":
            point.gsum = v

    def end_point(self, family: _Family, point: _Point) -> None:
        """Checks that need all of a histogram MetricPoint."""
        family.point = None
        lineno, line = point.lineno, point.line
        if point.le != float("inf"):
            raise fail(lineno, f"histogram {family.name} lacks its +Inf bucket", line)
        if point.count is not None and point.count != point.bucket:
            raise fail(lineno, f"{family.name}: count differs from the +Inf bucket", line)
        if family.type is MetricType.HISTOGRAM:
            if point.has_sum != (point.count is not None):
                raise fail(lineno, f"{family.name}: _sum and _count go together", line)
            if point.negative and point.has_sum:
                raise fail(lineno, f"{family.name}: no _sum with negative buckets", line)
        else:
            if (point.gsum is None) != (point.count is None):
                raise fail(lineno, f"{family.name}: _gsum and _gcount go together", line)
            if point.gsum is not None and point.gsum < 0 and not point.negative:
                raise fail(lineno, f"{family.name}: negative _gsum needs negative buckets", line)


def _find(pairs: list[tuple[str, str]], name: str) -> tuple[int, str | None]:
    for index, (k, v) in enumerate(pairs):
        if k == name:
            return index, v
    return -1, None
