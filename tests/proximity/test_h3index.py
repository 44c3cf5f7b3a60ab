"""The H3 index proposes every point within the radius: its search equals brute force.

Besides clusters, points on the circle, the poles and the antimeridian, queries sit on H3 cell
vertices and next to the twelve pentagons, and `cover` is checked directly at every resolution
from 0 to 10, where one covering spans thousands of kilometres or a few metres.
"""

from __future__ import annotations

import math

import h3.api.basic_int as h3i
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab.geo import destination, haversine_m
from scalelab.proximity.h3index import DEFAULT_RESOLUTIONS, H3Index, cover
from scalelab.proximity.index import GeoIndex, brute_force, search

from . import geo_strategies as geo

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------


@st.composite
def near_pentagon(draw: st.DrawFn, resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS) -> geo.Query:
    """A point within a few cells of one of the twelve pentagons at one of the resolutions."""
    res = draw(st.sampled_from(resolutions))
    pentagon = draw(st.sampled_from(sorted(h3i.get_pentagons(res))))
    plat, plon = h3i.cell_to_latlng(pentagon)
    dist = draw(st.floats(0.0, 4 * h3i.average_hexagon_edge_length(res, "m")))
    lat, lon = destination(plat, plon, draw(geo.bearings), dist)
    return lat, lon, float(res)


@st.composite
def cell_vertex(draw: st.DrawFn) -> tuple[float, float]:
    """A vertex of the H3 cell (at an indexed resolution) around a random point."""
    res = draw(st.sampled_from(DEFAULT_RESOLUTIONS))
    cell = h3i.latlng_to_cell(draw(geo.lats), draw(geo.lons), res)
    lat, lon = draw(st.sampled_from(h3i.cell_to_boundary(cell)))
    return geo.clamp(lat, lon)


centres = geo.centres_with(near_pentagon().map(lambda q: (q[0], q[1])), cell_vertex())


# -- properties -------------------------------------------------------------------------------


@SETTINGS
@given(geo.scenarios(centres))
def test_search_equals_brute_force(scenario: geo.Scenario) -> None:
    geo.check_load_then_search(H3Index(), scenario)


@SETTINGS
@given(geo.scenarios(centres), st.data())
def test_upsert_move_and_remove_then_search(scenario: geo.Scenario, data: st.DataObject) -> None:
    geo.check_upsert_move_and_remove(H3Index(), scenario, data)


@st.composite
def cover_cases(draw: st.DrawFn) -> tuple[float, float, float, int]:
    """A query at any resolution 0..10, with a radius of up to four cell edges there."""
    res = draw(st.integers(0, 10))
    edge = h3i.average_hexagon_edge_length(res, "m")
    radius = draw(st.floats(1.0, 4 * edge))
    kind = draw(st.sampled_from(["anywhere", "pentagon", "pole", "antimeridian"]))
    if kind == "pentagon":
        lat, lon, _ = draw(near_pentagon((res,)))
    elif kind == "pole":
        lat, lon = draw(st.sampled_from([-90.0, 90.0])), draw(geo.lons)
        lat, lon = destination(lat, lon, draw(geo.bearings), draw(st.floats(0.0, 2 * radius)))
    elif kind == "antimeridian":
        lat, lon = draw(geo.lats), draw(st.sampled_from([-180.0, 180.0]))
        lat, lon = destination(lat, lon, draw(geo.bearings), draw(st.floats(0.0, 2 * radius)))
    else:
        lat, lon = draw(geo.lats), draw(geo.lons)
    return lat, lon, radius, res


@settings(max_examples=150, deadline=None)
@given(cover_cases(), st.data())
def test_cover_holds_the_cell_of_every_point_within_the_radius(
    case: tuple[float, float, float, int], data: st.DataObject
) -> None:
    lat, lon, radius, res = case
    cells = set(cover(lat, lon, radius, res))
    for _ in range(40):
        bearing = data.draw(geo.bearings)
        dist = data.draw(st.sampled_from([radius, radius * (1 - 1e-12)]) | st.floats(0, radius))
        plat, plon = destination(lat, lon, bearing, dist)
        if haversine_m(lat, lon, plat, plon) <= radius:
            assert h3i.latlng_to_cell(plat, plon, res) in cells, (plat, plon)


@settings(max_examples=60, deadline=None)
@given(near_pentagon(), geo.radii)
def test_search_next_to_pentagons(query: geo.Query, radius: float) -> None:
    lat, lon, _ = query
    points = [
        (i, *destination(lat, lon, 360.0 * i / 97, radius * (0.5 + (i % 7) / 6))) for i in range(97)
    ]
    index = H3Index()
    index.load(points)
    geo.assert_matches(index, points, [(lat, lon, radius)])


# -- examples ---------------------------------------------------------------------------------


def test_resolution_follows_the_radius() -> None:
    index = H3Index()
    assert [index.resolution_for(r) for r in (1.0, 500.0, 2_000.0, 5_000.0, 20_000.0)] == [
        8,
        8,
        8,
        7,
        5,
    ]
    assert H3Index(resolutions=(9,)).resolution_for(20_000.0) == 9


def test_every_resolution_gives_the_same_answer() -> None:
    points = [
        (i, *destination(-33.87, 151.21, (i * 37.0) % 360.0, (i * 211.0) % 9_000.0))
        for i in range(400)
    ]
    expected = brute_force(points, -33.87, 151.21, 4_000.0)
    assert len(expected) > 50
    for res in (4, 6, 9):
        index = H3Index(resolutions=(res,))
        index.load(points)
        assert search(index, -33.87, 151.21, 4_000.0) == expected


def test_load_replaces_and_last_duplicate_wins() -> None:
    index = H3Index()
    index.load([(1, 10.0, 10.0), (2, 10.0, 10.001)])
    index.load([(3, 0.0, 0.0), (3, 0.0, 0.001), (4, 0.0, 0.002)])
    assert len(index) == 2
    assert [h.business_id for h in search(index, 0.0, 0.0, 1_000.0)] == [3, 4]
    assert search(index, 10.0, 10.0, 1_000.0) == []


def test_rejects_bad_input() -> None:
    index = H3Index()
    for lat, lon in [(90.5, 0.0), (0.0, 180.5), (math.nan, 0.0)]:
        with pytest.raises(ValueError):
            index.upsert(1, lat, lon)
    with pytest.raises(ValueError):
        H3Index(resolutions=(16,))
    assert len(index) == 0


def test_remove_drops_empty_buckets() -> None:
    index = H3Index()
    index.upsert(1, 51.5, -0.12)
    index.upsert(2, 51.5, -0.12)
    index.upsert(1, 40.7, -74.0)  # move
    assert [h.business_id for h in search(index, 51.5, -0.12, 10.0)] == [2]
    assert [h.business_id for h in search(index, 40.7, -74.0, 10.0)] == [1]
    index.remove(1)
    index.remove(2)
    assert len(index) == 0
    assert all(v == 0 for v in index.stats().extra.values())


def test_stats_reports_build_and_memory() -> None:
    # At least a copy of the three columns per resolution.
    stats = geo.check_stats_after_load(H3Index(), 3_000, 3 * 3_000 * 24)
    assert stats.kind == "h3"
    assert set(stats.extra) == {f"cells_res{r}" for r in DEFAULT_RESOLUTIONS}


def test_is_a_geo_index() -> None:
    index: GeoIndex = H3Index()
    assert index.kind == "h3"
