"""The scrape loop's line cache and append by series ref (scrape_cache.py) against the loop
with both turned off (`line_cache=False`: every body parsed in full, appends by label set), and
both against `Reference`, the loop's semantics by label set as they were before the cache.

The property test scrapes random text bodies, a few in a row (values change, series appear and
vanish, spellings and whitespace vary, some lines are malformed), under random relabel rules,
limits and honor_* settings, with the three side by side; everything each leaves behind must
be the same: each commit's samples, the counters, the target's status and metadata.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab.monitoring import errors, exposition, model
from scalelab.monitoring.discovery import TargetSpec
from scalelab.monitoring.head import Head
from scalelab.monitoring.relabel import relabel
from scalelab.monitoring.scrape_cache import LineCache
from scalelab.monitoring.scrape_config import ScrapeConfig, load_config
from scalelab.monitoring.scrape_loop import (
    REPORT_SERIES,
    LoopDeps,
    ScrapeCounters,
    ScrapeLoop,
    _merge_target_labels,
)
from tests.monitoring.test_scrape import FakeAppender, FakeStorage

T = TypeVar("T")
L = model.labels_of
START_MS = 1_700_000_000_000
TEXT = "text/plain; version=0.0.4; charset=utf-8"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def inline(fn: Any, /, *args: Any) -> Any:
    return fn(*args)


async def never(seconds: float) -> None:
    await asyncio.Event().wait()


class _Ref:
    """What RefStorage hands out as a series ref: it remembers whose it is."""

    def __init__(self, labels: model.Labels) -> None:
        self.labels = labels


@dataclass
class RefStorage(FakeStorage):
    """FakeStorage whose appender also appends by ref, checking each ref names its labels;
    it keeps each commit's samples apart (sorted: stale markers come in set order)."""

    batches: list[list[tuple[model.Labels, int, int]]] = field(default_factory=list)
    by_ref: int = 0

    def appender(self) -> RefAppender:
        return RefAppender(self)


class RefAppender(FakeAppender):
    storage: RefStorage

    def append_ref(self, ref: object, labels: model.Labels, t: int, v: float) -> object:
        if ref is not None:
            assert isinstance(ref, _Ref) and ref.labels == labels, (ref, labels)
            self.storage.by_ref += 1
        self.append(labels, t, v)
        return ref if ref is not None else _Ref(labels)

    def hold(self, refs: Any) -> None:
        assert all(isinstance(r, _Ref) for r in refs)

    def commit(self) -> None:
        bits = struct.Struct("<d")
        batch = [(lbl, t, int.from_bytes(bits.pack(v), "little")) for lbl, t, v in self.pending]
        self.storage.batches.append(sorted(batch))
        super().commit()


class Target:
    """One scrape loop on a mock HTTP target whose body the test sets before each scrape."""

    def __init__(self, cfg: ScrapeConfig, *, line_cache: bool, max_series: int | None = None):
        self.body = b""
        self.content_type = TEXT
        self.now = START_MS / 1000
        self.storage = RefStorage(max_series=max_series)
        self.counters = ScrapeCounters()
        deps = LoopDeps(
            appender_factory=self.storage.appender,
            parse=exposition.parse,
            clock=lambda: self.now,
            sleep=never,
            accept_header=exposition.ACCEPT_HEADER,
            counters=self.counters,
            offset_seed=0,
            run_blocking=inline,
            line_cache=line_cache,
        )
        spec = TargetSpec(L({"job": "j", "instance": "a:1"}), (), "http://a:1/metrics", 10, 5)
        self.client = httpx.AsyncClient(transport=httpx.MockTransport(self._serve))
        self.loop = ScrapeLoop(cfg, spec, self.client, deps)

    def _serve(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=self.body, headers={"Content-Type": self.content_type})

    async def scrape(self, body: bytes) -> None:
        self.body = body
        self.now += 10
        await self.loop.scrape_once()

    def outcome(self) -> dict[str, Any]:
        loop = self.loop
        return {
            "batches": self.storage.batches,
            "rollbacks": self.storage.rollbacks,
            "counters": self.counters,
            "status": (loop.health, loop.last_error, loop.last_samples),
            "metadata": loop.metadata,
        }


class _Failed(Exception):
    def __init__(self, message: str, scraped: int, post: int) -> None:
        super().__init__(message)
        self.scraped, self.post = scraped, post


