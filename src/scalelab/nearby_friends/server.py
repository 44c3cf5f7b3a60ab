"""Wiring: settings -> user store, location cache, history, pub/sub, the WebSocket hub, and
the REST API, in one ASGI app (`/v1/...` REST, `/v1/ws` WebSocket).

The book draws stateless REST servers and stateful WebSocket servers; here one process serves
both, and several processes behind the same Redis (pub/sub and cache) and database are the
scale-out: a user on server A sees a friend on server B. Background jobs: the history flush
(the adapter buffers location points, a thread writes them in batches) and the session timer
(TTL expiry of friends' locations).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, WebSocket
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scalelab.nearby_friends import demo, schema
from scalelab.nearby_friends.api import nearby_error, router
from scalelab.nearby_friends.errors import NearbyError
from scalelab.nearby_friends.history import HistoryWriter, LocationHistory
from scalelab.nearby_friends.location_cache import LocationCache
from scalelab.nearby_friends.model import control_channel
from scalelab.nearby_friends.settings import MILE_M, NearbyFriendsSettings
from scalelab.nearby_friends.users import UserStore
from scalelab.nearby_friends.websocket import Hub
from scalelab.storage import sql
from scalelab.storage.kv import MemoryKV, open_kv
from scalelab.storage.pubsub import PubSub, open_pubsub
from scalelab.web import HTTPServer
from scalelab.web import create_app as create_web_app

log = logging.getLogger("scalelab.nearby_friends")

Announce = Callable[[str, dict[str, str]], None]
Clock = Callable[[], float]

HISTORY_FLUSH_SECONDS = 1.0
TICK_SECONDS = 2.0


def database_url(settings: NearbyFriendsSettings) -> str:
    return settings.database_url or sql.sqlite_url(settings.data_dir / "nearby_friends.db")


def ring_urls(settings: NearbyFriendsSettings) -> list[str] | None:
    if not settings.pubsub_ring:
        return None
    return [u.strip() for u in settings.pubsub_ring.split(",") if u.strip()]


class _Stats(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        s = self.hub.stats
        yield GaugeMetricFamily(
            "nearby_friends_connections", "open WebSocket connections", value=s.connections
        )
        for name, value, help_ in (
            ("nearby_friends_frames_in", s.frames_in, "frames received from clients"),
            ("nearby_friends_frames_out", s.frames_out, "frames pushed to clients"),
            ("nearby_friends_frames_dropped", s.frames_dropped, "frames dropped: slow client"),
            ("nearby_friends_location_updates", s.locations, "location updates stored"),
            (
                "nearby_friends_location_updates_superseded",
                s.superseded,
                "updates replaced by a newer one of the same socket before they ran (overload)",
            ),
            ("nearby_friends_pubsub_messages", s.pubsub_in, "pub/sub messages delivered here"),
        ):
            yield CounterMetricFamily(name, help_, value=value)


def create_app(
    settings: NearbyFriendsSettings,
    *,
    clock: Clock = time.time,
    schema_name: str | None = None,
    demo_data: bool = False,
) -> FastAPI:
    """The REST API and the WebSocket endpoint. clock is for tests (virtual TTLs)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = sql.create_engine(database_url(settings), schema=schema_name, pool_size=20)
        await anyio.to_thread.run_sync(schema.create_schema, engine)
        users = UserStore(engine, clock)
        history = LocationHistory(engine)
        writer = HistoryWriter(history)
        kv = (
            MemoryKV(clock=clock)
            if settings.cache_url is None
            else open_kv(settings.cache_url, namespace=settings.cache_namespace)
        )
        cache = LocationCache(kv, settings.location_ttl_seconds)
        pubsub: PubSub = open_pubsub(settings.pubsub_url, ring_urls(settings))
        hub = Hub(
            pubsub,
            cache,
            writer,
            users,
            clock,
            radius_m=settings.radius_miles * MILE_M,
            ttl=settings.location_ttl_seconds,
            geohash_precision=settings.random_nearby_precision,
            rate=settings.max_messages_per_second,
        )

        async def notify(user_id: int, payload: bytes) -> None:
            await pubsub.publish(control_channel(user_id), payload)

        app.state.settings = settings
        app.state.users = users
        app.state.history = history
        app.state.cache = cache
        app.state.notify = notify
        app.state.radius_m = settings.radius_miles * MILE_M
        app.state.ttl = settings.location_ttl_seconds
        app.state.hub = hub
        app.state.pubsub = pubsub
        app.state.metrics_registry.register(_Stats(hub))
        tasks = [
            asyncio.create_task(
                _every(HISTORY_FLUSH_SECONDS, writer.flush, "history", thread=True)
            ),
            asyncio.create_task(_every(TICK_SECONDS, hub.tick, "tick", thread=False)),
        ]
        walkers = None
        if demo_data:  # registers the walkers; they walk once app.state.base_url is known
            walkers = await demo.start(app, settings)
        try:
            yield
        finally:
            if walkers is not None:
                await walkers.stop()
            await hub.drain(0)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(writer.flush)
            await pubsub.close()
            await cache.close()
            engine.dispose()

    async def health() -> dict[str, Any]:
        hub: Hub | None = getattr(app.state, "hub", None)
        return {"connections": hub.stats.connections if hub else 0}

    # The demo map is always there: without --demo it says how to start the walkers.
    routers = [router, demo.router]
    app = create_web_app("nearby_friends", routers=routers, lifespan=lifespan, health=health)
    app.add_exception_handler(NearbyError, nearby_error)

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        hub: Hub = websocket.app.state.hub
        await hub.handle(websocket)

    return app


def drain_hook(app: FastAPI, seconds: float) -> Callable[[], Awaitable[None]]:
    """For HTTPServer(before_shutdown=...): drain the hub while the sockets are still open."""

    async def drain() -> None:
        hub: Hub | None = getattr(app.state, "hub", None)
        if hub is not None:
            await hub.drain(seconds)

    return drain


async def _every(interval: float, job: Callable[[], object], name: str, *, thread: bool) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            if thread:
                await anyio.to_thread.run_sync(job)
            else:
                job()
        except Exception:  # a hiccup must not stop the next run
            log.exception("%s job failed; retrying in %.1fs", name, interval)


SETTINGS = NearbyFriendsSettings


async def serve(settings: NearbyFriendsSettings, *, demo: bool, announce: Announce) -> None:
    """Run the REST API and WebSocket endpoint until cancelled or signalled."""
    app = create_app(settings, demo_data=demo)
    drain = drain_hook(app, settings.drain_seconds)

    async def before_shutdown() -> None:
        walkers = getattr(app.state, "demo_walkers", None)
        if walkers is not None:  # the demo's own clients leave first, not as drained users
            await walkers.stop()
        await drain()

    server = HTTPServer(
        app,
        settings.host,
        settings.port,
        before_shutdown=before_shutdown,
        ws_compression=settings.ws_compression,
    )
    app.state.base_url = server.url  # where the demo walkers connect (the lifespan starts them)
    ws_url = server.url.replace("http://", "ws://") + "/v1/ws"
    extra = {"websocket": ws_url}
    if demo:
        extra["demo map"] = f"{server.url}/demo/map"
    announce(server.url, extra)
    await server.serve()
