"""Hotel reservation bench: bookings/s, latency and oversells per concurrency strategy.

    python bench/hotel.py [--quick] [--strategies guarded,...] [--databases sqlite,postgres]

What is measured, in one run: `POST /v1/reservations` through the real server
(`python -m scalelab serve hotel` in a child process on 127.0.0.1, port 0, so the client's load
does not take the server's GIL), driven from this process by asyncio + httpx.AsyncClient with N
keep-alive connections (one coroutine each, one request in flight per connection), for every

- strategy (SCALELAB_HOTEL_CONCURRENCY): guarded, pessimistic, optimistic, constraint;
- contention:
  - `high`: every request books one night of one room type of one hotel (the same date), with
    100,000 rooms so that requests succeed and all contend on one inventory row;
  - `last_rooms`: 100 clients, one request each sent at once, race for the last rooms of a
    room type (50 rooms, 55 reservable with 110% overbooking): exactly the allowed number must
    succeed, the rest get 409 "sold out", and total_reserved must equal the successes (the
    issue's concurrency proof, through the HTTP server);
  - `low`: 5,000 hotels (the book's size), one room type of 200 rooms each; every request books
    one night at a random hotel on a random date of the horizon;
- database: SQLite (a file under the temp dir; WAL, synchronous=FULL, as the server sets it)
  and PostgreSQL (SCALELAB_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test,
  in a fresh schema created and dropped here and handed to the server as `?options=
  -csearch_path%3D<schema>`); PostgreSQL is reported as "skipped" when it cannot be reached.

Per cell: requests, successes (201), sold_out and contention (the two 409s), other errors,
reservations/s (successes over the wall clock of the cell), p50/p99 latency in ms (from sending
to having read the whole reply, every request counted), `headroom` (reservations/s over the
book's ~3 reservations/s), the CPU seconds of server and client and how busy the machine's
cores were, and `scalelab.hotel.audit` run on the database after the cell: `oversold` (nights
holding more than the cap; must be 0) and `audit_mismatches` (nights whose total_reserved
differs from the reservations; must be 0). `side_by_side` puts the headline figures of every
contention x strategy next to each other for the two databases.

Set-up: each database is seeded once, directly with SQLAlchemy Core bulk inserts into the
schema's tables (scalelab.hotel.schema), not through HTTP (5,000 hotels and their inventory
rows would take minutes of API calls that this bench does not mean to measure). Hotels get
explicit ids 1..N, one room type each, and room_type_inventory rows for a short horizon
starting today (UTC), and the server is started with SCALELAB_HOTEL_INVENTORY_HORIZON_DAYS
equal to it, so its start-up extension of the horizon has nothing (or one day) to add. Between
strategies the server is stopped and the database reset (reservations, idempotency records and
guests deleted, inventory back to 0 reserved), so every strategy starts from the same state.
Guests register through the API (a handful per server), and requests are spread over their
tokens. A short warm-up (not counted) opens the server's database pool first. To save the
interpreter's start-up, the next server is launched as soon as the last cell's load is over,
while that cell is audited, the previous server stopped and the database reset (none of it is
measured; the next server's lifespan only reads, and its guests register after the reset).

One JSON document goes to stdout, progress to stderr. Everything lives under one temp dir; the
servers' process groups are stopped, the PostgreSQL schema dropped and the temp dir removed,
also on an error, Ctrl-C or SIGTERM. Duration on the 2-core machine: --quick (16 clients,
0.8 s cells, a 7-day horizon) about 45 s; the full run (32 clients, 10 s cells, a 30-day
horizon) about 3.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import math
import os
import platform
import random
import secrets
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import Engine, delete, func, insert, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import launch_scalelab, log_tail, package_version, run_main  # noqa: E402
from _s3 import stop_group, tree_cpu_seconds  # noqa: E402
from scalelab.hotel import schema  # noqa: E402
from scalelab.hotel.audit import audit  # noqa: E402
from scalelab.hotel.model import PricingIn  # noqa: E402
from scalelab.hotel.pricing import PricingRules  # noqa: E402
from scalelab.hotel.settings import STRATEGIES  # noqa: E402
from scalelab.storage import sql  # noqa: E402

DATABASES = ("sqlite", "postgres")
CONTENTIONS = ("high", "last_rooms", "low")
TAGS = {"high": "h", "last_rooms": "r", "low": "l"}  # in reservationIDs: unique per cell
POSTGRES_URL = os.environ.get(
    "SCALELAB_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
STAFF_TOKEN = f"bench-staff-{secrets.token_hex(8)}"
BOOK_LOAD_PER_S = 3.0  # the book: 5,000 hotels, 1M rooms, ~3 reservations/s (TPS)
HOT_INVENTORY = 100_000  # `high`: so many rooms that requests succeed and contend on one row
LAST_ROOMS_INVENTORY = 50  # `last_rooms`: 55 reservable with the 110% overbooking
LAST_ROOMS_CLIENTS = 100  # one request each, all sent at once
LOW_ROOMS_PER_HOTEL = 200  # the book: 1M rooms over 5,000 hotels
OVERBOOK_PCT = 110
BASE_PRICE = 10_000  # minor units (100.00 USD) a night


def log(msg: str) -> None:
    print(f"[bench hotel {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    strategies: tuple[str, ...]
    databases: tuple[str, ...]
    hotels: int  # low-contention hotels
    horizon_days: int
    clients: int  # connections of the high and low cells
    cell_seconds: float  # of the high and low cells
    last_rooms_requests: int
    guests: int
    warmup_requests: int

    @staticmethod
    def from_args(args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        strategies = _subset(args.strategies, STRATEGIES, "strategies")
        databases = _subset(args.databases, DATABASES, "databases")
        clients = args.clients or (16 if quick else 32)
        return Plan(
            quick=quick,
            strategies=strategies,
            databases=databases,
            hotels=args.hotels,
            horizon_days=7 if quick else 30,
            clients=clients,
            cell_seconds=args.seconds or (0.8 if quick else 10.0),
            last_rooms_requests=LAST_ROOMS_CLIENTS,
            guests=8,
            warmup_requests=clients if quick else 4 * clients,  # one or four per connection
        )

    def describe(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "strategies": list(self.strategies),
            "databases": list(self.databases),
            "cells": {
                "high": f"{self.clients} clients for {self.cell_seconds} s, every request one "
                f"night of one room type ({HOT_INVENTORY} rooms) of one hotel on one date",
                "last_rooms": f"{LAST_ROOMS_CLIENTS} clients send {self.last_rooms_requests} "
                f"requests for one night of a room type with {LAST_ROOMS_INVENTORY} rooms "
                f"({LAST_ROOMS_INVENTORY * OVERBOOK_PCT // 100} reservable at "
                f"{OVERBOOK_PCT}% overbooking)",
                "low": f"{self.clients} clients for {self.cell_seconds} s, every request one "
                f"night at a random hotel of {self.hotels} ({LOW_ROOMS_PER_HOTEL} rooms each) "
                f"on a random date of the next {self.horizon_days - 1} days",
            },
            "hotels": self.hotels,
            "inventory_horizon_days": self.horizon_days,
            "guests_per_server": self.guests,
            "warmup_requests_per_server": self.warmup_requests,
            "book_load_reservations_per_s": BOOK_LOAD_PER_S,
            "server_settings": "defaults except concurrency, database_url, staff_token and "
            "inventory_horizon_days (optimistic_retries 100, cache on, 110% overbooking)",
        }


def _subset(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = set(chosen) - set(known)
    if unknown or not chosen:
        raise SystemExit(f"unknown or no {what}: {sorted(unknown)} (known: {', '.join(known)})")
    return chosen


# -- databases -----------------------------------------------------------------------------------


@dataclass
class Database:
    kind: str
    server_url: str  # SCALELAB_HOTEL_DATABASE_URL for the server
    engine: Engine  # this process's: seeding, reset, audit
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def postgres(self) -> bool:
        return self.kind == "postgres"


@contextlib.contextmanager
def sqlite_database(root: Path) -> Iterator[Database]:
    path = root / "sqlite" / "hotel.db"
    url = sql.sqlite_url(path)
    engine = sql.create_engine(url)
    try:
        yield Database("sqlite", url, engine, {"url": url, "sqlite": sqlite3.sqlite_version})
    finally:
        engine.dispose()


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    engine = sql.create_engine(_with_query(POSTGRES_URL, "connect_timeout=3"), pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}: {first}"
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_database() -> Iterator[Database]:
    """A fresh schema for this run, dropped (CASCADE) afterwards whatever happens."""
    name = f"bench_hotel_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sql.create_engine(POSTGRES_URL, pool_size=1)
    engine: Engine | None = None
    created = False
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
            created = True
            version = conn.execute(text("SELECT current_setting('server_version')")).scalar_one()
        engine = sql.create_engine(POSTGRES_URL, schema=name, pool_size=2)
        server_url = _with_query(POSTGRES_URL, f"options=-csearch_path%3D{name}")
        info = {"url": server_url, "schema": name, "postgres": version}
        yield Database("postgres", server_url, engine, info)
    finally:
        if engine is not None:
            engine.dispose()
        if created:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Layout:
    """Where each cell books: hotel ids 1..hotels are the low-contention ones."""

    hotels: int
    horizon_days: int
    first_day: date  # today (UTC) when seeded

    @property
    def hot_hotel(self) -> int:
        return self.hotels + 1

    @property
    def last_rooms_hotel(self) -> int:
        return self.hotels + 2

    @property
    def hot_date(self) -> date:
        return self.first_day + timedelta(days=1)

    @property
    def last_rooms_date(self) -> date:
        return self.first_day + timedelta(days=2)

    @property
    def last_rooms_cap(self) -> int:
        return LAST_ROOMS_INVENTORY * OVERBOOK_PCT // 100

    def random_night(self, rng: random.Random) -> date:
        # From tomorrow (today could become yesterday at midnight UTC) to the last row.
        return self.first_day + timedelta(days=rng.randrange(1, self.horizon_days))


def seed(db: Database, plan: Plan) -> tuple[Layout, dict[str, Any]]:
    """Tables, hotels, room types and inventory rows, with Core bulk inserts (see the module
    docstring: this is set-up, not what the bench measures). A room type's id is its hotel's."""
    began = time.perf_counter()
    schema.create_schema(db.engine)
    layout = Layout(plan.hotels, plan.horizon_days, utc_today())
    pricing = PricingRules.from_model(PricingIn()).to_json()
    now = time.time()
    inventories = {h: LOW_ROOMS_PER_HOTEL for h in range(1, plan.hotels + 1)}
    inventories[layout.hot_hotel] = HOT_INVENTORY
    inventories[layout.last_rooms_hotel] = LAST_ROOMS_INVENTORY
    days = [layout.first_day + timedelta(days=i) for i in range(plan.horizon_days)]
    rows = 0
    with sql.writing(db.engine).begin() as conn:
        for chunk in _chunks(sorted(inventories), 2000):
            conn.execute(
                insert(schema.hotel),
                [
                    {
                        "id": h,
                        "name": f"Bench hotel {h}",
                        "address": "",
                        "city": "",
                        "currency": "USD",
                        "overbooking_percent": OVERBOOK_PCT,
                        "pricing": pricing,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for h in chunk
                ],
            )
            conn.execute(
                insert(schema.room_type),
                [
                    {
                        "id": h,
                        "hotel_id": h,
                        "name": "Double",
                        "description": "",
                        "capacity": 2,
                        "base_price": BASE_PRICE,
                        "total_inventory": inventories[h],
                    }
                    for h in chunk
                ],
            )
            inventory = [
                {
                    "hotel_id": h,
                    "room_type_id": h,
                    "date": d,
                    "total_inventory": inventories[h],
                    "total_reserved": 0,
                    "overbook_pct": OVERBOOK_PCT,
                    "version": 0,
                }
                for h in chunk
                for d in days
            ]
            conn.execute(insert(schema.room_type_inventory), inventory)
            rows += len(inventory)
        # The next hotel created through the API gets the next id.
        conn.execute(
            update(schema.id_sequence)
            .where(schema.id_sequence.c.name == "hotel")
            .values(next=max(inventories))
        )
    if db.postgres:
        _postgres_maintenance(db.engine, "ANALYZE")
        # PostgreSQL's own sequence for room_type.id, past the explicit ids.
        with db.engine.begin() as conn:
            conn.execute(
                text("SELECT setval(pg_get_serial_sequence('room_type', 'id'), :n)"),
                {"n": max(inventories)},
            )
    return layout, {
        "hotels": len(inventories),
        "room_types": len(inventories),
        "inventory_rows": rows,
        "first_day": layout.first_day.isoformat(),
        "seconds": round(time.perf_counter() - began, 2),
        "how": "SQLAlchemy Core bulk inserts in one transaction, before the server starts",
    }


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _postgres_maintenance(engine: Engine, command: str) -> None:
    tables = ("room_type_inventory", "reservation", "idempotency", "guest", "guest_token")
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in tables:
            conn.execute(text(f"{command} {table}"))


def reset(db: Database) -> float:
    """Back to the seeded state: no reservations, guests or idempotency records, 0 reserved."""
    began = time.perf_counter()
    inv = schema.room_type_inventory
    with sql.writing(db.engine).begin() as conn:
        for table in (
            schema.room_assignment,
            schema.reservation,
            schema.idempotency,
            schema.guest_token,
            schema.guest,
        ):
            conn.execute(delete(table))
        conn.execute(
            update(inv)
            .where((inv.c.total_reserved != 0) | (inv.c.version != 0))
            .values(total_reserved=0, version=0)
        )
    if db.postgres:
        _postgres_maintenance(db.engine, "VACUUM ANALYZE")
    return round(time.perf_counter() - began, 2)


def inventory_reserved(db: Database, hotel_id: int, night: date) -> int:
    inv = schema.room_type_inventory
    with db.engine.connect() as conn:
        value = conn.execute(
            select(func.sum(inv.c.total_reserved)).where(
                inv.c.hotel_id == hotel_id, inv.c.date == night
            )
        ).scalar_one()
    return int(value or 0)


def audit_now(db: Database) -> dict[str, Any]:
    began = time.perf_counter()
    report = audit(db.engine)
    return {
        "oversold": report.oversold,
        "audit_mismatches": len(report.mismatches),
        "audit_mismatch_sample": [str(m) for m in report.mismatches[:3]],
        "audit_nights_checked": report.nights_checked,
        "audit_holding_reservations": report.reservations,
        "audit_seconds": round(time.perf_counter() - began, 2),
    }


# -- server --------------------------------------------------------------------------------------


class Server:
    """`python -m scalelab serve hotel` on port 0 with one strategy, in its own process group.

    launch() starts it, ready() waits until /healthz answers, stop() stops the process group
    and removes its directory; stop() is idempotent, so an ExitStack can always call it. The
    next strategy's server is launched while the previous one is audited, stopped and the
    database reset (that is not measured; it saves the interpreter's start-up)."""

    def __init__(self, db: Database, strategy: str, plan: Plan, root: Path) -> None:
        self.sdir = root / f"server-{db.kind}-{strategy}-{secrets.token_hex(3)}"
        self.log_path = self.sdir / "server.log"
        self.env = {
            "SCALELAB_HOTEL_STAFF_TOKEN": STAFF_TOKEN,
            "SCALELAB_HOTEL_CONCURRENCY": strategy,
            "SCALELAB_HOTEL_DATABASE_URL": db.server_url,
            "SCALELAB_HOTEL_INVENTORY_HORIZON_DAYS": str(plan.horizon_days),
        }
        self.info: dict[str, Any] = {"concurrency": strategy}
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._url_of: Callable[[float], str] | None = None
        self._log: IO[bytes] | None = None
        self._began = 0.0
        self._stopped = False
        self._stopper: threading.Thread | None = None

    def launch(self) -> Server:
        data = self.sdir / "data"
        data.mkdir(parents=True)
        self._log = self.log_path.open("wb")
        self._began = time.perf_counter()
        self.proc, self._url_of, info = launch_scalelab(
            "hotel", self.sdir, data, self._log, self.env
        )
        self.info.update(info)
        return self

    def ready(self) -> None:
        assert self.proc is not None and self._url_of is not None and self._log is not None
        try:
            self.url = self._url_of(60)
            wait_healthy(self.url, self.proc, time.monotonic() + 60)
        except Exception as exc:
            self._log.flush()
            raise RuntimeError(f"{exc}; server log tail:\n{log_tail(self.log_path)}") from exc
        # From launch, which overlaps the previous strategy's last audit and stop.
        self.info["startup_seconds"] = round(time.perf_counter() - self._began, 2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def stop_soon(self) -> None:
        """stop() in a thread, so the next server's start-up overlaps it; stop() joins it."""
        if self._stopper is None and not self._stopped:
            self._stopper = threading.Thread(target=self._stop, name="stop hotel server")
            self._stopper.start()

    def stop(self) -> None:
        if self._stopper is not None:
            self._stopper.join()
        self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.proc is not None:
                began = time.perf_counter()
                self.info["exit_code"] = stop_group(self.proc, grace=10)
                self.info["stop_seconds"] = round(time.perf_counter() - began, 2)
        finally:
            if self._log is not None:
                self._log.close()
            shutil.rmtree(self.sdir, ignore_errors=True)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Until /healthz answers: the lifespan (schema, horizon) has run."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("the server did not become healthy in time")


def register_guests(url: str, count: int, tag: str) -> list[str]:
    tokens = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for i in range(count):
            body = {"name": f"Bench guest {i}", "email": f"bench-{tag}-{i}@example.org"}
            r = http.post("/v1/guests", json=body)
            if r.status_code != 201:
                raise RuntimeError(f"guest registration: {r.status_code} {r.text[:200]}")
            tokens.append(r.json()["token"])
    return tokens


# -- load ----------------------------------------------------------------------------------------

Stay = tuple[int, date]  # (hotel id = room type id, night)
Pick = Callable[[random.Random], Stay]


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0


def _classify(response: httpx.Response) -> str:
    if response.status_code == 201:
        return "ok"
    code = ""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        code = response.json()["error"]["code"]
    if response.status_code == 409 and code in ("sold_out", "contention"):
        return str(code)
    return f"{response.status_code} {code}".strip()


async def _drive(
    url: str,
    tokens: Sequence[str],
    pick: Pick,
    *,
    clients: int,
    tag: str,
    seconds: float | None = None,
    total: int | None = None,
    seed_value: int = 0,
) -> Load:
    """`clients` connections, one request in flight each, for `seconds` or `total` requests.

    Each connection is its own AsyncClient (httpx's shared pool costs the client CPU that
    grows with the number of connections), opened with a GET /healthz before the clock starts,
    so every request of the cell starts on a warm keep-alive connection."""
    load = Load()
    counter = itertools.count()
    go = asyncio.Event()
    ready = 0
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # unused on http://, but httpx builds one per client

    async def worker(w: int, http: httpx.AsyncClient) -> None:
        nonlocal ready
        rng = random.Random(seed_value * 100_003 + w)
        headers = {"Authorization": f"Bearer {tokens[w % len(tokens)]}"}
        try:
            await http.get("/healthz")
        finally:
            ready += 1
            if ready == clients:
                go.set()
        await go.wait()
        deadline = time.perf_counter() + seconds if seconds is not None else math.inf
        while True:
            i = next(counter)
            if (total is not None and i >= total) or time.perf_counter() >= deadline:
                return
            hotel_id, night = pick(rng)
            body = {
                "reservationID": f"{tag}-{i}",
                "hotelID": hotel_id,
                "roomTypeID": hotel_id,
                "startDate": night.isoformat(),
                "endDate": (night + timedelta(days=1)).isoformat(),
            }
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/reservations", json=body, headers=headers)
                outcome = _classify(r)
            except httpx.HTTPError as exc:
                outcome = f"error {type(exc).__name__}"
            load.latencies.append(time.perf_counter() - t0)
            load.outcomes[outcome] += 1

    async with contextlib.AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, limits=limits, timeout=120, verify=tls)
            )
            for _ in range(clients)
        ]
        tasks = [asyncio.create_task(worker(w, http)) for w, http in enumerate(https)]
        await go.wait()
        began = time.perf_counter()
        await asyncio.gather(*tasks)
        load.wall = time.perf_counter() - began
    return load


