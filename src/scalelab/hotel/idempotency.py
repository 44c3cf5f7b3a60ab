"""Idempotent reservations: the reservationID is the key, with the IETF Idempotency-Key
draft's semantics.

- First request with a key: an `in_flight` record is committed before any work, on the key's
  home shard, so a concurrent duplicate sees it; or, when the whole answer is one transaction
  on that shard, the record is inserted as done inside it (`insert_done`).
- Same key, same request, finished: the stored response (status and body) is replayed and
  nothing is booked again.
- Same key, different request (another body, or another guest): 422.
- Same key while the first is still being processed: 409.
- A process that died mid-request leaves an `in_flight` record whose lease runs out; the next
  attempt takes it over and first checks whether the booking had already committed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, delete, exc, insert, select, update

from scalelab.hotel.errors import IdempotencyMismatch, RequestInFlight
from scalelab.hotel.schema import idempotency
from scalelab.hotel.sharding import Shards

Clock = Callable[[], float]


def fingerprint(guest_id: int, request: dict[str, Any]) -> str:
    """What identifies 'the same request': the guest and the body, canonically encoded."""
    blob = orjson.dumps({"guest": guest_id, "body": request}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Replay:
    status: int
    body: bytes


@dataclass(frozen=True)
class Claimed:
    key: str
    taken_over: bool  # a dead request's lease ran out: its booking may have committed


class IdempotencyStore:
    def __init__(self, shards: Shards, clock: Clock, lease_seconds: float) -> None:
        self.shards = shards
        self.clock = clock
        self.lease = lease_seconds

    def claim(self, key: str, guest_id: int, hotel_id: int, fp: str) -> Replay | Claimed:
        shard = self.shards.for_key(key)
        now = self.clock()
        try:
            with shard.write() as conn:
                self._insert(conn, key, guest_id, hotel_id, fp, "in_flight", now + self.lease)
            return Claimed(key, taken_over=False)
        except exc.IntegrityError:
            pass
        with shard.write() as conn:
            row = conn.execute(select(idempotency).where(idempotency.c.key == key)).one_or_none()
            if row is None:  # abandoned and deleted between our insert and this read
                raise RequestInFlight(f"reservation {key!r} is being processed; retry")
            if row.fingerprint != fp:
                raise IdempotencyMismatch(
                    f"reservationID {key!r} was already used for a different request",
                    reservationID=key,
                )
            if row.state == "done":
                return Replay(int(row.response_status), row.response_body.encode())
            if row.lease_until > now:
                raise RequestInFlight(
                    f"a request with reservationID {key!r} is still in progress; retry later",
                    reservationID=key,
                )
            taken = conn.execute(
                update(idempotency)
                .where(idempotency.c.key == key, idempotency.c.lease_until == row.lease_until)
                .values(lease_until=now + self.lease)
            ).rowcount
        if taken != 1:
            raise RequestInFlight(f"a request with reservationID {key!r} is in progress")
        return Claimed(key, taken_over=True)

    def exists(self, key: str) -> bool:
        with self.shards.for_key(key).engine.connect() as conn:
            found = conn.execute(select(idempotency.c.key).where(idempotency.c.key == key)).first()
        return found is not None

    def insert_done(
        self,
        conn: Connection,
        key: str,
        guest_id: int,
        hotel_id: int,
        fp: str,
        status: int,
        body: bytes,
    ) -> None:
        """Record a finished request in the caller's transaction, with no in-flight step.

        For a request whose work is one transaction on the key's own shard: a concurrent
        duplicate's insert conflicts here (PostgreSQL makes it wait for our commit first), the
        loser rolls back everything and then replays this answer through `claim`.
        Raises IntegrityError when the key is already recorded.
        """
        self._insert(conn, key, guest_id, hotel_id, fp, "done", self.clock(), status, body)

    def _insert(
        self,
        conn: Connection,
        key: str,
        guest_id: int,
        hotel_id: int,
        fp: str,
        state: str,
        lease_until: float,
        status: int | None = None,
        body: bytes | None = None,
    ) -> None:
        conn.execute(
            insert(idempotency).values(
                key=key,
                guest_id=guest_id,
                hotel_id=hotel_id,
                fingerprint=fp,
                state=state,
                lease_until=lease_until,
                response_status=status,
                response_body=None if body is None else body.decode(),
                created_at=self.clock(),
            )
        )

    def complete_in(self, conn: Connection, key: str, status: int, body: bytes) -> None:
        """Record the response inside the caller's transaction (same shard as the key)."""
        conn.execute(
            update(idempotency)
            .where(idempotency.c.key == key)
            .values(state="done", response_status=status, response_body=body.decode())
        )

    def complete(self, key: str, status: int, body: bytes) -> None:
        with self.shards.for_key(key).write() as conn:
            self.complete_in(conn, key, status, body)

    def abandon(self, key: str) -> None:
        """Forget an in-flight claim whose request failed before it booked: a retry may run."""
        with self.shards.for_key(key).write() as conn:
            conn.execute(
                delete(idempotency).where(
                    idempotency.c.key == key, idempotency.c.state == "in_flight"
                )
            )

    def owner(self, key: str) -> tuple[int, int] | None:
        """(hotel_id, guest_id) the key was used for: routes reads of a reservation by id."""
        with self.shards.for_key(key).engine.connect() as conn:
            row = conn.execute(
                select(idempotency.c.hotel_id, idempotency.c.guest_id).where(
                    idempotency.c.key == key
                )
            ).one_or_none()
        return None if row is None else (int(row[0]), int(row[1]))
