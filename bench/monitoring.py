"""Monitoring bench: our Prometheus-compatible TSDB next to Prometheus, on the same data.

    python bench/monitoring.py [--quick] [--phases storage,remote_write,scrape]
    scalelab bench monitoring [--quick]

The peer is Debian's Prometheus 2.42 (`/usr/bin/prometheus`, `promtool`). Servers run one at a
time on 127.0.0.1 with a fresh data dir under one temp dir, and are stopped before the next
starts (the machine has two cores, and the load processes use them too). The data
(bench/_monitoring_load.py) is 100 series per host, node_exporter plus an HTTP service's own
metrics, at 15 s spacing; both servers get exactly the same samples.

Phases:

- storage: the same 2 hours of data (H hosts x 100 series x 480 samples) persisted by both.
  Prometheus: `promtool tsdb create-blocks-from openmetrics` (its block writer, the same one
  head compaction uses) into a dir. Ours: appended in this process through
  `scalelab.monitoring.tsdb.TSDB` and persisted by `TSDB.maintain()` (head compaction: a
  sentinel sample 4 h later makes the first 2 h block due). Bytes per sample of the block's
  chunk files and of the whole block (chunks + index + meta), and ours with the 1-minute
  and 1-hour downsampled copies maintain() also writes, for two timestamp shapes:
  `aligned` (exact 15 s after a per-host phase: what Prometheus writes for its own scrapes,
  which it aligns within 2 ms) and `jitter_2ms` (normal jitter, sigma 2 ms, as senders that
  do not align timestamps produce).
- remote_write: H hosts x R scrapes (ending now) encoded once as remote-write 1.0 bodies of
  2,000 samples (every sample its own TimeSeries, as Prometheus's queue manager sends; 2,000
  is its max_samples_per_send default since 2.44, prometheus/prometheus#12203), the
  series hashed over 4 shards, each shard one connection with one request in flight; posted
  to our server and to `prometheus --web.enable-remote-write-receiver`. Samples/s over the
  wall clock, the server's CPU seconds from /proc (its whole process tree), samples per server
  CPU-second ("per core"), request latency p50/p99. Then a check that both hold every sample
  (count_over_time over the whole span).
- queries, on the data just written (H x 100 series: 10,000 in the full run): instant
  queries at the newest sample (selectors, rate/sum, topk, count over every series,
  max_over_time over 1 h), and 1-hour range
  queries at 15 s steps, each run N times (up to a time budget) after one unmeasured run;
  latency from sending the request to having read the whole reply on a keep-alive
  connection, p50/p99. Range queries twice: `cold`, where every repetition moves the range by
  a millisecond (another step phase, so our results cache cannot answer it), and `warm`, the
  identical request again (a dashboard refreshing). The first run's results of both servers
  are compared (series and values).
- scrape: T targets (one process serving a fixed text exposition of P x 100 series on T
  loopback ports) scraped every second by each server in turn; after a warm-up, a window of
  W seconds: samples ingested (scrape_samples_scraped summed over the window plus the 5
  synthetic series per scrape, asked of each server in PromQL; Prometheus's own
  prometheus_tsdb_head_samples_appended_total as a cross-check) per server CPU-second.

Goals (from the issue): ingestion at least half of Prometheus's samples per CPU-second, and
bytes per sample at or below Prometheus's. One JSON document goes to stdout, progress to
stderr; every process started here is stopped (its process group) and the temp dir removed,
also on error, Ctrl-C or SIGTERM. --quick runs in about a minute; the full run in about
eight minutes on the 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _monitoring_load import (  # noqa: E402
    INTERVAL_MS,
    Dataset,
    RemoteWriteEncoder,
    instance_name,
    make_dataset,
    percentiles,
    shard_batches,
    write_bodies,
    write_openmetrics,
)
from _procs import launch_scalelab as launch_scalelab_serve  # noqa: E402
from _procs import log_tail, package_version, ratio, readline, run_main, tool_version  # noqa: E402
from _s3 import free_port, spawn, stop_group, tree_cpu_seconds, tree_pids, tree_rss  # noqa: E402

HOST = "127.0.0.1"
SERVERS = ("scalelab", "prometheus")
PHASES = ("storage", "remote_write", "scrape")
LOADER = Path(__file__).resolve().parent / "_monitoring_load.py"
HOUR_MS = 3_600_000
BLOCK_MS = 2 * HOUR_MS
SERIES_PER_HOST = 100
SYNTHETIC_PER_SCRAPE = 5  # up, scrape_duration_seconds, scrape_samples_scraped, ...


def log(msg: str) -> None:
    print(f"[bench monitoring {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    phases: tuple[str, ...]
    storage_hosts: int
    storage_jitter: dict[str, float]  # variant -> jitter sigma (ms)
    rw_hosts: int
    rw_scrapes: int
    rw_jitter_ms: float
    shards: int
    max_samples_per_send: int
    shard_window: int
    query_reps: int
    query_budget_s: float
    scrape_targets: int
    scrape_pods: int
    scrape_interval_s: int
    scrape_warmup_s: float
    scrape_window_s: int
    phase_timeout: float

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
        unknown = set(phases) - set(PHASES)
        if unknown:
            raise SystemExit(f"unknown phases: {sorted(unknown)} (known: {PHASES})")
        hosts = args.hosts or (10 if quick else 100)
        return Plan(
            quick=quick,
            phases=phases,
            storage_hosts=hosts,
            storage_jitter={"aligned": 0.0, "jitter_2ms": 2.0},
            rw_hosts=hosts,
            rw_scrapes=260 if quick else 360,  # 65 min / 90 min: a 1 h range plus rate's 5 m
            rw_jitter_ms=2.0,
            shards=4,
            max_samples_per_send=2000,
            shard_window=8,
            query_reps=5 if quick else 20,
            query_budget_s=2.0 if quick else 12.0,
            scrape_targets=10 if quick else 20,
            scrape_pods=10,
            scrape_interval_s=1,
            scrape_warmup_s=4.0 if quick else 10.0,
            scrape_window_s=8 if quick else 30,
            phase_timeout=120.0 if quick else 600.0,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "phases": list(self.phases),
            "storage": {
                "series": self.storage_hosts * SERIES_PER_HOST,
                "samples_per_series": BLOCK_MS // INTERVAL_MS,
                "interval_s": INTERVAL_MS // 1000,
                "timestamp_variants": {
                    k: f"jitter sigma {v} ms" for k, v in self.storage_jitter.items()
                },
            },
            "remote_write": {
                "series": self.rw_hosts * SERIES_PER_HOST,
                "scrapes_per_series": self.rw_scrapes,
                "samples": self.rw_hosts * SERIES_PER_HOST * self.rw_scrapes,
                "span_minutes": self.rw_scrapes * INTERVAL_MS / 60_000,
                "timestamp_jitter_sigma_ms": self.rw_jitter_ms,
                "shards": self.shards,
                "max_samples_per_send": self.max_samples_per_send,
                "max_samples_per_send_note": "Prometheus's default since 2.44; 2.42's was 500",
                "in_flight_per_shard": 1,
                "shard_window_bodies": self.shard_window,
                "snappy": True,
            },
            "queries": {"reps_max": self.query_reps, "budget_s_per_query": self.query_budget_s},
            "scrape": {
                "targets": self.scrape_targets,
                "series_per_target": self.scrape_pods * SERIES_PER_HOST,
                "interval_s": self.scrape_interval_s,
                "offered_samples_per_s": self.scrape_targets
                * (self.scrape_pods * SERIES_PER_HOST + SYNTHETIC_PER_SCRAPE)
                / self.scrape_interval_s,
                "warmup_s": self.scrape_warmup_s,
                "window_s": self.scrape_window_s,
            },
        }


# -- small helpers -------------------------------------------------------------------------------


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def machine_busy(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    """Cores busy on the whole machine between two machine_cpu() readings (everyone's work,
    this bench's included): other load on a shared machine shows here."""
    if a is None or b is None or b[1] <= a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1), 2)


