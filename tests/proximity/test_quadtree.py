"""The quadtree index proposes every point within the radius: its search equals brute force.

Point sets (from `geo_strategies`) mix clusters around the query, points exactly on the circle
(give or take an ulp), points near the antimeridian and the poles, and stacks of identical
coordinates larger than a leaf (the split guard); queries include the poles, +-180 degrees and
quadrant edges.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from scalelab.geo import destination
from scalelab.proximity.index import GeoIndex, brute_force, search
from scalelab.proximity.quadtree import MAX_DEPTH, QuadtreeIndex

from . import geo_strategies as geo

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------


@st.composite
def dyadic_edge(draw: st.DrawFn) -> tuple[float, float]:
    """A point on quadrant edges: -90 + k * 180 / 2**d, -180 + j * 360 / 2**d."""
    d = draw(st.integers(0, 24))
    k = draw(st.integers(0, 2**d))
    j = draw(st.integers(0, 2**d))
    return -90.0 + k * 180.0 / 2**d, -180.0 + j * 360.0 / 2**d


centres = geo.centres_with(dyadic_edge())
capacities = st.sampled_from([1, 2, 4, 16, 100])


# -- properties -------------------------------------------------------------------------------


@SETTINGS
@given(geo.scenarios(centres), capacities)
def test_search_equals_brute_force(scenario: geo.Scenario, capacity: int) -> None:
    geo.check_load_then_search(QuadtreeIndex(leaf_capacity=capacity), scenario)


@SETTINGS
@given(geo.scenarios(centres), capacities, st.data())
def test_upsert_move_and_remove_then_search(
    scenario: geo.Scenario, capacity: int, data: st.DataObject
) -> None:
    geo.check_upsert_move_and_remove(QuadtreeIndex(leaf_capacity=capacity), scenario, data)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(geo.lats, geo.lons), min_size=1, max_size=40), st.integers(2, 40))
def test_identical_coordinates_stop_splitting_at_max_depth(
    spots: list[tuple[float, float]], copies: int
) -> None:
    lat, lon = spots[0]
    points = [(i, lat, lon) for i in range(copies)]
    points += [(copies + i, la, lo) for i, (la, lo) in enumerate(spots)]
    index = QuadtreeIndex(leaf_capacity=1)
    index.load(points)
    stats = index.stats()
    assert stats.extra["depth"] <= MAX_DEPTH
    geo.assert_matches(index, points, [(lat, lon, 1.0), (lat, lon, 20_000.0)])
    index.upsert(10**6, lat, lon)  # one more on the full max-depth leaf
    points.append((10**6, lat, lon))
    geo.assert_matches(index, points, [(lat, lon, 1.0)])


# -- examples ---------------------------------------------------------------------------------


def test_load_replaces_and_last_duplicate_wins() -> None:
    index = QuadtreeIndex(leaf_capacity=2)
    index.load([(1, 10.0, 10.0), (2, 10.0, 10.001)])
    index.load([(3, 0.0, 0.0), (3, 0.0, 0.001), (4, 0.0, 0.002)])
    assert len(index) == 2
    hits = [h.business_id for h in search(index, 0.0, 0.0, 1_000.0)]
    assert hits == [4, 3] or hits == [3, 4]
    assert search(index, 10.0, 10.0, 1_000.0) == []
    assert sorted(index.points()) == [(3, 0.0, 0.001), (4, 0.0, 0.002)]


def test_rejects_coordinates_out_of_range() -> None:
    index = QuadtreeIndex()
    for lat, lon in [(90.5, 0.0), (0.0, 180.5), (math.nan, 0.0), (0.0, -math.inf)]:
        with pytest.raises(ValueError):
            index.upsert(1, lat, lon)
        with pytest.raises(ValueError):
            index.load([(1, lat, lon)])
    assert len(index) == 0


def test_splits_and_merges_back() -> None:
    index = QuadtreeIndex(leaf_capacity=4)
    points = [(i, 48.85 + i * 1e-4, 2.35 + i * 1e-4) for i in range(50)]
    for p in points:
        index.upsert(*p)
    grown = index.stats()
    assert grown.extra["leaves"] > 1 and grown.extra["depth"] > 10
    for business_id, _, _ in points[2:]:
        index.remove(business_id)
    shrunk = index.stats()
    assert shrunk.extra["leaves"] == 1 and shrunk.extra["depth"] == 0
    assert [h.business_id for h in search(index, 48.85, 2.35, 100.0)] == [0, 1]


def test_stats_reports_build_and_memory() -> None:
    stats = geo.check_stats_after_load(QuadtreeIndex(), 5_000, 5_000 * 24)  # three columns
    assert stats.kind == "quadtree"
    assert stats.extra["leaves"] >= 5_000 / 100


def test_is_a_geo_index() -> None:
    index: GeoIndex = QuadtreeIndex()
    assert index.kind == "quadtree"


# -- model-based ------------------------------------------------------------------------------


# A few hot spots make deep trees; the poles and the antimeridian make edge cases.
HOT_SPOTS = [
    (48.8566, 2.3522),
    (0.0, 0.0),
    (0.0, 180.0),
    (-16.5, -180.0),
    (89.99, 45.0),
    (-90.0, 0.0),
]


@st.composite
def locations(draw: st.DrawFn) -> tuple[float, float]:
    if draw(st.booleans()):
        return draw(geo.lats), draw(geo.lons)
    lat, lon = draw(st.sampled_from(HOT_SPOTS))
    if draw(st.booleans()):  # exactly on the spot: identical coordinates stack up
        return lat, lon
    return destination(lat, lon, draw(st.floats(0.0, 360.0)), draw(st.floats(0.0, 5_000.0)))


class QuadtreeMachine(RuleBasedStateMachine):
    """Inserts, moves, removes and queries against a dict model, with tiny leaves so that
    splits, max-depth stacks and merges all happen in a few steps."""

    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.index = QuadtreeIndex(leaf_capacity=3)
        self.model: dict[int, tuple[float, float]] = {}
        self.next_id = 0

    @initialize(target=ids, where=st.lists(locations(), max_size=30))
    def load(self, where: list[tuple[float, float]]) -> MultipleResults[int]:
        rows = [(i, la, lo) for i, (la, lo) in enumerate(where)]
        self.index.load(rows)
        self.model = {i: (la, lo) for i, la, lo in rows}
        self.next_id = len(rows)
        return multiple(*self.model)

    @rule(target=ids, where=locations())
    def insert(self, where: tuple[float, float]) -> int:
        business_id = self.next_id
        self.next_id += 1
        self.index.upsert(business_id, *where)
        self.model[business_id] = where
        return business_id

    @rule(business_id=ids, where=locations())
    def move(self, business_id: int, where: tuple[float, float]) -> None:
        self.index.upsert(business_id, *where)
        self.model[business_id] = where

    @rule(business_id=consumes(ids))
    def remove(self, business_id: int) -> None:
        self.index.remove(business_id)
        self.model.pop(business_id, None)

    @rule(where=locations(), radius=geo.radii)
    def query(self, where: tuple[float, float], radius: float) -> None:
        points = [(i, la, lo) for i, (la, lo) in self.model.items()]
        lat, lon = where
        assert search(self.index, lat, lon, radius) == brute_force(points, lat, lon, radius)

    @invariant()
    def sizes_agree(self) -> None:
        assert len(self.index) == len(self.model) == self.index.stats().size


QuadtreeMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQuadtreeMachine = QuadtreeMachine.TestCase


@settings(max_examples=150, deadline=None)
@given(st.tuples(st.floats(-89.0, 89.0), geo.lons), geo.radii)
def test_points_on_the_circle_due_north_and_south(centre: tuple[float, float], r: float) -> None:
    """Points within an ulp or two of the circle where its bounding box is tightest: the
    box's latitude edges (found missing points there: circle_boxes has no latitude slack)."""
    lat, lon = centre
    points: list[geo.Point] = []
    for bearing in (0.0, 180.0, 90.0, 270.0):
        plat, plon = destination(lat, lon, bearing, r)
        for ulps in range(-3, 4):
            points.append((len(points), *geo.clamp(geo.nudge(plat, ulps), plon)))
            points.append((len(points), *geo.clamp(plat, geo.nudge(plon, ulps))))
    index = QuadtreeIndex(leaf_capacity=4)
    index.load(points)
    geo.assert_matches(index, points, [(lat, lon, r)])
