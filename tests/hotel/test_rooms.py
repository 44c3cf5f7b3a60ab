"""Check-in room assignment: one room never holds two stays that share a night.

Every test but the model-based one runs on SQLite and PostgreSQL (`sql_engine`): the rule is
the database's own (trigger / EXCLUDE), and the assignment code must be race-free on both.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import Engine, exc, insert, select

from scalelab.hotel import rooms, schema
from scalelab.hotel.errors import InvalidRequest, NoRoomFree
from scalelab.storage import sql

HOTEL = 7
D0 = date(2025, 6, 1)


def day(n: int) -> date:
    return D0 + timedelta(days=n)


def add_room_type(engine: Engine, name: str = "double") -> int:
    with engine.begin() as conn:
        if (
            conn.execute(select(schema.hotel.c.id).where(schema.hotel.c.id == HOTEL)).first()
            is None
        ):
            conn.execute(
                insert(schema.hotel).values(
                    id=HOTEL,
                    name="Grand",
                    currency="EUR",
                    overbooking_percent=100,
                    pricing="{}",
                    created_at=0.0,
                    updated_at=0.0,
                )
            )
        row = conn.execute(
            insert(schema.room_type)
            .values(hotel_id=HOTEL, name=name, capacity=2, base_price=10000, total_inventory=0)
            .returning(schema.room_type.c.id)
        ).one()
    return int(row[0])


def add_rooms(
    engine: Engine, room_type_id: int, count: int, *, in_service: bool = True
) -> list[int]:
    ids = []
    with engine.begin() as conn:
        for _ in range(count):
            n = conn.execute(select(schema.room.c.id)).all()
            row = conn.execute(
                insert(schema.room)
                .values(
                    hotel_id=HOTEL,
                    room_type_id=room_type_id,
                    number=f"{room_type_id}-{len(n)}",
                    in_service=in_service,
                )
                .returning(schema.room.c.id)
            ).one()
            ids.append(int(row[0]))
    return ids


def assign(engine: Engine, rid: str, type_id: int, start: int, end: int, n: int = 1) -> list[int]:
    return rooms.assign_rooms(
        engine,
        reservation_id=rid,
        hotel_id=HOTEL,
        room_type_id=type_id,
        start=day(start),
        end=day(end),
        rooms=n,
        now=1000.0,
    )


def all_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(schema.room_assignment)))


@pytest.fixture
def engine(sql_engine: Engine) -> Engine:
    schema.create_schema(sql_engine)
    return sql_engine


def test_overlapping_stays_get_different_rooms_back_to_back_reuses(engine: Engine) -> None:
    t = add_room_type(engine)
    r1, r2 = add_rooms(engine, t, 2)
    assert assign(engine, "a", t, 0, 3) == [r1]
    assert assign(engine, "b", t, 2, 5) == [r2]  # shares night 2 with "a"
    assert assign(engine, "c", t, 3, 4) == [r1]  # checks in the day "a" checks out
    with engine.connect() as conn:
        assert rooms.room_schedule(conn, r1, day(0), day(10)) == [
            ("a", day(0), day(3)),
            ("c", day(3), day(4)),
        ]
        assert rooms.room_schedule(conn, r1, day(3), day(4)) == [("c", day(3), day(4))]
        assert rooms.room_schedule(conn, r2, day(0), day(2)) == []
        assert rooms.assignments(conn, "b") == [r2]


def test_assign_is_idempotent(engine: Engine) -> None:
    t = add_room_type(engine)
    add_rooms(engine, t, 3)
    first = assign(engine, "a", t, 0, 2, n=2)
    assert assign(engine, "a", t, 0, 2, n=2) == first
    assert len(all_rows(engine)) == 2


def test_database_refuses_overlap_without_our_code(engine: Engine) -> None:
    t = add_room_type(engine)
    (r1,) = add_rooms(engine, t, 1)

    def raw(rid: str, start: int, end: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                insert(schema.room_assignment).values(
                    reservation_id=rid,
                    room_id=r1,
                    hotel_id=HOTEL,
                    start_date=day(start),
                    end_date=day(end),
                    assigned_at=0.0,
                )
            )

    raw("a", 0, 3)
    with pytest.raises(exc.IntegrityError, match=schema.OVERLAP_CONSTRAINT):
        raw("b", 2, 4)
    with pytest.raises(exc.IntegrityError, match=schema.OVERLAP_CONSTRAINT):
        raw("c", 1, 2)  # inside
    raw("d", 3, 5)  # back to back is allowed
    assert sorted(r.reservation_id for r in all_rows(engine)) == ["a", "d"]


def test_out_of_service_never_assigned_and_shortage_inserts_nothing(engine: Engine) -> None:
    t = add_room_type(engine)
    other = add_room_type(engine, "suite")
    (broken,) = add_rooms(engine, t, 1, in_service=False)
    (good,) = add_rooms(engine, t, 1)
    add_rooms(engine, other, 2)  # free, but the wrong type
    with pytest.raises(NoRoomFree, match="needed 2.*found 1") as info:
        assign(engine, "a", t, 0, 2, n=2)
    assert info.value.details == {"needed": 2, "found": 1}
    assert all_rows(engine) == []
    assert assign(engine, "b", t, 0, 2) == [good]
    with pytest.raises(NoRoomFree, match="found 0"):
        assign(engine, "c", t, 1, 3)
    assert [r.reservation_id for r in all_rows(engine)] == ["b"]
    assert broken not in {r.room_id for r in all_rows(engine)}


def test_bad_requests_are_refused(engine: Engine) -> None:
    t = add_room_type(engine)
    add_rooms(engine, t, 1)
    with pytest.raises(InvalidRequest):
        assign(engine, "a", t, 2, 2)
    with pytest.raises(InvalidRequest):
        assign(engine, "a", t, 0, 2, n=0)


def test_concurrent_check_ins_never_double_book(engine: Engine) -> None:
    t = add_room_type(engine)
    room_ids = add_rooms(engine, t, 5)
    rng = random.Random(7)
    stays = {}
    for i in range(30):
        start = rng.randrange(0, 9)
        stays[f"r{i}"] = (start, rng.randrange(start + 1, 11))
    barrier = threading.Barrier(len(stays))
    outcome: dict[str, list[int] | BaseException] = {}

    def check_in(rid: str) -> None:
        barrier.wait()
        try:
            outcome[rid] = assign(engine, rid, t, *stays[rid])
        except BaseException as error:  # recorded; anything but NoRoomFree fails below
            outcome[rid] = error

    threads = [threading.Thread(target=check_in, args=(rid,)) for rid in stays]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert len(outcome) == len(stays)

    rows = all_rows(engine)
    by_room: dict[int, list[tuple[date, date]]] = {}
    for r in rows:
        by_room.setdefault(r.room_id, []).append((r.start_date, r.end_date))
    for stays_in_room in by_room.values():
        stays_in_room.sort()
        for (_, end), (next_start, _) in zip(stays_in_room, stays_in_room[1:], strict=False):
            assert end <= next_start
    nights = Counter(
        r.start_date + timedelta(days=k)
        for r in rows
        for k in range((r.end_date - r.start_date).days)
    )
    assert max(nights.values()) <= 5

    placed = {r.reservation_id: [r.room_id] for r in rows}
    for rid, result in outcome.items():
        if isinstance(result, list):
            assert len(result) == 1 and placed[rid] == result
            continue
        assert isinstance(result, NoRoomFree), repr(result)
        assert rid not in placed
        # Honest refusal: rows are never deleted here, so every room is still busy.
        first, last = (day(n) for n in stays[rid])
        for room_id in room_ids:
            assert any(s < last and first < e for s, e in by_room.get(room_id, []))
    assert placed  # someone got in


def test_concurrent_retries_of_one_check_in_get_one_set_of_rooms(engine: Engine) -> None:
    t = add_room_type(engine)
    add_rooms(engine, t, 6)
    barrier = threading.Barrier(8)
    outcome: list[list[int] | BaseException] = []

    def check_in() -> None:
        barrier.wait()
        try:
            outcome.append(assign(engine, "same", t, 0, 3, n=2))
        except BaseException as error:
            outcome.append(error)

    threads = [threading.Thread(target=check_in) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    assert len(outcome) == 8 and all(o == outcome[0] for o in outcome), outcome
    assert sorted(r.room_id for r in all_rows(engine)) == outcome[0]


def test_lost_race_retries_with_a_fresh_read(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate a rival taking room 1 between our read and insert: the rule fires, we retry."""
    t = add_room_type(engine)
    r1, r2 = add_rooms(engine, t, 2)
    assign(engine, "rival", t, 0, 3)
    real = rooms._free_rooms
    calls = []

    def stale_once(*args: Any) -> list[int]:
        calls.append(args)
        return [r1] if len(calls) == 1 else real(*args)

    monkeypatch.setattr(rooms, "_free_rooms", stale_once)
    assert assign(engine, "a", t, 1, 2) == [r2]
    assert len(calls) == 2


