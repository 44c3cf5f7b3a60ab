"""kill -9 of the hotel server under load: every acknowledged change survives the restart, and
inventory and reservations still agree (`audit`, read from the database alone).

The server is a real child process (`scalelab serve hotel`); 8 client threads book, pay and
cancel in a loop, and the kill lands while their requests are in flight. What a client saw
acknowledged (201 for a booking, 200 for a cancel or a payment) is the record to check.
"""

from __future__ import annotations

import random
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from scalelab.hotel.audit import audit
from scalelab.storage import sql
from tests.conftest import POSTGRES_URL

STAFF = "staff-crash-token"
CLIENTS = 8
_TLS = ssl.create_default_context()


@dataclass
class Ledger:
    """What one client thread saw acknowledged, and what it never got an answer for."""

    headers: dict[str, str]
    booked: set[str] = field(default_factory=set)  # 201
    cancelled: set[str] = field(default_factory=set)  # 200 to DELETE
    paid: set[str] = field(default_factory=set)  # 200 to the payment
    unknown: dict[str, dict[str, Any]] = field(default_factory=dict)  # a booking, no answer
    inflight: tuple[str, str] | None = None  # (action, reservationID) with no answer yet
    done: int = 0  # requests answered
    error: BaseException | None = None  # an unexpected answer: fails the test


def load(
    url: str, ledger: Ledger, hotel_id: int, room_type_id: int, seed: int, stop: threading.Event
) -> None:
    try:
        _load(url, ledger, hotel_id, room_type_id, seed, stop)
    except BaseException as e:  # reported by the test, never lost in the thread
        ledger.error = e


def _load(
    url: str, ledger: Ledger, hotel_id: int, room_type_id: int, seed: int, stop: threading.Event
) -> None:
    """Book (or pay, or cancel one of ours) until the server goes away."""
    rng = random.Random(seed)
    first = datetime.now(UTC).date() + timedelta(days=2)
    with httpx.Client(base_url=url, timeout=30, verify=_TLS, headers=ledger.headers) as http:
        while not stop.is_set():
            live = sorted(ledger.booked - ledger.cancelled)
            unpaid = sorted(set(live) - ledger.paid)
            action = rng.random()
            try:
                if live and action < 0.25:
                    rid = rng.choice(live)
                    ledger.inflight = ("cancel", rid)
                    r = http.delete(f"/v1/reservations/{rid}")
                    assert r.status_code == 200, r.text
                    ledger.cancelled.add(rid)
                elif unpaid and action < 0.35:
                    rid = rng.choice(unpaid)
                    ledger.inflight = ("pay", rid)
                    r = http.post(f"/v1/reservations/{rid}/payment", json={"method": "pm_card_ok"})
                    assert r.status_code == 200, r.text
                    ledger.paid.add(rid)
                else:
                    start = first + timedelta(days=rng.randrange(10))
                    rid = f"k-{uuid.uuid4().hex}"
                    body = {
                        "reservationID": rid,
                        "hotelID": hotel_id,
                        "roomTypeID": room_type_id,
                        "startDate": start.isoformat(),
                        "endDate": (start + timedelta(days=rng.randint(1, 3))).isoformat(),
                    }
                    ledger.inflight = ("book", rid)
                    ledger.unknown[rid] = body
                    r = http.post("/v1/reservations", json=body)
                    del ledger.unknown[rid]
                    assert r.status_code in (201, 409), r.text
                    if r.status_code == 201:
                        ledger.booked.add(rid)
                    else:
                        assert r.json()["error"]["code"] == "sold_out", r.text
                ledger.inflight = None
                ledger.done += 1
            except httpx.TransportError:
                return  # the server died under us: what was in flight stays unknown


def crash_under_load(server: Any, cycle: int) -> list[Ledger]:
    """New hotel and guests on the running server, load from 8 clients, then kill -9 it."""
    staff = {"Authorization": f"Bearer {STAFF}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v1/hotels", json={"name": f"Crash Hotel {cycle}"}, headers=staff)
        assert r.status_code == 201, r.text
        hotel_id = r.json()["id"]
        r = http.post(
            f"/v1/hotels/{hotel_id}/room-types",
            json={"name": "Double", "basePrice": "120.00", "totalInventory": 20},
            headers=staff,
        )
        assert r.status_code == 201, r.text
        room_type_id = r.json()["id"]
        ledgers = []
        for i in range(CLIENTS):
            email = f"crash{cycle}-{i}@example.org"
            r = http.post("/v1/guests", json={"name": f"g{i}", "email": email})
            assert r.status_code == 201, r.text
            ledgers.append(Ledger({"Authorization": f"Bearer {r.json()['token']}"}))
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=load,
            args=(server.url, ledgers[i], hotel_id, room_type_id, cycle * 100 + i, stop),
            daemon=True,
        )
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    # Kill once the load is well under way (a count, not a clock): requests are in flight.
    while sum(led.done for led in ledgers) < 150 and all(t.is_alive() for t in threads):
        stop.wait(0.02)
    assert all(t.is_alive() for t in threads), [led.error for led in ledgers]
    server.kill()
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert [led.error for led in ledgers] == [None] * CLIENTS
    assert sum(led.inflight is not None for led in ledgers) >= 1, "nothing was in flight"
    return ledgers


