"""The location cache: each active user's latest fix, gone after a TTL of silence.

One key per user, `loc:{user_id}`, holding the same JSON payload the pub/sub channel carries
(model.Location.payload). Every update re-sets the key with the TTL, so a user who stops
sending (app closed, phone off) expires and drops out of every friend's list without anyone
deleting anything: on Redis this is the book's `SET key value EX ttl`. Expiry runs on the KV's
clock (MemoryKV takes a virtual one in tests).

Two views of the same keys: blocking calls for REST handlers (worker threads), and `*_async`
ones for the WebSocket server's event loop, which writes the cache on every location update
(on Redis through redis.asyncio with shared pipelines: no thread hop per update).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from scalelab.nearby_friends.model import Location
from scalelab.storage.kv import KV, async_kv


def cache_key(user_id: int) -> str:
    return f"loc:{user_id}"


class LocationCache:
    """Latest location per user over any KV backend (in-process or Redis)."""

    def __init__(self, kv: KV, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self.kv = kv
        self.ttl = ttl
        self.aio = async_kv(kv)

    def put(self, loc: Location) -> None:
        """Store loc as its user's latest fix, for ttl seconds from now."""
        self.kv.set(cache_key(loc.user_id), loc.payload(), self.ttl)

    def get(self, user_id: int) -> Location | None:
        """The user's latest fix, or None if they sent none within the TTL."""
        raw = self.kv.get(cache_key(user_id))
        return None if raw is None else Location.from_payload(orjson.loads(raw))

    def get_many(self, user_ids: Iterable[int]) -> dict[int, Location]:
        """The fresh fixes among user_ids, by user id, in one round trip (MGET on Redis)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        return _found(ids, self.kv.get_many([cache_key(u) for u in ids]))

    def delete(self, user_id: int) -> None:
        """Forget the user's fix now (they turned sharing off)."""
        self.kv.delete(cache_key(user_id))

    # -- the event loop's view ------------------------------------------------------------------

    async def put_async(self, loc: Location) -> None:
        await self.aio.set(cache_key(loc.user_id), loc.payload(), self.ttl)

    async def get_many_async(self, user_ids: Iterable[int]) -> dict[int, Location]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        return _found(ids, await self.aio.get_many([cache_key(u) for u in ids]))

    async def delete_async(self, user_id: int) -> None:
        await self.aio.delete(cache_key(user_id))

    async def close(self) -> None:
        await self.aio.close()
        self.kv.close()


def _found(ids: list[int], raws: list[bytes | None]) -> dict[int, Location]:
    return {
        user_id: Location.from_payload(orjson.loads(raw))
        for user_id, raw in zip(ids, raws, strict=True)
        if raw is not None
    }
