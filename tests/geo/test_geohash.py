"""Geohash encode/decode/neighbours/cover_box against brute-force oracles.

The main oracle is the textbook bisection encoder below: it halves the interval bit by bit and
compares with each midpoint (all midpoints are exact floats), so it is exact by construction.
"""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.geo import BASE32, Box, cell_size_deg, cover_box, decode, encode, neighbours

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)
# Mostly arbitrary, sometimes exactly on the poles, the antimeridian and the cell edges that
# floating-point rounding likes to get wrong.
edge_lats = st.sampled_from([-90.0, 90.0, 0.0, -0.0, -1e-17, 1e-17, 45.0, -45.0, -5e-324])
edge_lons = st.sampled_from([-180.0, 180.0, 0.0, -0.0, -1e-15, 1e-15, 90.0, -90.0, -5e-324])
any_lats = lats | edge_lats
any_lons = lons | edge_lons
precisions = st.integers(1, 12)

OPPOSITE = {"n": "s", "ne": "sw", "e": "w", "se": "nw", "s": "n", "sw": "ne", "w": "e", "nw": "se"}
STEP = {
    "n": (1, 0),
    "ne": (1, 1),
    "e": (0, 1),
    "se": (-1, 1),
    "s": (-1, 0),
    "sw": (-1, -1),
    "w": (0, -1),
    "nw": (1, -1),
}


