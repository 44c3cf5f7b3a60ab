"""One target's scrape loop: schedule, fetch, parse, relabel, append, report, staleness.

`ScrapeLoop` is what `scrape.ScrapePool` runs per target. It wakes on the target's phase
(a hash of its labels and URL, xor a seed, modulo the interval: the same target always
scrapes at the same offset, and many targets spread over the interval), GETs the target
under `scrape_timeout` (raced against the injected clock's sleep, so timeouts run on virtual
time in tests), then writes one Appender transaction: the samples after target labels and
`metric_relabel_configs`, staleness markers for series that vanished, and the report series.

Counting follows Prometheus: `scrape_samples_scraped` is what the body held,
`scrape_samples_post_metric_relabeling` what survived relabeling (counted even past the sample
limit, so the report says by how much it was exceeded), `scrape_series_added` the series that
were not in the previous successful scrape. Duplicate (same series and timestamp) and
out-of-order samples are counted and skipped; sample, label and series limits void the scrape.

Per target, as Prometheus's scrapeCache: a known series line is not parsed again, only its
value; its labels are relabelled and checked once; and its series is appended by the ref the
storage returned last time (scrape_cache.py). `LoopDeps.line_cache=False` turns that off.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from scalelab.monitoring import errors, exposition, model
from scalelab.monitoring.discovery import TargetSpec
from scalelab.monitoring.relabel import relabel
from scalelab.monitoring.scrape_cache import (
    CHECKED,
    RELABELLED,
    UNRESOLVED,
    CachedLine,
    LineCache,
    ParsedScrape,
    SeriesSlot,
)
from scalelab.monitoring.scrape_config import ScrapeConfig, format_duration

log = logging.getLogger(__name__)

ParseFn = Callable[[bytes, str | None], model.Exposition]
AppenderFactory = Callable[[], model.Appender]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
RunBlocking = Callable[..., Awaitable[Any]]

REPORT_SERIES = (
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
)


@dataclass
class ScrapeCounters:
    """Scrape counters of one manager; `as_metrics` names them as Prometheus does where it
    has such a metric (the series-limit one is ours: Prometheus has no storage series limit)."""

    scrapes_total: int = 0
    failed_scrapes_total: int = 0
    exceeded_sample_limit_total: int = 0
    exceeded_label_limits_total: int = 0
    exceeded_series_limit_total: int = 0
    sample_out_of_order_total: int = 0
    sample_duplicate_timestamp_total: int = 0

    def as_metrics(self) -> dict[str, int]:
        """Prometheus metric names -> values, for the server's own /metrics."""
        return {
            "prometheus_target_scrapes_total": self.scrapes_total,
            "prometheus_target_scrapes_failed_total": self.failed_scrapes_total,
            "prometheus_target_scrapes_exceeded_sample_limit_total": (
                self.exceeded_sample_limit_total
            ),
            "prometheus_target_scrape_pool_exceeded_label_limits_total": (
                self.exceeded_label_limits_total
            ),
            "prometheus_target_scrapes_exceeded_series_limit_total": (
                self.exceeded_series_limit_total
            ),
            "prometheus_target_scrapes_sample_out_of_order_total": self.sample_out_of_order_total,
            "prometheus_target_scrapes_sample_duplicate_timestamp_total": (
                self.sample_duplicate_timestamp_total
            ),
        }


Health = Literal["unknown", "up", "down"]


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """A snapshot of one active target, what `/api/v1/targets` reports."""

    scrape_pool: str
    url: str
    labels: model.Labels
    discovered_labels: model.Labels
    health: Health
    last_scrape: float | None  # seconds since the epoch; None before the first scrape
    last_duration: float
    last_error: str
    last_samples: int
    interval: float
    timeout: float


@dataclass(frozen=True, slots=True)
class DroppedTarget:
    scrape_pool: str
    discovered_labels: model.Labels


