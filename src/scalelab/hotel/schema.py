"""The hotel database: the book's tables, plus what idempotency, pricing and check-in need.

Everything a booking touches lives on the hotel's shard (see sharding.py); guests and their
tokens live on the first shard, the directory. Money is integer minor units (cents), dates are
SQL DATEs, times are epoch seconds (REAL) so SQLite and PostgreSQL compare them alike.

Two rules are the database's own, whatever the application does:
- `inventory_not_oversold`: total_reserved never exceeds total_inventory * overbook_pct / 100
  (integer arithmetic, so 110% of 7 rooms is exactly 7 * 110 // 100 = 7 reservable) and never
  drops below zero. Every concurrency strategy runs with this CHECK as a backstop.
- `room_stay_no_overlap`: one concrete room is never assigned to two stays that share a
  night. PostgreSQL: an EXCLUDE USING gist constraint on (room_id, daterange); SQLite: a trigger
  that aborts the insert, which runs inside the write transaction that assigns the room.
"""

from __future__ import annotations

import contextlib

from sqlalchemy import (
    DDL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Date,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    exc,
    insert,
    select,
    text,
    update,
)

metadata = MetaData()

OVERSOLD_CHECK = "inventory_not_oversold"
OVERLAP_CONSTRAINT = "room_stay_no_overlap"