class Reference:
    """The model: one scrape as the loop did it before the line cache, by label set (parse
    in full; relabel; limits; duplicates; staleness; the report series), written plainly."""

    def __init__(self, cfg: ScrapeConfig) -> None:
        self.cfg = cfg
        self.target = L({"job": "j", "instance": "a:1"})
        self.storage = RefStorage()
        self.counters = ScrapeCounters()
        self.prev_tracked: set[model.Labels] = set()
        self.prev_seen: set[model.Labels] = set()
        self.health, self.last_error, self.last_samples = "unknown", "", 0
        self.metadata: dict[str, model.MetricMetadata] = {}
        self.now = START_MS / 1000
        self.last_t = -(2**62)

    def scrape(self, body: bytes) -> None:
        self.now += 10
        t_ms = max(round(self.now * 1000), self.last_t + 1)
        self.counters.scrapes_total += 1
        error = ""
        parsed: model.Exposition | None = None
        try:
            parsed = exposition.parse(body, TEXT)
        except errors.ParseError as exc:
            error = f"parse error: {exc}"
        app = self.storage.appender()
        scraped = post = added = 0
        tracked: set[model.Labels] = set()
        if parsed is not None:
            try:
                scraped, post, added, tracked = self.append(app, parsed, t_ms)
            except _Failed as exc:
                app.rollback()
                app = self.storage.appender()
                error, scraped, post = str(exc), exc.scraped, exc.post
        stale = self.prev_tracked - tracked if not error else self.prev_tracked
        self.prev_tracked = tracked
        added = 0 if error else added
        for labels in stale:
            self.quietly(app, labels, t_ms, model.STALE_NAN)
        report = (0.0 if error else 1.0, 0.0, float(scraped), float(post), float(added))
        for name, value in zip(REPORT_SERIES, report, strict=True):
            self.quietly(app, model.with_label(self.target, "__name__", name), t_ms, value)
        app.commit()
        self.last_t = t_ms
        if error:
            self.counters.failed_scrapes_total += 1
        elif parsed is not None:
            self.metadata = parsed.metadata
        self.health = "down" if error else "up"
        self.last_error, self.last_samples = error, scraped

    def append(
        self, app: RefAppender, parsed: model.Exposition, t_ms: int
    ) -> tuple[int, int, int, set[model.Labels]]:
        cfg, counters = self.cfg, self.counters
        scraped = post = added = 0
        tracked: set[model.Labels] = set()
        seen_series: set[model.Labels] = set()
        seen_samples: set[tuple[model.Labels, int]] = set()
        for raw, value, ts in parsed.samples:
            scraped += 1
            merged = _merge_target_labels(raw, self.target, cfg.honor_labels)
            lset = relabel(model.labels_of(merged), cfg.metric_relabel_configs)
            if lset is None:
                continue
            post += 1
            if cfg.sample_limit and post > cfg.sample_limit:
                continue
            self.check_labels(lset, scraped, post)
            explicit = cfg.honor_timestamps and ts is not None
            t = ts if explicit and ts is not None else t_ms
            if (lset, t) in seen_samples:
                counters.sample_duplicate_timestamp_total += 1
                continue
            seen_samples.add((lset, t))
            try:
                app.append(lset, t, value)
            except errors.OutOfOrderSample:
                counters.sample_out_of_order_total += 1
                continue
            except errors.LimitExceeded as exc:
                counters.exceeded_series_limit_total += 1
                raise _Failed(f"series limit exceeded: {exc}", scraped, post) from None
            if lset not in seen_series:
                seen_series.add(lset)
                added += lset not in self.prev_seen
            if not explicit:
                tracked.add(lset)
        if cfg.sample_limit and post > cfg.sample_limit:
            counters.exceeded_sample_limit_total += 1
            limit = cfg.sample_limit
            raise _Failed(f"sample limit exceeded (limit {limit}, got {post})", scraped, post)
        self.prev_seen = seen_series
        return scraped, post, added, tracked

    def check_labels(self, lset: model.Labels, scraped: int, post: int) -> None:
        cfg = self.cfg
        name = model.metric_name(lset)
        if not name:
            raise _Failed("__name__ label is missing after relabeling", scraped, post)
        problem = ""
        if cfg.label_limit and len(lset) > cfg.label_limit:
            problem = f"label_limit exceeded (metric: {name}, labels: {len(lset)}, limit: "
            problem += f"{cfg.label_limit})"
        for k, v in lset:
            if cfg.label_name_length_limit and len(k) > cfg.label_name_length_limit:
                problem = f"label_name_length_limit exceeded (metric: {name}, label: {k})"
            elif cfg.label_value_length_limit and len(v) > cfg.label_value_length_limit:
                problem = f"label_value_length_limit exceeded (metric: {name}, label: {k})"
        if problem:
            self.counters.exceeded_label_limits_total += 1
            raise _Failed(problem, scraped, post)

    def quietly(self, app: RefAppender, labels: model.Labels, t: int, v: float) -> None:
        try:
            app.append(labels, t, v)
        except errors.MonitoringError:
            pass

    def outcome(self) -> dict[str, Any]:
        return {
            "batches": self.storage.batches,
            "rollbacks": self.storage.rollbacks,
            "counters": self.counters,
            "status": (self.health, self.last_error, self.last_samples),
            "metadata": self.metadata,
        }


