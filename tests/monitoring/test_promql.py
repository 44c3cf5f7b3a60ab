"""The PromQL engine on small hand-made data: what the parity harness cannot see (errors,
limits, timeouts, corner cases of staleness and @) and the JSON shapes, plus property tests of
the window functions against plain re-implementations of Prometheus's loops."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring.errors import (
    BadData,
    ExecutionError,
    QueryTimeout,
    TooManySamples,
)
from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import STALE_NAN, Labels, Matcher, Series
from scalelab.monitoring.promql import Engine, Matrix, Scalar, String, Vector
from scalelab.monitoring.promql.ast import python_regex
from scalelab.monitoring.promql.functions import expand_template

MIN = 60_000


def _storage() -> MemoryStorage:
    s = MemoryStorage()
    for k in range(61):
        t = k * 15_000
        s.add({"__name__": "reqs", "job": "api", "instance": "a"}, t, float(k * 10))
        s.add({"__name__": "reqs", "job": "api", "instance": "b"}, t, float(k * 5))
        s.add({"__name__": "reqs", "job": "db", "instance": "a"}, t, float(k))
        s.add({"__name__": "info", "job": "api"}, t, 1.0)
        s.add({"__name__": "info", "job": "db"}, t, 1.0)
    return s


@pytest.fixture
def engine() -> Engine:
    return Engine(_storage())


def _vector(value: object) -> dict[Labels, float]:
    assert isinstance(value, Vector)
    return {s.labels: s.value for s in value.samples}


# --- results and their JSON --------------------------------------------------------------------


def test_instant_vector_json(engine: Engine) -> None:
    data = engine.instant('reqs{instance="a"}', 10 * MIN).to_json()
    assert data["resultType"] == "vector"
    assert sorted(data["result"], key=lambda r: r["metric"]["job"]) == [
        {"metric": {"__name__": "reqs", "instance": "a", "job": "api"}, "value": [600.0, "400"]},
        {"metric": {"__name__": "reqs", "instance": "a", "job": "db"}, "value": [600.0, "40"]},
    ]


def test_scalar_string_and_literal_formats(engine: Engine) -> None:
    assert engine.instant("1 / 0", 1500).to_json() == {
        "resultType": "scalar",
        "result": [1.5, "+Inf"],
    }
    assert engine.instant("-1 / 0", 0).to_json()["result"][1] == "-Inf"
    assert engine.instant("0 / 0", 0).to_json()["result"][1] == "NaN"
    assert engine.instant("1e21", 0).to_json()["result"][1] == "1000000000000000000000"
    assert engine.instant("0.1 + 0.2", 0).to_json()["result"][1] == "0.30000000000000004"
    assert engine.instant('"text"', 2000).to_json() == {
        "resultType": "string",
        "result": [2.0, "text"],
    }
    result = engine.instant("vector(0) * -1", 0).to_json()["result"]
    assert result == [{"metric": {}, "value": [0.0, "-0"]}]


def test_range_query_matrix_sorted_by_labels(engine: Engine) -> None:
    value = engine.range("reqs", 0, 2 * MIN, MIN)
    assert isinstance(value, Matrix)
    assert [s.labels for s in value.series] == sorted(s.labels for s in value.series)
    data = value.to_json()
    assert data["resultType"] == "matrix"
    first = data["result"][0]
    assert first["metric"] == {"__name__": "reqs", "instance": "a", "job": "api"}
    assert first["values"] == [[0.0, "0"], [60.0, "40"], [120.0, "80"]]


def test_range_query_of_a_scalar_is_one_unlabelled_series(engine: Engine) -> None:
    value = engine.range("time() * 2", 0, 2 * MIN, MIN)
    assert value.to_json()["result"] == [
        {"metric": {}, "values": [[0.0, "0"], [60.0, "120"], [120.0, "240"]]}
    ]


def test_instant_range_selector_is_a_matrix(engine: Engine) -> None:
    value = engine.instant('reqs{job="db"}[1m]', 10 * MIN)
    assert isinstance(value, Matrix)
    assert value.series[0].timestamps == [
        9 * MIN,
        9 * MIN + 15_000,
        9 * MIN + 30_000,
        9 * MIN + 45_000,
        10 * MIN,
    ]


def test_result_types(engine: Engine) -> None:
    assert isinstance(engine.instant("time()", 0), Scalar)
    assert isinstance(engine.instant('"s"', 0), String)
    assert isinstance(engine.instant("reqs", 0), Vector)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('reqs{job="api"', "unexpected end of input inside braces"),
        ("rate(reqs)", "expected type matrix in call to function 'rate'"),
        ("sum(", "unclosed left parenthesis"),
        ("1 > 2", "comparisons between scalars must use BOOL modifier"),
    ],
)
def test_parse_errors_are_bad_data_with_the_parsers_message(
    engine: Engine, query: str, message: str
) -> None:
    with pytest.raises(BadData, match=re.escape(message)):
        engine.instant(query, 0)


def test_functions_newer_than_prometheus_2_are_unknown(engine: Engine) -> None:
    with pytest.raises(BadData, match='unknown function with name "sort_by_label"'):
        engine.instant('sort_by_label(reqs, "job")', 0)


def test_or_between_matchers_is_rejected(engine: Engine) -> None:
    with pytest.raises(BadData, match="'or'"):
        engine.instant('reqs{job="a" or job="b"}', 0)


def test_bad_regex_in_matcher(engine: Engine) -> None:
    with pytest.raises(BadData):
        engine.instant('reqs{job=~"(?P<x"}', 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, MIN, 0), "zero or negative query resolution step widths are not accepted"),
        ((MIN, 0, 1000), "end timestamp must not be before start time"),
        ((0, 12_000 * MIN, MIN), "exceeded maximum resolution of 11,000 points"),
    ],
)
def test_range_query_parameters(engine: Engine, args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(BadData, match=message):
        engine.range("reqs", *args)


@pytest.mark.parametrize(("query", "kind"), [("reqs[5m]", "range vector"), ('"s"', "string")])
def test_range_query_needs_vector_or_scalar(engine: Engine, query: str, kind: str) -> None:
    with pytest.raises(BadData, match=f'invalid expression type "{kind}" for range query'):
        engine.range(query, 0, MIN, 15_000)


def test_many_to_many_matching(engine: Engine) -> None:
    with pytest.raises(ExecutionError, match="many-to-many matching not allowed") as info:
        engine.instant("info + on() reqs", 10 * MIN)
    assert "found duplicate series for the match group {} on the right hand-side" in str(info.value)


def test_one_to_one_needs_group_modifier(engine: Engine) -> None:
    with pytest.raises(ExecutionError, match="many-to-one matching must be explicit"):
        engine.instant("reqs * on(job) info", 10 * MIN)
    ok = _vector(engine.instant("reqs * on(job) group_left info", 10 * MIN))
    assert len(ok) == 3


def test_grouping_labels_must_be_unique() -> None:
    s = MemoryStorage()
    s.add({"__name__": "a", "job": "x"}, 0, 1)
    s.add({"__name__": "b", "job": "x"}, 0, 2)
    s.add({"__name__": "info", "job": "x"}, 0, 1)
    engine = Engine(s)
    with pytest.raises(ExecutionError, match="grouping labels must ensure unique matches"):
        engine.instant('{__name__=~"a|b"} * on(job) group_left info', 0)
    # Comparisons keep the name, so the same join is fine.
    assert len(_vector(engine.instant('{__name__=~"a|b"} > on(job) group_left info', 0))) == 1


def test_same_labelset_after_dropping_the_name() -> None:
    s = MemoryStorage()
    s.add({"__name__": "a", "job": "x"}, 0, 1)
    s.add({"__name__": "b", "job": "x"}, 0, 2)
    engine = Engine(s)
    for query in (
        'abs({job="x"})',
        'count_over_time({job="x"}[5m])',
        '-{job="x"}',
        '{job="x"} * 2',
    ):
        with pytest.raises(ExecutionError, match="vector cannot contain metrics with the same"):
            engine.instant(query, 0)


def test_evaluation_errors_worded_as_prometheus(engine: Engine) -> None:
    cases = {
        "holt_winters(reqs[5m], 0, 0.5)": "invalid smoothing factor. Expected: 0 < sf < 1, "
        "got: 0.000000",
        "holt_winters(reqs[5m], 0.5, 1)": "invalid trend factor. Expected: 0 < tf < 1, "
        "got: 1.000000",
        'label_replace(reqs, "1x", "", "job", "")': "invalid destination label name in "
        "label_replace(): 1x",
        'label_replace(reqs, "x", "", "job", "(")': "invalid regular expression in "
        "label_replace(): (",
        'label_join(reqs, "x", "", "1y")': "invalid source label name in label_join(): 1y",
        'count_values("1x", reqs)': 'invalid label name "1x"',
        "topk(NaN, reqs)": "Scalar value NaN overflows int64",
        "topk(1e20, reqs)": "Scalar value 1e+20 overflows int64",
    }
    for query, message in cases.items():
        with pytest.raises(ExecutionError, match=re.escape(message)):
            engine.instant(query, 10 * MIN)


# --- limits ------------------------------------------------------------------------------------


def test_max_samples(engine: Engine) -> None:
    small = Engine(engine.querier, max_samples=50)
    assert len(_vector(small.instant("reqs", 10 * MIN))) == 3
    with pytest.raises(TooManySamples, match="query processing would load too many samples"):
        small.range("reqs", 0, 15 * MIN, 15_000)
    with pytest.raises(TooManySamples):
        small.instant("rate(reqs[10m])", 15 * MIN)
    assert issubclass(TooManySamples, ExecutionError)


class _SlowQuerier:
    def __init__(self, inner: MemoryStorage, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        time.sleep(self.delay)
        return self.inner.select(matchers, mint, maxt)

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        return self.inner.label_names(matchers, mint, maxt)

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        return self.inner.label_values(name, matchers, mint, maxt)


def test_timeout() -> None:
    engine = Engine(_SlowQuerier(_storage(), 0.05), timeout_s=0.01)
    with pytest.raises(QueryTimeout, match="query timed out in expression evaluation"):
        engine.instant("sum(reqs)", 10 * MIN)
    relaxed = Engine(_SlowQuerier(_storage(), 0.01), timeout_s=30)
    assert _vector(relaxed.instant("sum(reqs)", 10 * MIN))


# --- staleness, lookback, offset and @ ---------------------------------------------------------


def test_staleness_marker_ends_a_series_before_the_lookback_does() -> None:
    s = MemoryStorage()
    for k in range(10):
        s.add({"__name__": "g"}, k * 15_000, float(k))
    s.add({"__name__": "g"}, 10 * 15_000, STALE_NAN)
    s.add({"__name__": "g"}, 20 * 15_000, 99.0)
    engine = Engine(s)
    assert _vector(engine.instant("g", 9 * 15_000 + 1)) == {(("__name__", "g"),): 9.0}
    assert _vector(engine.instant("g", 10 * 15_000)) == {}
    assert _vector(engine.instant("g", 19 * 15_000)) == {}
    assert _vector(engine.instant("g", 20 * 15_000)) == {(("__name__", "g"),): 99.0}
    # A range selector skips the marker; a plain NaN is a value.
    assert _vector(engine.instant("count_over_time(g[10m])", 20 * 15_000)) == {(): 11.0}


def test_lookback_delta_is_configurable() -> None:
    s = MemoryStorage()
    s.add({"__name__": "g"}, 0, 1.0)
    assert _vector(Engine(s).instant("g", 5 * MIN))  # closed interval [t - 5m, t] in 2.x
    assert not _vector(Engine(s).instant("g", 5 * MIN + 1))
    assert not _vector(Engine(s, lookback_delta_ms=MIN).instant("g", MIN + 1))


def test_negative_at_times_and_offsets() -> None:
    s = MemoryStorage()
    s.add({"__name__": "g"}, -2500, 7.0)
    s.add({"__name__": "g"}, 1000, 8.0)
    engine = Engine(s)
    assert _vector(engine.instant("g @ -1.5", 10_000)) == {(("__name__", "g"),): 7.0}
    assert _vector(engine.instant("g offset -1s", 0)) == {(("__name__", "g"),): 8.0}


def test_at_start_and_end_in_a_range_query(engine: Engine) -> None:
    value = engine.range('reqs{job="db"} @ end() - reqs{job="db"} @ start()', MIN, 3 * MIN, MIN)
    assert [v for s in value.series for v in s.values] == [8.0, 8.0, 8.0]


def test_subquery_default_step() -> None:
    engine = Engine(_storage(), subquery_step_ms=30_000)
    assert _vector(engine.instant('count_over_time(reqs{job="db"}[2m:])', 10 * MIN)) == {
        (("instance", "a"), ("job", "db")): 5.0
    }


def test_holt_winters_and_its_3x_name(engine: Engine) -> None:
    a = _vector(engine.instant("holt_winters(reqs[5m], 0.5, 0.5)", 10 * MIN))
    b = _vector(engine.instant("double_exponential_smoothing(reqs[5m], 0.5, 0.5)", 10 * MIN))
    assert a == b and len(a) == 3


# --- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$1", "ab"),
        ("${1}x", "abx"),
        ("$1x", ""),  # Go reads the name "1x", which does not exist
        ("$$1", "$1"),
        ("$name-$2", "ab-cd"),
        ("${name}", "ab"),
        ("$", "$"),
        ("a$-b", "a$-b"),
        ("$9", ""),
    ],
)
def test_expand_template_follows_go(template: str, expected: str) -> None:
    match = re.match(r"(?P<name>[a-z]+)-([a-z]+)", "ab-cd")
    assert match is not None
    assert expand_template(template, match) == expected


def test_leading_go_flags_become_scoped() -> None:
    assert python_regex("(?i)abc") == "(?i:abc)"
    assert python_regex("abc") == "abc"
    assert re.fullmatch(f"(?s:{python_regex('(?i)AB|cd')})", "CD")


# --- property tests: window functions against Prometheus's loops -------------------------------


def _reference(fn: str, samples: list[tuple[int, float]], start: int, end: int) -> float | None:
    points = [(t, v) for t, v in samples if start <= t <= end and not math.isnan(v)]
    values = [v for _, v in points]
    if fn == "count_over_time":
        return float(len(values)) if values else None
    if fn == "changes":
        return (
            float(sum(1 for a, b in zip(values, values[1:], strict=False) if a != b))
            if values
            else None
        )
    if fn == "resets":
        return (
            float(sum(1 for a, b in zip(values, values[1:], strict=False) if b < a))
            if values
            else None
        )
    if fn == "max_over_time":
        return max(values) if values else None
    if fn == "increase":
        if len(points) < 2:
            return None
        result = values[-1] - values[0]
        last = 0.0
        for v in values:
            if v < last:
                result += last
            last = v
        to_start = (points[0][0] - start) / 1000
        to_end = (end - points[-1][0]) / 1000
        sampled = (points[-1][0] - points[0][0]) / 1000
        average = sampled / (len(points) - 1)
        if result > 0 and values[0] >= 0:
            to_start = min(to_start, sampled * (values[0] / result))
        threshold = average * 1.1
        interval = sampled
        interval += to_start if to_start < threshold else average / 2
        interval += to_end if to_end < threshold else average / 2
        return result * (interval / sampled)
    raise AssertionError(fn)


_series = st.lists(
    st.tuples(st.integers(1, 40_000), st.integers(0, 50).map(float)), min_size=0, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(_series, min_size=1, max_size=3),
    fn=st.sampled_from(["count_over_time", "changes", "resets", "max_over_time", "increase"]),
    window_s=st.sampled_from([30, 60, 100]),
)
def test_window_functions_match_reference(
    data: list[list[tuple[int, float]]], fn: str, window_s: int
) -> None:
    storage = MemoryStorage()
    series: list[list[tuple[int, float]]] = []
    for i, raw in enumerate(data):
        t, samples = 0, []
        for gap, v in raw:
            t += gap
            samples.append((t, v))
        storage.add_many({"__name__": "m", "i": str(i)}, samples)
        series.append(samples)
    engine = Engine(storage)
    start, end, step = 0, 600_000, 17_000
    value = engine.range(f"{fn}(m[{window_s}s])", start, end, step)
    got = {
        (dict(s.labels)["i"], t): v
        for s in value.series
        for t, v in zip(s.timestamps, s.values, strict=True)
    }
    for i, samples in enumerate(series):
        for t in range(start, end + 1, step):
            want = _reference(fn, samples, t - window_s * 1000, t)
            have = got.get((str(i), t))
            if want is None:
                assert have is None, (i, t)
            else:
                assert have is not None and math.isclose(have, want, rel_tol=1e-9), (
                    i,
                    t,
                    have,
                    want,
                )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf)),
        min_size=1,
        max_size=12,
    ),
    q=st.floats(-0.5, 1.5),
)
def test_quantile_and_stddev_match_reference(values: list[float], q: float) -> None:
    storage = MemoryStorage()
    for i, v in enumerate(values):
        storage.add({"__name__": "m", "i": str(i)}, 0, v)
    engine = Engine(storage)
    got = _vector(engine.instant(f"quantile({q!r}, m)", 0))[()]
    ordered = sorted(values, key=lambda v: (not math.isnan(v), v))
    if q < 0:
        want = -math.inf
    elif q > 1:
        want = math.inf
    else:
        rank = q * (len(ordered) - 1)
        lower = max(0, math.floor(rank))
        upper = min(len(ordered) - 1, lower + 1)
        weight = rank - math.floor(rank)
        want = ordered[lower] * (1 - weight) + ordered[upper] * weight
    assert (math.isnan(got) and math.isnan(want)) or math.isclose(got, want, rel_tol=1e-12)
    count, mean, m2 = 0, 0.0, 0.0
    for v in values:
        count += 1
        if count == 1:
            mean, m2 = v, 0.0
            continue
        delta = v - mean
        mean += delta / count
        m2 += delta * (v - mean)
    stdvar = _vector(engine.instant("stdvar(m)", 0))[()]
    want_var = m2 / count
    assert (math.isnan(stdvar) and math.isnan(want_var)) or stdvar == pytest.approx(
        want_var, rel=1e-9, abs=1e-9
    )


def test_np_errstate_is_restored(engine: Engine) -> None:
    engine.instant("reqs / 0", 10 * MIN)
    with pytest.warns(RuntimeWarning):
        np.array([1.0]) / np.array([0.0])