def drive(url: str, tokens: Sequence[str], pick: Pick, **kwargs: Any) -> Load:
    return asyncio.run(_drive(url, tokens, pick, **kwargs))


def machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float | None:
    if a is None or b is None or b[1] == a[1]:
        return None
    return round((b[0] - a[0]) / (b[1] - a[1]), 2)


def _quantile_ms(ordered: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile, in ms."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return round(ordered[rank - 1] * 1000, 2)


def cell(
    server: Server,
    tokens: Sequence[str],
    pick: Pick,
    *,
    clients: int,
    tag: str,
    seconds: float | None = None,
    total: int | None = None,
    seed_value: int = 0,
) -> dict[str, Any]:
    cpu0 = server.cpu()
    client0 = time.process_time()
    machine0 = machine_jiffies()
    load = drive(
        server.url,
        tokens,
        pick,
        clients=clients,
        tag=tag,
        seconds=seconds,
        total=total,
        seed_value=seed_value,
    )
    server_cpu = server.cpu() - cpu0
    client_cpu = time.process_time() - client0
    busy = machine_busy(machine0, machine_jiffies())
    ordered = sorted(load.latencies)
    outcomes = dict(load.outcomes)
    ok = outcomes.pop("ok", 0)
    sold_out = outcomes.pop("sold_out", 0)
    contention = outcomes.pop("contention", 0)
    rate = ok / load.wall if load.wall else 0.0
    return {
        "clients": clients,
        "requests": len(ordered),
        "successes": ok,
        "sold_out": sold_out,
        "contention": contention,
        "other_errors": sum(outcomes.values()),
        "other_errors_by_kind": outcomes,
        "seconds": round(load.wall, 3),
        "reservations_per_s": round(rate, 1),
        "requests_per_s": round(len(ordered) / load.wall, 1) if load.wall else 0.0,
        "p50_ms": _quantile_ms(ordered, 0.50),
        "p99_ms": _quantile_ms(ordered, 0.99),
        "max_ms": _quantile_ms(ordered, 1.0),
        "headroom": round(rate / BOOK_LOAD_PER_S, 1),
        "server_cpu_seconds": round(server_cpu, 2),
        "client_cpu_seconds": round(client_cpu, 2),
        "machine_cpu_busy": busy,
    }


def bench_strategy(
    db: Database,
    layout: Layout,
    server: Server,
    plan: Plan,
    after_last_load: Callable[[], None],
) -> tuple[dict[str, Any], bool]:
    """The cells of one strategy on its (ready) server; after_last_load runs once the last
    cell's load is over, before its audit (it launches the next server)."""
    strategy = server.info["concurrency"]
    out: dict[str, Any] = {"server": server.info}
    ok = True
    tag = f"{db.kind[:2]}-{strategy[:3]}"
    began = time.perf_counter()
    tokens = register_guests(server.url, plan.guests, f"{tag}-{secrets.token_hex(3)}")
    out["guests"] = {"registered": len(tokens), "seconds": round(time.perf_counter() - began, 2)}

    def low(rng: random.Random) -> Stay:
        return rng.randint(1, layout.hotels), layout.random_night(rng)

    def high(_rng: random.Random) -> Stay:
        return layout.hot_hotel, layout.hot_date

    def last_rooms(_rng: random.Random) -> Stay:
        return layout.last_rooms_hotel, layout.last_rooms_date

    # Warm-up, not measured: the server's pool and statement caches.
    began = time.perf_counter()
    warm = drive(
        server.url, tokens, low, clients=plan.clients, tag=f"{tag}-w", total=plan.warmup_requests
    )
    out["warmup"] = {
        "requests": len(warm.latencies),
        "outcomes": dict(warm.outcomes),
        "seconds": round(time.perf_counter() - began, 2),
    }
    specs: dict[str, tuple[Pick, dict[str, Any]]] = {
        "high": (high, {"clients": plan.clients, "seconds": plan.cell_seconds}),
        "last_rooms": (
            last_rooms,
            {"clients": LAST_ROOMS_CLIENTS, "total": plan.last_rooms_requests},
        ),
        "low": (low, {"clients": plan.clients, "seconds": plan.cell_seconds}),
    }
    cells: dict[str, Any] = {}
    for n, name in enumerate(CONTENTIONS):
        log(f"{db.kind} {strategy}: {name}")
        pick, kwargs = specs[name]
        try:
            result = cell(server, tokens, pick, tag=f"{tag}-{TAGS[name]}", seed_value=n, **kwargs)
            if name == CONTENTIONS[-1]:
                after_last_load()
            if name == "last_rooms":
                reserved = inventory_reserved(db, layout.last_rooms_hotel, layout.last_rooms_date)
                result["allowed"] = layout.last_rooms_cap
                result["inventory_reserved_after"] = reserved
                result["exactly_allowed_succeeded"] = (
                    result["successes"] == layout.last_rooms_cap == reserved
                )
                ok = ok and result["exactly_allowed_succeeded"]
            result.update(audit_now(db))
            ok = ok and not result["oversold"] and not result["audit_mismatches"]
            ok = ok and not result["other_errors"]
        except Exception as exc:  # report and go on with the next cell
            ok = False
            result = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{db.kind} {strategy} {name} failed: {exc}")
        cells[name] = result
        if not server.alive():
            ok = False
            out["crashed"] = {"after": name, "log_tail": log_tail(server.log_path)}
            break
    out["cells"] = cells
    return out, ok


# -- one database, every strategy ----------------------------------------------------------------


@contextlib.contextmanager
def open_database(kind: str, root: Path) -> Iterator[Database]:
    if kind == "sqlite":
        with sqlite_database(root) as db:
            yield db
    else:
        with postgres_database() as db:
            yield db


def bench_all(plan: Plan, root: Path) -> tuple[dict[str, Any], bool]:
    """Open and seed every database, then run every (database, strategy) in turn, each on its
    own server; the next server is launched while the previous one is audited and stopped."""
    results: dict[str, Any] = {}
    ok = True
    with contextlib.ExitStack() as stack:  # LIFO: servers stop before databases close
        dbs: dict[str, tuple[Database, Layout]] = {}
        for kind in plan.databases:
            if kind == "postgres" and (why := postgres_reachable()):
                log(f"postgres: skipped ({why})")
                results[kind] = {"skipped": why}
                continue
            try:
                db = stack.enter_context(open_database(kind, root))
                results[kind] = {"database": db.info}
                log(f"{kind}: seeding {plan.hotels + 2} hotels")
                layout, results[kind]["seed"] = seed(db, plan)
                results[kind]["strategies"] = {}
                dbs[kind] = (db, layout)
            except Exception as exc:
                ok = False
                results[kind] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{kind} failed: {exc}")
        runs = [(kind, strategy) for kind in dbs for strategy in plan.strategies]
        launched: dict[tuple[str, str], Server] = {}

        def launch(run: tuple[str, str]) -> Server:
            if run not in launched:
                server = Server(dbs[run[0]][0], run[1], plan, root)
                stack.callback(server.stop)
                launched[run] = server.launch()
            return launched[run]

        def prelaunch(run: tuple[str, str] | None) -> None:
            """Start the next server early; if that fails, it is tried again in its turn."""
            if run is not None:
                try:
                    launch(run)
                except Exception as exc:
                    log(f"{run}: early launch failed ({exc}); retrying in its turn")

        previous: Server | None = None
        for i, (kind, strategy) in enumerate(runs):
            db, layout = dbs[kind]
            after = runs[i + 1] if i + 1 < len(runs) else None
            out: dict[str, Any] = {}
            try:
                server = launch((kind, strategy))
                try:
                    server.ready()
                finally:
                    if previous is not None:
                        previous.stop()  # stopping in the background until now
                out, good = bench_strategy(
                    db, layout, server, plan, functools.partial(prelaunch, after)
                )
                ok = ok and good
            except Exception as exc:
                ok = False
                out = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{kind} {strategy} failed: {exc}")
            finally:
                if (kind, strategy) in launched:
                    previous = launched[(kind, strategy)]
                    previous.stop_soon()
            if after is not None and after[0] == kind:
                # The next server may be starting already: its lifespan only reads, and
                # writes nothing the reset touches; its guests register after this.
                out["reset_seconds_after"] = reset(db)
            results[kind]["strategies"][strategy] = out
    return results, ok


# -- report --------------------------------------------------------------------------------------


def side_by_side(results: dict[str, Any]) -> dict[str, Any]:
    """contention -> strategy -> database -> the headline figures."""
    table: dict[str, Any] = {}
    for contention in CONTENTIONS:
        for kind, res in results.items():
            for strategy, sres in res.get("strategies", {}).items():
                c = sres.get("cells", {}).get(contention)
                if not c or "error" in c:
                    continue
                row = {
                    "reservations_per_s": c["reservations_per_s"],
                    "p50_ms": c["p50_ms"],
                    "p99_ms": c["p99_ms"],
                    "headroom": c["headroom"],
                    "oversold": c["oversold"],
                }
                if contention == "last_rooms":
                    row["exactly_allowed_succeeded"] = c["exactly_allowed_succeeded"]
                else:
                    row["sold_out_or_contention"] = c["sold_out"] + c["contention"]
                table.setdefault(contention, {}).setdefault(strategy, {})[kind] = row
    return table


def fdatasync_probe(folder: Path, writes: int = 20) -> dict[str, Any]:
    """4 KiB write + fdatasync, the cost SQLite's synchronous=FULL pays per commit."""
    path = folder / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(4096)
        for _ in range(writes):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"writes": writes, "p50_ms": _quantile_ms(times, 0.5), "max_ms": _quantile_ms(times, 1)}


