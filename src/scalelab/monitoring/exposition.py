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

OpenMetrics 1.0 (content type `application/openmetrics-text`) is parsed by openmetrics.py,
strictly, as its conformance suite demands; what the two parsers share is in
exposition_syntax.py.

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

from scalelab.monitoring.exposition_syntax import (
    INT64_MAX,
    LABEL_ESCAPES,
    LNAME,
    LNAME_AT,
    NAME,
    NAME_AT,
    NUMBER,
    NUMBER_RE,
    PAIR,
    QUOTED_AT,
    duplicate_error,
    fail,
    format_om_float,
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
from scalelab.monitoring.openmetrics import OpenMetricsParser, decode_openmetrics

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

# Possessive quantifiers: nothing after a name, a label value or a label set can be matched by
# giving characters back, and not trying saves a sixth of the matching time.
_TEXT_FAST = re.compile(
    rf'({NAME}+)(?:\{{((?:{LNAME}+="[^"\\]*+",?+)*+)\}})? ({NUMBER})(?: ([0-9]++))?\Z'
)
_TOKEN_AT = re.compile(r"[^{ \t]+")
_DIGITS_AT = re.compile(r"[0-9]+")
_TEXT_META = re.compile(r"#[ \t]+(HELP|TYPE)[ \t]+")
_TEXT_META_FAST = re.compile(rf"# (HELP|TYPE) ({NAME})(?: (.*))?\Z", re.S)
_TEXT_META_BYTES = re.compile(rb"#[ \t]+(?:HELP|TYPE)[ \t]")

_TEXT_TYPES = {
    "counter": MetricType.COUNTER,
    "gauge": MetricType.GAUGE,
    "histogram": MetricType.HISTOGRAM,
    "summary": MetricType.SUMMARY,
    "untyped": MetricType.UNKNOWN,
}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}


def parse(data: bytes, content_type: str | None = None) -> Exposition:
    """Parse a scrape body; OpenMetrics when the content type says so, else the text format.

    Raises errors.ParseError naming the line and the problem; never anything else.
    """
    if is_openmetrics(content_type):
        return OpenMetricsParser().run(decode_openmetrics(data))
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


def _labels(name: str, pairs: list[tuple[str, str]], lineno: int, line: str) -> Labels:
    """Canonical labels from parsed pairs: duplicates rejected, empty values dropped."""
    pairs.append((METRIC_NAME, name))
    if len(pairs) > 1 and len(dict(pairs)) != len(pairs):
        raise duplicate_error(pairs, lineno, line)
    kept = [p for p in pairs if p[1]]
    kept.sort()
    return tuple(kept)


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
                raise fail(lineno, "invalid UTF-8", shown) from None
    return "\n".join(out)


def is_openmetrics(content_type: str | None) -> bool:
    """Does a response's Content-Type ask for the OpenMetrics parser?"""
    return content_type is not None and content_type.strip().lower().startswith(_OM_MEDIA)


# A parsed `# HELP` (help text) or `# TYPE` (metric type) line: (name, help or type).
Directive = tuple[str, str | MetricType]


class TextState:
    """What the lines of a text-format body so far have said: the metadata, and which
    samples get their `le`/`quantile` normalized (those of the latest histogram or summary
    TYPE). Shared by `parse` and scrape_cache's per-target line cache, so a line read through
    the cache means exactly what it means here."""

    __slots__ = ("helps", "norm_label", "norm_name", "types")

    def __init__(self) -> None:
        self.types: dict[str, MetricType] = {}
        self.helps: dict[str, str] = {}
        self.norm_name = ""  # samples whose `le`/`quantile` get normalized ("" none)
        self.norm_label = ""

    @staticmethod
    def is_sample(line: str) -> bool:
        """Is a non-empty line a sample (else a comment, metadata or blank line)?"""
        if line[0] == "#":
            return False
        if line[0] in " \t":
            stripped = line.lstrip(" \t")
            return bool(stripped) and stripped[0] != "#"
        return True

    @staticmethod
    def directive(line: str, lineno: int) -> Directive | None:
        """The HELP or TYPE a non-sample line holds; None for a comment or blank line."""
        stripped = line.lstrip(" \t")
        if not stripped:
            return None
        meta = _TEXT_META_FAST.match(stripped)
        parts = meta.groups("") if meta else _text_metadata(stripped, lineno, line)
        if parts is None:
            return None  # a comment
        kind, name, arg = parts
        if kind == "HELP":
            return name, unescape(arg, _HELP_ESCAPES)
        return name, _text_type(arg, lineno, line)

    def apply(self, directive: Directive) -> None:
        name, what = directive
        if not isinstance(what, MetricType):
            self.helps[name] = what
            return
        self.types[name] = what
        self.norm_name = self.norm_label = ""
        if what is MetricType.HISTOGRAM:
            self.norm_name, self.norm_label = name + "_bucket", "le"
        elif what is MetricType.SUMMARY:
            self.norm_name, self.norm_label = name, "quantile"

    def sample(self, line: str, lineno: int) -> tuple[Labels, float, int | None]:
        """One sample line, parsed: the common shape by one regular expression, any other
        through the careful tokenizer (which also words the errors)."""
        m = _TEXT_FAST.match(line)
        if m is not None:
            name, inner, value, ts = m.groups()
            if inner:
                pairs = PAIR.findall(inner)
                pairs.append((METRIC_NAME, name))
                if len(dict(pairs)) != len(pairs):
                    raise duplicate_error(pairs, lineno, line)
                if '=""' in inner:
                    pairs = [p for p in pairs if p[1]]
                if name == self.norm_name:
                    norm = self.norm_label
                    pairs = [(k, normalized_bound(v) if k == norm else v) for k, v in pairs]
                pairs.sort()
                labels = tuple(pairs)
            else:
                labels = ((METRIC_NAME, name),)
        else:
            name, pairs, value, ts = _text_sample(line, lineno)
            if name == self.norm_name:
                norm = self.norm_label
                pairs = [(k, normalized_bound(v) if k == norm else v) for k, v in pairs]
            labels = _labels(name, pairs, lineno, line)
        v = float(value)
        if v - v != 0.0 and value[-1] not in "fFyYnN":
            raise fail(lineno, f"value {value!r} out of range", line)
        if ts is None:
            return labels, v, None
        stamp = ts.lstrip("0")
        if len(stamp) > 19 or (stamp and int(stamp) > INT64_MAX):
            raise fail(lineno, "timestamp out of int64 range", line)
        return labels, v, int(stamp) if stamp else 0

    def metadata(self) -> dict[str, MetricMetadata]:
        types, helps = self.types, self.helps
        return {
            name: MetricMetadata(type=types.get(name, MetricType.UNKNOWN), help=helps.get(name, ""))
            for name in {**types, **helps}
        }


