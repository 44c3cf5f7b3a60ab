"""The book's geohash index: a covering of cells read from the SQL geohash table via the cache.

Precision is chosen per query from the radius: the finest precision whose cell is at least as
tall as the circle's latitude half-extent and at least as wide as its longitude half-extent
(both in degrees, so cells stay large enough at high latitudes where a degree of longitude is
short). Then the centre cell plus its 8 neighbours contain the whole circle, as the book says.
Where no precision works (a circle reaching a pole), the index falls back to every cell of a
coarse precision that intersects the circle's bounding boxes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from sqlalchemy import delete, insert

from scalelab.geo import (
    EARTH_RADIUS_M,
    cell_size_deg,
    circle_boxes,
    cover_box,
    cover_box_size,
    encode,
    neighbours,
)
from scalelab.proximity.cache import ProximityCache
from scalelab.proximity.index import Candidates, IndexStats
from scalelab.proximity.store import GEOHASH_PRECISION, BusinessStore, geohash_index

_SLACK = 1 + 1e-9
_MAX_FALLBACK_CELLS = 64


def half_extents_deg(lat: float, radius_m: float) -> tuple[float, float] | None:
    """(latitude, longitude) half-extent of the circle in degrees; None if it reaches a pole."""
    d = radius_m / EARTH_RADIUS_M
    dlat = math.degrees(d)
    if abs(lat) + dlat >= 90.0:
        return None
    ratio = math.sin(d) / math.cos(math.radians(lat))
    if ratio >= 1.0:
        return None
    return dlat, math.degrees(math.asin(ratio))


def covering(lat: float, lon: float, radius_m: float) -> list[str]:
    """Geohash cells whose union contains every point within radius_m of (lat, lon)."""
    ext = half_extents_deg(lat, radius_m)
    if ext is not None:
        dlat, dlon = ext
        for precision in range(GEOHASH_PRECISION, 0, -1):
            h, w = cell_size_deg(precision)
            if h >= dlat * _SLACK + 1e-12 and w >= dlon * _SLACK + 1e-12:
                centre = encode(lat, lon, precision)
                return [centre, *neighbours(centre).values()]
    boxes = circle_boxes(lat, lon, radius_m)
    precision = GEOHASH_PRECISION
    while precision > 1 and sum(cover_box_size(b, precision) for b in boxes) > _MAX_FALLBACK_CELLS:
        precision -= 1
    return [c for box in boxes for c in cover_box(box, precision)]


class GeohashIndex:
    """Persistent: the SQL geohash table is the index; memory holds only cached cells."""

    kind = "geohash"
    in_memory = False

    def __init__(self, store: BusinessStore, cache: ProximityCache) -> None:
        self.store = store
        self.cache = cache
        self._build_seconds = 0.0

    def load(self, points: Iterable[tuple[int, float, float]]) -> None:
        """Rebuild the geohash table from the given points (the bench's build step)."""
        start = time.perf_counter()
        with self.store.engine.begin() as conn:
            conn.execute(delete(geohash_index))
            batch: list[dict[str, object]] = []
            for business_id, lat, lon in points:
                batch.append(
                    {"geohash": encode(lat, lon, GEOHASH_PRECISION), "business_id": business_id}
                )
                if len(batch) >= 10_000:
                    conn.execute(insert(geohash_index), batch)
                    batch = []
            if batch:
                conn.execute(insert(geohash_index), batch)
        self.cache.kv.clear_prefix("cell:")
        self._build_seconds = time.perf_counter() - start

    def upsert(self, business_id: int, lat: float, lon: float) -> None:
        """The table row is written by the store's transaction; drop the stale cached cells."""
        self.cache.invalidate_point(lat, lon, GEOHASH_PRECISION)

    def remove(self, business_id: int, lat: float, lon: float) -> None:
        self.cache.invalidate_point(lat, lon, GEOHASH_PRECISION)

    def candidates(self, lat: float, lon: float, radius_m: float) -> Candidates:
        cells = covering(lat, lon, radius_m)
        cached = self.cache.get_cells(cells)
        parts: list[Candidates] = []
        for cell, hit in zip(cells, cached, strict=True):
            if hit is None:
                hit = self.store.cell_points(cell)
                self.cache.put_cell(cell, hit)
            parts.append(hit)
        return Candidates.concat(parts)

    def stats(self) -> IndexStats:
        return IndexStats(self.kind, self.store.count(), self._build_seconds, 0)