def postgres_version() -> str | None:
    engine = sql.create_engine(_with_query(POSTGRES_URL, "connect_timeout=3"), pool_size=1)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version()")).scalar_one())
    except Exception:
        return None
    finally:
        engine.dispose()


NOTES = [
    "reservations_per_s counts successes (201) over the cell's wall clock; p50/p99 are over "
    "every request, refusals included; headroom = reservations_per_s / 3 (the book's load)",
    "client and server share the machine's two cores: server_cpu_seconds and "
    "client_cpu_seconds show how much of the cell each used",
    "SQLite commits with synchronous=FULL (an fsync per booking; see machine.fdatasync_4KiB) "
    "and queues writers on one database lock, so its strategies differ little; PostgreSQL "
    "queues them on the row lock of the contended night",
    "SQLite writers of one server process queue in order on a Python lock per database file "
    "(storage.sql.write_transaction) before BEGIN IMMEDIATE; without it a writer that finds "
    "the database locked sleeps in SQLite's busy handler (up to 100 ms a try) and p99 was "
    "near 1 s at 16 clients. Optimistic still reads outside that lock, so under high "
    "contention most of its attempts lose the version check and retry",
    "high: 100,000 rooms on one night, so bookings succeed; sold_out there would be a bug, "
    "contention (409) is the optimistic strategy running out of retries",
    "last_rooms: 100 clients send one request each at once for 55 reservable rooms: exactly "
    "55 must succeed (the rest 409 sold_out) and total_reserved must equal them",
    "machine_cpu_busy: share of both cores busy during the cell (server, client and "
    "PostgreSQL together), from /proc/stat",
    "oversold / audit_mismatches come from scalelab.hotel.audit over the whole database after "
    "each cell; both must be 0",
    "hotels, room types and inventory are seeded with SQLAlchemy Core bulk inserts (not the "
    "API); guests register through the API; each strategy starts from the same reset database",
]


