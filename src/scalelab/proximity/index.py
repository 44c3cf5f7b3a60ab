"""The geo index interface every index kind implements, and the exact search over it.

An index only proposes candidates: a superset of the businesses within the radius, with the
coordinates it holds for them. `search` then applies the one exact distance test shared by all
kinds (`haversine_m_np`), so every kind returns exactly the brute-force answer as long as its
candidates never miss a point. That is the property the tests check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from scalelab.geo import haversine_m_np

IdArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Candidates:
    ids: IdArray
    lats: FloatArray
    lons: FloatArray

    @staticmethod
    def empty() -> Candidates:
        return Candidates(np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64))

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        if not parts:
            return Candidates.empty()
        if len(parts) == 1:
            return parts[0]
        return Candidates(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.lats for p in parts]),
            np.concatenate([p.lons for p in parts]),
        )


@dataclass
class IndexStats:
    """What the bench and the docs report about an index."""

    kind: str
    size: int
    build_seconds: float = 0.0
    memory_bytes: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class GeoIndex(Protocol):
    """A spatial index over (business_id, latitude, longitude) points."""

    kind: str
    in_memory: bool  # False when the index lives in the database and needs no start-up build

    def load(self, points: Iterable[tuple[int, float, float]]) -> None:
        """Bulk build from every point (start-up); replaces what was there."""
        ...

    def upsert(self, business_id: int, lat: float, lon: float) -> None: ...

    def remove(self, business_id: int, lat: float, lon: float) -> None:
        """Forget a point; (lat, lon) is where it was, which a persistent index needs."""
        ...

    def candidates(self, lat: float, lon: float, radius_m: float) -> Candidates:
        """A superset of the points within radius_m of (lat, lon); may contain duplicates
        only if the kind documents it (search de-duplicates)."""
        ...

    def stats(self) -> IndexStats: ...


@dataclass(frozen=True, slots=True)
class Hit:
    business_id: int
    distance_m: float


def search_arrays(
    index: GeoIndex, lat: float, lon: float, radius_m: float
) -> tuple[IdArray, FloatArray]:
    """(ids, distances) of every point within radius_m, nearest first, ties by id."""
    cand = index.candidates(lat, lon, radius_m)
    if cand.ids.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    dist = haversine_m_np(lat, lon, cand.lats, cand.lons)
    keep = dist <= radius_m
    ids = cand.ids[keep]
    dist = dist[keep]
    order = np.lexsort((ids, dist))
    ids = ids[order]
    dist = dist[order]
    _, first_idx = np.unique(ids, return_index=True)
    if first_idx.size != ids.size:  # an index may propose a point twice
        first_idx.sort()
        ids = ids[first_idx]
        dist = dist[first_idx]
    return ids, dist


def search(index: GeoIndex, lat: float, lon: float, radius_m: float) -> list[Hit]:
    """Every point within radius_m, nearest first (ties by id), with its true distance."""
    ids, dist = search_arrays(index, lat, lon, radius_m)
    return [Hit(int(i), float(d)) for i, d in zip(ids.tolist(), dist.tolist(), strict=True)]


def brute_force(
    points: Iterable[tuple[int, float, float]], lat: float, lon: float, radius_m: float
) -> list[Hit]:
    """The oracle: the same distance formula over every point."""
    pts = list(points)
    if not pts:
        return []
    ids = np.array([p[0] for p in pts], dtype=np.int64)
    lats = np.array([p[1] for p in pts], dtype=np.float64)
    lons = np.array([p[2] for p in pts], dtype=np.float64)
    return search(BruteForceIndex(Candidates(ids, lats, lons)), lat, lon, radius_m)


class BruteForceIndex:
    """The oracle as a GeoIndex: every point is a candidate, then the shared exact filter."""

    kind = "brute_force"
    in_memory = True

    def __init__(self, cand: Candidates) -> None:
        self._cand = cand

    def load(self, points: Iterable[tuple[int, float, float]]) -> None:
        raise TypeError("read-only")

    def upsert(self, business_id: int, lat: float, lon: float) -> None:
        raise TypeError("read-only")

    def remove(self, business_id: int, lat: float, lon: float) -> None:
        raise TypeError("read-only")

    def candidates(self, lat: float, lon: float, radius_m: float) -> Candidates:
        return self._cand

    def stats(self) -> IndexStats:
        return IndexStats(self.kind, int(self._cand.ids.size))
