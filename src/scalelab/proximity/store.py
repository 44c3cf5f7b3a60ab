"""Persistence of the business service: SQL tables behind a small interface.

Tables:
- `businesses`: the owners' data (the business service's source of truth).
- `geohash_index`: the book's option 2, one row per (geohash, business_id). The geohash is
  stored at precision 8 (about 38 m x 19 m); a cell of any coarser precision is a prefix, read
  with a range scan on the primary key (`geohash >= 'u09t' AND geohash < 'u09t~'`).
- `business_changes`: an append-only feed of writes (with the old and new position), which
  lets every LBS process bring its in-memory index up to date without a restart.

A write touches all three in one transaction, so the geohash rows never disagree with the
business rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)

from scalelab.geo import encode
from scalelab.proximity.errors import BusinessNotFound
from scalelab.proximity.index import Candidates
from scalelab.proximity.model import Business, BusinessIn
from scalelab.storage.sql import create_schema, writing

GEOHASH_PRECISION = 8
_PREFIX_END = "~"  # sorts after every base32 character

metadata = MetaData()

businesses = Table(
    "businesses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("category", String(60), nullable=False),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("attrs", Text, nullable=False),  # JSON: address, city, country, phone, website, hours
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

geohash_index = Table(
    "geohash_index",
    metadata,
    Column("geohash", String(12), primary_key=True),
    Column("business_id", Integer, primary_key=True),
    Index("ix_geohash_index_business", "business_id"),
)

business_changes = Table(
    "business_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("business_id", Integer, nullable=False),
    Column("op", String(6), nullable=False),  # "upsert" | "delete"
    Column("old_latitude", Float),
    Column("old_longitude", Float),
    Column("latitude", Float),
    Column("longitude", Float),
    Column("at", Float, nullable=False),
)

_ATTRS = ("address", "city", "country", "phone", "website", "hours")


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    business_id: int
    op: str
    old: tuple[float, float] | None
    new: tuple[float, float] | None


def _row_values(data: BusinessIn) -> dict[str, Any]:
    d = data.model_dump()
    attrs = {k: d[k] for k in _ATTRS}
    return {
        "name": data.name,
        "category": data.category,
        "latitude": data.latitude,
        "longitude": data.longitude,
        "timezone": data.timezone,
        "attrs": orjson.dumps(attrs).decode(),
    }


def _to_business(row: Any) -> Business:
    attrs = orjson.loads(row.attrs)
    return Business(
        id=row.id,
        name=row.name,
        category=row.category,
        latitude=row.latitude,
        longitude=row.longitude,
        timezone=row.timezone,
        created_at=datetime.fromtimestamp(row.created_at, UTC),
        updated_at=datetime.fromtimestamp(row.updated_at, UTC),
        **attrs,
    )


class BusinessStore:
    """CRUD, the geohash table and the change feed over one SQLAlchemy engine."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self._writer = writing(engine)
        self._clock = clock

    def create_schema(self) -> None:
        create_schema(self.engine, metadata)

    # -- writes (business service) -------------------------------------------------------

    def create(self, data: BusinessIn) -> Business:
        now = self._clock()
        with self._writer.begin() as conn:
            result = conn.execute(
                insert(businesses).values(**_row_values(data), created_at=now, updated_at=now)
            )
            (business_id,) = result.inserted_primary_key or (None,)
            assert business_id is not None
            conn.execute(
                insert(geohash_index).values(
                    geohash=encode(data.latitude, data.longitude, GEOHASH_PRECISION),
                    business_id=business_id,
                )
            )
            self._log(conn, business_id, "upsert", None, (data.latitude, data.longitude), now)
            row = conn.execute(select(businesses).where(businesses.c.id == business_id)).one()
        return _to_business(row)

    def replace(self, business_id: int, data: BusinessIn) -> tuple[Business, Business]:
        """Replace a business; returns (before, after) so callers can invalidate both places."""
        now = self._clock()
        with self._writer.begin() as conn:
            old = conn.execute(select(businesses).where(businesses.c.id == business_id)).first()
            if old is None:
                raise BusinessNotFound(business_id)
            conn.execute(
                update(businesses)
                .where(businesses.c.id == business_id)
                .values(**_row_values(data), updated_at=now)
            )
            conn.execute(delete(geohash_index).where(geohash_index.c.business_id == business_id))
            conn.execute(
                insert(geohash_index).values(
                    geohash=encode(data.latitude, data.longitude, GEOHASH_PRECISION),
                    business_id=business_id,
                )
            )
            self._log(
                conn,
                business_id,
                "upsert",
                (old.latitude, old.longitude),
                (data.latitude, data.longitude),
                now,
            )
            row = conn.execute(select(businesses).where(businesses.c.id == business_id)).one()
        return _to_business(old), _to_business(row)

    def delete(self, business_id: int) -> Business:
        now = self._clock()
        with self._writer.begin() as conn:
            old = conn.execute(select(businesses).where(businesses.c.id == business_id)).first()
            if old is None:
                raise BusinessNotFound(business_id)
            conn.execute(delete(geohash_index).where(geohash_index.c.business_id == business_id))
            conn.execute(delete(businesses).where(businesses.c.id == business_id))
            self._log(conn, business_id, "delete", (old.latitude, old.longitude), None, now)
        return _to_business(old)

    def _log(
        self,
        conn: Any,
        business_id: int,
        op: str,
        old: tuple[float, float] | None,
        new: tuple[float, float] | None,
        now: float,
    ) -> None:
        conn.execute(
            insert(business_changes).values(
                business_id=business_id,
                op=op,
                old_latitude=old[0] if old else None,
                old_longitude=old[1] if old else None,
                latitude=new[0] if new else None,
                longitude=new[1] if new else None,
                at=now,
            )
        )

    def bulk_create(self, items: Iterable[BusinessIn], batch: int = 5000) -> int:
        """Fast load for demo data and benches: many rows per statement, no change feed
        entries (callers load their indexes from the table afterwards)."""
        now = self._clock()
        count = 0
        buf: list[BusinessIn] = []

        def flush(conn: Any) -> None:
            nonlocal count
            if not buf:
                return
            start = conn.execute(select(func.coalesce(func.max(businesses.c.id), 0))).scalar_one()
            rows = []
            cells = []
            for i, data in enumerate(buf, start=start + 1):
                rows.append({"id": i, **_row_values(data), "created_at": now, "updated_at": now})
                cells.append(
                    {
                        "geohash": encode(data.latitude, data.longitude, GEOHASH_PRECISION),
                        "business_id": i,
                    }
                )
            conn.execute(insert(businesses), rows)
            conn.execute(insert(geohash_index), cells)
            count += len(buf)
            buf.clear()

        with self._writer.begin() as conn:
            for data in items:
                buf.append(data)
                if len(buf) >= batch:
                    flush(conn)
            flush(conn)
        return count

    # -- reads -------------------------------------------------------------------------

    def get(self, business_id: int) -> Business:
        with self.engine.connect() as conn:
            row = conn.execute(select(businesses).where(businesses.c.id == business_id)).first()
        if row is None:
            raise BusinessNotFound(business_id)
        return _to_business(row)

    def get_many(self, ids: Sequence[int]) -> dict[int, Business]:
        out: dict[int, Business] = {}
        if not ids:
            return out
        with self.engine.connect() as conn:
            for chunk_start in range(0, len(ids), 500):
                chunk = list(ids[chunk_start : chunk_start + 500])
                for row in conn.execute(select(businesses).where(businesses.c.id.in_(chunk))):
                    out[row.id] = _to_business(row)
        return out

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(businesses)).scalar_one())

    def points(self, batch: int = 50_000) -> Iterator[tuple[int, float, float]]:
        """Every (id, latitude, longitude): what an in-memory index is built from."""
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(
                select(businesses.c.id, businesses.c.latitude, businesses.c.longitude)
            )
            for row in result:
                yield (row[0], row[1], row[2])

    def cell_points(self, cell: str) -> Candidates:
        """The businesses in a geohash cell of any precision up to GEOHASH_PRECISION."""
        stmt = (
            select(businesses.c.id, businesses.c.latitude, businesses.c.longitude)
            .select_from(
                geohash_index.join(businesses, businesses.c.id == geohash_index.c.business_id)
            )
            .where(
                and_(geohash_index.c.geohash >= cell, geohash_index.c.geohash < cell + _PREFIX_END)
            )
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return Candidates.empty()
        arr = np.array(rows, dtype=np.float64)
        return Candidates(arr[:, 0].astype(np.int64), arr[:, 1].copy(), arr[:, 2].copy())

    def geohash_rows(self) -> list[tuple[str, int]]:
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(select(geohash_index))]

    # -- change feed -------------------------------------------------------------------

    def last_change(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(func.max(business_changes.c.seq))).scalar_one()
        return int(value or 0)

    def changes_since(self, seq: int, limit: int = 10_000) -> list[Change]:
        c = business_changes.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(business_changes).where(c.seq > seq).order_by(c.seq).limit(limit)
            ).all()
        return [
            Change(
                seq=r.seq,
                business_id=r.business_id,
                op=r.op,
                old=(r.old_latitude, r.old_longitude) if r.old_latitude is not None else None,
                new=(r.latitude, r.longitude) if r.latitude is not None else None,
            )
            for r in rows
        ]
