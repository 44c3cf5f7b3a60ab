"""Workload and load processes for bench/monitoring.py.

The data: a catalogue of 100 series per host, the shape of a node_exporter scrape merged with
an HTTP service's own metrics (CPU seconds per core and mode, network, disk and filesystem
counters and gauges, memory, load averages, request counters by handler/code/method, request
duration sums and counts, process figures), under `job` and `instance` labels. Each value
kind has its own generator: counters in their natural unit (centiseconds of CPU, bytes,
operations, milliseconds) so their values are the decimals an exporter prints, a few with
full-precision float increments (duration sums); gauges as random walks in pages, noisy
load averages with two decimals, constants and small integers. A share of the hosts restarts
once in the data's span, resetting that host's counters. Timestamps follow a scrape: one
phase per host within the 15 s interval, the same timestamp for all of a host's series, plus
optional jitter (normal, in whole ms) as senders that do not align timestamps produce.

Remote-write bodies: `RemoteWriteEncoder` writes the protobuf bytes of a
`prometheus.WriteRequest` directly (labels pre-encoded per series, timestamps and values
vectorised with numpy) and compresses them with snappy. It is byte-for-byte the output of
`scalelab.monitoring.remote_write.encode_write_request` for the same samples (the bench
checks a sample of bodies against it), about seven times faster: that function builds the
message field by field in Python, ~15 us a sample on the 2-core machine, which would make
encoding the workload take about as long as our server takes to ingest it. Like
Prometheus's queue manager, every sample is its own TimeSeries entry, series are sharded by
hash over the senders, and each sender cuts its stream into batches of
`max_samples_per_send`.

Load processes (`python bench/_monitoring_load.py MODE '<json spec>'`):

- `remote-write`: one keep-alive connection per shard, each with one request in flight (as a
  queue-manager shard sends), bodies read from the shard's file; shards are held within a
  window of each other (Prometheus reads its WAL in order, so its shards stay close, and a
  receiver refuses samples more than an hour behind its newest). Prints `ready`, waits for a
  line on stdin, sends, and prints one JSON line: counts, wall span, latencies, client CPU.
- `targets`: N scrape targets on N loopback ports, each answering every GET with a fixed
  text exposition; prints `{"ports": [...]}` and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import resource
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import cramjam
import numpy as np
import numpy.typing as npt

Labels = tuple[tuple[str, str], ...]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
INTERVAL_MS = 15_000
HOST = "127.0.0.1"
JOBS = ("api", "web", "worker", "db")

# -- the series catalogue ------------------------------------------------------------------------

# (metric name, Prometheus type, value kind, label dimensions)
Family = tuple[str, str, str, tuple[tuple[str, tuple[str, ...]], ...]]
_MODES = ("idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice")
_MOUNTS = (
    ("/dev/vda1", "/", "ext4"),
    ("/dev/vda15", "/boot/efi", "vfat"),
    ("tmpfs", "/run", "tmpfs"),
)
_MEMORY = ("MemFree", "MemAvailable", "Cached", "Buffers", "Active", "Inactive", "Dirty", "Shmem")
_HANDLERS = ("/api/orders", "/api/users", "/api/search", "/healthz")

FAMILIES: tuple[Family, ...] = (
    ("node_cpu_seconds_total", "counter", "cpu",
     (("cpu", ("0", "1", "2", "3")), ("mode", _MODES))),
    *((f"node_network_{d}_{u}_total", "counter", "bytes" if u == "bytes" else "ops",
       (("device", ("eth0", "lo")),))
      for d in ("receive", "transmit") for u in ("bytes", "packets")),
    *((f"node_disk_{n}_total", "counter", kind, (("device", ("vda", "vdb")),))
      for n, kind in (("read_bytes", "bytes"), ("written_bytes", "bytes"),
                      ("reads_completed", "ops"), ("writes_completed", "ops"),
                      ("io_time_seconds", "millis"))),
    *((f"node_filesystem_{n}_bytes", "gauge", kind, ())
      for n, kind in (("avail", "pages"), ("free", "pages"), ("size", "const_big"))),
    ("node_memory_MemTotal_bytes", "gauge", "const_big", ()),
    ("node_memory_SwapFree_bytes", "gauge", "const_big", ()),
    *((f"node_memory_{n}_bytes", "gauge", "pages", ()) for n in _MEMORY),
    *((f"node_load{n}", "gauge", "load", ()) for n in ("1", "5", "15")),
    ("http_requests_total", "counter", "requests",
     (("code", ("200", "500")), ("handler", _HANDLERS), ("method", ("GET", "POST")))),
    ("http_request_duration_seconds_sum", "counter", "seconds", (("handler", _HANDLERS),)),
    ("http_request_duration_seconds_count", "counter", "requests", (("handler", _HANDLERS),)),
    ("process_resident_memory_bytes", "gauge", "pages", ()),
    ("process_cpu_seconds_total", "counter", "cpu", ()),
    ("go_goroutines", "gauge", "small", ()),
    ("node_time_seconds", "gauge", "clock", ()),
)  # fmt: skip


def _family_series(family: Family) -> Iterator[tuple[tuple[str, str], ...]]:
    """The label pairs (besides name, job, instance) of every series of a family."""
    name, _, _, dims = family
    if name.startswith("node_filesystem"):
        for device, mount, fstype in _MOUNTS:
            yield (("device", device), ("fstype", fstype), ("mountpoint", mount))
        return
    combos: list[tuple[tuple[str, str], ...]] = [()]
    for label, values in dims:
        combos = [(*c, (label, v)) for c in combos for v in values]
    yield from combos


def host_template() -> list[tuple[str, str, str, tuple[tuple[str, str], ...]]]:
    """(name, type, kind, extra labels) of the 100 series one host exposes."""
    out = [(f[0], f[1], f[2], extra) for f in FAMILIES for extra in _family_series(f)]
    assert len(out) == 100, len(out)
    return out


def instance_name(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}:9100"


def sorted_labels(pairs: Sequence[tuple[str, str]]) -> Labels:
    return tuple(sorted(pairs))


# -- values --------------------------------------------------------------------------------------

COUNTER_KINDS = {"cpu", "bytes", "ops", "millis", "requests", "seconds"}


def _counter_units(rng: np.random.Generator, kind: str, extra: dict[str, str], n: int) -> IntArray:
    """Per-interval increments of an integer-unit counter."""
    if kind == "cpu":  # centiseconds per 15 s per core: 1500 at most
        share = {"idle": 0.7, "user": 0.18, "system": 0.06, "iowait": 0.02}.get(
            extra.get("mode", "user"), 0.004
        )
        share *= float(rng.uniform(0.5, 1.5))
        noisy = np.clip(rng.normal(share, share * 0.3 + 0.002, n), 0, 1)
        return np.rint(noisy * 1500).astype(np.int64)
    if kind == "bytes":
        rate = float(10 ** rng.uniform(2, 6))  # bytes/s
        return rng.poisson(rate * 15, n).astype(np.int64)
    if kind == "ops":
        return rng.poisson(float(10 ** rng.uniform(-1, 2.5)) * 15, n).astype(np.int64)
    if kind == "millis":
        return rng.poisson(float(rng.uniform(1, 300)) * 15, n).astype(np.int64)
    # requests: a 500 is rare, a 200 common; POST to /healthz never happens
    if extra.get("code") == "500":
        rate = float(rng.uniform(0.0, 0.02))
    elif extra.get("handler") == "/healthz" and extra.get("method") == "POST":
        rate = 0.0
    else:
        rate = float(10 ** rng.uniform(-1, 2))
    return rng.poisson(rate * 15, n).astype(np.int64)


_SCALE = {"cpu": 100.0, "millis": 1000.0}


def series_values(
    rng: np.random.Generator,
    kind: str,
    extra: dict[str, str],
    timestamps: IntArray,
    restart_at: int | None,
) -> FloatArray:
    """One series' values at its timestamps; a counter restarts from zero at `restart_at`."""
    n = len(timestamps)
    if kind in COUNTER_KINDS:
        if kind == "seconds":  # a duration sum: full-precision float increments
            requests = rng.poisson(float(10 ** rng.uniform(-1, 2)) * 15, n)
            inc = rng.gamma(2.0, 0.02, n) * requests
            start = float(rng.uniform(0, 1e4))
            vals = start + np.cumsum(inc)
            if restart_at is not None:
                vals[restart_at:] -= vals[restart_at] - inc[restart_at]
            return vals + 0.0
        units = _counter_units(rng, kind, extra, n)
        total = int(rng.integers(0, 10**9 if kind == "bytes" else 10**6)) + np.cumsum(units)
        if restart_at is not None:
            total[restart_at:] -= total[restart_at] - units[restart_at]
        # integer units / 10^k: the decimal an exporter prints, parsed to the nearest double
        return total / _SCALE.get(kind, 1.0)
    if kind == "pages":  # memory and free space move in pages, often not at all
        size = int(rng.integers(10_000, 4_000_000))
        steps = rng.integers(-64, 65, n) * (rng.random(n) < 0.7)
        pages = np.clip(size + np.cumsum(steps), 0, None)
        return (pages * 4096).astype(np.float64)
    if kind == "const_big":
        return np.full(n, float(int(rng.integers(1, 64)) * (1 << 30)))
    if kind == "load":  # a smoothed noisy level, two decimals
        level = float(rng.uniform(0.1, 4))
        walk = np.cumsum(rng.normal(0, 0.05, n))
        return cast(FloatArray, np.round(np.clip(level + walk, 0, None), 2) + 0.0)
    if kind == "small":
        return rng.integers(20, 200, n).astype(np.float64)
    # clock: node_time_seconds, the host's clock at the scrape (ns precision)
    return timestamps / 1000.0 + rng.integers(0, 10**6, n) / 1e9


