"""Who is calling: hotel staff (a configured bearer token) or a guest (a token issued when the
guest registers). Guest tokens are stored hashed, on the directory shard, so a database dump
does not hand out sessions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc, insert, select

from scalelab.hotel.errors import Forbidden, InUse, Unauthorized
from scalelab.hotel.model import GuestIn
from scalelab.hotel.schema import guest, guest_token
from scalelab.hotel.sharding import Shards

Clock = Callable[[], float]


@dataclass(frozen=True)
class Principal:
    kind: str  # "staff" | "guest"
    guest_id: int | None = None

    @property
    def is_staff(self) -> bool:
        return self.kind == "staff"

    def require_staff(self) -> None:
        if not self.is_staff:
            raise Forbidden("only hotel staff may do this")

    def require_guest(self) -> int:
        if self.guest_id is None:
            raise Forbidden("reservations are made with a guest's token")
        return self.guest_id

    def may_see(self, guest_id: int) -> bool:
        return self.is_staff or self.guest_id == guest_id


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    def __init__(self, shards: Shards, staff_token: str, clock: Clock) -> None:
        self.shards = shards
        self.staff_token = staff_token
        self.clock = clock
        self._cache: dict[str, int] = {}  # token hash -> guest id (tokens are never revoked)

    def register(self, body: GuestIn) -> dict[str, Any]:
        token = f"g-{secrets.token_urlsafe(24)}"
        now = self.clock()
        try:
            with self.shards.directory.write() as conn:
                guest_id = conn.execute(
                    insert(guest)
                    .values(name=body.name, email=body.email.lower(), created_at=now)
                    .returning(guest.c.id)
                ).scalar_one()
                conn.execute(
                    insert(guest_token).values(
                        token_hash=_hash(token), guest_id=guest_id, created_at=now
                    )
                )
        except exc.IntegrityError:
            raise InUse(f"a guest with email {body.email!r} is already registered") from None
        return {"guestID": guest_id, "name": body.name, "email": body.email.lower(), "token": token}

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("send Authorization: Bearer <token>")
        token = authorization[7:].strip()
        if hmac.compare_digest(token.encode(), self.staff_token.encode()):
            return Principal("staff")
        digest = _hash(token)
        guest_id = self._cache.get(digest)
        if guest_id is None:
            with self.shards.directory.engine.connect() as conn:
                guest_id = conn.execute(
                    select(guest_token.c.guest_id).where(guest_token.c.token_hash == digest)
                ).scalar_one_or_none()
            if guest_id is None:
                raise Unauthorized("the token is not valid")
            self._cache[digest] = int(guest_id)
        return Principal("guest", int(guest_id))
