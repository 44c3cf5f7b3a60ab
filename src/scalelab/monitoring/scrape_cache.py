"""What a scrape loop remembers of its target between scrapes (Prometheus's scrapeCache), so
that an unchanged series line costs a dict lookup and parsing its value.

`LineCache` maps the series text of each sample line (the exact bytes before the value: metric
name and label set) to a `CachedLine`: the labels the parser made of it, and what the scrape
loop made of those (relabeling outcome, checked limits) so it is done once per series, not
once per scrape. `SeriesSlot` is one series after relabeling; lines relabelled to the same
labels share it, and it keeps the storage's ref for that series (`model.RefAppender`).

Reading a text-format body: a sample line is split at its last space (else at the one before:
a timestamp follows); when the part before is a known series text, only the number (and the
digits of the timestamp) after it are read, and only in their plain spelling. Any other line
goes through exposition's own line parser (`exposition.TextState`), which also remembers it
when the same split finds exactly the value that parser found. The first error, or a line
the cache cannot decode, hands the whole body to `exposition.parse`: errors are worded and
numbered as without the cache, and results are never different.

Why the split cannot go wrong: a key K is the text before the value's separating space in a
line the parser accepted. The lexer reads the series part left to right and it ends inside K,
so K followed by a space and any number (and digits) parses to the same labels. The split of
another line cannot hit a key by mistake: its text before a value ends in that value, and its
text before a space inside a quoted label value ends inside a string, and neither is the
series part of a line the parser accepted. The labels of a histogram's `_bucket` or a
summary's line depend on the TYPE before it (the `le`/`quantile` spelling is normalized), so a
line remembers the normalization it was read under and is reused only under the same one.

Bounded: every line remembers the last parse that saw it, and after each parse the lines the
body did not hold are dropped (as Prometheus does with its per-scrape iteration counter), so
series churn does not grow the cache. Lines depend on the relabel config and target labels:
the loop calls `validate` with them before each scrape, which clears the cache on a change.
Slots do not depend on either, so a reloaded loop takes them over (with its staleness state).
OpenMetrics bodies, and any parser other than `exposition.parse`, are parsed in full; their
samples still find their `CachedLine` by label set, as the loop's label cache did before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from scalelab.monitoring import errors, model
from scalelab.monitoring.exposition import Directive, TextState, is_openmetrics
from scalelab.monitoring.exposition_syntax import NUMBER

ParseFn = Callable[[bytes, str | None], model.Exposition]

# CachedLine.state: what the scrape loop has done with the line's labels so far
UNRESOLVED, RELABELLED, CHECKED = 0, 1, 2

_PLAIN = b"0123456789.eE+-"  # a value of only these characters that float() reads is a REAL
_NUMBER_BYTES = re.compile(rf"{NUMBER}\Z".encode())
_HASH, _SPACE, _TAB = ord("#"), ord(" "), ord("\t")

K = TypeVar("K", bound=Hashable)


class SeriesSlot:
    """One series of the target as appended (target labels and relabeling applied)."""

    __slots__ = ("labels", "ref", "seen", "stamp", "t", "tracked")

    def __init__(self, labels: model.Labels) -> None:
        self.labels = labels
        self.ref: object = None  # the storage's ref for it (model.RefAppender), or None
        self.stamp = 0  # the last append pass that reached it ...
        self.t = 0  # ... and the timestamp of its first sample in that pass
        self.seen = 0  # the last append pass that appended to it ...
        self.tracked = 0  # ... and one without a timestamp of its own (staleness)


class CachedLine:
    """A series as a scrape body spells it, and what the scrape loop made of it."""

    __slots__ = ("name", "norm", "raw", "seen", "series", "state")

    def __init__(self, raw: model.Labels, name: str = "", norm: str | None = None) -> None:
        self.raw = raw  # the labels as parsed
        self.name = name  # its metric name, and the label normalized when it was read ("":
        self.norm = norm  # none; None: it has no le or quantile label, so none can apply)
        self.seen = 0  # the last parse that saw it
        self.series: SeriesSlot | None = None  # after relabeling (None: dropped), once ...
        self.state = UNRESOLVED  # ... RELABELLED, and CHECKED against the label limits


@dataclass(frozen=True, slots=True)
class ParsedScrape:
    """A scrape body read through the cache: its samples in body order, as three columns
    (a tuple per sample would be 10,000 more objects per scrape for the cyclic GC), and the
    metadata."""

    lines: list[CachedLine]
    values: list[float]
    stamps: list[int | None]  # timestamps (ms) given in the body
    metadata: dict[str, model.MetricMetadata]


class LineCache:
    """The per-target cache of series lines; see the module docstring."""

    def __init__(self) -> None:
        self._text: dict[bytes, CachedLine] = {}  # series text -> line
        self._raw: dict[model.Labels, CachedLine] = {}  # labels -> line, for lines read in full
        self._meta: dict[bytes, Directive | None] = {}  # the last body's comment lines
        self._key: Hashable = None
        self._iter = 0
        self._seen = 0  # lines whose `seen` is the current parse

    def __len__(self) -> int:
        return len(self._text) + len(self._raw)

    def validate(self, key: Hashable) -> None:
        """Forget every line when `key` (what lines are relabelled by) is not the last one."""
        if key != self._key:
            self.clear()
            self._key = key

    def clear(self) -> None:
        self._text, self._raw, self._meta = {}, {}, {}

    def parse(
        self, body: bytes, content_type: str | None, parse: ParseFn, *, fast: bool = True
    ) -> ParsedScrape:
        """Parse a body as `parse(body, content_type)` would, reading known series lines of a
        text-format body through the cache when `fast`; raises what `parse` raises."""
        self._iter += 1
        self._seen = 0
        try:
            if fast and not is_openmetrics(content_type):
                try:
                    return self._parse_text(body)
                except (errors.ParseError, UnicodeDecodeError):
                    pass  # `parse` words the error (or reads the comment the cache could not)
            exposition = parse(body, content_type)
            return self._lines_of(exposition)
        finally:
            self._prune()

    def _parse_text(self, body: bytes) -> ParsedScrape:
        it = self._iter
        text_get = self._text.get
        careful = self._careful
        plain, number = _PLAIN, _NUMBER_BYTES.match
        meta_old, meta = self._meta, {}
        state = TextState()
        norm_name = norm_label = ""
        lines: list[CachedLine] = []
        values: list[float] = []
        stamps: list[int | None] = []
        add_line, add_value, add_stamp = lines.append, values.append, stamps.append
        seen = 0
        for line in body.split(b"\n"):
            if not line:
                continue
            first = line[0]
            if first == _HASH or first == _SPACE or first == _TAB:
                if line in meta_old:
                    directive = meta_old[line]
                else:
                    decoded = line.decode()
                    if TextState.is_sample(decoded):  # a sample line led by whitespace
                        found, v, t = careful(line, state)
                        add_line(found)
                        add_value(v)
                        add_stamp(t)
                        continue
                    directive = TextState.directive(decoded, 0)
                meta[line] = directive
                if directive is not None:
                    state.apply(directive)
                    norm_name, norm_label = state.norm_name, state.norm_label
                continue
            head, _, last = line.rpartition(b" ")
            cached = text_get(head)
            if cached is not None:
                value, stamp = last, None
            else:
                head, _, value = head.rpartition(b" ")
                cached = text_get(head)
                stamp = last
            if cached is not None and (
                cached.norm is None
                or cached.norm == (norm_label if cached.name == norm_name else "")
            ):
                try:
                    v = float(value)
                except ValueError:
                    pass
                else:  # what _value and _stamp accept, inline: this is the hot path
                    if value.isdigit() or not value.translate(None, plain):
                        ok = v - v == 0.0
                    else:
                        ok = number(value) is not None
                    if ok and (stamp is None or (stamp.isdigit() and len(stamp) < 19)):
                        if cached.seen != it:
                            cached.seen = it
                            seen += 1
                        add_line(cached)
                        add_value(v)
                        add_stamp(None if stamp is None else int(stamp))
                        continue
            found, v, t = careful(line, state)
            add_line(found)
            add_value(v)
            add_stamp(t)
        self._seen += seen
        self._meta = meta
        return ParsedScrape(lines, values, stamps, state.metadata())

    def _careful(self, line: bytes, state: TextState) -> tuple[CachedLine, float, int | None]:
        """A sample line the cache did not know: parsed in full, and remembered by its series
        text when splitting it the cache's way finds the same value and timestamp."""
        labels, v, t = state.sample(line.decode(), 0)
        head, sep, last = line.rpartition(b" ")
        if t is None:
            key, value = head, last
        else:
            key, sep2, value = head.rpartition(b" ")
            if not sep2 or _stamp(last) != t:
                sep = b""
        it = self._iter
        if sep and key and key[0] not in (_HASH, _SPACE, _TAB) and _same(_value(value), v):
            name = model.metric_name(labels)
            norm = None
            if any(k == "le" or k == "quantile" for k, _ in labels):
                norm = state.norm_label if name == state.norm_name else ""
            line_ = CachedLine(labels, name, norm)
            replaced = self._text.get(key)
            if replaced is not None and replaced.seen == it:
                self._seen -= 1
            self._text[key] = line_
        else:  # spelled some other way (tabs, no space before the value, ...)
            found = self._raw.get(labels)
            line_ = self._raw[labels] = found if found is not None else CachedLine(labels)
        if line_.seen != it:
            line_.seen = it
            self._seen += 1
        return line_, v, t

    def _lines_of(self, exposition: model.Exposition) -> ParsedScrape:
        """The samples of a body parsed in full, each with its line found by label set."""
        it = self._iter
        raw = self._raw
        get = raw.get
        lines: list[CachedLine] = []
        add_line = lines.append
        seen = 0
        for labels, _, _ in exposition.samples:
            line = get(labels)
            if line is None:
                line = raw[labels] = CachedLine(labels)
            if line.seen != it:
                line.seen = it
                seen += 1
            add_line(line)
        self._seen += seen
        values = [s[1] for s in exposition.samples]
        stamps = [s[2] for s in exposition.samples]
        return ParsedScrape(lines, values, stamps, exposition.metadata)

    def _prune(self) -> None:
        """Drop the lines this parse did not see (a scan only when there are some)."""
        if len(self._text) + len(self._raw) == self._seen:
            return
        _drop_unseen(self._text, self._iter)
        _drop_unseen(self._raw, self._iter)


def _drop_unseen(cache: dict[K, CachedLine], it: int) -> None:
    for key in [key for key, line in cache.items() if line.seen != it]:
        del cache[key]


def _value(text: bytes) -> float | None:
    """The value the text format reads from `text`, when it is a number in the spelling the
    cache reads (no whitespace or underscores, which float() would also take); else None."""
    try:
        v = float(text)
    except ValueError:
        return None
    if text.translate(None, _PLAIN):
        return v if _NUMBER_BYTES.match(text) else None  # NaN, Inf and their spellings
    return v if v - v == 0.0 else None  # too large for a float64: the parser's error


def _stamp(text: bytes) -> int | None:
    """A timestamp the cache reads: plain digits, short enough to fit int64 whatever they
    are (longer ones are left to the parser's range check)."""
    return int(text) if text.isdigit() and len(text) < 19 else None


def _same(a: float | None, b: float) -> bool:
    return a is not None and (a == b or (a != a and b != b))
