"""The monitoring system's use cases, free of HTTP: the book's boxes wired together.

Collection (scrape manager, remote-write and line-protocol push) appends to the TSDB; the
query service evaluates PromQL over it (through the results cache for range queries); the
rule evaluator queries it on an interval and hands alerts to the notifier. `start`/`stop` run
the background loops: scraping, rule evaluation, notification, and TSDB maintenance
(compaction, downsampling, retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from scalelab.monitoring import chunk, line_protocol, remote_write
from scalelab.monitoring.errors import BadData, MonitoringError, OutOfOrderSample
from scalelab.monitoring.model import (
    Appender,
    Labels,
    Matcher,
    MetricMetadata,
    MetricType,
)
from scalelab.monitoring.notify import Notifier
from scalelab.monitoring.promql import Engine
from scalelab.monitoring.promql.ast import VectorSelector, unwrap
from scalelab.monitoring.promql.ast import parse as parse_promql
from scalelab.monitoring.query_cache import ResultsCache
from scalelab.monitoring.routing import load_config as load_notify_config
from scalelab.monitoring.rules import Alert, RuleManager
from scalelab.monitoring.scrape import ScrapeManager
from scalelab.monitoring.scrape_config import Config, load_config, load_config_file
from scalelab.monitoring.settings import DAY_MS, SCALELAB_TARGETS, MonitoringSettings
from scalelab.monitoring.tsdb import TSDB

log = logging.getLogger(__name__)

NO_RECEIVER = {"route": {"receiver": "none"}, "receivers": [{"name": "none"}]}
MAINTENANCE_INTERVAL_S = 60.0
RULE_WATCH_INTERVAL_S = 5.0


class Monitoring:
    """One monitoring server's state; `api.Service` is its shape as the HTTP API sees it."""

    def __init__(
        self, settings: MonitoringSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        chunk.DECODED.max_samples = settings.decoded_chunk_cache_samples
        self.tsdb = TSDB(
            settings.data_dir / "tsdb",
            block_range_ms=settings.block_duration_ms,
            retention_ms=(
                round(settings.retention_raw_days * DAY_MS),
                round(settings.retention_1m_days * DAY_MS),
                round(settings.retention_1h_days * DAY_MS),
            ),
            max_series=settings.max_active_series,
            wal_segment_bytes=settings.wal_segment_bytes,
        )
        try:
            self.cache = ResultsCache(settings.query_cache_entries)
            self.label_cache = remote_write.LabelCache()
            self.pushed_metadata: dict[str, MetricMetadata] = {}
            self.samples_rejected = 0
            self.scrape = ScrapeManager(self._scrape_config(), self.tsdb.appender, clock=clock)
            notify_config = (
                load_notify_config(settings.alertmanager_config)
                if settings.alertmanager_config is not None
                else NO_RECEIVER
            )
            self.notifier = Notifier(notify_config, data_dir=settings.data_dir, clock=clock)
            files = [f.strip() for f in settings.rule_files.split(",") if f.strip()]
            self.rules = RuleManager(
                files,
                self.engine(),
                self.tsdb.appender,
                self._notify,
                clock=clock,
                default_interval_s=settings.evaluation_interval_s,
                querier=self.tsdb,
            )
            self.rules.load()
        except BaseException:  # a bad config file: let go of the TSDB (and its lock)
            self.tsdb.close()
            raise
        self._tasks: list[asyncio.Task[None]] = []

    def _scrape_config(self) -> Config:
        path = self.settings.scrape_config
        if path is not None:
            return load_config_file(path)
        # No config: scrape whatever `scalelab up` lists (the other systems' /metrics).
        targets = json.dumps(str(self.settings.data_dir / SCALELAB_TARGETS))
        return load_config(
            "scrape_configs:\n  - job_name: scalelab\n    scrape_interval: 15s\n"
            "    file_sd_configs:\n"
            f"      - files: [{targets}]\n        refresh_interval: 5s\n"
        )

    def engine(self, timeout_ms: int | None = None) -> Engine:
        timeout = self.settings.query_timeout_s
        if timeout_ms is not None:
            timeout = min(timeout, timeout_ms / 1000)
        return Engine(
            self.tsdb,
            lookback_delta_ms=round(self.settings.lookback_delta_s * 1000),
            max_samples=self.settings.query_max_samples,
            timeout_s=timeout,
        )

    def now_ms(self) -> int:
        return round(self.clock() * 1000)

    # -- background loops ------------------------------------------------------------------

    async def start(self) -> None:
        await self.scrape.start()
        self._tasks = [
            asyncio.create_task(self.rules.run(), name="rules"),
            asyncio.create_task(self.notifier.run(), name="notifier"),
            asyncio.create_task(self._maintain_loop(), name="tsdb maintenance"),
            asyncio.create_task(self._watch_rules(), name="rule file watch"),
        ]

    async def stop(self) -> None:
        await self.scrape.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.notifier.aclose()
        self.tsdb.close()

    async def _maintain_loop(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                await asyncio.to_thread(self.tsdb.maintain, self.now_ms())
            except Exception:  # a failed compaction is retried on the next round
                log.exception("TSDB maintenance failed")

    async def reload(self) -> None:
        """`POST /-/reload`: scrape config and rule files again; a bad file keeps the old
        ones and the error goes back to the caller."""
        config = self._scrape_config()
        self.rules.load()
        await self.scrape.apply_config(config)

    async def _watch_rules(self) -> None:
        """Rule files are also reloaded when they change on disk."""
        while True:
            await asyncio.sleep(RULE_WATCH_INTERVAL_S)
            await asyncio.to_thread(self.rules.reload_if_changed)

    def _notify(self, alerts: list[Alert]) -> None:
        self.notifier.receive_json([a.to_postable() for a in alerts])

    # -- queries ---------------------------------------------------------------------------

    def query(self, query: str, time_ms: int, timeout_ms: int | None) -> dict[str, Any]:
        return self.engine(timeout_ms).instant(query, time_ms).to_json()

    def query_range(
        self, query: str, start_ms: int, end_ms: int, step_ms: int, timeout_ms: int | None
    ) -> dict[str, Any]:
        engine = self.engine(timeout_ms)

        def run(lo: int, hi: int) -> dict[str, Any]:
            return engine.range(query, lo, hi, step_ms).to_json()

        return self.cache.range_query(query, start_ms, end_ms, step_ms, self.now_ms(), run)

    def _matchers(self, matches: list[str]) -> list[list[Matcher]]:
        out = []
        for text in matches:
            try:
                out.append(selector_matchers(text))
            except (BadData, ValueError) as exc:
                raise BadData(f'invalid parameter "match[]": {exc}') from None
        return out

    def _select_labels(self, matches: list[str], start_ms: int, end_ms: int) -> set[Labels]:
        found: set[Labels] = set()
        for matchers in self._matchers(matches):
            found.update(s.labels for s in self.tsdb.select(matchers, start_ms, end_ms))
        return found

    def series(self, matches: list[str], start_ms: int, end_ms: int) -> list[dict[str, str]]:
        return [dict(labels) for labels in sorted(self._select_labels(matches, start_ms, end_ms))]

    def label_names(self, matches: list[str], start_ms: int, end_ms: int) -> list[str]:
        if not matches:
            return self.tsdb.label_names([], start_ms, end_ms)
        names: set[str] = set()
        for matchers in self._matchers(matches):
            names.update(self.tsdb.label_names(matchers, start_ms, end_ms))
        return sorted(names)

    def label_values(self, name: str, matches: list[str], start_ms: int, end_ms: int) -> list[str]:
        if not matches:
            return self.tsdb.label_values(name, [], start_ms, end_ms)
        values: set[str] = set()
        for matchers in self._matchers(matches):
            values.update(self.tsdb.label_values(name, matchers, start_ms, end_ms))
        return sorted(values)

    def metadata(self, metric: str | None, limit: int | None) -> dict[str, list[dict[str, str]]]:
        """Prometheus's /api/v1/metadata: per metric family, the distinct metadata seen."""
        seen: dict[str, list[MetricMetadata]] = {}

        def note(name: str, meta: MetricMetadata) -> None:
            if metric is not None and name != metric:
                return
            known = seen.setdefault(name, [])
            if meta not in known:
                known.append(meta)

        for per_target in self.scrape.metadata().values():
            for name, meta in per_target.items():
                note(name, meta)
        for name, meta in self.pushed_metadata.items():
            note(name, meta)
        names = sorted(seen)
        if limit is not None and limit >= 0:
            names = names[:limit]
        return {
            n: [{"type": m.type.value, "help": m.help, "unit": m.unit} for m in seen[n]]
            for n in names
        }

    # -- push ingestion --------------------------------------------------------------------

    def _append_all(self, samples: list[tuple[Labels, int, float]]) -> None:
        app: Appender = self.tsdb.appender()
        try:
            for labels, t, v in samples:
                app.append(labels, t, v)
            app.commit()
        except MonitoringError as exc:
            app.rollback()
            if isinstance(exc, OutOfOrderSample):
                self.samples_rejected += len(samples)
            raise

    def remote_write(
        self, body: bytes, content_encoding: str | None, content_type: str | None
    ) -> None:
        request = remote_write.decode_write_request(
            body,
            content_encoding=content_encoding,
            content_type=content_type,
            max_decompressed_bytes=self.settings.remote_write_max_bytes,
            label_cache=self.label_cache,
        )
        for name, meta in request.metadata:
            self.pushed_metadata[name] = meta
        self._append_all(list(request.samples()))

    def push_lines(self, body: bytes) -> int:
        samples = line_protocol.parse_lines(body)
        for labels, _t, _v in samples:
            name = dict(labels)["__name__"]
            self.pushed_metadata.setdefault(name, MetricMetadata(MetricType.UNKNOWN))
        self._append_all(samples)
        return len(samples)

    # -- status ----------------------------------------------------------------------------

    def targets(self, state: str | None) -> dict[str, Any]:
        wanted = state if state in ("active", "dropped", "any") else "any"
        return self.scrape.targets_json(wanted)  # type: ignore[arg-type]

    def rules_json(self) -> dict[str, Any]:
        return self.rules.rules_json()

    def alerts_json(self) -> dict[str, Any]:
        return self.rules.alerts_json()

    # Alertmanager's API v2, on the event loop's thread as the notifier wants

    def am_alerts(self, filters: list[str]) -> list[dict[str, Any]]:
        return self.notifier.alerts_json(filter=filters)

    def am_receive(self, body: Any) -> None:
        self.notifier.receive_json(body)

    def silences(self, filters: list[str]) -> list[dict[str, Any]]:
        return self.notifier.silences_json(filters)

    def create_silence(self, body: Any) -> dict[str, str]:
        if not isinstance(body, dict):
            raise BadData("a silence is a JSON object")
        return self.notifier.create_silence_json(body)

    def silence(self, silence_id: str) -> dict[str, Any]:
        return self.notifier.silence_json(silence_id)

    def expire_silence(self, silence_id: str) -> None:
        self.notifier.expire_silence(silence_id)


def selector_matchers(text: str) -> list[Matcher]:
    """A series selector (`up{job="x"}`) as matchers; what `match[]` parameters carry."""
    expr = unwrap(parse_promql(text))
    if not isinstance(expr, VectorSelector) or expr.offset_ms or expr.at is not None:
        raise BadData(f"{text!r} is not a series selector")
    return list(expr.matchers)
