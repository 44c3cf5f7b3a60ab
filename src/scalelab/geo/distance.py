"""Great-circle distance on a spherical Earth.

The mean radius (IUGG, 6,371,008.8 m) is used everywhere so that every index in the project
agrees on what "within the radius" means; results are compared with that one definition.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_M = 6_371_008.8

FloatArray = npt.NDArray[np.float64]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres between two points given in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    # Square by multiplying, as numpy's ** 2 does: float ** 2 goes through libm pow(), which is
    # not always correctly rounded, and near-antipodal distances amplify that last bit to mm.
    sin_dp = math.sin(dp / 2)
    sin_dl = math.sin(dl / 2)
    a = sin_dp * sin_dp + math.cos(p1) * math.cos(p2) * (sin_dl * sin_dl)
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def haversine_m_np(lat: float, lon: float, lats: FloatArray, lons: FloatArray) -> FloatArray:
    """Distances in metres from one point to many, vectorised; the same formula as haversine_m."""
    p1 = math.radians(lat)
    p2 = np.radians(lats)
    dp = p2 - p1
    dl = np.radians(lons - lon)
    a = np.sin(dp / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    result: FloatArray = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
    return result


def destination(
    lat: float, lon: float, bearing_deg: float, distance_m: float
) -> tuple[float, float]:
    """The point reached from (lat, lon) after distance_m along the initial bearing."""
    d = distance_m / EARTH_RADIUS_M
    p1 = math.radians(lat)
    l1 = math.radians(lon)
    b = math.radians(bearing_deg)
    # The destination as a unit vector in the start meridian's frame: z is sin(lat2), (x, y) its
    # horizontal part. atan2 of these keeps nanometre accuracy everywhere, where asin(z) loses
    # up to ~10 cm near the poles (asin is ill-conditioned at +-1).
    z = math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b)
    x = math.cos(p1) * math.cos(d) - math.sin(p1) * math.sin(d) * math.cos(b)
    y = math.sin(b) * math.sin(d)
    p2 = math.atan2(z, math.hypot(x, y))
    l2 = l1 + math.atan2(y, x)
    lon2 = (math.degrees(l2) + 540.0) % 360.0 - 180.0
    return math.degrees(p2), lon2