def test_endless_contention_gives_up_and_inserts_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = add_room_type(engine)
    r1, _ = add_rooms(engine, t, 2)
    assign(engine, "rival", t, 0, 3)
    calls = []

    def always_stale(*args: Any) -> list[int]:
        calls.append(args)
        return [r1]

    monkeypatch.setattr(rooms, "_free_rooms", always_stale)
    with pytest.raises(NoRoomFree, match="attempts"):
        assign(engine, "a", t, 1, 2)
    assert len(calls) == rooms.MAX_ATTEMPTS
    assert [r.reservation_id for r in all_rows(engine)] == ["rival"]


def test_multi_room_assigns_distinct_rooms(engine: Engine) -> None:
    t = add_room_type(engine)
    r1, r2, r3 = add_rooms(engine, t, 3)
    assert assign(engine, "a", t, 0, 2, n=2) == [r1, r2]
    assert assign(engine, "b", t, 1, 3) == [r3]
    with engine.connect() as conn:
        assert rooms.assignments(conn, "a") == [r1, r2]


def test_unassign_frees_rooms(engine: Engine) -> None:
    t = add_room_type(engine)
    r1, r2 = add_rooms(engine, t, 2)
    assert assign(engine, "a", t, 0, 4, n=2) == [r1, r2]
    with pytest.raises(NoRoomFree):
        assign(engine, "b", t, 1, 2)
    with sql.writing(engine).begin() as conn:
        assert rooms.unassign(conn, "a") == 2
        assert rooms.unassign(conn, "a") == 0
    assert assign(engine, "b", t, 1, 2) == [r1]
    with engine.connect() as conn:
        assert rooms.assignments(conn, "a") == []


