"""A small key-value cache: in-process by default, Redis when a URL says so.

Several systems cache hot reads (the proximity service caches "geohash cell -> businesses" and
"business id -> business"). They code against `KV` so the same service runs with no extra
servers on a laptop (`MemoryKV`) and shares one cache across processes in a deployment
(`RedisKV`); `open_kv` picks the backend from a URL setting.

Keys are str, values are bytes: callers choose their own encoding, and neither backend has to
guess. A ttl is in seconds (None = no expiry) and must be positive. Backend errors (a Redis
outage) propagate: whether a cache miss or a failure is right is the caller's decision.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, cast
from urllib.parse import urlsplit

from scalelab.storage.autopipeline import AutoPipeline

if TYPE_CHECKING:
    import redis
    import redis.asyncio

__all__ = [
    "KV",
    "AsyncKV",
    "AsyncRedisKV",
    "InlineAsyncKV",
    "MemoryKV",
    "RedisKV",
    "async_kv",
    "open_kv",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_SCAN_BATCH = 500


class KV(Protocol):
    """What a cache backend offers; every method is safe to call from several threads."""

    def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values in the order of keys (None where absent), in one round trip."""
        ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        """Store every item with the same ttl, in one round trip."""
        ...

    def delete(self, *keys: str) -> int:
        """Remove keys; returns how many existed (and had not expired)."""
        ...

    def clear_prefix(self, prefix: str) -> None:
        """Remove every key starting with prefix (resets and tests; not for hot paths)."""
        ...

    def close(self) -> None:
        """Release connections or memory; the instance is not used afterwards."""
        ...


def _check_ttl(ttl: float | None) -> None:
    # Redis rejects a zero or negative expiry; reject it in memory too, so both backends agree.
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")


