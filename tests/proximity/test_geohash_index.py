"""The book's geohash index against brute force, through the real SQL table and cache."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scalelab.geo import destination, encode, haversine_m
from scalelab.proximity.cache import ProximityCache, pack_cell, unpack_cell
from scalelab.proximity.geohash_index import GeohashIndex, covering
from scalelab.proximity.index import Candidates, brute_force, search
from scalelab.proximity.model import BusinessIn
from scalelab.proximity.store import BusinessStore
from scalelab.storage import sql
from scalelab.storage.kv import MemoryKV

from .geo_strategies import lats, lons

radii = st.floats(1, 20_000, allow_nan=False)


@given(lats, lons, radii, st.floats(0, 1), st.floats(0, 360))
@settings(max_examples=400, deadline=None)
def test_covering_contains_every_point_in_the_circle(
    lat: float, lon: float, r: float, frac: float, bearing: float
) -> None:
    plat, plon = destination(lat, lon, bearing, r * frac)
    assume(haversine_m(lat, lon, plat, plon) <= r)
    cells = covering(lat, lon, r)
    gh = encode(plat, plon, 8)
    assert any(gh.startswith(c) for c in cells), (cells, gh)


@pytest.mark.parametrize(
    "lat,lon,r,expected_cells",
    [
        (48.85, 2.35, 500, 9),
        (48.85, 2.35, 20_000, 9),
        (0.0, 179.999, 5000, 9),
        (89.99, 0.0, 5000, None),
        (-89.999, 45.0, 20_000, None),
    ],
)
def test_covering_shape(lat: float, lon: float, r: float, expected_cells: int | None) -> None:
    cells = covering(lat, lon, r)
    if expected_cells is not None:
        assert len(cells) == expected_cells and len({len(c) for c in cells}) == 1
    else:  # reaches a pole: every cell of a coarse ring
        assert 9 < len(cells) <= 64


def test_precision_grows_as_radius_shrinks() -> None:
    sizes = [len(covering(40.0, -3.7, r)[0]) for r in (20_000, 5000, 1000, 100, 10)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_cell_packing_round_trips() -> None:
    import numpy as np

    c = Candidates(np.array([1, 2**40]), np.array([1.5, -2.25]), np.array([179.9, -180.0]))
    back = unpack_cell(pack_cell(c))
    assert back.ids.tolist() == c.ids.tolist() and back.lons.tolist() == c.lons.tolist()
    assert unpack_cell(pack_cell(Candidates.empty())).ids.size == 0
    with pytest.raises(ValueError):
        unpack_cell(pack_cell(c)[:-1])


@pytest.fixture
def index(tmp_path: Path) -> Iterator[GeohashIndex]:
    engine = sql.create_engine(sql.sqlite_url(tmp_path / "g.db"))
    store = BusinessStore(engine)
    store.create_schema()
    yield GeohashIndex(store, ProximityCache(MemoryKV(), ttl=None))
    engine.dispose()


points_st = st.lists(
    st.one_of(
        st.tuples(lats, lons),
        st.tuples(st.floats(-1, 1), st.floats(179.9, 180)),
        st.tuples(st.floats(-1, 1), st.floats(-180, -179.9)),
        st.tuples(st.floats(89.8, 90), lons),
        st.tuples(st.floats(48.7, 49.0), st.floats(2.2, 2.5)),
    ),
    min_size=1,
    max_size=60,
)
query_st = st.one_of(
    st.tuples(lats, lons, radii),
    st.tuples(st.floats(-1, 1), st.sampled_from([179.95, -179.95, 180.0, -180.0]), radii),
    st.tuples(st.floats(89.85, 90), lons, radii),
    st.tuples(st.floats(48.7, 49.0), st.floats(2.2, 2.5), radii),
)


@given(points=points_st, queries=st.lists(query_st, min_size=1, max_size=5))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_search_equals_brute_force(
    index: GeohashIndex,
    points: list[tuple[float, float]],
    queries: list[tuple[float, float, float]],
) -> None:
    index.load([])
    store = index.store
    with store.engine.begin() as conn:
        from sqlalchemy import delete

        from scalelab.proximity.store import businesses

        conn.execute(delete(businesses))
    store.bulk_create(BusinessIn(name="p", latitude=a, longitude=o) for a, o in points)
    index.cache.kv.clear_prefix("cell:")
    pts = list(store.points())
    for lat, lon, r in queries:
        assume(not math.isnan(lat))
        assert search(index, lat, lon, r) == brute_force(pts, lat, lon, r)


def test_writes_invalidate_cached_cells(index: GeohashIndex) -> None:
    store = index.store
    a = store.create(BusinessIn(name="a", latitude=51.5, longitude=-0.12))
    assert [h.business_id for h in search(index, 51.5, -0.12, 1000)] == [a.id]  # now cached
    b = store.create(BusinessIn(name="b", latitude=51.5001, longitude=-0.12))
    assert [h.business_id for h in search(index, 51.5, -0.12, 1000)] == [a.id]  # stale cache
    index.upsert(b.id, 51.5001, -0.12)
    assert [h.business_id for h in search(index, 51.5, -0.12, 1000)] == [a.id, b.id]
    store.delete(a.id)
    index.remove(a.id, 51.5, -0.12)
    assert [h.business_id for h in search(index, 51.5, -0.12, 1000)] == [b.id]