def job(body: str = "") -> ScrapeConfig:
    text = "scrape_configs:\n  - job_name: j\n    scrape_interval: 10s\n    scrape_timeout: 5s\n"
    text += "".join(f"    {line}\n" for line in body.split("\n") if line)
    return load_config(text).scrape_configs[0]


# --- random bodies ----------------------------------------------------------------------------

NAMES = ["m", "m_bucket", "m_sum", "s", "up", "x:y", "job_total"]
LABEL_NAMES = ["a", "b", "le", "quantile", "job", "instance"]
VALUE_CHARS = 'ab 1}{",=\\\n#\té'
NORMALIZED = [
    'm_bucket{le="1"}', 'm_bucket{a="x",le="1"}', 's{quantile="1"}', 'm{quantile="0"}',
    'm_bucket{le="1.0"}', 'm_bucket{le="1e3"}',
]  # fmt: skip
VALUES = [
    "0", "1", "-1.5", "1e3", "1E+3", ".5", "5.", "007", "NaN", "+Inf", "-Inf", "inf", "nan",
    "Infinity", "-infinity", "1.5e-7", "123456789012345678901234567890", " 1", "1 ", "1\t",
    "5000",
]  # fmt: skip
BAD_VALUES = ["1e400", "-1e400", "1_0", "0x10", "+nan", "", "1\r", "1{", "one"]
STAMPS = ["5000", "007", "0", "9223372036854775807", "99", "5000 "]
BAD_STAMPS = ["9223372036854775808", "-5", "1.5", "x", "5000\r"]
SEPARATORS = [" ", " ", " ", " ", "  ", "\t", " \t"]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def series_text(draw: st.DrawFn) -> str:
    """A series as an exposition could spell it (mostly well formed)."""
    if draw(st.integers(0, 4)) == 0:  # spelled as the parser normalizes it, or not
        return draw(st.sampled_from(NORMALIZED))
    name = draw(st.sampled_from(NAMES))
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(LABEL_NAMES),
                st.one_of(
                    st.sampled_from(["1", "0.5", "+Inf", "1e-05", "x", "", "j", "a:1"]),
                    st.text(VALUE_CHARS, max_size=4),
                ),
            ),
            max_size=3,
            unique_by=lambda p: p[0],
        )
    )
    if not pairs and draw(st.booleans()):
        return name
    inner = [f'{k}="{escape(v)}"' for k, v in pairs]
    sep = draw(st.sampled_from([",", ",", ", ", " , "]))
    trail = draw(st.sampled_from(["", "", ",", " "] if pairs else ["", " "]))
    text = f"{name}{{{sep.join(inner)}{trail}}}"
    if draw(st.integers(0, 60)) == 0:  # something broken: a parse error in both loops
        text = draw(st.sampled_from([text[:-1], text.replace('"', "", 1), text + "{", "9" + text]))
    return text


