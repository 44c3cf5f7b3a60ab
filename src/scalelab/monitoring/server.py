"""Wiring: settings -> `service.Monitoring` -> the ASGI app (Prometheus's API on one port).

`create_app(settings)` opens the TSDB (replaying its WAL) and returns the app; its lifespan
starts scraping, rule evaluation, notification and maintenance, and stops them on shutdown.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from scalelab.config import SettingsError
from scalelab.monitoring.api import install
from scalelab.monitoring.errors import BadData
from scalelab.monitoring.metrics import MonitoringCollector
from scalelab.monitoring.service import Monitoring
from scalelab.monitoring.settings import MonitoringSettings
from scalelab.monitoring.ui import install_ui
from scalelab.web import HTTPServer
from scalelab.web import create_app as create_web_app

Announce = Callable[[str, dict[str, str]], None]


def create_app(settings: MonitoringSettings, *, clock: Callable[[], float] = time.time) -> FastAPI:
    service = Monitoring(settings, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    async def health() -> dict[str, object]:
        return {"head_series": service.tsdb.head.num_series}

    app = create_web_app("monitoring", lifespan=lifespan, health=health)
    app.state.service = service
    app.state.metrics_registry.register(MonitoringCollector(service))
    install(app, service)
    install_ui(app)
    return app


SETTINGS = MonitoringSettings


async def serve(settings: MonitoringSettings, *, demo: bool, announce: Announce) -> None:
    """Run the Prometheus-compatible server until cancelled or signalled."""
    try:
        app = create_app(settings)
    except BadData as exc:  # a scrape config, rule file or Alertmanager config that is wrong
        raise SettingsError(str(exc)) from None
    server = HTTPServer(app, settings.host, settings.port)
    announce(server.url, {})
    await server.serve()
