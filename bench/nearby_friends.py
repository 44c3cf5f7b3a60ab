"""Nearby friends bench: WebSocket connections, location updates/s, pushes/s, latency, memory.

    python bench/nearby_friends.py [--quick] [--clients N] [--friends F] [--interval S]
                                   [--window S] [--workers W] [--pubsub memory,redis]

(`--pubsub` may also name `redis_pubsub_only`: pub/sub on Redis, location cache in-process.)

What one run measures, for the in-process pub/sub and for Redis pub/sub side by side:

- a social graph over a population 10x the number of connected clients: every connected user
  gets about F friends (400; --quick 50), about 10% of them connected too (the book's "10% of
  friends online"); seeded straight into the server's SQLite file with
  `UserStore.bulk_create` / `bulk_befriend` before the server starts (the bearer tokens come
  back from bulk_create). Friendships among users who never connect are not seeded: no socket
  subscribes to them, so they would only cost seeding time;
- the server: `python -m scalelab serve nearby_friends` on 127.0.0.1, port 0, in a child
  process. For the Redis side SCALELAB_NEARBY_FRIENDS_PUBSUB_URL and _CACHE_URL point at
  SCALELAB_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0) and the cache keys live under a
  unique namespace, removed at the end; without a reachable Redis that side is "skipped";
- N clients (10,000; --quick 1,000): asyncio `websockets` clients split over W worker
  processes (2, so receiving the fan-out is not held to one process's core), each connecting with
  `ws://HOST:PORT/v1/ws?token=...` and waiting for its `welcome`. The time to connect them all
  and the server's RSS before and after (VmRSS of /proc/PID/status) give connections/s and
  memory per connection;
- then every client sends a `location` frame every `interval` seconds (the book's 30 s,
  compressed: 5 s; --quick 2 s), each at its own random phase, starting inside a disc of 5 km
  around a city centre and moving a few tens of metres per update, so most friends stay within
  the 5-mile radius. After a warm-up of one interval + 0.5 s (every client has a location, and knows
  its friends'), a measuring window of `window` seconds (20; --quick 5). Over it:
  - location updates/s: sent by the clients, and handled by the server (the delta of its
    /metrics counter nearby_friends_location_updates_total);
  - pushes/s: `friend_location` frames received by the clients, and the server's frames_out
    delta (every frame it wrote); split into `fresh` (a listed friend's newer updated_at: that
    friend's update), `refresh` (the same updated_at again: a server that re-sends a listed
    friend's last location, e.g. after the receiver's own move) and `appeared` (a friend not
    listed before);
  - update-to-friend latency p50/p99: client receive time - `updated_at` of fresh frames
    (updated_at is the server's clock when it took the update; same machine, same clock), and
    sender-to-friend latency (from the sender's send to the friend's receive, for pairs whose
    two clients live in the same worker process, where the send time is known);
  - CPU seconds of the server, the clients and (Redis side) Redis itself (INFO cpu), and
    pushes/s per server core: pushes/s over the server's CPU-seconds per wall second, printed
    against the book's sizing (14M pushes/s over 140 Redis servers, ~100K pushes/s each).

One JSON document goes to stdout, progress to stderr. Everything lives in one temp dir; the
server and worker processes (own process groups) are stopped, the Redis keys removed and the
temp dir deleted, also on an error, Ctrl-C or SIGTERM. A target the machine cannot reach (too
few connections, an offered load the server cannot keep up with) is reported, not asserted.
Duration on the 2-core machine: --quick about 40 s; the full run 13-17 minutes (seeding
3.8M friendships 45-120 s, connecting 10,000 sockets 3-6 minutes per side: the server spends
~18-25 ms of CPU per connection loading 400 friends and subscribing to their channels).
The full run's 5 s interval offers six times what one server core handles (it shows the
overload behaviour: superseded updates); `--interval 30 --window 60` is the book's own rate.

Internal: `--worker` runs one client worker process (spec and commands on stdin, one JSON
line per phase on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import random
import re
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import launch_scalelab, log_tail, package_version, ratio, readline, run_main  # noqa: E402
from _s3 import spawn, stop_group, tree_cpu_seconds, tree_pids, tree_rss  # noqa: E402
from scalelab.nearby_friends import schema  # noqa: E402
from scalelab.nearby_friends.protocol import LocationUpdate, encode_client  # noqa: E402
from scalelab.nearby_friends.settings import MILE_M  # noqa: E402
from scalelab.nearby_friends.users import UserStore  # noqa: E402
from scalelab.storage import sql  # noqa: E402

BACKENDS = ("memory", "redis")  # the default pair, side by side
# also selectable: pub/sub on Redis but the location cache in-process (isolates the cache's cost)
EXTRA_BACKENDS = ("redis_pubsub_only",)
REDIS_URL = os.environ.get("SCALELAB_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CENTRE = (37.7749, -122.4194)  # San Francisco
SPREAD_M = 5_000.0  # clients start and stay within this distance of CENTRE
STEP_M = 40.0  # standard deviation of a move per update, per axis
RADIUS_M = 5 * MILE_M  # the server's default radius (5 miles)
M_PER_DEG = 111_320.0
BOOK_PUSHES_PER_S = 14_000_000  # 334K updates/s x 40 online friends
BOOK_REDIS_SERVERS = 140
BOOK_PUSHES_PER_SERVER = 100_000  # "a modern Redis server ... about 100,000 pushes per second"
BOOK_INTERVAL_S = 30.0
SCRAPE_TIMEOUT_S = 60.0  # a /metrics scrape of a saturated server may take this long
HIST_STEP = math.log(1.01)  # latency histogram buckets: 1% wide
METRICS = (
    "nearby_friends_connections",
    "nearby_friends_frames_in_total",
    "nearby_friends_frames_out_total",
    "nearby_friends_frames_dropped_total",
    "nearby_friends_location_updates_total",
    "nearby_friends_location_updates_superseded_total",
    "nearby_friends_pubsub_messages_total",
)
_METRIC_LINE = re.compile(r"^(nearby_friends_\w+) (\S+)$", re.M)


def log(msg: str) -> None:
    print(f"[bench nearby_friends {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- latency histograms (mergeable across workers) -------------------------------------------------


def hist_add(hist: dict[int, int], seconds: float) -> None:
    ms = max(seconds * 1000.0, 0.001)
    bucket = math.floor(math.log(ms) / HIST_STEP)
    hist[bucket] = hist.get(bucket, 0) + 1


def hist_merge(hists: Sequence[dict[str, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def hist_summary(hist: dict[int, int]) -> dict[str, Any]:
    """p50/p99/p99.9/max in ms (each the upper edge of its 1%-wide bucket)."""
    total = sum(hist.values())
    out: dict[str, Any] = {"samples": total}
    if not total:
        return {**out, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    ordered = sorted(hist.items())
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999), ("max_ms", 1.0)):
        rank = max(1, math.ceil(q * total))
        seen = 0
        for bucket, count in ordered:
            seen += count
            if seen >= rank:
                out[name] = round(math.exp((bucket + 1) * HIST_STEP), 2)
                break
    return out


# -- plan ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    clients: int
    friends: int  # average friends of a connected user
    online_fraction: float  # connected / population: the share of a user's friends online
    interval: float  # seconds between two location updates of one client
    warmup: float  # seconds from the first updates to the window
    window: float  # measuring window, seconds
    workers: int
    connect_concurrency: int  # handshakes in flight per worker
    backends: tuple[str, ...]
    seed: int

    @property
    def population(self) -> int:
        return max(self.clients + 1, round(self.clients / self.online_fraction))

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        backends = tuple(s.strip() for s in args.pubsub.split(",") if s.strip())
        unknown = set(backends) - set(BACKENDS) - set(EXTRA_BACKENDS)
        if unknown or not backends:
            known = ", ".join((*BACKENDS, *EXTRA_BACKENDS))
            raise SystemExit(f"unknown or no --pubsub {sorted(unknown)} (known: {known})")
        interval = args.interval or (2.0 if quick else 5.0)
        if interval < 0.6:
            raise SystemExit("--interval below 0.6 s runs into the server's rate limit (2/s)")
        return Plan(
            quick=quick,
            clients=args.clients or (1_000 if quick else 10_000),
            friends=args.friends or (50 if quick else 400),
            online_fraction=0.1,
            interval=interval,
            warmup=interval + 0.5,
            window=args.window or (5.0 if quick else 20.0),
            workers=max(1, args.workers),
            connect_concurrency=args.connect_concurrency,
            backends=backends,
            seed=args.seed,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "clients": self.clients,
            "population": self.population,
            "friends_per_connected_user": self.friends,
            "online_fraction_of_friends": self.online_fraction,
            "update_interval_seconds": self.interval,
            "book_update_interval_seconds": BOOK_INTERVAL_S,
            "time_compression": round(BOOK_INTERVAL_S / self.interval, 2),
            "offered_updates_per_s": round(self.clients / self.interval, 1),
            "warmup_seconds": self.warmup,
            "window_seconds": self.window,
            "client_workers": self.workers,
            "connect_concurrency_per_worker": self.connect_concurrency,
            "pubsub": list(self.backends),
            "movement": f"start uniformly within {SPREAD_M / 1000:g} km of {CENTRE}, then a "
            f"Gaussian step of {STEP_M:g} m per axis per update, kept inside that disc",
            "radius_m": round(RADIUS_M, 1),
            "seed": self.seed,
        }


# -- the social graph ------------------------------------------------------------------------------


@dataclass
class Graph:
    connected: list[tuple[int, str]]  # (user id, token) of the users that connect
    info: dict[str, Any]


def seed_graph(db_path: Path, plan: Plan) -> Graph:
    """Users and friendships, straight into the SQLite file the server will open.

    Connected users: about friends * online_fraction friends among each other (random pairs)
    and friends * (1 - online_fraction) among the users who never connect (a random sample
    each)."""
    began = time.perf_counter()
    rng = random.Random(plan.seed)
    engine = sql.create_engine(sql.sqlite_url(db_path))
    try:
        schema.create_schema(engine)
        store = UserStore(engine)
        users = store.bulk_create(plan.population, "bench")
        created = time.perf_counter()
        rng.shuffle(users)
        connected = users[: plan.clients]
        online_ids = [u for u, _ in connected]
        offline_ids = [u for u, _ in users[plan.clients :]]
        online_pairs = round(plan.clients * plan.friends * plan.online_fraction / 2)
        online_pairs = min(online_pairs, plan.clients * (plan.clients - 1) // 2)
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < online_pairs:
            a, b = rng.sample(online_ids, 2)
            pairs.add((a, b) if a < b else (b, a))
        edges = sorted(pairs)
        per_user = min(len(offline_ids), round(plan.friends * (1 - plan.online_fraction)))
        for user in online_ids:
            edges.extend((user, o) for o in rng.sample(offline_ids, per_user))
        online_degree = Counter[int]()
        for a, b in pairs:
            online_degree[a] += 1
            online_degree[b] += 1
        del pairs
        generated = time.perf_counter()
        slice_pairs = 500_000  # bulk_befriend: "call it per slice" beyond a few million
        for i in range(0, len(edges), slice_pairs):
            store.bulk_befriend(edges[i : i + slice_pairs])
        befriended = time.perf_counter()
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    online = [online_degree[u] for u in online_ids]
    return Graph(
        connected=connected,
        info={
            "population": plan.population,
            "connected_users": len(connected),
            "friendship_pairs": len(edges),
            "friends_per_connected_user_avg": round(per_user + sum(online) / len(online), 1),
            "online_friends_per_connected_user": {
                "avg": round(sum(online) / len(online), 2),
                "min": min(online),
                "max": max(online),
            },
            "offline_friends_per_connected_user": per_user,
            "database_mb": round(db_path.stat().st_size / 2**20, 1),
            "seconds": {
                "users": round(created - began, 2),
                "graph": round(generated - created, 2),
                "friendships": round(befriended - generated, 2),
                "total": round(time.perf_counter() - began, 2),
            },
            "how": "UserStore.bulk_create + bulk_befriend (slices of 500,000 pairs) into the "
            "server's SQLite file before it starts; online-online friendships are random pairs "
            "(Poisson degrees), each connected user's offline friends a random sample",
        },
    )


# -- the server ------------------------------------------------------------------------------------


class Server:
    """`python -m scalelab serve nearby_friends` on port 0, in its own process group."""

    def __init__(self, root: Path, backend: str, db_url: str, env: dict[str, str]) -> None:
        self.sdir = root / f"server-{backend}"
        self.log_path = self.sdir / "server.log"
        self.env = {
            "SCALELAB_NEARBY_FRIENDS_DATABASE_URL": db_url,
            # The workers are gone when it stops: no clients to wait for while draining.
            "SCALELAB_NEARBY_FRIENDS_DRAIN_SECONDS": "1",
            **env,
        }
        self.info: dict[str, Any] = {}
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.http: httpx.Client | None = None
        self._stopper: threading.Thread | None = None

    def start(self) -> Server:
        data = self.sdir / "data"
        data.mkdir(parents=True)
        self._log = self.log_path.open("wb")
        began = time.perf_counter()
        self.proc, url_of, info = launch_scalelab(
            "nearby_friends", self.sdir, data, self._log, self.env
        )
        self.info.update(info)
        try:
            self.url = url_of(60)
            # No keep-alive: uvicorn closes an idle connection after 5 s, and a scrape sent as
            # it does so would fail; a new connection per request costs the server little.
            self.http = httpx.Client(
                base_url=self.url,
                timeout=180,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
            deadline = time.monotonic() + 60
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with code {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if self.http.get("/healthz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not become healthy in 60 s")
                time.sleep(0.05)
        except Exception as exc:
            self._log.flush()
            raise RuntimeError(f"{exc}; server log tail:\n{log_tail(self.log_path)}") from exc
        self.info["startup_seconds"] = round(time.perf_counter() - began, 2)
        return self

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/ws"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        assert self.proc is not None
        return tree_rss(tree_pids(self.proc.pid))

    def metrics(self) -> dict[str, float]:
        """The nearby_friends_* figures of /metrics; waits up to SCRAPE_TIMEOUT_S (a saturated
        server answers it behind its backlog)."""
        assert self.http is not None
        try:
            reply = self.http.get("/metrics", timeout=SCRAPE_TIMEOUT_S)
        except httpx.TimeoutException:
            raise
        except httpx.TransportError:  # once more, on a new connection
            reply = self.http.get("/metrics", timeout=SCRAPE_TIMEOUT_S)
        reply.raise_for_status()
        return {m.group(1): float(m.group(2)) for m in _METRIC_LINE.finditer(reply.text)}

    def stop_soon(self) -> None:
        """stop() in a thread: the next side's server starts meanwhile; join() waits for it."""
        if self._stopper is None:
            self._stopper = threading.Thread(target=self.stop, name="stop nearby_friends")
            self._stopper.start()

    def join(self) -> None:
        if self._stopper is not None:
            self._stopper.join()

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.proc is not None and self.proc.returncode is None:
            began = time.perf_counter()
            self.info["exit_code"] = stop_group(self.proc, grace=10)
            self.info["stop_seconds"] = round(time.perf_counter() - began, 2)
        if self._log is not None:
            self._log.close()
            self._log = None