@st.composite
def scrape_bodies(draw: st.DrawFn) -> list[bytes]:
    """A few bodies in a row over one pool of series: which lines appear, their values,
    order and whitespace change from scrape to scrape."""
    pool = draw(st.lists(series_text(), min_size=1, max_size=6))
    heads = [
        "# TYPE m histogram", "# TYPE m summary", "# TYPE s summary", "# TYPE m counter",
        "# TYPE m histogram", "# TYPE m summary", "# TYPE m_bucket summary",
        "# HELP m some \\\\ help\\n", "# a comment", "", "   ", "#TYPE m gauge",
        " # HELP s indented", "# TYPE x:y untyped", "# TYPE m_bucket histogram",
    ]  # fmt: skip
    bodies = []
    for _ in range(draw(st.integers(1, 6))):
        lines = [draw(st.sampled_from(["", "", "# TYPE m histogram", "# TYPE m summary"]))]
        for _ in range(draw(st.integers(0, 14))):
            if draw(st.integers(0, 4)) == 0:
                bad = draw(st.integers(0, 30)) == 0
                lines.append(draw(st.sampled_from(["# TYPE m bogus", "# HELP "] if bad else heads)))
                continue
            text = draw(st.sampled_from(pool))
            if draw(st.integers(0, 9)) == 0:
                text = draw(st.sampled_from([" ", "\t"])) + text
            value = draw(
                st.one_of(
                    st.sampled_from(VALUES),
                    st.floats(allow_nan=False).map(repr),
                    st.integers(-(10**6), 10**6).map(str),
                )
            )
            if draw(st.integers(0, 40)) == 0:
                value = draw(st.sampled_from(BAD_VALUES))
            line = text + draw(st.sampled_from(SEPARATORS)) + value
            if draw(st.integers(0, 3)) == 0:
                bad = draw(st.integers(0, 20)) == 0
                stamp = draw(st.sampled_from(BAD_STAMPS if bad else STAMPS))
                line += draw(st.sampled_from(SEPARATORS)) + stamp
            lines.append(line)
        body = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))
        bodies.append(body.encode())
    return bodies


CONFIGS = [
    "",
    "metric_relabel_configs:\n  - {source_labels: [__name__], regex: 's|up', action: drop}",
    "metric_relabel_configs:\n  - {regex: 'b|le', action: labeldrop}",  # series collapse
    "metric_relabel_configs:\n  - {source_labels: [a], target_label: b, replacement: 'r$1'}",
    "metric_relabel_configs:\n  - {source_labels: [__name__], regex: 'm.*', action: keep}",
    "metric_relabel_configs:\n  - {source_labels: [a], regex: '(.+)', target_label: __name__}",
    "metric_relabel_configs:\n  - {action: labeldrop, regex: __name__}",
    "honor_labels: true",
    "honor_timestamps: false",
    "sample_limit: 4",
    "label_limit: 3",
    "label_value_length_limit: 2",
    "label_name_length_limit: 4",
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=st.sampled_from(CONFIGS),
    bodies=scrape_bodies(),
    max_series=st.sampled_from([None, None, 3]),
)
def test_the_cache_changes_nothing_a_scrape_leaves_behind(
    config: str, bodies: list[bytes], max_series: int | None
) -> None:
    cfg = job(config)
    fast = Target(cfg, line_cache=True, max_series=max_series)
    slow = Target(cfg, line_cache=False, max_series=max_series)
    model_ = Reference(cfg)
    model_.storage.max_series = max_series

    async def main() -> None:
        for body in bodies:
            for target in (fast, slow):
                await target.scrape(body)
            model_.scrape(body)
            assert fast.outcome() == slow.outcome(), body
            assert slow.outcome() == model_.outcome(), body
        await fast.loop.stop(staleness=True)
        await slow.loop.stop(staleness=True)
        assert fast.outcome() == slow.outcome()
        assert slow.storage.by_ref == 0
        for target in (fast, slow):
            await target.client.aclose()

    run(main())


def scrape_all(bodies: list[bytes], config: str = "") -> list[dict[str, Any]]:
    """Scrape the bodies in turn with and without the cache and with the model; their
    outcomes, which must agree."""
    cfg = job(config)
    fast, slow, model_ = Target(cfg, line_cache=True), Target(cfg, line_cache=False), Reference(cfg)

    async def main() -> None:
        for body in bodies:
            await fast.scrape(body)
            await slow.scrape(body)
            model_.scrape(body)
        for target in (fast, slow):
            await target.client.aclose()

    run(main())
    outcomes = [fast.outcome(), slow.outcome(), model_.outcome()]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    return outcomes


def samples_of(outcome: dict[str, Any], name: str) -> list[tuple[model.Labels, int, float]]:
    bits = struct.Struct("<d")
    return [
        (lbl, t, bits.unpack(v.to_bytes(8, "little"))[0])
        for batch in outcome["batches"]
        for lbl, t, v in batch
        if model.metric_name(lbl) == name
    ]


