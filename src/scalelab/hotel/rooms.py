"""Check-in: give a reservation concrete rooms of the type it booked.

Guests book room *types* (the book's improved model), so inventory counts never name a room.
At check-in a reservation gets concrete rooms, and the database rule `room_stay_no_overlap`
(schema.py) keeps one room from holding two stays that share a night. A stay is
[start, end): the check-out day is free for the next guest.

How the check-then-insert stays correct under concurrency:
- SQLite: the transaction starts with BEGIN IMMEDIATE (`sql.writing`), so writers queue and
  nothing can change between our read and our insert; the trigger is only a backstop.
- PostgreSQL (READ COMMITTED): read free rooms, lock the chosen room rows in id order, insert.
  A transaction that took one of them after our read makes the EXCLUDE constraint fire once we
  hold the lock; we roll back and retry with a fresh read, a bounded number of times. The row
  locks matter: two transactions inserting conflicting rows into an exclusion constraint wait
  on each other and one dies only after deadlock_timeout; with the locks the second inserter
  waits for the first to finish and then fails at once. A transaction-scoped advisory lock on
  the reservation id makes concurrent calls for the same reservation take turns, so an
  idempotent retry can never leave it with two sets of rooms.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import Connection, Engine, delete, exc, exists, func, insert, select

from scalelab.hotel.errors import InvalidRequest, NoRoomFree
from scalelab.hotel.schema import OVERLAP_CONSTRAINT, room, room_assignment
from scalelab.storage import sql

MAX_ATTEMPTS = 10
# First key of the two-int advisory lock, so ours never collide with other modules' locks.
_ASSIGN_LOCK_CLASS = 0x686F7465  # "hote"
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock, serialization failure


def assign_rooms(
    engine: Engine,
    *,
    reservation_id: str,
    hotel_id: int,
    room_type_id: int,
    start: date,
    end: date,
    rooms: int,
    now: float,
) -> list[int]:
    """Assign `rooms` in-service rooms of the type, free for every night of the stay.

    Returns the room ids, sorted. Idempotent: a reservation that already has rooms gets the
    same ones back. Raises NoRoomFree, inserting nothing, when too few rooms are free.
    """
    if end <= start:
        raise InvalidRequest("a stay ends after it starts", start=start, end=end)
    if rooms < 1:
        raise InvalidRequest("assign at least one room", rooms=rooms)
    for _attempt in range(MAX_ATTEMPTS):
        try:
            with sql.write_transaction(engine) as conn:
                return _assign_once(
                    conn,
                    reservation_id=reservation_id,
                    hotel_id=hotel_id,
                    room_type_id=room_type_id,
                    start=start,
                    end=end,
                    rooms=rooms,
                    now=now,
                )
        except exc.IntegrityError as error:
            if OVERLAP_CONSTRAINT not in str(error.orig):
                raise  # another rule broke: a bug, not a race
        except exc.OperationalError as error:
            if getattr(error.orig, "sqlstate", None) not in _RETRYABLE_SQLSTATES:
                raise
    raise NoRoomFree(
        f"needed {rooms} room(s) of type {room_type_id} from {start} to {end}; other check-ins "
        f"kept taking them ({MAX_ATTEMPTS} attempts)",
        needed=rooms,
        attempts=MAX_ATTEMPTS,
    )


def _assign_once(
    conn: Connection,
    *,
    reservation_id: str,
    hotel_id: int,
    room_type_id: int,
    start: date,
    end: date,
    rooms: int,
    now: float,
) -> list[int]:
    """One attempt in one transaction; an IntegrityError means someone took a room first."""
    postgres = not sql.is_sqlite(conn.engine)
    if postgres:
        conn.execute(
            select(func.pg_advisory_xact_lock(_ASSIGN_LOCK_CLASS, func.hashtext(reservation_id)))
        )
    existing = assignments(conn, reservation_id)
    if existing:
        return existing
    chosen = _free_rooms(conn, hotel_id, room_type_id, start, end, rooms)
    if len(chosen) < rooms:
        raise NoRoomFree(
            f"needed {rooms} free room(s) of type {room_type_id} from {start} to {end}, "
            f"found {len(chosen)}",
            needed=rooms,
            found=len(chosen),
        )
    if postgres:
        conn.execute(
            select(room.c.id)
            .where(room.c.id.in_(chosen))
            .order_by(room.c.id)
            .with_for_update(key_share=True)
        )
    conn.execute(
        insert(room_assignment),
        [
            {
                "reservation_id": reservation_id,
                "room_id": room_id,
                "hotel_id": hotel_id,
                "start_date": start,
                "end_date": end,
                "assigned_at": now,
            }
            for room_id in chosen
        ],
    )
    return sorted(chosen)


def _free_rooms(
    conn: Connection, hotel_id: int, room_type_id: int, start: date, end: date, limit: int
) -> list[int]:
    """Up to `limit` in-service rooms of the type with no stay sharing a night, lowest id first."""
    taken = exists().where(
        room_assignment.c.room_id == room.c.id,
        room_assignment.c.start_date < end,
        start < room_assignment.c.end_date,
    )
    rows = conn.execute(
        select(room.c.id)
        .where(
            room.c.hotel_id == hotel_id,
            room.c.room_type_id == room_type_id,
            room.c.in_service,
            ~taken,
        )
        .order_by(room.c.id)
        .limit(limit)
    )
    return [int(r[0]) for r in rows]


def assignments(conn: Connection, reservation_id: str) -> list[int]:
    """The room ids assigned to a reservation, sorted (empty before check-in)."""
    rows = conn.execute(
        select(room_assignment.c.room_id)
        .where(room_assignment.c.reservation_id == reservation_id)
        .order_by(room_assignment.c.room_id)
    )
    return [int(r[0]) for r in rows]


def unassign(conn: Connection, reservation_id: str) -> int:
    """Free a reservation's rooms in the caller's transaction (cancel, early check-out)."""
    result = conn.execute(
        delete(room_assignment).where(room_assignment.c.reservation_id == reservation_id)
    )
    return int(result.rowcount)


def room_schedule(
    conn: Connection, room_id: int, start: date, end: date
) -> list[tuple[str, date, date]]:
    """(reservation_id, start, end) of the room's stays sharing a night with [start, end)."""
    rows = conn.execute(
        select(
            room_assignment.c.reservation_id,
            room_assignment.c.start_date,
            room_assignment.c.end_date,
        )
        .where(
            room_assignment.c.room_id == room_id,
            room_assignment.c.start_date < end,
            start < room_assignment.c.end_date,
        )
        .order_by(room_assignment.c.start_date, room_assignment.c.reservation_id)
    )
    return [(str(r[0]), r[1], r[2]) for r in rows]
