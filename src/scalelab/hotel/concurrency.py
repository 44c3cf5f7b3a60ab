"""How a booking claims room inventory: the book's three concurrency controls, plus our default.

A booking claims `rooms` rooms on every night of [start, end) of one room type, all nights or
none, in ONE transaction in which the caller's `finish` callback also runs (it inserts the
reservation, prices it...), so inventory always equals the sum of committed reservations.
A night is reservable up to `total_reserved * 100 <= total_inventory * overbook_pct`.

- `Guarded` (default): one conditional `UPDATE ... WHERE <fits> RETURNING` per night. The
  database checks and claims in one step, so there is no read-then-write race to lose and no
  retry loop; it only queues writers on the row lock.
- `Pessimistic`: `SELECT ... FOR UPDATE`, check in Python, then write (book: pessimistic
  locking). Simple to reason about; holds the locks across a round trip.
- `Optimistic`: read with the `version` column unlocked, write `WHERE version = :seen`, retry
  with jittered backoff when someone else won (book: optimistic locking). Cheap when contention
  is low, wasteful (or failing with `Contention`) when it is high.
- `Constraint`: blind `total_reserved + n` and let the CHECK `inventory_not_oversold` refuse an
  oversell (book: database constraints). Every strategy runs with that CHECK as a backstop.

Nights are always written in ascending date order: on PostgreSQL that is one lock order for every
transaction, so overlapping stays cannot deadlock (a deadlock or serialization failure is still
retried, boundedly, in case a `finish` callback takes other locks). On SQLite every write
transaction begins IMMEDIATE (`sql.writing`): writers queue on the database lock instead of
failing when a reader upgrades to a writer. Statements are built once at import; SQLAlchemy's
compiled cache then makes each execute cheap, which matters since this is the bench's hot path.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, Integer, and_, bindparam, exc, select, update

from scalelab.hotel import schema
from scalelab.hotel.errors import Contention, InvalidRequest, SoldOut
from scalelab.hotel.model import nights as stay_nights
from scalelab.storage import sql

T = TypeVar("T")

__all__ = [
    "STRATEGIES",
    "Constraint",
    "Finish",
    "Guarded",
    "Hold",
    "Night",
    "Optimistic",
    "Pessimistic",
    "Strategy",
    "make_strategy",
    "read_nights",
    "release",
]


@dataclass(frozen=True)
class Hold:
    """What a booking claims: `rooms` rooms of one type on each night of [start, end)."""

    hotel_id: int
    room_type_id: int
    start: date
    end: date
    rooms: int

    def __post_init__(self) -> None:
        # An empty stay would "succeed" while claiming nothing; refuse it here, once.
        if self.end <= self.start:
            raise InvalidRequest("a stay ends after it starts", start=str(self.start))
        if self.rooms < 1:
            raise InvalidRequest("a booking claims at least one room", rooms=self.rooms)

    def nights(self) -> list[date]:
        return stay_nights(self.start, self.end)


@dataclass(frozen=True)
class Night:
    """One night's inventory as `finish` sees it: the values BEFORE the hold was applied."""

    date: date
    total_inventory: int
    reserved_before: int
    overbook_pct: int

    @property
    def cap(self) -> int:
        """Rooms reservable with overbooking (integer maths, as the CHECK does)."""
        return self.total_inventory * self.overbook_pct // 100


Finish = Callable[[Connection, list[Night]], T]


