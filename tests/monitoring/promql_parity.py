"""The PromQL parity harness: a real Prometheus and ours, asked the same queries on the same data.

The data set is deterministic: counters with resets, gauges, classic histograms, series that
stop, irregular and sparse scrapes, NaN/Inf values. The bulk goes to Prometheus through
`promtool tsdb create-blocks-from openmetrics`; staleness markers cannot be written in the
text format, so the series that carry them are sent afterwards through the remote-write
receiver, into the head block (after the backfilled block's end, where it accepts samples).

Ours answers in two modes, both compared with `compare` against Prometheus's HTTP answers:
- the engine alone, over a MemoryStorage holding the same samples (`memory_storage`,
  `ask_engine`): the evaluator's semantics without storage in the way;
- our real server (`our_server`, `ask_api`): the whole data set remote-written to
  `POST /api/v1/write` in time-ordered batches, then read through `/api/v1/query` and
  `/api/v1/query_range` (the head, optionally compacted into blocks, and the range-query
  results cache).

The corpus (`CASES`, run at `INSTANTS` and over `RANGES`) is shared by both modes.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cramjam
import httpx

from scalelab.monitoring import remote_write
from scalelab.monitoring.errors import MonitoringError
from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import STALE_NAN, Labels, labels_of
from scalelab.monitoring.promql import Engine
from scalelab.monitoring.server import create_app
from scalelab.monitoring.settings import HOUR_MS, MonitoringSettings
from scalelab.web import ServerThread

# 2023-11-14T22:00:00Z, a multiple of 2h so the backfill is one block.
T0 = 1_699_999_200_000
BULK_END = T0 + 2 * 3600_000  # the backfilled data is [T0, BULK_END)
STALE_END = BULK_END + 30 * 60_000  # remote-written series with staleness markers
SCRAPE = 15_000
MIN = 60_000

Samples = list[tuple[int, float]]


@dataclass
class Dataset:
    bulk: dict[Labels, Samples] = field(default_factory=dict)
    tail: dict[Labels, Samples] = field(default_factory=dict)

    def add(self, part: dict[Labels, Samples], labels: dict[str, str], t: int, v: float) -> None:
        part.setdefault(labels_of(labels), []).append((t, v))


def _scrapes(start: int, end: int, interval: int, rng: random.Random, jitter: int) -> list[int]:
    out = []
    t = start
    while t < end:
        out.append(min(end - 1, t + (rng.randint(0, jitter) if jitter else 0)))
        t += interval
    return out


def generate(seed: int = 5) -> Dataset:
    """The parity data set, the same for a given seed."""
    rng = random.Random(seed)
    ds = Dataset()
    bulk = ds.bulk
    jobs, instances = ("api", "db"), ("i0", "i1", "i2")
    for job in jobs:
        for inst in instances:
            jitter = 300 if inst == "i2" else 0
            for method in ("GET", "POST"):
                value = float(rng.randint(0, 500))
                for t in _scrapes(T0, BULK_END, SCRAPE, rng, jitter):
                    if rng.random() < 0.006:
                        value = float(rng.randint(0, 3))
                    else:
                        value += rng.randint(0, 20)
                    labels = {"__name__": "http_requests_total", "job": job, "instance": inst}
                    ds.add(bulk, labels | {"method": method}, t, value)
            base = rng.uniform(30, 70)
            mem = rng.uniform(2e8, 9e8)
            for k, t in enumerate(_scrapes(T0, BULK_END, SCRAPE, rng, jitter)):
                temp = base + 10 * math.sin(k / 40) + rng.uniform(-1, 1)
                ds.add(bulk, {"__name__": "cpu_temp", "job": job, "instance": inst}, t, temp)
                mem += rng.uniform(-2e6, 2.2e6)
                ds.add(bulk, {"__name__": "memory_bytes", "job": job, "instance": inst}, t, mem)
                up = 0.0 if rng.random() < 0.05 else 1.0
                ds.add(bulk, {"__name__": "up", "job": job, "instance": inst}, t, up)
            info = {"__name__": "node_info", "job": job, "instance": inst, "version": f"v{inst}"}
            for t in range(T0, BULK_END, 60_000):
                ds.add(bulk, info, t, 1.0)
    _histograms(ds, rng)
    _odd_series(ds, rng)
    _stale_tail(ds)
    return ds


def _histograms(ds: Dataset, rng: random.Random) -> None:
    bounds = ("0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf")
    for job in ("api", "db"):
        counts = [0.0] * len(bounds)
        total = 0.0
        for t in range(T0, BULK_END, SCRAPE):
            if rng.random() < 0.004:
                counts = [0.0] * len(bounds)
                total = 0.0
            for _ in range(rng.randint(0, 30)):
                latency = rng.expovariate(3.0 if job == "api" else 1.2)
                total += latency
                for i, b in enumerate(bounds):
                    if latency <= float(b):
                        counts[i] += 1
            name = "request_duration_seconds"
            for b, c in zip(bounds, counts, strict=True):
                ds.add(ds.bulk, {"__name__": f"{name}_bucket", "job": job, "le": b}, t, c)
            ds.add(ds.bulk, {"__name__": f"{name}_sum", "job": job}, t, total)
            ds.add(ds.bulk, {"__name__": f"{name}_count", "job": job}, t, counts[-1])


def _odd_series(ds: Dataset, rng: random.Random) -> None:
    bulk = ds.bulk
    stops = {"1": 30, "2": 45, "3": 60, "4": 90}
    for sid, minutes in stops.items():
        end = T0 + minutes * 60_000 + 7_000
        for k, t in enumerate(range(T0, end, SCRAPE)):
            bulk_labels = {"__name__": "stopping_gauge", "id": sid}
            ds.add(bulk, bulk_labels, t, float(k % 17) + int(sid))
    value = 0.0
    for t in _scrapes(T0, BULK_END, 60_000, rng, 5_000):
        value += rng.randint(1, 50)
        ds.add(bulk, {"__name__": "sparse_counter", "id": "a"}, t, value)
    value = 100.0
    for t in range(T0 + 20_000, BULK_END, 30_000):
        if T0 + 40 * 60_000 <= t < T0 + 60 * 60_000:
            continue  # a 20-minute gap
        value += rng.randint(0, 9)
        ds.add(bulk, {"__name__": "sparse_counter", "id": "gap"}, t, value)
    weird: dict[str, Callable[[int], float]] = {
        "nan": lambda k: math.nan if k % 7 == 3 else float(k % 11),
        "inf": lambda k: math.inf if k % 13 == 5 else (-math.inf if k % 13 == 9 else float(k)),
        "neg": lambda k: -float((k * 37) % 101) - 0.5,
        "zero": lambda k: 0.0,
        "const": lambda k: 3.3,
        "big": lambda k: 1e15 + k * 1e3,
    }
    for kind, fn in weird.items():
        for k, t in enumerate(range(T0, BULK_END, SCRAPE)):
            ds.add(bulk, {"__name__": "weird_gauge", "kind": kind}, t, fn(k))
    dates = {
        "leap": 951_782_400.0,  # 2000-02-29
        "eoy": 1_704_067_199.0,  # 2023-12-31T23:59:59
        "epoch": 0.0,
        "march": 1_709_251_200.5,  # 2024-03-01
        "before": -86_400.0,  # 1969-12-31
    }
    for case, seconds in dates.items():
        for t in range(T0, BULK_END, 60_000):
            ds.add(bulk, {"__name__": "date_gauge", "case": case}, t, seconds)
    for job in ("api", "db"):
        last = T0 / 1000 - rng.randint(0, 86_400)
        for t in range(T0, BULK_END, 60_000):
            if rng.random() < 0.1:
                last = t / 1000 - rng.randint(0, 120)
            ds.add(bulk, {"__name__": "batch_last_success", "job": job}, t, last)
    sources = (("foo-bar-1", "x"), ("baz-qux-22", "y"), ("nodash", ""))
    for src, other in sources:
        for t in range(T0, BULK_END, 60_000):
            ds.add(bulk, {"__name__": "label_test", "src": src, "other": other}, t, len(src))
    for name, v in (("dup_a", 1.0), ("dup_b", 2.0)):
        for t in range(T0, BULK_END, SCRAPE):
            ds.add(bulk, {"__name__": name, "job": "x"}, t, v + (t - T0) / 60_000)


def _stale_tail(ds: Dataset) -> None:
    """flappy{id="1"} goes stale for ten minutes, id 2 for good, id 3 never."""
    tail = ds.tail
    for k, t in enumerate(range(BULK_END, STALE_END, SCRAPE)):
        minute = (t - BULK_END) / 60_000
        if minute < 10 or minute >= 20:
            ds.add(tail, {"__name__": "flappy", "id": "1"}, t, float(k))
        elif minute == 10:
            ds.add(tail, {"__name__": "flappy", "id": "1"}, t, STALE_NAN)
        if minute < 5:
            ds.add(tail, {"__name__": "flappy", "id": "2"}, t, float(k * 2))
        elif minute == 5:
            ds.add(tail, {"__name__": "flappy", "id": "2"}, t, STALE_NAN)
        ds.add(tail, {"__name__": "flappy", "id": "3"}, t, float(k * 3))


def memory_storage(ds: Dataset) -> MemoryStorage:
    storage = MemoryStorage()
    for part in (ds.bulk, ds.tail):
        for labels, samples in part.items():
            storage.add_many(labels, samples)
    return storage


# --- the query corpus -----------------------------------------------------------------------

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
# Ranges overlapping RANGES on the same step grids (same step, same start phase): after
# RANGES, our range-query results cache answers these partly from the extents it kept and
# computes the rest, then stitches the two.
SLID_RANGES = [
    (T0 + 20 * MIN, STALE_END + 10 * MIN, MIN),
    (T0 + 35 * MIN, T0 + 45 * MIN, 15_000),
    (BULK_END - 5 * MIN - 70_000, STALE_END - 35_000, 7_000),
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


def instant_params() -> list[dict[str, str]]:
    return [{"time": seconds(t)} for t in INSTANTS]


def range_params(ranges: list[tuple[int, int, int]]) -> list[dict[str, str]]:
    return [{"start": seconds(a), "end": seconds(b), "step": seconds(s)} for a, b, s in ranges]


# --- OpenMetrics and remote write --------------------------------------------------------------


def _om_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _om_labels(labels: Labels) -> str:
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
        if k != "__name__"
    )
    return "{" + inner + "}" if inner else ""


def write_openmetrics(series: dict[Labels, Samples], path: Path) -> None:
    by_name: dict[str, list[Labels]] = {}
    for labels in series:
        by_name.setdefault(dict(labels)["__name__"], []).append(labels)
    with path.open("w") as out:
        for name in sorted(by_name):
            out.write(f"# TYPE {name} unknown\n")
            for labels in sorted(by_name[name]):
                text = name + _om_labels(labels)
                for t, v in series[labels]:
                    out.write(f"{text} {_om_value(v)} {t // 1000}.{t % 1000:03d}\n")
        out.write("# EOF\n")


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def remote_write_body(series: dict[Labels, Samples]) -> bytes:
    """A snappy-compressed prometheus.WriteRequest, encoded by hand (three message types)."""
    request = bytearray()
    for labels, samples in series.items():
        ts = bytearray()
        for name, value in labels:
            ts += _field(1, _field(1, name.encode()) + _field(2, value.encode()))
        for t, v in samples:
            sample = _varint(1 << 3 | 1) + struct.pack("<d", v) + _varint(2 << 3) + _varint(t)
            ts += _field(2, sample)
        request += _field(1, bytes(ts))
    return bytes(cramjam.snappy.compress_raw(bytes(request)))


# --- the Prometheus server ---------------------------------------------------------------------


class PrometheusMissing(RuntimeError):
    pass


def prometheus_binaries() -> tuple[str, str]:
    """(prometheus, promtool) from PATH, or PrometheusMissing saying how to install them."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if binary is None or promtool is None:
        raise PrometheusMissing(
            "these tests need Debian's `prometheus` package (prometheus and promtool "
            "on PATH): apt-get install -y prometheus"
        )
    return binary, promtool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def run_prometheus(
    workdir: Path, config: str, data: Path | None = None, timeout: float = 60.0
) -> Iterator[str]:
    """Prometheus on loopback with this config (YAML text) and data dir (default: a fresh
    one under workdir); yields its base URL once ready, and stops it afterwards."""
    binary, _ = prometheus_binaries()
    data = workdir / "data" if data is None else data
    config_file = workdir / "prometheus.yml"
    config_file.write_text(config)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={data}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(url, proc, timeout, log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


@contextlib.contextmanager
def prometheus_server(ds: Dataset, workdir: Path, timeout: float = 60.0) -> Iterator[str]:
    """Backfill ds into a fresh data dir, start Prometheus on it, remote-write the tail with
    its staleness markers, yield its base URL."""
    _, promtool = prometheus_binaries()
    data = workdir / "data"
    om = workdir / "bulk.om"
    write_openmetrics(ds.bulk, om)
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    config = "global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n"
    with run_prometheus(workdir, config, data, timeout) as url:
        response = httpx.post(
            f"{url}/api/v1/write",
            content=remote_write_body(ds.tail),
            headers=dict(remote_write.REQUEST_HEADERS),
            timeout=timeout,
        )
        if response.status_code >= 300:
            raise RuntimeError(f"remote write failed: {response.status_code} {response.text}")
        yield url


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("prometheus did not become ready in time")


# --- our server --------------------------------------------------------------------------------

BATCH_WINDOW = 10 * MIN  # one remote-write request: every series' samples in 10 minutes


def remote_write_batches(
    ds: Dataset, window_ms: int = BATCH_WINDOW
) -> Iterator[list[remote_write.RemoteSeries]]:
    """The whole data set as a sender would stream it: one request per time window, each
    holding every series' samples in that window, so each series arrives in time order."""
    series = {**ds.bulk, **ds.tail}
    assert len(series) == len(ds.bulk) + len(ds.tail), "bulk and tail share a series"
    columns: dict[Labels, tuple[list[int], list[float]]] = {}
    for labels, samples in series.items():
        ts = [t for t, _ in samples]
        assert ts == sorted(set(ts)), f"{labels}: samples out of order"
        columns[labels] = (ts, [v for _, v in samples])
    lo = min(ts[0] for ts, _ in columns.values())
    hi = max(ts[-1] for ts, _ in columns.values())
    for start in range(lo - lo % window_ms, hi + 1, window_ms):
        batch: list[remote_write.RemoteSeries] = []
        for labels, (ts, vs) in columns.items():
            i = bisect.bisect_left(ts, start)
            j = bisect.bisect_left(ts, start + window_ms)
            if i < j:
                batch.append((labels, ts[i:j], vs[i:j]))
        if batch:
            yield batch


def load_over_remote_write(client: httpx.Client, url: str, ds: Dataset) -> int:
    """POST the data set to url's /api/v1/write; the number of samples sent."""
    sent = 0
    for batch in remote_write_batches(ds):
        reply = client.post(
            f"{url}{remote_write.PATH}",
            content=remote_write.encode_write_request(batch),
            headers=dict(remote_write.REQUEST_HEADERS),
        )
        if reply.status_code != remote_write.SUCCESS_STATUS:
            raise RuntimeError(f"remote write to {url}: {reply.status_code} {reply.text}")
        sent += sum(len(ts) for _, ts, _ in batch)
    return sent


LAYOUTS = ("head", "blocks")


@contextlib.contextmanager
def our_server(ds: Dataset, workdir: Path, layout: str = "head") -> Iterator[str]:
    """Our real server on loopback, the data set remote-written into it; yields its URL.

    layout "head": everything stays in the head (a block range longer than the data, so no
    compaction happens even if the maintenance loop runs). "blocks": 30-minute blocks and a
    maintenance round after loading, so the bulk is read from four persisted blocks (beside
    their downsampled copies) and the stale tail from the head. Retention is a century: the
    data is from 2023 and the maintenance loop measures retention against the wall clock.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    century = 36_500.0
    settings = MonitoringSettings.from_env(
        {},
        data=workdir / "ours",
        port=0,
        block_duration_ms=30 * MIN if layout == "blocks" else 24 * HOUR_MS,
        retention_raw_days=century,
        retention_1m_days=century,
        retention_1h_days=century,
    )
    app = create_app(settings)
    server = ServerThread(app).start()
    try:
        with httpx.Client(timeout=60) as client:
            sent = load_over_remote_write(client, server.url, ds)
        expected = sum(len(s) for s in (*ds.bulk.values(), *ds.tail.values()))
        assert sent == expected, (sent, expected)
        if layout == "blocks":
            # what the maintenance loop does every minute: compaction, then downsampled
            # copies of each block (which serve no query here: raw blocks cover the data).
            tsdb = app.state.service.tsdb
            written = tsdb.maintain()
            assert {m.resolution_ms for m in written} == {0, MIN, HOUR_MS}
            raw = [m for m in written if m.resolution_ms == 0]
            spans = [(m.min_time - T0, m.max_time + 1 - T0) for m in raw]
            assert spans == [(k * 30 * MIN, (k + 1) * 30 * MIN) for k in range(4)], spans
            assert tsdb.head.mint == BULK_END, "the stale tail stays in the head"
        yield server.url
    finally:
        server.stop()


# --- running and comparing queries -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A query's answer: the API's `data`, or an error type and message."""

    data: dict[str, Any] | None = None
    error_type: str = ""
    error: str = ""


def ask_api(client: httpx.Client, url: str, params: dict[str, str]) -> Outcome:
    """Ask Prometheus's HTTP API at url (Prometheus's or ours): a range query when params
    has a step, else an instant query. An answer that is not the API's JSON is an error
    outcome of its own type (`HTTP <status>`), which never matches Prometheus's."""
    path = "/api/v1/query_range" if "step" in params else "/api/v1/query"
    reply = client.post(url + path, data=params)
    try:
        body = reply.json()
        if body["status"] == "success":
            return Outcome(data=body["data"])
        return Outcome(error_type=body["errorType"], error=body["error"])
    except (ValueError, KeyError, TypeError):
        return Outcome(error_type=f"HTTP {reply.status_code}", error=reply.text[:2000])


def ask_engine(engine: Engine, query: str, params: dict[str, str]) -> Outcome:
    try:
        if "step" in params:
            start, end, step = (_ms(params[k]) for k in ("start", "end", "step"))
            data = engine.range(query, start, end, step).to_json()
        else:
            data = engine.instant(query, _ms(params["time"])).to_json()
    except MonitoringError as exc:
        return Outcome(error_type=exc.error_type, error=str(exc))
    return Outcome(data=data)


def _ms(seconds: str) -> int:
    return round(float(seconds) * 1000)


def seconds(t_ms: int) -> str:
    return f"{t_ms // 1000}.{t_ms % 1000:03d}"


def _close(expected: str, actual: str, rel: float = 1e-5) -> bool:
    if expected == actual:
        return True
    a, b = float(expected), float(actual)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b))


