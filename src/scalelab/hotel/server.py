"""Wiring: settings -> shards, strategy, cache, services -> the ASGI app; background jobs.

`create_app(settings)` returns the app. Its lifespan creates missing tables on every shard,
rolls the inventory horizon forward, and runs two jobs: the sweeper that expires unpaid
reservations (every `expiry_interval_seconds`) and the daily horizon extension.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scalelab.config import SettingsError
from scalelab.hotel import demo
from scalelab.hotel.api import hotel_error, router
from scalelab.hotel.auth import Auth
from scalelab.hotel.availability import AvailabilityService
from scalelab.hotel.cache import InventoryCache
from scalelab.hotel.concurrency import make_strategy
from scalelab.hotel.errors import HotelError
from scalelab.hotel.hotels import HotelService
from scalelab.hotel.idempotency import IdempotencyStore
from scalelab.hotel.payment import PaymentProvider, SimulatedProvider
from scalelab.hotel.reservations import ReservationService
from scalelab.hotel.settings import HotelSettings
from scalelab.hotel.sharding import Shards
from scalelab.storage import sql
from scalelab.storage.kv import open_kv
from scalelab.web import HTTPServer
from scalelab.web import create_app as create_web_app

log = logging.getLogger("scalelab.hotel")

Announce = Callable[[str, dict[str, str]], None]
Clock = Callable[[], float]

HORIZON_INTERVAL = 3600.0


def database_urls(settings: HotelSettings) -> list[str]:
    if settings.shards:
        return [u.strip() for u in settings.shards.split(",") if u.strip()]
    return [settings.database_url or sql.sqlite_url(settings.data_dir / "hotel.db")]


def staff_token(settings: HotelSettings) -> str:
    """The configured token, or a dev token generated once and kept in the data dir."""
    return settings.dev_secret(settings.staff_token, "dev-staff-token", "staff")


class _Stats(Collector):
    """Booking outcomes and cache effectiveness, read from the services at scrape time."""

    def __init__(self, reservations: ReservationService, cache: InventoryCache | None) -> None:
        self.reservations = reservations
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        outcomes = CounterMetricFamily(
            "hotel_reservation_outcomes",
            "reservation requests and status changes by outcome",
            labels=["outcome"],
        )
        for outcome, count in sorted(self.reservations.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield outcomes
        if self.cache is not None:
            lookups = CounterMetricFamily(
                "hotel_inventory_cache_lookups", "inventory cache lookups", labels=["result"]
            )
            lookups.add_metric(["hit"], self.cache.hits)
            lookups.add_metric(["miss"], self.cache.misses)
            yield lookups
        yield GaugeMetricFamily(
            "hotel_shards",
            "databases the hotels are sharded over",
            value=len(self.reservations.shards),
        )


def create_app(
    settings: HotelSettings,
    *,
    clock: Clock = time.time,
    provider: PaymentProvider | None = None,
    schema_name: str | None = None,
    demo_data: bool = False,
) -> FastAPI:
    """The hotel API. clock and provider are for tests (virtual time, scripted payments);
    schema_name puts PostgreSQL tables in that schema (tests use one per run)."""
    try:
        make_strategy(settings.concurrency)  # refuse an unknown strategy before starting
    except ValueError as exc:
        raise SettingsError(f"SCALELAB_HOTEL_CONCURRENCY: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        shards = Shards.open(database_urls(settings), schema_name=schema_name)
        await anyio.to_thread.run_sync(shards.create_schema)
        cache = (
            InventoryCache(open_kv(settings.cache_url, namespace=settings.cache_namespace), clock)
            if settings.cache_enabled
            else None
        )
        hotels = HotelService(
            shards,
            clock,
            horizon_days=settings.inventory_horizon_days,
            default_overbooking=settings.default_overbooking_percent,
            cache=cache,
        )
        added = await anyio.to_thread.run_sync(hotels.extend_horizon)
        if added:
            log.info("inventory horizon: added %d room-type nights", added)
        if demo_data and (seeded := await anyio.to_thread.run_sync(demo.seed, hotels)):
            log.info("demo: created %d hotels", seeded)
        reservations = ReservationService(
            shards,
            hotels,
            IdempotencyStore(shards, clock, settings.idempotency_lease_seconds),
            make_strategy(settings.concurrency, optimistic_retries=settings.optimistic_retries),
            provider or SimulatedProvider(),
            cache,
            clock,
            pending_timeout=settings.pending_timeout_seconds,
            payment_timeout=settings.payment_timeout_seconds,
            max_nights=settings.max_stay_nights,
        )
        app.state.settings = settings
        app.state.shards = shards
        app.state.hotels = hotels
        app.state.reservations = reservations
        app.state.availability = AvailabilityService(
            hotels, cache, max_nights=settings.max_stay_nights
        )
        app.state.auth = Auth(shards, staff_token(settings), clock)
        app.state.metrics_registry.register(_Stats(reservations, cache))
        tasks = [
            asyncio.create_task(
                _every(settings.expiry_interval_seconds, reservations.expire_due, "expiry")
            ),
            asyncio.create_task(_every(HORIZON_INTERVAL, hotels.extend_horizon, "horizon")),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if cache is not None:
                cache.close()
            shards.dispose()

    async def health() -> dict[str, Any]:
        return {"concurrency": settings.concurrency, "shards": len(database_urls(settings))}

    app = create_web_app("hotel", routers=[router], lifespan=lifespan, health=health)
    app.add_exception_handler(HotelError, hotel_error)
    return app


async def _every(interval: float, job: Callable[[], int], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            done = await anyio.to_thread.run_sync(job)
            if done:
                log.info("%s: %d", name, done)
        except Exception:  # a database hiccup must not stop the next run
            log.exception("%s job failed; retrying in %.1fs", name, interval)


SETTINGS = HotelSettings


async def serve(settings: HotelSettings, *, demo: bool, announce: Announce) -> None:
    """Run the REST API until cancelled or signalled (the CLI's `serve hotel`)."""
    server = HTTPServer(create_app(settings, demo_data=demo), settings.host, settings.port)
    extra = {} if settings.staff_token else {"dev staff token": staff_token(settings)}
    announce(server.url, extra)
    await server.serve()
