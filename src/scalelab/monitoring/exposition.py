"""Parsers for what a scrape returns: the Prometheus text format 0.0.4 and OpenMetrics 1.0 text.

Parsing is the hot path of scraping, so each sample line is first tried against one regular
expression that covers the common shape (no escapes, single spaces, no exemplar); only lines
that miss it go through the careful tokenizer, which also produces the error messages.

Text format (anything not OpenMetrics), read the way Prometheus's own scraper reads it:
- LF ends a line; blank and whitespace-only lines are skipped; runs of spaces and tabs separate
  tokens and may lead a line. CR is not whitespace, so a CRLF body fails at its first sample
  line, as in Prometheus, with an error that names the Windows line ending.
- `# HELP name text` and `# TYPE name type` are metadata (repeats: the last wins); any other `#`
  line is a comment. HELP unescapes `\\\\` and `\\n`; label values also `\\"`; any other
  backslash pair is kept as written. TYPE is counter, gauge, histogram, summary or untyped.
- Labels: `{}` is allowed, the comma between pairs is optional and a trailing one allowed (all
  as Prometheus's lexer does). A value needs whitespace after a bare metric name.
- Values follow Go's ParseFloat without hex or underscores (`NaN`, `+Inf`, `-Inf`, `Infinity`
  in any case); out-of-range values such as 1e400 are errors. Timestamps are unsigned integer
  milliseconds that fit int64.

OpenMetrics 1.0 (content type `application/openmetrics-text`), strict, as its conformance suite
demands: `# EOF` ends the body (one LF may follow), no blank lines or comments, single spaces,
no whitespace or trailing comma in label sets; TYPE/HELP/UNIT at most once per family and
before its samples; families contiguous and their possible sample names unclaimed by another
family; per type the allowed suffixes and the counter-like rules (not NaN, not negative,
integer counts), ordered buckets ending in `le="+Inf"`, `_count`/`_sum` together, quantiles in
[0, 1], stateset and info values; a metric's samples contiguous with non-decreasing
timestamps. Exemplars (on counter `_total` and histogram `_bucket` only, at most 128 label
characters) are validated, then dropped, as Prometheus does unless exemplar storage is on.
`_created` samples are kept as ordinary series: Prometheus drops them only when created
timestamp ingestion is enabled. Timestamps are seconds; like Prometheus's int64(ts * 1000) we
multiply in float64 and truncate toward zero (clamped to int64).

Both: label sets are canonical (sorted, `__name__` included, empty values dropped); duplicate
label names, `__name__` inside braces and invalid UTF-8 are errors. As Prometheus 3 does, `le`
of histogram buckets and `quantile` of summaries are rewritten to the OpenMetrics spelling of
the float (`1` -> `1.0`, `1e-05`) so a series keeps its identity whichever format was served.
A series repeated in one body is kept twice: storage reports the duplicate, as in Prometheus.
Names are the legacy character set only (no quoted UTF-8 names), hence escaping=underscores
in ACCEPT_HEADER.
"""

from __future__ import annotations

import re
from bisect import insort

from scalelab.monitoring.errors import ParseError
from scalelab.monitoring.model import (
    METRIC_NAME,
    Exposition,
    Labels,
    MetricMetadata,
    MetricType,
)

__all__ = [
    "ACCEPT_HEADER",
    "OPENMETRICS_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "content_type_of",
    "format_om_float",
    "parse",
]

OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Prometheus 3's default scrape_protocols with legacy (non-UTF-8) metric names: the q weights
# are the ones its acceptHeader() computes; escaping=underscores asks exporters to map UTF-8
# names onto the legacy character set, which is all we parse.
ACCEPT_HEADER = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,"
    "*/*;q=0.2"
)

_OM_MEDIA = "application/openmetrics-text"
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LNAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_REAL = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER = rf"(?:{_REAL}|[+-]?[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])"

