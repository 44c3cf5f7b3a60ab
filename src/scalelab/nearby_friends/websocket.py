"""The WebSocket servers of the book: stateful, one `Session` per open socket.

This module is the thin asyncio adapter around `session.Session` (which decides everything and
knows no I/O): it authenticates the upgrade, runs the session's actions in order (send a frame,
publish, (un)subscribe, store a location), feeds it pub/sub messages and timer ticks, and on
shutdown drains: every client gets a `reconnect` frame and a close with code 1012 so it resumes
on another server. A slow client cannot stall the server: its outgoing queue is bounded and
location frames beyond it are dropped (counted), as the book allows losing a few points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from scalelab.nearby_friends import protocol
from scalelab.nearby_friends.errors import NearbyError
from scalelab.nearby_friends.history import HistoryWriter
from scalelab.nearby_friends.location_cache import LocationCache
from scalelab.nearby_friends.model import Location, control_channel, control_payload
from scalelab.nearby_friends.session import (
    Action,
    Publish,
    SaveSettings,
    Send,
    Session,
    StoreLocation,
    Subscribe,
    Unsubscribe,
)
from scalelab.nearby_friends.users import UserStore
from scalelab.storage.pubsub import PubSub

log = logging.getLogger("scalelab.nearby_friends")

Clock = Callable[[], float]

OUTBOX_LIMIT = 1000  # frames queued for one client before location frames are dropped
CLOSE_POLICY = 1008  # bad token
CLOSE_RESTART = 1012  # draining: come back elsewhere


@dataclass
class HubStats:
    connections: int = 0
    connected_total: int = 0
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    locations: int = 0
    superseded: int = 0
    pubsub_in: int = 0


@dataclass(frozen=True)
class _Batch:
    """Consecutive (un)subscribes of one step, made in one call: on Redis one command and one
    wait for the confirmations instead of a round trip each (a session starts with one
    Subscribe per friend, 400 in the book's sizing)."""

    subscribe: bool
    channels: tuple[str, ...]


@dataclass(eq=False)
class _Share:
    """One location update's StoreLocation and Publishes, queued as a unit. While it waits, a
    newer update of the same socket replaces its content instead of queueing behind it: a
    location is state, only the latest matters. So an overloaded server sheds superseded
    updates (counted) instead of queueing without bound and falling ever further behind."""

    actions: list[Action]


Queued = Action | _Batch | _Share | None

YIELD_EVERY = 64  # actions run before a socket's task lets the others (and /metrics) in


@dataclass(eq=False)
class Connection:
    """One open socket: its session, and a queue of actions run in order by one task."""

    hub: Hub
    websocket: WebSocket
    session: Session
    actions: asyncio.Queue[Queued] = field(default_factory=asyncio.Queue)
    queued_sends: int = 0
    # The queued _Share a newer update may still replace (None once anything but frames to
    # our own client was queued after it: publishes must keep their order).
    pending_share: _Share | None = None

    def on_pubsub(self, channel: str, payload: bytes) -> None:
        """A pub/sub handler: runs on the event loop, must not block."""
        self.hub.stats.pubsub_in += 1
        self.enqueue(self.session.on_message(channel, payload))

    def enqueue(self, actions: list[Action]) -> None:
        batch: list[str] = []
        subscribing = True
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if isinstance(action, StoreLocation):
                # A share: the StoreLocation and the Publishes right after it.
                group: list[Action] = [action]
                while i < len(actions) and isinstance(actions[i], Publish):
                    group.append(actions[i])
                    i += 1
                if batch:
                    self.actions.put_nowait(_Batch(subscribing, tuple(batch)))
                    batch = []
                if self.pending_share is not None:
                    self.pending_share.actions = group
                    self.hub.stats.superseded += 1
                else:
                    self.pending_share = _Share(group)
                    self.actions.put_nowait(self.pending_share)
                continue
            if not isinstance(action, Send):
                self.pending_share = None  # it keeps its place; no longer replaceable
            if isinstance(action, Subscribe | Unsubscribe):
                adding = isinstance(action, Subscribe)
                if batch and adding != subscribing:
                    self.actions.put_nowait(_Batch(subscribing, tuple(batch)))
                    batch = []
                subscribing = adding
                batch.append(action.channel)
                continue
            if batch:
                self.actions.put_nowait(_Batch(subscribing, tuple(batch)))
                batch = []
            if isinstance(action, Send):
                if self.queued_sends >= OUTBOX_LIMIT:
                    self.hub.stats.frames_dropped += 1
                    continue
                self.queued_sends += 1
            self.actions.put_nowait(action)
        if batch:
            self.actions.put_nowait(_Batch(subscribing, tuple(batch)))

    async def run_actions(self) -> None:
        gone = False  # the client went away: skip frames, still run the unsubscribes
        ran = 0
        while (item := await self.actions.get()) is not None:
            ran += 1
            if ran % YIELD_EVERY == 0:
                # get() and in-process publishes never suspend: without this, a socket with a
                # long queue would hold the event loop until its queue is empty.
                await asyncio.sleep(0)
            if isinstance(item, _Share):
                if self.pending_share is item:
                    self.pending_share = None
                for action in item.actions:
                    gone = await self._run(action, gone)
            else:
                gone = await self._run(item, gone)

    async def _run(self, action: Action | _Batch, gone: bool) -> bool:
        """Carry out one action; returns whether the client is gone (frames are skipped)."""
        hub = self.hub
        try:
            if isinstance(action, Send):
                self.queued_sends -= 1
                if not gone:
                    await self.websocket.send_text(action.text)
                    hub.stats.frames_out += 1
            elif isinstance(action, Publish):
                await hub.pubsub.publish(action.channel, action.payload)
            elif isinstance(action, _Batch):
                pubsub = hub.pubsub
                change = pubsub.subscribe_many if action.subscribe else pubsub.unsubscribe_many
                await change(action.channels, self.on_pubsub)
            elif isinstance(action, StoreLocation):
                await hub.store_location(action.location)
            elif isinstance(action, SaveSettings):
                await hub.save_settings(self.session.user_id, action)
        except Exception as exc:  # one failed action must not stop this socket's queue
            if isinstance(action, Send):
                return True  # the receive loop sees the close and queues the cleanup
            log.warning("action %s failed: %r", type(action).__name__, exc)
        return gone


class Hub:
    """Every socket of this server process, and the shared services their sessions use."""

    def __init__(
        self,
        pubsub: PubSub,
        cache: LocationCache,
        history: HistoryWriter,
        users: UserStore,
        clock: Clock,
        *,
        radius_m: float,
        ttl: float,
        geohash_precision: int,
        rate: float,
    ) -> None:
        self.pubsub = pubsub
        self.cache = cache
        self.history = history
        self.users = users
        self.clock = clock
        self.radius_m = radius_m
        self.ttl = ttl
        self.geohash_precision = geohash_precision
        self.rate = rate
        self.connections: set[Connection] = set()
        self.stats = HubStats()
        self.draining = False
        self._empty = asyncio.Event()  # set while no socket is open (drain waits on it)
        self._empty.set()

    async def store_location(self, location: Location) -> None:
        self.stats.locations += 1
        await self.cache.put_async(location)
        self.history.add(location)

    async def save_settings(self, user_id: int, action: SaveSettings) -> None:
        if not action.sharing:  # stop showing the last location before the TTL would
            await self.cache.delete_async(user_id)
        await anyio.to_thread.run_sync(
            lambda: self.users.set_settings(
                user_id, sharing=action.sharing, random_nearby=action.random_nearby
            )
        )
        # The user's other sockets (on any server) follow the change.
        channel = control_channel(user_id)
        await self.pubsub.publish(channel, control_payload("sharing", enabled=action.sharing))
        await self.pubsub.publish(
            channel, control_payload("random_nearby", enabled=action.random_nearby)
        )

    async def authenticate(self, websocket: WebSocket) -> int | None:
        token = websocket.query_params.get("token")
        header = websocket.headers.get("authorization", "")
        if token is None and header.lower().startswith("bearer "):
            token = header[7:].strip()
        if not token:
            return None
        try:
            user_id: int = await anyio.to_thread.run_sync(self.users.authenticate, token)
        except NearbyError:
            return None
        return user_id

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one socket from the upgrade to the close."""
        await websocket.accept()
        if self.draining:
            await websocket.send_text(protocol.reconnect(1000, "draining"))
            await websocket.close(CLOSE_RESTART)
            return
        user_id = await self.authenticate(websocket)
        if user_id is None:
            await websocket.send_text(
                protocol.error("unauthorized", "connect with ?token= or Authorization: Bearer")
            )
            await websocket.close(CLOSE_POLICY)
            return
        view = await anyio.to_thread.run_sync(self.users.session_view, user_id)
        session = Session(
            user_id,
            view.friends,
            radius_m=self.radius_m,
            ttl=self.ttl,
            clock=self.clock,
            sharing=view.sharing,
            random_nearby=view.random_nearby,
            geohash_precision=self.geohash_precision,
            rate=self.rate,
        )
        conn = Connection(self, websocket, session)
        # Our own last location (a reconnect's welcome lists friends at once) and the cached
        # locations of friends who share theirs.
        cached = await self.cache.get_many_async([*view.sharing_friends, user_id])
        conn.enqueue(session.start(cached))
        self.connections.add(conn)
        self._empty.clear()
        self.stats.connections += 1
        self.stats.connected_total += 1
        runner = asyncio.create_task(conn.run_actions())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                self.stats.frames_in += 1
                conn.enqueue(session.receive_text(data))
        except WebSocketDisconnect:
            pass
        finally:
            self.connections.discard(conn)
            if not self.connections:
                self._empty.set()
            self.stats.connections -= 1
            # Unsubscribe through the queue, after whatever is still pending, then stop it.
            conn.enqueue(session.close())
            conn.actions.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 10)

    def tick(self) -> None:
        """Timer: each session expires friends whose location outlived the TTL."""
        for conn in list(self.connections):
            conn.enqueue(conn.session.tick())

    async def drain(self, seconds: float) -> None:
        """Before shutdown: tell every client to reconnect elsewhere (jittered, so they do not
        all land on the next server at once), then close with 1012."""
        self.draining = True
        conns = list(self.connections)
        if not conns:
            return
        log.info("draining %d connections", len(conns))
        rng = random.Random()
        spread_ms = max(1, int(seconds * 1000))
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.websocket.send_text(
                    protocol.reconnect(rng.randrange(spread_ms), "draining")
                )
        for conn in conns:
            if conn.websocket.client_state is WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    await conn.websocket.close(CLOSE_RESTART)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), seconds)