class Strategy(Protocol):
    """Claims a hold's inventory and runs `finish` in the same transaction, or raises."""

    name: str

    def reserve(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T: ...


# --- statements, built once -------------------------------------------------------------------

_inv = schema.room_type_inventory
_c = _inv.c
# Bind names must differ from column names: UPDATE reserves those for its SET clause.
_ONE = and_(
    _c.hotel_id == bindparam("hid"),
    _c.room_type_id == bindparam("rtid"),
    _c.date == bindparam("night"),
)
_RANGE = and_(
    _c.hotel_id == bindparam("hid"),
    _c.room_type_id == bindparam("rtid"),
    _c.date >= bindparam("lo"),
    _c.date < bindparam("hi"),
)
_N = bindparam("n", type_=Integer)
_RETURNING = (_c.total_inventory, _c.total_reserved, _c.overbook_pct)

_GUARDED = (
    update(_inv)
    .where(_ONE, (_c.total_reserved + _N) * 100 <= _c.total_inventory * _c.overbook_pct)
    .values(total_reserved=_c.total_reserved + _N, version=_c.version + 1)
    .returning(*_RETURNING)
)
_BLIND = (
    update(_inv)
    .where(_ONE)
    .values(total_reserved=_c.total_reserved + _N, version=_c.version + 1)
    .returning(*_RETURNING)
)
_CLAIM_RANGE = (  # under FOR UPDATE / the SQLite write lock: the rows are already ours
    update(_inv).where(_RANGE).values(total_reserved=_c.total_reserved + _N, version=_c.version + 1)
)
_VERSIONED = (
    update(_inv)
    .where(_ONE, _c.version == bindparam("seen", type_=Integer))
    .values(total_reserved=bindparam("new", type_=Integer), version=_c.version + 1)
)
_RELEASE = (
    update(_inv).where(_ONE).values(total_reserved=_c.total_reserved - _N, version=_c.version + 1)
)
_READ = (
    select(_c.date, _c.total_inventory, _c.total_reserved, _c.overbook_pct, _c.version)
    .where(_RANGE)
    .order_by(_c.date)
)
_READ_FOR_UPDATE = _READ.with_for_update()
_DATES = select(_c.date).where(_RANGE)

_DB_RETRIES = 5  # PostgreSQL deadlock / serialization failure: retry the whole attempt
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


# --- shared machinery ---------------------------------------------------------------------------


class _Short(Exception):
    """Internal: a night could not be claimed; raised inside the transaction to roll it back."""

    def __init__(self, night: date, *, missing: bool | None = None) -> None:
        super().__init__(night)
        self.night = night
        self.missing = missing  # None: not known, look (only ever on this failure path)


def _range_params(hold: Hold) -> dict[str, Any]:
    return {"hid": hold.hotel_id, "rtid": hold.room_type_id, "lo": hold.start, "hi": hold.end}


def _night_params(hold: Hold, night: date, **extra: Any) -> dict[str, Any]:
    return {"hid": hold.hotel_id, "rtid": hold.room_type_id, "night": night, **extra}


def _reading(engine: Engine) -> Engine:
    """Reads never need SQLite's write lock, even when the caller hands us its writer engine."""
    if engine.get_execution_options().get("sqlite_begin", "DEFERRED") == "DEFERRED":
        return engine
    return engine.execution_options(sqlite_begin="DEFERRED")


def _missing(conn: Connection, hold: Hold) -> list[date]:
    have = set(conn.execute(_DATES, _range_params(hold)).scalars())
    return [d for d in hold.nights() if d not in have]


def _refusal(engine: Engine, short: _Short, hold: Hold) -> InvalidRequest | SoldOut:
    """After rollback: a missing inventory row is a bad request, anything else is sold out."""
    if short.missing:
        return _no_inventory(short.night, hold)
    if short.missing is None:
        with _reading(engine).connect() as conn:
            missing = _missing(conn, hold)
        if missing:
            return _no_inventory(missing[0], hold)
    return SoldOut(
        f"no {hold.rooms} room(s) of type {hold.room_type_id} left on {short.night.isoformat()}",
        night=short.night.isoformat(),
    )


def _no_inventory(night: date, hold: Hold) -> InvalidRequest:
    return InvalidRequest(
        f"no inventory for {night.isoformat()} (hotel {hold.hotel_id}, "
        f"room type {hold.room_type_id})",
        night=night.isoformat(),
    )


def _retryable(error: exc.DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE_SQLSTATES


def _with_db_retries(engine: Engine, hold: Hold, attempt: Callable[[], T]) -> T:
    """Run one transactional attempt; redo it on deadlock/serialization failure; map refusals."""
    for tries in range(1, _DB_RETRIES + 1):
        try:
            return attempt()
        except _Short as short:
            raise _refusal(engine, short, hold) from None
        except exc.DBAPIError as error:
            if tries == _DB_RETRIES or not _retryable(error):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _rows_to_nights(rows: Sequence[Any], hold: Hold) -> list[Night]:
    """Rows of _READ as Nights; raises _Short on the first missing or full night."""
    wanted = hold.nights()
    if len(rows) != len(wanted):
        have = {r.date for r in rows}
        raise _Short(next(d for d in wanted if d not in have), missing=True)
    result = []
    for row in rows:
        night = Night(row.date, row.total_inventory, row.total_reserved, row.overbook_pct)
        if night.reserved_before + hold.rooms > night.cap:
            raise _Short(night.date, missing=False)
        result.append(night)
    return result


def _claim_each_night(
    engine: Engine,
    hold: Hold,
    finish: Callable[[Connection, list[Night]], T],
    statement: Any,
    *,
    check_refuses: bool,
) -> T:
    """Run statement (an UPDATE ... RETURNING) per night in ascending order, then finish.

    No row back: that night was full (or has no row; _refusal looks). check_refuses: a
    violation of the CHECK `inventory_not_oversold` means "full" rather than a bug.
    """
    n = hold.rooms
    claimed = []
    with sql.write_transaction(engine) as conn:
        for night in hold.nights():
            try:
                row = conn.execute(statement, _night_params(hold, night, n=n)).first()
            except exc.IntegrityError as error:
                if not check_refuses or schema.OVERSOLD_CHECK not in str(error.orig):
                    raise
                raise _Short(night) from None  # a later night may lack a row: look
            if row is None:
                raise _Short(night)
            total_inventory, total_reserved, overbook_pct = row
            claimed.append(Night(night, total_inventory, total_reserved - n, overbook_pct))
        return finish(conn, claimed)


# --- the strategies -------------------------------------------------------------------------------


class Guarded:
    """Check-and-claim in one conditional UPDATE per night: no race window, no retries."""

    name = "guarded"

    def reserve(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        return _with_db_retries(engine, hold, lambda: self._attempt(engine, hold, finish))

    def _attempt(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        # The WHERE refuses an oversell, so the CHECK firing here would be a bug: let it raise.
        return _claim_each_night(engine, hold, finish, _GUARDED, check_refuses=False)


class Pessimistic:
    """Lock the stay's rows (FOR UPDATE; SQLite: the IMMEDIATE write lock), check, then write."""

    name = "pessimistic"

    def reserve(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        return _with_db_retries(engine, hold, lambda: self._attempt(engine, hold, finish))

    def _attempt(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        # SQLite has no row locks: BEGIN IMMEDIATE already made this transaction the only writer.
        read = _READ if sql.is_sqlite(engine) else _READ_FOR_UPDATE
        params = _range_params(hold)
        with sql.write_transaction(engine) as conn:
            nights = _rows_to_nights(conn.execute(read, params).all(), hold)
            updated = conn.execute(_CLAIM_RANGE, {**params, "n": hold.rooms}).rowcount
            if updated != len(nights):  # cannot happen while we hold the locks
                raise RuntimeError(f"claimed {updated} of {len(nights)} locked nights")
            return finish(conn, nights)


class _Conflict(Exception):
    """Internal: a version check failed; someone else wrote a night since we read it."""


class Optimistic:
    """Read unlocked with versions, write `WHERE version = :seen`, retry when someone else won."""

    name = "optimistic"

    def __init__(
        self,
        retries: int = 100,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 1:
            raise ValueError("optimistic retries must be >= 1")
        self.retries = retries
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep

    def reserve(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        params = _range_params(hold)
        reader = _reading(engine)
        for attempt in range(self.retries):
            with reader.connect() as conn:  # a plain short read: no lock held while we decide
                rows = conn.execute(_READ, params).all()
            try:
                nights = _rows_to_nights(rows, hold)
            except _Short as short:  # sold out is an answer, not a conflict: no retry
                raise _refusal(engine, short, hold) from None
            try:
                write = functools.partial(self._write, engine, hold, rows, nights, finish)
                return _with_db_retries(engine, hold, write)
            except _Conflict:
                if attempt + 1 < self.retries:
                    self._sleep(self._backoff(attempt))
        raise Contention(
            f"inventory kept changing under {self.retries} optimistic attempt(s); try again",
            attempts=self.retries,
        )

    def _backoff(self, attempt: int) -> float:
        """Full jitter, 0.5 ms growing to at most 5 ms: spreads retries, never stalls a request."""
        return self._rng.uniform(0, min(0.005, 0.0005 * (attempt + 1)))

    def _write(
        self,
        engine: Engine,
        hold: Hold,
        rows: Sequence[Any],
        nights: list[Night],
        finish: Callable[[Connection, list[Night]], T],
    ) -> T:
        with sql.write_transaction(engine) as conn:
            for row, night in zip(rows, nights, strict=True):
                params = _night_params(
                    hold, night.date, seen=row.version, new=night.reserved_before + hold.rooms
                )
                if conn.execute(_VERSIONED, params).rowcount != 1:
                    raise _Conflict
            return finish(conn, nights)


class Constraint:
    """Blind increments; the CHECK `inventory_not_oversold` refuses an oversell for us."""

    name = "constraint"

    def reserve(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        return _with_db_retries(engine, hold, lambda: self._attempt(engine, hold, finish))

    def _attempt(
        self, engine: Engine, hold: Hold, finish: Callable[[Connection, list[Night]], T]
    ) -> T:
        return _claim_each_night(engine, hold, finish, _BLIND, check_refuses=True)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "guarded": Guarded,
    "pessimistic": Pessimistic,
    "optimistic": Optimistic,
    "constraint": Constraint,
}


def make_strategy(name: str, *, optimistic_retries: int = 100) -> Strategy:
    """The strategy a setting names (SCALELAB_HOTEL_CONCURRENCY)."""
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown concurrency strategy {name!r}: choose one of {', '.join(STRATEGIES)}"
        )
    if name == "optimistic":
        return Optimistic(retries=optimistic_retries)
    return STRATEGIES[name]()


def release(conn: Connection, hold: Hold) -> None:
    """Give a hold's rooms back (cancel, expiry), in the caller's transaction.

    Ascending dates, like every claim, so it cannot deadlock against one. Bumps `version` so an
    optimistic reader that saw the old count retries instead of overwriting the release.
    """
    for night in hold.nights():
        if conn.execute(_RELEASE, _night_params(hold, night, n=hold.rooms)).rowcount != 1:
            raise RuntimeError(
                f"no inventory row to release for {night.isoformat()} (hotel {hold.hotel_id}, "
                f"room type {hold.room_type_id})"
            )


def read_nights(
    conn: Connection, hotel_id: int, room_type_id: int, start: date, end: date
) -> list[Night]:
    """The nights of [start, end) that have inventory rows, in date order; a plain read."""
    params = {"hid": hotel_id, "rtid": room_type_id, "lo": start, "hi": end}
    return [
        Night(r.date, r.total_inventory, r.total_reserved, r.overbook_pct)
        for r in conn.execute(_READ, params)
    ]
