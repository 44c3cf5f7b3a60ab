"""The book's two services: the business service (owners' writes) and the location-based
service (LBS, read-heavy nearby search), plus the refresher that keeps an LBS index current.

Pure use cases: no HTTP here. The LBS filters by category and opening hours after the geo query,
as the book says: the geo result is small, so post-filtering is cheap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from scalelab.proximity.cache import ProximityCache
from scalelab.proximity.errors import InvalidCursor, InvalidQuery
from scalelab.proximity.index import GeoIndex, search_arrays
from scalelab.proximity.model import Business, BusinessIn, is_open
from scalelab.proximity.store import BusinessStore

log = logging.getLogger("scalelab.proximity")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class BusinessService:
    """Writes go to SQL first (one transaction), then invalidate caches and the local index."""

    def __init__(
        self, store: BusinessStore, cache: ProximityCache, index: GeoIndex, lock: threading.Lock
    ) -> None:
        self.store = store
        self.cache = cache
        self.index = index
        self._lock = lock

    def get(self, business_id: int) -> dict[str, Any]:
        """The business's public record, cache first."""
        (cached,) = self.cache.get_businesses([business_id])
        if cached is not None:
            return cached
        (public,) = self.cache.put_businesses([self.store.get(business_id)])
        return public

    def create(self, data: BusinessIn) -> Business:
        business = self.store.create(data)
        self.cache.invalidate_business(business.id)
        with self._lock:
            self.index.upsert(business.id, business.latitude, business.longitude)
        return business

    def replace(self, business_id: int, data: BusinessIn) -> Business:
        old, new = self.store.replace(business_id, data)
        self.cache.invalidate_business(business_id)
        with self._lock:
            self.index.remove(business_id, old.latitude, old.longitude)
            self.index.upsert(business_id, new.latitude, new.longitude)
        return new

    def delete(self, business_id: int) -> None:
        old = self.store.delete(business_id)
        self.cache.invalidate_business(business_id)
        with self._lock:
            self.index.remove(business_id, old.latitude, old.longitude)


@dataclass(frozen=True)
class SearchPage:
    results: list[tuple[dict[str, Any], float]]  # (public record, distance in metres)
    total: int | None  # every match within the radius; None when filters make it unknown
    next_cursor: str | None


def _fingerprint(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=6).hexdigest()


def encode_cursor(distance: float, business_id: int, fingerprint: str) -> str:
    raw = orjson.dumps({"d": distance, "i": business_id, "q": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
        distance, business_id, fp = float(data["d"]), int(data["i"]), str(data["q"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise InvalidCursor("cursor is not one this service issued") from None
    if fp != fingerprint:
        raise InvalidCursor("cursor belongs to a different search; repeat the same parameters")
    return distance, business_id


class LocationService:
    """Nearby search: geo index -> exact distance -> post-filters -> page of businesses."""

    def __init__(
        self,
        index: GeoIndex,
        store: BusinessStore,
        cache: ProximityCache,
        lock: threading.Lock,
        *,
        max_radius_m: float = 20_000.0,
        clock: Clock = utcnow,
    ) -> None:
        self.index = index
        self.store = store
        self.cache = cache
        self.max_radius_m = max_radius_m
        self._lock = lock
        self._clock = clock

    def businesses(self, ids: list[int]) -> list[dict[str, Any] | None]:
        """Public records for ids, cache first; ids deleted since the index saw them -> None."""
        found = self.cache.get_businesses(ids)
        missing = [i for i, b in zip(ids, found, strict=True) if b is None]
        if missing:
            loaded = {
                d["id"]: d
                for d in self.cache.put_businesses(list(self.store.get_many(missing).values()))
            }
            found = [b if b is not None else loaded.get(i) for i, b in zip(ids, found, strict=True)]
        return found

    def search(
        self,
        latitude: float,
        longitude: float,
        radius_m: float,
        *,
        category: str | None = None,
        open_now: bool = False,
        limit: int = 20,
        cursor: str | None = None,
    ) -> SearchPage:
        if not 0 < radius_m <= self.max_radius_m:
            raise InvalidQuery(f"radius must be in (0, {self.max_radius_m:g}] metres")
        category = category.lower() if category else None
        fp = _fingerprint(latitude, longitude, radius_m, category, open_now)
        with self._lock:
            ids, dists = search_arrays(self.index, latitude, longitude, radius_m)
        start = 0
        if cursor is not None:
            after_d, after_id = decode_cursor(cursor, fp)
            later = (dists > after_d) | ((dists == after_d) & (ids > after_id))
            start = int(np.argmax(later)) if later.any() else int(ids.size)
        filtered = category is not None or open_now
        now = self._clock()
        results: list[tuple[dict[str, Any], float]] = []
        pos = start
        last = start - 1
        chunk = limit if not filtered else max(limit * 4, 50)
        while pos < ids.size and len(results) < limit:
            batch_ids = ids[pos : pos + chunk].tolist()
            details = self.businesses(batch_ids)
            for offset, business in enumerate(details):
                last = pos + offset
                if business is None:
                    continue
                if category is not None and business["category"] != category:
                    continue
                if open_now and not is_open(business["hours"], business["timezone"], now):
                    continue
                results.append((business, float(dists[last])))
                if len(results) == limit:
                    break
            pos += len(batch_ids)
        next_cursor = None
        if len(results) == limit and last + 1 < ids.size:
            next_cursor = encode_cursor(float(dists[last]), int(ids[last]), fp)
        return SearchPage(results, None if filtered else int(ids.size), next_cursor)


class IndexRefresher:
    """Applies the store's change feed to an index: how writes reach search results."""

    def __init__(
        self, store: BusinessStore, index: GeoIndex, cache: ProximityCache, lock: threading.Lock
    ) -> None:
        self.store = store
        self.index = index
        self.cache = cache
        self._lock = lock
        self.seq = 0

    def start_from(self, seq: int) -> None:
        self.seq = seq

    def refresh(self) -> int:
        """Apply every change since the last call; returns how many were applied."""
        applied = 0
        while True:
            changes = self.store.changes_since(self.seq)
            if not changes:
                return applied
            with self._lock:
                for change in changes:
                    if change.old is not None:
                        self.index.remove(change.business_id, *change.old)
                    if change.new is not None:
                        self.index.upsert(change.business_id, *change.new)
            for change in changes:
                self.cache.invalidate_business(change.business_id)
            self.seq = changes[-1].seq
            applied += len(changes)
