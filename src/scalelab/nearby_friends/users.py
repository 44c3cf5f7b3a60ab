"""Users, their bearer tokens, friendships and sharing settings: the REST server's data.

Tokens are random and stored as their sha256, so a database dump hands out no sessions; a
verified hash is cached in a dict (tokens are never revoked), which keeps the WebSocket
handshake and every REST call off the database after the first time. A friendship is two
rows written in one transaction, always in the same order (smaller id first) so that two
people befriending each other at once on PostgreSQL queue on a row lock instead of deadlocking.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Insert, Table, and_, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from scalelab.nearby_friends.errors import Invalid, NotFound, Unauthorized
from scalelab.nearby_friends.schema import friendships, tokens, users
from scalelab.storage.sql import write_transaction

Clock = Callable[[], float]
T = TypeVar("T")

_BULK_CHUNK = 20_000  # rows per executemany: bounds memory, not transactions
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class SessionView:
    """What a WebSocket connect needs of one user, read in one query (see session_view)."""

    friends: list[int]  # ascending
    sharing_friends: list[int]  # the friends who share their location, ascending
    sharing: bool
    random_nearby: bool


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return f"nf-{secrets.token_urlsafe(24)}"


def _insert_ignoring_duplicates(engine: Engine) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING into friendships: re-adding is not an error."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(friendships).on_conflict_do_nothing()
    return sqlite.insert(friendships).on_conflict_do_nothing()


def _chunks(rows: Iterable[T], size: int = _BULK_CHUNK) -> Iterator[list[T]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _insert_many(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[tuple[Any, ...]],
    *,
    ignore_duplicates: bool = False,
) -> None:
    """Insert rows (tuples in `columns` order) in the connection's transaction, fast.

    For the bulk helpers only (a bench's 10,000 users x 400 friends is 4M rows). SQLite: the
    DBAPI's executemany, since SQLAlchemy's per-row bookkeeping costs twice SQLite's own work
    for rows this narrow. PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT,
    about twice as fast as SQLAlchemy's multi-VALUES batches. Only for plain int/float/str
    columns of our own tables.
    """
    names = ", ".join(columns)
    conflict = " ON CONFLICT DO NOTHING" if ignore_duplicates else ""
    cursor: Any = conn.connection.cursor()
    try:
        if conn.dialect.name == "sqlite":
            marks = ", ".join("?" for _ in columns)
            sql = f"INSERT INTO {table.name} ({names}) VALUES ({marks}){conflict}"
            for chunk in _chunks(rows):
                cursor.executemany(sql, chunk)
            return
        load = f"_load_{table.name}"
        cursor.execute(f"CREATE TEMP TABLE {load} (LIKE {table.name}) ON COMMIT DROP")
        with cursor.copy(f"COPY {load} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {load}{conflict}")
        cursor.execute(f"DROP TABLE {load}")
    finally:
        cursor.close()


class UserStore:
    """Users, tokens, friendships and settings over one SQL engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Clock = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._befriend = _insert_ignoring_duplicates(engine)
        self._tokens: dict[str, int] = {}  # token hash -> user id (tokens are never revoked)

    # -- users and tokens --------------------------------------------------------------------

    def register(self, name: str) -> tuple[int, str]:
        """A new user and their bearer token (shown once: only its hash is kept)."""
        token = _new_token()
        now = self.clock()
        with write_transaction(self.engine) as conn:
            user_id = int(
                conn.execute(
                    insert(users).values(name=name, created_at=now).returning(users.c.id)
                ).scalar_one()
            )
            conn.execute(
                insert(tokens).values(token_hash=token_hash(token), user_id=user_id, created_at=now)
            )
        return user_id, token

    def authenticate(self, token: str) -> int:
        """The user a bearer token belongs to; Unauthorized if none."""
        if not token:
            raise Unauthorized("send Authorization: Bearer <token>")
        digest = token_hash(token)
        user_id = self._tokens.get(digest)
        if user_id is None:
            with self.engine.connect() as conn:
                found = conn.execute(
                    select(tokens.c.user_id).where(tokens.c.token_hash == digest)
                ).scalar_one_or_none()
            if found is None:
                raise Unauthorized("the token is not valid")
            user_id = self._tokens[digest] = int(found)
        return user_id

    def get(self, user_id: int) -> dict[str, Any]:
        """{id, name, created_at, sharing, random_nearby}; NotFound if no such user."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.id == user_id)).first()
        if row is None:
            raise NotFound(f"no user {user_id}", user_id=user_id)
        return {
            "id": int(row.id),
            "name": row.name,
            "created_at": float(row.created_at),
            "sharing": bool(row.sharing),
            "random_nearby": bool(row.random_nearby),
        }

    def _require_users(self, conn: Connection, user_ids: Iterable[int]) -> None:
        """NotFound naming the smallest id that is not a user."""
        wanted = sorted(set(user_ids))
        for chunk in _chunks(wanted, _IN_CHUNK):
            query = select(users.c.id).where(users.c.id.in_(chunk))
            found = {int(u) for u in conn.execute(query).scalars()}
            for user_id in chunk:
                if user_id not in found:
                    raise NotFound(f"no user {user_id}", user_id=user_id)

    # -- friendships ---------------------------------------------------------------------------

    def friends(self, user_id: int) -> list[int]:
        """The user's friends' ids, ascending (empty for an unknown user)."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(friendships.c.friend_id)
                .where(friendships.c.user_id == user_id)
                .order_by(friendships.c.friend_id)
            ).scalars()
            return [int(f) for f in found]

    def sharing_friends(self, user_id: int) -> list[int]:
        """The friends who currently share their location, ascending: whom a snapshot shows."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(friendships.c.friend_id)
                .join(users, users.c.id == friendships.c.friend_id)
                .where(friendships.c.user_id == user_id, users.c.sharing.is_(True))
                .order_by(friendships.c.friend_id)
            ).scalars()
            return [int(f) for f in found]

    def session_view(self, user_id: int) -> SessionView:
        """The user's settings and friends (with whether each shares) in one statement.

        Every socket connect asks this, 400 friends in the book's sizing: one query over the
        friendship key range, joined to the friends' sharing flag, instead of three, and plain
        tuples instead of ORM scalars (which cost more than the query itself). NotFound if no
        such user."""
        me = users.alias("me")
        query = (
            select(me.c.sharing, me.c.random_nearby, friendships.c.friend_id, users.c.sharing)
            .select_from(me)
            .outerjoin(friendships, friendships.c.user_id == me.c.id)
            .outerjoin(users, users.c.id == friendships.c.friend_id)
            .where(me.c.id == user_id)
            .order_by(friendships.c.friend_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        if not rows:
            raise NotFound(f"no user {user_id}", user_id=user_id)
        friends = [int(r[2]) for r in rows if r[2] is not None]
        sharing = [int(r[2]) for r in rows if r[2] is not None and r[3]]
        return SessionView(friends, sharing, bool(rows[0][0]), bool(rows[0][1]))

    def are_friends(self, a: int, b: int) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(friendships.c.user_id).where(
                    friendships.c.user_id == a, friendships.c.friend_id == b
                )
            ).first()
        return row is not None

    def add_friend(self, a: int, b: int) -> bool:
        """Befriend a and b (both directions, one transaction); False if they already were.

        Invalid for a == b, NotFound for an unknown user.
        """
        if a == b:
            raise Invalid("a user cannot befriend themselves", user_id=a)
        lo, hi = min(a, b), max(a, b)
        now = self.clock()
        with write_transaction(self.engine) as conn:
            self._require_users(conn, (a, b))
            added = False
            for user_id, friend_id in ((lo, hi), (hi, lo)):
                # RETURNING, not rowcount: drivers do not all report rowcount for INSERT.
                row = conn.execute(
                    self._befriend.values(
                        user_id=user_id, friend_id=friend_id, created_at=now
                    ).returning(friendships.c.user_id)
                ).first()
                added = added or row is not None
        return added

    def remove_friend(self, a: int, b: int) -> bool:
        """End a friendship (both directions); False if there was none."""
        if a == b:
            raise Invalid("a user cannot unfriend themselves", user_id=a)
        lo, hi = min(a, b), max(a, b)
        with write_transaction(self.engine) as conn:
            removed = 0
            for user_id, friend_id in ((lo, hi), (hi, lo)):
                result = conn.execute(
                    delete(friendships).where(
                        and_(friendships.c.user_id == user_id, friendships.c.friend_id == friend_id)
                    )
                )
                removed += max(0, result.rowcount)
        return removed > 0

    # -- settings --------------------------------------------------------------------------

    def settings(self, user_id: int) -> tuple[bool, bool]:
        """(sharing, random_nearby); NotFound if no such user."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users.c.sharing, users.c.random_nearby).where(users.c.id == user_id)
            ).first()
        if row is None:
            raise NotFound(f"no user {user_id}", user_id=user_id)
        return bool(row.sharing), bool(row.random_nearby)

    def set_settings(
        self, user_id: int, sharing: bool | None = None, random_nearby: bool | None = None
    ) -> tuple[bool, bool]:
        """Change what is given (None leaves a setting alone); the settings afterwards."""
        values: dict[str, bool] = {}
        if sharing is not None:
            values["sharing"] = sharing
        if random_nearby is not None:
            values["random_nearby"] = random_nearby
        if not values:
            return self.settings(user_id)
        with write_transaction(self.engine) as conn:
            row = conn.execute(
                update(users)
                .where(users.c.id == user_id)
                .values(**values)
                .returning(users.c.sharing, users.c.random_nearby)
            ).first()
        if row is None:
            raise NotFound(f"no user {user_id}", user_id=user_id)
        return bool(row.sharing), bool(row.random_nearby)

    # -- bulk helpers for benches and demos ------------------------------------------------

    def bulk_create(self, n: int, name_prefix: str = "user") -> list[tuple[int, str]]:
        """n users named `{name_prefix}-{i}` and their tokens, in one transaction, in order."""
        if n <= 0:
            return []
        now = self.clock()
        issued = [_new_token() for _ in range(n)]
        with write_transaction(self.engine) as conn:
            ids: list[int] = []
            for chunk in _chunks(
                {"name": f"{name_prefix}-{i}", "created_at": now} for i in range(n)
            ):
                rows = conn.execute(
                    insert(users).returning(users.c.id, sort_by_parameter_order=True), chunk
                )
                ids.extend(int(r[0]) for r in rows)
            _insert_many(
                conn,
                tokens,
                ("token_hash", "user_id", "created_at"),
                ((token_hash(t), u, now) for u, t in zip(ids, issued, strict=True)),
            )
        return list(zip(ids, issued, strict=True))

    def bulk_befriend(self, pairs: Iterable[tuple[int, int]]) -> int:
        """Befriend every pair (both directions) in one transaction; existing ones are kept.

        Self pairs and repeats are skipped; an unknown user id fails the whole batch with
        NotFound. Returns how many distinct pairs were given. Rows go in in key order, which
        keeps the B-tree appends local; for graphs beyond a few million pairs call it per slice.
        """
        both: set[tuple[int, int]] = set()
        for a, b in pairs:
            if a != b:
                both.add((a, b))
                both.add((b, a))
        directed = sorted(both)
        del both
        if not directed:
            return 0
        now = self.clock()
        rows = ((u, f, now) for u, f in directed)
        with write_transaction(self.engine) as conn:
            self._require_users(conn, (u for u, _ in directed))
            _insert_many(
                conn,
                friendships,
                ("user_id", "friend_id", "created_at"),
                rows,
                ignore_duplicates=True,
            )
        return len(directed) // 2
