"""Rule evaluation: recording rules, alerting rules and their alerts (the book's "alerting").

Each group is evaluated on its interval, rules in order, all at the group's evaluation
timestamp, as Prometheus 2.42 does. A recording rule writes its result as a new series. An
alerting rule keeps one alert per output label set; how an alert moves between inactive,
pending and firing is the table `TRANSITIONS` in alert_state.py (the only place states change),
with `for`, `keep_firing_for` and the 15-minute memory of resolved alerts as Prometheus has
them. Every evaluation writes `ALERTS` and `ALERTS_FOR_STATE` series and a staleness marker for
each series a rule stopped producing. Alerts due for (re)sending go to the injected `notify`.

Time is passed in: `evaluate_group_at(group, t_ms)` is what tests drive; `run()` derives the
timestamps from the injected clock and sleeps with the injected sleep.

This module is the `RuleManager`: loading rule files, scheduling groups, writing their results
and the rules and alerts API views. What one rule and one group do in an evaluation is in
rulegroup.py, an alert's states in alert_state.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote_plus

from scalelab.monitoring.alert_state import Alert, AlertState
from scalelab.monitoring.gofmt import go_float_e
from scalelab.monitoring.model import (
    METRIC_NAME,
    STALE_NAN,
    Appender,
    Labels,
    Matcher,
    Querier,
    labels_of,
)
from scalelab.monitoring.params import rfc3339_ms
from scalelab.monitoring.rulefile import RuleFileError, expand_globs, load_files
from scalelab.monitoring.rulegroup import (
    ALERT_FOR_STATE_METRIC,
    AlertingRule,
    Engine,
    EvalContext,
    Evaluator,
    Group,
    Rule,
    engine_evaluator,
)
from scalelab.monitoring.settings import MonitoringSettings

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- manager


class RuleManager:
    """Loads rule files, evaluates their groups and reports them in Prometheus's API shapes."""

    def __init__(
        self,
        files: Sequence[str],
        evaluator: Evaluator | Engine,
        appender_factory: Callable[[], Appender],
        notify: Callable[[list[Alert]], None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        external_labels: Mapping[str, str] | None = None,
        external_url: str = "",
        default_interval_s: float = 15.0,
        resend_delay_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        querier: Querier | None = None,
        for_grace_period_s: float = 600.0,
        outage_tolerance_s: float = 3600.0,
    ) -> None:
        self.files = list(files)
        # Restoring `for` state after a restart (Prometheus's defaults: 10 m grace, 1 h
        # tolerance) reads the ALERTS_FOR_STATE series the last run wrote.
        self.querier = querier
        self.for_grace_ms = round(for_grace_period_s * 1000)
        self.outage_tolerance_ms = round(outage_tolerance_s * 1000)
        self._to_restore: set[tuple[str, str]] | None = None  # groups of the first load
        evaluate = engine_evaluator(evaluator) if hasattr(evaluator, "instant") else evaluator
        assert callable(evaluate)
        self.ctx = EvalContext(evaluate, dict(external_labels or {}), external_url)
        self.appender_factory = appender_factory
        self.notify = notify
        self.clock = clock
        self.sleep = sleep
        self.default_interval_ms = round(default_interval_s * 1000)
        self.resend_delay_ms = round(resend_delay_s * 1000)
        self.groups: list[Group] = []
        self.last_error: str | None = None
        self._mtimes: dict[str, float] = {}
        self._lock = threading.RLock()

    @classmethod
    def from_settings(
        cls,
        settings: MonitoringSettings,
        evaluator: Evaluator | Engine,
        appender_factory: Callable[[], Appender],
        notify: Callable[[list[Alert]], None] | None = None,
        **kwargs: Any,
    ) -> RuleManager:
        """A manager for `settings.rule_files` (comma-separated globs), evaluating every
        `settings.evaluation_interval_s` unless a group says otherwise."""
        files = [f.strip() for f in settings.rule_files.split(",") if f.strip()]
        kwargs.setdefault("default_interval_s", settings.evaluation_interval_s)
        return cls(files, evaluator, appender_factory, notify, **kwargs)

    # -- loading

    def load(self) -> None:
        """Load every file and swap the groups in at once; on any error raise RuleFileError
        and keep the rules that were running."""
        paths = expand_globs(self.files)
        mtimes = {p: _mtime(p) for p in paths}
        try:
            specs = load_files(paths)
        except RuleFileError as exc:
            self.last_error = str(exc)
            self._mtimes = mtimes
            raise
        with self._lock:
            old = {g.key: g for g in self.groups}
            new: list[Group] = []
            for spec in specs:
                previous = old.pop((spec.file, spec.name), None)
                if previous is not None and previous.spec == spec:
                    previous.spec = spec  # unchanged: keep it, state and all
                    new.append(previous)
                    continue
                group = Group(spec, self.default_interval_ms)
                if previous is not None:
                    group.copy_state(previous)
                new.append(group)
            self.groups = new
            if self._to_restore is None:  # only what ran before a restart has state to restore
                self._to_restore = {g.key for g in new}
            self.last_error = None
            self._mtimes = mtimes
            self._mark_removed_stale(list(old.values()))

    def reload(self) -> bool:
        """`load`, logging instead of raising; True when the new rules are in."""
        try:
            self.load()
        except RuleFileError as exc:
            log.error("loading rule files failed, keeping the previous rules:\n%s", exc)
            return False
        return True

    def reload_if_changed(self) -> bool:
        """Reload when a file matched by the globs appeared, vanished or changed."""
        paths = expand_globs(self.files)
        current = {p: _mtime(p) for p in paths}
        if current == self._mtimes:
            return False
        return self.reload()

    def _mark_removed_stale(self, removed: list[Group]) -> None:
        series = [s for g in removed for prev in g.previous_series for s in prev]
        series += [s for g in removed for s in g.stale_series]
        if not series:
            return
        now = int(self.clock() * 1000)
        app = self.appender_factory()
        for labels in series:
            try:
                app.append(labels, now, STALE_NAN)
            except Exception as exc:  # a marker that cannot be written is only logged
                log.debug("stale marker for %s not written: %s", labels, exc)
        app.commit()

    # -- evaluation

    def group(self, name: str, file: str | None = None) -> Group:
        for g in self.groups:
            if g.name == name and (file is None or g.file == file):
                return g
        raise KeyError(name)

    def evaluate_group_at(self, group: Group | str, t_ms: int) -> None:
        """Evaluate one group at one timestamp (what `run` does on each tick)."""
        for batch in self._evaluate(group, t_ms):
            self._notify(batch)

    def _evaluate(self, group: Group | str, t_ms: int) -> list[list[Alert]]:
        """Evaluate; return the alert batches to hand to `notify`, so that `run` can call it
        on the event loop's thread rather than the worker's."""
        batches: list[list[Alert]] = []
        with self._lock:
            g = group if isinstance(group, Group) else self.group(group)
            started = self.clock()
            for i, rule in enumerate(g.rules):
                batch = self._evaluate_rule(g, i, rule, t_ms)
                if batch:
                    batches.append(batch)
            g.last_evaluation_ms = t_ms
            g.evaluation_time_s = self.clock() - started
            if self._to_restore and g.key in self._to_restore:
                self._to_restore.discard(g.key)
                self._restore_for_state(g, t_ms)
        return batches

    def _restore_for_state(self, g: Group, ts: int) -> None:
        """After the first evaluation since start-up, give pending alerts back the time they
        had already spent pending, from the newest ALERTS_FOR_STATE sample of the last run
        (as Prometheus does, so a restart does not reset every `for` clock). An alert that
        had little left gets at least the grace period; one with a long `for` resumes where
        it stopped, shifted by the downtime; data older than the outage tolerance is ignored.
        """
        if self.querier is None:
            return
        for rule in g.rules:
            if not isinstance(rule, AlertingRule) or rule.spec.for_ms < self.for_grace_ms:
                continue
            hold = rule.spec.for_ms
            for alert in rule.active.values():
                if alert.state is not AlertState.PENDING:
                    continue
                matchers = [Matcher.equal(METRIC_NAME, ALERT_FOR_STATE_METRIC)]
                matchers += [Matcher.equal(k, v) for k, v in alert.labels]
                found = self.querier.select(matchers, ts - self.outage_tolerance_ms, ts - 1)
                if not found or not len(found[0]):
                    continue
                down_at = int(found[0].timestamps[-1])
                active_at = round(float(found[0].values[-1]) * 1000)
                remaining = hold - (down_at - active_at)
                if remaining <= 0:
                    restored = active_at  # it was firing: fire again at the next evaluation
                elif remaining < self.for_grace_ms:
                    restored = ts + self.for_grace_ms - hold
                else:
                    restored = active_at + (ts - down_at)
                alert.active_at_ms = restored
                log.info(
                    "restored 'for' state of alert %s %s: active since %d",
                    rule.name,
                    dict(alert.labels),
                    restored,
                )

    def _evaluate_rule(self, g: Group, i: int, rule: Rule, ts: int) -> list[Alert]:
        started = self.clock()
        status = rule.status
        try:
            try:
                samples = rule.evaluate(self.ctx, ts, g.spec.limit)
            except Exception as exc:  # a failing rule must not stop its group
                status.health, status.last_error = "err", str(exc)
                log.warning("rule %s in group %s failed: %s", rule.name, g.name, exc)
                return []
            status.health, status.last_error = "ok", ""
            batch = self._to_send(rule, ts, g.interval_ms) if isinstance(rule, AlertingRule) else []
            self._write(g, i, rule, ts, samples)
            return batch
        finally:
            status.last_evaluation_ms = ts
            status.evaluation_time_s = self.clock() - started

    def _notify(self, batch: list[Alert]) -> None:
        if self.notify is not None:
            try:
                self.notify(batch)
            except Exception:  # a broken notifier must not stop rule evaluation
                log.exception("notifying %d alerts failed", len(batch))

    def _write(
        self, g: Group, i: int, rule: Rule, ts: int, samples: list[tuple[Labels, float]]
    ) -> None:
        app = self.appender_factory()
        written: set[Labels] = set()
        for labels, value in samples:
            try:
                app.append(labels, ts, value)
                written.add(labels)
            except Exception as exc:  # Prometheus marks the rule unhealthy and goes on
                rule.status.health, rule.status.last_error = "err", str(exc)
        stale = [s for s in g.previous_series[i] if s not in written] + g.stale_series
        for labels in stale:
            try:
                app.append(labels, ts, STALE_NAN)
            except Exception as exc:  # out of order or duplicate: nothing to mark
                log.debug("stale marker for %s not written: %s", labels, exc)
        try:
            app.commit()
        except Exception as exc:
            log.warning("writing the results of rule %s failed: %s", rule.name, exc)
            return
        g.previous_series[i] = written
        g.stale_series = []

    def _to_send(self, rule: AlertingRule, ts: int, interval_ms: int) -> list[Alert]:
        """Copies of the alerts due for sending, with their generator URL and the external
        labels (which Prometheus's notifier adds where an alert lacks them)."""
        alerts = rule.alerts_to_send(ts, self.resend_delay_ms, interval_ms)
        expr = quote_plus(rule.spec.query or rule.spec.expr.strip())
        url = f"{self.ctx.external_url}/graph?g0.expr={expr}&g0.tab=1"
        for a in alerts:
            a.generator_url = url
            a.labels = labels_of(self.ctx.external_labels | dict(a.labels))
        return alerts

    async def run(self, stop: asyncio.Event | None = None, *, in_thread: bool = True) -> None:
        """Evaluate every group on its interval until `stop` is set (or the task is
        cancelled). Ticks missed while an evaluation overran are skipped, as Prometheus does."""
        due: dict[tuple[str, str], int] = {}
        while stop is None or not stop.is_set():
            now = int(self.clock() * 1000)
            groups = list(self.groups)
            for g in groups:
                due.setdefault(g.key, g.next_evaluation_ms(now))
            for key in due.keys() - {g.key for g in groups}:
                del due[key]
            if not groups:
                await self.sleep(self.default_interval_ms / 1000)
                continue
            first = min(due.values())
            if first > now:
                await self.sleep((first - now) / 1000)
                continue
            for g in sorted(groups, key=lambda g: due[g.key]):
                ts = due[g.key]
                if ts > now:
                    continue
                ts += (now - ts) // g.interval_ms * g.interval_ms
                if in_thread:
                    batches = await asyncio.to_thread(self._evaluate, g, ts)
                else:
                    batches = self._evaluate(g, ts)
                for batch in batches:
                    self._notify(batch)
                due[g.key] = ts + g.interval_ms

    # -- API views

    def rules_json(self) -> dict[str, Any]:
        """The `data` of Prometheus's GET /api/v1/rules."""
        with self._lock:
            return {"groups": [_group_json(g) for g in self.groups]}

    def alerts_json(self) -> dict[str, Any]:
        """The `data` of Prometheus's GET /api/v1/alerts."""
        with self._lock:
            alerts = [
                _alert_json(a)
                for g in self.groups
                for r in g.rules
                if isinstance(r, AlertingRule)
                for a in r.active_alerts()
            ]
        return {"alerts": alerts}


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "name": g.name,
        "file": g.file,
        "rules": [_rule_json(r) for r in g.rules],
        "interval": g.interval_ms / 1000,
        "limit": g.spec.limit,
        "evaluationTime": g.evaluation_time_s,
        "lastEvaluation": rfc3339_ms(g.last_evaluation_ms),
    }


