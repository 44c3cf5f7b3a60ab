"""Sharding by hotel_id, the book's choice: most queries name a hotel, so one hotel's rooms,
inventory and reservations live together and a booking never spans databases.

A hotel's shard is `hotel_id % len(shards)`; each shard hands out hotel ids congruent to its
own index (schema.allocate_id), so the id alone routes a request and no directory is needed.
A reservationID (the client's idempotency key) is not a hotel id: its idempotency record lives
on the key's home shard, `crc32(key) % len(shards)`, and remembers the hotel, which routes
`GET /v1/reservations/{id}`. Guests and their tokens live on shard 0, the directory. A guest's
history is the one scatter-gather read: every shard is asked and the answers merged.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from scalelab.hotel import schema
from scalelab.storage import sql


@dataclass(frozen=True)
class Shard:
    index: int
    engine: Engine

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction (on SQLite: BEGIN IMMEDIATE, writers queued in order)."""
        return sql.write_transaction(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return sql.is_sqlite(self.engine)


class Shards:
    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("at least one database is needed")
        self.shards = tuple(Shard(i, e) for i, e in enumerate(engines))

    @classmethod
    def open(cls, urls: Sequence[str], *, schema_name: str | None = None) -> Shards:
        return cls([sql.create_engine(u, schema=schema_name, pool_size=20) for u in urls])

    def __len__(self) -> int:
        return len(self.shards)

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.shards)

    def create_schema(self) -> None:
        for shard in self.shards:
            schema.create_schema(shard.engine, shard_index=shard.index, shard_count=len(self))

    def for_hotel(self, hotel_id: int) -> Shard:
        return self.shards[hotel_id % len(self.shards)]

    def for_key(self, key: str) -> Shard:
        return self.shards[zlib.crc32(key.encode()) % len(self.shards)]

    @property
    def directory(self) -> Shard:
        return self.shards[0]

    def dispose(self) -> None:
        for shard in self.shards:
            shard.engine.dispose()