def test_unassign_rolls_back_with_the_callers_transaction(engine: Engine) -> None:
    t = add_room_type(engine)
    add_rooms(engine, t, 1)
    assigned = assign(engine, "a", t, 0, 2)
    with pytest.raises(RuntimeError), sql.writing(engine).begin() as conn:
        rooms.unassign(conn, "a")
        raise RuntimeError("payment refund failed")
    with engine.connect() as conn:
        assert rooms.assignments(conn, "a") == assigned


# Model-based: random assign/unassign against a dict of who holds which room on which night.

WINDOW = 8
RIDS = [f"g{i}" for i in range(6)]


class RoomAssignmentMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.engine = sql.create_engine(sql.sqlite_url(Path(self.tmp.name) / "m.db"))
        schema.create_schema(self.engine)
        self.types = [add_room_type(self.engine, "a"), add_room_type(self.engine, "b")]
        self.room_type: dict[int, int] = {}
        self.in_service: dict[int, bool] = {}
        for t, count, broken in ((self.types[0], 3, 1), (self.types[1], 2, 0)):
            for room_id in add_rooms(self.engine, t, count):
                self.room_type[room_id], self.in_service[room_id] = t, True
            for room_id in add_rooms(self.engine, t, broken, in_service=False):
                self.room_type[room_id], self.in_service[room_id] = t, False
        # reservation -> (rooms, start, end)
        self.model: dict[str, tuple[list[int], int, int]] = {}

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()

    def _free(self, t: int, start: int, end: int) -> list[int]:
        busy = {
            room_id
            for held, s, e in self.model.values()
            if s < end and start < e
            for room_id in held
        }
        return sorted(
            r
            for r, rt in self.room_type.items()
            if rt == t and self.in_service[r] and r not in busy
        )

    @rule(
        rid=st.sampled_from(RIDS),
        type_index=st.integers(0, 1),
        start=st.integers(0, WINDOW - 1),
        length=st.integers(1, 4),
        n=st.integers(1, 3),
    )
    def assign(self, rid: str, type_index: int, start: int, length: int, n: int) -> None:
        t, end = self.types[type_index], min(start + length, WINDOW)
        if rid in self.model:
            expected: list[int] | None = self.model[rid][0]
        else:
            free = self._free(t, start, end)
            expected = free[:n] if len(free) >= n else None
        try:
            got: list[int] | None = assign(self.engine, rid, t, start, end, n)
        except NoRoomFree:
            got = None
        assert got == expected
        if got is not None and rid not in self.model:
            self.model[rid] = (got, start, end)

    @rule(rid=st.sampled_from(RIDS))
    def unassign(self, rid: str) -> None:
        with sql.writing(self.engine).begin() as conn:
            count = rooms.unassign(conn, rid)
        assert count == len(self.model.pop(rid, ([], 0, 0))[0])

    @invariant()
    def database_matches_model(self) -> None:
        with self.engine.connect() as conn:
            for rid in RIDS:
                assert rooms.assignments(conn, rid) == self.model.get(rid, ([], 0, 0))[0]
            for room_id in self.room_type:
                expected = sorted(
                    (rid, day(s), day(e))
                    for rid, (held, s, e) in self.model.items()
                    if room_id in held
                )
                got = rooms.room_schedule(conn, room_id, day(0), day(WINDOW))
                assert sorted(got) == expected
                assert [s for _, s, _ in got] == sorted(s for _, s, _ in got)


RoomAssignmentMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25)
test_model = RoomAssignmentMachine.TestCase