def _rule_json(rule: Rule) -> dict[str, Any]:
    s = rule.status
    if isinstance(rule, AlertingRule):
        out: dict[str, Any] = {
            "state": rule.state().value,
            "name": rule.name,
            "query": rule.spec.query or rule.spec.expr.strip(),
            "duration": rule.spec.for_ms / 1000,
            "keepFiringFor": rule.spec.keep_firing_for_ms / 1000,
            "labels": dict(sorted(rule.spec.labels.items())),
            "annotations": dict(sorted(rule.spec.annotations.items())),
            "alerts": [_alert_json(a) for a in rule.active_alerts()],
            "health": s.health,
        }
    else:
        out = {"name": rule.name, "query": rule.spec.query or rule.spec.expr.strip()}
        if rule.spec.labels:
            out["labels"] = dict(sorted(rule.spec.labels.items()))
        out["health"] = s.health
    if s.last_error:
        out["lastError"] = s.last_error
    out["evaluationTime"] = s.evaluation_time_s
    out["lastEvaluation"] = rfc3339_ms(s.last_evaluation_ms)
    out["type"] = "alerting" if isinstance(rule, AlertingRule) else "recording"
    return out


def _alert_json(a: Alert) -> dict[str, Any]:
    return {
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "state": a.state.value,
        "activeAt": rfc3339_ms(a.active_at_ms),
        "value": go_float_e(a.value),
    }


__all__ = [
    "Alert",
    "RuleManager",
]
