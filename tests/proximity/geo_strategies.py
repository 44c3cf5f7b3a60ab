"""Hypothesis strategies and checks shared by the in-memory geo index tests.

Point sets mix clusters around the query, points exactly on the circle (give or take an ulp),
points near the antimeridian and the poles, and stacks of identical coordinates; centres add the
poles and +-180 degrees to whatever edge cases an index kind has (quadrant edges, H3 vertices).
Every check compares an index's search with `brute_force` over the same points.
"""

from __future__ import annotations

import math
from typing import Protocol

from hypothesis import strategies as st

from scalelab.geo import destination
from scalelab.proximity.index import GeoIndex, IndexStats, brute_force, search

Point = tuple[int, float, float]
Query = tuple[float, float, float]
Scenario = tuple[list[Point], list[Query]]

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)
radii = st.one_of(st.sampled_from([1.0, 20_000.0]), st.floats(1.0, 20_000.0))
bearings = st.floats(0.0, 360.0)


def nudge(x: float, ulps: int) -> float:
    for _ in range(abs(ulps)):
        x = math.nextafter(x, math.inf if ulps > 0 else -math.inf)
    return x


def clamp(lat: float, lon: float) -> tuple[float, float]:
    return min(90.0, max(-90.0, lat)), min(180.0, max(-180.0, lon))


def centres_with(
    *extra: st.SearchStrategy[tuple[float, float]],
) -> st.SearchStrategy[tuple[float, float]]:
    """Query centres anywhere, on and near the antimeridian and the poles, or from `extra`."""
    return st.one_of(
        st.tuples(lats, lons),
        st.tuples(lats, st.sampled_from([-180.0, 180.0])),
        st.tuples(lats, st.floats(179.9, 180.0) | st.floats(-180.0, -179.9)),
        st.tuples(st.floats(89.8, 90.0) | st.floats(-90.0, -89.8), lons),
        st.tuples(st.sampled_from([-90.0, 90.0]), lons),
        *extra,
    )


@st.composite
def points_around(draw: st.DrawFn, centre: tuple[float, float], radius: float) -> list[Point]:
    """Points near, on and beyond the circle, plus far, polar, antimeridian and stacked ones."""
    clat, clon = centre
    coords: list[tuple[float, float]] = []
    for _ in range(draw(st.integers(0, 60))):  # a cluster straddling the circle
        coords.append(destination(clat, clon, draw(bearings), draw(st.floats(0.0, 2.5 * radius))))
    for _ in range(draw(st.integers(0, 12))):  # on the circle, give or take a few ulps
        bearing = draw(st.sampled_from([0.0, 90.0, 180.0, 270.0]) | bearings)
        plat, plon = destination(clat, clon, bearing, radius)
        du = draw(st.integers(-2, 2))
        dv = draw(st.integers(-2, 2))
        coords.append(clamp(nudge(plat, du), nudge(plon, dv)))
    for _ in range(draw(st.integers(0, 8))):  # anywhere
        coords.append((draw(lats), draw(lons)))
    for _ in range(draw(st.integers(0, 6))):  # within 30 km of a pole
        pole = draw(st.sampled_from([-90.0, 90.0]))
        coords.append(destination(pole, 0.0, draw(bearings), draw(st.floats(0, 3e4))))
    for _ in range(draw(st.integers(0, 6))):  # at or near the antimeridian
        lon = draw(st.sampled_from([-180.0, 180.0]) | st.floats(179.99, 180.0))
        east: bool = draw(st.booleans())
        coords.append((draw(lats), lon if east else -lon))
    if draw(st.booleans()):  # a stack of identical coordinates, often more than a leaf holds
        reuse: bool = draw(st.booleans())
        here = coords[0] if coords and reuse else (draw(lats), draw(lons))
        coords.extend([here] * draw(st.integers(2, 40)))
    ids = draw(st.permutations(range(len(coords))))
    return [(int(i) * 7 - 50, la, lo) for i, (la, lo) in zip(ids, coords, strict=True)]


@st.composite
def scenarios(draw: st.DrawFn, centres: st.SearchStrategy[tuple[float, float]]) -> Scenario:
    """Points around a centre, queried there and at up to three other centres or points."""
    centre = draw(centres)
    radius = draw(radii)
    points = draw(points_around(centre, radius))
    queries = [(centre[0], centre[1], radius)]
    for _ in range(draw(st.integers(0, 3))):
        near_a_point: bool = draw(st.booleans())
        if points and near_a_point:
            _, la, lo = draw(st.sampled_from(points))
        else:
            la, lo = draw(centres)
        queries.append((la, lo, draw(radii)))
    return points, queries


class MemoryIndex(GeoIndex, Protocol):
    """An in-memory index (`LocatedIndex`): it lists its points and removes by id alone."""

    def __len__(self) -> int: ...

    def points(self) -> list[Point]: ...

    def remove(
        self, business_id: int, lat: float | None = None, lon: float | None = None
    ) -> None: ...


def assert_matches(index: GeoIndex, points: list[Point], queries: list[Query]) -> None:
    for lat, lon, radius in queries:
        assert search(index, lat, lon, radius) == brute_force(points, lat, lon, radius), (
            lat,
            lon,
            radius,
        )


def no_duplicates(index: GeoIndex, queries: list[Query]) -> None:
    for lat, lon, radius in queries:
        ids = index.candidates(lat, lon, radius).ids.tolist()
        assert len(ids) == len(set(ids))


def check_load_then_search(index: GeoIndex, scenario: Scenario) -> None:
    """A bulk load holds every point and searches like brute force, never repeating one."""
    points, queries = scenario
    index.load(points)
    assert index.stats().size == len(points)
    assert_matches(index, points, queries)
    no_duplicates(index, queries)


def check_stats_after_load(index: GeoIndex, n: int, min_memory_bytes: int) -> IndexStats:
    """Load n points spread over the globe: the stats count them, time the build and report
    more than min_memory_bytes."""
    index.load((i, (i % 170) - 85.0, (i % 350) - 175.0) for i in range(n))
    stats = index.stats()
    assert stats.size == n
    assert stats.build_seconds > 0
    assert stats.memory_bytes > min_memory_bytes
    return stats


def check_upsert_move_and_remove(
    index: MemoryIndex, scenario: Scenario, data: st.DataObject
) -> None:
    """Load half the points and insert the rest, move some ids (maybe across the world), remove
    some (maybe twice) and an absent one: the index then holds and finds what a dict holds."""
    points, queries = scenario
    half = len(points) // 2
    index.load(points[:half])
    for p in points[half:]:  # inserts after the bulk load
        index.upsert(*p)
    model = {p[0]: (p[1], p[2]) for p in points}
    if points:
        ids = list(model)
        for business_id in data.draw(st.lists(st.sampled_from(ids), max_size=10)):
            lat, lon = data.draw(st.sampled_from(points))[1:]
            lat, lon = data.draw(st.sampled_from([(lat, lon), (-lat, -lon)]))
            index.upsert(business_id, lat, lon)
            model[business_id] = (lat, lon)
        for business_id in data.draw(st.lists(st.sampled_from(ids), max_size=len(ids))):
            index.remove(business_id)
            model.pop(business_id, None)
    index.remove(10**12)  # absent: no-op
    current = [(i, la, lo) for i, (la, lo) in model.items()]
    assert len(index) == len(current) == index.stats().size
    assert sorted(index.points()) == sorted(current)
    assert_matches(index, current, queries)
    no_duplicates(index, queries)
