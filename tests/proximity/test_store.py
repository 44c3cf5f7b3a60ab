"""The store contract, run against SQLite and PostgreSQL alike."""

import pytest
from sqlalchemy import Engine

from scalelab.geo import encode
from scalelab.proximity.errors import BusinessNotFound
from scalelab.proximity.model import BusinessIn
from scalelab.proximity.store import GEOHASH_PRECISION, BusinessStore


def biz(name: str, lat: float, lon: float, **kw: object) -> BusinessIn:
    return BusinessIn.model_validate({"name": name, "latitude": lat, "longitude": lon, **kw})


@pytest.fixture
def store(sql_engine: Engine) -> BusinessStore:
    s = BusinessStore(sql_engine, clock=lambda: 1_700_000_000.0)
    s.create_schema()
    return s


def test_crud_round_trip(store: BusinessStore) -> None:
    hours = {"mon": [("09:00", "17:00")]}
    created = store.create(biz("Cafe", 48.8566, 2.3522, category="Cafe", hours=hours))
    assert created.id >= 1 and created.category == "cafe"
    got = store.get(created.id)
    assert got == created and got.hours == {"mon": [("09:00", "17:00")]}
    old, new = store.replace(created.id, biz("Cafe 2", 48.86, 2.36))
    assert old.name == "Cafe" and new.name == "Cafe 2" and new.id == created.id
    assert store.get(created.id).latitude == 48.86
    store.delete(created.id)
    with pytest.raises(BusinessNotFound):
        store.get(created.id)
    with pytest.raises(BusinessNotFound):
        store.delete(created.id)
    with pytest.raises(BusinessNotFound):
        store.replace(created.id, biz("x", 0, 0))


def test_geohash_rows_follow_writes(store: BusinessStore) -> None:
    a = store.create(biz("a", 37.7749, -122.4194))
    b = store.create(biz("b", 40.7128, -74.0060))
    assert sorted(store.geohash_rows()) == sorted(
        [
            (encode(37.7749, -122.4194, GEOHASH_PRECISION), a.id),
            (encode(40.7128, -74.0060, GEOHASH_PRECISION), b.id),
        ]
    )
    store.replace(a.id, biz("a", -33.8688, 151.2093))
    store.delete(b.id)
    assert store.geohash_rows() == [(encode(-33.8688, 151.2093, GEOHASH_PRECISION), a.id)]


def test_cell_points_reads_prefixes(store: BusinessStore) -> None:
    paris = store.create(biz("p", 48.8566, 2.3522))
    store.create(biz("far", -33.8688, 151.2093))
    gh = encode(48.8566, 2.3522, GEOHASH_PRECISION)
    for precision in range(1, GEOHASH_PRECISION + 1):
        cand = store.cell_points(gh[:precision])
        assert cand.ids.tolist() == [paris.id]
        assert cand.lats.tolist() == [48.8566] and cand.lons.tolist() == [2.3522]
    assert store.cell_points("zzzz").ids.size == 0


def test_change_feed_records_old_and_new_positions(store: BusinessStore) -> None:
    assert store.last_change() == 0
    a = store.create(biz("a", 1.0, 2.0))
    store.replace(a.id, biz("a", 3.0, 4.0))
    store.delete(a.id)
    changes = store.changes_since(0)
    assert [(c.op, c.old, c.new) for c in changes] == [
        ("upsert", None, (1.0, 2.0)),
        ("upsert", (1.0, 2.0), (3.0, 4.0)),
        ("delete", (3.0, 4.0), None),
    ]
    assert store.changes_since(changes[1].seq) == changes[2:]
    assert store.last_change() == changes[-1].seq


def test_bulk_create_and_points(store: BusinessStore) -> None:
    first = store.create(biz("first", 0.0, 0.0))
    n = store.bulk_create((biz(f"b{i}", i / 20, -i / 10) for i in range(1, 1201)), batch=500)
    assert n == 1200 and store.count() == 1201
    points = sorted(store.points())
    assert points[0] == (first.id, 0.0, 0.0)
    assert len({p[0] for p in points}) == 1201
    many = store.get_many([p[0] for p in points[:700]])
    assert len(many) == 700
    assert len(store.geohash_rows()) == 1201