@dataclass(frozen=True, slots=True)
class LoopDeps:
    """What every loop of one manager shares: storage, parser, time, counters."""

    appender_factory: AppenderFactory
    parse: ParseFn
    clock: Clock
    sleep: Sleep
    accept_header: str
    counters: ScrapeCounters
    offset_seed: int
    # runs parsing and commits off the event loop (asyncio.to_thread); tests on virtual time
    # run them inline
    run_blocking: RunBlocking
    # False: parse every body in full and append by label set, as before the line cache and
    # series refs (scrape_cache.py); what the tests check the fast path against
    line_cache: bool = True


# Stamps of append passes (SeriesSlot.stamp); global, since a reloaded loop takes slots over
_PASSES = itertools.count(1)


class _ScrapeFailed(Exception):
    """The scrape is void: roll back, report up=0, mark the previous series stale."""

    def __init__(self, message: str, scraped: int, post: int) -> None:
        super().__init__(message)
        self.scraped, self.post = scraped, post


def _fnv1a(parts: Iterable[str]) -> int:
    h = 0xCBF29CE484222325
    for part in parts:
        for byte in part.encode() + b"\xff":
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _merge_target_labels(sample: model.Labels, target: model.Labels, honor: bool) -> dict[str, str]:
    """Target labels onto a scraped series: scraped values win with honor_labels; otherwise a
    clashing scraped label survives as exported_<name> (exported_exported_<name> ...)."""
    lb = dict(sample)
    if honor:
        for name, value in target:
            if not lb.get(name):
                lb[name] = value
        return lb
    clashes = [(name, lb[name]) for name, _ in target if lb.get(name)]
    lb.update(target)
    for name, value in sorted(clashes, key=lambda c: len(c[0])):
        exported = "exported_" + name
        while lb.get(exported):
            exported = "exported_" + exported
        lb[exported] = value
    return lb


