"""Pull collection (the book's "metrics collector"): scrape every target on its interval and
append what it exposes, as Prometheus's scrape manager does.

Shape: a `ScrapeManager` holds one `ScrapePool` per job; a pool turns its discovered groups
into targets (`discovery.py`) and runs one `ScrapeLoop` per target. A loop wakes at
`interval` on a per-target phase (a hash of the target, so that a thousand targets on a 15s
interval spread over the 15s instead of all firing at once), GETs the target with
`scrape_timeout`, parses, relabels, and appends every sample plus the synthetic `up`,
`scrape_duration_seconds`, `scrape_samples_scraped`, `scrape_samples_post_metric_relabeling`
and `scrape_series_added` in one `Appender` transaction.

Failure and staleness follow Prometheus. A failed scrape (network error, bad status, parse
error, sample/label/series limit) commits nothing it scraped: `up` is 0 and every series of
the previous scrape gets a staleness marker. A series that merely vanished from a successful
scrape gets one too. A removed target gets markers for all its series, `up` included; on
shutdown nothing is marked (the data did not go stale, the server stopped). Samples with their
own timestamps (honor_timestamps) are never marked stale, as in Prometheus.

Time, sleeping and HTTP are injected: tests drive loops on a virtual clock with a mock
transport, production uses `time.time`, `asyncio.sleep` and httpx.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx

from scalelab.monitoring import errors, exposition, model
from scalelab.monitoring.discovery import (
    FileDiscovery,
    build_targets,
    static_groups,
)
from scalelab.monitoring.params import rfc3339
from scalelab.monitoring.scrape_config import Config, ScrapeConfig, format_duration
from scalelab.monitoring.scrape_loop import (
    REPORT_SERIES,
    AppenderFactory,
    Clock,
    DroppedTarget,
    Health,
    LoopDeps,
    ParseFn,
    RunBlocking,
    ScrapeCounters,
    ScrapeLoop,
    Sleep,
    TargetStatus,
)

log = logging.getLogger(__name__)

HttpClientFactory = Callable[[ScrapeConfig], httpx.AsyncClient]

__all__ = [
    "REPORT_SERIES",
    "AppenderFactory",
    "Clock",
    "DroppedTarget",
    "Health",
    "HttpClientFactory",
    "ParseFn",
    "ScrapeCounters",
    "ScrapeManager",
    "ScrapePool",
    "Sleep",
    "TargetStatus",
    "default_http_client",
    "global_url",
]

USER_AGENT = "scalelab-scraper/0.1"


class _SecretAuth(httpx.Auth):
    """Basic or bearer credentials, read from their file on every request so rotation works."""

    def __init__(self, scheme: str, user: str | None, secret: str, secret_file: str) -> None:
        self._scheme, self._user, self._secret, self._file = scheme, user, secret, secret_file

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        secret = self._secret or (Path(self._file).read_text().strip() if self._file else "")
        if self._user is not None:
            token = base64.b64encode(f"{self._user}:{secret}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        else:
            request.headers["Authorization"] = f"{self._scheme} {secret}"
        yield request


def default_http_client(cfg: ScrapeConfig) -> httpx.AsyncClient:
    """One client per job (its auth and TLS); proxies from the environment are not used.
    Unreadable TLS files are a configuration error (BadData), as Prometheus refuses them."""
    auth: httpx.Auth | None = None
    if cfg.basic_auth is not None:
        ba = cfg.basic_auth
        auth = _SecretAuth("Basic", ba.username, ba.password, ba.password_file)
    elif cfg.authorization is not None:
        az = cfg.authorization
        auth = _SecretAuth(az.type, None, az.credentials, az.credentials_file)
    tls = cfg.tls_config
    verify: bool | ssl.SSLContext = True
    if tls.ca_file or tls.cert_file or tls.insecure_skip_verify:
        try:
            ctx = ssl.create_default_context(cafile=tls.ca_file or None)
            if tls.cert_file:
                ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise errors.BadData(f'job "{cfg.job_name}": tls_config: {exc}') from None
        if tls.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        verify = ctx
    return httpx.AsyncClient(
        auth=auth,
        headers={"User-Agent": USER_AGENT},
        verify=verify,
        follow_redirects=cfg.follow_redirects,
        trust_env=False,
    )


class ScrapePool:
    """One job: its HTTP client, its discovery, and a loop per target."""

    def __init__(
        self, cfg: ScrapeConfig, deps: LoopDeps, http_client_factory: HttpClientFactory
    ) -> None:
        self.cfg = cfg
        self._deps = deps
        self._http_client_factory = http_client_factory
        self.loops: dict[tuple[model.Labels, str], ScrapeLoop] = {}
        self.dropped: list[model.Labels] = []
        self._files = [FileDiscovery(c) for c in cfg.file_sd_configs]
        self._client: httpx.AsyncClient | None = None
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self, previous: ScrapePool | None = None) -> None:
        """Discover and start loops; loops of `previous` (same job, old config) whose target
        remains hand their state over instead of marking their series stale."""
        self._client = self._http_client_factory(self.cfg)
        for files in self._files:
            files.poll()
        if previous is not None:
            await previous._stop_discovery()
        await self._sync(previous.loops if previous is not None else {})
        if previous is not None:
            await previous.stop(staleness=True)  # only the loops not taken over remain
        if self._files:
            self._task = asyncio.get_running_loop().create_task(self._discover())

    async def stop(self, *, staleness: bool) -> None:
        await self._stop_discovery()
        async with self._lock:
            for loop in self.loops.values():
                await loop.stop(staleness=staleness)
            self.loops.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _stop_discovery(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """A loop ticked: have discovery stat its files now."""
        if self._files:
            self._poke.set()

    async def refresh(self) -> bool:
        """Re-check file discovery; True when the targets were re-synced."""
        changed = False
        for files in self._files:
            changed |= files.poll()
        if changed:
            await self._sync({})
        return changed

    async def _discover(self) -> None:
        refresh = min(c.refresh_interval for c in self.cfg.file_sd_configs)
        while True:
            timer = asyncio.ensure_future(self._deps.sleep(refresh))
            poked = asyncio.ensure_future(self._poke.wait())
            try:
                await asyncio.wait({timer, poked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (timer, poked):
                    fut.cancel()
                await asyncio.gather(timer, poked, return_exceptions=True)
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("file discovery of job %s failed", self.cfg.job_name)

    async def _sync(self, inherited: dict[tuple[model.Labels, str], ScrapeLoop]) -> None:
        groups = static_groups(self.cfg) + [g for f in self._files for g in f.groups()]
        result = build_targets(self.cfg, groups)
        for message in result.errors:
            log.warning("dropping target: %s", message)
        wanted = {spec.key: spec for spec in result.active}
        async with self._lock:
            self.dropped = result.dropped
            for key, loop in list(self.loops.items()):
                spec = wanted.get(key)
                if spec is None:
                    del self.loops[key]
                    await loop.stop(staleness=True)
                elif (spec.interval, spec.timeout) != (loop.spec.interval, loop.spec.timeout):
                    del self.loops[key]
                    await loop.stop(staleness=False)
                    inherited[key] = loop
                else:
                    loop.spec = spec  # only the discovered labels can differ
            assert self._client is not None
            for key, spec in wanted.items():
                if key in self.loops:
                    continue
                loop = ScrapeLoop(self.cfg, spec, self._client, self._deps, self.poke)
                old = inherited.pop(key, None)
                if old is not None:
                    await old.stop(staleness=False)
                    loop.inherit(old)
                self.loops[key] = loop
                loop.start()


class ScrapeManager:
    """Every job's scrape pool, reloadable; the source of `/api/v1/targets`."""

    def __init__(
        self,
        config: Config,
        appender_factory: AppenderFactory,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        http_client_factory: HttpClientFactory = default_http_client,
        parse: ParseFn = exposition.parse,
        accept_header: str = exposition.ACCEPT_HEADER,
        offset_seed: int = 0,
        run_blocking: RunBlocking = asyncio.to_thread,
        line_cache: bool = True,
    ) -> None:
        self.counters = ScrapeCounters()
        self._config = config
        self._deps = LoopDeps(
            appender_factory=appender_factory,
            parse=parse,
            clock=clock,
            sleep=sleep,
            accept_header=accept_header,
            counters=self.counters,
            offset_seed=offset_seed,
            run_blocking=run_blocking,
            line_cache=line_cache,
        )
        self._http_client_factory = http_client_factory
        self._pools: dict[str, ScrapePool] = {}
        self._running = False
        self._lock = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self._config

    async def start(self) -> None:
        async with self._lock:
            if self._running:
                return
            self._running = True
            for cfg in self._config.scrape_configs:
                pool = ScrapePool(cfg, self._deps, self._http_client_factory)
                self._pools[cfg.job_name] = pool
                await pool.start()

    async def stop(self) -> None:
        """Shut down: no staleness markers, the targets did not go away."""
        async with self._lock:
            self._running = False
            for pool in self._pools.values():
                await pool.stop(staleness=False)
            self._pools.clear()

    async def apply_config(self, config: Config) -> None:
        """Reload: unchanged jobs keep running untouched; a changed job restarts its loops
        (state carried over per target); a removed job's targets are marked stale."""
        async with self._lock:
            self._config = config
            if not self._running:
                return
            wanted = {cfg.job_name: cfg for cfg in config.scrape_configs}
            for name in [n for n in self._pools if n not in wanted]:
                await self._pools.pop(name).stop(staleness=True)
            for name, cfg in wanted.items():
                old = self._pools.get(name)
                if old is not None and old.cfg == cfg:
                    continue
                pool = ScrapePool(cfg, self._deps, self._http_client_factory)
                self._pools[name] = pool
                await pool.start(previous=old)

    async def refresh_discovery(self) -> None:
        """Re-check every file_sd file now (what a SIGHUP-less reload of targets needs)."""
        async with self._lock:
            for pool in self._pools.values():
                await pool.refresh()

    def pool(self, job_name: str) -> ScrapePool | None:
        return self._pools.get(job_name)

    def targets(self) -> list[TargetStatus]:
        out = [loop.status() for pool in self._pools.values() for loop in pool.loops.values()]
        return sorted(out, key=lambda t: (t.scrape_pool, t.labels, t.url))

    def dropped_targets(self) -> list[DroppedTarget]:
        return [
            DroppedTarget(pool.cfg.job_name, labels)
            for pool in self._pools.values()
            for labels in pool.dropped
        ]

    def metadata(self) -> dict[tuple[model.Labels, str], dict[str, model.MetricMetadata]]:
        """The last scrape's metric metadata per target (key: target labels, URL)."""
        return {k: loop.metadata for pool in self._pools.values() for k, loop in pool.loops.items()}

    def targets_json(
        self,
        state: Literal["active", "dropped", "any"] = "any",
        scrape_pool: str | None = None,
        *,
        hostname: str | None = None,
    ) -> dict[str, Any]:
        """The `data` of Prometheus's `GET /api/v1/targets`."""
        host = hostname or socket.gethostname()
        active = [
            _active_json(t, host)
            for t in self.targets()
            if state != "dropped" and scrape_pool in (None, t.scrape_pool)
        ]
        dropped_all = [d for d in self.dropped_targets() if scrape_pool in (None, d.scrape_pool)]
        counts: dict[str, int] = {}
        for d in dropped_all:
            counts[d.scrape_pool] = counts.get(d.scrape_pool, 0) + 1
        dropped = [
            {"discoveredLabels": dict(d.discovered_labels), "scrapePool": d.scrape_pool}
            for d in dropped_all
            if state != "active"
        ]
        return {"activeTargets": active, "droppedTargets": dropped, "droppedTargetCounts": counts}


def _active_json(t: TargetStatus, hostname: str) -> dict[str, Any]:
    return {
        "discoveredLabels": dict(t.discovered_labels),
        "labels": dict(t.labels),
        "scrapePool": t.scrape_pool,
        "scrapeUrl": t.url,
        "globalUrl": global_url(t.url, hostname),
        "lastError": t.last_error,
        "lastScrape": rfc3339(t.last_scrape),
        "lastScrapeDuration": t.last_duration,
        "health": t.health,
        "scrapeInterval": format_duration(t.interval),
        "scrapeTimeout": format_duration(t.timeout),
    }


def global_url(url: str, hostname: str) -> str:
    """The scrape URL as another machine would reach it: loopback hosts become `hostname`."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return url
    netloc = hostname + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))