@dataclass(frozen=True)
class Dataset:
    """S series x n samples. Timestamps are per host (all its series share a scrape)."""

    labels: list[Labels]
    host_of: IntArray  # series -> host index
    types: list[str]  # series -> Prometheus type
    timestamps: IntArray  # (hosts, n)
    values: FloatArray  # (S, n)

    @property
    def num_series(self) -> int:
        return len(self.labels)

    @property
    def samples_per_series(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_samples(self) -> int:
        return int(self.values.size)

    def series_timestamps(self, s: int) -> IntArray:
        return cast(IntArray, self.timestamps[self.host_of[s]])


def make_dataset(
    hosts: int,
    samples: int,
    start_ms: int,
    *,
    jitter_ms: float = 0.0,
    restart_fraction: float = 0.05,
    seed: int = 5,
) -> Dataset:
    """`hosts` x 100 series, `samples` scrapes each, the first scrape of every host in
    [start_ms + 100, start_ms + 14,900) ms (so jitter never leaves the span)."""
    rng = np.random.default_rng(seed)
    template = host_template()
    phase = rng.integers(100, INTERVAL_MS - 100, hosts)
    ts = start_ms + phase[:, None] + np.arange(samples, dtype=np.int64)[None, :] * INTERVAL_MS
    if jitter_ms > 0:
        jitter = np.rint(rng.normal(0, jitter_ms, ts.shape)).astype(np.int64)
        ts = ts + np.clip(jitter, -90, 90)
    labels: list[Labels] = []
    host_of: list[int] = []
    types: list[str] = []
    values = np.empty((hosts * len(template), samples), np.float64)
    row = 0
    for h in range(hosts):
        base = (("instance", instance_name(h)), ("job", JOBS[h % len(JOBS)]))
        restart = int(rng.integers(1, samples)) if rng.random() < restart_fraction else None
        for name, mtype, kind, extra in template:
            labels.append(sorted_labels((("__name__", name), *base, *extra)))
            host_of.append(h)
            types.append(mtype)
            values[row] = series_values(rng, kind, dict(extra), ts[h], restart)
            row += 1
    return Dataset(labels, np.array(host_of, np.int64), types, ts.astype(np.int64), values)


# -- remote write --------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    raw = text.encode()
    return bytes([number << 3 | 2]) + _varint(len(raw)) + raw


# A timestamp in [2^35, 2^42) ms (1971..2109) is a 6-byte varint.
_TS_MIN, _TS_MAX = 1 << 35, 1 << 42
_TAIL = 15  # value (8 bytes), timestamp tag (1), timestamp varint (6)


class RemoteWriteEncoder:
    """WriteRequest bytes for (series index, timestamp, value) triples of one label table."""

    def __init__(self, labels: Sequence[Labels]) -> None:
        self.with_value: list[bytes] = []
        self.zero_value: list[bytes] = []
        for series in labels:
            encoded = b"".join(
                b"\x0a" + _varint(len(pair)) + pair
                for pair in (_string_field(1, k) + _string_field(2, v) for k, v in series)
            )
            # TimeSeries{labels, samples: Sample{value: 1 (fixed64), timestamp: 2 (varint)}}
            for out, sample_len, value_tag in (
                (self.with_value, 16, b"\x09"),
                (self.zero_value, 7, b""),
            ):
                body_len = len(encoded) + 2 + sample_len
                out.append(
                    b"\x0a" + _varint(body_len) + encoded + bytes([0x12, sample_len]) + value_tag
                )

    def payload(self, series: IntArray, timestamps: IntArray, values: FloatArray) -> bytes:
        """The uncompressed protobuf; proto3 leaves a value of +0.0 out, as upb does."""
        n = len(series)
        if n and (int(timestamps.min()) < _TS_MIN or int(timestamps.max()) >= _TS_MAX):
            raise ValueError("timestamps outside the 6-byte varint range")
        tails = np.empty((n, _TAIL), np.uint8)
        tails[:, :8] = values.astype("<f8").view(np.uint8).reshape(n, 8)
        tails[:, 8] = 0x10
        t = timestamps.astype(np.uint64)
        for i in range(6):
            byte = (t >> np.uint64(7 * i)) & np.uint64(0x7F)
            tails[:, 9 + i] = byte | np.uint64(0x80 if i < 5 else 0)
        zero = values.view(np.uint64) == 0
        raw = tails.tobytes()
        parts: list[bytes] = []
        add = parts.append
        with_value, zero_value = self.with_value, self.zero_value
        for i, (s, z) in enumerate(zip(series.tolist(), zero.tolist(), strict=True)):
            at = i * _TAIL
            if z:
                add(zero_value[s])
                add(raw[at + 8 : at + _TAIL])
            else:
                add(with_value[s])
                add(raw[at : at + _TAIL])
        return b"".join(parts)

    def body(self, series: IntArray, timestamps: IntArray, values: FloatArray) -> bytes:
        return bytes(cramjam.snappy.compress_raw(self.payload(series, timestamps, values)))


@dataclass(frozen=True)
class Batch:
    series: IntArray
    timestamps: IntArray
    values: FloatArray


def shard_batches(
    ds: Dataset, shards: int, max_samples: int, rounds: slice = slice(None)
) -> list[list[Batch]]:
    """Each shard's samples in send order (scrape after scrape), cut into batches. Series go
    to shards by a hash of their labels, as the queue manager shards them."""
    shard_of = np.array([hash_labels(lab) % shards for lab in ds.labels], np.int64)
    ts_all = ds.timestamps[ds.host_of][:, rounds]  # (S, r)
    vs_all = ds.values[:, rounds]
    out: list[list[Batch]] = []
    for p in range(shards):
        mine = np.nonzero(shard_of == p)[0]
        r = ts_all.shape[1]
        series = np.tile(mine, r)
        ts = ts_all[mine].T.ravel()
        vs = vs_all[mine].T.ravel()
        out.append(
            [
                Batch(series[i : i + max_samples], ts[i : i + max_samples], vs[i : i + max_samples])
                for i in range(0, len(series), max_samples)
            ]
        )
    return out


def hash_labels(labels: Labels) -> int:
    """A stable hash (FNV-1a 64) of a label set: shard assignment does not depend on
    PYTHONHASHSEED."""
    h = 0xCBF29CE484222325
    for k, v in labels:
        for byte in f"{k}\xff{v}\xff".encode():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


_RECORD = struct.Struct("<II")  # samples, body length


def write_bodies(path: Path, bodies: Sequence[tuple[int, bytes]]) -> int:
    """A shard's (sample count, body) records; the bytes written."""
    with path.open("wb") as f:
        for samples, body in bodies:
            f.write(_RECORD.pack(samples, len(body)))
            f.write(body)
        return f.tell()


def read_bodies(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        samples, length = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        out.append((samples, data[at : at + length]))
        at += length
    return out


# -- OpenMetrics (promtool's backfill input) and the text exposition ------------------------------


def _label_text(labels: Labels) -> str:
    name = dict(labels)["__name__"]
    rest = ",".join(f'{k}="{v}"' for k, v in labels if k != "__name__")
    return f"{name}{{{rest}}}" if rest else name


def write_openmetrics(ds: Dataset, path: Path) -> int:
    """Every sample as `name{labels} value seconds.millis`, series after series, families
    contiguous, `# EOF` at the end; the bytes written."""
    order = sorted(range(ds.num_series), key=lambda s: ds.labels[s])
    stamps = [[f" {t // 1000}.{t % 1000:03d}\n" for t in row] for row in ds.timestamps.tolist()]
    with path.open("w", encoding="utf-8") as f:
        for s in order:
            head = _label_text(ds.labels[s]) + " "
            values = map(repr, ds.values[s].tolist())
            host = stamps[ds.host_of[s]]
            f.write("".join([head + v + st for v, st in zip(values, host, strict=True)]))
        f.write("# EOF\n")
        return f.tell()


def exposition(pods: int, seed: int = 11) -> bytes:
    """A text exposition (format 0.0.4) of `pods` x 100 series: the host template once per
    `pod` label value, HELP and TYPE per family, values of one scrape."""
    rng = np.random.default_rng(seed)
    template = host_template()
    families: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    stamp = np.array([1_700_000_000_000], np.int64)
    for pod in range(pods):
        for name, mtype, kind, extra in template:
            labels = sorted_labels((("__name__", name), ("pod", f"pod-{pod:04d}"), *extra))
            value = float(series_values(rng, kind, dict(extra), stamp, None)[0])
            family = name
            if name.startswith("http_request_duration_seconds_"):  # _sum and _count
                family, mtype = "http_request_duration_seconds", "summary"
            families.setdefault(family, []).append(f"{_label_text(labels)} {value!r}")
            types[family] = mtype
    lines: list[str] = []
    for family, series in families.items():
        lines.append(f"# HELP {family} {family.replace('_', ' ')}.")
        lines.append(f"# TYPE {family} {types[family]}")
        lines.extend(series)
    return ("\n".join(lines) + "\n").encode()


# -- the remote-write sender ---------------------------------------------------------------------


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentiles(seconds: Sequence[float]) -> dict[str, Any]:
    """Nearest-rank p50/p90/p99, mean and max, in ms."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    data = sorted(seconds)
    out: dict[str, Any] = {"n": len(data)}
    for p in (50, 90, 99):
        rank = max(1, math.ceil(len(data) * p / 100))
        out[f"p{p}_ms"] = round(data[rank - 1] * 1000, 3)
    out["mean_ms"] = round(sum(data) / len(data) * 1000, 3)
    out["max_ms"] = round(data[-1] * 1000, 3)
    return out


def _response_end(buf: bytearray) -> tuple[int, int, bytes] | None:
    """(end offset, status, body) of the first complete HTTP/1.1 response, or None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).lower()
    status = int(head[9:12])
    start = head_end + 4
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        if len(buf) < start + length:
            return None
        return start + length, status, bytes(buf[start : start + length])
    if b"\r\ntransfer-encoding: chunked" in head:
        body, pos = bytearray(), start
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            if size == 0:
                if len(buf) < line_end + 4:
                    return None
                return line_end + 4, status, bytes(body)
            if len(buf) < line_end + 2 + size + 2:
                return None
            body += buf[line_end + 2 : line_end + 2 + size]
            pos = line_end + 2 + size + 2
    return start, status, b""  # 204/304 or no body


class _Sender:
    """Shared state of the shards: the lockstep window, counters, the end."""

    def __init__(self, window: int, deadline: float) -> None:
        self.shards: list[_Shard] = []
        self.window = window
        self.deadline = deadline
        self.completed: list[int] = []
        self.remaining = 0
        self.blocked: list[_Shard] = []
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.samples_ok = 0
        self.bodies_ok = 0
        self.done = asyncio.get_running_loop().create_future()

    def floor(self) -> int:
        live = [c for c, s in zip(self.completed, self.shards, strict=True) if not s.finished]
        return min(live) if live else 0

    def progress(self) -> None:
        blocked, self.blocked = self.blocked, []
        for shard in blocked:
            shard.send_next()

    def shard_done(self) -> None:
        self.remaining -= 1
        self.progress()
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


class _Shard(asyncio.Protocol):
    def __init__(
        self, sender: _Sender, index: int, head: bytes, bodies: list[tuple[int, bytes]]
    ) -> None:
        self.sender, self.index, self.head, self.bodies = sender, index, head, bodies
        self.next = 0
        self.buf = bytearray()
        self.sent_at = 0.0
        self.finished = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # one write per request, never held back by Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_next(self) -> None:
        s = self.sender
        if self.finished:
            return
        if self.next >= len(self.bodies) or time.perf_counter() > s.deadline:
            self.finished = True
            s.shard_done()
            return
        if self.next - s.floor() >= s.window:
            s.blocked.append(self)
            return
        _samples, body = self.bodies[self.next]
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.head + b"%d\r\n\r\n" % len(body) + body)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        parsed = _response_end(self.buf)
        if parsed is None:
            return
        end, status, body = parsed
        del self.buf[:end]
        s = self.sender
        samples, _ = self.bodies[self.next]
        if 200 <= status < 300:
            s.latencies.append(time.perf_counter() - self.sent_at)
            s.samples_ok += samples
            s.bodies_ok += 1
        else:
            s.error_count += 1
            if len(s.errors) < 5:
                s.errors.append(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.next += 1
        s.completed[self.index] = self.next
        self.send_next()
        s.progress()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self.sender.error_count += 1
            self.sender.errors.append(f"shard {self.index}: connection lost ({exc})")
            self.finished = True
            self.sender.shard_done()


def _same(protocol: _Shard) -> _Shard:
    return protocol


async def remote_write(spec: dict[str, Any]) -> dict[str, Any]:
    shards_bodies = [read_bodies(Path(p)) for p in spec["files"]]
    host, port = spec["host"], spec["port"]
    head = (
        f"POST {spec.get('path', '/api/v1/write')} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\n"
        "X-Prometheus-Remote-Write-Version: 0.1.0\r\nUser-Agent: scalelab-bench\r\n"
        "Content-Length: "
    ).encode()
    loop = asyncio.get_running_loop()
    sender = _Sender(int(spec.get("window", 8)), math.inf)
    for i, bodies in enumerate(shards_bodies):
        shard = _Shard(sender, i, head, bodies)
        await asyncio.wait_for(
            loop.create_connection(functools.partial(_same, shard), host, port), 10
        )
        sender.shards.append(shard)
        sender.completed.append(0)
    sender.remaining = len(sender.shards)
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    sender.deadline = start + float(spec["timeout"])
    for shard in sender.shards:
        shard.send_next()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(sender.done), float(spec["timeout"]) + 30)
    end = time.perf_counter()
    for shard in sender.shards:
        if shard.transport is not None:
            shard.transport.close()
    total_bodies = sum(len(b) for b in shards_bodies)
    total_samples = sum(n for b in shards_bodies for n, _ in b)
    return {
        "shards": len(shards_bodies),
        "bodies": total_bodies,
        "bodies_ok": sender.bodies_ok,
        "samples": total_samples,
        "samples_ok": sender.samples_ok,
        "errors": sender.error_count,
        "error_examples": sender.errors,
        "complete": sender.bodies_ok + sender.error_count == total_bodies,
        "seconds": round(end - start, 3),
        "start_wall": time.time() - (time.perf_counter() - start),
        "request_latency": percentiles(sender.latencies),
        "client_cpu_seconds": round(_cpu_seconds() - cpu0, 3),
    }


# -- scrape targets ------------------------------------------------------------------------------


class _Target(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            del self.buf[: end + 4]  # GETs only: no request body
            assert self.transport is not None
            self.transport.write(self.response)


async def targets(spec: dict[str, Any]) -> None:
    body = exposition(int(spec["pods"]))
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: _Target(response), HOST, 0)
        for _ in range(int(spec["count"]))
    ]
    ports = [int(s.sockets[0].getsockname()[1]) for s in servers]
    print(json.dumps({"ports": ports, "body_bytes": len(body)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for s in servers:
        s.close()


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> int:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    _install_fast_loop()
    if mode == "remote-write":
        result = asyncio.run(remote_write(spec))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    elif mode == "targets":
        asyncio.run(targets(spec))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
