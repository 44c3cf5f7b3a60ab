"""Tables: users and their tokens, friendships, and the append-only location history.

Times are epoch seconds (REAL) so SQLite and PostgreSQL compare them alike. A friendship is
stored as two rows, (a, b) and (b, a): "my friends" is then one index range scan on the primary
key, the query every WebSocket connect makes. The location history has no primary key of its
own, only an index on (user_id, ts): it is written in batches far more than it is read, and two
fixes with the same timestamp must not fail a whole batch.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    exc,
    text,
)

metadata = MetaData()

# INTEGER, not BIGINT, on SQLite: only an INTEGER PRIMARY KEY autoincrements there.
_ID = BigInteger().with_variant(Integer, "sqlite")

users = Table(
    "users",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("sharing", Boolean, nullable=False, server_default=text("true")),
    Column("random_nearby", Boolean, nullable=False, server_default=text("false")),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 hex: a dump hands out nothing
    Column("user_id", BigInteger, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
)

# No foreign keys here: users.py checks that both users exist, and on PostgreSQL the two
# referential checks per row tripled the time of a bench's bulk load (4M rows).
friendships = Table(
    "friendships",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("friend_id", BigInteger, primary_key=True),
    Column("created_at", Float, nullable=False),
)

location_history = Table(
    "location_history",
    metadata,
    Column("user_id", BigInteger, nullable=False),
    Column("ts", Float, nullable=False),
    Column("lat", Float, nullable=False),
    Column("lng", Float, nullable=False),
    Index("location_history_by_user", "user_id", "ts"),
)


def create_schema(engine: Engine) -> None:
    """Create missing tables; safe on every start, even when several servers start at once.

    Two processes creating the same table race: the loser gets "already exists" (SQLite) or a
    duplicate pg_type row (PostgreSQL). A second pass then finds every table in place.
    """
    try:
        metadata.create_all(engine)
    except (exc.OperationalError, exc.ProgrammingError, exc.IntegrityError):
        metadata.create_all(engine)
