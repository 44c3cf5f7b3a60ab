"""The demo (`--demo`): simulated walkers in friend circles, and a live map of them.

Walkers. `settings.demo_walkers` users, registered once and kept (ids, names, tokens) in
`<data_dir>/demo-walkers.json` so a restart reuses them, are put in friend circles of
`GROUP_SIZE` (everyone befriends the rest of their circle) plus `CROSS_LINKS` random friends in
other circles each. Every circle starts around one of several points in Helsinki (all within
10 km of the centre, some farther apart than the 5-mile radius), and each walker strolls at
walking speed with random turns, drifting back when it wanders too far from its start.

Each walker is a real client of this server: a `websockets` connection to its own `/v1/ws`
with its bearer token, sending a location every `STEP_SECONDS` (the book's 30 s, compressed
tenfold, and the walk with it) and reading what the server pushes. It honours a `reconnect`
frame (a draining server) and reconnects after a drop with jittered exponential backoff.
What its socket was told (welcome, friend_location, left range, offline) is kept as the
walker's view of its nearby friends: the map draws exactly that.

Map. `GET /demo/map` is one static HTML page (`map.html`, no external requests: a canvas with
an equirectangular projection and a km scale bar, no map tiles) polling
`GET /v1/demo/positions` every second: the demo walkers' locations as the location cache holds
them, their friends, and whom each one's socket currently shows as nearby. Both are public and
read-only, and list only demo walkers; without `--demo` the list is empty.

The walkers need the address the server is reachable at, which an ASGI app cannot learn:
`serve()` (or a test) puts it in `app.state.base_url` before the server starts, and the
lifespan's `start()` sets them walking.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse, Response
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from scalelab.nearby_friends import protocol
from scalelab.nearby_friends.errors import NearbyError
from scalelab.nearby_friends.protocol import LocationUpdate, ProtocolError
from scalelab.nearby_friends.settings import NearbyFriendsSettings
from scalelab.nearby_friends.users import UserStore
from scalelab.web import json_response

log = logging.getLogger("scalelab.nearby_friends.demo")

ROSTER_FILE = "demo-walkers.json"
ROSTER_VERSION = 1
GROUP_SIZE = 8  # a friend circle
CROSS_LINKS = 1  # random friends each walker has in other circles
SEED = 2  # the friend graph and the walks: the same on every start

STEP_SECONDS = 3.0  # real seconds between a walker's location updates (the book: 30 s)
TIME_FACTOR = 10.0  # simulated seconds per real second, so the walk keeps pace with the updates
WALK_SPEED_MPS = (1.1, 1.7)  # metres per simulated second, drawn per walker
TURN_SIGMA_RAD = 0.35  # random turn per step
HOME_RANGE_M = 2500.0  # beyond this from its start point a walker turns back
START_SPREAD_M = 600.0
EARTH_M = 6_371_008.8
MAX_BACKOFF_S = 10.0
FRIENDS_REFRESH_S = 5.0  # how long /v1/demo/positions reuses the friend lists it read

CITY = ("Helsinki", 60.1699, 24.9384)
START_POINTS: tuple[tuple[str, float, float], ...] = (
    ("Kamppi", 60.1690, 24.9320),
    ("Kallio", 60.1841, 24.9497),
    ("Otaniemi", 60.1867, 24.8270),
    ("Herttoniemi", 60.1950, 25.0300),
    ("Toolo", 60.1830, 24.9180),
    ("Malmi", 60.2510, 25.0110),
    ("Lauttasaari", 60.1590, 24.8790),
    ("Pasila", 60.1986, 24.9330),
    ("Kalasatama", 60.1873, 24.9777),
    ("Munkkiniemi", 60.1980, 24.8760),
)


# -- the roster: who the walkers are, kept across restarts ----------------------------------


@dataclass(frozen=True)
class WalkerInfo:
    id: int
    name: str
    token: str
    group: int


def group_of(index: int) -> int:
    return index // GROUP_SIZE


def friend_pairs(ids: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """Everyone in a circle befriends the rest of it, plus CROSS_LINKS friends elsewhere."""
    pairs: set[tuple[int, int]] = set()
    for i, a in enumerate(ids):
        for j in range(i + 1, len(ids)):
            if group_of(j) == group_of(i):
                pairs.add((a, ids[j]))
        others = [j for j in range(len(ids)) if group_of(j) != group_of(i)]
        for j in rng.sample(others, min(CROSS_LINKS, len(others))):
            pairs.add((min(a, ids[j]), max(a, ids[j])))
    return sorted(pairs)


def _read_roster(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("demo: ignoring unreadable %s: %s", path, exc)
        return []
    walkers = data.get("walkers") if isinstance(data, dict) else None
    return [w for w in walkers if isinstance(w, dict)] if isinstance(walkers, list) else []


def _still_valid(users: UserStore, saved: list[dict[str, Any]]) -> bool:
    """Whether every saved walker's token still names that walker (the database may be new)."""
    for w in saved:
        try:
            if users.authenticate(str(w["token"])) != int(w["id"]):
                return False
        except (KeyError, TypeError, ValueError, NearbyError):
            return False
    return True