# -- Redis -----------------------------------------------------------------------------------------


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=3)


def redis_unreachable() -> str | None:
    """None when Redis answers, else why not."""
    try:
        client = redis_client()
    except ImportError:
        return "redis-py is not installed (pip install 'scalelab[redis]')"
    try:
        client.ping()
        return None
    except Exception as exc:
        return f"Redis unreachable at {REDIS_URL}: {type(exc).__name__}: {exc}"
    finally:
        client.close()


def redis_stats(client: Any) -> dict[str, float]:
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    return {
        "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        "cpu_main_thread": float(cpu.get("used_cpu_user_main_thread", 0.0))
        + float(cpu.get("used_cpu_sys_main_thread", 0.0)),
        "publish_calls": float(stats.get("cmdstat_publish", {}).get("calls", 0)),
        "set_calls": float(stats.get("cmdstat_set", {}).get("calls", 0)),
    }


def redis_clear(namespace: str) -> int:
    """Delete the run's location-cache keys; how many there were."""
    client = redis_client()
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
        return removed
    finally:
        client.close()


# -- client workers (the parent's side) ------------------------------------------------------------


class Worker:
    """One client worker process: JSON lines in on stdin, JSON lines out on stdout."""

    def __init__(self, index: int, root: Path) -> None:
        self.index = index
        self.log_path = root / f"worker-{index}.log"
        self._log = self.log_path.open("wb")
        self.proc = spawn(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            log=self._log,
            stdin_pipe=True,
            stdout_pipe=True,
        )

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(message) + b"\n")
        self.proc.stdin.flush()

    def expect(self, event: str, deadline: float) -> dict[str, Any]:
        line = readline(self.proc, deadline)
        if not line:
            self._log.flush()
            raise RuntimeError(
                f"worker {self.index} sent no '{event}' in time (exit code {self.proc.poll()}); "
                f"log tail:\n{log_tail(self.log_path)}"
            )
        message: dict[str, Any] = orjson.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"worker {self.index}: expected {event}, got {message}")
        return message

    def stop(self) -> None:
        if self.proc.returncode is None:
            stop_group(self.proc, grace=5)
        self._log.close()


