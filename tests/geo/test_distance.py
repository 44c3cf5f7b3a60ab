"""Properties of the great-circle distance and the destination point, checked against
published reference values and against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.geo import EARTH_RADIUS_M, destination, haversine_m, haversine_m_np

EPS = 2.0**-52
HALF_CIRCUMFERENCE_M = math.pi * EARTH_RADIUS_M

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)
points = st.tuples(lats, lons)
bearings = st.floats(0.0, 360.0, allow_nan=False)
# Up to just short of the antipode: past pi*R, destination wraps round and the distance shrinks.
distances = st.floats(0.0, HALF_CIRCUMFERENCE_M * (1 - 1e-9), allow_nan=False)


def dist_tol(d: float) -> float:
    """How far two correct float evaluations of a haversine distance d may differ.

    Haversine is well conditioned except near the antipode, where asin(sqrt(a)) has an infinite
    slope at a = 1: one rounding in a (~eps) moves d by up to R * sqrt(eps) (about 9 cm) at the
    exact antipode, and by R * eps / cos(theta / 2) a little away from it. 1e-6 m everywhere else.
    """
    c = math.cos(min(d / EARTH_RADIUS_M, math.pi) / 2)
    return 1e-6 + EARTH_RADIUS_M * min(math.sqrt(8 * EPS), 8 * EPS / max(c, 1e-300))


# --- reference values ---------------------------------------------------------------------


def test_reference_bna_to_lax() -> None:
    # Rosetta Code, "Haversine formula" task: BNA (36.12, -86.67) to LAX (33.94, -118.40) is
    # 2886.44444283798329974715782394574671655 km with R = 6371.0 km. The central angle does not
    # depend on R, so rescale ours to R = 6371.0 km to compare.
    d = haversine_m(36.12, -86.67, 33.94, -118.40)
    assert d / EARTH_RADIUS_M * 6_371_000.0 == pytest.approx(2_886_444.442837983, abs=1e-6)


def test_reference_lands_end_to_john_o_groats() -> None:
    # Chris Veness, "Calculate distance, bearing and more between Latitude/Longitude points"
    # (movable-type.co.uk/scripts/latlong.html): 50 03 59N, 005 42 53W to 58 38 38N, 003 04 12W
    # is 968.9 km (4 significant figures, R = 6371 km).
    lat1, lon1 = 50 + 3 / 60 + 59 / 3600, -(5 + 42 / 60 + 53 / 3600)
    lat2, lon2 = 58 + 38 / 60 + 38 / 3600, -(3 + 4 / 60 + 12 / 3600)
    assert haversine_m(lat1, lon1, lat2, lon2) == pytest.approx(968_900.0, abs=50.0)


def test_reference_destination() -> None:
    # Same page, "Destination point given distance and bearing from start point": from
    # 53 19 14N, 001 43 47W on bearing 096 01 18 for 124.8 km lands at 53 11 18N, 000 08 00E
    # (rounded to the arcsecond).
    lat, lon = destination(
        53 + 19 / 60 + 14 / 3600, -(1 + 43 / 60 + 47 / 3600), 96 + 1 / 60 + 18 / 3600, 124_800.0
    )
    assert lat == pytest.approx(53 + 11 / 60 + 18 / 3600, abs=0.5 / 3600)
    assert lon == pytest.approx(8 / 60, abs=0.5 / 3600)


def test_reference_quarter_and_half_circles() -> None:
    assert haversine_m(0.0, 0.0, 0.0, 90.0) == pytest.approx(HALF_CIRCUMFERENCE_M / 2, rel=1e-15)
    assert haversine_m(0.0, 0.0, 90.0, 0.0) == pytest.approx(HALF_CIRCUMFERENCE_M / 2, rel=1e-15)
    assert haversine_m(90.0, 0.0, -90.0, 0.0) == pytest.approx(HALF_CIRCUMFERENCE_M, rel=1e-15)
    assert haversine_m(0.0, -90.0, 0.0, 90.0) == pytest.approx(HALF_CIRCUMFERENCE_M, rel=1e-15)
    # One degree of latitude is R * pi / 180 anywhere.
    assert haversine_m(10.0, 20.0, 11.0, 20.0) == pytest.approx(
        EARTH_RADIUS_M * math.pi / 180, rel=1e-12
    )


# --- haversine_m properties -------------------------------------------------------------------


@given(points, points)
def test_symmetric(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert haversine_m(*a, *b) == pytest.approx(haversine_m(*b, *a), abs=1e-9)


@given(points)
def test_zero_on_identical_points(p: tuple[float, float]) -> None:
    assert haversine_m(*p, *p) == 0.0


@given(lats)
def test_antimeridian_is_one_line(lat: float) -> None:
    # lon 180 and lon -180 are the same meridian.
    assert haversine_m(lat, 180.0, lat, -180.0) == pytest.approx(0.0, abs=1e-6)


@given(points, points)
def test_non_negative_and_bounded(a: tuple[float, float], b: tuple[float, float]) -> None:
    assert 0.0 <= haversine_m(*a, *b) <= HALF_CIRCUMFERENCE_M * (1 + 1e-15)


@given(points, points, points)
def test_triangle_inequality(
    a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]
) -> None:
    ab, bc, ac = haversine_m(*a, *b), haversine_m(*b, *c), haversine_m(*a, *c)
    assert ac <= ab + bc + dist_tol(ab) + dist_tol(bc) + dist_tol(ac)


@given(points, st.lists(points, min_size=1, max_size=20))
def test_numpy_matches_scalar(p: tuple[float, float], others: list[tuple[float, float]]) -> None:
    lats_arr = np.array([q[0] for q in others], dtype=np.float64)
    lons_arr = np.array([q[1] for q in others], dtype=np.float64)
    got = haversine_m_np(p[0], p[1], lats_arr, lons_arr)
    assert got.dtype == np.float64 and got.shape == (len(others),)
    for q, d in zip(others, got, strict=True):
        want = haversine_m(p[0], p[1], q[0], q[1])
        assert abs(float(d) - want) <= dist_tol(want), (p, q)


def test_numpy_matches_scalar_near_antipode() -> None:
    # Regression: haversine_m squared with float ** 2 (libm pow, not always correctly rounded)
    # and haversine_m_np with an exact square, so near-antipodal pairs differed by ~2 mm, e.g.
    # this pair (found by a random search), 1.9 mm apart before the fix.
    rng = np.random.default_rng(1)
    lat1 = rng.uniform(-90, 90, 2000)
    lon1 = rng.uniform(-180, 180, 2000)
    lat2 = np.clip(-lat1 + rng.normal(0, 1e-3, 2000), -90, 90)
    lon2 = (lon1 + 360.0 + rng.normal(0, 1e-3, 2000)) % 360.0 - 180.0
    for la1, lo1, la2, lo2 in zip(lat1, lon1, lat2, lon2, strict=True):
        want = haversine_m(float(la1), float(lo1), float(la2), float(lo2))
        got = haversine_m_np(float(la1), float(lo1), np.array([la2]), np.array([lo2]))[0]
        assert abs(float(got) - want) <= 1e-6 + EARTH_RADIUS_M * 8 * EPS / max(
            math.cos(want / EARTH_RADIUS_M / 2), 1e-3
        )


# --- destination ------------------------------------------------------------------------------


@given(points, bearings, distances)
def test_destination_lands_at_distance(p: tuple[float, float], bearing: float, d: float) -> None:
    lat, lon = destination(p[0], p[1], bearing, d)
    assert -90.0 <= lat <= 90.0
    assert -180.0 <= lon < 180.0
    assert haversine_m(p[0], p[1], lat, lon) == pytest.approx(d, abs=1e-5 + dist_tol(d))


@given(
    st.floats(89.0, 90.0) | st.floats(-90.0, -89.0),
    lons,
    bearings,
    st.floats(0.0, 1_000.0),
)
def test_destination_accurate_near_poles(lat: float, lon: float, bearing: float, d: float) -> None:
    # Regression: lat2 came from asin(z), which is ill-conditioned at z = +-1, so moving
    # 5.7 cm from 89.99999865600905, -49.20331433329099 on bearing 322.49 landed 9 cm off.
    lat2, lon2 = destination(lat, lon, bearing, d)
    assert haversine_m(lat, lon, lat2, lon2) == pytest.approx(d, abs=1e-6)


def test_destination_pole_regression_example() -> None:
    lat, lon = destination(89.99999865600905, -49.20331433329099, 322.4905258590564, 0.0574)
    assert haversine_m(89.99999865600905, -49.20331433329099, lat, lon) == pytest.approx(
        0.0574, abs=1e-6
    )


@given(points, bearings)
def test_destination_zero_distance_is_identity(p: tuple[float, float], bearing: float) -> None:
    lat, lon = destination(p[0], p[1], bearing, 0.0)
    assert haversine_m(p[0], p[1], lat, lon) == pytest.approx(0.0, abs=1e-6)


@given(st.floats(-89.0, 89.0), lons, st.floats(0.0, 1_000_000.0))
def test_destination_cardinal_bearings(lat: float, lon: float, d: float) -> None:
    d_deg = math.degrees(d / EARTH_RADIUS_M)
    north_lat, north_lon = destination(lat, lon, 0.0, d)
    if lat + d_deg < 90.0:  # not over the pole
        assert north_lat == pytest.approx(lat + d_deg, abs=1e-9)
        assert haversine_m(north_lat, north_lon, north_lat, lon) == pytest.approx(0.0, abs=1e-6)
    east_lat, _ = destination(lat, lon, 90.0, d)
    # Due east on a great circle bends towards the equator, never away from it.
    assert abs(east_lat) <= abs(lat) + 1e-12
