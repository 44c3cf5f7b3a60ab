"""Helpers for the PromQL parity tests: our engine against a real Prometheus on the same data.

The data set is deterministic: counters with resets, gauges, classic histograms, series that
stop, irregular and sparse scrapes, NaN/Inf values. The bulk goes to Prometheus through
`promtool tsdb create-blocks-from openmetrics`; staleness markers cannot be written in the
text format, so the series that carry them are sent afterwards through the remote-write
receiver, into the head block (after the backfilled block's end, where it accepts samples).
The same samples go into a MemoryStorage for our engine; `compare` then holds the two API
answers side by side.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cramjam
import httpx

from scalelab.monitoring.errors import MonitoringError
from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import STALE_NAN, Labels, labels_of
from scalelab.monitoring.promql import Engine

# 2023-11-14T22:00:00Z, a multiple of 2h so the backfill is one block.
T0 = 1_699_999_200_000
BULK_END = T0 + 2 * 3600_000  # the backfilled data is [T0, BULK_END)
STALE_END = BULK_END + 30 * 60_000  # remote-written series with staleness markers
SCRAPE = 15_000

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
    weird = {
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
        for k, v in labels:
            ts += _field(1, _field(1, k.encode()) + _field(2, v.encode()))
        for t, v in samples:
            sample = _varint(1 << 3 | 1) + struct.pack("<d", v) + _varint(2 << 3) + _varint(t)
            ts += _field(2, sample)
        request += _field(1, bytes(ts))
    return bytes(cramjam.snappy.compress_raw(bytes(request)))


# --- the Prometheus server ---------------------------------------------------------------------


class PrometheusMissing(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def prometheus_server(ds: Dataset, workdir: Path, timeout: float = 60.0) -> Iterator[str]:
    """Backfill ds into a fresh data dir, start Prometheus on it, yield its base URL."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if binary is None or promtool is None:
        raise PrometheusMissing(
            "the parity tests need Debian's `prometheus` package (prometheus and promtool "
            "on PATH): apt-get install -y prometheus"
        )
    data = workdir / "data"
    om = workdir / "bulk.om"
    write_openmetrics(ds.bulk, om)
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1m\n  evaluation_interval: 1m\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
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
        _wait_ready(url, proc, timeout)
        response = httpx.post(
            f"{url}/api/v1/write",
            content=remote_write_body(ds.tail),
            headers={
                "Content-Encoding": "snappy",
                "Content-Type": "application/x-protobuf",
                "X-Prometheus-Remote-Write-Version": "0.1.0",
            },
            timeout=timeout,
        )
        if response.status_code >= 300:
            raise RuntimeError(f"remote write failed: {response.status_code} {response.text}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("prometheus did not become ready in time")


# --- running and comparing queries -------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A query's answer: the API's `data`, or an error type and message."""

    data: dict[str, Any] | None = None
    error_type: str = ""
    error: str = ""


def ask_prometheus(client: httpx.Client, url: str, params: dict[str, str]) -> Outcome:
    path = "/api/v1/query_range" if "step" in params else "/api/v1/query"
    body = client.post(url + path, data=params).json()
    if body["status"] == "success":
        return Outcome(data=body["data"])
    return Outcome(error_type=body["errorType"], error=body["error"])


def ask_engine(engine: Engine, query: str, params: dict[str, str]) -> Outcome:
    try:
        if "step" in params:
            value = engine.range(
                query,
                _ms(params["start"]),
                _ms(params["end"]),
                _ms(params["step"]),
            )
        else:
            value = engine.instant(query, _ms(params["time"]))
    except MonitoringError as exc:
        return Outcome(error_type=exc.error_type, error=str(exc))
    return Outcome(data=value.to_json())


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
        problems = []
        if expected.error_type != actual.error_type:
            problems.append(f"error type {expected.error_type!r} != ours {actual.error_type!r}")
        if expected.error_type == "execution" and expected.error != actual.error:
            problems.append(f"error {expected.error!r} != ours {actual.error!r}")
        return problems
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