hotel = Table(
    "hotel",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("address", String(500), nullable=False, server_default=""),
    Column("city", String(100), nullable=False, server_default=""),
    Column("currency", String(3), nullable=False),
    Column("overbooking_percent", Integer, nullable=False),
    Column("pricing", Text, nullable=False),  # JSON: pricing.PricingRules
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

room_type = Table(
    "room_type",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hotel_id", BigInteger, ForeignKey("hotel.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", String(2000), nullable=False, server_default=""),
    Column("capacity", Integer, nullable=False),  # most guests per room
    Column("base_price", BigInteger, nullable=False),  # per night, minor units
    Column("total_inventory", Integer, nullable=False),  # rooms of this type in service
    Index("room_type_hotel", "hotel_id"),
)

room = Table(
    "room",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hotel_id", BigInteger, ForeignKey("hotel.id", ondelete="CASCADE"), nullable=False),
    Column("room_type_id", Integer, ForeignKey("room_type.id", ondelete="CASCADE"), nullable=False),
    Column("number", String(20), nullable=False),
    Column("floor", Integer, nullable=True),
    Column("in_service", Boolean, nullable=False, server_default=text("true")),
    UniqueConstraint("hotel_id", "number", name="room_number_unique"),
    Index("room_by_type", "room_type_id"),
)

room_type_inventory = Table(
    "room_type_inventory",
    metadata,
    Column("hotel_id", BigInteger, primary_key=True),
    Column(
        "room_type_id",
        Integer,
        ForeignKey("room_type.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("date", Date, primary_key=True),
    Column("total_inventory", Integer, nullable=False),
    Column("total_reserved", Integer, nullable=False, server_default=text("0")),
    Column("overbook_pct", Integer, nullable=False),
    Column("version", Integer, nullable=False, server_default=text("0")),  # optimistic locking
    CheckConstraint(
        "total_reserved >= 0 AND total_reserved * 100 <= total_inventory * overbook_pct",
        name=OVERSOLD_CHECK,
    ),
)

room_type_rate = Table(
    "room_type_rate",
    metadata,
    Column("hotel_id", BigInteger, primary_key=True),
    Column(
        "room_type_id",
        Integer,
        ForeignKey("room_type.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("date", Date, primary_key=True),
    Column("price", BigInteger, nullable=False),  # per night, minor units, before rules
)

reservation = Table(
    "reservation",
    metadata,
    Column("reservation_id", String(64), primary_key=True),
    Column("hotel_id", BigInteger, nullable=False),
    Column("room_type_id", Integer, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=False),
    Column("rooms", Integer, nullable=False),
    Column("guests", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("guest_id", BigInteger, nullable=False),
    Column("guest_info", Text, nullable=False, server_default="{}"),  # JSON, as the guest gave it
    Column("total_price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("nightly_prices", Text, nullable=False),  # JSON list of minor units per night
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),  # pending only
    Column("payment_ref", String(64), nullable=True),
    Column("cancel_reason", String(32), nullable=True),
    Index("reservation_by_guest", "guest_id", "created_at"),
    Index("reservation_pending", "status", "expires_at"),
    Index("reservation_by_stay", "hotel_id", "room_type_id", "start_date"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("guest_id", BigInteger, nullable=False),
    Column("hotel_id", BigInteger, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("state", String(10), nullable=False),  # in_flight | done
    Column("lease_until", Float, nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at", Float, nullable=False),
)

room_assignment = Table(
    "room_assignment",
    metadata,
    Column("reservation_id", String(64), primary_key=True),
    Column("room_id", Integer, primary_key=True),
    Column("hotel_id", BigInteger, nullable=False),
    Column("start_date", Date, nullable=False),
    Column("end_date", Date, nullable=False),
    Column("assigned_at", Float, nullable=False),
    Index("assignment_by_room", "room_id", "start_date"),
)

guest = Table(
    "guest",
    metadata,
    # INTEGER, not BIGINT, on SQLite: only an INTEGER PRIMARY KEY autoincrements there
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("email", String(320), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

guest_token = Table(
    "guest_token",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("guest_id", BigInteger, ForeignKey("guest.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
)

id_sequence = Table(
    "id_sequence",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("next", BigInteger, nullable=False),
)

event.listen(
    room_assignment,
    "after_create",
    DDL(  # type: ignore[no-untyped-call]
        f"""CREATE TRIGGER {OVERLAP_CONSTRAINT} BEFORE INSERT ON room_assignment
        WHEN EXISTS (SELECT 1 FROM room_assignment a WHERE a.room_id = NEW.room_id
                     AND a.start_date < NEW.end_date AND NEW.start_date < a.end_date)
        BEGIN SELECT RAISE(ABORT, '{OVERLAP_CONSTRAINT}'); END"""
    ).execute_if(dialect="sqlite"),
)
event.listen(
    room_assignment,
    "after_create",
    DDL(  # type: ignore[no-untyped-call]
        f"ALTER TABLE room_assignment ADD CONSTRAINT {OVERLAP_CONSTRAINT} EXCLUDE USING gist "
        "(room_id WITH =, daterange(start_date, end_date) WITH &&)"
    ).execute_if(dialect="postgresql"),
)


def _ensure_btree_gist(engine: Engine) -> None:
    """EXCLUDE with `room_id WITH =` needs btree_gist's operator classes (in public)."""
    with engine.connect() as conn:
        installed = conn.execute(
            text("SELECT 1 FROM pg_extension WHERE extname = 'btree_gist'")
        ).first()
    if installed:
        return
    # Two processes creating it at once: the loser's error is harmless.
    with contextlib.suppress(exc.IntegrityError, exc.ProgrammingError), engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public"))


def create_schema(engine: Engine, *, shard_index: int = 0, shard_count: int = 1) -> None:
    """Create missing tables; seed the id sequences so this shard's ids are index mod count."""
    if engine.dialect.name == "postgresql":
        _ensure_btree_gist(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        have = {r[0] for r in conn.execute(select(id_sequence.c.name))}
        for name in ("hotel",):
            if name not in have:
                conn.execute(insert(id_sequence).values(name=name, next=shard_index))


def allocate_id(conn: Connection, name: str, step: int) -> int:
    """The next id of a sequence that hands out ids congruent to the shard index mod step."""
    row = conn.execute(
        update(id_sequence)
        .where(id_sequence.c.name == name)
        .values(next=id_sequence.c.next + step)
        .returning(id_sequence.c.next)
    ).one()
    return int(row[0])