def _key(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(metric.items()))


def compare(expected: Outcome, actual: Outcome, ordered: bool = False) -> list[str]:
    """Differences between Prometheus's answer and ours (empty when they agree)."""
    if expected.data is None or actual.data is None:
        if expected.data is not None or actual.data is not None:
            return [f"prometheus: {expected}, ours: {actual}"]
        errors = []
        if expected.error_type != actual.error_type:
            errors.append(f"error type {expected.error_type!r} != ours {actual.error_type!r}")
        if expected.error_type == "execution" and expected.error != actual.error:
            errors.append(f"error {expected.error!r} != ours {actual.error!r}")
        return errors
    exp, act = expected.data, actual.data
    if exp["resultType"] != act["resultType"]:
        return [f"result type {exp['resultType']} != ours {act['resultType']}"]
    kind = exp["resultType"]
    if kind in ("scalar", "string"):
        return _compare_points([exp["result"]], [act["result"]], "value", kind == "string")
    problems: list[str] = []
    field = "value" if kind == "vector" else "values"
    want = {_key(r["metric"]): r[field] for r in exp["result"]}
    got = {_key(r["metric"]): r[field] for r in act["result"]}
    if len(want) != len(exp["result"]) or len(got) != len(act["result"]):
        problems.append("duplicate label sets in a result")
    for key in sorted(set(want) - set(got)):
        problems.append(f"missing {dict(key)}")
    for key in sorted(set(got) - set(want)):
        problems.append(f"unexpected {dict(key)}")
    for key in sorted(set(want) & set(got)):
        points_w = [want[key]] if kind == "vector" else want[key]
        points_g = [got[key]] if kind == "vector" else got[key]
        problems += _compare_points(points_w, points_g, str(dict(key)), False)
    if ordered and kind == "vector":
        values_w = [r["value"][1] for r in exp["result"]]
        values_g = [r["value"][1] for r in act["result"]]
        if len(values_w) == len(values_g) and not all(
            _close(a, b) for a, b in zip(values_w, values_g, strict=True)
        ):
            problems.append(f"order: {values_w} != ours {values_g}")
    return problems


def _compare_points(want: list[Any], got: list[Any], where: str, exact: bool) -> list[str]:
    if len(want) != len(got):
        times_w = [p[0] for p in want]
        times_g = [p[0] for p in got]
        missing = sorted(set(times_w) - set(times_g))[:5]
        extra = sorted(set(times_g) - set(times_w))[:5]
        return [
            f"{where}: {len(want)} points != ours {len(got)} (missing {missing}, extra {extra})"
        ]
    problems = []
    for (tw, vw), (tg, vg) in zip(want, got, strict=True):
        if float(tw) != float(tg):
            problems.append(f"{where}: time {tw} != ours {tg}")
        elif (vw != vg) if exact else not _close(vw, vg):
            problems.append(f"{where} @ {tw}: {vw} != ours {vg}")
        if len(problems) >= 5:
            break
    return problems