class ScrapeLoop:
    """Scrapes one target forever; owns its staleness state and its `/targets` status."""

    def __init__(
        self,
        cfg: ScrapeConfig,
        spec: TargetSpec,
        client: httpx.AsyncClient,
        deps: LoopDeps,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self._client = client
        self._deps = deps
        self._on_tick = on_tick
        self.health: Health = "unknown"
        self.last_scrape: float | None = None
        self.last_duration = 0.0
        self.last_error = ""
        self.last_samples = 0
        self.metadata: dict[str, model.MetricMetadata] = {}
        self._prev_tracked: set[SeriesSlot] = set()  # series to mark stale when they vanish
        self._prev_seen: set[SeriesSlot] = set()  # series of the last scrape (series_added)
        # one slot per series label set: the sets above compare slots by identity
        self._slots: dict[model.Labels, SeriesSlot] = {}
        self._lines = LineCache()  # series lines -> parsed, relabelled (per target and config)
        self._last_t = -(2**62)  # newest timestamp this loop wrote (ms)
        self._hash = _fnv1a([*(f"{k}={v}" for k, v in spec.labels), spec.url])
        self._report_labels = {
            name: model.with_label(spec.labels, model.METRIC_NAME, name) for name in REPORT_SERIES
        }
        self._task: asyncio.Task[None] | None = None

    def status(self) -> TargetStatus:
        return TargetStatus(
            self.cfg.job_name,
            self.spec.url,
            self.spec.labels,
            self.spec.discovered_labels,
            self.health,
            self.last_scrape,
            self.last_duration,
            self.last_error,
            self.last_samples,
            self.spec.interval,
            self.spec.timeout,
        )

    def inherit(self, old: ScrapeLoop) -> None:
        """Take over a replaced loop's state so a reload neither re-marks nor loses series."""
        self.health = old.health
        self.last_scrape = old.last_scrape
        self.last_duration = old.last_duration
        self.last_error = old.last_error
        self.last_samples = old.last_samples
        self.metadata = old.metadata
        self._prev_tracked = old._prev_tracked
        self._prev_seen = old._prev_seen
        self._slots = dict(old._slots)  # not its line cache: that depends on the config
        self._last_t = old._last_t

    def next_scrape_time(self, now: float) -> float:
        """The first time >= now on this target's phase (hash ^ seed) mod interval, and after
        any scrape already done (an inherited loop must not scrape the same instant twice)."""
        interval_ms = max(1, round(self.spec.interval * 1000))
        phase = (self._hash ^ self._deps.offset_seed) % interval_ms
        now_ms = now * 1000
        t = math.floor(now_ms / interval_ms) * interval_ms + phase
        if t < now_ms:
            t += interval_ms
        if self.last_scrape is not None and t <= self.last_scrape * 1000:
            t += interval_ms * (math.floor((self.last_scrape * 1000 - t) / interval_ms) + 1)
        return t / 1000

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, staleness: bool) -> None:
        """Cancel the loop; with staleness (target gone), mark all its series stale."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if staleness and self.last_scrape is not None:
            self._write_end_staleness()

    async def _run(self) -> None:
        clock = self._deps.clock
        interval = self.spec.interval
        next_t = self.next_scrape_time(clock())
        while True:
            delay = next_t - clock()
            if delay > 0.0005:
                await self._deps.sleep(delay)
                continue
            try:
                await self.scrape_once()
            except Exception as exc:  # a bug must not end the loop: record it and go on
                log.exception("scrape of %s failed unexpectedly", self.spec.url)
                self.health, self.last_error = "down", f"{type(exc).__name__}: {exc}"
            self._on_tick()
            next_t += interval
            now = clock()
            if next_t <= now:  # overran: skip the missed ticks, keep the phase
                next_t += interval * (math.floor((now - next_t) / interval) + 1)

    async def scrape_once(self) -> None:
        """One scrape at the clock's now: fetch, parse, append, report, commit."""
        deps = self._deps
        start = deps.clock()
        t_ms = max(round(start * 1000), self._last_t + 1)
        deps.counters.scrapes_total += 1
        error = ""
        parsed: ParsedScrape | None = None
        try:
            body, content_type = await self._fetch()
            # Parsing and the WAL's fdatasync run on worker threads: a big target or a slow
            # disk must not hold up other targets' scrapes and the API on the event loop.
            self._lines.validate((self.cfg, self.spec.labels))
            parsed = await deps.run_blocking(self._parse, body, content_type)
        except asyncio.CancelledError:
            raise
        except errors.ParseError as exc:
            error = f"parse error: {exc}"
        except httpx.TimeoutException as exc:
            error = f'Get "{self.spec.url}": timeout: {type(exc).__name__}: {exc}'
        except httpx.HTTPError as exc:
            error = f'Get "{self.spec.url}": {type(exc).__name__}: {exc}'
        except _ScrapeFailed as exc:
            error = str(exc)
        except Exception as exc:  # OSError from a credentials file, a parser bug ...
            error = f"{type(exc).__name__}: {exc}"

        app = deps.appender_factory()
        scraped = post = added = 0
        cur_tracked: set[SeriesSlot] = set()
        if parsed is not None:
            try:
                scraped, post, added, cur_tracked = self._append_samples(app, parsed, t_ms)
            except Exception as exc:  # a limit, or the storage failing: nothing is kept
                app.rollback()
                app = deps.appender_factory()
                if isinstance(exc, _ScrapeFailed):
                    error, scraped, post = str(exc), exc.scraped, exc.post
                else:
                    log.warning("appending the scrape of %s failed: %s", self.spec.url, exc)
                    error = f"append failed: {type(exc).__name__}: {exc}"
        stale = self._prev_tracked - cur_tracked if not error else self._prev_tracked
        self._prev_tracked = cur_tracked
        if error:
            added = 0
        for series in stale:
            self._append_quietly(app, series.labels, t_ms, model.STALE_NAN)
        duration = max(0.0, deps.clock() - start)
        report = (0.0 if error else 1.0, duration, float(scraped), float(post), float(added))
        for name, value in zip(REPORT_SERIES, report, strict=True):
            self._append_quietly(app, self._report_labels[name], t_ms, value)
        try:
            await deps.run_blocking(app.commit)
        except Exception as exc:
            log.warning("commit of the scrape of %s failed: %s", self.spec.url, exc)
            error = error or f"storage: {exc}"
        self._last_t = t_ms
        if error:
            deps.counters.failed_scrapes_total += 1
        elif parsed is not None:
            self.metadata = parsed.metadata
        self.health = "down" if error else "up"
        self.last_error, self.last_scrape, self.last_duration = error, start, duration
        self.last_samples = scraped

    async def _fetch(self) -> tuple[bytes, str | None]:
        headers = {
            "Accept": self._deps.accept_header,
            "X-Prometheus-Scrape-Timeout-Seconds": model.float_repr(self.spec.timeout),
        }
        if not self.cfg.enable_compression:
            headers["Accept-Encoding"] = "identity"
        request = asyncio.ensure_future(
            self._client.get(self.spec.url, headers=headers, timeout=self.spec.timeout)
        )
        deadline = asyncio.ensure_future(self._deps.sleep(self.spec.timeout))
        try:
            await asyncio.wait({request, deadline}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (request, deadline):
                fut.cancel()
            await asyncio.gather(request, deadline, return_exceptions=True)
        if request.cancelled():
            raise _ScrapeFailed(
                f'Get "{self.spec.url}": context deadline exceeded '
                f"(scrape_timeout {format_duration(self.spec.timeout)})",
                0,
                0,
            )
        response = request.result()
        if response.status_code != 200:
            raise _ScrapeFailed(
                f"server returned HTTP status {response.status_code} {response.reason_phrase}",
                0,
                0,
            )
        return response.content, response.headers.get("content-type")

    def _parse(self, body: bytes, content_type: str | None) -> ParsedScrape:
        """The body's samples, each with its cached line (on a worker thread)."""
        deps = self._deps
        fast = deps.line_cache and deps.parse is exposition.parse
        return self._lines.parse(body, content_type, deps.parse, fast=fast)

    def _append_samples(
        self, app: model.Appender, parsed: ParsedScrape, t_ms: int
    ) -> tuple[int, int, int, set[SeriesSlot]]:
        """Append the scraped samples; returns (scraped, post-relabel, series added, tracked).
        Raises _ScrapeFailed on a sample, label or series limit.

        A line is relabelled and checked against the label limits once, when first met; a
        series is appended by the ref the storage gave it last time when the storage can."""
        cfg, counters = self.cfg, self._deps.counters
        limit, honor = cfg.sample_limit, cfg.honor_timestamps
        by_ref = None
        if self._deps.line_cache and isinstance(app, model.RefAppender):
            by_ref = app.append_ref
            app.hold([s.ref for s in self._slots.values() if s.ref is not None])
        stamp = next(_PASSES)
        scraped = post = added = reached = 0
        # series appended to, and those of them without explicit timestamps, listed once
        # each (a slot's stamps say whether it already is): cheaper than adding to sets
        seen_series: list[SeriesSlot] = []
        tracked: list[SeriesSlot] = []
        prev_seen = self._prev_seen
        later: set[tuple[SeriesSlot, int]] = set()  # (series, t) but its first in this scrape
        unresolved, checked = UNRESOLVED, CHECKED
        for line, value, ts in zip(parsed.lines, parsed.values, parsed.stamps, strict=True):
            scraped += 1
            if line.state == unresolved:
                self._resolve(line)
            series = line.series
            if series is None:
                continue
            post += 1
            if limit and post > limit:
                continue  # keep counting, so the report says how many there were
            if line.state != checked:
                self._check_labels(series.labels, scraped, post)
                line.state = checked
            explicit = honor and ts is not None
            t = ts if explicit and ts is not None else t_ms
            if series.stamp != stamp:  # its first sample in this scrape
                series.stamp, series.t = stamp, t
                reached += 1
            elif t == series.t or (series, t) in later:
                counters.sample_duplicate_timestamp_total += 1
                continue
            else:
                later.add((series, t))
            try:
                if by_ref is None:
                    app.append(series.labels, t, value)
                else:
                    series.ref = by_ref(series.ref, series.labels, t, value)
            except errors.OutOfOrderSample:
                counters.sample_out_of_order_total += 1
                continue
            except errors.LimitExceeded as exc:
                counters.exceeded_series_limit_total += 1
                raise _ScrapeFailed(f"series limit exceeded: {exc}", scraped, post) from None
            if series.seen != stamp:
                series.seen = stamp
                seen_series.append(series)
                added += series not in prev_seen
            if not explicit and series.tracked != stamp:
                series.tracked = stamp
                tracked.append(series)
        if limit and post > limit:
            counters.exceeded_sample_limit_total += 1
            raise _ScrapeFailed(f"sample limit exceeded (limit {limit}, got {post})", scraped, post)
        self._prev_seen = set(seen_series)
        if len(self._slots) > reached:  # some series are no longer scraped: forget them
            slots = self._slots
            for lset in [lset for lset, s in slots.items() if s.stamp != stamp]:
                del slots[lset]
        return scraped, post, added, set(tracked)

    def _resolve(self, line: CachedLine) -> None:
        """Relabel a line once; lines that end up with one label set share its slot."""
        lset = self._mutate(line.raw)
        if lset is not None:
            series = self._slots.get(lset)
            if series is None:
                series = self._slots[lset] = SeriesSlot(lset)
            line.series = series
        line.state = RELABELLED

    def _mutate(self, raw: model.Labels) -> model.Labels | None:
        merged = _merge_target_labels(raw, self.spec.labels, self.cfg.honor_labels)
        return relabel(model.labels_of(merged), self.cfg.metric_relabel_configs)

    def _check_labels(self, lset: model.Labels, scraped: int, post: int) -> None:
        cfg = self.cfg
        name = model.metric_name(lset)
        if not name:
            raise _ScrapeFailed("__name__ label is missing after relabeling", scraped, post)
        problem = ""
        if cfg.label_limit and len(lset) > cfg.label_limit:
            problem = f"label_limit exceeded (metric: {name}, labels: {len(lset)}, limit: "
            problem += f"{cfg.label_limit})"
        name_limit, value_limit = cfg.label_name_length_limit, cfg.label_value_length_limit
        if name_limit or value_limit:
            for k, v in lset:
                if name_limit and len(k) > name_limit:
                    problem = f"label_name_length_limit exceeded (metric: {name}, label: {k})"
                elif value_limit and len(v) > value_limit:
                    problem = f"label_value_length_limit exceeded (metric: {name}, label: {k})"
        if problem:
            self._deps.counters.exceeded_label_limits_total += 1
            raise _ScrapeFailed(problem, scraped, post)

    def _append_quietly(self, app: model.Appender, labels: model.Labels, t: int, v: float) -> None:
        """Markers and report samples: an out-of-order or over-limit one is simply skipped."""
        try:
            app.append(labels, t, v)
        except errors.MonitoringError as exc:
            log.debug("skipped %s: %s", model.format_labels(labels), exc)

    def _write_end_staleness(self) -> None:
        """The target is gone: its scraped series and its report series end here."""
        t_ms = max(round(self._deps.clock() * 1000), self._last_t + 1)
        app = self._deps.appender_factory()
        for labels in [*(s.labels for s in self._prev_tracked), *self._report_labels.values()]:
            self._append_quietly(app, labels, t_ms, model.STALE_NAN)
        try:
            app.commit()
        except Exception as exc:
            log.warning("stale markers for %s not written: %s", self.spec.url, exc)
        self._prev_tracked = set()
        self._last_t = t_ms
