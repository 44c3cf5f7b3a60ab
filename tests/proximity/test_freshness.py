"""Writes reach search results within the configured delay, with no restart (the book's LBS
reads replicas; here a second server shares the database and applies the change feed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import Api


def wait_for(predicate: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")


def ids_near(api: Api, lat: float, lon: float) -> set[int]:
    return {
        b["id"] for b in api.search(latitude=lat, longitude=lon, radius=1000).json()["businesses"]
    }


@pytest.mark.parametrize("index", ["geohash", "quadtree", "h3"])
def test_new_business_becomes_searchable_on_another_server(
    start_api: Callable[..., Any], index: str
) -> None:
    writer: Api = start_api(index=index)
    reader: Api = start_api(index=index, index_refresh_seconds=0.3)
    before = ids_near(reader, 35.6762, 139.6503)
    created = writer.create(name="sushi", latitude=35.6762, longitude=139.6503)
    assert created["id"] not in before
    wait_for(lambda: created["id"] in ids_near(reader, 35.6762, 139.6503), timeout=10)
    # a move and a delete travel the same way
    r = writer.http.put(
        f"/v1/businesses/{created['id']}",
        headers=writer.auth,
        json={"name": "sushi", "latitude": 34.6937, "longitude": 135.5023},
    )
    assert r.status_code == 200
    wait_for(lambda: created["id"] in ids_near(reader, 34.6937, 135.5023), timeout=10)
    wait_for(lambda: created["id"] not in ids_near(reader, 35.6762, 139.6503), timeout=10)
    writer.http.delete(f"/v1/businesses/{created['id']}", headers=writer.auth)
    wait_for(lambda: created["id"] not in ids_near(reader, 34.6937, 135.5023), timeout=10)


def test_writer_sees_its_own_writes_at_once(start_api: Callable[..., Any]) -> None:
    api: Api = start_api(index="quadtree")
    created = api.create(name="now", latitude=1.0, longitude=1.0)
    assert created["id"] in ids_near(api, 1.0, 1.0)


def test_shared_redis_cache_is_invalidated_on_writes(
    start_api: Callable[..., Any], redis_url: str
) -> None:
    import uuid

    db = f"/tmp/scalelab-{uuid.uuid4().hex}.db"
    url = f"{redis_url}"
    # Two servers share the database and one Redis cache; the long refresh interval means
    # only cache invalidation on write can make the change visible to the reader.
    writer: Api = start_api(index="geohash", cache_url=url, database_url=f"sqlite:///{db}")
    reader: Api = start_api(index="geohash", cache_url=url, database_url=f"sqlite:///{db}")
    first = writer.create(name="a", latitude=-1.2921, longitude=36.8219)
    assert first["id"] in ids_near(reader, -1.2921, 36.8219)  # fills the reader's cache
    second = writer.create(name="b", latitude=-1.2921, longitude=36.8220)
    assert {first["id"], second["id"]} <= ids_near(reader, -1.2921, 36.8219)
    writer.http.put(
        f"/v1/businesses/{first['id']}",
        headers=writer.auth,
        json={"name": "renamed", "latitude": -1.2921, "longitude": 36.8219},
    )
    assert reader.http.get(f"/v1/businesses/{first['id']}").json()["name"] == "renamed"