class MemoryKV:
    """In-process LRU cache with lazy TTL expiry.

    Bounded by max_items (least recently used goes first) so a cache can never grow without
    limit; expiry is checked on access against an injectable clock so tests need not sleep.
    One lock guards everything: the services call it from a thread pool, and every operation
    is a few dict moves, so contention is negligible.
    """

    def __init__(
        self, max_items: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._max_items = max_items
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (value, expiry time on the clock or None); order = least recently used first.
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def _lookup(self, key: str, now: float) -> bytes | None:
        """Caller holds the lock."""
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and now >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _store(self, key: str, value: bytes, expires: float | None) -> None:
        """Caller holds the lock."""
        self._data[key] = (value, expires)
        self._data.move_to_end(key)
        while len(self._data) > self._max_items:
            self._data.popitem(last=False)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._lookup(key, self._clock())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = self._clock()
            return [self._lookup(k, now) for k in keys]

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        with self._lock:
            self._store(key, value, None if ttl is None else self._clock() + ttl)

    def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        _check_ttl(ttl)
        with self._lock:
            expires = None if ttl is None else self._clock() + ttl
            for key, value in items.items():
                self._store(key, value, expires)

    def delete(self, *keys: str) -> int:
        with self._lock:
            now = self._clock()
            removed = 0
            for key in keys:
                entry = self._data.pop(key, None)
                if entry is not None and (entry[1] is None or now < entry[1]):
                    removed += 1
            return removed

    def clear_prefix(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]

    def close(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        """Entries held, including expired ones not yet noticed (for tests and stats)."""
        with self._lock:
            return len(self._data)


def _px(ttl: float | None) -> int | None:
    _check_ttl(ttl)
    # Milliseconds, at least 1: PX 0 is an error, and a tiny positive ttl still expires.
    return None if ttl is None else max(1, round(ttl * 1000))


def _glob_escape(s: str) -> str:
    """Escape Redis MATCH metacharacters so a prefix is matched literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


class RedisKV:
    """The KV contract on Redis, with every key under `namespace:` so systems sharing one
    Redis database cannot see or clear each other's keys.

    Batches use one round trip each (MGET; a non-transactional pipeline of SETs). redis-py is
    imported here, not at module level, so the package works without the `redis` extra.
    """

    def __init__(self, url: str, namespace: str, *, timeout: float = 5.0) -> None:
        """timeout bounds connecting and each command: a stuck Redis becomes an error the
        caller can handle instead of a request thread blocked forever."""
        if not namespace:
            raise ValueError("namespace must be non-empty (it keeps systems' keys apart)")
        try:
            import redis
        except ImportError as exc:
            raise RuntimeError("RedisKV needs redis-py: pip install 'scalelab[redis]'") from exc
        self.url, self.namespace, self.timeout = url, namespace, timeout  # for async_kv
        self._prefix = namespace + ":"
        self._client: redis.Redis = redis.Redis.from_url(
            url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def _key(self, key: str) -> str:
        return self._prefix + key

    def get(self, key: str) -> bytes | None:
        return cast("bytes | None", self._client.get(self._key(key)))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []  # MGET needs at least one key
        return cast("list[bytes | None]", self._client.mget([self._key(k) for k in keys]))

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._client.set(self._key(key), value, px=_px(ttl))

    def set_many(self, items: Mapping[str, bytes], ttl: float | None = None) -> None:
        px = _px(ttl)
        if not items:
            return
        with self._client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self._key(key), value, px=px)
            pipe.execute()

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0  # UNLINK needs at least one key
        # UNLINK frees the memory in the background, so a big value never stalls Redis.
        return self._client.unlink(*(self._key(k) for k in keys))

    def clear_prefix(self, prefix: str) -> None:
        # SCAN, not KEYS: it walks the keyspace in steps instead of blocking Redis in one go.
        pattern = _glob_escape(self._key(prefix)) + "*"
        batch: list[bytes] = []
        for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH):
            batch.append(cast(bytes, key))
            if len(batch) >= _SCAN_BATCH:
                self._client.unlink(*batch)
                batch.clear()
        if batch:
            self._client.unlink(*batch)

    def close(self) -> None:
        self._client.close()


def open_kv(url: str | None, namespace: str, max_items: int = 100_000) -> KV:
    """The backend a setting names: None or memory:// (in-process, max_items entries),
    redis://, rediss:// or unix:// (Redis, keys under namespace)."""
    if url is None:
        return MemoryKV(max_items)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryKV(max_items)
    if scheme in _REDIS_SCHEMES:
        return RedisKV(url, namespace)
    # Name the scheme, not the URL: a Redis URL may carry a password.
    raise ValueError(
        f"unsupported KV URL scheme {scheme!r}: use memory://, redis://, rediss:// or unix://"
    )


class AsyncKV(Protocol):
    """The KV calls an event loop awaits on its hot path (a WebSocket server's per-update
    cache write): no worker-thread hop per call."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def delete(self, *keys: str) -> int: ...

    async def close(self) -> None: ...


class InlineAsyncKV:
    """An in-process KV awaited in place (its calls never block on I/O); the same data as
    the sync view it wraps."""

    def __init__(self, kv: KV) -> None:
        self._kv = kv

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._kv.get_many(keys)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._kv.set(key, value, ttl)

    async def delete(self, *keys: str) -> int:
        return self._kv.delete(*keys)

    async def close(self) -> None:
        """The wrapped KV belongs to the caller; nothing of ours to release."""


class AsyncRedisKV:
    """RedisKV's keys (same namespace and expiry rule) on redis.asyncio. Calls of concurrent
    tasks share pipelines (AutoPipeline): a thousand sockets' SETs cost a few round trips."""

    def __init__(self, url: str, namespace: str, *, timeout: float = 5.0) -> None:
        if not namespace:
            raise ValueError("namespace must be non-empty (it keeps systems' keys apart)")
        try:
            from redis.asyncio import Redis
        except ImportError as exc:
            raise RuntimeError("AsyncRedisKV needs redis-py: pip install scalelab[redis]") from exc
        self._prefix = namespace + ":"
        self._client: redis.asyncio.Redis = Redis.from_url(
            url, decode_responses=False, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._pipe = AutoPipeline(self._client)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []  # MGET needs at least one key
        found = await self._pipe.execute("MGET", *(self._prefix + k for k in keys))
        return cast("list[bytes | None]", found)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px = _px(ttl)
        args: tuple[object, ...] = () if px is None else ("PX", px)
        await self._pipe.execute("SET", self._prefix + key, value, *args)

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._pipe.execute("UNLINK", *(self._prefix + k for k in keys)))

    async def close(self) -> None:
        await self._pipe.close()
        await self._client.aclose()


def async_kv(kv: KV) -> AsyncKV:
    """The async view of kv's data: Redis through redis.asyncio (same URL and namespace),
    anything else (in-process) awaited in place."""
    if isinstance(kv, RedisKV):
        return AsyncRedisKV(kv.url, kv.namespace, timeout=kv.timeout)
    return InlineAsyncKV(kv)
