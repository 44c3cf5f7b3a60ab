"""The two caches the book names: geohash cell -> business ids, business id -> business.

Both sit on a `KV` (in-process by default, Redis when configured, shared by every process).
A cell entry also carries the coordinates, packed as three little arrays, because the exact
distance filter needs them and a second lookup per id would cost more than the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from scalelab.geo import encode
from scalelab.proximity.index import Candidates
from scalelab.proximity.model import Business
from scalelab.storage.kv import KV

_COUNT = struct.Struct("<I")


def pack_cell(c: Candidates) -> bytes:
    """count (u32) | ids (i64 x n) | lats (f64 x n) | lons (f64 x n), little-endian."""
    n = int(c.ids.size)
    return b"".join(
        (
            _COUNT.pack(n),
            c.ids.astype("<i8").tobytes(),
            c.lats.astype("<f8").tobytes(),
            c.lons.astype("<f8").tobytes(),
        )
    )


def unpack_cell(data: bytes) -> Candidates:
    (n,) = _COUNT.unpack_from(data)
    if len(data) != _COUNT.size + 24 * n:
        raise ValueError(f"cell entry of {len(data)} bytes does not hold {n} points")
    off = _COUNT.size
    ids = np.frombuffer(data, "<i8", n, off).astype(np.int64)
    lats = np.frombuffer(data, "<f8", n, off + 8 * n).astype(np.float64)
    lons = np.frombuffer(data, "<f8", n, off + 16 * n).astype(np.float64)
    return Candidates(ids, lats, lons)


class ProximityCache:
    def __init__(self, kv: KV, ttl: float | None) -> None:
        self.kv = kv
        self.ttl = ttl

    # geohash cell -> points
    def get_cells(self, cells: Sequence[str]) -> list[Candidates | None]:
        raw = self.kv.get_many([f"cell:{c}" for c in cells])
        return [None if r is None else unpack_cell(r) for r in raw]

    def put_cell(self, cell: str, points: Candidates) -> None:
        self.kv.set(f"cell:{cell}", pack_cell(points), self.ttl)

    def invalidate_point(self, lat: float, lon: float, max_precision: int) -> None:
        """Drop every cached cell that contains the point, at every precision."""
        gh = encode(lat, lon, max_precision)
        self.kv.delete(*(f"cell:{gh[:p]}" for p in range(1, max_precision + 1)))

    # business id -> business, in its public JSON form: the read path never re-validates
    def get_businesses(self, ids: Sequence[int]) -> list[dict[str, Any] | None]:
        raw = self.kv.get_many([f"biz:{i}" for i in ids])
        return [None if r is None else orjson.loads(r) for r in raw]

    def put_businesses(self, items: Sequence[Business]) -> list[dict[str, Any]]:
        public = [b.public() for b in items]
        if public:
            self.kv.set_many({f"biz:{d['id']}": orjson.dumps(d) for d in public}, self.ttl)
        return public

    def invalidate_business(self, business_id: int) -> None:
        self.kv.delete(f"biz:{business_id}")
