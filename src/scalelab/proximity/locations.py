"""A compact id -> location table shared by the in-memory index kinds, and their update logic.

The quadtree and the H3 index both remember where every point is, so that an upsert can find and
drop the old entry and a remove needs no coordinates from the caller. `PointLocations` is that
table; `LocatedIndex` implements `load`, `upsert` and `remove` over it once, leaving each kind
to say how it builds its structure and adds or drops one point (`_build`, `_add`, `_discard`).
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

from scalelab.proximity.index import FloatArray, IdArray

_EMPTY_IDS: IdArray = np.empty(0, np.int64)
_EMPTY_F: FloatArray = np.empty(0, np.float64)


def check_point(lat: float, lon: float) -> None:
    """Reject coordinates outside [-90, 90] x [-180, 180] (and NaN) instead of misplacing them."""
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"coordinates out of range: ({lat}, {lon})")


def points_to_arrays(
    points: Iterable[tuple[int, float, float]],
) -> tuple[IdArray, FloatArray, FloatArray]:
    """Columns of the points, checked, with one row per id (the last one wins, as with upsert)."""
    pts = list(points)
    if not pts:
        return _EMPTY_IDS, _EMPTY_F, _EMPTY_F
    id_col, lat_col, lon_col = zip(*pts, strict=True)
    ids = np.array(id_col, dtype=np.int64)
    lats = np.array(lat_col, dtype=np.float64)
    lons = np.array(lon_col, dtype=np.float64)
    ok = (lats >= -90.0) & (lats <= 90.0) & (lons >= -180.0) & (lons <= 180.0)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"coordinates out of range: ({lats[bad]}, {lons[bad]})")
    # First occurrence in the reversed column = last occurrence in the original one.
    _, first_rev = np.unique(ids[::-1], return_index=True)
    if first_rev.size != ids.size:
        keep = np.sort(ids.size - 1 - first_rev)
        ids, lats, lons = ids[keep], lats[keep], lons[keep]
    return ids, lats, lons


class PointLocations:
    """id -> (lat, lon) of every indexed point, so an upsert can find and remove the old entry.

    A dict of tuples would cost about 180 bytes a point in CPython (int key, tuple, two floats,
    hash slot): several times the index itself. Bulk-loaded points live instead in numpy
    columns sorted by id (25 bytes a point, found by binary search). Moving a loaded id
    overwrites its row; removing it clears an alive flag; only ids first seen after the load go
    to a dict. Shared by the quadtree and the H3 index.
    """

    def __init__(self) -> None:
        self._ids: IdArray = _EMPTY_IDS
        self._lats: FloatArray = _EMPTY_F
        self._lons: FloatArray = _EMPTY_F
        self._alive: npt.NDArray[np.bool_] = np.empty(0, np.bool_)
        self._n_alive = 0
        self._extra: dict[int, tuple[float, float]] = {}

    def load(self, ids: IdArray, lats: FloatArray, lons: FloatArray) -> None:
        """Replace everything with these points (ids must be unique)."""
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._lats = lats[order]
        self._lons = lons[order]
        self._alive = np.ones(ids.size, np.bool_)
        self._n_alive = int(ids.size)
        self._extra = {}

    def _row(self, business_id: int) -> int:
        i = int(np.searchsorted(self._ids, business_id))
        if i < self._ids.size and int(self._ids[i]) == business_id:
            return i
        return -1

    def get(self, business_id: int) -> tuple[float, float] | None:
        found = self._extra.get(business_id)
        if found is not None:
            return found
        i = self._row(business_id)
        if i < 0 or not self._alive[i]:
            return None
        return float(self._lats[i]), float(self._lons[i])

    def set(self, business_id: int, lat: float, lon: float) -> None:
        i = self._row(business_id)
        if i < 0:
            self._extra[business_id] = (lat, lon)
            return
        self._lats[i] = lat
        self._lons[i] = lon
        if not self._alive[i]:
            self._alive[i] = True
            self._n_alive += 1

    def pop(self, business_id: int) -> tuple[float, float] | None:
        """Forget the id; its last location, or None when it was not there."""
        found = self._extra.pop(business_id, None)
        if found is not None:
            return found
        i = self._row(business_id)
        if i < 0 or not self._alive[i]:
            return None
        self._alive[i] = False
        self._n_alive -= 1
        return float(self._lats[i]), float(self._lons[i])

    def __len__(self) -> int:
        return self._n_alive + len(self._extra)

    def items(self) -> Iterator[tuple[int, float, float]]:
        """Every (id, lat, lon), loaded ones first; for tests and rebuilds."""
        alive = self._alive
        for i, la, lo in zip(
            self._ids[alive].tolist(),
            self._lats[alive].tolist(),
            self._lons[alive].tolist(),
            strict=True,
        ):
            yield i, la, lo
        for i, (la, lo) in self._extra.items():
            yield i, la, lo

    def memory_bytes(self) -> int:
        """sys.getsizeof of the columns and of the dict with its keys, tuples and floats."""
        total = sum(sys.getsizeof(a) for a in (self._ids, self._lats, self._lons, self._alive))
        total += sys.getsizeof(self._extra)
        for key, value in self._extra.items():
            total += sys.getsizeof(key) + sys.getsizeof(value) + 2 * sys.getsizeof(value[0])
        return total


class LocatedIndex(ABC):
    """The part of an in-memory `GeoIndex` that keeps its `PointLocations` in step.

    A subclass creates `_locs` and `_build_seconds` in its `__init__` and implements the hooks:
    `_build` replaces the whole structure with checked, unique points; `_add` puts one point in;
    `_discard` takes out one point that is known to be there at exactly (lat, lon).
    """

    _locs: PointLocations
    _build_seconds: float

    def load(self, points: Iterable[tuple[int, float, float]]) -> None:
        """Bulk build from every point (the last row of a repeated id wins); replaces all."""
        start = time.perf_counter()
        ids, lats, lons = points_to_arrays(points)
        self._build(ids, lats, lons)
        self._locs = PointLocations()
        self._locs.load(ids, lats, lons)
        self._build_seconds = time.perf_counter() - start

    def upsert(self, business_id: int, lat: float, lon: float) -> None:
        """Insert, or move: the old entry is found through its remembered location."""
        check_point(lat, lon)
        old = self._locs.get(business_id)
        if old is not None:
            self._discard(business_id, *old)
        self._add(business_id, lat, lon)
        self._locs.set(business_id, lat, lon)

    def remove(self, business_id: int, lat: float | None = None, lon: float | None = None) -> None:
        """Remove the id (no-op if absent).

        (lat, lon), where the caller believes the point was, is not needed: the index trusts
        its own record of every point's location.
        """
        old = self._locs.pop(business_id)
        if old is not None:
            self._discard(business_id, *old)

    def __len__(self) -> int:
        return len(self._locs)

    def points(self) -> list[tuple[int, float, float]]:
        """Every indexed (id, lat, lon), in no particular order."""
        return list(self._locs.items())

    @abstractmethod
    def _build(self, ids: IdArray, lats: FloatArray, lons: FloatArray) -> None:
        """Replace the structure with these points (checked, one row per id)."""

    @abstractmethod
    def _add(self, business_id: int, lat: float, lon: float) -> None:
        """Put a point that is not indexed yet into the structure."""

    @abstractmethod
    def _discard(self, business_id: int, lat: float, lon: float) -> None:
        """Take out a point that the structure holds at exactly (lat, lon)."""