def fdatasync_probe(folder: Path, writes: int = 30) -> dict[str, Any]:
    """Latency of a 4 KiB append + fdatasync in the temp dir: what a WAL that syncs before
    acknowledging pays per group commit on this disk."""
    path = folder / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    seconds = []
    try:
        block = b"x" * 4096
        for _ in range(writes):
            start = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            seconds.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return percentiles(seconds)


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def file_bytes(path: Path) -> int:
    """Apparent size (st_size) of every file under path."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def block_sizes(block: Path) -> dict[str, int]:
    chunks = file_bytes(block / "chunks")
    index = file_bytes(block / "index")
    total = file_bytes(block)
    return {"chunks_bytes": chunks, "index_bytes": index, "block_bytes": total}


def per_sample(sizes: dict[str, int], samples: int) -> dict[str, Any]:
    return {
        **sizes,
        "samples": samples,
        "chunk_bytes_per_sample": round(sizes["chunks_bytes"] / samples, 4) if samples else None,
        "block_bytes_per_sample": round(sizes["block_bytes"] / samples, 4) if samples else None,
    }


# -- HTTP ----------------------------------------------------------------------------------------


class Api:
    """One keep-alive HTTP/1.1 connection to a server's API."""

    def __init__(self, port: int, timeout: float = 300.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes, float]:
        """(status, body, seconds from sending to having read the whole body)."""
        target = f"{path}?{urlencode(params)}" if params else path
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                start = time.perf_counter()
                self.conn.request("GET", target)
                reply = self.conn.getresponse()
                body = reply.read()
                return reply.status, body, time.perf_counter() - start
            except (http.client.HTTPException, ConnectionError):
                self.close()  # a server may close an idle keep-alive connection: once more
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def query(self, params: dict[str, str], path: str = "/api/v1/query") -> tuple[Any, float]:
        status, body, seconds = self.get(path, params)
        if status != 200:
            raise RuntimeError(f"{path} {params}: HTTP {status}: {body[:300]!r}")
        data = json.loads(body)
        if data.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body[:300]!r}")
        return data["data"], seconds

    def scalar(self, query: str, at_s: float) -> float | None:
        data, _ = self.query({"query": query, "time": f"{at_s:.3f}"})
        result = data["result"]
        if not result:
            return None
        return float(result[0]["value"][1])

    def metric(self, name: str) -> float | None:
        """Sum of a metric's samples on /metrics (all label sets)."""
        status, body, _ = self.get("/metrics")
        if status != 200:
            return None
        total, found = 0.0, False
        for line in body.decode(errors="replace").splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
                found = True
        return total if found else None


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    log_path: Path
    info: dict[str, Any]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return tree_rss(tree_pids(self.proc.pid))


Launch = tuple[subprocess.Popen[bytes], Callable[[float], int], dict[str, Any]]


def launch_scalelab(
    sdir: Path, data: Path, config: Path, log: IO[bytes], env: dict[str, str]
) -> Launch:
    proc, url, info = launch_scalelab_serve(
        "monitoring", sdir, data, log, {"SCALELAB_MONITORING_SCRAPE_CONFIG": str(config), **env}
    )

    def port(timeout: float) -> int:
        return int(url(timeout).rsplit(":", 1)[1])

    return proc, port, {**info, "env": dict(env)}


def launch_prometheus(
    sdir: Path, data: Path, config: Path, log: IO[bytes], env: dict[str, str]
) -> Launch:
    port = free_port()
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={HOST}:{port}",
        "--web.enable-remote-write-receiver",
        "--storage.tsdb.retention.time=3650d",
        "--log.level=info",
    ]
    proc = spawn(cmd, env={**os.environ, **env}, log=log, cwd=sdir)
    info = {
        "command": "prometheus " + " ".join(cmd[1:]),
        "version": tool_version([binary, "--version"]),
    }
    return proc, (lambda _timeout: port), info


LAUNCHERS = {"scalelab": launch_scalelab, "prometheus": launch_prometheus}


