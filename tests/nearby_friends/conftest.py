"""Real nearby-friends servers on free loopback ports, REST helpers, and WebSocket clients
(the `websockets` library's sync client, as a test would use a real mobile client's stand-in)."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from scalelab.nearby_friends.server import create_app, drain_hook
from scalelab.nearby_friends.settings import NearbyFriendsSettings
from scalelab.web import ServerThread

# Helsinki: points about 1 km and 20 km from HOME (5 miles = 8,046.72 m).
HOME = (60.1699, 24.9384)
NEAR = (60.1789, 24.9384)  # ~1.0 km north
FAR = (60.3499, 24.9384)  # ~20 km north


class Client:
    """One user's socket: send JSON, collect frames until one matches."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def location(self, point: tuple[float, float]) -> None:
        self.send(type="location", lat=point[0], lng=point[1])

    def recv(self, timeout: float = 10) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def until(self, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        """The next frame that matches; the frames skipped on the way stay in .frames."""
        while True:
            frame = self.recv(timeout)
            if match(frame):
                return frame

    def close(self) -> None:
        self.ws.close()


def of(kind: str, user_id: int | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == kind and (user_id is None or f.get("user_id") == user_id)


class NearbyApi:
    """REST calls and socket connections to one server."""

    _names = itertools.count()

    def __init__(self, server: ServerThread, app: Any) -> None:
        self.server = server
        self.url = server.url
        self.app = app
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.clients: list[Client] = []
        self._sockets = contextlib.ExitStack()

    def user(self, name: str | None = None) -> tuple[int, str]:
        r = self.http.post("/v1/users", json={"name": name or f"user{next(self._names)}"})
        assert r.status_code == 201, r.text
        body = r.json()
        return int(body["id"]), str(body["token"])

    def befriend(self, a: tuple[int, str], b: tuple[int, str]) -> None:
        r = self.http.post(
            f"/v1/users/{a[0]}/friends", json={"friend_id": b[0]}, headers=auth(a[1])
        )
        assert r.status_code in (200, 201), r.text

    def connect(self, user: tuple[int, str], base: str | None = None) -> Client:
        ws_url = (base or self.url).replace("http://", "ws://") + f"/v1/ws?token={user[1]}"
        client = Client(self._sockets.enter_context(connect(ws_url, open_timeout=10)))
        self.clients.append(client)
        return client

    def close(self) -> None:
        self._sockets.close()
        self.http.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


StartNearby = Callable[..., NearbyApi]


@pytest.fixture
def start_nearby(tmp_path: Path) -> Iterator[StartNearby]:
    servers: list[ServerThread] = []
    apis: list[NearbyApi] = []
    counter = itertools.count()

    def start(*, clock: Callable[[], float] | None = None, **overrides: Any) -> NearbyApi:
        overrides.setdefault("data", tmp_path / f"data{next(counter)}")
        settings = NearbyFriendsSettings.from_env({}, **overrides)
        app = create_app(settings, **({"clock": clock} if clock else {}))
        server = ServerThread(
            app, before_shutdown=drain_hook(app, 0.5), ws_compression=settings.ws_compression
        ).start()
        servers.append(server)
        api = NearbyApi(server, app)
        apis.append(api)
        return api

    yield start
    for api in apis:
        api.close()
    for server in servers:
        server.stop()