def _write_roster(path: Path, walkers: list[WalkerInfo]) -> None:
    body = {
        "version": ROSTER_VERSION,
        "note": "the --demo walkers; delete this file to register new ones",
        "walkers": [{"id": w.id, "name": w.name, "token": w.token} for w in walkers],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.chmod(0o600)  # bearer tokens
    tmp.replace(path)


def load_or_register(users: UserStore, path: Path, n: int) -> list[WalkerInfo]:
    """The n walkers: those saved in `path` if their tokens still work, plus new ones; their
    friendships (re-)asserted. Blocking: run it in a thread."""
    saved = _read_roster(path)[:n]
    if not _still_valid(users, saved):
        log.info("demo: the saved walkers are not in this database; registering new ones")
        saved = []
    entries = [(int(w["id"]), str(w["name"]), str(w["token"])) for w in saved]
    if not entries:
        entries = [(i, f"walker-{k}", t) for k, (i, t) in enumerate(users.bulk_create(n, "walker"))]
    for k in range(len(entries), n):
        user_id, token = users.register(f"walker-{k}")
        entries.append((user_id, f"walker-{k}", token))
    walkers = [WalkerInfo(i, name, t, group_of(k)) for k, (i, name, t) in enumerate(entries)]
    tokens = [w.token for w in walkers]
    if [w.get("token") for w in _read_roster(path)][: len(tokens)] != tokens:
        _write_roster(path, walkers)  # new walkers (fewer than saved: the file keeps them all)
    users.bulk_befriend(friend_pairs([w.id for w in walkers], random.Random(SEED)))
    return walkers


# -- the walk: a pure movement model --------------------------------------------------------


@dataclass
class Stroll:
    """A walker's position and heading; `step` walks it on, with a random turn."""

    lat: float
    lng: float
    heading: float  # radians clockwise from north
    speed_mps: float
    home: tuple[float, float]

    @classmethod
    def around(cls, lat: float, lng: float, rng: random.Random) -> Stroll:
        d = START_SPREAD_M * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        plat, plng = offset(lat, lng, d * math.cos(a), d * math.sin(a))
        return cls(
            plat, plng, rng.uniform(0, 2 * math.pi), rng.uniform(*WALK_SPEED_MPS), (lat, lng)
        )

    def step(self, seconds: float, rng: random.Random) -> None:
        north, east = metres_between(self.home, (self.lat, self.lng))
        self.heading += rng.gauss(0.0, TURN_SIGMA_RAD)
        if math.hypot(north, east) > HOME_RANGE_M:  # turn (part of the way) back home
            back = math.atan2(-east, -north)
            turn = math.remainder(back - self.heading, 2 * math.pi)
            self.heading += 0.5 * turn
        d = self.speed_mps * seconds
        self.lat, self.lng = offset(
            self.lat, self.lng, d * math.cos(self.heading), d * math.sin(self.heading)
        )


def offset(lat: float, lng: float, north_m: float, east_m: float) -> tuple[float, float]:
    """The point north_m and east_m from (lat, lng): flat earth, fine for a few km."""
    dlat = math.degrees(north_m / EARTH_M)
    dlng = math.degrees(east_m / (EARTH_M * math.cos(math.radians(lat))))
    return lat + dlat, lng + dlng


def metres_between(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(north, east) metres from a to b, flat earth."""
    north = math.radians(b[0] - a[0]) * EARTH_M
    east = math.radians(b[1] - a[1]) * EARTH_M * math.cos(math.radians(a[0]))
    return north, east


# -- the walkers: real WebSocket clients ----------------------------------------------------


@dataclass
class Walker:
    info: WalkerInfo
    stroll: Stroll
    rng: random.Random
    step_seconds: float
    connected: bool = False
    nearby: dict[int, float] = field(default_factory=dict)  # what its socket shows: id -> m
    sent: int = 0
    received: int = 0
    connects: int = 0
    last_step: float | None = None

    async def run(self, ws_url: str) -> None:
        """Connect, walk and report until cancelled; reconnect on a hint or a drop."""
        await asyncio.sleep(self.rng.uniform(0, self.step_seconds))  # do not all start at once
        backoff = 0.5
        url = f"{ws_url}?token={self.info.token}"
        while True:
            delay = backoff
            try:
                async with connect(
                    url, open_timeout=10, close_timeout=2, compression=None, proxy=None
                ) as ws:
                    self.connected = True
                    self.connects += 1
                    backoff = 0.5
                    delay = await self._session(ws)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.debug("demo: %s disconnected: %r", self.info.name, exc)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:  # a bug must not end the walk for good
                log.exception("demo: %s failed; reconnecting", self.info.name)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            finally:
                self.connected = False
                self.nearby.clear()
            await asyncio.sleep(delay * self.rng.uniform(0.5, 1.5))

    async def _session(self, ws: ClientConnection) -> float:
        """One connection: send a location every step, read pushes; returns the delay before
        reconnecting when the server asks for it (a `reconnect` frame)."""
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        while True:
            wait = next_send - loop.time()
            if wait <= 0:
                now = loop.time()
                if self.last_step is not None:
                    elapsed = min(now - self.last_step, 10 * self.step_seconds)
                    self.stroll.step(elapsed * TIME_FACTOR, self.rng)
                self.last_step = now
                update = LocationUpdate(round(self.stroll.lat, 6), round(self.stroll.lng, 6))
                await ws.send(protocol.encode_client(update))
                self.sent += 1
                next_send = now + self.step_seconds * self.rng.uniform(0.8, 1.2)
                continue
            try:
                async with asyncio.timeout(wait):
                    text = await ws.recv()
            except TimeoutError:
                continue
            retry = self.on_frame(text)
            if retry is not None:
                return retry

    def on_frame(self, text: str | bytes) -> float | None:
        """Keep the view of nearby friends; a `reconnect` frame returns its delay (s)."""
        self.received += 1
        try:
            frame = protocol.parse_server(text)
        except ProtocolError as exc:
            log.warning("demo: %s got a bad frame: %s", self.info.name, exc.message)
            return None
        try:
            return self._apply(frame)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("demo: %s got a malformed %s: %r", self.info.name, frame["type"], exc)
            return None

    def _apply(self, frame: dict[str, Any]) -> float | None:
        kind = frame["type"]
        if kind == "welcome":
            self.nearby = {int(f["user_id"]): float(f["distance_m"]) for f in frame["friends"]}
        elif kind == "friend_location":
            self.nearby[int(frame["user_id"])] = float(frame["distance_m"])
        elif kind in ("friend_left_range", "friend_offline", "friend_removed"):
            self.nearby.pop(int(frame["user_id"]), None)
        elif kind == "reconnect":
            return max(0.0, float(frame["retry_after_ms"]) / 1000)
        elif kind == "error":
            log.warning(
                "demo: %s: server error %s: %s", self.info.name, frame["code"], frame["message"]
            )
        return None


def ws_endpoint(base_url: str) -> str:
    """`http://host:port` -> `ws://host:port/v1/ws`; a wildcard bind address -> loopback."""
    url = base_url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
    url = url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")
    return f"{url}/v1/ws"


class Walkers:
    """The demo walkers of one server: their tasks, and what the map shows of them."""

    def __init__(
        self,
        roster: Iterable[WalkerInfo],
        *,
        rng: random.Random | None = None,
        step_seconds: float | None = None,
    ) -> None:
        rng = rng or random.Random(SEED)
        step = STEP_SECONDS if step_seconds is None else step_seconds
        self.walkers: list[Walker] = []
        for info in roster:
            _name, lat, lng = START_POINTS[info.group % len(START_POINTS)]
            own = random.Random(rng.getrandbits(64))
            self.walkers.append(Walker(info, Stroll.around(lat, lng, own), own, step))
        self.by_id = {w.info.id: w for w in self.walkers}
        self._tasks: list[asyncio.Task[None]] = []
        self._friends: dict[int, list[int]] = {}
        self._friends_read = -math.inf

    @property
    def ids(self) -> list[int]:
        return [w.info.id for w in self.walkers]

    @property
    def walking(self) -> bool:
        return bool(self._tasks)

    def walk(self, base_url: str) -> None:
        """Start every walker's client task against the server at base_url (idempotent)."""
        if self._tasks:
            return
        ws_url = ws_endpoint(base_url)
        for w in self.walkers:
            self._tasks.append(asyncio.create_task(w.run(ws_url), name=f"demo {w.info.name}"))
        log.info(
            "demo: %d walkers in %d friend circles around %s, connecting to %s",
            len(self.walkers),
            len({w.info.group for w in self.walkers}),
            CITY[0],
            ws_url,
        )

    async def stop(self) -> None:
        """Cancel the walkers and wait for their sockets to close (idempotent)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.warning("demo: walker task failed: %r", task.exception())

    async def friends(self, users: UserStore) -> dict[int, list[int]]:
        """Each walker's friends as the store has them, re-read every FRIENDS_REFRESH_S."""
        if time.monotonic() - self._friends_read > FRIENDS_REFRESH_S:
            ids = self.ids
            self._friends = await anyio.to_thread.run_sync(
                lambda: {i: users.friends(i) for i in ids}
            )
            self._friends_read = time.monotonic()
        return self._friends


async def start(app: FastAPI, settings: NearbyFriendsSettings) -> Walkers:
    """From the lifespan: the walkers registered (or reloaded), kept in app.state.demo_walkers,
    and set walking if app.state.base_url says where the server is."""
    users: UserStore = app.state.users
    path = settings.data_dir / ROSTER_FILE
    roster = await anyio.to_thread.run_sync(load_or_register, users, path, settings.demo_walkers)
    walkers = Walkers(roster)
    app.state.demo_walkers = walkers
    base_url: str | None = getattr(app.state, "base_url", None)
    if base_url:
        walkers.walk(base_url)
    else:
        log.warning("demo: app.state.base_url is not set, so the walkers stay at home")
    return walkers


# -- HTTP: the map page and the positions it polls ------------------------------------------

router = APIRouter()
_MAP_HTML = resources.files("scalelab.nearby_friends").joinpath("map.html")


@router.get("/demo/map", include_in_schema=False)
async def demo_map() -> HTMLResponse:
    return HTMLResponse(
        _MAP_HTML.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"}
    )


@router.get("/v1/demo/positions")
async def demo_positions(request: Request) -> Response:
    """The demo walkers: where the location cache has them, their friends, whom each one's
    socket shows as nearby. Public and read-only; empty unless the server runs `--demo`."""
    state = request.app.state
    walkers: Walkers | None = getattr(state, "demo_walkers", None)
    hub = getattr(state, "hub", None)
    now = hub.clock() if hub is not None else time.time()
    body: dict[str, Any] = {
        "demo": walkers is not None,
        "city": {"name": CITY[0], "lat": CITY[1], "lng": CITY[2]},
        "radius_m": getattr(state, "radius_m", None),
        "now": now,
        "walkers": [],
    }
    if walkers is None:
        return json_response(body)
    ids = walkers.ids
    located = await anyio.to_thread.run_sync(state.cache.get_many, ids)
    friends = await walkers.friends(state.users)
    for w in walkers.walkers:
        loc = located.get(w.info.id)
        body["walkers"].append(
            {
                "id": w.info.id,
                "name": w.info.name,
                "group": w.info.group,
                "lat": loc.lat if loc else None,
                "lng": loc.lng if loc else None,
                "updated_at": loc.updated_at if loc else None,
                "connected": w.connected,
                "friends": friends.get(w.info.id, []),
                "nearby": sorted(w.nearby),
            }
        )
    body["stats"] = {
        "updates_sent": sum(w.sent for w in walkers.walkers),
        "frames_received": sum(w.received for w in walkers.walkers),
        "connects": sum(w.connects for w in walkers.walkers),
    }
    return json_response(body)