@contextlib.contextmanager
def running(
    name: str, root: Path, tag: str, config_yaml: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start a server on a fresh dir; wait until its query API answers; stop its process group
    and delete the dir afterwards, whatever happens."""
    sdir = root / "servers" / f"{name}-{tag}"
    data = sdir / "data"
    data.mkdir(parents=True)
    config = sdir / "config.yml"
    config.write_text(config_yaml)
    log_path = sdir / "server.log"
    try:
        with log_path.open("wb") as logf:
            start = time.perf_counter()
            proc, port_of, info = LAUNCHERS[name](sdir, data, config, logf, env or {})
            try:
                try:
                    port = port_of(60)
                    wait_ready(port, proc, time.monotonic() + 60)
                except Exception as exc:
                    logf.flush()
                    raise RuntimeError(f"{exc}; server log tail:\n{log_tail(log_path)}") from exc
                info["startup_seconds"] = round(time.perf_counter() - start, 3)
                info["port"] = port
                yield Server(name, proc, port, data, log_path, info)
            finally:
                info["data_dir_bytes_at_stop"] = file_bytes(data)
                info["exit_code"] = stop_group(proc)
    finally:
        shutil.rmtree(sdir, ignore_errors=True)


def wait_ready(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering")
        api = Api(port, timeout=5)
        try:
            status, body, _ = api.get("/api/v1/query", {"query": "1"})
            if status == 200:
                return
            last = f"HTTP {status} {body[:100]!r}"
        except OSError as exc:
            last = str(exc)
        finally:
            api.close()
        time.sleep(0.2)
    raise RuntimeError(f"query API not answering after the start-up timeout ({last})")


def empty_config() -> str:
    return "global:\n  scrape_interval: 15s\nscrape_configs: []\n"


# -- phase: storage ------------------------------------------------------------------------------


def ours_block(ds: Dataset, directory: Path, block_start: int) -> dict[str, Any]:
    """Append the dataset through our TSDB (commits of whole scrape rounds, >= 10,000
    samples), make the first 2 h block due with a sentinel sample 4 h later, and persist it
    with TSDB.maintain()."""
    from scalelab.monitoring.tsdb import TSDB

    out: dict[str, Any] = {}
    db = TSDB(directory, block_range_ms=BLOCK_MS)
    try:
        labels = ds.labels
        host_of = ds.host_of.tolist()
        ts_rounds = ds.timestamps.T.tolist()  # round -> host -> t
        vs_rounds = ds.values.T.tolist()  # round -> series -> v
        per_commit = max(1, 10_000 // ds.num_series)  # scrape rounds per commit
        start = time.perf_counter()
        app = db.appender()
        for r in range(ds.samples_per_series):
            ts_row, vs_row = ts_rounds[r], vs_rounds[r]
            for s, lab in enumerate(labels):
                app.append(lab, ts_row[host_of[s]], vs_row[s])
            if (r + 1) % per_commit == 0 or r + 1 == ds.samples_per_series:
                app.commit()
                app = db.appender()
        append_s = time.perf_counter() - start
        out["append_seconds_in_process"] = round(append_s, 2)
        out["append_samples_per_s_in_process"] = round(ds.num_samples / append_s)
        app = db.appender()
        app.append((("__name__", "bench_sentinel"),), block_start + 2 * BLOCK_MS, 1.0)
        app.commit()
        start = time.perf_counter()
        try:
            db.maintain()
        except Exception as exc:  # reported; the raw block is written before downsampling
            out["maintain_error"] = f"{type(exc).__name__}: {exc}"
            log(f"storage: our TSDB.maintain() failed: {out['maintain_error']}")
        out["maintain_seconds"] = round(time.perf_counter() - start, 2)
        blocks = db.blocks
    finally:
        db.close()
    raw = [b for b in blocks if b.meta.resolution_ms == 0]
    if len(raw) != 1:
        raise RuntimeError(f"expected one raw block, found {len(raw)}")
    meta = raw[0].meta
    out["block"] = {
        "min_time": meta.min_time,
        "max_time": meta.max_time,
        "series": meta.num_series,
        "chunks": meta.num_chunks,
        **per_sample(block_sizes(raw[0].path), meta.num_samples),
    }
    out["downsampled_blocks"] = [
        {"resolution_ms": b.meta.resolution_ms, **block_sizes(b.path)}
        for b in blocks
        if b.meta.resolution_ms
    ]
    return out


def prometheus_blocks(out_dir: Path) -> dict[str, Any]:
    blocks = sorted(p.parent for p in out_dir.glob("*/meta.json"))
    if len(blocks) != 1:
        raise RuntimeError(f"promtool wrote {len(blocks)} blocks, expected one")
    meta = json.loads((blocks[0] / "meta.json").read_text())
    return {
        "min_time": meta["minTime"],
        "max_time": meta["maxTime"],
        "series": meta["stats"]["numSeries"],
        "chunks": meta["stats"]["numChunks"],
        **per_sample(block_sizes(blocks[0]), int(meta["stats"]["numSamples"])),
    }


def storage(plan: Plan, root: Path) -> dict[str, Any]:
    now = int(time.time() * 1000)
    block_start = now // BLOCK_MS * BLOCK_MS - 12 * BLOCK_MS  # a day ago, on a block boundary
    samples = BLOCK_MS // INTERVAL_MS
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    out: dict[str, Any] = {}
    for variant, jitter in plan.storage_jitter.items():
        work = root / f"storage-{variant}"
        work.mkdir()
        try:
            log(f"storage {variant}: {plan.storage_hosts * SERIES_PER_HOST} series x {samples}")
            ds = make_dataset(plan.storage_hosts, samples, block_start, jitter_ms=jitter)
            om = work / "data.om"
            start = time.perf_counter()
            om_bytes = write_openmetrics(ds, om)
            om_seconds = time.perf_counter() - start
            prom_out = work / "prometheus"
            # promtool runs in its own process while our TSDB is written here
            with (work / "promtool.log").open("wb") as plog:
                tool = subprocess.Popen(
                    [
                        promtool,
                        "tsdb",
                        "create-blocks-from",
                        "openmetrics",
                        "-q",
                        str(om),
                        str(prom_out),
                    ],
                    stdout=plog,
                    stderr=plog,
                    start_new_session=True,
                )
                try:
                    started = time.perf_counter()
                    ours = ours_block(ds, work / "scalelab", block_start)
                    tool.wait(
                        timeout=max(10.0, plan.phase_timeout - (time.perf_counter() - started))
                    )
                    tool_seconds = time.perf_counter() - started
                finally:
                    stop_group(tool, grace=5)
            if tool.returncode != 0:
                raise RuntimeError(
                    f"promtool exited {tool.returncode}: {log_tail(work / 'promtool.log')}"
                )
            prom = prometheus_blocks(prom_out)
            expected = ds.num_samples
            for name, res in (("scalelab", ours["block"]), ("prometheus", prom)):
                if res["samples"] != expected:
                    raise RuntimeError(
                        f"{name} block holds {res['samples']} samples, not {expected}"
                    )
            out[variant] = {
                "series": ds.num_series,
                "samples": expected,
                "jitter_sigma_ms": jitter,
                "openmetrics_input": {"bytes": om_bytes, "write_seconds": round(om_seconds, 2)},
                "scalelab": ours,
                "prometheus": {
                    "block": prom,
                    "promtool_seconds_concurrent": round(tool_seconds, 2),
                },
                "ratio_chunk_bytes_per_sample": ratio(
                    ours["block"]["chunk_bytes_per_sample"], prom["chunk_bytes_per_sample"]
                ),
                "ratio_block_bytes_per_sample": ratio(
                    ours["block"]["block_bytes_per_sample"], prom["block_bytes_per_sample"]
                ),
            }
            if ours["downsampled_blocks"]:  # what we keep on disk for the same 2 h
                total = ours["block"]["block_bytes"] + sum(
                    b["block_bytes"] for b in ours["downsampled_blocks"]
                )
                per = round(total / expected, 4)
                ours["all_blocks_bytes"] = total
                ours["all_blocks_bytes_per_sample"] = per
                out[variant]["ratio_all_blocks_bytes_per_sample"] = ratio(
                    per, prom["block_bytes_per_sample"]
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


# -- phase: remote write and queries -------------------------------------------------------------


@dataclass(frozen=True)
class RemoteWriteData:
    dataset: Dataset
    files: list[Path]
    info: dict[str, Any]
    newest_ms: int
    oldest_ms: int


def prepare_remote_write(plan: Plan, root: Path) -> RemoteWriteData:
    now = int(time.time()) * 1000
    start_ms = now - plan.rw_scrapes * INTERVAL_MS
    ds = make_dataset(plan.rw_hosts, plan.rw_scrapes, start_ms, jitter_ms=plan.rw_jitter_ms, seed=9)
    log(f"remote write: encoding {ds.num_samples} samples, {plan.max_samples_per_send} a body")
    encoder = RemoteWriteEncoder(ds.labels)
    started = time.perf_counter()
    shards = shard_batches(ds, plan.shards, plan.max_samples_per_send)
    files, sizes, bodies = [], 0, 0
    check = _encoder_check(ds, shards)
    folder = root / "remote-write"
    folder.mkdir()
    for i, batches in enumerate(shards):
        path = folder / f"shard-{i}.bin"
        encoded = [(len(b.series), encoder.body(b.series, b.timestamps, b.values)) for b in batches]
        sizes += write_bodies(path, encoded)
        bodies += len(encoded)
        files.append(path)
    info = {
        "series": ds.num_series,
        "samples": ds.num_samples,
        "bodies": bodies,
        "bodies_per_shard": [len(b) for b in shards],
        "bytes_snappy": sizes,
        "bytes_per_sample_on_the_wire": round(sizes / ds.num_samples, 2),
        "encode_seconds": round(time.perf_counter() - started, 2),
        "encoder_check": check,
    }
    return RemoteWriteData(ds, files, info, int(ds.timestamps.max()), int(ds.timestamps.min()))


def _encoder_check(ds: Dataset, shards: list[list[Any]], bodies: int = 6) -> str:
    """Our bodies against remote_write.encode_write_request on the same samples."""
    from scalelab.monitoring.remote_write import encode_write_request

    encoder = RemoteWriteEncoder(ds.labels)
    picked = [b for batches in shards for b in (batches[0], batches[-1])][:bodies]
    for b in picked:
        series = [
            (ds.labels[s], [t], [v])
            for s, t, v in zip(
                b.series.tolist(), b.timestamps.tolist(), b.values.tolist(), strict=True
            )
        ]
        if encode_write_request(series) != encoder.body(b.series, b.timestamps, b.values):
            raise RuntimeError("the bench's remote-write encoder differs from encode_write_request")
    return f"byte-identical to encode_write_request on {len(picked)} bodies"


def run_loader(
    mode: str, spec: dict[str, Any], log_path: Path, timeout: float, on_ready: Callable[[], None]
) -> dict[str, Any]:
    """A load process: wait for `ready`, call on_ready, say go, read its JSON line."""
    with log_path.open("ab") as errors:
        proc = subprocess.Popen(
            [sys.executable, str(LOADER), mode, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        line = readline(proc, time.monotonic() + 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"loader not ready (exit {proc.poll()}): {log_tail(log_path)}")
        on_ready()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        line = readline(proc, time.monotonic() + timeout + 60)
        if not line.strip():
            raise RuntimeError(f"loader gave no result (exit {proc.poll()}): {log_tail(log_path)}")
        result: dict[str, Any] = json.loads(line)
        return result
    finally:
        stop_group(proc, grace=5)


def remote_write_load(
    server: Server, rw: RemoteWriteData, plan: Plan, root: Path
) -> dict[str, Any]:
    spec = {
        "host": HOST,
        "port": server.port,
        "files": [str(p) for p in rw.files],
        "window": plan.shard_window,
        "timeout": plan.phase_timeout,
    }
    cpu: list[float] = []
    machine: list[tuple[int, int] | None] = []

    def on_ready() -> None:
        cpu.append(server.cpu())
        machine.append(machine_cpu())

    log(f"{server.name}: remote write, {rw.dataset.num_samples} samples")
    result = run_loader("remote-write", spec, root / "loader.log", plan.phase_timeout, on_ready)
    server_cpu = server.cpu() - cpu[0]
    machine_cores = machine_busy(machine[0], machine_cpu())
    seconds = result["seconds"]
    ok = result["samples_ok"]
    return {
        **result,
        "samples_per_s": round(ok / seconds, 1) if seconds else None,
        "server_cpu_seconds": round(server_cpu, 2),
        "server_cores_busy": round(server_cpu / seconds, 2) if seconds else None,
        "samples_per_server_cpu_second": round(ok / server_cpu, 1) if server_cpu > 0 else None,
        "rss_bytes_after": server.rss(),
        "machine_cores_busy": machine_cores,
    }


def verify_loaded(api: Api, rw: RemoteWriteData) -> dict[str, Any]:
    """Both servers must hold every sample before their queries are compared."""
    span_s = math.ceil((rw.newest_ms - rw.oldest_ms) / 1000) + 60
    at = rw.newest_ms / 1000
    start = time.perf_counter()
    series = api.scalar('count({job=~".+"})', at)
    # count_over_time drops the metric name, so the series of two names could collide: one
    # query per name
    names = sorted({dict(lab)["__name__"] for lab in rw.dataset.labels})
    samples = 0.0
    for name in names:
        samples += api.scalar(f"sum(count_over_time({name}[{span_s}s]))", at) or 0.0
    return {
        "series": int(series) if series is not None else None,
        "samples": int(samples) if samples is not None else None,
        "expected_series": rw.dataset.num_series,
        "expected_samples": rw.dataset.num_samples,
        "complete": series == rw.dataset.num_series and samples == rw.dataset.num_samples,
        "seconds": round(time.perf_counter() - start, 2),
    }


def query_set(hosts: int) -> tuple[dict[str, str], dict[str, str]]:
    """(instant, range) queries by name."""
    one_host = instance_name(min(7, hosts - 1))
    instant = {
        "selector_one_metric": "node_memory_MemFree_bytes",
        "selector_one_host": f'{{instance="{one_host}"}}',
        "sum_rate_cpu": "sum by (job) (rate(node_cpu_seconds_total[5m]))",
        "topk_rate_requests": "topk(10, rate(http_requests_total[5m]))",
        "count_all_series": 'count by (job) ({job=~".+"})',
        "max_over_time_1h": "max by (job) (max_over_time(node_load1[1h]))",
    }
    ranged = {
        "sum_rate_cpu": "sum by (job) (rate(node_cpu_seconds_total[5m]))",
        "sum_all_series": 'sum by (job) ({job=~".+"})',
        "topk_requests_by_host": "topk(5, sum by (instance) (rate(http_requests_total[5m])))",
        "avg_memory_gauge": "avg by (job) (node_memory_MemFree_bytes)",
    }
    return instant, ranged


def _summary(data: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """result -> {series key: [(t, v), ...]} for comparing two servers' answers."""
    out: dict[str, list[tuple[float, float]]] = {}
    for item in data["result"]:
        key = json.dumps(item["metric"], sort_keys=True)
        points = item.get("values") or [item["value"]]
        out[key] = [(round(float(t), 3), float(v)) for t, v in points]
    return out


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Same series, same timestamps, values within a relative 1e-9 (float summation order)."""
    a, b = ours, theirs
    out: dict[str, Any] = {"series": len(a), "series_peer": len(b)}
    common = set(a) & set(b)
    out["series_only_ours"] = len(set(a) - set(b))
    out["series_only_peer"] = len(set(b) - set(a))
    worst, points, mismatched_points = 0.0, 0, 0
    for key in common:
        pa, pb = dict(a[key]), dict(b[key])
        if set(pa) != set(pb):
            mismatched_points += len(set(pa) ^ set(pb))
        for t in set(pa) & set(pb):
            va, vb = pa[t], pb[t]
            points += 1
            if math.isnan(va) and math.isnan(vb):
                continue
            scale = max(abs(va), abs(vb), 1e-300)
            worst = max(worst, abs(va - vb) / scale)
    out["points_compared"] = points
    out["points_only_one_side"] = mismatched_points
    out["max_relative_difference"] = worst
    out["agree"] = (
        out["series_only_ours"] == 0
        and out["series_only_peer"] == 0
        and mismatched_points == 0
        and worst <= 1e-9
    )
    return out


def run_queries(
    server: Server, api: Api, rw: RemoteWriteData, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Latencies per query, and each query's first answer (for comparing the servers). A
    query that fails is reported as such and the others still run."""
    instant, ranged = query_set(plan.rw_hosts)
    end_ms = rw.newest_ms
    at = f"{end_ms / 1000:.3f}"
    figures: dict[str, Any] = {"instant": {}, "range_cold": {}, "range_warm": {}}
    answers: dict[str, Any] = {}
    cache0 = _cache_steps(api) if server.name == "scalelab" else None

    def timed(requests: Iterator[dict[str, str]], path: str) -> dict[str, Any]:
        seconds: list[float] = []
        spent = 0.0
        for i, params in enumerate(requests):
            if i >= plan.query_reps or spent >= plan.query_budget_s:
                break
            _, took = api.query(params, path)
            seconds.append(took)
            spent += took
        return percentiles(seconds)

    def first(key: str, params: dict[str, str], path: str) -> dict[str, Any]:
        data, took = api.query(params, path)
        answers[key] = _summary(data)
        out = {"first_ms": round(took * 1000, 3), "result_series": len(data["result"])}
        if path.endswith("query_range"):
            out["points"] = sum(len(r["values"]) for r in data["result"])
        return out

    for name, q in instant.items():
        log(f"{server.name}: instant query {name}")
        params = {"query": q, "time": at}
        try:
            head = first(f"instant/{name}", params, "/api/v1/query")
            figures["instant"][name] = {
                **timed(itertools.repeat(params), "/api/v1/query"),
                **head,
            }
        except (RuntimeError, OSError) as exc:
            figures["instant"][name] = {"error": str(exc)[:400]}
    for name, q in ranged.items():
        log(f"{server.name}: range query {name}")

        def window(shift_ms: int, q: str = q) -> dict[str, str]:
            lo, hi = end_ms - HOUR_MS + shift_ms, end_ms + shift_ms
            return {
                "query": q,
                "start": f"{lo / 1000:.3f}",
                "end": f"{hi / 1000:.3f}",
                "step": "15",
            }

        path = "/api/v1/query_range"
        try:
            head = first(f"range/{name}", window(0), path)
            # cold: each repetition on another step phase (1, 2, 3 ... ms later)
            cold = timed((window(i + 1) for i in itertools.count()), path)
            warm = timed(itertools.repeat(window(0)), path)
            figures["range_cold"][name] = {**cold, **head}
            figures["range_warm"][name] = warm
        except (RuntimeError, OSError) as exc:
            figures["range_cold"][name] = {"error": str(exc)[:400]}
    if cache0 is not None:
        cache1 = _cache_steps(api)
        figures["results_cache_steps"] = {k: cache1[k] - cache0[k] for k in cache0}
    return figures, answers


def _cache_steps(api: Api) -> dict[str, float]:
    status, body, _ = api.get("/metrics")
    out = {"hit": 0.0, "miss": 0.0}
    if status == 200:
        for line in body.decode(errors="replace").splitlines():
            m = re.match(
                r'scalelab_monitoring_query_cache_steps_total\{result="(\w+)"\} (\S+)', line
            )
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def remote_write_and_queries(
    name: str, root: Path, rw: RemoteWriteData, plan: Plan
) -> tuple[dict[str, Any], dict[str, Any]]:
    res: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    with running(name, root, "rw", empty_config()) as server:
        res["server"] = server.info
        res["rss_bytes_before"] = server.rss()
        res["ingest"] = remote_write_load(server, rw, plan, root)
        api = Api(server.port)
        try:
            res["verify"] = verify_loaded(api, rw)
            if not res["verify"]["complete"]:
                log(f"{name}: not every sample is there: {res['verify']}")
            res["queries"], answers = run_queries(server, api, rw, plan)
        finally:
            api.close()
        if not server.alive():
            res["crashed"] = {
                "exit_code": server.proc.returncode,
                "log_tail": log_tail(server.log_path),
            }
    return res, answers


# -- phase: scrape -------------------------------------------------------------------------------


@contextlib.contextmanager
def scrape_targets(plan: Plan, root: Path) -> Iterator[tuple[list[int], dict[str, Any]]]:
    spec = {"count": plan.scrape_targets, "pods": plan.scrape_pods}
    with (root / "targets.log").open("ab") as errors:
        proc = subprocess.Popen(
            [sys.executable, str(LOADER), "targets", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        line = readline(proc, time.monotonic() + 60)
        if not line.strip():
            raise RuntimeError(
                f"targets did not start (exit {proc.poll()}): {log_tail(root / 'targets.log')}"
            )
        info = json.loads(line)
        yield info["ports"], {"body_bytes": info["body_bytes"], "pid": proc.pid}
    finally:
        stop_group(proc, grace=5)


def wait_targets_up(api: Api, targets: int, deadline: float) -> float:
    """Seconds until every target has been scraped successfully once (Prometheus applies a
    new target set only every 5 s)."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(RuntimeError, OSError):
            if api.scalar("count(up == 1)", time.time()) == targets:
                return time.monotonic() - start
        time.sleep(0.25)
    raise RuntimeError(f"not all {targets} targets up after {deadline - start:.0f} s")


def scrape_config(plan: Plan, ports: Sequence[int]) -> str:
    targets = ", ".join(f'"{HOST}:{p}"' for p in ports)
    i = f"{plan.scrape_interval_s}s"
    return (
        f"global:\n  scrape_interval: {i}\n  scrape_timeout: {i}\n"
        "scrape_configs:\n  - job_name: targets\n"
        f"    static_configs:\n      - targets: [{targets}]\n"
    )


def scrape(
    name: str, root: Path, plan: Plan, ports: Sequence[int], targets_pid: int
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with running(name, root, "scrape", scrape_config(plan, ports)) as server:
        res["server"] = server.info
        api = Api(server.port)
        try:
            waited = wait_targets_up(api, len(ports), time.monotonic() + 60)
            res["seconds_until_all_targets_up"] = round(waited, 2)
            log(f"{name}: scraping {len(ports)} targets, warm-up {plan.scrape_warmup_s}s")
            time.sleep(plan.scrape_warmup_s)
            window = plan.scrape_window_s
            appended0 = api.metric("prometheus_tsdb_head_samples_appended_total")
            t_a = time.time()
            cpu_a, targets_a = server.cpu(), tree_cpu_seconds(targets_pid)
            machine_a = machine_cpu()
            time.sleep(max(0.0, t_a + window - time.time()))
            cpu_b, targets_b = server.cpu(), tree_cpu_seconds(targets_pid)
            machine_b = machine_cpu()
            t_b = t_a + window
            appended1 = api.metric("prometheus_tsdb_head_samples_appended_total")
            time.sleep(2 * plan.scrape_interval_s + 1)  # scrapes begun before t_b are in
            w = f"[{window}s]"
            scraped = api.scalar(f"sum(sum_over_time(scrape_samples_scraped{w}))", t_b) or 0.0
            scrapes = api.scalar(f"sum(count_over_time(up{w}))", t_b) or 0.0
            up = api.scalar(f"sum(sum_over_time(up{w}))", t_b) or 0.0
            duration = api.scalar(f"avg(avg_over_time(scrape_duration_seconds{w}))", t_b)
        finally:
            api.close()
        server_cpu = cpu_b - cpu_a
        ingested = scraped + SYNTHETIC_PER_SCRAPE * scrapes
        per_target = plan.scrape_pods * SERIES_PER_HOST + SYNTHETIC_PER_SCRAPE
        offered = len(ports) * per_target * window / plan.scrape_interval_s
        res.update(
            {
                "window_s": window,
                "scrapes": int(scrapes),
                "scrapes_up": int(up),
                "samples_ingested": int(ingested),
                "samples_per_s": round(ingested / window, 1),
                "offered_samples_per_s": round(offered / window, 1),
                "kept_up_fraction": round(ingested / offered, 3) if offered else None,
                "mean_scrape_duration_ms": round(duration * 1000, 2)
                if duration is not None
                else None,
                "server_cpu_seconds": round(server_cpu, 2),
                "server_cores_busy": round(server_cpu / window, 2),
                "samples_per_server_cpu_second": round(ingested / server_cpu, 1)
                if server_cpu > 0
                else None,
                "targets_process_cpu_seconds": round(targets_b - targets_a, 2),
                "machine_cores_busy": machine_busy(machine_a, machine_b),
                "rss_bytes": server.rss(),
            }
        )
        if appended0 is not None and appended1 is not None:
            res["head_samples_appended_total_delta"] = int(appended1 - appended0)
        if not server.alive():
            res["crashed"] = {
                "exit_code": server.proc.returncode,
                "log_tail": log_tail(server.log_path),
            }
    return res


# -- report --------------------------------------------------------------------------------------


def figures(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {s: {} for s in SERVERS}
    for variant, entry in report.get("storage", {}).items():
        if not isinstance(entry, dict) or "scalelab" not in entry:
            continue
        for s in SERVERS:
            block = entry[s]["block"]
            out[s][f"storage_{variant}_chunk_bytes_per_sample"] = block["chunk_bytes_per_sample"]
            out[s][f"storage_{variant}_block_bytes_per_sample"] = block["block_bytes_per_sample"]
        if "all_blocks_bytes_per_sample" in entry["scalelab"]:
            out["scalelab"][f"storage_{variant}_all_blocks_bytes_per_sample"] = entry["scalelab"][
                "all_blocks_bytes_per_sample"
            ]
            out["prometheus"][f"storage_{variant}_all_blocks_bytes_per_sample"] = entry[
                "prometheus"
            ]["block"]["block_bytes_per_sample"]
    for s in SERVERS:
        rw = report.get("remote_write", {}).get(s, {})
        ingest = rw.get("ingest", {})
        if ingest.get("complete") and not ingest.get("errors"):
            out[s]["remote_write_samples_per_s"] = ingest["samples_per_s"]
            out[s]["remote_write_samples_per_cpu_second"] = ingest["samples_per_server_cpu_second"]
            out[s]["remote_write_request_p50_ms"] = ingest["request_latency"]["p50_ms"]
            out[s]["remote_write_request_p99_ms"] = ingest["request_latency"]["p99_ms"]
        for group, entries in rw.get("queries", {}).items():
            if group == "results_cache_steps":
                continue
            for q, lat in entries.items():
                if lat.get("p50_ms") is not None:
                    out[s][f"query_{group}_{q}_p50_ms"] = lat["p50_ms"]
                    out[s][f"query_{group}_{q}_p99_ms"] = lat["p99_ms"]
        sc = report.get("scrape", {}).get(s, {})
        if sc.get("samples_per_server_cpu_second"):
            out[s]["scrape_samples_per_s"] = sc["samples_per_s"]
            out[s]["scrape_samples_per_cpu_second"] = sc["samples_per_server_cpu_second"]
    return out


def ratios(figs: dict[str, dict[str, float]]) -> dict[str, Any]:
    ours, peer = figs["scalelab"], figs["prometheus"]
    return {
        "how_to_read": "scalelab / prometheus for each figure: for samples_per_s and "
        "samples_per_cpu_second above 1 means scalelab is faster; for _ms and bytes_per_sample "
        "below 1 means scalelab is faster or smaller",
        "scalelab/prometheus": {k: ratio(v, peer.get(k)) for k, v in ours.items()},
    }


def goals(figs: dict[str, dict[str, float]]) -> dict[str, Any]:
    ours, peer = figs["scalelab"], figs["prometheus"]
    out: dict[str, Any] = {}
    for key in ("remote_write_samples_per_cpu_second", "scrape_samples_per_cpu_second"):
        r = ratio(ours.get(key), peer.get(key))
        out[f"ingestion_{key.split('_samples')[0]}"] = {
            "goal": "samples per server CPU-second >= 0.5 x Prometheus's",
            "ratio": r,
            "met": None if r is None else r >= 0.5,
        }
    for key in sorted(k for k in ours if k.startswith("storage_")):
        r = ratio(ours.get(key), peer.get(key))
        out[key.removeprefix("storage_")] = {
            "goal": "bytes per sample <= Prometheus's",
            "ratio": r,
            "met": None if r is None else r <= 1.0,
        }
        if key.endswith("all_blocks_bytes_per_sample"):
            out[key.removeprefix("storage_")]["note"] = (
                "raw block plus our 1m and 1h downsampled copies, against Prometheus's block: "
                "the disk the same data takes while the raw block is retained"
            )
    return out


HOW_TO_READ = {
    "storage": "bytes on disk of one 2 h block holding the same samples, divided by the "
    "samples: chunk_bytes_per_sample counts the chunk files only (compressed samples plus "
    "each format's per-chunk framing and CRC), block_bytes_per_sample the whole block "
    "(chunks, index with symbols and postings, meta.json; Prometheus's also tombstones). "
    "File sizes, not disk blocks. Our TSDB.maintain() also writes 1-minute and 1-hour "
    "downsampled copies of every raw block (downsampled_blocks); all_blocks_bytes_per_sample "
    "counts the raw block and those copies over the raw samples, what our data dir holds for "
    "the same 2 h while the raw block is retained (7 days by default; the copies 30 days and "
    "a year). Prometheus keeps no copies, so its figure there is its block's",
    "remote_write.ingest": "samples_per_s: acknowledged samples over the wall clock of the "
    "send; samples_per_server_cpu_second: the same samples over the CPU seconds (user + "
    "system, all threads) the server used meanwhile, i.e. ingestion per core; "
    "server_cores_busy: how many cores it kept busy; request_latency: POST to 2xx per body",
    "remote_write.verify": "series and samples each server holds afterwards, asked in PromQL",
    "remote_write.queries": "p50/p99 of n repetitions (ms, one client, keep-alive), after "
    "one unmeasured first run (first_ms). range_cold moves the 1 h range by 1 ms each time "
    "(a new step phase: our results cache cannot answer); range_warm repeats the identical "
    "request (our cache answers what is older than its 10-minute freshness limit: "
    "results_cache_steps shows hits and misses). Prometheus has no results cache",
    "query_results_agree": "the first answer of each query on both servers: same series, "
    "same timestamps, values within 1e-9 relative",
    "scrape": "samples ingested in a window of window_s seconds of steady scraping (the "
    "targets' samples plus 5 synthetic series per scrape), per second and per server "
    "CPU-second; kept_up_fraction is ingested over offered (1.0: every scrape on time)",
    "cpu_seconds": "from /proc/PID/stat (utime + stime of the server's process tree) in "
    "clock ticks of 10 ms: a figure built on under a second of CPU carries that granularity",
    "machine": "fdatasync_4KiB: append + fdatasync latency on the temp dir's disk (our WAL "
    "pays one per group commit); loadavg and each phase's machine_cores_busy show other "
    "load on the machine, which slows wall-clock figures (samples_per_s, latencies) more "
    "than per-CPU-second ones",
    "ratios": "scalelab / prometheus",
    "goals": "the issue's goals and whether this run meets them",
}

NOTES = [
    "servers run one at a time on a fresh temp data dir; the load processes share the two "
    "cores with them, so figures are per CPU-second where the goal is per core",
    "durability differs: scalelab fdatasyncs its WAL before answering a write (group "
    "commit); Prometheus 2.42 writes its WAL through a 32 KiB page buffer and fsyncs only "
    "when a segment is cut, so an acknowledged sample can be lost on a crash",
    "remote-write bodies are built by bench/_monitoring_load.py's encoder, checked "
    "byte-for-byte against scalelab.monitoring.remote_write.encode_write_request "
    "(encoder_check); building them with that function would take ~15 us a sample here",
    "storage: ours is written by TSDB.maintain() in this process, Prometheus's by promtool "
    "running at the same time in its own process; only the bytes are compared",
    "Prometheus has no head compaction during the remote-write phase (the data spans less "
    "than 3 h); neither has scalelab",
]


def run(plan: Plan) -> tuple[dict[str, Any], bool]:
    began = time.perf_counter()
    ok = True
    report: dict[str, Any] = {
        "bench": "monitoring",
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_start": _loadavg(),
        },
        "versions": {
            "scalelab": package_version("scalelab"),
            "prometheus": tool_version([shutil.which("prometheus") or "prometheus", "--version"]),
            "promtool": tool_version([shutil.which("promtool") or "promtool", "--version"]),
            "numpy": package_version("numpy"),
            "uvloop": package_version("uvloop"),
        },
        "params": plan.describe(),
        "how_to_read": HOW_TO_READ,
    }
    root = Path(tempfile.mkdtemp(prefix="scalelab-bench-monitoring-", dir="/tmp"))
    try:
        report["machine"]["fdatasync_4KiB"] = fdatasync_probe(root)
        if "storage" in plan.phases:
            try:
                report["storage"] = storage(plan, root)
            except Exception as exc:
                ok = False
                report["storage"] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"storage failed: {exc}")
        if "remote_write" in plan.phases:
            rw_report: dict[str, Any] = {}
            answers: dict[str, dict[str, Any]] = {}
            try:
                rw = prepare_remote_write(plan, root)
                rw_report["workload"] = rw.info
                for name in SERVERS:
                    try:
                        rw_report[name], answers[name] = remote_write_and_queries(
                            name, root, rw, plan
                        )
                    except Exception as exc:
                        ok = False
                        rw_report[name] = {"error": f"{type(exc).__name__}: {exc}"}
                        log(f"{name}: remote write failed: {exc}")
                if all(answers.get(s) for s in SERVERS):
                    rw_report["query_results_agree"] = {
                        q: compare(answers["scalelab"][q], answers["prometheus"][q])
                        for q in answers["scalelab"]
                    }
            except Exception as exc:
                ok = False
                rw_report["error"] = f"{type(exc).__name__}: {exc}"
                log(f"remote write failed: {exc}")
            report["remote_write"] = rw_report
        if "scrape" in plan.phases:
            sc_report: dict[str, Any] = {}
            try:
                with scrape_targets(plan, root) as (ports, info):
                    sc_report["targets"] = {"count": len(ports), **info}
                    for name in SERVERS:
                        try:
                            sc_report[name] = scrape(name, root, plan, ports, info["pid"])
                        except Exception as exc:
                            ok = False
                            sc_report[name] = {"error": f"{type(exc).__name__}: {exc}"}
                            log(f"{name}: scrape failed: {exc}")
            except Exception as exc:
                ok = False
                sc_report["error"] = f"{type(exc).__name__}: {exc}"
            report["scrape"] = sc_report
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figs = figures(report)
    report["figures"] = figs
    report["ratios"] = ratios(figs)
    report["goals"] = goals(figs)
    report["notes"] = NOTES
    report["machine"]["loadavg_at_end"] = _loadavg()
    report["duration_seconds"] = round(time.perf_counter() - began, 1)
    return report, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, about a minute")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    parser.add_argument("--hosts", type=int, default=None, help="hosts (x100 series) to write")
    return run_main(parser.parse_args(argv), lambda args: run(Plan.from_args(args)), log)


if __name__ == "__main__":
    raise SystemExit(main())