def _delta(a: dict[str, float], b: dict[str, float], key: str) -> float:
    return b.get(key, 0.0) - a.get(key, 0.0)


def _per_s(value: float | None, seconds: float) -> float | None:
    if value is None:
        return None
    return round(value / seconds, 1) if seconds > 0 else 0.0


Jiffies = tuple[int, int, int]  # (busy, total, steal) over all cores, from /proc/stat


def machine_jiffies() -> Jiffies | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields), fields[7]


def machine_share(a: Jiffies | None, b: Jiffies | None) -> dict[str, float | None]:
    """How busy all cores were between a and b, and how much the hypervisor took (steal: a
    VM's cores running someone else's work, which slows every process here)."""
    if a is None or b is None or b[1] <= a[1]:
        return {"machine_busy": None, "machine_steal": None}
    total = b[1] - a[1]
    return {
        "machine_busy": round((b[0] - a[0]) / total, 2),
        "machine_steal": round((b[2] - a[2]) / total, 2),
    }


@dataclass
class Snapshot:
    """The server's CPU, Redis's and the machine's counters at one moment (on schedule), then
    the server's /metrics (which a saturated server answers late, or not in time)."""

    at: float  # perf_counter when CPU, Redis and /proc/stat were read
    cpu: float
    redis: dict[str, float]
    machine: Jiffies | None
    metrics: dict[str, float] | None  # None: the scrape failed (see scrape_error)
    metrics_at: float  # perf_counter when the /metrics reply was in
    scrape_ms: float
    scrape_error: str | None

    @staticmethod
    def take(server: Server, rds: Any) -> Snapshot:
        at = time.perf_counter()
        cpu, machine = server.cpu(), machine_jiffies()
        redis = redis_stats(rds) if rds is not None else {}
        began = time.perf_counter()
        metrics: dict[str, float] | None = None
        error = None
        try:
            metrics = server.metrics()
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        return Snapshot(
            at, cpu, redis, machine, metrics, done, round((done - began) * 1000, 1), error
        )


