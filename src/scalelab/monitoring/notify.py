"""Notification, as Alertmanager does it, in-process: the book's "alert manager" box.

The rule evaluator hands its alerts to `Notifier.receive` every evaluation. Each alert walks
the routing tree (first matching child wins unless it says `continue`) into aggregation groups,
one per route and group_by label values. A group waits `group_wait` before its first
notification, then is looked at every `group_interval`; per integration a notification goes
out only when it changed (a new firing alert; a newly resolved one if `send_resolved`), or when
`repeat_interval` has passed since the last one (measured flush to flush). Silenced and
inhibited alerts are left out; resolved alerts are sent once and then dropped from the group.

A failed send is retried with exponential backoff and full jitter (the injected seeded
`random.Random`) until the group's next flush; the per-integration delivery state machine is
the table `DELIVERY_TRANSITIONS` in delivery.py. Time is injected (`clock`, `sleep`):
`tick(now)` does one step on virtual time for tests, `run()` loops on it for the server.

Times are float seconds since the epoch. What Alertmanager persists besides silences (its
notification log) is kept in memory here: after a restart a still-firing group notifies again.

The alert as it comes in (`Alert`, its fingerprint, how repeats merge) is in alert_intake.py,
the routing tree and receivers list in routing.py, the integrations in receivers.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from scalelab.monitoring.alert_intake import Alert, Stored, fingerprint, merge_alert, str_map
from scalelab.monitoring.delivery import (
    Delivery,
    DeliveryEvent,
    IntegrationDelivery,
    LogEntry,
    needs_update,
)
from scalelab.monitoring.errors import BadData
from scalelab.monitoring.model import (
    Labels,
    Matcher,
    MatchType,
    get,
    labels_of,
    matches_all,
    valid_label_name,
)
from scalelab.monitoring.receivers import (
    ConfigError,
    DeliveryError,
    Notification,
    NotifiedAlert,
    SendContext,
    register_receiver,
    rfc3339,
)
from scalelab.monitoring.routing import (
    InhibitRule,
    NotifyConfig,
    Route,
    load_config,
    parse_config,
)
from scalelab.monitoring.silences import Silences, parse_matcher

__all__ = [
    "Alert",
    "ConfigError",
    "InhibitRule",
    "Notifier",
    "NotifyConfig",
    "Route",
    "fingerprint",
    "load_config",
    "parse_config",
    "register_receiver",
]

log = logging.getLogger(__name__)

MAX_IDLE = 60.0  # run() looks again at least this often (silences expire, alerts time out)


# --- aggregation groups ---------------------------------------------------------------------


@dataclass(eq=False)
class _Flush:
    """A flush's deliveries still outstanding, and the resolved alerts it may then drop."""

    resolved: dict[str, Stored]
    outstanding: int = 0
    failed: bool = False


@dataclass(eq=False)
class _Group:
    route: Route
    labels: dict[str, str]
    key: str
    deliveries: list[IntegrationDelivery]
    next_flush: float
    alerts: dict[str, Stored] = field(default_factory=dict)
    flushed: bool = False
    open_flush: _Flush | None = None


def group_key(route: Route, labels: Mapping[str, str]) -> str:
    """Alertmanager's groupKey: `<route key>:{name="value", ...}`."""
    inner = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items()))
    return f"{route.key}:{{{inner}}}"


# --- the notifier ---------------------------------------------------------------------------


