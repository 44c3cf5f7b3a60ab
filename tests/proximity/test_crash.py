"""An acknowledged write survives kill -9 of the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def test_created_business_survives_kill_9(spawn_server: Callable[..., Any], tmp_path: Path) -> None:
    env = {"SCALELAB_DATA": str(tmp_path), "SCALELAB_PROXIMITY_API_KEY": "k"}
    server = spawn_server("proximity", env)
    created = []
    with httpx.Client(base_url=server.url, headers={"X-API-Key": "k"}) as http:
        for i in range(20):
            r = http.post(
                "/v1/businesses",
                json={"name": f"b{i}", "latitude": 1.0 + i / 1000, "longitude": 2.0},
            )
            assert r.status_code == 201
            created.append(r.json())
    server.kill()
    again = spawn_server("proximity", env)
    with httpx.Client(base_url=again.url) as http:
        for b in created:
            assert http.get(f"/v1/businesses/{b['id']}").json() == b
        found = http.get(
            "/v1/search/nearby", params={"latitude": 1.01, "longitude": 2.0, "radius": 5000}
        ).json()
        assert found["total"] == 20
