"""PromQL parity: every query of the corpus, at several instants and over several ranges,
answered by a real Prometheus (Debian's 2.42) and by our engine over the same samples.

Without the `prometheus` package these tests fail on purpose: the engine's acceptance is this
comparison, and CI installs the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scalelab.monitoring.promql import Engine

from .promql_parity import (
    BULK_END,
    STALE_END,
    T0,
    PrometheusMissing,
    ask_engine,
    ask_prometheus,
    compare,
    generate,
    memory_storage,
    prometheus_server,
    seconds,
)

MIN = 60_000
INSTANTS = [
    T0 - MIN,
    T0 + 10 * MIN,
    T0 + 47 * MIN + 3_500,
    T0 + 90 * MIN,
    BULK_END + MIN,
    BULK_END + 12 * MIN,
    BULK_END + 25 * MIN,
]
RANGES = [
    (T0, STALE_END, MIN),
    (T0 + 40 * MIN, T0 + 50 * MIN, 15_000),
    (BULK_END - 5 * MIN, STALE_END, 7_000),
]
AT = T0 // 1000 + 2800  # an @ time inside the bulk data
AT_TAIL = BULK_END // 1000 + 100  # an @ time among the staleness markers


@dataclass(frozen=True)
class Case:
    query: str
    range: bool = True  # also run as range queries (instant vectors and scalars only)
    ordered: bool = False  # Prometheus defines the result order (sort, topk)


def _cases() -> list[Case]:
    plain = [
        # selectors, matchers, lookback, staleness
        "http_requests_total",
        'http_requests_total{job="api"}',
        'http_requests_total{job!="api"}',
        'http_requests_total{instance=~"i[01]"}',
        'http_requests_total{instance!~"i[01]", method="GET"}',
        'http_requests_total{job=~"a.*|d.*"}',
        '{__name__=~"cpu_temp|memory_bytes", job="db"}',
        '{job="api", __name__!~"http.*|request.*|node.*|memory.*"}',
        'label_test{other=""}',
        'label_test{other=~".*"}',
        "stopping_gauge",
        "stopping_gauge offset 10m",
        "cpu_temp offset -5m",
        f"cpu_temp @ {AT}",
        f"flappy @ {AT_TAIL}",
        "cpu_temp @ start()",
        "cpu_temp @ end() offset 1m",
        "flappy",
        "flappy offset 3m",
        "sparse_counter",
        "weird_gauge",
        "date_gauge",
        "nonexistent_metric",
        # rate and friends
        "rate(http_requests_total[5m])",
        "rate(http_requests_total[1m])",
        "rate(http_requests_total[30s])",
        "rate(http_requests_total[5m] offset 10m)",
        f"rate(http_requests_total[5m] @ {AT})",
        "irate(http_requests_total[5m])",
        "increase(http_requests_total[15m])",
        "increase(http_requests_total[2h])",
        "delta(cpu_temp[10m])",
        "idelta(cpu_temp[5m])",
        "rate(sparse_counter[5m])",
        "rate(sparse_counter[3m])",
        "increase(sparse_counter[1h])",
        "irate(sparse_counter[10m])",
        "rate(request_duration_seconds_count[5m])",
        "delta(weird_gauge[5m])",
        "rate(weird_gauge[10m])",
        "idelta(weird_gauge[2m])",
        "irate(weird_gauge[2m])",
        "rate(flappy[5m])",
        "increase(flappy[10m])",
        "resets(http_requests_total[30m])",
        "resets(weird_gauge[15m])",
        "changes(up[30m])",
        "changes(weird_gauge[15m])",
        "changes(flappy[10m])",
        "deriv(cpu_temp[10m])",
        "deriv(memory_bytes[5m])",
        'deriv(weird_gauge{kind=~"const|big|neg"}[5m])',
        "predict_linear(memory_bytes[10m], 3600)",
        "predict_linear(cpu_temp[5m], 300)",
        "predict_linear(cpu_temp[5m] offset 5m, 60)",
        "holt_winters(cpu_temp[10m], 0.3, 0.7)",
        "holt_winters(sparse_counter[10m], 0.5, 0.1)",
        # *_over_time
        "avg_over_time(cpu_temp[10m])",
        "min_over_time(cpu_temp[10m])",
        "max_over_time(memory_bytes[10m])",
        "sum_over_time(up[10m])",
        "count_over_time(cpu_temp[10m])",
        "count_over_time(stopping_gauge[10m])",
        "quantile_over_time(0.25, cpu_temp[10m])",
        "quantile_over_time(0.9, memory_bytes[30m])",
        "quantile_over_time(0, cpu_temp[5m])",
        "quantile_over_time(1, cpu_temp[5m])",
        "quantile_over_time(-1, cpu_temp[5m])",
        "quantile_over_time(2, cpu_temp[5m])",
        "stddev_over_time(cpu_temp[10m])",
        "stdvar_over_time(memory_bytes[10m])",
        "stddev_over_time(weird_gauge[10m])",
        "last_over_time(cpu_temp[10m])",
        "last_over_time(stopping_gauge[15m])",
        "last_over_time(flappy[10m])",
        "present_over_time(stopping_gauge[10m])",
        "present_over_time(flappy[3m])",
        "absent_over_time(nonexistent[5m])",
        'absent_over_time(stopping_gauge{id="1"}[5m])',
        'absent_over_time(flappy{id="2"}[2m])',
        "avg_over_time(weird_gauge[5m])",
        "sum_over_time(weird_gauge[5m])",
        "min_over_time(weird_gauge[5m])",
        "max_over_time(weird_gauge[5m])",
        "quantile_over_time(0.5, weird_gauge[5m])",
        "count_over_time(flappy[10m])",
        # aggregations
        "sum(http_requests_total)",
        "sum by (job) (rate(http_requests_total[5m]))",
        "sum without (instance) (rate(http_requests_total[5m]))",
        "avg by (instance) (cpu_temp)",
        "min(cpu_temp)",
        "max by (job) (memory_bytes)",
        "count(up)",
        "count by (job) (up == 1)",
        "group by (job) (http_requests_total)",
        "group(http_requests_total)",
        "stddev(cpu_temp)",
        "stdvar by (job) (cpu_temp)",
        'stddev(weird_gauge{kind=~"const|zero|neg"})',
        "stddev(weird_gauge)",
        "quantile(0.5, cpu_temp)",
        "quantile by (job) (0.9, memory_bytes)",
        "quantile(0, weird_gauge)",
        "quantile(1.5, cpu_temp)",
        'count_values("value", up)',
        'count_values by (job) ("v", up)',
        'count_values without (instance) ("up_value", up)',
        'count_values("v", weird_gauge)',
        "sum(weird_gauge)",
        "avg(weird_gauge)",
        "max(weird_gauge)",
        "min(weird_gauge)",
        'sum by (__name__) ({__name__=~"cpu_temp|memory_bytes"})',
        'count without (__name__) ({job="api"})',
        "sum by (nonexistent) (up)",
        "avg without (job, instance, method) (http_requests_total)",
        "topk by (job) (1, cpu_temp)",
        "bottomk without (instance) (1, memory_bytes)",
        "topk(scalar(minute()) % 3 + 1, cpu_temp)",
        'quantile(scalar(up{job="api", instance="i0"}) * 0.5, cpu_temp)',
        "max(flappy)",
        "sum(rate(flappy[5m]))",
        # binary operators
        "cpu_temp + 1",
        "1 - cpu_temp",
        "cpu_temp * 2",
        "cpu_temp / 0",
        "-cpu_temp % 7",
        "cpu_temp % -7",
        "cpu_temp ^ 2",
        "2 ^ 3 ^ 2",
        "-2 ^ 2",
        "1 + 2 * 3",
        "(1 + 2) * 3",
        "10 % 3",
        "2 > bool 1",
        "1 == bool 1",
        "cpu_temp > 50",
        "50 < cpu_temp",
        "cpu_temp > bool 50",
        "50 >= bool cpu_temp",
        "cpu_temp == bool cpu_temp",
        "cpu_temp atan2 memory_bytes",
        "cpu_temp atan2 0.5",
        "memory_bytes / on(job, instance) cpu_temp",
        "memory_bytes / ignoring(method) cpu_temp",
        "cpu_temp * on(job, instance) group_left(version) node_info",
        "node_info * on(job, instance) group_right(version) cpu_temp",
        "node_info < on(job, instance) group_right cpu_temp",
        "cpu_temp > on(job, instance) memory_bytes / 1e7",
        "http_requests_total / on(job) group_left sum by (job) (http_requests_total)",
        "rate(http_requests_total[5m]) / on(job, instance) group_left "
        "sum by (job, instance) (rate(http_requests_total[5m]))",
        "sum by (job) (rate(http_requests_total[5m])) / on(job) "
        "sum by (job) (rate(request_duration_seconds_count[5m]))",
        "up == 1",
        "up != 1",
        "up == bool 0",
        "http_requests_total and on(instance) up == 1",
        "cpu_temp and memory_bytes",
        "cpu_temp and on(job) up == 0",
        "cpu_temp or memory_bytes",
        "cpu_temp or on(job) memory_bytes",
        "cpu_temp unless memory_bytes > 5e8",
        "stopping_gauge or vector(0)",
        "up unless on(instance) cpu_temp > 60",
        "flappy or on() vector(-1)",
        "time() - batch_last_success",
        "vector(1) + vector(2)",
        "-http_requests_total",
        "- -cpu_temp",
        "dup_a + on(job) dup_b",
        "weird_gauge / weird_gauge",
        "weird_gauge > 0",
        # functions
        "abs(weird_gauge)",
        "ceil(cpu_temp)",
        "floor(weird_gauge)",
        "round(cpu_temp)",
        "round(cpu_temp, 0.1)",
        "round(weird_gauge, 5)",
        "exp(cpu_temp / 100)",
        "ln(memory_bytes)",
        "log2(memory_bytes)",
        "log10(weird_gauge)",
        "sqrt(cpu_temp)",
        "sgn(weird_gauge)",
        "sin(cpu_temp)",
        "cos(cpu_temp)",
        "tan(cpu_temp)",
        "asin(cpu_temp / 100)",
        "acos(cpu_temp / 100)",
        "atan(cpu_temp)",
        "sinh(cpu_temp / 50)",
        "cosh(cpu_temp / 50)",
        "tanh(cpu_temp / 50)",
        "asinh(cpu_temp)",
        "acosh(cpu_temp)",
        "atanh(cpu_temp / 100)",
        "deg(cpu_temp)",
        "rad(cpu_temp)",
        "pi()",
        "clamp(cpu_temp, 40, 60)",
        "clamp(cpu_temp, 60, 40)",
        "clamp_min(cpu_temp, 50)",
        "clamp_max(weird_gauge, 0)",
        'scalar(up{job="api", instance="i0"})',
        "scalar(up)",
        'vector(scalar(cpu_temp{job="api", instance="i0"}))',
        "time()",
        "vector(time())",
        "timestamp(cpu_temp)",
        "timestamp(sparse_counter)",
        "timestamp(cpu_temp offset 2m)",
        f"timestamp(sparse_counter @ {AT})",
        "timestamp(rate(http_requests_total[5m]))",
        "minute(batch_last_success)",
        "hour(batch_last_success)",
        "day_of_week(date_gauge)",
        "day_of_month(date_gauge)",
        "day_of_year(date_gauge)",
        "days_in_month(date_gauge)",
        "month(date_gauge)",
        "year(date_gauge)",
        "hour()",
        "day_of_week()",
        "year()",
        'label_replace(label_test, "part", "$1", "src", "([a-z]+)-.*")',
        'label_replace(label_test, "src", "", "src", ".*")',
        'label_replace(label_test, "new", "x-${1}-$2y-$$", "src", "([a-z]+)-([a-z]+).*")',
        'label_replace(cpu_temp, "instance", "$1", "instance", "i(.*)")',
        'label_replace(cpu_temp, "n", "$1", "instance", "(?i)I(.*)")',
        'label_replace(up, "foo", "bar", "nonexistent", "")',
        'label_replace(up, "foo", "$name", "instance", "(?P<name>i.)")',
        'label_join(label_test, "joined", "-", "src", "other")',
        'label_join(cpu_temp, "new", ",", "job", "instance", "__name__")',
        "absent(nonexistent)",
        'absent(nonexistent{job="x", instance=~"a", job="y", env="prod"})',
        "absent(cpu_temp)",
        'absent(flappy{id="2"})',
        'absent(sum(nonexistent{job="a"}))',
        "histogram_quantile(0.5, rate(request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.99, rate(request_duration_seconds_bucket[5m]))",
        "histogram_quantile(0.9, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
        "histogram_quantile(0, rate(request_duration_seconds_bucket[10m]))",
        "histogram_quantile(1, rate(request_duration_seconds_bucket[10m]))",
        "histogram_quantile(1.5, request_duration_seconds_bucket)",
        "histogram_quantile(-0.5, request_duration_seconds_bucket)",
        "histogram_quantile(0.5, request_duration_seconds_bucket)",
        'histogram_quantile(0.5, request_duration_seconds_bucket{le!="+Inf"})',
        "histogram_quantile(0.75, sum by (job, le) "
        "(increase(request_duration_seconds_bucket[10m])))",
        # subqueries
        "max_over_time(rate(http_requests_total[5m])[30m:1m])",
        "avg_over_time(cpu_temp[10m:])",
        "rate(http_requests_total[10m:30s])",
        "sum_over_time(up[1h:5m] offset 10m)",
        "min_over_time(sum by (job) (cpu_temp)[20m:2m])",
        "max_over_time(deriv(memory_bytes[5m])[15m:1m])",
        f"min_over_time(rate(http_requests_total[1m])[10m:30s] @ {AT})",
        "max_over_time(avg_over_time(cpu_temp[5m:1m])[10m:2m])",
        "count_over_time((cpu_temp > 50)[30m:1m])",
        "quantile_over_time(0.5, cpu_temp[10m:15s])",
        "absent_over_time(nonexistent[5m:1m])",
        "last_over_time(stopping_gauge[1h:1m])",
        "rate(flappy[5m:15s])",
        "sum_over_time(vector(1)[5m:1m])",
        # @ and offset combined with functions, aggregations and subqueries
        "timestamp(cpu_temp @ end())",
        f"sum by (job) (cpu_temp @ {AT})",
        f"cpu_temp @ {AT} - cpu_temp",
        f"max_over_time(cpu_temp[10m:1m] offset 5m @ {AT})",
        "rate(http_requests_total[5m:1m] @ end())",
        "last_over_time(cpu_temp[5m] @ start())",
        "increase(http_requests_total[1m] offset -1m)",
        f"avg_over_time(rate(http_requests_total[5m] @ {AT})[10m:1m])",
        # more matching, scalars and edge values
        "cpu_temp > bool on(job, instance) group_left(version) node_info",
        "sum by (job) (up) / ignoring(job) group_left sum(up)",
        'count_values("v", cpu_temp)',
        "quantile(0.5, weird_gauge)",
        'absent(nonexistent{job=~"a"})',
        "time() % 120",
        'scalar(cpu_temp{job="api", instance="i0"}) * 2',
        "-(cpu_temp)",
        "+cpu_temp",
        "days_in_month(vector(1709251200))",
        "month(vector(time()))",
        "round(vector(-2.5))",
        "exp(vector(1000))",
        "ln(vector(0))",
        "sqrt(vector(-1))",
        "vector(0) * -1",
        "-vector(0)",
        "stdvar by (job, instance) (cpu_temp)",
        "group without (instance) (up)",
        "count by (le) (request_duration_seconds_bucket)",
        'http_requests_total{nonexistent=""}',
        'http_requests_total{nonexistent!=""}',
        'http_requests_total{job=~"ap"}',
        '{__name__=~"(?i)CPU_TEMP"}',
        "deriv(flappy[5m])",
        "timestamp(timestamp(cpu_temp))",
        "sum(http_requests_total) by (job) > on(job) group_left sum(http_requests_total)",
        # literals
        "42",
        "-1.5",
        "Inf",
        "NaN",
        "0x1f",
        # errors Prometheus reports while evaluating
        "cpu_temp + on() memory_bytes",
        "http_requests_total + on(job, instance) cpu_temp",
        "cpu_temp * on(job) group_left node_info",
        'abs({__name__=~"dup_a|dup_b"})',
        'rate({__name__=~"dup_.*"}[5m])',
        '-{__name__=~"dup_.*"}',
        "holt_winters(cpu_temp[10m], 1.5, 0.5)",
        'label_replace(up, "1bad", "", "job", "")',
        'count_values("1bad", up)',
        "topk(NaN, cpu_temp)",
    ]
    cases = [Case(q) for q in plain]
    cases += [
        Case(q, ordered=True)
        for q in (
            "topk(3, cpu_temp)",
            "bottomk(2, memory_bytes)",
            "topk(2, weird_gauge)",
            "bottomk(3, weird_gauge)",
            "sort(cpu_temp)",
            "sort_desc(memory_bytes)",
            "sort(weird_gauge)",
            "sort_desc(weird_gauge)",
            "sort_desc(rate(http_requests_total[5m]))",
            "sort_desc(sum by (job) (rate(http_requests_total[5m])))",
            "bottomk(1, sum by (job) (memory_bytes))",
        )
    ]
    cases += [
        Case(q, range=False)
        for q in (
            'http_requests_total{job="api"}[5m]',
            "cpu_temp[1m] offset 3m",
            "flappy[10m]",
            "weird_gauge[1m]",
            f"cpu_temp[2m] @ {AT}",
            "cpu_temp[5m:1m]",
            "rate(http_requests_total[5m])[10m:2m]",
            '"hello"',
            # Prometheus 2.42 slides this window with the steps of a range query (the @ time
            # is applied as an offset from the query start, and predict_linear is evaluated
            # per step); we keep the @ time fixed, so only the instant query is compared.
            f"predict_linear(cpu_temp[5m] @ {AT}, 60)",
            "max_over_time(time()[5m:1m])",
            "rate(cpu_temp)",
            "sum(",
            'foo{bar="baz"',
        )
    ]
    return cases


CASES = _cases()


Parity = tuple[httpx.Client, str, Engine]


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parity | str]:
    """Prometheus and our engine on the same data; a message instead when Prometheus is not
    installed, so that every parity test fails (not errors, not skips) saying why."""
    ds = generate()
    engine = Engine(memory_storage(ds))
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    try:
        server = prometheus_server(ds, workdir)
        url = server.__enter__()
    except PrometheusMissing as exc:
        yield str(exc)
        return
    try:
        with httpx.Client(timeout=30) as client:
            yield client, url, engine
    finally:
        server.__exit__(None, None, None)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert len({c.query for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.query for c in CASES])
def test_parity(case: Case, parity: Parity | str) -> None:
    if isinstance(parity, str):
        pytest.fail(parity)
    client, url, engine = parity
    runs: list[dict[str, str]] = [{"time": seconds(t)} for t in INSTANTS]
    if case.range:
        runs += [{"start": seconds(a), "end": seconds(b), "step": seconds(s)} for a, b, s in RANGES]
    problems: list[str] = []
    for params in runs:
        expected = ask_prometheus(client, url, {"query": case.query, **params})
        actual = ask_engine(engine, case.query, params)
        for problem in compare(expected, actual, ordered=case.ordered):
            problems.append(f"{params}: {problem}")
    assert not problems, "\n".join(problems[:20])