def _parse_text(text: str) -> Exposition:
    state = TextState()
    samples: list[tuple[Labels, float, int | None]] = []
    append = samples.append
    sample, is_sample = state.sample, state.is_sample
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        if (line[0] == "#" or line[0] in " \t") and not is_sample(line):
            directive = state.directive(line, lineno)
            if directive is not None:
                state.apply(directive)
            continue
        append(sample(line, lineno))
    return Exposition(samples=samples, metadata=state.metadata())


def _text_type(arg: str, lineno: int, line: str) -> MetricType:
    mtype = _TEXT_TYPES.get(arg)
    if mtype is None:
        raise fail(lineno, f"invalid metric type {arg!r}", line)
    return mtype


def _text_metadata(stripped: str, lineno: int, line: str) -> tuple[str, ...] | None:
    """(HELP|TYPE, name, raw text) of a metadata line in any spacing; None for a comment."""
    m = _TEXT_META.match(stripped)
    if m is None:
        return None
    kind = m.group(1)
    n = NAME_AT.match(stripped, m.end())
    if n is None:
        raise fail(lineno, f"expected a metric name after {kind}", line)
    name, rest = n.group(), stripped[n.end() :]
    if rest and rest[0] not in " \t":
        raise fail(lineno, f"expected whitespace after the metric name in {kind}", line)
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
    m = NAME_AT.match(line, i)
    if m is None:
        raise fail(lineno, "expected a metric name", line)
    name, name_end = m.group(), m.end()
    j = _skip(line, name_end)
    pairs: list[tuple[str, str]] = []
    if j < n and line[j] == "{":
        i = _skip(line, j + 1)
        while True:
            if i >= n:
                raise fail(lineno, "label set not closed", line)
            if line[i] == "}":
                i += 1
                break
            m = LNAME_AT.match(line, i)
            if m is None:
                raise fail(lineno, "expected a label name", line)
            i = _skip(line, m.end())
            if i >= n or line[i] != "=":
                raise fail(lineno, f"expected '=' after label name {m.group()!r}", line)
            i = _skip(line, i + 1)
            q = QUOTED_AT.match(line, i)
            if q is None:
                raise fail(lineno, f"expected a quoted value for label {m.group()!r}", line)
            pairs.append((m.group(), unescape(q.group(1), LABEL_ESCAPES)))
            i = _skip(line, q.end())
            if i < n and line[i] == ",":
                i = _skip(line, i + 1)
        j = _skip(line, i)
    elif j == name_end and j < n:
        raise fail(lineno, "expected whitespace after the metric name", line)
    t = _TOKEN_AT.match(line, j)
    if t is None:
        raise fail(lineno, "expected a value", line)
    value = t.group()
    if not NUMBER_RE.match(value):
        raise fail(lineno, f"invalid value {value!r}", line)
    i = _skip(line, t.end())
    ts = None
    if i < n:
        d = _DIGITS_AT.match(line, i)
        if d is None:
            raise fail(lineno, "expected a timestamp (integer milliseconds) or end of line", line)
        ts = d.group()
        if _skip(line, d.end()) < n:
            raise fail(lineno, "unexpected text after the timestamp", line)
    return name, pairs, value, ts
