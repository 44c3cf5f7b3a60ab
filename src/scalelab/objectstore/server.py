"""Wiring: settings -> metadata store, data node, service, S3 app; background GC and lifecycle.

On start-up, data that was made durable but whose metadata never committed (a crash between
the two) is reclaimed before the first request; while serving, the same sweep runs with a
grace period, next to compaction of read-only data files and the lifecycle rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from scalelab.objectstore.api import S3App
from scalelab.objectstore.background import apply_lifecycle
from scalelab.objectstore.bucket_handlers import bucket_cors
from scalelab.objectstore.datanode import DataNode
from scalelab.objectstore.handlers import Handlers
from scalelab.objectstore.metadata import MetadataStore
from scalelab.objectstore.multipart import Multipart
from scalelab.objectstore.service import ObjectStore
from scalelab.objectstore.settings import ObjectStoreSettings
from scalelab.storage import sql
from scalelab.storage.lock import ExclusiveUse
from scalelab.web import HTTPServer

LOCK_NAME = "objectstore.lock"
log = logging.getLogger("scalelab.objectstore")

Announce = Callable[[str, dict[str, str]], None]


@dataclass(frozen=True)
class KeyPair:
    access_key: str
    secret_key: str


def first_key_pair(settings: ObjectStoreSettings) -> KeyPair:
    """The configured pair, or a dev pair generated once and kept in the data dir."""
    if settings.access_key and settings.secret_key:
        return KeyPair(settings.access_key, settings.secret_key)
    path = settings.data_dir / "dev-credentials"
    if not path.exists():
        access = "SL" + secrets.token_hex(9).upper()
        secret = secrets.token_urlsafe(30)
        path.write_text(f"{access}:{secret}\n")
        path.chmod(0o600)
    access, _, secret = path.read_text().strip().partition(":")
    return KeyPair(access, secret)


def credentials(settings: ObjectStoreSettings) -> dict[str, str]:
    first = first_key_pair(settings)
    found = {first.access_key: first.secret_key}
    for item in (settings.extra_credentials or "").split(","):
        if item.strip():
            access, sep, secret = item.strip().partition(":")
            if not sep or not access or not secret:
                raise ValueError("extra_credentials: expected ACCESS:SECRET pairs, comma-separated")
            found[access] = secret
    return found


def database_url(settings: ObjectStoreSettings) -> str:
    return settings.database_url or sql.sqlite_url(settings.data_dir / "metadata.db")


class Runtime:
    """What the app holds while it runs; created in the lifespan, so tests can reopen it."""

    def __init__(
        self,
        settings: ObjectStoreSettings,
        clock: Callable[[], float] = time.time,
        *,
        reclaim: bool = True,
    ) -> None:
        started = clock()
        self.settings = settings
        self.engine = sql.create_engine(database_url(settings))
        self.meta = MetadataStore(self.engine)
        self.meta.create_schema()
        self.node = DataNode(
            Path(settings.data_dir) / "node0",
            chunk_bytes=settings.chunk_bytes,
            data_file_bytes=settings.data_file_bytes,
        )
        self.store = ObjectStore(
            self.meta,
            self.node,
            region=settings.region,
            admins=frozenset({first_key_pair(settings).access_key}),
            clock=clock,
        )
        self.multipart = Multipart(self.store)
        self.handlers = Handlers(self.store, self.multipart)
        if reclaim:
            reclaimed = self.store.reclaim_orphans(started)
            if reclaimed:
                log.warning("start-up: reclaimed %d data objects with no metadata", reclaimed)
        self.tasks: list[asyncio.Task[None]] = []

    def start_background(self) -> None:
        s = self.settings
        self.tasks.append(asyncio.create_task(_every(s.gc_interval_seconds, self.collect_garbage)))
        self.tasks.append(
            asyncio.create_task(_every(s.lifecycle_interval_seconds, self.apply_lifecycle))
        )

    async def apply_lifecycle(self) -> None:
        await apply_lifecycle(self.store, self.multipart, self.settings.lifecycle_day_seconds)

    async def collect_garbage(self) -> None:
        s = self.settings
        cutoff = self.store.clock() - s.orphan_grace_seconds
        await anyio.to_thread.run_sync(self.store.reclaim_orphans, cutoff)
        await anyio.to_thread.run_sync(self.store.reclaimer.flush)
        report = await anyio.to_thread.run_sync(self.node.compact, s.gc_garbage_ratio)
        if report.get("files_compacted"):
            log.info("compaction: %s", report)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close_sync()

    def close_sync(self) -> None:
        self.store.close()
        self.meta.close()
        self.node.close()
        self.engine.dispose()


async def _every(interval: float, job: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:  # one failed round must not stop the next
            log.exception("background job failed; retrying in %.1fs", interval)


def create_app(settings: ObjectStoreSettings, *, clock: Callable[[], float] = time.time) -> S3App:
    holder: dict[str, Any] = {}

    def runtime() -> Runtime:
        rt: Runtime | None = holder.get("rt")
        if rt is None:
            raise RuntimeError("the object store is not started")
        return rt

    async def startup() -> None:
        lock = ExclusiveUse(settings.data_dir, LOCK_NAME)
        try:
            lock.__enter__()
        except BlockingIOError:
            raise RuntimeError(f"{settings.data_dir} is in use by another server") from None
        try:
            rt = await anyio.to_thread.run_sync(Runtime, settings, clock)
        except BaseException:
            lock.__exit__()
            raise
        holder["rt"], holder["lock"] = rt, lock
        rt.start_background()

    async def shutdown() -> None:
        rt = holder.pop("rt", None)
        if rt is not None:
            await rt.close()
        lock = holder.pop("lock", None)
        if lock is not None:
            lock.__exit__()

    def health() -> dict[str, Any]:
        rt: Runtime | None = holder.get("rt")
        return {"data": rt.node.usage()} if rt else {}

    app = S3App(
        lambda request: runtime().handlers.dispatch(request),
        credentials(settings),
        region=settings.region,
        domain=settings.domain,
        cors_rules=lambda bucket: bucket_cors(runtime().store, bucket),
        max_skew_seconds=settings.max_clock_skew_seconds,
        health=health,
        lifespan=startup,
        shutdown=shutdown,
        clock=clock,
    )
    app.state = holder
    return app


SETTINGS = ObjectStoreSettings


async def serve(settings: ObjectStoreSettings, *, demo: bool, announce: Announce) -> None:
    """Run the S3 API until cancelled or signalled (the CLI's `serve objectstore`)."""
    server = HTTPServer(create_app(settings), settings.host, settings.port)
    extras: dict[str, str] = {}
    if not (settings.access_key and settings.secret_key):
        pair = first_key_pair(settings)
        extras = {"dev access key": pair.access_key, "dev secret key": pair.secret_key}
    announce(server.url, extras)
    await server.serve()