# Possessive quantifiers: nothing after a name, a label value or a label set can be matched by
# giving characters back, and not trying saves a sixth of the matching time.
_TEXT_FAST = re.compile(
    rf'({_NAME}+)(?:\{{((?:{_LNAME}+="[^"\\]*+",?+)*+)\}})? ({_NUMBER})(?: ([0-9]++))?\Z'
)
_OM_FAST = re.compile(
    rf'({_NAME}+)(?:\{{((?:{_LNAME}+="[^"\\]*+"(?:,{_LNAME}+="[^"\\]*+")*+)?)\}})?'
    rf" ({_NUMBER})(?: ({_REAL}))?\Z"
)
_PAIR = re.compile(rf'({_LNAME}+)="([^"\\]*+)"')
_NAME_AT = re.compile(_NAME)
_LNAME_AT = re.compile(_LNAME)
_QUOTED_AT = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_TOKEN_AT = re.compile(r"[^{ \t]+")
_DIGITS_AT = re.compile(r"[0-9]+")
_NUMBER_RE = re.compile(rf"{_NUMBER}\Z")
_REAL_RE = re.compile(rf"{_REAL}\Z")
_TEXT_META = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+")
_TEXT_META_FAST = re.compile(rf"# (HELP|TYPE) ({_NAME})(?: (.*))?\Z", re.S)
_TEXT_META_BYTES = re.compile(rb"#[ \t]+(?:HELP|TYPE)[ \t]")
_OM_META = re.compile(rf"# (HELP|TYPE|UNIT) ({_NAME})(?: (.*))?\Z", re.S)
_UNIT_RE = re.compile(r"[a-zA-Z0-9_:]*\Z")
_ESCAPE = re.compile(r"\\(.)", re.S)

_TEXT_TYPES = {
    "counter": MetricType.COUNTER,
    "gauge": MetricType.GAUGE,
    "histogram": MetricType.HISTOGRAM,
    "summary": MetricType.SUMMARY,
    "untyped": MetricType.UNKNOWN,
}
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
_LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}
_EXEMPLAR_MAX_CHARS = 128


def parse(data: bytes, content_type: str | None = None) -> Exposition:
    """Parse a scrape body; OpenMetrics when the content type says so, else the text format.

    Raises errors.ParseError naming the line and the problem; never anything else.
    """
    if content_type is not None and content_type.strip().lower().startswith(_OM_MEDIA):
        return _OpenMetricsParser().run(_decode_openmetrics(data))
    return _parse_text(_decode_text(data))


