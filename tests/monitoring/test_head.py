"""The head block: the append rules, queries, truncation, restart and crash recovery."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalelab.monitoring import chunk, wal
from scalelab.monitoring.errors import BadData, LimitExceeded, OutOfOrderSample
from scalelab.monitoring.head import Head
from scalelab.monitoring.model import (
    STALE_NAN,
    Labels,
    Matcher,
    MatchType,
    labels_of,
    matches_all,
)

HERE = Path(__file__).parent
FAR = 2**62


def L(name: str = "up", **labels: str) -> Labels:
    return labels_of({"__name__": name, **labels})


def bits(v: Any) -> list[int]:
    return np.atleast_1d(np.asarray(v, np.float64)).view(np.uint64).tolist()  # type: ignore[no-any-return]


def dump(head: Head, matchers: list[Matcher] | None = None) -> dict[Labels, list[tuple[int, int]]]:
    """Everything the head shows, as {labels: [(t, value bits)]}."""
    return {
        s.labels: list(zip(s.timestamps.tolist(), bits(s.values), strict=True))
        for s in head.select(matchers or [], -FAR, FAR)
    }


@pytest.fixture
def head(tmp_path: Path) -> Any:
    h = Head(tmp_path / "head")
    yield h
    h.close()


def commit(head: Head, *samples: tuple[Labels, int, float]) -> None:
    app = head.appender()
    for labels, t, v in samples:
        app.append(labels, t, v)
    app.commit()


# -- append rules ------------------------------------------------------------------------------


def test_samples_are_visible_only_after_commit(head: Head) -> None:
    app = head.appender()
    app.append(L(job="a"), 10, 1.0)
    assert head.select([], -FAR, FAR) == [] and head.label_names([], -FAR, FAR) == []
    app.commit()
    assert dump(head) == {L(job="a"): [(10, bits(1.0)[0])]}
    app.append(L(job="a"), 20, 2.0)
    app.rollback()
    assert dump(head) == {L(job="a"): [(10, bits(1.0)[0])]}
    assert (head.mint, head.maxt, head.num_series) == (10, 10, 1)


def test_out_of_order_and_duplicates(head: Head) -> None:
    commit(head, (L(), 100, 1.0), (L(), 200, STALE_NAN))
    app = head.appender()
    with pytest.raises(OutOfOrderSample, match="out of order sample"):
        app.append(L(), 150, 1.0)
    app.append(L(), 200, STALE_NAN)  # same time, same bits: silently ignored
    with pytest.raises(OutOfOrderSample, match="duplicate sample for timestamp"):
        app.append(L(), 200, float("nan"))  # another NaN payload is another value
    app.append(L(), 300, 0.0)
    app.append(L(), 300, 0.0)
    with pytest.raises(OutOfOrderSample, match="duplicate sample for timestamp"):
        app.append(L(), 300, -0.0)
    with pytest.raises(OutOfOrderSample, match="out of order sample"):
        app.append(L(), 250, 0.0)  # older than this appender's own pending sample
    app.commit()
    assert [t for t, _ in dump(head)[L()]] == [100, 200, 300]
    assert head.out_of_order_samples == 4


def test_append_by_ref_keeps_the_append_rules_and_survives_collection(tmp_path: Path) -> None:
    with Head(tmp_path / "a") as head, Head(tmp_path / "b") as other:
        app = head.appender()
        ref = app.append_ref(None, L(), 100, 1.0)
        app.commit()
        app = head.appender()
        app.hold([ref, "not a ref", None])
        assert app.append_ref(ref, L(), 200, 2.0) is ref
        assert app.append_ref(ref, L(), 200, 2.0) is ref  # the same sample again: ignored
        with pytest.raises(OutOfOrderSample, match="duplicate sample for timestamp"):
            app.append_ref(ref, L(), 200, 3.0)
        with pytest.raises(OutOfOrderSample, match="out of order sample"):
            app.append_ref(ref, L(), 150, 3.0)
        app.commit()
        foreign = other.appender().append_ref(None, L(), 1, 1.0)  # another head's ref
        app = head.appender()
        assert app.append_ref(foreign, L(), 300, 3.0) is ref  # found by its labels instead
        app.commit()
        head.truncate(1000)  # all its samples are older: the series is collected
        assert head.num_series == 0
        app = head.appender()
        app.hold([ref])  # a collected series is not held, nor revived
        fresh = app.append_ref(ref, L(), 2000, 4.0)
        assert fresh is not ref and head.num_series == 1
        app.commit()
        assert dump(head) == {L(): [(2000, bits(4.0)[0])]}
        assert head.out_of_order_samples == 2


def test_a_race_between_appenders_drops_the_loser_at_commit(head: Head) -> None:
    first, second = head.appender(), head.appender()
    first.append(L(), 10, 1.0)
    second.append(L(), 5, 2.0)  # fine against what is committed so far
    second.append(L(job="x"), 5, 3.0)
    first.commit()
    second.commit()  # t=5 is now out of order: dropped and counted, as Prometheus does
    assert dump(head) == {L(): [(10, bits(1.0)[0])], L(job="x"): [(5, bits(3.0)[0])]}
    assert head.out_of_order_samples == 1


def test_series_limit(tmp_path: Path) -> None:
    with Head(tmp_path, max_series=2) as head:
        commit(head, (L(job="a"), 1, 1.0), (L(job="b"), 1, 1.0))
        with pytest.raises(LimitExceeded, match=r"max_series=2 .*up\{job=\"c\"\}"):
            commit(head, (L(job="c"), 1, 1.0))
        commit(head, (L(job="a"), 2, 1.0))  # existing series still take samples
        assert head.series_limit_hits == 1 and head.num_series == 2


@pytest.mark.parametrize(
    "labels",
    [(), (("b", "1"), ("a", "1")), (("a", "1"), ("a", "2")), (("a", ""),), (("1a", "x"),)],
)
def test_invalid_label_sets_are_refused(head: Head, labels: Labels) -> None:
    with pytest.raises(BadData):
        head.appender().append(labels, 1, 1.0)


def test_samples_are_visible_only_once_durable(head: Head, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow(fd: int) -> None:
        entered.set()
        assert release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow)
    done = threading.Thread(target=commit, args=(head, (L(), 1, 1.0)))
    done.start()
    assert entered.wait(10)
    assert head.select([], -FAR, FAR) == []  # logged, not yet on disk: not visible
    release.set()
    done.join(10)
    assert list(dump(head)) == [L()]


# -- queries -------------------------------------------------------------------------------


SERIES = [
    L("up", job="api", env="prod"),
    L("up", job="api", env="dev"),
    L("up", job="db"),
    L("cpu", job="db", env="prod", mode="idle"),
    L("cpu", job="db", mode="user"),
    L("mem", zone="a"),
]
MATCHERS = [
    [Matcher.equal("__name__", "up")],
    [Matcher.equal("job", "db"), Matcher.equal("env", "")],
    [Matcher(MatchType.NOT_EQUAL, "env", "prod")],
    [Matcher(MatchType.NOT_EQUAL, "env", "")],
    [Matcher(MatchType.REGEX, "job", "a.*|d")],
    [Matcher(MatchType.REGEX, "env", ".*")],
    [Matcher(MatchType.REGEX, "env", ".+")],
    [Matcher(MatchType.NOT_REGEX, "mode", "id.*"), Matcher.equal("__name__", "cpu")],
    [Matcher.equal("missing", "")],
    [Matcher.equal("missing", "x")],
    [Matcher(MatchType.REGEX, "__name__", "up|mem"), Matcher(MatchType.NOT_REGEX, "job", "")],
]


@pytest.mark.parametrize("matchers", MATCHERS, ids=[str(i) for i in range(len(MATCHERS))])
def test_matchers_agree_with_brute_force(head: Head, matchers: list[Matcher]) -> None:
    commit(head, *[(labels, 1000 * i, float(i)) for i, labels in enumerate(SERIES)])
    expected = sorted(labels for labels in SERIES if matches_all(labels, matchers))
    assert [s.labels for s in head.select(matchers, -FAR, FAR)] == expected
    names = sorted({k for labels in expected for k, _ in labels})
    assert head.label_names(matchers, -FAR, FAR) == names
    jobs = sorted({v for labels in expected for k, v in labels if k == "job"})
    assert head.label_values("job", matchers, -FAR, FAR) == jobs


def test_time_ranges(head: Head) -> None:
    commit(head, *[(L(), t, float(t)) for t in range(0, 1000, 10)], (L(job="x"), 5000, 1.0))
    (series,) = head.select([Matcher.equal("job", "")], 95, 130)
    assert series.timestamps.tolist() == [100, 110, 120, 130]
    assert series.values.tolist() == [100.0, 110.0, 120.0, 130.0]
    assert [s.labels for s in head.select([], 1000, 4999)] == []
    assert head.label_values("job", [], 4000, 6000) == ["x"]
    assert head.label_names([], 0, 10) == ["__name__"]


def test_chunks_are_cut_at_max_samples_and_range_boundaries(tmp_path: Path) -> None:
    with Head(tmp_path, chunk_range_ms=10_000) as head:
        commit(head, *[(L(), t, float(t)) for t in range(0, 30_000, 50)])  # 600 samples
        series = head._by_labels[L()]
        sizes = [chunk.num_samples(c.data) for c in series.chunks if isinstance(c.data, bytes)]
        assert sizes == [120, 80, 120, 80, 120]  # and 80 still open
        assert all(c.mint // 10_000 == c.maxt // 10_000 for c in series.chunks)
        ((labels, chunks),) = list(head.chunks_in(10_000, 19_999))
        assert labels == L() and [(c[0], c[1]) for c in chunks] == [
            (10_000, 15_950),
            (16_000, 19_950),
        ]
        assert chunks[0][2] is series.chunks[2].data  # whole chunks pass through as they are
        ((_, parts),) = list(head.chunks_in(5_025, 26_000))  # cut ones are re-encoded
        ts = np.concatenate([chunk.decode(data)[0] for _, _, data in parts])
        assert ts.tolist() == list(range(5_050, 26_001, 50))
        assert [p[0] for p in parts] == [5_050, 6_000, 10_000, 16_000, 20_000, 26_000]


def test_truncate_drops_old_samples_and_empty_series(tmp_path: Path) -> None:
    with Head(tmp_path, segment_bytes=2048) as head:
        for t in range(0, 10_000, 100):
            commit(head, (L(job="old"), t, 1.0), (L(job="new"), t + 10_000, 2.0))
        head.truncate(10_050)
        assert head.num_series == 1 and head.mint == 10_100 and head.maxt == 19_900
        assert [len(v) for v in dump(head).values()] == [99]
        with pytest.raises(OutOfOrderSample, match="out of bounds"):
            head.appender().append(L(job="old"), 10_000, 1.0)
        assert head.num_series == 1
    with Head(tmp_path, segment_bytes=2048) as head:  # the bound and the data survive restart
        assert head.min_valid_ms == 10_050 and head.mint == 10_100
        assert [len(v) for v in dump(head).values()] == [99]


def test_reopen_replays_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with Head(tmp_path, segment_bytes=4096) as head:
        for step in range(300):
            commit(head, *[(L(job=str(j)), step * 15_000 + int(rng.integers(-3, 4)),
                            float(rng.normal())) for j in range(7)])  # fmt: skip
        before = dump(head)
    with open(tmp_path / "wal" / wal._name(max(wal.segments(tmp_path / "wal"))), "ab") as f:
        f.write(b"\x12\x00\x00\x00\x02\x00\x00")  # a torn append after the last commit
    with Head(tmp_path, segment_bytes=4096) as head:
        assert dump(head) == before
        assert head.samples_replayed == 2100


# -- model-based test ---------------------------------------------------------------------------

POOL = [
    L(n, job=j, **({"env": e} if e else {})) for n in ("up", "cpu") for j in "ab" for e in ("", "p")
]
MAX_SERIES = 6
label_names = st.sampled_from(["__name__", "job", "env", "zone"])
matcher_st = st.builds(
    Matcher,
    st.sampled_from(list(MatchType)),
    label_names,
    st.sampled_from(["", "up", "a", "p", "cpu", "b", "a|b", ".*", "u.*", "p.+"]),
)
value_st = st.sampled_from([0.0, -0.0, 1.0, 1.5, STALE_NAN, float("nan"), float("inf"), 1e300])


batches = st.lists(
    st.tuples(
        st.integers(0, len(POOL) - 1),
        st.none() | st.none() | st.integers(0, 1000),  # at a time, or a step after the newest
        st.integers(-2, 30),
        value_st,
    ),
    min_size=1,
    max_size=12,
)


class HeadMachine(RuleBasedStateMachine):
    """The head against a dict: {labels: {t: value}} of committed samples."""

    def __init__(self) -> None:
        super().__init__()
        self.saved_max = chunk.MAX_SAMPLES
        chunk.MAX_SAMPLES = 3  # cut chunks often
        self.dir = Path(tempfile.mkdtemp())
        self.head = self.open()
        self.app = self.head.appender()
        self.model: dict[Labels, dict[int, float]] = {}
        self.pending: list[tuple[Labels, int, float]] = []
        self.touched: set[Labels] = set()  # series this appender pins
        self.in_memory: set[Labels] = set()  # series the head holds (the limit counts these)
        self.bound = -(2**63)

    def open(self) -> Head:
        return Head(self.dir, max_series=MAX_SERIES, segment_bytes=500, chunk_range_ms=50)

    def teardown(self) -> None:
        chunk.MAX_SAMPLES = self.saved_max
        self.head.close()
        shutil.rmtree(self.dir)

    def last(self, labels: Labels) -> tuple[int, float] | None:
        for series, t, v in reversed(self.pending):
            if series == labels:
                return t, v
        samples = self.model.get(labels)
        if samples:
            t = max(samples)
            return t, samples[t]
        return None

    @rule(batch=batches)
    def append(self, batch: list[tuple[int, int | None, int, float]]) -> None:
        """Each at a given time, or a step after its series' newest sample (mostly in order)."""
        for i, at, step, v in batch:
            labels = POOL[i]
            last = self.last(labels)
            t = at if at is not None else max(0, self.bound, last[0] if last else 0) + step
            self.append_one(labels, t, v, last)

    def append_one(self, labels: Labels, t: int, v: float, last: tuple[int, float] | None) -> None:
        if t < self.bound:
            with pytest.raises(OutOfOrderSample, match="out of bounds"):
                self.app.append(labels, t, v)
            return
        if labels not in self.in_memory and len(self.in_memory) >= MAX_SERIES:
            with pytest.raises(LimitExceeded):
                self.app.append(labels, t, v)
            return
        self.in_memory.add(labels)
        self.touched.add(labels)
        if last is not None and t <= last[0]:
            if t == last[0] and bits(v) == bits(last[1]):
                self.app.append(labels, t, v)  # a duplicate: ignored
                return
            with pytest.raises(OutOfOrderSample):
                self.app.append(labels, t, v)
            return
        self.app.append(labels, t, v)
        self.pending.append((labels, t, v))

    @rule(batch=batches)
    def append_and_commit(self, batch: list[tuple[int, int | None, int, float]]) -> None:
        self.append(batch)
        self.commit()

    @rule()
    def commit(self) -> None:
        self.app.commit()
        for labels, t, v in self.pending:
            if t >= self.bound:
                self.model.setdefault(labels, {})[t] = v
        self.pending.clear()
        self.touched.clear()

    @rule()
    def rollback(self) -> None:
        self.app.rollback()
        self.pending.clear()
        self.touched.clear()

    @rule(torn=st.binary(max_size=20))
    def reopen(self, torn: bytes) -> None:
        """Close (or crash: an open appender's samples are lost), maybe leaving a torn tail."""
        self.head.close()
        last = self.dir / "wal" / wal._name(max(wal.segments(self.dir / "wal")))
        with open(last, "ab") as f:
            f.write(torn)
        self.head = self.open()
        self.app = self.head.appender()
        self.pending.clear()
        self.touched.clear()
        self.in_memory = {labels for labels, samples in self.model.items() if samples}

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        times = sorted({t for samples in self.model.values() for t in samples})
        if times:  # mostly among the older half of the samples, often exactly at one
            near = st.tuples(st.sampled_from(times[: len(times) // 2 + 1]), st.sampled_from([0, 1]))
            before = data.draw(near.map(sum) | st.integers(0, times[-1] + 1))
        else:
            before = data.draw(st.integers(0, 1000))
        self.head.truncate(before)
        self.bound = max(self.bound, before)
        for samples in self.model.values():
            for t in [t for t in samples if t < self.bound]:
                del samples[t]
        self.in_memory = {
            labels for labels in self.in_memory if self.model.get(labels) or labels in self.touched
        }

    @rule(
        matchers=st.lists(matcher_st, max_size=3),
        lo=st.integers(-5, 1005),
        span=st.integers(0, 1010),
    )
    def select(self, matchers: list[Matcher], lo: int, span: int) -> None:
        expected = {}
        for labels, samples in sorted(self.model.items()):
            rows = [(t, bits(v)[0]) for t, v in sorted(samples.items()) if lo <= t <= lo + span]
            if rows and matches_all(labels, matchers):
                expected[labels] = rows
        got = {
            s.labels: list(zip(s.timestamps.tolist(), bits(s.values), strict=True))
            for s in self.head.select(matchers, lo, lo + span)
        }
        assert got == expected
        assert list(got) == sorted(got)

    @rule(lo=st.integers(0, 1000), span=st.integers(0, 1000))
    def chunks_in(self, lo: int, span: int) -> None:
        got = {}
        for labels, chunks in self.head.chunks_in(lo, lo + span):
            rows = []
            for mint, maxt, data in chunks:
                ts, vs = chunk.decode(data)
                assert ts[0] == mint and ts[-1] == maxt
                rows += list(zip(ts.tolist(), bits(vs), strict=True))
            got[labels] = rows
        expected = {
            labels: [(t, bits(v)[0]) for t, v in sorted(s.items()) if lo <= t <= lo + span]
            for labels, s in self.model.items()
        }
        assert got == {k: v for k, v in expected.items() if v}

    @invariant()
    def bounds_and_counts(self) -> None:
        times = [t for samples in self.model.values() for t in samples]
        assert self.head.mint == (min(times) if times else None)
        assert self.head.maxt == (max(times) if times else None)
        assert self.head.num_series == len(self.in_memory)
        names = sorted({k for labels, s in self.model.items() if s for k, _ in labels})
        assert self.head.label_names([], -FAR, FAR) == names


TestHeadMachine = HeadMachine.TestCase
TestHeadMachine.settings = settings(max_examples=50, stateful_step_count=40)


# -- concurrency, crash ------------------------------------------------------------------------


def test_appends_and_queries_from_many_threads(tmp_path: Path) -> None:
    head = Head(tmp_path, segment_bytes=64 << 10)
    writers, steps, per = 4, 150, 10
    errors: list[BaseException] = []
    stop = threading.Event()

    def value(labels: Labels, t: int) -> float:
        return float(t * 7 + int(labels[1][1]))

    def write(w: int) -> None:
        try:
            for step in range(steps):
                app = head.appender()
                for i in range(per):
                    labels = L(id=str(w * per + i))
                    app.append(labels, step * 10, value(labels, step * 10))
                try:
                    app.append(L("shared", id="0"), step * 10 + w, 1.0)  # racing writers
                except OutOfOrderSample:
                    pass
                app.commit()
        except BaseException as exc:
            errors.append(exc)

    def read() -> None:
        seen: dict[Labels, int] = {}
        try:
            while not stop.is_set():
                for s in head.select([Matcher.equal("__name__", "up")], -FAR, FAR):
                    ts = s.timestamps.tolist()
                    assert ts == list(range(0, 10 * len(ts), 10))  # a gap-free prefix
                    assert s.values.tolist() == [value(s.labels, t) for t in ts]
                    assert len(ts) >= seen.get(s.labels, 0)  # visibility never goes back
                    seen[s.labels] = len(ts)
                for shared in head.select([Matcher.equal("__name__", "shared")], -FAR, FAR):
                    assert bool(np.all(np.diff(shared.timestamps) > 0))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    reader.join(60)
    assert not errors, errors
    shown = dump(head, [Matcher.equal("__name__", "up")])
    assert len(shown) == writers * per and all(len(v) == steps for v in shown.values())
    head.close()
    with Head(tmp_path, segment_bytes=64 << 10) as again:
        assert dump(again, [Matcher.equal("__name__", "up")]) == shown


def test_kill_9_loses_no_committed_sample(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_head_writer.py"), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    lines: list[list[str]] = []
    deadline = time.monotonic() + 20
    for line in proc.stdout:  # stop mid-stream, somewhere past two truncations
        lines.append(line.split())
        if len(lines) > 100 and lines[-1][0] == "committed" or time.monotonic() > deadline:
            break
    proc.kill()
    rest = proc.stdout.read().split("\n")
    proc.wait(10)
    proc.stdout.close()
    lines += [line.split() for line in rest if line]
    committed = [int(b) for kind, b in lines if kind == "committed"]
    bound = max([int(b) for kind, b in lines if kind == "truncating"], default=0)
    assert len(committed) > 80 and bound > 0
    with Head(tmp_path) as head:
        got = dump(head)
    crash = [got.get(L("crash_test", series=str(i)), []) for i in range(20)]
    for i, rows in enumerate(crash):
        have = {t: v for t, v in rows}
        for b in committed:
            if b * 1000 >= bound:
                assert have.get(b * 1000) == bits(b * 100 + i)[0], (i, b)
        assert max(have) // 1000 <= committed[-1] + 1  # at most the batch being committed
