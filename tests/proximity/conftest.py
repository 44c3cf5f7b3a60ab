from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from scalelab.proximity.server import create_app
from scalelab.proximity.settings import ProximitySettings
from scalelab.web import ServerThread

API_KEY = "test-key"


class Api:
    """An httpx client on a real proximity server, with the owners' key for writes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)
        self.auth = {"X-API-Key": API_KEY}

    def create(self, **body: Any) -> dict[str, Any]:
        r = self.http.post("/v1/businesses", json=body, headers=self.auth)
        assert r.status_code == 201, r.text
        data: dict[str, Any] = r.json()
        return data

    def search(self, **params: Any) -> httpx.Response:
        return self.http.get("/v1/search/nearby", params=params)


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    servers: list[ServerThread] = []
    clients: list[Api] = []

    def start(clock: Callable[[], datetime] = lambda: datetime.now(UTC), **overrides: Any) -> Api:
        settings = ProximitySettings.from_env({}, data=tmp_path, api_key=API_KEY, **overrides)
        server = ServerThread(create_app(settings, clock=clock)).start()
        servers.append(server)
        api = Api(server.url)
        clients.append(api)
        return api

    yield start
    for api in clients:
        api.http.close()
    for server in servers:
        server.stop()
