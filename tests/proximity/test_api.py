"""The proximity REST API through a real server and httpx, for every index kind."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from scalelab.geo import destination
from scalelab.proximity.index import brute_force

from .conftest import API_KEY, Api

INDEX_KINDS = ["geohash", "quadtree", "h3"]


@pytest.fixture(params=INDEX_KINDS)
def api(request: pytest.FixtureRequest, start_api: Callable[..., Api]) -> Api:
    return start_api(index=request.param)


def seed(
    api: Api, n: int, centre: tuple[float, float], spread_m: float, seed: int = 7
) -> list[tuple[int, float, float]]:
    rng = random.Random(seed)
    points = []
    for i in range(n):
        lat, lon = destination(*centre, rng.uniform(0, 360), rng.uniform(0, spread_m))
        b = api.create(
            name=f"b{i}", latitude=lat, longitude=lon, category=rng.choice(["cafe", "bar"])
        )
        points.append((b["id"], b["latitude"], b["longitude"]))
    return points


def test_crud_and_auth(api: Api) -> None:
    body = {
        "name": "Le Cafe",
        "latitude": 48.8566,
        "longitude": 2.3522,
        "category": "cafe",
        "timezone": "Europe/Paris",
        "hours": {"mon": [["08:00", "18:00"]]},
    }
    assert api.http.post("/v1/businesses", json=body).status_code == 401
    r = api.http.post("/v1/businesses", json=body, headers={"X-API-Key": "wrong"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.http.post("/v1/businesses", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 201
    created = r.json()
    assert r.headers["location"] == f"/v1/businesses/{created['id']}"
    assert api.http.get(f"/v1/businesses/{created['id']}").json() == created
    r = api.http.put(
        f"/v1/businesses/{created['id']}", json={**body, "name": "Le Bistro"}, headers=api.auth
    )
    assert r.status_code == 200 and r.json()["name"] == "Le Bistro"
    assert api.http.get(f"/v1/businesses/{created['id']}").json()["name"] == "Le Bistro"
    assert api.http.delete(f"/v1/businesses/{created['id']}").status_code == 401
    assert api.http.delete(f"/v1/businesses/{created['id']}", headers=api.auth).status_code == 204
    r = api.http.get(f"/v1/businesses/{created['id']}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "business_not_found"
    assert api.http.delete(f"/v1/businesses/{created['id']}", headers=api.auth).status_code == 404


@pytest.mark.parametrize(
    "params,field",
    [
        ({"latitude": 91, "longitude": 0}, "latitude"),
        ({"latitude": 0, "longitude": -200}, "longitude"),
        ({"latitude": "north", "longitude": 0}, "latitude"),
        ({"longitude": 0}, "latitude"),
        ({"latitude": 0, "longitude": 0, "radius": 20001}, "radius"),
        ({"latitude": 0, "longitude": 0, "radius": -5}, "radius"),
        ({"latitude": 0, "longitude": 0, "limit": 0}, "limit"),
        ({"latitude": "nan", "longitude": 0}, "latitude"),
    ],
)
def test_bad_search_parameters_name_the_field(
    start_api: Callable[..., Api], params: dict[str, Any], field: str
) -> None:
    api = start_api()
    r = api.search(**params)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error" and field in err["message"]


def test_bad_bodies_and_ids(start_api: Callable[..., Api]) -> None:
    api = start_api()
    for body in (
        {"name": "x", "latitude": 100, "longitude": 0},
        {"latitude": 1, "longitude": 1},
        {"name": "x", "latitude": 1, "longitude": 1, "timezone": "Nowhere/City"},
    ):
        r = api.http.post("/v1/businesses", json=body, headers=api.auth)
        assert r.status_code == 422 and r.json()["error"]["fields"], r.text
    r = api.http.post("/v1/businesses", content=b"{not json", headers=api.auth)
    assert r.status_code == 422
    assert api.http.get("/v1/businesses/abc").status_code == 422
    assert api.http.get("/v1/businesses/0").status_code == 422
    assert api.http.get("/v1/businesses/999999").status_code == 404
    assert api.http.get("/healthz").json()["status"] == "ok"  # still serving


def test_search_equals_brute_force_sorted_with_distances(api: Api) -> None:
    centre = (60.1699, 24.9384)
    points = seed(api, 120, centre, 8000)
    for radius in (500, 2000, 5000, 20000):
        r = api.search(latitude=centre[0], longitude=centre[1], radius=radius, limit=100)
        assert r.status_code == 200
        body = r.json()
        expected = brute_force(points, *centre, radius)
        assert body["total"] == len(expected)
        got = [(b["id"], b["distance_m"]) for b in body["businesses"]]
        assert got == [(h.business_id, round(h.distance_m, 2)) for h in expected[:100]]


def test_default_radius_is_5km(start_api: Callable[..., Api]) -> None:
    api = start_api()
    near = api.create(name="near", latitude=0.0, longitude=0.04)  # ~4.4 km
    api.create(name="far", latitude=0.0, longitude=0.05)  # ~5.6 km
    r = api.search(latitude=0, longitude=0)
    assert [b["id"] for b in r.json()["businesses"]] == [near["id"]]


def test_cursor_pages_cover_every_result_once(api: Api) -> None:
    centre = (-33.8688, 151.2093)
    points = seed(api, 57, centre, 3000, seed=3)
    expected = [h.business_id for h in brute_force(points, *centre, 3000)]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {
            "latitude": centre[0],
            "longitude": centre[1],
            "radius": 3000,
            "limit": 10,
        }
        if cursor:
            params["cursor"] = cursor
        body = api.search(**params).json()
        seen += [b["id"] for b in body["businesses"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and pages == -(-len(expected) // 10)


def test_cursor_must_match_its_search(start_api: Callable[..., Api]) -> None:
    api = start_api()
    for i in range(3):
        api.create(name=f"b{i}", latitude=10.0, longitude=10.0 + i * 0.001)
    body = api.search(latitude=10, longitude=10, radius=1000, limit=1).json()
    assert body["next_cursor"]
    r = api.search(latitude=10, longitude=10, radius=2000, limit=1, cursor=body["next_cursor"])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
    r = api.search(latitude=10, longitude=10, radius=1000, cursor="!!garbage")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"


def test_filters_after_geo_query(start_api: Callable[..., Api]) -> None:
    # Monday 2026-11-23 12:00 UTC = 13:00 in Paris.
    api = start_api(clock=lambda: datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    common = {"latitude": 48.8566, "longitude": 2.3522, "timezone": "Europe/Paris"}
    open_cafe = api.create(
        name="open cafe", category="cafe", hours={"mon": [["08:00", "18:00"]]}, **common
    )
    api.create(name="closed cafe", category="cafe", hours={"mon": [["18:00", "23:00"]]}, **common)
    open_bar = api.create(
        name="open bar", category="bar", hours={"mon": [["12:00", "02:00"]]}, **common
    )
    q = {"latitude": 48.8566, "longitude": 2.3522, "radius": 100}
    ids = lambda **p: sorted(b["id"] for b in api.search(**q, **p).json()["businesses"])  # noqa: E731
    assert ids(category="CAFE") == sorted([open_cafe["id"], ids(category="cafe")[1]])
    assert ids(open_now="true") == sorted([open_cafe["id"], open_bar["id"]])
    assert ids(open_now="true", category="bar") == [open_bar["id"]]
    assert api.search(**q, category="cafe").json()["total"] is None


def test_metrics_count_requests_per_route(start_api: Callable[..., Api]) -> None:
    api = start_api()
    api.search(latitude=0, longitude=0)
    api.http.get("/v1/businesses/12345")
    text = api.http.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/v1/search/nearby",status="200"} 1.0' in text
    assert 'route="/v1/businesses/{business_id}",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("kind", ["quadtree", "h3"])
def test_health_reports_in_memory_index_build(start_api: Callable[..., Api], kind: str) -> None:
    first = start_api(index=kind)
    for i in range(5):
        first.create(name=f"b{i}", latitude=1.0, longitude=1.0 + i / 100)
    again = start_api(index=kind)  # builds its index from the database at start-up
    health = again.http.get("/healthz").json()
    assert health["index"] == kind and health["size"] == 5
    assert health["build_seconds"] >= 0 and health["memory_bytes"] > 0
