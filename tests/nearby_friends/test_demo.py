"""The `--demo`: walkers are real WebSocket clients of a real server, the map page polls their
positions, a restart reuses them, and the console links the map."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from scalelab.console import create_app as create_console
from scalelab.nearby_friends import demo, protocol, schema
from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.server import create_app, drain_hook
from scalelab.nearby_friends.settings import NearbyFriendsSettings
from scalelab.nearby_friends.users import UserStore
from scalelab.storage import sql
from scalelab.systems import lookup
from scalelab.web import ServerThread
from tests.nearby_friends.conftest import HOME

Positions = dict[str, Any]


def wait_for(
    get: Callable[[], Positions], ok: Callable[[Positions], bool], timeout: float
) -> Positions:
    deadline = time.monotonic() + timeout
    while True:
        body = get()
        if ok(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {json.dumps(body)[:2000]}")
        time.sleep(0.2)


def located(body: Positions) -> dict[int, tuple[float, float]]:
    return {w["id"]: (w["lat"], w["lng"]) for w in body["walkers"] if w["lat"] is not None}


@pytest.fixture
def demo_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setattr(demo, "STEP_SECONDS", 1.0)  # every second: within the rate limit
    settings = NearbyFriendsSettings.from_env({}, data=tmp_path, demo_walkers=6)
    app = create_app(settings, demo_data=True)
    server = ServerThread(app, before_shutdown=drain_hook(app, 0.5))
    app.state.base_url = server.url  # what serve() does: the walkers connect here
    with server:
        yield server


def test_walkers_walk_and_their_friends_see_them(demo_server: ServerThread, tmp_path: Path) -> None:
    http = httpx.Client(base_url=demo_server.url, timeout=10)

    def get() -> Positions:
        r = http.get("/v1/demo/positions")
        assert r.status_code == 200, r.text
        return dict(r.json())

    roster = json.loads((tmp_path / "nearby_friends" / demo.ROSTER_FILE).read_text())["walkers"]
    ids = [w["id"] for w in roster]
    assert len(ids) == 6 and len(set(ids)) == 6

    first = wait_for(get, lambda b: len(located(b)) == 6, timeout=8)
    assert first["demo"] is True and [w["id"] for w in first["walkers"]] == ids
    start = located(first)
    for w in first["walkers"]:  # one circle of six: each befriends the other five
        assert sorted(w["friends"]) == sorted(set(ids) - {w["id"]})
        lat, lng = start[w["id"]]
        assert math.dist((lat, lng), (demo.CITY[1], demo.CITY[2])) < 0.2  # ~10 km: Helsinki
    # Every walker moves, and the sockets were told who is near (the lines on the map).
    moved = wait_for(
        get,
        lambda b: (
            all(p != start[i] for i, p in located(b).items())
            and all(w["connected"] and w["nearby"] for w in b["walkers"])
        ),
        timeout=8,
    )
    assert moved["now"] >= max(w["updated_at"] for w in moved["walkers"]) - 1
    assert moved["stats"]["updates_sent"] >= 12

    # The normal protocol: log in as one walker with its saved token; its friends' walks are
    # pushed as friend_location frames, and never a stranger's.
    me = roster[0]
    ws_url = demo_server.url.replace("http://", "ws://") + f"/v1/ws?token={me['token']}"
    with connect(ws_url, open_timeout=10) as ws:
        welcome = json.loads(ws.recv(timeout=10))
        assert welcome["type"] == "welcome" and welcome["user_id"] == me["id"]
        ws.send(json.dumps({"type": "location", "lat": HOME[0], "lng": HOME[1]}))
        seen: dict[int, list[tuple[float, float]]] = {}
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and sum(len(v) >= 2 for v in seen.values()) < 3:
            frame = json.loads(ws.recv(timeout=6))
            if frame["type"] == "friend_location":
                assert frame["distance_m"] < welcome["radius_m"]
                seen.setdefault(frame["user_id"], []).append((frame["lat"], frame["lng"]))
        assert set(seen) <= set(ids) - {me["id"]}, seen
        walking = [u for u, points in seen.items() if len(set(points)) >= 2]
        assert len(walking) >= 3, seen
    http.close()


def test_map_page_is_self_contained_html(demo_server: ServerThread) -> None:
    r = httpx.get(f"{demo_server.url}/demo/map", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<canvas" in page and "../v1/demo/positions" in page and "km" in page
    assert "No map tiles" in page
    # No external requests: no script, style, image or fetch from another origin.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "https://" not in page and "http://" not in page


def in_process(app: Any, *paths: str) -> list[httpx.Response]:
    """GET each path through httpx.ASGITransport (no lifespan runs)."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(main())


def test_without_demo_the_map_says_how_to_start_it(tmp_path: Path) -> None:
    settings = NearbyFriendsSettings.from_env({}, data=tmp_path)
    positions, page = in_process(create_app(settings), "/v1/demo/positions", "/demo/map")
    assert positions.json()["demo"] is False and positions.json()["walkers"] == []
    assert page.status_code == 200 and "--demo" in page.text