@pytest.mark.parametrize(
    ("bodies", "error"),
    [
        # a known series text, then a value or timestamp the parser refuses
        ([b"m 1\n", b"m 1_0\n"], "invalid value '1_0'"),
        ([b"m 1\n", b"m +nan\n"], "invalid value '+nan'"),
        ([b"m 1\n", b"m 1e400\n"], "out of range"),
        ([b"m 1\n", b"m 1\r\n"], "Windows line endings"),
        ([b"m 1\n", b"m 1 \t5\n", b"m 1 9223372036854775808\n"], "out of int64 range"),
        ([b"m 1 5\n", b"m 1 -5\n"], "expected a timestamp"),
        # the split of a label value with a space in it, when the value is not closed
        ([b'm{a="x 1"}\t2\n', b'm{a="x 1\n'], "line 1"),
        ([b'm{a="x 1"} 2\n', b'm{a="x 1 2\n'], "line 1"),
        # an error after known lines is reported with its line number
        ([b"m 1\nn 2\n", b"m 1\nn 2\n# TYPE n bogus\n"], "line 3: invalid metric type"),
    ],
)
def test_the_cache_lets_the_parser_refuse_what_it_refuses(bodies: list[bytes], error: str) -> None:
    outcome = scrape_all(bodies)[0]
    assert outcome["status"][0] == "down" and error in outcome["status"][1]


def test_a_value_equal_to_its_timestamp_and_trailing_space_do_not_shift_the_split() -> None:
    outcome = scrape_all([b"m 5000 5000 \n", b"m 5000 7\n", b"m 5000 8\n"])[0]
    assert [(t, v) for _, t, v in samples_of(outcome, "m")] == [(5000, 5000.0)]  # 7, 8 < 5000


def test_label_values_with_spaces_and_braces_split_where_the_parser_says() -> None:
    later = 1_800_000_000_000
    bodies = [
        b'm{a="} 1",b="x 2"} 3\n',
        b'm{a="} 1",b="x 2"} 4 %d\n' % later,
        b'm{a="} 1"} 5\n',
    ]
    outcome = scrape_all(bodies)[0]
    got = {(model.get(x, "a"), model.get(x, "b"), t, v) for x, t, v in samples_of(outcome, "m")}
    assert {("} 1", "x 2", START_MS + 10_000, 3.0), ("} 1", "x 2", later, 4.0)} <= got
    assert ("} 1", "", START_MS + 30_000, 5.0) in got


def test_a_type_line_changes_what_a_known_line_means() -> None:
    """`le` is normalized under a histogram TYPE only: the same bytes, other labels."""
    line = b'm_bucket{le="1"} 1\n'
    outcome = scrape_all([b"# TYPE m histogram\n" + line, line, b"# TYPE m histogram\n" + line])
    les = [model.get(lbl, "le") for lbl, _, v in samples_of(outcome[0], "m_bucket") if v == 1]
    assert les == ["1.0", "1", "1.0"]


