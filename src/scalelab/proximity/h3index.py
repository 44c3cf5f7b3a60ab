"""H3 geo index: points bucketed by hexagonal cell at a few resolutions (Uber's H3, v4 API).

Every point is kept in one bucket per resolution. A query picks the finest resolution whose
covering of the circle stays around `cell_budget` cells, then finds that covering by a
breadth-first search over neighbouring cells, which never misses a point:

* a cell is included when haversine(query, centre) - circumradius <= radius, where circumradius
  bounds the distance from the centre to any point H3 assigns to the cell (the farthest boundary
  vertex, times 1.01, plus 5 m). By the triangle inequality every cell holding a point within
  the radius passes this test;
* the cells that truly meet the disc form a connected set (the disc is connected and hexagons,
  like pentagons, that touch share an edge), it contains the query point's cell, and all of them
  pass the test, so expanding the neighbours of included cells from the query's cell reaches
  every one of them.

This holds anywhere: across the antimeridian, around a pole and next to the twelve pentagons,
because it relies only on H3's own neighbour relation and on great-circle distances.

Resolutions 5, 7 and 8 (average edges of 9.9 km, 1.4 km and 530 m) with a budget of 30 cells
give the book's radii small coverings: 0.5, 1 and 2 km use resolution 8 (about 5, 10 and 27
cells), 5 km resolution 7 (about 25) and 20 km resolution 5 (about 11). Measured on a dense city
a cell costs about 5 us and a candidate point about 30 ns, so these sit near the optimum; a
finer resolution (9 has 4.6x the cells of 8) would mostly add memory, since every resolution
holds its own copy of the points.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import lru_cache

import h3.api.basic_int as h3i
import numpy as np

from scalelab.geo import haversine_m
from scalelab.proximity.index import Candidates, FloatArray, IdArray, IndexStats
from scalelab.proximity.locations import LocatedIndex, PointLocations

DEFAULT_RESOLUTIONS = (5, 7, 8)
# Covering size to aim for: a cell costs a few microseconds of Python in the search, a point
# tens of nanoseconds of numpy, so a few dozen cells balance the two in a dense city.
DEFAULT_CELL_BUDGET = 30.0
_CIRCUM_FACTOR = 1.01
_CIRCUM_SLACK_M = 5.0


@lru_cache(maxsize=1 << 16)
def _cell_reach(cell: int) -> tuple[float, float, float]:
    """(centre lat, centre lon, safe circumradius in metres) of a cell."""
    clat, clon = h3i.cell_to_latlng(cell)
    far = max(haversine_m(clat, clon, vlat, vlon) for vlat, vlon in h3i.cell_to_boundary(cell))
    return float(clat), float(clon), far * _CIRCUM_FACTOR + _CIRCUM_SLACK_M


def cover(lat: float, lon: float, radius_m: float, res: int) -> list[int]:
    """Cells of resolution res that contain every point H3 assigns within radius_m of (lat, lon).

    A superset of the cells meeting the circle (see the module docstring for why it is safe).
    """
    start = int(h3i.latlng_to_cell(lat, lon, res))
    seen = {start}
    frontier = [start]
    found = [start]
    while frontier:
        cell = frontier.pop()
        for nb in h3i.grid_disk(cell, 1):
            if nb in seen:
                continue
            seen.add(nb)
            clat, clon, reach = _cell_reach(nb)
            if haversine_m(lat, lon, clat, clon) - reach <= radius_m:
                found.append(nb)
                frontier.append(nb)
    return found


class _Bucket:
    """The points of one cell as numpy columns, handed out whole by a query."""

    __slots__ = ("ids", "lats", "lons")

    def __init__(self, ids: IdArray, lats: FloatArray, lons: FloatArray) -> None:
        self.ids = ids
        self.lats = lats
        self.lons = lons


class H3Index(LocatedIndex):
    """`GeoIndex` over H3 buckets at several resolutions; candidates never repeat a point.

    An upsert or remove rewrites the point's bucket at each resolution, which costs time linear
    in the bucket (a resolution 5 cell in a dense city holds tens of thousands of points).
    Not thread-safe on its own: callers serialise updates and queries (the service holds a lock).
    """

    kind = "h3"
    in_memory = True

    def __init__(
        self,
        resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
        cell_budget: float = DEFAULT_CELL_BUDGET,
    ) -> None:
        if not resolutions or any(not 0 <= r <= 15 for r in resolutions):
            raise ValueError(f"H3 resolutions must be 0..15, got {resolutions!r}")
        self.resolutions = tuple(sorted(set(resolutions)))
        self.cell_budget = cell_budget
        # Average hexagon edge and area per resolution, to estimate a covering's size.
        self._edge_m = {r: float(h3i.average_hexagon_edge_length(r, "m")) for r in self.resolutions}
        self._area_m2 = {r: float(h3i.average_hexagon_area(r, "m^2")) for r in self.resolutions}
        self._buckets: dict[int, dict[int, _Bucket]] = {r: {} for r in self.resolutions}
        self._locs = PointLocations()
        self._build_seconds = 0.0

    # -- building -----------------------------------------------------------------------------

    def _build(self, ids: IdArray, lats: FloatArray, lons: FloatArray) -> None:
        """Bulk build: one cell id per point and resolution, then group by sorting."""
        lat_list = lats.tolist()
        lon_list = lons.tolist()
        n = ids.size
        buckets: dict[int, dict[int, _Bucket]] = {}
        for res in self.resolutions:
            cells = np.fromiter(
                (h3i.latlng_to_cell(a, b, res) for a, b in zip(lat_list, lon_list, strict=True)),
                dtype=np.int64,
                count=n,
            )
            order = np.argsort(cells, kind="stable")
            cells, r_ids, r_lats, r_lons = cells[order], ids[order], lats[order], lons[order]
            level: dict[int, _Bucket] = {}
            if n:
                starts = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])
                ends = np.r_[starts[1:], n]
                for cell, s, e in zip(
                    cells[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
                ):
                    level[cell] = _Bucket(r_ids[s:e].copy(), r_lats[s:e].copy(), r_lons[s:e].copy())
            buckets[res] = level
        self._buckets = buckets

    # -- updates (upsert and remove: LocatedIndex) --------------------------------------------

    def _add(self, business_id: int, lat: float, lon: float) -> None:
        for res, level in self._buckets.items():
            cell = int(h3i.latlng_to_cell(lat, lon, res))
            b = level.get(cell)
            if b is None:
                level[cell] = _Bucket(
                    np.array([business_id], np.int64),
                    np.array([lat], np.float64),
                    np.array([lon], np.float64),
                )
            else:
                b.ids = np.append(b.ids, np.int64(business_id))
                b.lats = np.append(b.lats, lat)
                b.lons = np.append(b.lons, lon)

    def _discard(self, business_id: int, lat: float, lon: float) -> None:
        for res, level in self._buckets.items():
            cell = int(h3i.latlng_to_cell(lat, lon, res))
            b = level[cell]
            keep = b.ids != business_id
            if keep.all():
                raise RuntimeError(f"business {business_id} not found in its H3 bucket")
            if not keep.any():  # an emptied bucket is dropped
                del level[cell]
            else:
                b.ids, b.lats, b.lons = b.ids[keep], b.lats[keep], b.lons[keep]

    # -- queries ------------------------------------------------------------------------------

    def resolution_for(self, radius_m: float) -> int:
        """The finest resolution whose covering is expected to hold <= cell_budget cells."""
        for res in reversed(self.resolutions):
            span = radius_m + self._edge_m[res]
            if math.pi * span * span / self._area_m2[res] <= self.cell_budget:
                return res
        return self.resolutions[0]

    def candidates(self, lat: float, lon: float, radius_m: float) -> Candidates:
        res = self.resolution_for(radius_m)
        level = self._buckets[res]
        parts = [b for b in (level.get(c) for c in cover(lat, lon, radius_m, res)) if b is not None]
        if not parts:
            return Candidates.empty()
        if len(parts) == 1:
            return Candidates(parts[0].ids, parts[0].lats, parts[0].lons)
        return Candidates(
            np.concatenate([b.ids for b in parts]),
            np.concatenate([b.lats for b in parts]),
            np.concatenate([b.lons for b in parts]),
        )

    # -- reporting ----------------------------------------------------------------------------

    def stats(self) -> IndexStats:
        """memory_bytes is sys.getsizeof summed over the per-resolution dicts, their int keys,
        the buckets and their numpy columns (which own their data), plus the id -> location
        table. It leaves out the interpreter and allocator slack: a floor, not the process RSS.
        """
        memory = self._locs.memory_bytes() + sys.getsizeof(self._buckets)
        extra: dict[str, float] = {}
        for res, level in self._buckets.items():
            memory += sys.getsizeof(level)
            for cell, b in level.items():
                memory += sys.getsizeof(cell) + sys.getsizeof(b)
                memory += sys.getsizeof(b.ids) + sys.getsizeof(b.lats) + sys.getsizeof(b.lons)
            extra[f"cells_res{res}"] = float(len(level))
        return IndexStats(
            kind=self.kind,
            size=len(self._locs),
            build_seconds=self._build_seconds,
            memory_bytes=memory,
            extra=extra,
        )
