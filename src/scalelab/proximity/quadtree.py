"""Quadtree geo index (System Design Interview vol. 2, ch. 1): an in-memory tree over lat/lon.

The root is the whole world (-90..90, -180..180); a leaf holding more than `leaf_capacity`
points splits into four equal quadrants, so dense cities get deep, small leaves and oceans stay
shallow. A query visits the nodes whose box meets the circle's bounding boxes
(`circle_boxes`) and returns every point of the leaves it reaches.

Node boxes are dyadic: a node at depth d covers 180/2**d degrees of latitude by 360/2**d of
longitude. A point's path from the root is given by its coordinates quantised to 32 bits each,
so the bulk build sorts points by their interleaved (Morton) code and cuts that sorted array into
nodes with binary searches instead of inserting a million points one by one. Depth 32 cells are
a few millimetres wide: a leaf at that depth keeps any number of points, which stops the
splitting when more than `leaf_capacity` points share one coordinate.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from scalelab.geo import circle_boxes
from scalelab.proximity.index import Candidates, FloatArray, IdArray, IndexStats
from scalelab.proximity.locations import LocatedIndex, PointLocations

U64Array = npt.NDArray[np.uint64]

MAX_DEPTH = 32
_QUANT = 1 << MAX_DEPTH
# Scales from degrees to the 32-bit grid. The scalar path (`_quantise_one`) and the vectorised
# one (`_morton`) use the same float64 operations in the same order, so they agree exactly.
_LAT_SCALE = _QUANT / 180.0
_LON_SCALE = _QUANT / 360.0
# Query boxes are widened by this much (about 0.1 mm). It absorbs rounding in the quantisation
# near a node's edge and in `circle_boxes`, whose latitude bounds have no slack: a point exactly
# on the circle due north or south can lie one ulp outside its box yet within the radius.
_EPS_DEG = 1e-9

_EMPTY_IDS: IdArray = np.empty(0, np.int64)
_EMPTY_F: FloatArray = np.empty(0, np.float64)


def _spread(x: U64Array) -> U64Array:
    """Put the 32 low bits of x on the even bit positions of a 64-bit word."""
    x = (x | (x << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x | (x << np.uint64(2))) & np.uint64(0x3333333333333333)
    x = (x | (x << np.uint64(1))) & np.uint64(0x5555555555555555)
    return x


def _morton(lats: FloatArray, lons: FloatArray) -> U64Array:
    """Interleaved code: bit pair k from the top is the quadrant (2*north + east) at depth k."""
    qlat = np.clip(np.floor((lats + 90.0) * _LAT_SCALE), 0, _QUANT - 1).astype(np.uint64)
    qlon = np.clip(np.floor((lons + 180.0) * _LON_SCALE), 0, _QUANT - 1).astype(np.uint64)
    code: U64Array = (_spread(qlat) << np.uint64(1)) | _spread(qlon)
    return code


def _quantise_one(lat: float, lon: float) -> tuple[int, int]:
    qlat = min(max(math.floor((lat + 90.0) * _LAT_SCALE), 0), _QUANT - 1)
    qlon = min(max(math.floor((lon + 180.0) * _LON_SCALE), 0), _QUANT - 1)
    return qlat, qlon


class _Node:
    """A quadrant. A leaf (children is None) owns small numpy columns of its points, so a query
    hands out whole leaves with one concatenate and no per-point Python work."""

    __slots__ = ("south", "west", "north", "east", "depth", "children", "ids", "lats", "lons")

    def __init__(self, south: float, west: float, north: float, east: float, depth: int) -> None:
        self.south = south
        self.west = west
        self.north = north
        self.east = east
        self.depth = depth
        self.children: list[_Node] | None = None
        self.ids: IdArray = _EMPTY_IDS
        self.lats: FloatArray = _EMPTY_F
        self.lons: FloatArray = _EMPTY_F

    def child_for(self, qlat: int, qlon: int) -> _Node:
        assert self.children is not None
        shift = MAX_DEPTH - 1 - self.depth
        return self.children[(((qlat >> shift) & 1) << 1) | ((qlon >> shift) & 1)]

    def make_children(self) -> list[_Node]:
        mid_lat = (self.south + self.north) / 2  # exact: dyadic fractions of 180 and 360
        mid_lon = (self.west + self.east) / 2
        d = self.depth + 1
        return [
            _Node(self.south, self.west, mid_lat, mid_lon, d),  # 0: south-west
            _Node(self.south, mid_lon, mid_lat, self.east, d),  # 1: south-east
            _Node(mid_lat, self.west, self.north, mid_lon, d),  # 2: north-west
            _Node(mid_lat, mid_lon, self.north, self.east, d),  # 3: north-east
        ]


class QuadtreeIndex(LocatedIndex):
    """`GeoIndex` over a region quadtree; candidates never repeat a point.

    Removing a point merges a parent whose leaves fall to half capacity.

    Not thread-safe on its own: callers serialise updates and queries (the service holds a lock).
    """

    kind = "quadtree"
    in_memory = True

    def __init__(self, leaf_capacity: int = 100) -> None:
        if leaf_capacity < 1:
            raise ValueError("leaf_capacity must be at least 1")
        self.leaf_capacity = leaf_capacity
        self._root = _Node(-90.0, -180.0, 90.0, 180.0, 0)
        self._locs = PointLocations()
        self._build_seconds = 0.0

    # -- building -----------------------------------------------------------------------------

    def _build(self, ids: IdArray, lats: FloatArray, lons: FloatArray) -> None:
        """Bulk build: sort by Morton code, then cut the sorted columns into nodes top-down."""
        codes = _morton(lats, lons)
        order = np.argsort(codes, kind="stable")
        root = _Node(-90.0, -180.0, 90.0, 180.0, 0)
        self._fill(root, codes[order], ids[order], lats[order], lons[order])
        self._root = root

    def _fill(
        self, node: _Node, codes: U64Array, ids: IdArray, lats: FloatArray, lons: FloatArray
    ) -> None:
        """Make node the subtree of these points, which are sorted by code and lie inside it."""
        n = ids.size
        if n <= self.leaf_capacity or node.depth >= MAX_DEPTH:
            node.children = None
            node.ids, node.lats, node.lons = ids.copy(), lats.copy(), lons.copy()
            return
        node.ids, node.lats, node.lons = _EMPTY_IDS, _EMPTY_F, _EMPTY_F
        node.children = node.make_children()
        shift = 2 * (MAX_DEPTH - 1 - node.depth)
        # Every code here shares the node's prefix; the child number is the next bit pair.
        prefix = (int(codes[0]) >> (shift + 2)) << (shift + 2)
        bounds = [prefix | (c << shift) for c in (1, 2, 3)]
        cuts = [0, *np.searchsorted(codes, np.array(bounds, np.uint64)).tolist(), n]
        for c, child in enumerate(node.children):
            lo, hi = cuts[c], cuts[c + 1]
            self._fill(child, codes[lo:hi], ids[lo:hi], lats[lo:hi], lons[lo:hi])

    # -- updates (upsert and remove: LocatedIndex) --------------------------------------------

    def _add(self, business_id: int, lat: float, lon: float) -> None:
        qlat, qlon = _quantise_one(lat, lon)
        node = self._root
        while node.children is not None:
            node = node.child_for(qlat, qlon)
        ids = np.append(node.ids, np.int64(business_id))
        lats = np.append(node.lats, lat)
        lons = np.append(node.lons, lon)
        if ids.size > self.leaf_capacity and node.depth < MAX_DEPTH:
            codes = _morton(lats, lons)
            order = np.argsort(codes, kind="stable")
            self._fill(node, codes[order], ids[order], lats[order], lons[order])
        else:
            node.ids, node.lats, node.lons = ids, lats, lons

    def _discard(self, business_id: int, lat: float, lon: float) -> None:
        qlat, qlon = _quantise_one(lat, lon)
        path = [self._root]
        while path[-1].children is not None:
            path.append(path[-1].child_for(qlat, qlon))
        leaf = path[-1]
        keep = leaf.ids != business_id
        if keep.all():  # never expected: both paths quantise identically
            raise RuntimeError(f"business {business_id} not found in its quadtree leaf")
        leaf.ids, leaf.lats, leaf.lons = leaf.ids[keep], leaf.lats[keep], leaf.lons[keep]
        # Merge upwards while a parent's children are all leaves holding at most half a leaf:
        # the hysteresis keeps an insert/remove pair at the boundary from splitting every time.
        for parent in reversed(path[:-1]):
            kids = parent.children
            assert kids is not None
            if any(k.children is not None for k in kids):
                break
            if sum(k.ids.size for k in kids) > self.leaf_capacity // 2:
                break
            parent.ids = np.concatenate([k.ids for k in kids])
            parent.lats = np.concatenate([k.lats for k in kids])
            parent.lons = np.concatenate([k.lons for k in kids])
            parent.children = None

    # -- queries ------------------------------------------------------------------------------

    def candidates(self, lat: float, lon: float, radius_m: float) -> Candidates:
        """Points of every leaf whose box meets a (slightly widened) bounding box of the circle."""
        boxes = [
            (b.south - _EPS_DEG, b.west - _EPS_DEG, b.north + _EPS_DEG, b.east + _EPS_DEG)
            for b in circle_boxes(lat, lon, radius_m)
        ]
        id_parts: list[IdArray] = []
        lat_parts: list[FloatArray] = []
        lon_parts: list[FloatArray] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            for s, w, n, e in boxes:
                if node.south <= n and node.north >= s and node.west <= e and node.east >= w:
                    break
            else:
                continue
            if node.children is None:
                if node.ids.size:
                    id_parts.append(node.ids)
                    lat_parts.append(node.lats)
                    lon_parts.append(node.lons)
            else:
                stack.extend(node.children)
        if not id_parts:
            return Candidates.empty()
        return Candidates(
            np.concatenate(id_parts), np.concatenate(lat_parts), np.concatenate(lon_parts)
        )

    # -- reporting ----------------------------------------------------------------------------

    def _nodes(self) -> Iterator[_Node]:
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            if node.children is not None:
                stack.extend(node.children)

    def stats(self) -> IndexStats:
        """memory_bytes is sys.getsizeof summed over every node, its children list and its numpy
        columns (which own their data), plus the id -> location table. It leaves out the
        interpreter, numpy's code and allocator slack, so it is a floor, not the process RSS."""
        leaves = depth = 0
        memory = self._locs.memory_bytes()
        for node in self._nodes():
            memory += sys.getsizeof(node)
            if node.children is None:
                leaves += 1
                depth = max(depth, node.depth)
                if node.ids.size:
                    memory += sum(sys.getsizeof(a) for a in (node.ids, node.lats, node.lons))
            else:
                memory += sys.getsizeof(node.children)
        return IndexStats(
            kind=self.kind,
            size=len(self._locs),
            build_seconds=self._build_seconds,
            memory_bytes=memory,
            extra={"leaves": float(leaves), "depth": float(depth)},
        )
