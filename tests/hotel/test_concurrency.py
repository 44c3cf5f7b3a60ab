"""The inventory concurrency controls: every strategy, on SQLite and PostgreSQL, never oversells.

Races are real threads released together by a Barrier; each success is a reservation row the
`finish` callback inserts in the claiming transaction, so "inventory equals the sum of committed
reservations" is checked against the database, not against counters in the test.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, exc, func, insert, select, update

from scalelab.hotel import schema
from scalelab.hotel.concurrency import (
    STRATEGIES,
    Hold,
    Night,
    Optimistic,
    Strategy,
    make_strategy,
    read_nights,
    release,
)
from scalelab.hotel.errors import Contention, InvalidRequest, SoldOut
from scalelab.storage import sql

HOTEL = 7
ROOM_TYPE = 3
D0 = date(2030, 3, 1)
inv = schema.room_type_inventory


def day(n: int) -> date:
    return D0 + timedelta(days=n)


def seed(
    engine: Engine, nights: Iterable[date], *, inventory: int, pct: int, reserved: int = 0
) -> None:
    schema.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(schema.hotel).values(
                id=HOTEL,
                name="Grand",
                currency="EUR",
                overbooking_percent=pct,
                pricing="{}",
                created_at=0.0,
                updated_at=0.0,
            )
        )
        conn.execute(
            insert(schema.room_type).values(
                id=ROOM_TYPE,
                hotel_id=HOTEL,
                name="double",
                capacity=2,
                base_price=10000,
                total_inventory=inventory,
            )
        )
        conn.execute(
            insert(inv),
            [
                {
                    "hotel_id": HOTEL,
                    "room_type_id": ROOM_TYPE,
                    "date": d,
                    "total_inventory": inventory,
                    "total_reserved": reserved,
                    "overbook_pct": pct,
                }
                for d in nights
            ],
        )


def hold(start: int, end: int, rooms: int = 1) -> Hold:
    return Hold(HOTEL, ROOM_TYPE, day(start), day(end), rooms)


def state(engine: Engine) -> dict[date, tuple[int, int]]:
    """Every inventory row as date -> (total_reserved, version)."""
    with engine.connect() as conn:
        rows = conn.execute(select(inv.c.date, inv.c.total_reserved, inv.c.version)).all()
    return {r.date: (r.total_reserved, r.version) for r in rows}


def reservations(engine: Engine) -> list[Any]:
    r = schema.reservation
    with engine.connect() as conn:
        return list(conn.execute(select(r.c.start_date, r.c.end_date, r.c.rooms)).all())


def booking(
    h: Hold, seen: list[list[Night]] | None = None
) -> Callable[[Connection, list[Night]], str]:
    """A finish callback that inserts the reservation row, as the reservation service does."""

    def finish(conn: Connection, nights: list[Night]) -> str:
        if seen is not None:
            seen.append(nights)
        rid = uuid.uuid4().hex
        conn.execute(
            insert(schema.reservation).values(
                reservation_id=rid,
                hotel_id=h.hotel_id,
                room_type_id=h.room_type_id,
                start_date=h.start,
                end_date=h.end,
                rooms=h.rooms,
                guests=1,
                status="pending",
                guest_id=1,
                total_price=10000 * h.rooms * len(nights),
                currency="EUR",
                nightly_prices=json.dumps([10000] * len(nights)),
                created_at=0.0,
                updated_at=0.0,
            )
        )
        return rid

    return finish


def race(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(0..count-1) on threads released together; results or the exceptions raised."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[i] = work(i)
        except BaseException as e:  # reported to the test, never lost in the thread
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            if t.ident is not None:
                t.join(120)
    assert not any(t.is_alive() for t in threads), "a racing thread never finished"
    return results


def outcomes(results: list[object], allowed: tuple[type[BaseException], ...]) -> Counter[str]:
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, allowed)]
    assert not unexpected, unexpected[:3]
    return Counter("ok" if isinstance(r, str) else type(r).__name__ for r in results)


@pytest.fixture(params=list(STRATEGIES))
def strategy(request: pytest.FixtureRequest) -> Strategy:
    if request.param == "optimistic":
        return Optimistic(rng=random.Random(1234))
    return STRATEGIES[request.param]()


# --- 1, 2: races ---------------------------------------------------------------------------------


def test_race_for_the_last_rooms(sql_engine: Engine, strategy: Strategy) -> None:
    seed(sql_engine, [day(0)], inventory=10, pct=110, reserved=3)  # cap 11: 8 left
    h = hold(0, 1)

    results = race(100, lambda _: strategy.reserve(sql_engine, h, booking(h)))

    counts = outcomes(results, (SoldOut,))
    assert counts == {"ok": 8, "SoldOut": 92}
    assert all(r.details == {"night": "2030-03-01"} for r in results if isinstance(r, SoldOut))
    committed = reservations(sql_engine)
    assert len(committed) == 8
    assert state(sql_engine)[day(0)][0] == 3 + len(committed) == 11


def test_random_multi_night_ranges(sql_engine: Engine, strategy: Strategy) -> None:
    window = [day(i) for i in range(14)]
    seed(sql_engine, window, inventory=3, pct=100)
    rng = random.Random(20300301)
    holds = []
    for _ in range(60):
        start = rng.randrange(0, 14)
        end = min(14, start + rng.randint(1, 5))
        holds.append(hold(start, end, rooms=rng.choice([1, 1, 2])))

    results = race(len(holds), lambda i: strategy.reserve(sql_engine, holds[i], booking(holds[i])))

    counts = outcomes(results, (SoldOut,))
    assert counts["ok"] >= 1 and counts["SoldOut"] >= 1
    committed = reservations(sql_engine)
    assert len(committed) == counts["ok"]
    after = state(sql_engine)
    for night in window:
        covering = sum(r.rooms for r in committed if r.start_date <= night < r.end_date)
        assert after[night][0] == covering <= 3, night


# --- 3-6: all or nothing, bad input, rollback, release ---------------------------------------


def test_all_or_nothing(sql_engine: Engine, strategy: Strategy) -> None:
    seed(sql_engine, [day(i) for i in range(5)], inventory=2, pct=100)
    with sql_engine.begin() as conn:
        conn.execute(update(inv).where(inv.c.date == day(2)).values(total_reserved=2))
    before = state(sql_engine)
    called: list[list[Night]] = []

    with pytest.raises(SoldOut) as caught:
        strategy.reserve(sql_engine, hold(0, 5), booking(hold(0, 5), called))

    assert caught.value.details == {"night": day(2).isoformat()}
    assert called == []
    assert state(sql_engine) == before
    assert reservations(sql_engine) == []


@pytest.mark.parametrize(
    ("have", "full", "missing"),
    [
        pytest.param([0, 1, 3, 4], None, 2, id="gap"),
        pytest.param([0, 1, 2], None, 3, id="past-end"),
        pytest.param([0, 1, 2, 4], 1, 3, id="full-night-before-gap"),
    ],
)
def test_missing_inventory_rows(
    sql_engine: Engine, strategy: Strategy, have: list[int], full: int | None, missing: int
) -> None:
    seed(sql_engine, [day(i) for i in have], inventory=2, pct=100)
    if full is not None:
        with sql_engine.begin() as conn:
            conn.execute(update(inv).where(inv.c.date == day(full)).values(total_reserved=2))
    before = state(sql_engine)

    with pytest.raises(InvalidRequest, match=f"^no inventory for {day(missing).isoformat()} "):
        strategy.reserve(sql_engine, hold(0, 5), booking(hold(0, 5)))

    assert state(sql_engine) == before
    assert reservations(sql_engine) == []


class Boom(Exception):
    pass


def test_finish_failure_rolls_everything_back(sql_engine: Engine, strategy: Strategy) -> None:
    seed(sql_engine, [day(i) for i in range(3)], inventory=5, pct=100, reserved=1)
    before = state(sql_engine)
    insert_then_fail = booking(hold(0, 3))

    def finish(conn: Connection, nights: list[Night]) -> str:
        insert_then_fail(conn, nights)
        raise Boom

    with pytest.raises(Boom):
        strategy.reserve(sql_engine, hold(0, 3), finish)

    assert state(sql_engine) == before
    assert reservations(sql_engine) == []


def test_finish_sees_values_before_the_hold(sql_engine: Engine, strategy: Strategy) -> None:
    seed(sql_engine, [day(i) for i in range(3)], inventory=10, pct=110, reserved=4)
    seen: list[list[Night]] = []

    rid = strategy.reserve(sql_engine, hold(0, 3, rooms=2), booking(hold(0, 3, rooms=2), seen))

    assert isinstance(rid, str)
    assert seen == [[Night(day(i), 10, 4, 110) for i in range(3)]]
    assert seen[0][0].cap == 11
    assert {d: v[0] for d, v in state(sql_engine).items()} == {day(i): 6 for i in range(3)}
    with sql_engine.connect() as conn:
        assert read_nights(conn, HOTEL, ROOM_TYPE, day(0), day(3)) == [
            Night(day(i), 10, 6, 110) for i in range(3)
        ]


def test_release_gives_the_rooms_back(sql_engine: Engine, strategy: Strategy) -> None:
    seed(sql_engine, [day(i) for i in range(3)], inventory=2, pct=100)
    h = hold(0, 3, rooms=2)
    strategy.reserve(sql_engine, h, booking(h))
    with pytest.raises(SoldOut):
        strategy.reserve(sql_engine, hold(1, 2), booking(hold(1, 2)))
    full = state(sql_engine)

    with sql.writing(sql_engine).begin() as conn:
        release(conn, h)

    after = state(sql_engine)
    assert {d: v[0] for d, v in after.items()} == {day(i): 0 for i in range(3)}
    assert all(after[d][1] == full[d][1] + 1 for d in after)  # optimistic readers notice
    strategy.reserve(sql_engine, hold(1, 2), booking(hold(1, 2)))
    assert state(sql_engine)[day(1)][0] == 1


def test_release_of_a_missing_night_raises(sql_engine: Engine) -> None:
    seed(sql_engine, [day(0), day(1)], inventory=2, pct=100, reserved=1)
    before = state(sql_engine)
    with pytest.raises(RuntimeError, match="2030-03-03"), sql_engine.begin() as conn:
        release(conn, hold(0, 3))
    assert state(sql_engine) == before


# --- 7: optimistic locking without retries loses sales ---------------------------------------


def test_optimistic_without_retries_loses_sales(sql_engine: Engine) -> None:
    seed(sql_engine, [day(0)], inventory=10, pct=110, reserved=3)
    h = hold(0, 1)
    strategy = Optimistic(retries=1, rng=random.Random(1))

    results = race(100, lambda _: strategy.reserve(sql_engine, h, booking(h)))

    counts = outcomes(results, (SoldOut, Contention))
    assert counts["Contention"] > 0  # rooms were left, yet requests were turned away
    assert counts["ok"] <= 8
    assert state(sql_engine)[day(0)][0] == 3 + len(reservations(sql_engine)) == 3 + counts["ok"]


@pytest.mark.parametrize("retries", [1, 100])
def test_optimistic_demand_equals_supply(sql_engine: Engine, retries: int) -> None:
    """30 guests, 30 rooms: with retries every room sells; without, rooms stay empty.

    With retries no request can run out of them: a failed version check means another request
    committed a room, which happens at most 29 times.
    """
    seed(sql_engine, [day(0)], inventory=30, pct=100)
    h = hold(0, 1)
    strategy = Optimistic(retries=retries, rng=random.Random(2))

    results = race(30, lambda _: strategy.reserve(sql_engine, h, booking(h)))

    counts = outcomes(results, (Contention,))
    sold = state(sql_engine)[day(0)][0]
    assert sold == counts["ok"] == len(reservations(sql_engine))
    if retries == 1:
        assert counts["Contention"] > 0 and sold < 30  # lost sales: unsold rooms, 409s
    else:
        assert counts == {"ok": 30}


def bump_versions_after_first_read(engine: Engine) -> list[int]:
    """Make the first inventory read stale: another writer commits right after it."""
    fired: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def _stale(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if (
            fired
            or not statement.lstrip().upper().startswith("SELECT")
            or "version" not in statement
        ):
            return
        fired.append(1)
        with sql.writing(engine).begin() as other:
            other.execute(update(inv).values(version=inv.c.version + 1))

    return fired


@pytest.mark.parametrize(("retries", "succeeds"), [(2, True), (1, False)])
def test_optimistic_retries_after_a_lost_version_check(
    sql_engine: Engine, retries: int, succeeds: bool
) -> None:
    seed(sql_engine, [day(0), day(1)], inventory=2, pct=100)
    fired = bump_versions_after_first_read(sql_engine)
    naps: list[float] = []
    strategy = Optimistic(retries=retries, rng=random.Random(5), sleep=naps.append)
    h = hold(0, 2)

    if succeeds:
        strategy.reserve(sql_engine, h, booking(h))
        assert {d: v[0] for d, v in state(sql_engine).items()} == {day(0): 1, day(1): 1}
        assert len(naps) == 1 and 0 <= naps[0] <= 0.005
    else:
        with pytest.raises(Contention):
            strategy.reserve(sql_engine, h, booking(h))
        assert {d: v[0] for d, v in state(sql_engine).items()} == {day(0): 0, day(1): 0}
        assert naps == []
    assert fired == [1]


def test_optimistic_sold_out_is_not_retried(sql_engine: Engine) -> None:
    seed(sql_engine, [day(0)], inventory=1, pct=100, reserved=1)
    naps: list[float] = []
    with pytest.raises(SoldOut):
        Optimistic(sleep=naps.append).reserve(sql_engine, hold(0, 1), booking(hold(0, 1)))
    assert naps == []


# --- retries on PostgreSQL deadlock / serialization failure ----------------------------------


class FakePgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"fake error {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "failures", "calls", "commits"),
    [
        pytest.param("40P01", 2, 3, True, id="deadlock-retried"),
        pytest.param("40001", 1, 2, True, id="serialization-retried"),
        pytest.param("40P01", 99, 5, False, id="bounded"),
        pytest.param("23505", 1, 1, False, id="other-errors-raise"),
    ],
)
def test_whole_attempt_retried_on_deadlock(
    sql_engine: Engine,
    strategy: Strategy,
    sqlstate: str,
    failures: int,
    calls: int,
    commits: bool,
) -> None:
    seed(sql_engine, [day(0), day(1)], inventory=2, pct=100)
    h = hold(0, 2)
    insert_row = booking(h)
    attempts: list[int] = []

    def finish(conn: Connection, nights: list[Night]) -> str:
        rid = insert_row(conn, nights)
        attempts.append(1)
        if len(attempts) <= failures:
            raise exc.OperationalError("UPDATE ...", {}, FakePgError(sqlstate))
        return rid

    if commits:
        strategy.reserve(sql_engine, h, finish)
    else:
        with pytest.raises(exc.OperationalError):
            strategy.reserve(sql_engine, h, finish)
    assert len(attempts) == calls
    expected = 1 if commits else 0
    assert len(reservations(sql_engine)) == expected
    assert {d: v[0] for d, v in state(sql_engine).items()} == {day(0): expected, day(1): expected}


# --- 8: the database's own backstop ------------------------------------------------------------


@pytest.mark.parametrize("reserved", [12, -1])
def test_check_constraint_refuses_an_oversell(sql_engine: Engine, reserved: int) -> None:
    seed(sql_engine, [day(0)], inventory=10, pct=110, reserved=11)
    with pytest.raises(exc.IntegrityError, match=schema.OVERSOLD_CHECK):
        with sql_engine.begin() as conn:
            conn.execute(update(inv).values(total_reserved=reserved))
    with pytest.raises(exc.IntegrityError, match=schema.OVERSOLD_CHECK):
        with sql_engine.begin() as conn:
            conn.execute(update(inv).values(total_reserved=inv.c.total_reserved + 1))
    assert state(sql_engine)[day(0)][0] == 11


# --- the small API ---------------------------------------------------------------------------


def test_make_strategy() -> None:
    assert [make_strategy(n).name for n in STRATEGIES] == list(STRATEGIES)
    made = make_strategy("optimistic", optimistic_retries=3)
    assert isinstance(made, Optimistic) and made.retries == 3
    with pytest.raises(ValueError, match="guarded, pessimistic, optimistic, constraint"):
        make_strategy("yolo")
    with pytest.raises(ValueError):
        Optimistic(retries=0)


def test_hold() -> None:
    assert hold(0, 3).nights() == [day(0), day(1), day(2)]
    with pytest.raises(InvalidRequest):
        hold(2, 2)
    with pytest.raises(InvalidRequest):
        hold(0, 1, rooms=0)
    assert Night(day(0), 7, 0, 110).cap == 7
    assert Night(day(0), 10, 0, 110).cap == 11


def test_read_nights_only_existing_rows_in_date_order(sql_engine: Engine) -> None:
    seed(sql_engine, [day(3), day(0), day(2)], inventory=4, pct=100, reserved=1)
    with sql_engine.connect() as conn:
        got = read_nights(conn, HOTEL, ROOM_TYPE, day(0), day(3))
        total = conn.execute(select(func.count()).select_from(inv)).scalar_one()
    assert got == [Night(day(0), 4, 1, 100), Night(day(2), 4, 1, 100)]
    assert total == 3


@pytest.mark.parametrize("given", ["engine", "writer"])
def test_sqlite_writes_begin_immediate_and_reads_do_not(
    tmp_path: Path, strategy: Strategy, given: str
) -> None:
    """IMMEDIATE: writers queue instead of failing on lock upgrade; reads never take the lock."""
    engine = sql.create_engine(sql.sqlite_url(tmp_path / "begin.db"))
    try:
        seed(engine, [day(0), day(1)], inventory=1, pct=100)
        begins: list[str] = []

        @event.listens_for(engine, "before_cursor_execute")
        def _log(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            if statement.startswith("BEGIN"):
                begins.append(statement)

        use = engine if given == "engine" else sql.writing(engine)
        strategy.reserve(use, hold(0, 2), booking(hold(0, 2)))
        booked = list(begins)
        begins.clear()
        with pytest.raises(SoldOut):
            strategy.reserve(use, hold(0, 2), booking(hold(0, 2)))
    finally:
        engine.dispose()

    reads = ["BEGIN DEFERRED"] if strategy.name == "optimistic" else []
    assert booked == [*reads, "BEGIN IMMEDIATE"]
    if strategy.name == "optimistic":  # sold out is seen by the unlocked read alone
        assert begins == ["BEGIN DEFERRED"]
    else:  # refused inside the write transaction; guarded/constraint then look for missing rows
        check = [] if strategy.name == "pessimistic" else ["BEGIN DEFERRED"]
        assert begins == ["BEGIN IMMEDIATE", *check]
