"""Geometry shared by proximity, nearby friends and maps: distances, geohash, bounding boxes.

Everything here is pure and works in degrees and metres on a spherical Earth. Pure functions
only: no I/O, no clocks.
"""

from scalelab.geo.bbox import Box, circle_boxes
from scalelab.geo.distance import EARTH_RADIUS_M, destination, haversine_m, haversine_m_np
from scalelab.geo.geohash import (
    BASE32,
    GeohashCell,
    cell_size_deg,
    cover_box,
    cover_box_size,
    decode,
    encode,
    neighbours,
)

__all__ = [
    "BASE32",
    "EARTH_RADIUS_M",
    "Box",
    "GeohashCell",
    "cell_size_deg",
    "circle_boxes",
    "cover_box",
    "cover_box_size",
    "decode",
    "destination",
    "encode",
    "haversine_m",
    "haversine_m_np",
    "neighbours",
]