def test_a_restart_reuses_the_walkers_and_a_new_database_gets_new_ones(tmp_path: Path) -> None:
    path = tmp_path / demo.ROSTER_FILE

    def store(name: str) -> UserStore:
        engine = sql.create_engine(sql.sqlite_url(tmp_path / f"{name}.db"))
        schema.create_schema(engine)
        return UserStore(engine)

    users = store("a")
    first = demo.load_or_register(users, path, 10)
    assert [w.group for w in first] == [0] * 8 + [1] * 2
    assert demo.load_or_register(users, path, 10) == first  # same ids and tokens
    again = demo.load_or_register(UserStore(users.engine), path, 12)  # empty token cache
    assert again[:10] == first and len({w.id for w in again}) == 12
    assert [w.name for w in again[10:]] == ["walker-10", "walker-11"]
    assert demo.load_or_register(users, path, 4) == again[:4]  # fewer: the file keeps all
    assert len(json.loads(path.read_text())["walkers"]) == 12
    # The friend graph: a full circle of eight, plus one friend in another circle each.
    for k, w in enumerate(again):
        friends = set(users.friends(w.id))
        circle = {v.id for v in again if v.group == w.group} - {w.id}
        assert circle <= friends, k
        assert friends - circle, k  # at least one friend elsewhere
    other = demo.load_or_register(store("b"), path, 3)  # a new database: new walkers
    assert {w.token for w in other}.isdisjoint({w.token for w in again})
    saved = json.loads(path.read_text())["walkers"]
    assert [(w["id"], w["token"]) for w in saved] == [(w.id, w.token) for w in other]
    assert path.stat().st_mode & 0o077 == 0  # bearer tokens: owner-only


def test_a_stroll_walks_at_walking_speed_and_stays_near_its_start() -> None:
    rng = random.Random(7)
    home = demo.START_POINTS[0][1:]
    stroll = demo.Stroll.around(*home, rng)
    far = 0.0
    for _ in range(2000):  # about 17 hours of 30 s steps
        before = (stroll.lat, stroll.lng)
        stroll.step(30.0, rng)
        north, east = demo.metres_between(before, (stroll.lat, stroll.lng))
        assert math.hypot(north, east) == pytest.approx(stroll.speed_mps * 30, rel=1e-3)
        far = max(far, math.hypot(*demo.metres_between(home, (stroll.lat, stroll.lng))))
    assert 1000 < far < demo.HOME_RANGE_M + 1500


def test_a_walker_keeps_what_its_socket_was_told() -> None:
    info = demo.WalkerInfo(1, "walker-0", "t", 0)
    rng = random.Random(1)
    walker = demo.Walker(info, demo.Stroll.around(*HOME, rng), rng, 1.0)
    loc = Location(2, *HOME, 1.0)
    assert walker.on_frame(protocol.welcome(1, 8000.0, [(loc, 12.0)], True, False)) is None
    assert walker.nearby == {2: 12.0}
    walker.on_frame(protocol.friend_location(Location(3, *HOME, 2.0), 40.0))
    walker.on_frame(protocol.friend_left_range(2, 9000.0))
    assert walker.nearby == {3: 40.0}
    walker.on_frame(protocol.friend_offline(3))
    assert walker.nearby == {}
    walker.on_frame("not json")  # logged, not fatal
    bad = {"v": 1, "type": "friend_location", "lat": 0, "lng": 0, "updated_at": 0}
    assert walker.on_frame(json.dumps({**bad, "user_id": "x", "distance_m": 1})) is None
    assert walker.nearby == {}
    assert walker.on_frame(protocol.reconnect(1500, "draining")) == 1.5


def test_ws_endpoint_targets_loopback_for_a_wildcard_bind() -> None:
    assert demo.ws_endpoint("http://127.0.0.1:8082") == "ws://127.0.0.1:8082/v1/ws"
    assert demo.ws_endpoint("http://0.0.0.0:8082") == "ws://127.0.0.1:8082/v1/ws"
    assert demo.ws_endpoint("http://[::]:8082/") == "ws://[::1]:8082/v1/ws"


def test_the_console_links_the_live_map() -> None:
    url = "http://127.0.0.1:9"  # nothing listens: the row says down, the link is there anyway
    (page,) = in_process(create_console({"nearby_friends": url}), "/")
    assert page.status_code == 200
    assert f"<a href='{url}/demo/map'>live map</a>" in page.text


@pytest.mark.skipif(
    not lookup("nearby_friends").implemented, reason="`scalelab serve` refuses it until issue 7"
)
def test_serve_demo_starts_walkers_and_stops_cleanly(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    env = {
        "SCALELAB_NEARBY_FRIENDS_DEMO_WALKERS": "4",
        "SCALELAB_NEARBY_FRIENDS_DRAIN_SECONDS": "1",
    }
    server = spawn_server("nearby_friends", env, "--demo", "--data", str(tmp_path))
    assert f"demo map: {server.url}/demo/map" in "".join(server.output)

    def get() -> Positions:
        return dict(httpx.get(f"{server.url}/v1/demo/positions", timeout=10).json())

    body = wait_for(get, lambda b: len(located(b)) == 4, timeout=10)
    roster = json.loads((tmp_path / "nearby_friends" / demo.ROSTER_FILE).read_text())["walkers"]
    assert [w["id"] for w in body["walkers"]] == [w["id"] for w in roster]
    started = time.monotonic()
    server.stop()  # SIGTERM: the walkers leave, the hub drains, the process exits
    output = "".join(server.output)
    assert server.proc.returncode == 0, output
    assert time.monotonic() - started < 8
    assert "Traceback" not in output and "ERROR" not in output, output