def bisect_encode(lat: float, lon: float, precision: int) -> str:
    """Reference encoder: interleaved bisection, longitude first, upper half on ties."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    value = 0
    for bit in range(5 * precision):
        if bit % 2 == 0:
            mid = (lon_lo + lon_hi) / 2
            upper = lon >= mid
            lon_lo, lon_hi = (mid, lon_hi) if upper else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            upper = lat >= mid
            lat_lo, lat_hi = (mid, lat_hi) if upper else (lat_lo, mid)
        value = (value << 1) | int(upper)
    return "".join(BASE32[(value >> s) & 31] for s in range(5 * (precision - 1), -1, -5))


def wrap_lon(lon: float) -> float:
    if lon > 180.0:
        return lon - 360.0
    if lon < -180.0:
        return lon + 360.0
    return lon


# --- encode / decode --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        # Wikipedia, "Geohash": the worked example.
        (57.64911, 10.40744, "u4pruydqqvj"),
        # redis.io/commands/geohash, the Sicily example: GEOHASH returns sqc8b49rny0 (Palermo)
        # and sqdtr74hyu0 (Catania); Redis stores 52 bits, so only the first 10 chars are exact.
        (38.115556, 13.361389, "sqc8b49rny"),
        (37.502669, 15.087269, "sqdtr74hyu"),
        # Alibaba Cloud, "Redis GEO" article (developer.aliyun.com/article/62844): Beijing.
        (39.92324, 116.3906, "wx4g0ec1"),
        # Corners of the world and the origin, from the bit layout (all 0s / all 1s).
        (-90.0, -180.0, "000000000000"),
        (90.0, 180.0, "zzzzzzzzzzzz"),
        (0.0, 0.0, "s00000000000"),
    ],
)
def test_reference_encodings(lat: float, lon: float, expected: str) -> None:
    assert encode(lat, lon, len(expected)) == expected
    assert decode(expected).box.contains(lat, lon)


def test_reference_decoding() -> None:
    # Wikipedia, "Geohash": ezs42 decodes to 42.605, -5.603 (the centre, rounded).
    cell = decode("ezs42")
    assert cell.lat == pytest.approx(42.605, abs=5e-4)
    assert cell.lon == pytest.approx(-5.603, abs=5e-4)
    assert cell.geohash == "ezs42"


@given(any_lats, any_lons, precisions)
def test_encode_matches_bisection(lat: float, lon: float, precision: int) -> None:
    assert encode(lat, lon, precision) == bisect_encode(lat, lon, precision)


@given(any_lats, any_lons, precisions)
def test_decoded_box_contains_point(lat: float, lon: float, precision: int) -> None:
    gh = encode(lat, lon, precision)
    assert len(gh) == precision and set(gh) <= set(BASE32)
    cell = decode(gh)
    assert cell.geohash == gh
    assert cell.box.contains(lat, lon), (gh, cell.box)
    assert cell.box.contains(cell.lat, cell.lon)
    assert encode(cell.lat, cell.lon, precision) == gh


@pytest.mark.parametrize("lat", [-90.0, 90.0, 0.0, -1e-17])
@pytest.mark.parametrize("lon", [-180.0, 180.0, 0.0, -1e-15])
@pytest.mark.parametrize("precision", [1, 5, 12])
def test_decoded_box_contains_extreme_points(lat: float, lon: float, precision: int) -> None:
    # Regression: encode(-1e-17, 10.0, 5) gave the cell with south edge 0.0, which does not
    # contain the point; (lat + 90) rounded up to exactly 90.
    assert decode(encode(lat, lon, precision)).box.contains(lat, lon)


@given(precisions, st.data())
def test_cell_size_matches_box(precision: int, data: st.DataObject) -> None:
    h, w = cell_size_deg(precision)
    lon_bits = math.ceil(5 * precision / 2)
    assert (h, w) == (180.0 / 2 ** (5 * precision - lon_bits), 360.0 / 2**lon_bits)
    gh = data.draw(st.text(alphabet=BASE32, min_size=precision, max_size=precision))
    box = decode(gh).box
    assert box.north - box.south == h
    assert box.east - box.west == w
    # Cells tile the world exactly: edges are integer multiples of the size.
    assert ((box.south + 90.0) / h).is_integer()
    assert ((box.west + 180.0) / w).is_integer()


def test_cell_size_reference() -> None:
    # Precision 1: 4 rows x 8 columns; precision 5 is the usual ~4.9 km x 4.9 km cell.
    assert cell_size_deg(1) == (45.0, 45.0)
    assert cell_size_deg(2) == (5.625, 11.25)
    assert cell_size_deg(5) == (180 / 2**12, 360 / 2**13)
    assert cell_size_deg(12) == (180 / 2**30, 360 / 2**30)


@given(any_lats, any_lons, st.integers(1, 11))
def test_prefix_property(lat: float, lon: float, precision: int) -> None:
    longer = encode(lat, lon, precision + 1)
    assert longer.startswith(encode(lat, lon, precision))
    assert decode(longer).box.within(decode(longer[:-1]).box)


# --- invalid input ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a", "u4pa", "i", "l", "o", "u4p!", " u4p", "u" * 13, "é"])
def test_decode_rejects_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        decode(bad)
    with pytest.raises(ValueError):
        neighbours(bad)


@given(st.text(min_size=1, max_size=12).filter(lambda s: not set(s) <= set(BASE32)))
def test_decode_rejects_any_bad_character(bad: str) -> None:
    with pytest.raises(ValueError):
        decode(bad)


@pytest.mark.parametrize("precision", [0, 13, -1, 100])
def test_bad_precision(precision: int) -> None:
    with pytest.raises(ValueError):
        encode(0.0, 0.0, precision)
    with pytest.raises(ValueError):
        cell_size_deg(precision)
    with pytest.raises(ValueError):
        cover_box(Box(0.0, 0.0, 1.0, 1.0), precision)


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (90.0000001, 0.0),
        (-90.0000001, 0.0),
        (0.0, 180.0000001),
        (0.0, -180.0000001),
        (math.nan, 0.0),
        (0.0, math.nan),
        (math.inf, 0.0),
        (0.0, -math.inf),
    ],
)
def test_encode_rejects_out_of_range(lat: float, lon: float) -> None:
    with pytest.raises(ValueError):
        encode(lat, lon, 5)


# --- neighbours -------------------------------------------------------------------------------

cells = st.builds(encode, any_lats, any_lons, precisions)


@given(cells)
def test_neighbours_match_sampled_points(gh: str) -> None:
    """Oracle: encode a point just outside each edge/corner (a quarter cell out, longitude
    wrapped) and the centre of the cell one step away; both must be the neighbour."""
    box = decode(gh).box
    h, w = cell_size_deg(len(gh))
    centre_lat, centre_lon = (box.south + box.north) / 2, (box.west + box.east) / 2
    expected: dict[str, str] = {}
    for name, (dlat, dlon) in STEP.items():
        edge_lat = {1: box.north, 0: centre_lat, -1: box.south}[dlat] + dlat * h / 4
        edge_lon = {1: box.east, 0: centre_lon, -1: box.west}[dlon] + dlon * w / 4
        if not -90.0 <= edge_lat <= 90.0:
            continue  # beyond a pole: no neighbour
        got = encode(edge_lat, wrap_lon(edge_lon), len(gh))
        assert got == encode(centre_lat + dlat * h, wrap_lon(centre_lon + dlon * w), len(gh))
        expected[name] = got
    assert neighbours(gh) == expected


@given(cells)
def test_neighbours_touch_the_cell(gh: str) -> None:
    box = decode(gh).box
    h, w = cell_size_deg(len(gh))
    for name, nb in neighbours(gh).items():
        dlat, dlon = STEP[name]
        nb_box = decode(nb).box
        assert nb != gh
        # Exact edges: the neighbour is one whole cell away (longitude modulo 360).
        assert nb_box.south == box.south + dlat * h
        assert (nb_box.west - (box.west + dlon * w)) % 360.0 == 0.0
        # ...so, after shifting by the right multiple of 360, the boxes share exactly an edge
        # (a corner for diagonals) and do not overlap.
        shifted = [
            Box(nb_box.south, nb_box.west + k, nb_box.north, nb_box.east + k)
            for k in (-360.0, 0.0, 360.0)
        ]
        touching = [b for b in shifted if b.intersects(box)]
        assert len(touching) >= 1
        for b in touching:
            lat_overlap = min(b.north, box.north) - max(b.south, box.south)
            lon_overlap = min(b.east, box.east) - max(b.west, box.west)
            assert lat_overlap == 0.0 or lon_overlap == 0.0, (name, nb)


@given(cells)
def test_neighbours_symmetric(gh: str) -> None:
    for name, nb in neighbours(gh).items():
        assert neighbours(nb)[OPPOSITE[name]] == gh


@given(cells)
def test_neighbours_at_poles(gh: str) -> None:
    box = decode(gh).box
    got = neighbours(gh)
    if box.north == 90.0:
        assert not {"n", "ne", "nw"} & got.keys()
    if box.south == -90.0:
        assert not {"s", "se", "sw"} & got.keys()
    expected_count = 8 - 3 * (box.north == 90.0) - 3 * (box.south == -90.0)
    assert len(got) == expected_count
    assert len(set(got.values())) == expected_count  # all distinct


@given(st.floats(-89.0, 89.0), precisions)
def test_neighbours_across_antimeridian(lat: float, precision: int) -> None:
    east_edge = encode(lat, 180.0, precision)
    west_edge = encode(lat, -180.0, precision)
    assert decode(east_edge).box.east == 180.0
    assert decode(west_edge).box.west == -180.0
    assert neighbours(east_edge)["e"] == west_edge
    assert neighbours(west_edge)["w"] == east_edge
    for diagonal in ("ne", "se"):
        if diagonal in neighbours(east_edge):  # absent in the top / bottom row
            assert decode(neighbours(east_edge)[diagonal]).box.west == -180.0
    for diagonal in ("nw", "sw"):
        if diagonal in neighbours(west_edge):
            assert decode(neighbours(west_edge)[diagonal]).box.east == 180.0


def test_neighbours_reference() -> None:
    # Hand-checked on the precision-1 grid (4 rows x 8 columns): "s" is the cell at
    # lat 0..45, lon 0..45.
    assert neighbours("s") == {
        "n": "u",
        "ne": "v",
        "e": "t",
        "se": "m",
        "s": "k",
        "sw": "7",
        "w": "e",
        "nw": "g",
    }
    # Top-right corner of the world: no northern neighbours; east wraps to lon -180.
    assert neighbours("z") == {"e": "b", "se": "8", "s": "x", "sw": "w", "w": "y"}


# --- cover_box --------------------------------------------------------------------------------


@functools.cache
def all_cells(precision: int) -> list[tuple[str, Box]]:
    lon_bits = math.ceil(5 * precision / 2)
    out = []
    for value in range(1 << (5 * precision)):
        gh = "".join(BASE32[(value >> s) & 31] for s in range(5 * (precision - 1), -1, -5))
        out.append((gh, decode(gh).box))
    assert len(out) == (1 << lon_bits) * (1 << (5 * precision - lon_bits))
    return out


def needed(cell: Box, box: Box) -> bool:
    """Does some point of the closed box encode to this cell? Cells are half-open
    [south, north) x [west, east), except that the top row and last column include 90 / 180."""
    lat_ok = cell.south <= box.north and (box.south < cell.north or cell.north == 90.0)
    lon_ok = cell.west <= box.east and (box.west < cell.east or cell.east == 180.0)
    return lat_ok and lon_ok


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    s, n = sorted((draw(any_lats), draw(any_lats)))
    w, e = sorted((draw(any_lons), draw(any_lons)))
    return Box(s, w, n, e)


def max_precision(box: Box, limit: int = 3000) -> int:
    """The finest precision whose covering has at most about `limit` cells."""
    best = 1
    for p in range(1, 13):
        h, w = cell_size_deg(p)
        if ((box.north - box.south) / h + 2) * ((box.east - box.west) / w + 2) <= limit:
            best = p
    return best


@given(boxes(), st.data())
def test_cover_box_contains_every_point(box: Box, data: st.DataObject) -> None:
    precision = data.draw(st.integers(1, max_precision(box)), label="precision")
    covering = cover_box(box, precision)
    assert len(covering) == len(set(covering))
    cover_set = set(covering)
    fractions = st.floats(0.0, 1.0)
    samples = [(lat, lon) for lat in (box.south, box.north) for lon in (box.west, box.east)]
    for _ in range(20):
        u, v = data.draw(fractions), data.draw(fractions)
        lat = min(max(box.south + u * (box.north - box.south), box.south), box.north)
        lon = min(max(box.west + v * (box.east - box.west), box.west), box.east)
        samples.append((lat, lon))
    for lat, lon in samples:
        assert encode(lat, lon, precision) in cover_set, (lat, lon)
    for gh in covering:
        assert len(gh) == precision
        assert decode(gh).box.intersects(box), gh


@given(boxes(), st.integers(1, 3))
def test_cover_box_equals_brute_force(box: Box, precision: int) -> None:
    """Exactly the cells some point of the box encodes to: complete and minimal."""
    expected = {gh for gh, cell in all_cells(precision) if needed(cell, box)}
    assert set(cover_box(box, precision)) == expected


def test_cover_box_degenerate_and_whole_world() -> None:
    assert cover_box(Box(10.0, 20.0, 10.0, 20.0), 7) == [encode(10.0, 20.0, 7)]
    assert sorted(cover_box(Box(-90.0, -180.0, 90.0, 180.0), 1)) == sorted(BASE32)
    assert sorted(cover_box(Box(-90.0, -180.0, 90.0, 180.0), 2)) == sorted(
        gh for gh, _ in all_cells(2)
    )