def check_after_restart(server: Any, ledgers: list[Ledger], engine: Engine) -> None:
    """Every acknowledged change is there; retried lost bookings book once; audit ok."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for led in ledgers:
            for rid in led.booked:
                r = http.get(f"/v1/reservations/{rid}", headers=led.headers)
                assert r.status_code == 200, (rid, r.text)
                assert r.json()["status"] in expected_status(led, rid), (rid, r.text)
            listed = http.get("/v1/reservations?limit=1000", headers=led.headers)
            assert led.booked <= {r["reservationID"] for r in listed.json()["reservations"]}
            # A booking whose answer was lost may be retried: it booked once, or not at all.
            for rid, body in led.unknown.items():
                r = http.post("/v1/reservations", json=body, headers=led.headers)
                answer = (r.status_code, r.json().get("error", {}).get("code"))
                assert answer in {(201, None), (409, "sold_out"), (409, "request_in_flight")}, (
                    r.text
                )
                if r.status_code == 201:
                    led.booked.add(rid)
                    stored = http.get(f"/v1/reservations/{rid}", headers=led.headers).json()
                    assert {**r.json(), "roomIDs": []} == stored
            led.unknown.clear()
    report = audit(engine)
    assert report.ok, [str(m) for m in report.mismatches[:5]]


def run_cycles(
    spawn_server: Callable[..., Any], env: dict[str, str], engine: Engine, cycles: int
) -> None:
    server = spawn_server("hotel", env)
    everything: list[Ledger] = []
    for cycle in range(cycles):
        ledgers = crash_under_load(server, cycle)
        everything += ledgers
        check_database(ledgers, engine)
        server = spawn_server("hotel", env)  # on the same data: recovery, then service
        check_after_restart(server, everything, engine)


def check_database(ledgers: list[Ledger], engine: Engine) -> None:
    """The database alone, before any server touches it again (SQLite: WAL recovery on open)."""
    report = audit(engine)
    assert report.ok, [str(m) for m in report.mismatches[:5]]
    assert sum(len(led.booked) for led in ledgers) >= 20, "too little load to prove anything"
    print(
        "acknowledged:",
        {k: sum(len(getattr(led, k)) for led in ledgers) for k in ("booked", "cancelled", "paid")},
        "in flight:",
        [led.inflight[0] for led in ledgers if led.inflight],
    )


def expected_status(led: Ledger, rid: str) -> set[str]:
    """What a reservation may be now: what was acknowledged, or the in-flight change on top."""
    if rid in led.cancelled:
        now = {"refunded"} if rid in led.paid else {"cancelled"}
    elif rid in led.paid:
        now = {"paid"}
    else:
        now = {"pending"}
    if led.inflight == ("pay", rid):
        now |= {"paid"}
    elif led.inflight == ("cancel", rid):
        now |= {"refunded"} if rid in led.paid else {"cancelled"}
    return now


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "SCALELAB_DATA": str(tmp_path),
        "SCALELAB_HOTEL_STAFF_TOKEN": STAFF,
        "SCALELAB_HOTEL_INVENTORY_HORIZON_DAYS": "30",
        # a request that died holding its idempotency key must not block the retry for long
        "SCALELAB_HOTEL_IDEMPOTENCY_LEASE_SECONDS": "0.5",
        **extra,
    }


CYCLES = [1, pytest.param(4, marks=pytest.mark.slow, id="4-kills")]


@pytest.mark.parametrize("cycles", CYCLES)
def test_kill_9_mid_load_sqlite(
    spawn_server: Callable[..., Any], tmp_path: Path, cycles: int
) -> None:
    env = env_for(tmp_path)
    engine = sql.create_engine(sql.sqlite_url(tmp_path / "hotel" / "hotel.db"))
    try:
        run_cycles(spawn_server, env, engine, cycles)
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url(postgres_schema: str) -> Iterator[str]:
    """A libpq URL that puts the server's tables in the test's schema."""
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{postgres_schema}"
    engine = sql.create_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW search_path")).scalar() == postgres_schema
    finally:
        engine.dispose()
    yield url


@pytest.mark.postgres
@pytest.mark.parametrize("cycles", CYCLES)
def test_kill_9_mid_load_postgres(
    spawn_server: Callable[..., Any],
    tmp_path: Path,
    postgres_url: str,
    postgres_schema: str,
    cycles: int,
) -> None:
    env = env_for(tmp_path, SCALELAB_HOTEL_DATABASE_URL=postgres_url)
    engine = sql.create_engine(POSTGRES_URL, schema=postgres_schema)
    try:
        run_cycles(spawn_server, env, engine, cycles)
    finally:
        engine.dispose()