def run(plan: Plan) -> tuple[dict[str, Any], bool]:
    began = time.perf_counter()
    ok = False
    report: dict[str, Any] = {
        "bench": "hotel",
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {
            "scalelab": package_version("scalelab"),
            "sqlite": sqlite3.sqlite_version,
            "postgres": postgres_version() if "postgres" in plan.databases else None,
            "sqlalchemy": package_version("sqlalchemy"),
            "psycopg": package_version("psycopg"),
            "httpx": package_version("httpx"),
            "uvicorn": package_version("uvicorn"),
        },
        "params": plan.describe(),
    }
    root = Path(tempfile.mkdtemp(prefix="scalelab-bench-hotel-", dir="/tmp"))
    results: dict[str, Any] = {}
    try:
        report["machine"]["fdatasync_4KiB"] = fdatasync_probe(root)
        results, ok = bench_all(plan, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report["side_by_side"] = side_by_side(results)
    report["results"] = results
    report["notes"] = NOTES
    report["ok"] = ok
    report["duration_seconds"] = round(time.perf_counter() - began, 1)
    return report, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short cells, under a minute")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated")
    parser.add_argument("--databases", default=",".join(DATABASES), help="comma-separated")
    parser.add_argument("--hotels", type=int, default=5000, help="low-contention hotels")
    parser.add_argument("--clients", type=int, default=None, help="connections (high, low)")
    parser.add_argument("--seconds", type=float, default=None, help="length of a high/low cell")
    return run_main(parser.parse_args(argv), lambda args: run(Plan.from_args(args)), log)


if __name__ == "__main__":
    raise SystemExit(main())