def test_known_lines_skip_the_parser_and_series_are_appended_by_ref(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fast path is taken (so the property test above compares two different paths)."""
    target = Target(job(), line_cache=True)
    calls = 0
    sample = exposition.TextState.sample

    def counting(self: exposition.TextState, line: str, lineno: int) -> Any:
        nonlocal calls
        calls += 1
        return sample(self, line, lineno)

    monkeypatch.setattr(exposition.TextState, "sample", counting)
    body = '# TYPE h histogram\nh_bucket{le="1"} {v}\nh_bucket{le="+Inf",x="a b} c"} {v} 5000\n'

    async def main() -> None:
        await target.scrape(body.replace("{v}", "1").encode())
        assert calls == 2 and target.storage.by_ref == 0
        await target.scrape(body.replace("{v}", "2.5").encode())
        await target.scrape(body.replace("{v}", "NaN").encode())
        assert calls == 2  # the series text was looked up, only the values parsed
        assert target.storage.by_ref == 4  # two series in each of the last two scrapes
        values = target.storage.values("h_bucket", le="1.0")
        assert [repr(v) for v in values] == ["1.0", "2.5", "nan"]
        await target.client.aclose()

    run(main())


def test_the_cache_holds_only_the_last_scrapes_lines() -> None:
    target = Target(job(), line_cache=True)
    loop = target.loop

    def body(first: int, n: int = 100) -> bytes:
        return "".join(f'm{{i="{i}"}} {i}\n' for i in range(first, first + n)).encode()

    async def main() -> None:
        for first in range(0, 1000, 50):  # half the series change every scrape
            await target.scrape(body(first))
            assert len(loop._lines) == 100
            assert len(loop._slots) == 100
        assert loop.health == "up"
        await target.scrape(body(5000) + b"m{i=broken 1\n")  # a failed scrape keeps it bounded
        assert loop.health == "down" and len(loop._lines) <= 100
        await target.scrape(body(0, 10))
        assert len(loop._lines) == 10 and len(loop._slots) == 10
        await target.client.aclose()

    run(main())


def test_a_new_relabel_config_or_target_labels_are_not_served_from_the_cache() -> None:
    target = Target(job(), line_cache=True)
    loop = target.loop
    body = b'm{a="1"} 1\nm{a="2"} 2\n'

    async def main() -> None:
        await target.scrape(body)
        assert {model.get(lbl, "a") for lbl, _, _ in target.storage.of("m")} == {"1", "2"}
        loop.cfg = replace(loop.cfg, metric_relabel_configs=job(CONFIGS[3]).metric_relabel_configs)
        await target.scrape(body)
        assert {model.get(lbl, "b") for lbl, _, _ in target.storage.of("m")} == {"", "r1", "r2"}
        assert target.storage.values("scrape_series_added") == [2, 2]
        loop.spec = replace(loop.spec, labels=L({"job": "j", "instance": "b:2"}))
        await target.scrape(body)
        assert {model.get(lbl, "instance") for lbl, _, _ in target.storage.of("m")} == {
            "a:1",
            "b:2",
        }
        await target.client.aclose()

    run(main())


def test_a_reloaded_loop_keeps_series_identity_but_not_the_lines() -> None:
    """inherit() on a config reload: staleness and series_added carry over, the new rules
    apply from the first scrape."""
    old = Target(job(), line_cache=True)

    async def main() -> None:
        await old.scrape(b'm{a="1"} 1\nm{a="2"} 2\n')
        new_cfg = job("metric_relabel_configs:\n  - {source_labels: [a], regex: '2', action: drop}")
        new = ScrapeLoop(new_cfg, old.loop.spec, old.client, old.loop._deps)
        new.inherit(old.loop)
        old.loop = new
        await old.scrape(b'm{a="1"} 3\nm{a="2"} 4\n')
        dropped = old.storage.values("m", a="2")
        assert len(dropped) == 2 and dropped[0] == 2.0 and model.is_stale(dropped[1])
        assert old.storage.values("m", a="1") == [1.0, 3.0]
        assert old.storage.values("scrape_series_added") == [2, 0]
        await old.client.aclose()

    run(main())


def test_the_head_appends_by_ref(tmp_path: Path) -> None:
    """The real head as the loop's storage: refs kept across scrapes, series added once."""
    with Head(tmp_path) as head:
        deps = LoopDeps(
            head.appender, exposition.parse, lambda: 0.0, never, "", ScrapeCounters(), 0, inline
        )
        spec = TargetSpec(L({"job": "j"}), (), "http://a:1/metrics", 10, 5)
        client = httpx.AsyncClient()
        loop = ScrapeLoop(job(), spec, client, deps)
        for i in range(3):
            parsed = loop._parse(f'm{{a="1"}} {i}\nm{{a="2"}} {i}\n'.encode(), TEXT)
            app = head.appender()
            counts = loop._append_samples(app, parsed, 1000 * (i + 1))[:3]
            assert counts == (2, 2, 2 if i == 0 else 0)
            app.commit()
        run(client.aclose())
        assert all(slot.ref is not None for slot in loop._slots.values())
        assert head.num_series == 2
        (series,) = head.select([model.Matcher.equal("a", "2")], 0, 10_000)
        assert series.values.tolist() == [0.0, 1.0, 2.0]


def test_line_cache_reads_openmetrics_and_other_parsers_in_full() -> None:
    cache = LineCache()
    om = b'# TYPE m counter\nm_total{a="1"} 1\n# EOF\n'
    for _ in range(2):
        parsed = cache.parse(om, exposition.OPENMETRICS_CONTENT_TYPE, exposition.parse)
        assert [line.raw for line in parsed.lines] == [L({"__name__": "m_total", "a": "1"})]
        assert parsed.metadata["m"].type is model.MetricType.COUNTER
    assert len(cache) == 1