def content_type_of(header: str | None) -> str:
    """The exposition content type to serve (or read) for an Accept or Content-Type header.

    OpenMetrics when the header accepts it at least as much as anything we could answer with
    the text format; the text format otherwise, as exporters do for old or absent headers.
    """
    best_om = best_text = 0.0
    for part in (header or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            key, _, value = f.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if media == _OM_MEDIA:
            best_om = max(best_om, q)
        elif media in ("text/plain", "text/*", "*/*", ""):
            best_text = max(best_text, q)
    return OPENMETRICS_CONTENT_TYPE if best_om > 0 and best_om >= best_text else TEXT_CONTENT_TYPE


# ---------------------------------------------------------------------------------------------
# shared pieces


def _fail(lineno: int, problem: str, line: str) -> ParseError:
    shown = line if len(line) <= 120 else line[:117] + "..."
    hint = " (a CR: Windows line endings are not allowed)" if line.endswith("\r") else ""
    return ParseError(f"line {lineno}: {problem}{hint}: {shown!r}")


def _unescape(raw: str, table: dict[str, str]) -> str:
    if "\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: table.get(m.group(1), m.group(0)), raw)


def _to_float(text: str, lineno: int, line: str) -> float:
    """float() of a token already matched by _NUMBER, rejecting overflow as Go's ParseFloat."""
    v = float(text)
    if v - v != 0.0 and text[-1] not in "fFyYnN":
        raise _fail(lineno, f"number {text!r} out of range", line)
    return v


def _labels(name: str, pairs: list[tuple[str, str]], lineno: int, line: str) -> Labels:
    """Canonical labels from parsed pairs: duplicates rejected, empty values dropped."""
    pairs.append((METRIC_NAME, name))
    if len(pairs) > 1 and len(dict(pairs)) != len(pairs):
        raise _duplicate(pairs, lineno, line)
    kept = [p for p in pairs if p[1]]
    kept.sort()
    return tuple(kept)


def _duplicate(pairs: list[tuple[str, str]], lineno: int, line: str) -> ParseError:
    """The error for a label set with a repeated name (the metric name was appended last)."""
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            break
        seen.add(k)
    what = "__name__ inside braces" if k == METRIC_NAME else f"label {k!r} repeated"
    return _fail(lineno, what, line)


def format_om_float(value: float) -> str:
    """Go's FormatFloat(v, 'g', -1, 64) plus ".0" when that reads as an integer: the spelling
    Prometheus gives `le` and `quantile` values (1.0, 0.25, 1e-05, 100000.0, 1e+06, +Inf)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0.0"
    text = repr(value)
    sign = ""
    if text[0] == "-":
        sign, text = "-", text[1:]
    mantissa, _, exp_text = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    exp = point - 1
    if exp < -4 or exp >= 6:
        rest = "." + digits[1:] if len(digits) > 1 else ""
        out = f"{digits[0]}{rest}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    elif point <= 0:
        out = "0." + "0" * -point + digits
    elif point >= len(digits):
        out = digits + "0" * (point - len(digits))
    else:
        out = digits[:point] + "." + digits[point:]
    if "." not in out and "e" not in out:
        out += ".0"
    return sign + out


_normal_cache: dict[str, str] = {}


def _normalized(value: str) -> str:
    """The OpenMetrics spelling of a float label value; values that are no float stay as is."""
    hit = _normal_cache.get(value)
    if hit is None:
        hit = format_om_float(float(value)) if _NUMBER_RE.match(value) else value
        if len(_normal_cache) < 4096:
            _normal_cache[value] = hit
    return hit


# ---------------------------------------------------------------------------------------------
# text format 0.0.4


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Prometheus only minds invalid UTF-8 where it keeps the text (labels, HELP): a plain
    # comment may hold any bytes, so decode line by line and blank such comments out.
    out: list[str] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            head = raw.lstrip(b" \t")
            if head.startswith(b"#") and not _TEXT_META_BYTES.match(head):
                out.append("#")
            else:
                shown = raw.decode("utf-8", "backslashreplace")
                raise _fail(lineno, "invalid UTF-8", shown) from None
    return "\n".join(out)


def _parse_text(text: str) -> Exposition:
    samples: list[tuple[Labels, float, int | None]] = []
    append = samples.append
    types: dict[str, MetricType] = {}
    helps: dict[str, str] = {}
    norm_name: str | None = None  # samples whose `le`/`quantile` get normalized
    norm_label = ""
    fast = _TEXT_FAST.match
    pairs_of = _PAIR.findall
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if line[0] == "#" or line[0] in " \t":
            stripped = line.lstrip(" \t")
            if not stripped:
                continue
            if stripped[0] == "#":
                meta = _TEXT_META_FAST.match(stripped)
                parts = meta.groups("") if meta else _text_metadata(stripped, lineno, line)
                if parts is None:
                    continue  # a comment
                kind, name, arg = parts
                if kind == "HELP":
                    helps[name] = _unescape(arg, _HELP_ESCAPES)
                    continue
                mtype = types[name] = _text_type(arg, lineno, line)
                norm_name = None
                if mtype is MetricType.HISTOGRAM:
                    norm_name, norm_label = name + "_bucket", "le"
                elif mtype is MetricType.SUMMARY:
                    norm_name, norm_label = name, "quantile"
                continue
        m = fast(line)
        if m is not None:
            name, inner, value, ts = m.groups()
            if inner:
                pairs = pairs_of(inner)
                pairs.append((METRIC_NAME, name))
                if len(dict(pairs)) != len(pairs):
                    raise _duplicate(pairs, lineno, line)
                if '=""' in inner:
                    pairs = [p for p in pairs if p[1]]
                if name == norm_name:
                    pairs = [(k, _normalized(v) if k == norm_label else v) for k, v in pairs]
                pairs.sort()
                labels = tuple(pairs)
            else:
                labels = ((METRIC_NAME, name),)
        else:
            name, pairs, value, ts = _text_sample(line, lineno)
            if name == norm_name:
                pairs = [(k, _normalized(v) if k == norm_label else v) for k, v in pairs]
            labels = _labels(name, pairs, lineno, line)
        v = float(value)
        if v - v != 0.0 and value[-1] not in "fFyYnN":
            raise _fail(lineno, f"value {value!r} out of range", line)
        if ts is None:
            append((labels, v, None))
        else:
            stamp = ts.lstrip("0")
            if len(stamp) > 19 or (stamp and int(stamp) > _INT64_MAX):
                raise _fail(lineno, "timestamp out of int64 range", line)
            append((labels, v, int(stamp) if stamp else 0))
    metadata = {
        name: MetricMetadata(type=types.get(name, MetricType.UNKNOWN), help=helps.get(name, ""))
        for name in {**types, **helps}
    }
    return Exposition(samples=samples, metadata=metadata)


def _text_type(arg: str, lineno: int, line: str) -> MetricType:
    mtype = _TEXT_TYPES.get(arg)
    if mtype is None:
        raise _fail(lineno, f"invalid metric type {arg!r}", line)
    return mtype


def _text_metadata(stripped: str, lineno: int, line: str) -> tuple[str, ...] | None:
    """(HELP|TYPE, name, raw text) of a metadata line in any spacing; None for a comment."""
    m = _TEXT_META.match(stripped)
    if m is None:
        return None
    kind = m.group(1)
    n = _NAME_AT.match(stripped, m.end())
    if n is None:
        raise _fail(lineno, f"expected a metric name after {kind}", line)
    name, rest = n.group(), stripped[n.end() :]
    if rest and rest[0] not in " \t":
        raise _fail(lineno, f"expected whitespace after the metric name in {kind}", line)
    return kind, name, rest[1:]  # Prometheus drops exactly one separator


def _skip(line: str, i: int) -> int:
    n = len(line)
    while i < n and line[i] in " \t":
        i += 1
    return i


def _text_sample(line: str, lineno: int) -> tuple[str, list[tuple[str, str]], str, str | None]:
    """The careful path: whitespace runs, escapes, optional commas; the errors."""
    n = len(line)
    i = _skip(line, 0)
    m = _NAME_AT.match(line, i)
    if m is None:
        raise _fail(lineno, "expected a metric name", line)
    name, name_end = m.group(), m.end()
    j = _skip(line, name_end)
    pairs: list[tuple[str, str]] = []
    if j < n and line[j] == "{":
        i = _skip(line, j + 1)
        while True:
            if i >= n:
                raise _fail(lineno, "label set not closed", line)
            if line[i] == "}":
                i += 1
                break
            m = _LNAME_AT.match(line, i)
            if m is None:
                raise _fail(lineno, "expected a label name", line)
            i = _skip(line, m.end())
            if i >= n or line[i] != "=":
                raise _fail(lineno, f"expected '=' after label name {m.group()!r}", line)
            i = _skip(line, i + 1)
            q = _QUOTED_AT.match(line, i)
            if q is None:
                raise _fail(lineno, f"expected a quoted value for label {m.group()!r}", line)
            pairs.append((m.group(), _unescape(q.group(1), _LABEL_ESCAPES)))
            i = _skip(line, q.end())
            if i < n and line[i] == ",":
                i = _skip(line, i + 1)
        j = _skip(line, i)
    elif j == name_end and j < n:
        raise _fail(lineno, "expected whitespace after the metric name", line)
    t = _TOKEN_AT.match(line, j)
    if t is None:
        raise _fail(lineno, "expected a value", line)
    value = t.group()
    if not _NUMBER_RE.match(value):
        raise _fail(lineno, f"invalid value {value!r}", line)
    i = _skip(line, t.end())
    ts = None
    if i < n:
        d = _DIGITS_AT.match(line, i)
        if d is None:
            raise _fail(lineno, "expected a timestamp (integer milliseconds) or end of line", line)
        ts = d.group()
        if _skip(line, d.end()) < n:
            raise _fail(lineno, "unexpected text after the timestamp", line)
    return name, pairs, value, ts


# ---------------------------------------------------------------------------------------------
# OpenMetrics 1.0


def _decode_openmetrics(data: bytes) -> list[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        shown = data[start : end if end >= 0 else len(data)].decode("utf-8", "backslashreplace")
        raise _fail(data.count(b"\n", 0, exc.start) + 1, "invalid UTF-8", shown) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the LF that may follow "# EOF"
    return lines


def _ms(seconds: float) -> int:
    """Prometheus's int64(ts * 1000): float multiply, truncation toward zero, int64-clamped."""
    ms = seconds * 1000.0
    if ms >= 9.223372036854775808e18:
        return _INT64_MAX
    if ms < -9.223372036854775808e18:
        return _INT64_MIN
    return int(ms)


def _om_value_ts(part: str, what: str, lineno: int, line: str) -> tuple[str, str | None]:
    """`number [SP timestamp]`, the tail of a sample or of an exemplar."""
    tokens = part.split(" ")
    if len(tokens) > 2 or not all(tokens):
        raise _fail(lineno, f"expected '{what} [timestamp]' separated by single spaces", line)
    if not _NUMBER_RE.match(tokens[0]):
        raise _fail(lineno, f"invalid {what} {tokens[0]!r}", line)
    if len(tokens) == 1:
        return tokens[0], None
    if not _REAL_RE.match(tokens[1]):
        raise _fail(lineno, f"invalid timestamp {tokens[1]!r}", line)
    return tokens[0], tokens[1]


def _om_labels(text: str, i: int, lineno: int, line: str) -> tuple[list[tuple[str, str]], int]:
    """The label set opening at text[i]; returns the pairs and the index after `}`."""
    i += 1
    pairs: list[tuple[str, str]] = []
    if text.startswith("}", i):
        return pairs, i + 1
    while True:
        m = _LNAME_AT.match(text, i)
        if m is None:
            raise _fail(lineno, "expected a label name", line)
        if not text.startswith("=", m.end()):
            raise _fail(lineno, f"expected '=' after label name {m.group()!r}", line)
        q = _QUOTED_AT.match(text, m.end() + 1)
        if q is None:
            raise _fail(lineno, f"expected a quoted value for label {m.group()!r}", line)
        pairs.append((m.group(), _unescape(q.group(1), _LABEL_ESCAPES)))
        i = q.end()
        if text.startswith(",", i):
            i += 1
        elif text.startswith("}", i):
            return pairs, i + 1
        else:
            raise _fail(lineno, "expected ',' or '}' after a label value", line)


def _om_sample(line: str, lineno: int) -> tuple[str, list[tuple[str, str]], str, str | None, bool]:
    """The careful path: escapes and exemplars. Returns name, pairs, value, ts, has exemplar."""
    m = _NAME_AT.match(line)
    if m is None:
        raise _fail(lineno, "expected a metric name", line)
    name, i = m.group(), m.end()
    pairs: list[tuple[str, str]] = []
    if line.startswith("{", i):
        pairs, i = _om_labels(line, i, lineno, line)
    if not line.startswith(" ", i):
        raise _fail(lineno, "expected a single space and a value after the series", line)
    head, exemplar, tail = line[i + 1 :].partition(" # ")
    value, ts = _om_value_ts(head, "value", lineno, line)
    if exemplar:
        if not tail.startswith("{"):
            raise _fail(lineno, "expected a label set after '# ' (exemplar)", line)
        ex_pairs, j = _om_labels(tail, 0, lineno, line)
        if sum(len(k) + len(v) for k, v in ex_pairs) > _EXEMPLAR_MAX_CHARS:
            raise _fail(lineno, "exemplar labels longer than 128 characters", line)
        if len(dict(ex_pairs)) != len(ex_pairs):
            raise _fail(lineno, "repeated exemplar label", line)
        if not tail.startswith(" ", j):
            raise _fail(lineno, "expected a single space and a value after exemplar labels", line)
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


class _OpenMetricsParser:
    """One body's worth of state: families seen, which family owns each sample name."""

    def __init__(self) -> None:
        self.samples: list[tuple[Labels, float, int | None]] = []
        self.append = self.samples.append
        self.metadata: dict[str, MetricMetadata] = {}
        self.owner: dict[str, str] = {}  # family or sample name -> the family that may use it
        self.family: _Family | None = None

    def run(self, lines: list[str]) -> Exposition:
        fast = _OM_FAST.match
        pairs_of = _PAIR.findall
        sample = self.sample
        eof = 0
        for lineno, line in enumerate(lines, 1):
            if eof:
                raise _fail(lineno, "text after # EOF", line)
            if not line:
                raise _fail(lineno, "blank line", line)
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
            raise _fail(len(lines) + 1, "missing '# EOF' at the end", "")
        if self.family is not None:
            self.finish(self.family)
        return Exposition(samples=self.samples, metadata=self.metadata)

    def start(self, name: str, lineno: int, line: str) -> _Family:
        """Open a new family, which must not have appeared yet nor be a name another claims."""
        if self.family is not None:
            self.finish(self.family)
        owner = self.owner.get(name)
        if owner == name:
            raise _fail(lineno, f"metric family {name} appears again, not in one block", line)
        if owner is not None:
            raise _fail(lineno, f"name {name} clashes with metric family {owner}", line)
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
            raise _fail(lineno, "expected '# HELP', '# TYPE', '# UNIT' or '# EOF'", line)
        kind, name, arg = m.groups()
        if arg is None:
            raise _fail(lineno, f"{kind} needs a space and text after the metric name", line)
        family = self.family
        if family is None or family.name != name:
            family = self.start(name, lineno, line)
        elif family.group is not None:  # it has samples
            raise _fail(lineno, f"{kind} of {name} after its samples", line)
        if kind in family.declared:
            raise _fail(lineno, f"second {kind} of {name}", line)
        family.declared.add(kind)
        if kind == "TYPE":
            mtype = _OM_TYPES.get(arg)
            if mtype is None:
                raise _fail(lineno, f"invalid metric type {arg!r}", line)
            family.type = mtype
            family.names = {}
            for suffix in _SUFFIXES[mtype]:
                full = name + suffix
                owner = self.owner.get(full, name)
                if owner != name:
                    raise _fail(lineno, f"{full} already belongs to metric family {owner}", line)
                self.owner[full] = name
                family.names[full] = suffix
        elif kind == "HELP":
            family.help = _unescape(arg, _LABEL_ESCAPES)
        else:
            if not _UNIT_RE.match(arg):
                raise _fail(lineno, f"invalid unit {arg!r}", line)
            if arg and not name.endswith("_" + arg):
                raise _fail(lineno, f"metric name {name} does not end with _{arg}", line)
            family.unit = arg
        if family.unit and family.type in (MetricType.INFO, MetricType.STATESET):
            raise _fail(lineno, f"{family.type.value} {name} cannot have a unit", line)

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
                raise _fail(
                    lineno, f"{family.type.value} {family.name} has samples {expected}", line
                )
            family = self.start(name, lineno, line)
            suffix = ""
        v = float(value)
        if v - v != 0.0 and value[-1] not in "fFyYnN":
            raise _fail(lineno, f"value {value!r} out of range", line)
        mtype = family.type
        special: str | None = None  # the label that tells samples of one metric apart
        le: float | None = None
        if mtype is _COUNTER:
            if suffix == "_total" and not v >= 0:
                raise _fail(lineno, "a counter's _total must not be NaN or negative", line)
        elif mtype is not _GAUGE and mtype is not _UNKNOWN:
            special, le = self.check_typed(family, suffix, pairs, v, lineno, line)
        if exemplar and not (
            (suffix == "_total" and mtype is _COUNTER)
            or (suffix == "_bucket" and mtype in _HISTOGRAMS)
        ):
            raise _fail(lineno, "exemplars only go on counter _total and bucket samples", line)

        if pairs:
            seen = dict(pairs)
            if len(seen) != len(pairs) or METRIC_NAME in seen:
                raise _duplicate([*pairs, (METRIC_NAME, name)], lineno, line)
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
                raise _fail(lineno, f"timestamp {ts!r} out of range", line)
        if key != family.group:
            if key in family.groups:
                raise _fail(lineno, "samples of one metric must be together", line)
            family.groups.add(key)
            family.group = key
            family.group_ts = tsf
            new_point = True
        else:
            prev = family.group_ts
            if tsf is None or prev is None:
                if tsf is not prev:
                    raise _fail(
                        lineno, "one metric's samples mix with and without timestamps", line
                    )
            elif tsf < prev:
                raise _fail(lineno, "timestamps of one metric go backwards", line)
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
                raise _fail(lineno, "an info sample's value must be 1", line)
            return None, None
        if mtype is MetricType.STATESET:
            if not any(k == family.name for k, _ in pairs):
                raise _fail(lineno, f"stateset sample without its {family.name!r} label", line)
            if v != 0 and v != 1:
                raise _fail(lineno, "a stateset sample's value must be 0 or 1", line)
            return family.name, None
        if suffix in ("_count", "_gcount"):
            if not v >= 0 or not v.is_integer():
                raise _fail(lineno, f"{suffix} must be a non-negative integer", line)
        elif suffix == "_sum" or suffix == "_gsum":
            if v != v or (suffix == "_sum" and v < 0):
                raise _fail(lineno, f"{suffix} must not be NaN or negative", line)
        elif suffix == "_bucket":
            index, text = _find(pairs, "le")
            if text is None or not _NUMBER_RE.match(text) or text.lower().endswith("nan"):
                raise _fail(lineno, "a bucket needs an le label with a number", line)
            le = float(text)
            if le == float("inf") and text != "+Inf":
                raise _fail(lineno, 'the +Inf bucket must be written le="+Inf"', line)
            if not v >= 0 or not v.is_integer():
                raise _fail(lineno, "a bucket's value must be a non-negative integer", line)
            pairs[index] = ("le", _normalized(text))
            return "le", le
        elif suffix == "" and mtype is MetricType.SUMMARY:
            index, text = _find(pairs, "quantile")
            if text is None or not _NUMBER_RE.match(text) or not 0 <= float(text) <= 1:
                raise _fail(lineno, "a quantile sample needs a quantile label in [0, 1]", line)
            if v < 0:
                raise _fail(lineno, "a quantile's value must not be negative", line)
            pairs[index] = ("quantile", _normalized(text))
            return "quantile", None
        return None, None

    def add_to_point(
        self, point: _Point, suffix: str, v: float, le: float | None, lineno: int, line: str
    ) -> None:
        if suffix == "_bucket" and le is not None:
            if point.le is not None and le <= point.le:
                raise _fail(lineno, "buckets must be in increasing le order", line)
            if v < point.bucket:
                raise _fail(lineno, "bucket values must not decrease", line)
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
            raise _fail(lineno, f"histogram {family.name} lacks its +Inf bucket", line)
        if point.count is not None and point.count != point.bucket:
            raise _fail(lineno, f"{family.name}: count differs from the +Inf bucket", line)
        if family.type is MetricType.HISTOGRAM:
            if point.has_sum != (point.count is not None):
                raise _fail(lineno, f"{family.name}: _sum and _count go together", line)
            if point.negative and point.has_sum:
                raise _fail(lineno, f"{family.name}: no _sum with negative buckets", line)
        else:
            if (point.gsum is None) != (point.count is None):
                raise _fail(lineno, f"{family.name}: _gsum and _gcount go together", line)
            if point.gsum is not None and point.gsum < 0 and not point.negative:
                raise _fail(lineno, f"{family.name}: negative _gsum needs negative buckets", line)


def _find(pairs: list[tuple[str, str]], name: str) -> tuple[int, str | None]:
    for index, (k, v) in enumerate(pairs):
        if k == name:
            return index, v
    return -1, None