class Notifier:
    """Groups, deduplicates, silences, inhibits and delivers alerts; see the module doc.

    `data_dir` is the monitoring system's folder: `silences.json` lives there (None keeps
    silences in memory only). State is touched only on the event loop's thread, without
    locks; while `run()` is going, `receive` called from another thread (the rule evaluator
    evaluates in a worker thread) hops onto the loop and waits there.
    """

    def __init__(
        self,
        config: NotifyConfig | str | Mapping[str, Any],
        *,
        data_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        id_rng: random.Random | None = None,
        http: httpx.AsyncClient | None = None,
        external_url: str = "",
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        send_timeout: float = 30.0,
    ) -> None:
        self.config = config if isinstance(config, NotifyConfig) else parse_config(config)
        self.silences = Silences(data_dir, clock, id_rng)
        self.external_url = external_url
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = http
        self._own_http = http is None
        self._retry_base, self._retry_max = retry_base, retry_max
        self._send_timeout = send_timeout
        self._alerts: dict[str, Stored] = {}
        self._groups: dict[tuple[int, Labels], _Group] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        # Counters per receiver name, read by /metrics.
        self.notifications_sent: Counter[str] = Counter()
        self.notifications_failed: Counter[str] = Counter()  # given up after retries
        self.requests_total: Counter[str] = Counter()
        self.requests_failed: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    # -- alerts in --

    def receive(self, alerts: Iterable[Alert], now: float | None = None) -> None:
        """Take a batch of alerts (each evaluation). Invalid ones are reported together in one
        BadData after the valid ones are taken, as Alertmanager's API does."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            batch = list(alerts)

            async def on_loop() -> None:
                self.receive(batch, now)

            asyncio.run_coroutine_threadsafe(on_loop(), loop).result()
            return
        t = self._clock() if now is None else now
        errors: list[str] = []
        for i, alert in enumerate(alerts):
            try:
                stored = self._admit(alert, t)
            except BadData as exc:
                errors.append(f"alert {i}: {exc}")
                continue
            stored = merge_alert(self._alerts.get(stored.fp), stored, t)
            self._alerts[stored.fp] = stored
            for route in self.config.route.match(stored.labels):
                self._insert(route, stored, t)
        if self._wake is not None:
            self._wake.set()
        if errors:
            raise BadData("; ".join(errors))

    def receive_json(self, body: Any, now: float | None = None) -> None:
        """POST /api/v2/alerts: a JSON list of postable alerts."""
        if not isinstance(body, list):
            raise BadData("expected a JSON list of alerts")
        self.receive([Alert.from_json(a) for a in body], now)

    def _admit(self, alert: Alert, now: float) -> Stored:
        if not alert.labels:
            raise BadData("at least one label pair required")
        str_map(alert.labels, "labels")
        str_map(alert.annotations, "annotations")
        bad = [n for n in alert.labels if not valid_label_name(n)]
        if bad:
            raise BadData(f"invalid label names {bad}")
        for t in (alert.starts_at, alert.ends_at):
            if t is not None and (not isinstance(t, int | float) or not math.isfinite(t)):
                raise BadData(f"invalid time {t!r}")
        start, end = alert.starts_at, alert.ends_at
        if start is not None and end is not None and end < start:
            raise BadData("start time must be before end time")
        if start is None:
            start = now if end is None else end
        timeout = end is None
        if end is None:
            end = now + self.config.globals.resolve_timeout
        return Stored(alert, alert.fingerprint, labels_of(alert.labels), start, end, timeout, now)

    def _insert(self, route: Route, stored: Stored, now: float) -> None:
        glabels = route.group_labels(stored.alert.labels)
        key = (route.index, tuple(sorted(glabels.items())))
        group = self._groups.get(key)
        if group is None:
            deliveries = [
                IntegrationDelivery(route.receiver, i)
                for i in self.config.receivers[route.receiver]
            ]
            gk = group_key(route, glabels)
            group = _Group(route, glabels, gk, deliveries, now + route.group_wait)
            self._groups[key] = group
        group.alerts[stored.fp] = stored
        # An alert older than group_wait (say, after a restart) need not wait again.
        if not group.flushed and stored.starts_at + route.group_wait < now:
            group.next_flush = min(group.next_flush, now)

    # -- muting --

    def _inhibited_by(self, a: Stored, now: float) -> list[str]:
        found: set[str] = set()
        for rule in self.config.inhibit_rules:
            if not matches_all(a.labels, rule.target_matchers):
                continue
            also_source = matches_all(a.labels, rule.source_matchers)
            for s in self._alerts.values():
                if s.resolved(now) or (also_source and s.fp == a.fp):
                    continue
                if matches_all(s.labels, rule.source_matchers) and all(
                    get(s.labels, n) == get(a.labels, n) for n in rule.equal
                ):
                    found.add(s.fp)
        return sorted(found)

    def _muted(self, a: Stored, now: float) -> bool:
        return bool(self.silences.silenced_by(a.labels, now) or self._inhibited_by(a, now))

    # -- the clock drives the rest --

    async def tick(self, now: float | None = None) -> None:
        """One step: give up expired retries, run due retries and due group flushes, and wait
        for those sends. What is due at `now` is decided at the start of the step."""
        t = self._clock() if now is None else now
        self._gc(t)
        work = self._start_due(t, lambda: t)  # the whole step happens at `now`
        if work:
            await asyncio.gather(*work)

    async def run(self) -> None:
        """Flush and retry as time passes, until cancelled. Sends run as tasks, so one slow
        receiver does not hold up other groups; a group waits for its own sends."""
        self._wake = asyncio.Event()
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        running: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("notification task failed", exc_info=task.exception())
            if self._wake is not None:
                self._wake.set()

        try:
            while True:
                self._wake.clear()
                now = self._clock()
                self._gc(now)
                for coro in self._start_due(now, self._clock):
                    task = asyncio.create_task(coro)
                    running.add(task)
                    task.add_done_callback(done)
                await self._nap(min(max(self._next_due(now) - now, 0.0), MAX_IDLE))
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._wake = self._loop = None

    async def _nap(self, delay: float) -> None:
        """Sleep (the injected way) until `delay` passes or new alerts arrive."""
        assert self._wake is not None

        async def sleeping() -> None:
            await self._sleep(delay)

        waiters = {asyncio.create_task(sleeping()), asyncio.create_task(self._wake.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    def _next_due(self, now: float) -> float:
        due = now + MAX_IDLE
        for g in self._groups.values():
            if g.open_flush is None:
                due = min(due, g.next_flush)
            for d in g.deliveries:
                if d.state is Delivery.BACKOFF:
                    due = min(due, d.retry_at, d.deadline)
        return due

    def _gc(self, now: float) -> None:
        """Forget resolved alerts no group holds any more, and long-expired silences."""
        held = {fp for g in self._groups.values() for fp in g.alerts}
        for fp in [fp for fp, a in self._alerts.items() if a.resolved(now) and fp not in held]:
            del self._alerts[fp]
        self.silences.gc(now)

    def _start_due(self, now: float, clock: Callable[[], float]) -> list[Coroutine[Any, Any, None]]:
        work: list[Coroutine[Any, Any, None]] = []
        for g in list(self._groups.values()):
            for d in g.deliveries:
                if d.state is not Delivery.BACKOFF:
                    continue
                if now >= d.deadline:
                    self._give_up(g, d, "the group's next flush is due")
                elif now >= d.retry_at:
                    d.step(DeliveryEvent.SEND)
                    work.append(self._attempt(g, d, clock))
        for g in list(self._groups.values()):
            if g.open_flush is None and g.next_flush <= now:
                work.extend(self._flush(g, now, clock))
        return work

    def _flush(
        self, g: _Group, now: float, clock: Callable[[], float]
    ) -> list[Coroutine[Any, Any, None]]:
        g.next_flush = now + g.route.group_interval
        g.flushed = True
        alerts = sorted(g.alerts.values(), key=lambda a: sorted(a.alert.labels.items()))
        flush = _Flush({a.fp: a for a in alerts if a.resolved(now)})
        g.open_flush = flush
        work: list[Coroutine[Any, Any, None]] = []
        visible = [a for a in alerts if not self._muted(a, now)]
        firing = frozenset(a.fp for a in visible if not a.resolved(now))
        resolved = frozenset(a.fp for a in visible if a.resolved(now))
        for d in g.deliveries if visible else []:
            send_resolved = d.integration.send_resolved
            if not needs_update(
                d.log, firing, resolved, send_resolved, g.route.repeat_interval, now
            ):
                continue
            entry = LogEntry(firing, resolved, now)
            shown = [a for a in visible if send_resolved or not a.resolved(now)]
            if not shown:  # only resolved alerts, and this receiver does not want them
                d.log = entry
                continue
            d.notification = Notification(
                receiver=d.receiver,
                group_key=g.key,
                group_labels=dict(g.labels),
                alerts=tuple(self._notified(a, now) for a in shown),
                external_url=self.external_url,
            )
            d.pending_log, d.attempts = entry, 0
            d.deadline = now + g.route.group_interval
            d.step(DeliveryEvent.SEND)
            flush.outstanding += 1
            work.append(self._attempt(g, d, clock))
        if flush.outstanding == 0:
            self._close_flush(g)
        return work

    def _notified(self, a: Stored, now: float) -> NotifiedAlert:
        done = a.resolved(now)
        return NotifiedAlert(
            status="resolved" if done else "firing",
            labels=dict(a.alert.labels),
            annotations=dict(a.alert.annotations),
            starts_at=a.starts_at,
            ends_at=a.ends_at if done else None,
            generator_url=a.alert.generator_url,
            fingerprint=a.fp,
        )

    async def _attempt(self, g: _Group, d: IntegrationDelivery, clock: Callable[[], float]) -> None:
        assert d.notification is not None and d.pending_log is not None
        d.attempts += 1
        self.requests_total[d.receiver] += 1
        timeout = min(self._send_timeout, g.route.group_interval)
        ctx = SendContext(self._client, timeout)
        try:
            await asyncio.wait_for(d.integration.send(d.notification, ctx), timeout)
        except Exception as exc:  # any failure of a plugin's send counts as a failed attempt
            self.requests_failed[d.receiver] += 1
            retryable = not isinstance(exc, DeliveryError) or exc.retryable
            ended = clock()
            cap = min(self._retry_max, self._retry_base * 2 ** (d.attempts - 1))
            retry_at = ended + self._rng.uniform(0.0, cap)  # full jitter
            reason = f"{type(exc).__name__}: {exc}"
            if retryable and retry_at < d.deadline:
                log.warning("notify %s (%s) failed, retrying: %s", d.receiver, g.key, reason)
                d.step(DeliveryEvent.FAILED)
                d.retry_at = retry_at
            else:
                d.step(DeliveryEvent.GAVE_UP)
                self._finish(g, d, ok=False, reason=reason)
            return
        d.step(DeliveryEvent.SUCCEEDED)
        d.log = d.pending_log
        self.notifications_sent[d.receiver] += 1
        self._finish(g, d, ok=True)

    def _give_up(self, g: _Group, d: IntegrationDelivery, reason: str) -> None:
        d.step(DeliveryEvent.GAVE_UP)
        self._finish(g, d, ok=False, reason=reason)

    def _finish(self, g: _Group, d: IntegrationDelivery, *, ok: bool, reason: str = "") -> None:
        d.notification = d.pending_log = None
        if not ok:
            self.notifications_failed[d.receiver] += 1
            log.error(
                "notify %s (%s) gave up after %d attempts: %s",
                d.receiver,
                g.key,
                d.attempts,
                reason,
            )
        flush = g.open_flush
        assert flush is not None
        flush.outstanding -= 1
        flush.failed = flush.failed or not ok
        if flush.outstanding == 0:
            self._close_flush(g)

    def _close_flush(self, g: _Group) -> None:
        """A flush whose sends all succeeded drops the resolved alerts it covered (unless they
        were updated meanwhile); a group left empty goes away."""
        flush, g.open_flush = g.open_flush, None
        assert flush is not None
        if flush.failed:
            return
        for fp, a in flush.resolved.items():
            if g.alerts.get(fp) is a:
                del g.alerts[fp]
        if not g.alerts:
            key = (g.route.index, tuple(sorted(g.labels.items())))
            if self._groups.get(key) is g:
                del self._groups[key]

    # -- API views --

    def alerts_json(
        self,
        *,
        active: bool = True,
        silenced: bool = True,
        inhibited: bool = True,
        filter: Sequence[str] = (),
        receiver: str | None = None,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: unresolved alerts with their status, sorted by fingerprint."""
        t = self._clock() if now is None else now
        wanted = [parse_matcher(f) for f in filter]
        receiver_re = None if receiver is None else Matcher(MatchType.REGEX, "receiver", receiver)
        out = []
        for fp in sorted(self._alerts):
            a = self._alerts[fp]
            if a.resolved(t) or not matches_all(a.labels, wanted):
                continue
            names = list(dict.fromkeys(r.receiver for r in self.config.route.match(a.labels)))
            if receiver_re is not None and not any(receiver_re.matches(n) for n in names):
                continue
            silenced_by = self.silences.silenced_by(a.labels, t)
            inhibited_by = self._inhibited_by(a, t)
            state = "suppressed" if silenced_by or inhibited_by else "active"
            if (
                (state == "active" and not active)
                or (silenced_by and not silenced)
                or (inhibited_by and not inhibited)
            ):
                continue
            out.append(
                {
                    "annotations": dict(a.alert.annotations),
                    "endsAt": rfc3339(a.ends_at),
                    "fingerprint": fp,
                    "receivers": [{"name": n} for n in names],
                    "startsAt": rfc3339(a.starts_at),
                    "status": {
                        "inhibitedBy": inhibited_by,
                        "silencedBy": silenced_by,
                        "mutedBy": [],
                        "state": state,
                    },
                    "updatedAt": rfc3339(a.updated_at),
                    "generatorURL": a.alert.generator_url,
                    "labels": dict(a.alert.labels),
                }
            )
        return out

    def create_silence_json(self, body: Mapping[str, Any]) -> dict[str, str]:
        """POST /api/v2/silences: a PostableSilence in, `{"silenceID": id}` out."""
        return {"silenceID": self.silences.create_json(body)}

    def expire_silence(self, silence_id: str) -> None:
        """DELETE /api/v2/silence/{id}."""
        self.silences.expire(silence_id)

    def silence_json(self, silence_id: str) -> dict[str, Any]:
        """GET /api/v2/silence/{id}."""
        return self.silences.get(silence_id).to_json(self._clock())

    def silences_json(self, filter: Sequence[str] = ()) -> list[dict[str, Any]]:
        """GET /api/v2/silences: active first, then pending, then expired."""
        ms = [parse_matcher(f) for f in filter]
        return self.silences.to_json(self._clock(), ms)
