"""Geohash: encode, decode, neighbours and box coverings, on integer cell indexes.

A geohash of precision p has 5p bits, interleaved longitude-first: ceil(5p/2) longitude bits and
floor(5p/2) latitude bits. Working on the integer (lat_index, lon_index) pair makes neighbours
exact: longitude wraps modulo the column count (so cells east of 180 degrees are found west of
-180), and latitude does not wrap (a cell in the top row has no northern neighbours; circles
reaching a pole are covered with `cover_box` over every longitude instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from scalelab.geo.bbox import Box

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_DECODE = {c: i for i, c in enumerate(BASE32)}
MAX_PRECISION = 12


@dataclass(frozen=True, slots=True)
class GeohashCell:
    """A decoded cell: its bounds and centre."""

    geohash: str
    box: Box

    @property
    def lat(self) -> float:
        return (self.box.south + self.box.north) / 2

    @property
    def lon(self) -> float:
        return (self.box.west + self.box.east) / 2


def _bits(precision: int) -> tuple[int, int]:
    if not 1 <= precision <= MAX_PRECISION:
        raise ValueError(f"geohash precision must be 1..{MAX_PRECISION}, got {precision}")
    total = 5 * precision
    return (total + 1) // 2, total // 2  # lon bits, lat bits


def cell_size_deg(precision: int) -> tuple[float, float]:
    """(height in degrees of latitude, width in degrees of longitude) of one cell."""
    lon_bits, lat_bits = _bits(precision)
    return 180.0 / (1 << lat_bits), 360.0 / (1 << lon_bits)


def _indexes(lat: float, lon: float, precision: int) -> tuple[int, int]:
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise ValueError(f"coordinates out of range: ({lat}, {lon})")
    lon_bits, lat_bits = _bits(precision)
    rows = 1 << lat_bits
    cols = 1 << lon_bits
    lat_i = min(int((lat + 90.0) / 180.0 * rows), rows - 1)
    lon_i = min(int((lon + 180.0) / 360.0 * cols), cols - 1)
    # The sum and division round, and can lift a point lying just below a cell edge (e.g. lat
    # -1e-17) into the cell above. Cell edges are exact floats, so compare against them and step
    # back: the result is then the bisection answer and decode(encode(p)).box contains p.
    if lat_i > 0 and -90.0 + lat_i * (180.0 / rows) > lat:
        lat_i -= 1
    if lon_i > 0 and -180.0 + lon_i * (360.0 / cols) > lon:
        lon_i -= 1
    return lat_i, lon_i


def _from_indexes(lat_i: int, lon_i: int, precision: int) -> str:
    lon_bits, lat_bits = _bits(precision)
    value = 0
    lon_left, lat_left = lon_bits, lat_bits
    for bit in range(5 * precision):
        if bit % 2 == 0:
            lon_left -= 1
            value = (value << 1) | ((lon_i >> lon_left) & 1)
        else:
            lat_left -= 1
            value = (value << 1) | ((lat_i >> lat_left) & 1)
    chars = []
    for shift in range(5 * (precision - 1), -1, -5):
        chars.append(BASE32[(value >> shift) & 31])
    return "".join(chars)


def _to_indexes(geohash: str) -> tuple[int, int, int]:
    precision = len(geohash)
    _bits(precision)
    value = 0
    for c in geohash:
        try:
            value = (value << 5) | _DECODE[c]
        except KeyError:
            raise ValueError(f"invalid geohash character {c!r} in {geohash!r}") from None
    lat_i = lon_i = 0
    for bit in range(5 * precision - 1, -1, -1):
        b = (value >> bit) & 1
        if (5 * precision - 1 - bit) % 2 == 0:
            lon_i = (lon_i << 1) | b
        else:
            lat_i = (lat_i << 1) | b
    return lat_i, lon_i, precision


def encode(lat: float, lon: float, precision: int = 9) -> str:
    lat_i, lon_i = _indexes(lat, lon, precision)
    return _from_indexes(lat_i, lon_i, precision)


def decode(geohash: str) -> GeohashCell:
    lat_i, lon_i, precision = _to_indexes(geohash)
    h, w = cell_size_deg(precision)
    south = -90.0 + lat_i * h
    west = -180.0 + lon_i * w
    return GeohashCell(geohash, Box(south, west, south + h, west + w))


def neighbours(geohash: str) -> dict[str, str]:
    """The up to 8 adjacent cells keyed by compass direction (n, ne, e, se, s, sw, w, nw)."""
    lat_i, lon_i, precision = _to_indexes(geohash)
    lon_bits, lat_bits = _bits(precision)
    rows, cols = 1 << lat_bits, 1 << lon_bits
    out: dict[str, str] = {}
    for name, dlat, dlon in (
        ("n", 1, 0),
        ("ne", 1, 1),
        ("e", 0, 1),
        ("se", -1, 1),
        ("s", -1, 0),
        ("sw", -1, -1),
        ("w", 0, -1),
        ("nw", 1, -1),
    ):
        r = lat_i + dlat
        if not 0 <= r < rows:
            continue
        out[name] = _from_indexes(r, (lon_i + dlon) % cols, precision)
    return out


def _box_range(box: Box, precision: int) -> tuple[int, int, int, int]:
    s_i, w_i = _indexes(max(box.south, -90.0), max(box.west, -180.0), precision)
    n_i, e_i = _indexes(min(box.north, 90.0), min(box.east, 180.0), precision)
    return s_i, w_i, n_i, e_i


def cover_box_size(box: Box, precision: int) -> int:
    """How many cells `cover_box` would return, without building them."""
    s_i, w_i, n_i, e_i = _box_range(box, precision)
    return (n_i - s_i + 1) * (e_i - w_i + 1)


def cover_box(box: Box, precision: int) -> list[str]:
    """Every cell of the given precision that intersects the (non-wrapping) box."""
    s_i, w_i, n_i, e_i = _box_range(box, precision)
    return [
        _from_indexes(r, c, precision) for r in range(s_i, n_i + 1) for c in range(w_i, e_i + 1)
    ]