def run_backend(
    backend: str,
    plan: Plan,
    graph: Graph,
    db_url: str,
    root: Path,
    servers: list[Server],
) -> dict[str, Any]:
    """One server (this pub/sub), all clients connected, one measuring window. The server is
    left stopping in the background (in `servers`); the previous sides' servers are waited
    for before the clients connect, so no measured phase overlaps a shutdown."""
    out: dict[str, Any] = {}
    env: dict[str, str] = {}
    namespace = ""
    rds: Any = None
    if backend != "memory":
        namespace = f"bench-nf-{secrets.token_hex(4)}"
        env = {"SCALELAB_NEARBY_FRIENDS_PUBSUB_URL": REDIS_URL}
        if backend == "redis":
            env["SCALELAB_NEARBY_FRIENDS_CACHE_URL"] = REDIS_URL
            env["SCALELAB_NEARBY_FRIENDS_CACHE_NAMESPACE"] = namespace
        rds = redis_client()
        out["redis"] = {
            "url": REDIS_URL,
            "version": rds.info("server").get("redis_version"),
            "pubsub": True,
            "location_cache": backend == "redis",
        }
        if backend == "redis":
            out["redis"]["cache_namespace"] = namespace
    mine: list[Server] = []

    def clear_keys() -> None:
        """After the server has stopped (it could still write a key while it drains)."""
        for server in mine:
            server.stop_soon()
            server.join()
        out["redis"]["keys_removed"] = redis_clear(namespace)

    marks = [("start", time.perf_counter())]
    with contextlib.ExitStack() as stack:
        if rds is not None:
            stack.callback(rds.close)
            if backend == "redis":
                stack.callback(clear_keys)
        # The workers start (and import) while the server starts; they get their spec after.
        workers: list[Worker] = []
        for i in range(plan.workers):
            worker = Worker(i, root)
            stack.callback(worker.stop)
            workers.append(worker)
        log(f"{backend}: starting the server")
        server = Server(root, backend, db_url, env)
        servers.append(server)
        mine.append(server)
        stack.callback(server.stop_soon)
        server.start()
        out["server"] = server.info
        marks.append(("server_start", time.perf_counter()))
        time.sleep(0.3)  # settle: the lifespan's first history flush and tick
        rss_before = server.rss()

        # -- connect ------------------------------------------------------------------------
        for i, worker in enumerate(workers):
            worker.send(
                {
                    "ws_url": server.ws_url,
                    "users": graph.connected[i :: plan.workers],
                    "interval": plan.interval,
                    "concurrency": plan.connect_concurrency,
                    "seed": plan.seed * 1000 + i,
                }
            )
        for w in workers:
            w.expect("ready", time.monotonic() + 60)
        for previous in servers:
            previous.join()
        marks.append(("workers_ready", time.perf_counter()))
        log(f"{backend}: connecting {plan.clients} clients from {plan.workers} workers")
        began = time.perf_counter()
        cpu_connect0, mach_connect0 = server.cpu(), machine_jiffies()
        for w in workers:
            w.send({"go": "connect"})
        connect_budget = 60 + plan.clients * 0.05
        connected = [w.expect("connected", time.monotonic() + connect_budget) for w in workers]
        connect_seconds = time.perf_counter() - began
        marks.append(("connect", time.perf_counter()))
        connect_cpu = server.cpu() - cpu_connect0
        connect_machine = machine_share(mach_connect0, machine_jiffies())
        established = sum(c["connected"] for c in connected)
        errors: Counter[str] = Counter()
        for c in connected:
            errors.update(c["errors"])
        time.sleep(0.3)
        rss_connected = server.rss()
        m_connected: dict[str, float] = {}
        with contextlib.suppress(httpx.HTTPError):  # only for the gauge; None if it is late
            m_connected = server.metrics()
        out["connections"] = {
            "target": plan.clients,
            "established": established,
            "failed": plan.clients - established,
            "failure_kinds": dict(errors),
            "failure_sample": [s for c in connected for s in c["error_sample"]][:5],
            "server_gauge": m_connected.get("nearby_friends_connections"),
            "connect_seconds": round(connect_seconds, 2),
            "connections_per_s": _per_s(established, connect_seconds),
            "server_cpu_seconds": round(connect_cpu, 2),
            "server_cpu_ms_per_connection": round(1000 * connect_cpu / max(1, established), 2),
            "clients_cpu_seconds": round(sum(c["cpu"] for c in connected), 2),
            **connect_machine,
            "handshake_to_welcome_ms": hist_summary(
                hist_merge([c["handshake_hist"] for c in connected])
            ),
            "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        }
        log(f"{backend}: {established} connected in {connect_seconds:.1f} s; {dict(errors)}")
        if established == 0 or not server.alive():
            raise RuntimeError(
                f"no clients connected (server alive: {server.alive()}); server log tail:\n"
                f"{log_tail(server.log_path)}"
            )

        # -- updates: warm-up, then the window ------------------------------------------------
        send_at = time.time() + 0.5
        window_start = send_at + plan.warmup
        window_end = window_start + plan.window
        for w in workers:
            w.send({"send_at": send_at, "window_start": window_start, "window_end": window_end})
        log(f"{backend}: updates every {plan.interval:g} s; window {plan.window:g} s")
        time.sleep(max(0.0, window_start - time.time()))
        snap0 = Snapshot.take(server, rds)
        marks.append(("warmup", time.perf_counter()))
        time.sleep(max(0.0, window_end - time.time()))
        snap1 = Snapshot.take(server, rds)
        marks.append(("window", time.perf_counter()))
        rss_end = server.rss()
        for w in workers:  # they went on sending until now: the server's span is loaded too
            w.send({"go": "report"})
        results = [w.expect("result", time.monotonic() + 120) for w in workers]
        alive = server.alive()
        marks.append(("results", time.perf_counter()))
        log(f"{backend}: done; stopping the server")
        for w in workers:  # they have reported: stop them before the server drains
            w.stop()
    marks.append(("stop", time.perf_counter()))
    out["phase_seconds"] = {
        name: round(t - marks[i][1], 2) for i, (name, t) in enumerate(marks[1:])
    }

    win = plan.window
    # CPU and Redis figures over the span between the two snapshots (the window); the
    # server's counters over the span between the two /metrics replies (late when the server
    # is saturated: the clients go on sending until the second is in), scaled to the window;
    # client figures over the window.
    span = snap1.at - snap0.at
    server_cpu = snap1.cpu - snap0.cpu
    cores = server_cpu / span
    sent = sum(r["sent"] for r in results)
    frames: Counter[str] = Counter()
    for r in results:
        frames.update(r["frames"])
    fresh = sum(r["fresh"] for r in results)
    refresh = sum(r["refresh"] for r in results)
    appeared = sum(r["appeared"] for r in results)
    pushes = frames.get("friend_location", 0)
    m0, m1 = snap0.metrics, snap1.metrics
    handled = superseded = frames_out = deliveries = dropped = None
    if m0 is not None and m1 is not None and snap1.metrics_at > snap0.metrics_at:
        scale = win / (snap1.metrics_at - snap0.metrics_at)
        handled = _delta(m0, m1, "nearby_friends_location_updates_total") * scale
        superseded = _delta(m0, m1, "nearby_friends_location_updates_superseded_total") * scale
        frames_out = _delta(m0, m1, "nearby_friends_frames_out_total") * scale
        deliveries = _delta(m0, m1, "nearby_friends_pubsub_messages_total") * scale
        dropped = _delta(m0, m1, "nearby_friends_frames_dropped_total")
    client_cpu = sum(r["cpu_window"] for r in results)
    latency = hist_summary(hist_merge([r["latency_hist"] for r in results]))
    e2e = hist_summary(hist_merge([r["e2e_hist"] for r in results]))
    lag = hist_summary(hist_merge([r["send_lag_hist"] for r in results]))
    pushes_per_s = pushes / win
    per_core = pushes_per_s / cores if cores > 0 else None
    established_ = out["connections"]["established"]
    out["memory"] = {
        "server_rss_before_mb": round(rss_before / 2**20, 1),
        "server_rss_connected_mb": round(rss_connected / 2**20, 1),
        "server_rss_end_mb": round(rss_end / 2**20, 1),
        "per_connection_kb": round((rss_connected - rss_before) / established_ / 1024, 1),
        "per_connection_kb_after_window": round((rss_end - rss_before) / established_ / 1024, 1),
    }
    out["window_seconds"] = win
    out["location_updates"] = {
        "offered_per_s": round(established_ / plan.interval, 1),
        "sent_per_s": _per_s(sent, win),
        "handled_per_s": _per_s(handled, win),
        "handled_over_sent": ratio(handled, sent),
        # replaced by a newer update of the same client before the server got to them: the
        # server sheds load this way when it cannot keep up
        "superseded_per_s": _per_s(superseded, win),
    }
    out["pushes"] = {
        "friend_location_received_per_s": _per_s(pushes, win),
        "fresh_per_s": _per_s(fresh, win),
        "refresh_per_s": _per_s(refresh, win),
        "appeared_per_s": _per_s(appeared, win),
        "server_frames_out_per_s": _per_s(frames_out, win),
        "server_pubsub_deliveries_per_s": _per_s(deliveries, win),
        "fresh_pushes_per_update": ratio(fresh, handled),
        "server_frames_dropped": None if dropped is None else int(dropped),
        "client_frames_by_type": dict(frames),
    }
    out["latency_ms"] = {
        "update_to_friend": latency,
        "sender_to_friend_same_worker": e2e,
        "client_send_lag": lag,
    }
    out["cpu"] = {
        "server_seconds": round(server_cpu, 2),
        "server_cores_busy": round(cores, 2),
        "clients_seconds": round(client_cpu, 2),
        **machine_share(snap0.machine, snap1.machine),
        "span_seconds": round(span, 2),
        "metrics_span_seconds": round(snap1.metrics_at - snap0.metrics_at, 2),
        "metrics_scrape_ms": [snap0.scrape_ms, snap1.scrape_ms],
    }
    scrape_errors = [e for e in (snap0.scrape_error, snap1.scrape_error) if e]
    if scrape_errors:
        out["cpu"]["metrics_scrape_errors"] = scrape_errors
    out["per_core"] = {
        "pushes_per_s_per_server_core": round(per_core, 1) if per_core else None,
        "frames_out_per_s_per_server_core": (
            round(frames_out / win / cores, 1) if cores and frames_out is not None else None
        ),
        "book_pushes_per_s_per_redis_server": BOOK_PUSHES_PER_SERVER,
        "pushes_per_core_over_book_per_server": ratio(per_core, BOOK_PUSHES_PER_SERVER),
    }
    r0, r1 = snap0.redis, snap1.redis
    if r0 and r1:
        redis_cpu = r1["cpu"] - r0["cpu"]
        redis_cores = redis_cpu / span
        out["redis"].update(
            cpu_seconds=round(redis_cpu, 2),
            cpu_main_thread_seconds=round(r1["cpu_main_thread"] - r0["cpu_main_thread"], 2),
            cores_busy=round(redis_cores, 2),
            publish_per_s=_per_s(r1["publish_calls"] - r0["publish_calls"], span),
            set_per_s=_per_s(r1["set_calls"] - r0["set_calls"], span),
        )
        both = cores + redis_cores
        out["per_core"]["pushes_per_s_per_core_server_plus_redis"] = (
            round(pushes_per_s / both, 1) if both else None
        )
        out["per_core"]["publishes_per_redis_cpu_second"] = (
            round((r1["publish_calls"] - r0["publish_calls"]) / redis_cpu, 1) if redis_cpu else None
        )
    why = []
    if handled is not None and sent and handled < 0.95 * sent:
        why.append(f"the server handled {handled:.0f} of {sent} updates sent in the window")
    if dropped:
        why.append(f"{dropped:.0f} frames dropped by the server (slow-client outbox full)")
    if latency["p50_ms"] is not None and latency["p50_ms"] > 1000 * plan.interval / 2:
        why.append("median latency above half the update interval: queues are growing")
    if lag["p50_ms"] is not None and lag["p50_ms"] > 100:
        why.append("the clients send late (median send lag > 100 ms): client-bound")
    if cores > 0.9:
        why.append(f"the server used {cores:.2f} cores (one event loop: at most ~1)")
    # Without the server's counters and with no other sign, whether it kept up is unknown.
    out["saturated"] = True if why else (None if handled is None else False)
    out["saturation_signs"] = why
    if why and handled:
        # The interval at which this many clients would offer what the server did handle.
        out["sustainable_interval_estimate_s"] = round(established_ / (handled / win), 1)
    out["closed_unexpectedly"] = sum(r["closed"] for r in results)
    out["server_alive_after"] = alive
    return out


# -- report ----------------------------------------------------------------------------------------


HEADLINE = (
    ("connections", "established"),
    ("connections", "connect_seconds"),
    ("location_updates", "handled_per_s"),
    ("pushes", "friend_location_received_per_s"),
    ("pushes", "fresh_per_s"),
    ("pushes", "server_frames_out_per_s"),
    ("latency_ms", "update_to_friend", "p50_ms"),
    ("latency_ms", "update_to_friend", "p99_ms"),
    ("latency_ms", "sender_to_friend_same_worker", "p50_ms"),
    ("latency_ms", "sender_to_friend_same_worker", "p99_ms"),
    ("memory", "per_connection_kb"),
    ("cpu", "server_cores_busy"),
    ("per_core", "pushes_per_s_per_server_core"),
    ("per_core", "pushes_per_core_over_book_per_server"),
)


def _dig(d: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def side_by_side(runs: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of every pub/sub side next to each other, and X / memory."""
    sides = [b for b in (*BACKENDS, *EXTRA_BACKENDS) if b in runs or b in BACKENDS]
    table: dict[str, Any] = {}
    for path in HEADLINE:
        row = {b: _dig(runs.get(b), path) for b in sides}
        for b in sides[1:]:
            row[f"{b}_over_memory"] = ratio(row[b], row["memory"])
        table[".".join(path)] = row
    table["saturated"] = {b: _dig(runs.get(b), ("saturated",)) for b in sides}
    table["redis_cores_busy"] = {
        b: _dig(runs.get(b), ("redis", "cores_busy")) for b in sides if b != "memory"
    }
    return table


NOTES = [
    "pushes = friend_location frames the clients received in the window, in three kinds: "
    "fresh (a friend the client already listed, with a newer updated_at: that friend's update; "
    "the latency samples), refresh (the same updated_at again: a server that re-sends a "
    "listed friend's last location, e.g. after the receiver's own move; 0 when Session._move "
    "sends only changes of range), and appeared (a friend not listed before: first sight, "
    "back in range, or an older location our own move brought into range; not timed). "
    "server_frames_out counts every frame the server wrote",
    "update_to_friend latency = client receive time - updated_at (the server's clock when it "
    "took the update: the sender's leg to the server is not in it); sender_to_friend = from "
    "the sender's send() to the friend's receive, for pairs whose two clients share a worker",
    "client figures are over the window; server figures (handled updates, frames_out, CPU, "
    "Redis INFO) over the span between two /metrics scrapes at the window's ends (a scrape "
    "waits behind a saturated server's backlog), scaled to the window; clients keep sending "
    "until the second scrape is in",
    "pushes_per_s_per_server_core = pushes/s / (server CPU-seconds per wall second); the "
    "server is one Python process (one event loop), so it can use about one core. It is a "
    "capacity figure only when the server is busy (cores_busy near 1): at light load the "
    "fixed costs (session ticks every 2 s, history flushes) weigh on few pushes",
    "the book's 100K pushes/s is per Redis pub/sub server; here Redis delivers each update "
    "once to the single server process subscribed to its channel (publish_per_s = updates), "
    "and the fan-out to the ~10% online friends happens in that process "
    "(server_pubsub_deliveries_per_s); pushes_per_s_per_core_server_plus_redis charges "
    "Redis's CPU too",
    "server, clients and Redis share the machine's cores (machine_busy: share of all cores "
    "busy); the clients are asyncio websockets clients without compression or keepalive "
    "pings, on uvloop when installed",
    "memory per connection = (server RSS with all connected - RSS before) / connections: the "
    "socket, the session and one pub/sub subscription per friend (online or not)",
    "friendships among users who never connect are not seeded: no socket subscribes to them",
    "saturated (see saturation_signs) means the offered load was more than the server kept up "
    "with: the rates are then its capacity, latency is queueing, and "
    "sustainable_interval_estimate_s = connections / handled updates per second",
]


def run(plan: Plan) -> tuple[dict[str, Any], bool]:
    began = time.perf_counter()
    nofile = raise_nofile()
    report: dict[str, Any] = {
        "bench": "nearby_friends",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile_limit": list(nofile),
        },
        "versions": {
            "scalelab": package_version("scalelab"),
            "websockets": package_version("websockets"),
            "uvicorn": package_version("uvicorn"),
            "uvloop": package_version("uvloop"),
            "redis_py": package_version("redis"),
            "sqlalchemy": package_version("sqlalchemy"),
        },
        "params": plan.describe(),
        "book": {
            "pushes_per_s": BOOK_PUSHES_PER_S,
            "redis_servers": BOOK_REDIS_SERVERS,
            "pushes_per_s_per_redis_server": BOOK_PUSHES_PER_SERVER,
            "update_interval_seconds": BOOK_INTERVAL_S,
        },
    }
    ok = True
    runs: dict[str, Any] = {}
    servers: list[Server] = []
    root = Path(tempfile.mkdtemp(prefix="scalelab-bench-nearby-", dir="/tmp"))
    try:
        db_path = root / "db" / "nearby_friends.db"
        db_path.parent.mkdir()
        log(
            f"seeding {plan.population} users, ~{plan.friends} friends for each of "
            f"{plan.clients} connected users"
        )
        graph = seed_graph(db_path, plan)
        report["graph"] = graph.info
        log(f"seeded in {graph.info['seconds']['total']} s")
        db_url = sql.sqlite_url(db_path)
        for backend in plan.backends:
            if backend != "memory" and (why := redis_unreachable()):
                log(f"redis: skipped ({why})")
                runs[backend] = {"skipped": why}
                continue
            try:
                runs[backend] = run_backend(backend, plan, graph, db_url, root, servers)
                ok = ok and runs[backend]["server_alive_after"]
            except Exception as exc:
                ok = False
                runs[backend] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{backend} failed: {exc}")
    finally:
        for server in servers:
            server.stop_soon()  # no-op unless an error skipped it
            server.join()
        shutil.rmtree(root, ignore_errors=True)
    report["side_by_side"] = side_by_side(runs)
    report["runs"] = runs
    report["notes"] = NOTES
    report["ok"] = ok
    report["duration_seconds"] = round(time.perf_counter() - began, 1)
    return report, ok


# -- the worker process ----------------------------------------------------------------------------


@dataclass
class WorkerState:
    interval: float
    window_start: float = math.inf
    window_end: float = math.inf
    sent: int = 0
    fresh: int = 0
    refresh: int = 0
    appeared: int = 0
    closed: int = 0
    frames: Counter[str] = field(default_factory=Counter)
    latency: dict[int, int] = field(default_factory=dict)
    e2e: dict[int, int] = field(default_factory=dict)
    send_lag: dict[int, int] = field(default_factory=dict)
    handshake: dict[int, int] = field(default_factory=dict)
    # user id -> {lat sent: send time}, the last few of this worker's own clients
    sent_at: dict[int, dict[float, float]] = field(default_factory=dict)


class SimClient:
    """One simulated phone: a socket, a position, and the friends' updated_at seen so far."""

    __slots__ = ("user_id", "token", "lat", "lng", "ws", "seen", "rng")

    def __init__(self, user_id: int, token: str, rng: random.Random) -> None:
        self.user_id = user_id
        self.token = token
        self.rng = rng
        r = SPREAD_M * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        self.lat, self.lng = _offset(CENTRE, r * math.cos(a), r * math.sin(a))
        self.ws: Any = None
        self.seen: dict[int, float] = {}

    def move(self) -> None:
        dy, dx = self.rng.gauss(0, STEP_M), self.rng.gauss(0, STEP_M)
        lat, lng = _offset((self.lat, self.lng), dy, dx)
        ny, nx = _metres_from_centre(lat, lng)
        if math.hypot(ny, nx) > SPREAD_M:  # stay in the disc: step the other way
            lat, lng = _offset((self.lat, self.lng), -dy, -dx)
        self.lat, self.lng = lat, lng


def _offset(origin: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat = origin[0] + north_m / M_PER_DEG
    lng = origin[1] + east_m / (M_PER_DEG * math.cos(math.radians(origin[0])))
    return lat, lng


def _metres_from_centre(lat: float, lng: float) -> tuple[float, float]:
    return (lat - CENTRE[0]) * M_PER_DEG, (lng - CENTRE[1]) * M_PER_DEG * math.cos(
        math.radians(CENTRE[0])
    )


async def _connect(
    c: SimClient, ws_url: str, sem: asyncio.Semaphore, st: WorkerState, errors: Counter[str]
) -> str | None:
    from websockets.asyncio.client import connect

    async with sem:
        t0 = time.perf_counter()
        try:
            ws = await connect(
                f"{ws_url}?token={c.token}",
                compression=None,
                ping_interval=None,
                proxy=None,
                open_timeout=120,
                close_timeout=1,
                max_queue=256,
            )
        except Exception as exc:
            errors[type(exc).__name__] += 1
            return f"connect: {type(exc).__name__}: {exc}"
        try:
            first = orjson.loads(await asyncio.wait_for(ws.recv(), 120))
        except Exception as exc:
            errors[f"welcome {type(exc).__name__}"] += 1
            await ws.close()
            return f"welcome: {type(exc).__name__}: {exc}"
        if first.get("type") != "welcome":
            errors[f"first frame {first.get('type')}"] += 1
            await ws.close()
            return f"first frame: {first}"
        hist_add(st.handshake, time.perf_counter() - t0)
        for f in first.get("friends", ()):
            c.seen[f["user_id"]] = f["updated_at"]
        c.ws = ws
        return None


async def _reader(c: SimClient, st: WorkerState) -> None:
    """Count frames; `seen` holds the friends the client lists (shown), with the last
    updated_at pushed for each. A shown friend's location with a newer updated_at can only be
    that friend's update (fresh: a latency sample); the same updated_at again is the server
    re-sending it after our own move (refresh); a friend not shown before (first sight, back in
    range, or our own move bringing an older location into range) is `appeared`, not timed."""
    seen = c.seen
    sent_at = st.sent_at
    try:
        async for message in c.ws:
            now = time.time()
            data = orjson.loads(message)
            kind = data["type"]
            counting = st.window_start <= now < st.window_end
            if kind == "friend_location":
                friend = data["user_id"]
                updated = data["updated_at"]
                prev = seen.get(friend)
                seen[friend] = updated
                if not counting:
                    continue
                st.frames[kind] += 1
                if prev is None:
                    st.appeared += 1
                elif updated > prev:
                    st.fresh += 1
                    hist_add(st.latency, now - updated)
                    mine = sent_at.get(friend)
                    if mine is not None and (t := mine.get(data["lat"])) is not None:
                        hist_add(st.e2e, now - t)
                else:
                    st.refresh += 1
                continue
            if kind in ("friend_left_range", "friend_offline", "friend_removed"):
                seen.pop(data["user_id"], None)
            if counting:
                st.frames[kind] += 1
    except Exception:
        pass
    if time.time() < st.window_end:
        st.closed += 1


async def _sender(c: SimClient, st: WorkerState, first_at: float) -> None:
    k = 0
    history = st.sent_at.setdefault(c.user_id, {})
    while True:
        at = first_at + k * st.interval
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        c.move()
        now = time.time()
        history[c.lat] = now
        if len(history) > 4:
            del history[next(iter(history))]
        try:
            await c.ws.send(encode_client(LocationUpdate(c.lat, c.lng)))
        except Exception:
            return
        if st.window_start <= now < st.window_end:
            st.sent += 1
            hist_add(st.send_lag, now - at)
        k += 1


async def _stdin_line() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("stdin closed")
    message: dict[str, Any] = orjson.loads(line)
    return message


def _emit(event: str, **fields: Any) -> None:
    line = orjson.dumps({"event": event, **fields}, option=orjson.OPT_NON_STR_KEYS)
    sys.stdout.write(line.decode() + "\n")
    sys.stdout.flush()


async def worker_main() -> None:
    spec = await _stdin_line()
    st = WorkerState(interval=float(spec["interval"]))
    rng = random.Random(spec["seed"])
    clients = [SimClient(u, t, random.Random(rng.random())) for u, t in spec["users"]]
    _emit("ready", clients=len(clients))
    await _stdin_line()  # "connect"
    sem = asyncio.Semaphore(int(spec["concurrency"]))
    errors: Counter[str] = Counter()
    began = time.perf_counter()
    cpu0 = time.process_time()
    outcomes = await asyncio.gather(
        *(_connect(c, spec["ws_url"], sem, st, errors) for c in clients)
    )
    live = [c for c in clients if c.ws is not None]
    readers = [asyncio.create_task(_reader(c, st)) for c in live]
    _emit(
        "connected",
        connected=len(live),
        seconds=round(time.perf_counter() - began, 3),
        cpu=round(time.process_time() - cpu0, 3),
        errors=dict(errors),
        error_sample=[o for o in outcomes if o][:3],
        handshake_hist=st.handshake,
    )
    schedule = await _stdin_line()
    st.window_start = float(schedule["window_start"])
    st.window_end = float(schedule["window_end"])
    send_at = float(schedule["send_at"])
    senders = [
        asyncio.create_task(_sender(c, st, send_at + rng.uniform(0, st.interval))) for c in live
    ]
    await asyncio.sleep(max(0.0, st.window_start - time.time()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, st.window_end - time.time()))
    cpu1 = time.process_time()
    await _stdin_line()  # "report": the parent has its last snapshot; senders went on until now
    _emit(
        "result",
        sent=st.sent,
        fresh=st.fresh,
        refresh=st.refresh,
        appeared=st.appeared,
        closed=st.closed,
        frames=dict(st.frames),
        latency_hist=st.latency,
        e2e_hist=st.e2e,
        send_lag_hist=st.send_lag,
        cpu_window=round(cpu1 - cpu0, 3),
    )
    del readers, senders
    os._exit(0)  # the kernel closes the sockets; no 10,000 close handshakes


def worker() -> int:
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    threading.current_thread().name = "nearby friends bench worker"
    asyncio.run(worker_main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 clients, under a minute")
    parser.add_argument("--clients", type=int, default=None, help="connections (10,000)")
    parser.add_argument("--friends", type=int, default=None, help="average friends (400)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between updates")
    parser.add_argument("--window", type=float, default=None, help="measuring window, seconds")
    parser.add_argument("--workers", type=int, default=2, help="client worker processes")
    parser.add_argument(
        "--pubsub", default=",".join(BACKENDS), help="memory,redis (or redis_pubsub_only)"
    )
    parser.add_argument(
        "--connect-concurrency", type=int, default=8, help="handshakes in flight per worker"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of graph and moves")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    return run_main(args, lambda a: run(Plan.from_args(a)), log)


if __name__ == "__main__":
    raise SystemExit(main())
