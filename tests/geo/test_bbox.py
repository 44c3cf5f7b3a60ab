"""Box predicates and circle_boxes: complete (never miss a point within the radius), well formed
(no wrapping, inside the world) and tight (not much bigger than the circle)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.geo import EARTH_RADIUS_M, Box, circle_boxes, destination, haversine_m

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)
# Centres anywhere, but often near the poles and the antimeridian, where boxes change shape.
centre_lats = lats | st.floats(80.0, 90.0) | st.floats(-90.0, -80.0)
centre_lons = lons | st.floats(179.0, 180.0) | st.floats(-180.0, -179.0)
local_radii = st.floats(0.0, 20_000.0)
wide_radii = st.floats(0.0, 2_000_000.0)
# Bearing and fraction of the radius for the probe points; the edge of the circle (fraction 1)
# and the compass points are where a box is most likely to be too small.
probes = st.lists(
    st.tuples(
        st.floats(0.0, 360.0) | st.sampled_from([0.0, 90.0, 180.0, 270.0]),
        st.floats(0.0, 1.0) | st.just(1.0),
    ),
    min_size=1,
    max_size=30,
)


def in_any(boxes: list[Box], lat: float, lon: float) -> bool:
    return any(b.contains(lat, lon) for b in boxes)


def assert_well_formed(boxes: list[Box]) -> None:
    assert 1 <= len(boxes) <= 2
    for b in boxes:
        assert b.west <= b.east, b
        assert b.south <= b.north, b
        assert -90.0 <= b.south and b.north <= 90.0, b
        assert -180.0 <= b.west and b.east <= 180.0, b


def check_complete(
    lat: float, lon: float, radius: float, probe_list: list[tuple[float, float]]
) -> list[Box]:
    boxes = circle_boxes(lat, lon, radius)
    assert_well_formed(boxes)
    assert in_any(boxes, lat, lon)
    for bearing, fraction in [(b, 1.0) for b in (0.0, 90.0, 180.0, 270.0)] + probe_list:
        plat, plon = destination(lat, lon, bearing, fraction * radius)
        # destination is accurate to nanometres; a point it puts a hair outside the radius is
        # outside, and the contract is about points the exact haversine test would accept.
        if haversine_m(lat, lon, plat, plon) <= radius:
            assert in_any(boxes, plat, plon), (bearing, fraction, plat, plon, boxes)
    return boxes


@given(centre_lats, centre_lons, local_radii, probes)
def test_circle_boxes_complete_local(
    lat: float, lon: float, radius: float, probe_list: list[tuple[float, float]]
) -> None:
    check_complete(lat, lon, radius, probe_list)


@given(centre_lats, centre_lons, wide_radii, probes)
def test_circle_boxes_complete_wide(
    lat: float, lon: float, radius: float, probe_list: list[tuple[float, float]]
) -> None:
    check_complete(lat, lon, radius, probe_list)


@pytest.mark.parametrize(
    ("lat", "lon", "radius", "bearing"),
    [
        # Regression: the latitude half-width had no slack, so these points due south/north,
        # which haversine_m puts within the radius, fell 1 ulp outside the boxes.
        (-81.18983573501622, 179.55865753440426, 14025.131717769313, 180.0),
        (-89.68047638172312, 179.5546054532579, 1349.7510018503879, 180.0),
        (-80.90136129055938, 179.8494518332318, 1100260.612458295, 0.0),
        (80.76442295670698, 109.50096172673472, 772.8286683483354, 0.0),
    ],
)
def test_circle_boxes_edge_regressions(
    lat: float, lon: float, radius: float, bearing: float
) -> None:
    plat, plon = destination(lat, lon, bearing, radius)
    assert haversine_m(lat, lon, plat, plon) <= radius
    assert in_any(circle_boxes(lat, lon, radius), plat, plon)


def max_lon_offset(lat: float, lon: float, radius: float) -> float:
    """Brute force: the largest eastward longitude offset over the circle's edge, by golden
    section search over the bearing (the offset is unimodal on (0, 180) when the circle does
    not contain a pole)."""

    def offset(bearing: float) -> float:
        return (destination(lat, lon, bearing, radius)[1] - lon + 540.0) % 360.0 - 180.0

    lo, hi = 0.0, 180.0
    g = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if offset(a) < offset(b):
            lo = a
        else:
            hi = b
    return offset((lo + hi) / 2)


@given(st.floats(-60.0, 60.0), centre_lons, st.floats(1.0, 20_000.0))
def test_circle_boxes_tight_mid_latitudes(lat: float, lon: float, radius: float) -> None:
    boxes = circle_boxes(lat, lon, radius)
    d_deg = math.degrees(radius / EARTH_RADIUS_M)
    south = min(b.south for b in boxes)
    north = max(b.north for b in boxes)
    assert north - south == pytest.approx(2 * d_deg, abs=1e-6)
    assert south == pytest.approx(lat - d_deg, abs=1e-9)
    assert north == pytest.approx(lat + d_deg, abs=1e-9)
    width = sum(b.east - b.west for b in boxes)
    assert width == pytest.approx(2 * max_lon_offset(lat, lon, radius), abs=1e-6)
    if len(boxes) == 2:  # split at the antimeridian: one piece ends at 180, one starts at -180
        assert sorted((b.west, b.east) for b in boxes)[0][0] == -180.0
        assert sorted((b.east, b.west) for b in boxes)[-1][0] == 180.0
        assert abs(lon) + width / 2 >= 180.0


@given(centre_lats, centre_lons, wide_radii)
def test_circle_boxes_all_longitudes_only_around_a_pole(
    lat: float, lon: float, radius: float
) -> None:
    boxes = circle_boxes(lat, lon, radius)
    spans_all = len(boxes) == 1 and boxes[0].west == -180.0 and boxes[0].east == 180.0
    to_pole = min(haversine_m(lat, lon, 90.0, 0.0), haversine_m(lat, lon, -90.0, 0.0))
    # Every longitude is needed iff the circle reaches a pole.
    if to_pole <= radius * (1 - 1e-9) - 1e-6:
        assert spans_all
    if spans_all:
        assert to_pole <= radius * (1 + 1e-9) + 1e-6


@pytest.mark.parametrize("lon", [180.0, -180.0, 179.9999, -179.9999])
def test_circle_boxes_split_at_antimeridian(lon: float) -> None:
    boxes = circle_boxes(10.0, lon, 5_000.0)
    assert len(boxes) == 2
    assert_well_formed(boxes)
    assert {b.east for b in boxes} >= {180.0} and {b.west for b in boxes} >= {-180.0}
    for bearing in range(0, 360, 5):
        assert in_any(boxes, *destination(10.0, lon, float(bearing), 5_000.0))


def test_circle_boxes_reference_shape() -> None:
    # 1 degree of arc around (0, 0): exactly +-1 degree both ways on the equator.
    r = EARTH_RADIUS_M * math.pi / 180
    (box,) = circle_boxes(0.0, 0.0, r)
    assert box.south == pytest.approx(-1.0, abs=1e-8)
    assert box.north == pytest.approx(1.0, abs=1e-8)
    assert box.east == pytest.approx(1.0, abs=1e-8)
    assert box.west == pytest.approx(-1.0, abs=1e-8)
    # At 60 degrees the half-width is asin(sin(1 deg) / cos(60 deg)), about 2.0003 degrees.
    (box,) = circle_boxes(60.0, 0.0, r)
    expected = math.degrees(math.asin(math.sin(math.radians(1.0)) / 0.5))
    assert box.east == pytest.approx(expected, abs=1e-8)


def test_circle_boxes_at_pole() -> None:
    (box,) = circle_boxes(90.0, 0.0, 1_000.0)
    assert (box.west, box.north, box.east) == (-180.0, 90.0, 180.0)
    assert box.south == pytest.approx(90.0 - math.degrees(1_000.0 / EARTH_RADIUS_M), abs=1e-9)
    (box,) = circle_boxes(-90.0, 123.0, 0.0)
    assert (box.west, box.east) == (-180.0, 180.0) and box.contains(-90.0, 0.0)


# --- Box predicates ---------------------------------------------------------------------------


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    s, n = sorted((draw(lats), draw(lats)))
    w, e = sorted((draw(lons), draw(lons)))
    return Box(s, w, n, e)


@given(boxes(), boxes())
def test_intersects_iff_common_point(a: Box, b: Box) -> None:
    # Oracle: closed boxes meet iff the corner (max south, max west) lies in both.
    corner = (max(a.south, b.south), max(a.west, b.west))
    common = a.contains(*corner) and b.contains(*corner)
    assert a.intersects(b) == common == b.intersects(a)


@given(boxes(), boxes())
def test_within_iff_corners_inside(a: Box, b: Box) -> None:
    corners = [(lat, lon) for lat in (a.south, a.north) for lon in (a.west, a.east)]
    assert a.within(b) == all(b.contains(*c) for c in corners)
    if a.within(b):
        assert a.intersects(b)
    assert a.within(a)
