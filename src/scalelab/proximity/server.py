"""Wiring: settings -> store, cache, index, services -> the ASGI app; start-up and refresh.

`create_app(settings)` returns the app; its lifespan opens the database, builds the in-memory
index from it, and runs the refresher every `index_refresh_seconds` so writes made by any
process sharing the database become searchable without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from scalelab.proximity import demo
from scalelab.proximity.api import ERROR_STATUSES, router
from scalelab.proximity.cache import ProximityCache
from scalelab.proximity.geohash_index import GeohashIndex
from scalelab.proximity.h3index import H3Index
from scalelab.proximity.index import GeoIndex
from scalelab.proximity.quadtree import QuadtreeIndex
from scalelab.proximity.service import (
    BusinessService,
    Clock,
    IndexRefresher,
    LocationService,
    utcnow,
)
from scalelab.proximity.settings import ProximitySettings
from scalelab.proximity.store import BusinessStore
from scalelab.storage import sql
from scalelab.storage.kv import open_kv
from scalelab.web import HTTPServer
from scalelab.web import create_app as create_web_app

log = logging.getLogger("scalelab.proximity")

Announce = Callable[[str, dict[str, str]], None]
IndexFactory = Callable[[BusinessStore, ProximityCache], GeoIndex]

INDEX_KINDS: dict[str, IndexFactory] = {
    "geohash": lambda store, cache: GeohashIndex(store, cache),
    "quadtree": lambda store, cache: QuadtreeIndex(),
    "h3": lambda store, cache: H3Index(),
}


def register_index_kind(name: str, factory: IndexFactory) -> None:
    """The extension point for geo index kinds; the built-ins register the same way."""
    INDEX_KINDS[name] = factory


def dev_api_key(settings: ProximitySettings) -> str:
    """The configured key, or a dev key generated once and kept in the data dir."""
    return settings.dev_secret(settings.api_key, "dev-api-key", "dev")


def database_url(settings: ProximitySettings) -> str:
    return settings.database_url or sql.sqlite_url(settings.data_dir / "proximity.db")


def seed_demo(store: BusinessStore, count: int) -> int:
    """Fill an empty store with demo businesses; a non-empty store is left alone."""
    if store.count() > 0:
        return 0
    return store.bulk_create(demo.generate(count))


def create_app(
    settings: ProximitySettings, *, demo_data: bool = False, clock: Clock = utcnow
) -> FastAPI:
    if settings.index not in INDEX_KINDS:
        raise ValueError(
            f"unknown index kind {settings.index!r}; choose from {', '.join(sorted(INDEX_KINDS))}"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = sql.create_engine(database_url(settings))
        store = BusinessStore(engine)
        store.create_schema()
        if demo_data:
            added = await anyio.to_thread.run_sync(seed_demo, store, settings.demo_businesses)
            if added:
                log.info("demo: generated %d businesses", added)
        cache = ProximityCache(
            open_kv(settings.cache_url, namespace="proximity"), settings.cache_ttl_seconds
        )
        index = INDEX_KINDS[settings.index](store, cache)
        lock = threading.Lock()
        refresher = IndexRefresher(store, index, cache, lock)
        refresher.start_from(store.last_change())
        if index.in_memory:
            start = time.perf_counter()
            await anyio.to_thread.run_sync(index.load, store.points())
            stats = index.stats()
            log.info(
                "%s index: %d businesses, built in %.2fs, %.1f MB",
                index.kind,
                stats.size,
                time.perf_counter() - start,
                stats.memory_bytes / 1e6,
            )
            app.state.index_stats = {
                "size": stats.size,
                "build_seconds": round(stats.build_seconds, 3),
                "memory_bytes": stats.memory_bytes,
            }
        app.state.settings = settings
        app.state.api_key = dev_api_key(settings)
        app.state.store = store
        app.state.index = index
        app.state.refresher = refresher
        app.state.business_service = BusinessService(store, cache, index, lock)
        app.state.lbs = LocationService(
            index, store, cache, lock, max_radius_m=settings.max_radius_m, clock=clock
        )
        task = asyncio.create_task(_refresh_loop(refresher, settings.index_refresh_seconds))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            cache.kv.close()
            engine.dispose()

    async def health() -> dict[str, Any]:
        return {"index": settings.index, **getattr(app.state, "index_stats", {})}

    app = create_web_app(
        "proximity",
        routers=[router],
        error_statuses=ERROR_STATUSES,
        lifespan=lifespan,
        health=health,
    )
    return app


async def _refresh_loop(refresher: IndexRefresher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            applied = await anyio.to_thread.run_sync(refresher.refresh)
            if applied:
                log.info("index refresh applied %d changes", applied)
        except Exception:  # a database hiccup must not stop future refreshes
            log.exception("index refresh failed; retrying in %.1fs", interval)


SETTINGS = ProximitySettings


async def serve(settings: ProximitySettings, *, demo: bool, announce: Announce) -> None:
    """Run the REST API until cancelled or signalled (the CLI's `serve proximity`)."""
    server = HTTPServer(create_app(settings, demo_data=demo), settings.host, settings.port)
    announce(server.url, {"dev API key": dev_api_key(settings)} if not settings.api_key else {})
    await server.serve()
