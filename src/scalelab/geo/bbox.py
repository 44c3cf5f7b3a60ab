"""Latitude/longitude boxes and the bounding boxes of a circle on the sphere.

A `Box` never wraps: west <= east always. A circle that crosses the antimeridian is described by
two boxes, and one that contains a pole by a box spanning every longitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scalelab.geo.distance import EARTH_RADIUS_M


@dataclass(frozen=True, slots=True)
class Box:
    south: float
    west: float
    north: float
    east: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.south <= lat <= self.north and self.west <= lon <= self.east

    def intersects(self, other: Box) -> bool:
        return not (
            other.west > self.east
            or other.east < self.west
            or other.south > self.north
            or other.north < self.south
        )

    def within(self, other: Box) -> bool:
        """True when self lies entirely inside other."""
        return (
            other.south <= self.south
            and self.north <= other.north
            and other.west <= self.west
            and self.east <= other.east
        )


def circle_boxes(lat: float, lon: float, radius_m: float) -> list[Box]:
    """Boxes whose union contains every point within radius_m of (lat, lon).

    The longitude half-width is the exact extent of a spherical cap, asin(sin d / cos lat), not
    the flat-Earth approximation, so the boxes are tight and never miss a point.
    """
    d = radius_m / EARTH_RADIUS_M
    # A hair of slack, as for dlon below: lat -/+ d_deg rounds, and without it a point on the
    # circle due north or south that haversine puts within the radius can fall 1 ulp outside.
    d_deg = math.degrees(d) * (1 + 1e-9) + 1e-12
    south = lat - d_deg
    north = lat + d_deg
    if north >= 90.0 or south <= -90.0 or d >= math.pi / 2:
        return [Box(max(south, -90.0), -180.0, min(north, 90.0), 180.0)]
    ratio = math.sin(d) / math.cos(math.radians(lat))
    if ratio >= 1.0:
        return [Box(south, -180.0, north, 180.0)]
    # A hair of slack absorbs floating-point error at the box's edge.
    dlon = math.degrees(math.asin(ratio)) * (1 + 1e-9) + 1e-12
    west = lon - dlon
    east = lon + dlon
    if west < -180.0:
        return [Box(south, west + 360.0, north, 180.0), Box(south, -180.0, north, east)]
    if east > 180.0:
        return [Box(south, west, north, 180.0), Box(south, -180.0, north, east - 360.0)]
    return [Box(south, west, north, east)]
