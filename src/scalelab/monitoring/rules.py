"""Rule evaluation: recording rules, alerting rules and their alerts (the book's "alerting").

Each group is evaluated on its interval, rules in order, all at the group's evaluation
timestamp, as Prometheus 2.42 does. A recording rule writes its result as a new series. An
alerting rule keeps one alert per output label set; how an alert moves between inactive,
pending and firing is the table `TRANSITIONS` below (the only place states change), with
`for`, `keep_firing_for` and the 15-minute memory of resolved alerts as Prometheus has them.
Every evaluation writes `ALERTS` and `ALERTS_FOR_STATE` series and a staleness marker for
each series a rule stopped producing. Alerts due for (re)sending go to the injected `notify`.

Time is passed in: `evaluate_group_at(group, t_ms)` is what tests drive; `run()` derives the
timestamps from the injected clock and sleeps with the injected sleep.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import quote_plus

from scalelab.monitoring.errors import ExecutionError
from scalelab.monitoring.model import (
    METRIC_NAME,
    STALE_NAN,
    Appender,
    Labels,
    labels_of,
    with_label,
    without,
)
from scalelab.monitoring.rulefile import (
    AlertingRuleSpec,
    GroupSpec,
    RecordingRuleSpec,
    RuleFileError,
    expand_globs,
    load_files,
)
from scalelab.monitoring.settings import MonitoringSettings
from scalelab.monitoring.template import alert_data, expand, sample

log = logging.getLogger(__name__)

RESOLVED_RETENTION_MS = 15 * 60_000  # resolved alerts are still sent (and kept) this long
ALERT_METRIC = "ALERTS"
ALERT_FOR_STATE_METRIC = "ALERTS_FOR_STATE"
ZERO_TIME = "0001-01-01T00:00:00Z"

Evaluator = Callable[[str, int], list[tuple[Labels, float]]]
"""Instant query at a millisecond timestamp; a scalar result is one unlabeled element."""


class Engine(Protocol):
    """The PromQL engine's instant query, whose value renders as the API's `data`."""

    def instant(self, query: str, time_ms: int) -> Any: ...


def results_from_json(data: Mapping[str, Any]) -> list[tuple[Labels, float]]:
    """The `data` of an /api/v1/query answer as rule results (Prometheus's EngineQueryFunc)."""
    kind = data.get("resultType")
    if kind == "vector":
        return [(labels_of(s["metric"]), float(s["value"][1])) for s in data["result"]]
    if kind == "scalar":
        return [((), float(data["result"][1]))]
    raise ExecutionError("rule result is not a vector or scalar")


def engine_evaluator(engine: Engine) -> Evaluator:
    """Adapt `promql.Engine` to the evaluator rules use."""

    def evaluate(query: str, t_ms: int) -> list[tuple[Labels, float]]:
        return results_from_json(engine.instant(query, t_ms).to_json())

    return evaluate


# --------------------------------------------------------------------------- alert state


class AlertState(enum.Enum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class Observation(enum.Enum):
    """What one evaluation says about one alert (see `observe`)."""

    PRESENT_WAITING = "in the result, `for` not yet elapsed"
    PRESENT_DUE = "in the result, `for` elapsed"
    ABSENT_HOLDING = "not in the result, firing and within keep_firing_for"
    ABSENT = "not in the result"
    ABSENT_EXPIRED = "not in the result, resolved more than 15 minutes ago"


class Effect(enum.Flag):
    NONE = 0
    RESTART = enum.auto()  # a new alert: activeAt = now, fired/resolved/hold cleared
    UPDATE = enum.auto()  # present again: new value and annotations, keep-firing cleared
    FIRE = enum.auto()  # firedAt = now
    HOLD = enum.auto()  # keepFiringSince = now, unless already holding
    RESOLVE = enum.auto()  # resolvedAt = now
    FORGET = enum.auto()  # drop the alert: pending ones vanish, resolved ones expire


St, Ob, Ef = AlertState, Observation, Effect
TRANSITIONS: dict[tuple[AlertState, Observation], tuple[AlertState, Effect]] = {
    (St.INACTIVE, Ob.PRESENT_WAITING): (St.PENDING, Ef.RESTART),
    (St.INACTIVE, Ob.PRESENT_DUE): (St.FIRING, Ef.RESTART | Ef.FIRE),
    (St.INACTIVE, Ob.ABSENT_HOLDING): (St.INACTIVE, Ef.NONE),
    (St.INACTIVE, Ob.ABSENT): (St.INACTIVE, Ef.NONE),
    (St.INACTIVE, Ob.ABSENT_EXPIRED): (St.INACTIVE, Ef.FORGET),
    (St.PENDING, Ob.PRESENT_WAITING): (St.PENDING, Ef.UPDATE),
    (St.PENDING, Ob.PRESENT_DUE): (St.FIRING, Ef.UPDATE | Ef.FIRE),
    (St.PENDING, Ob.ABSENT_HOLDING): (St.INACTIVE, Ef.FORGET),
    (St.PENDING, Ob.ABSENT): (St.INACTIVE, Ef.FORGET),
    (St.PENDING, Ob.ABSENT_EXPIRED): (St.INACTIVE, Ef.FORGET),
    (St.FIRING, Ob.PRESENT_WAITING): (St.FIRING, Ef.UPDATE),
    (St.FIRING, Ob.PRESENT_DUE): (St.FIRING, Ef.UPDATE),
    (St.FIRING, Ob.ABSENT_HOLDING): (St.FIRING, Ef.HOLD),
    (St.FIRING, Ob.ABSENT): (St.INACTIVE, Ef.RESOLVE),
    (St.FIRING, Ob.ABSENT_EXPIRED): (St.INACTIVE, Ef.RESOLVE),
}
del St, Ob, Ef


@dataclass
class Alert:
    """One alert of an alerting rule; times are epoch milliseconds."""

    labels: Labels
    annotations: Labels  # sorted (name, value); unlike labels, empty values are kept
    state: AlertState
    active_at_ms: int
    value: float
    fired_at_ms: int | None = None
    resolved_at_ms: int | None = None
    keep_firing_since_ms: int | None = None
    last_sent_at_ms: int | None = None
    valid_until_ms: int | None = None
    generator_url: str = ""

    @property
    def starts_at_ms(self) -> int | None:
        return self.fired_at_ms

    @property
    def ends_at_ms(self) -> int | None:
        """Resolved: when; firing: how long the alert stays valid without a resend."""
        return self.resolved_at_ms if self.resolved_at_ms is not None else self.valid_until_ms

    def to_postable(self) -> dict[str, Any]:
        """Alertmanager API v2 `postableAlert`."""
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339_ms(self.starts_at_ms),
            "endsAt": rfc3339_ms(self.ends_at_ms),
            "generatorURL": self.generator_url,
        }

    def needs_sending(self, ts: int, resend_delay_ms: int) -> bool:
        if self.state is AlertState.PENDING:
            return False
        if self.last_sent_at_ms is None:
            return True
        if self.resolved_at_ms is not None and self.resolved_at_ms > self.last_sent_at_ms:
            return True
        return self.last_sent_at_ms + resend_delay_ms < ts


def observe(
    alert: Alert | None, present: bool, ts: int, for_ms: int, keep_firing_for_ms: int
) -> Observation:
    """Classify one alert at one evaluation; `TRANSITIONS` then says what happens."""
    if present:
        restarting = alert is None or alert.state is AlertState.INACTIVE
        active_at = ts if restarting or alert is None else alert.active_at_ms
        return Observation.PRESENT_DUE if ts - active_at >= for_ms else Observation.PRESENT_WAITING
    assert alert is not None
    if alert.state is AlertState.FIRING and keep_firing_for_ms > 0:
        since = ts if alert.keep_firing_since_ms is None else alert.keep_firing_since_ms
        if ts - since < keep_firing_for_ms:
            return Observation.ABSENT_HOLDING
    if alert.resolved_at_ms is not None and ts - alert.resolved_at_ms > RESOLVED_RETENTION_MS:
        return Observation.ABSENT_EXPIRED
    return Observation.ABSENT


def step(
    alert: Alert | None,
    observation: Observation,
    ts: int,
    fresh: Alert | None = None,
) -> Alert | None:
    """Apply the table to one alert; `fresh` is this evaluation's alert for its label set
    (value, annotations). Returns the alert to keep, or None to forget it."""
    state = AlertState.INACTIVE if alert is None else alert.state
    new_state, effect = TRANSITIONS[(state, observation)]
    if Effect.FORGET in effect:
        return None
    if Effect.RESTART in effect:
        assert fresh is not None
        alert = replace(fresh, active_at_ms=ts)
    assert alert is not None
    if Effect.UPDATE in effect:
        assert fresh is not None
        alert.value, alert.annotations = fresh.value, fresh.annotations
        alert.keep_firing_since_ms = None
    if Effect.FIRE in effect:
        alert.fired_at_ms = ts
    if Effect.HOLD in effect and alert.keep_firing_since_ms is None:
        alert.keep_firing_since_ms = ts
    if Effect.RESOLVE in effect:
        alert.resolved_at_ms = ts
    alert.state = new_state
    return alert


# --------------------------------------------------------------------------------- rules


@dataclass
class EvalContext:
    """What rules need from their manager while evaluating."""

    evaluator: Evaluator
    external_labels: dict[str, str]
    external_url: str


@dataclass
class RuleStatus:
    """What the rules API reports of a rule's last evaluation."""

    health: str = "unknown"  # "ok" | "err" | "unknown", as the API reports it
    last_error: str = ""
    last_evaluation_ms: int | None = None
    evaluation_time_s: float = 0.0


class RecordingRule:
    """Stores its expression's result under a new metric name, with the rule's labels."""

    def __init__(self, spec: RecordingRuleSpec) -> None:
        self.spec = spec
        self.status = RuleStatus()

    @property
    def name(self) -> str:
        return self.spec.record

    def evaluate(self, ctx: EvalContext, ts: int, limit: int) -> list[tuple[Labels, float]]:
        out: list[tuple[Labels, float]] = []
        seen: set[Labels] = set()
        for labels, value in ctx.evaluator(self.spec.expr, ts):
            labels = with_label(labels, METRIC_NAME, self.spec.record)
            for k, v in self.spec.labels.items():
                labels = with_label(labels, k, v)
            if labels in seen:
                raise ExecutionError(
                    "vector contains metrics with the same labelset after applying rule labels"
                )
            seen.add(labels)
            out.append((labels, value))
        if limit > 0 and len(out) > limit:
            raise ExecutionError(f"exceeded limit of {limit} with {len(out)} series")
        return out


class AlertingRule:
    """Keeps one alert per output label set, moved through `TRANSITIONS` each evaluation."""

    def __init__(self, spec: AlertingRuleSpec) -> None:
        self.spec = spec
        self.status = RuleStatus()
        self.active: dict[Labels, Alert] = {}

    @property
    def name(self) -> str:
        return self.spec.alert

    def state(self) -> AlertState:
        """The rule's state: its most advanced alert's."""
        states = {a.state for a in self.active.values()}
        for s in (AlertState.FIRING, AlertState.PENDING):
            if s in states:
                return s
        return AlertState.INACTIVE

    def active_alerts(self) -> list[Alert]:
        """Pending and firing alerts (resolved ones are kept only for sending)."""
        alerts = [a for a in self.active.values() if a.state is not AlertState.INACTIVE]
        return sorted(alerts, key=lambda a: a.labels)

    def _fresh_alerts(self, ctx: EvalContext, ts: int) -> dict[Labels, Alert]:
        """This evaluation's result as alerts, labels and annotations expanded."""
        results = ctx.evaluator(self.spec.expr, ts)

        def query(q: str) -> list[Any]:
            # Sorted as Prometheus's storage returns series, so `first` is deterministic.
            return [sample(dict(lbls), v) for lbls, v in sorted(ctx.evaluator(q, ts))]

        fresh: dict[Labels, Alert] = {}
        for labels, value in results:
            data = alert_data(dict(labels), ctx.external_labels, ctx.external_url, value)
            url = ctx.external_url
            out = without(labels, [METRIC_NAME])
            for name, tmpl in self.spec.label_templates.items():
                out = with_label(out, name, expand(tmpl, data, query=query, external_url=url))
            out = with_label(out, "alertname", self.spec.alert)
            annotations = tuple(
                sorted(
                    (n, expand(t, data, query=query, external_url=url))
                    for n, t in self.spec.annotation_templates.items()
                )
            )
            if out in fresh:
                raise ExecutionError(
                    "vector contains metrics with the same labelset after applying alert labels"
                )
            fresh[out] = Alert(out, annotations, AlertState.PENDING, ts, value)
        return fresh

    def evaluate(self, ctx: EvalContext, ts: int, limit: int) -> list[tuple[Labels, float]]:
        fresh = self._fresh_alerts(ctx, ts)
        spec = self.spec
        for labels in list(self.active.keys() | fresh.keys()):
            current = self.active.get(labels)
            obs = observe(current, labels in fresh, ts, spec.for_ms, spec.keep_firing_for_ms)
            kept = step(current, obs, ts, fresh.get(labels))
            if kept is None:
                self.active.pop(labels, None)
            else:
                self.active[labels] = kept
        live = self.active_alerts()
        if limit > 0 and len(live) > limit:
            self.active = {}
            raise ExecutionError(f"exceeded limit of {limit} with {len(live)} alerts")
        out: list[tuple[Labels, float]] = []
        base = labels_of(spec.labels)  # unexpanded, as Prometheus builds these series
        for a in live:
            merged = dict(base) | dict(a.labels)
            alerts = merged | {METRIC_NAME: ALERT_METRIC, "alertstate": a.state.value}
            for_state = merged | {METRIC_NAME: ALERT_FOR_STATE_METRIC}
            out.append((labels_of(alerts), 1.0))
            out.append((labels_of(for_state), float(a.active_at_ms // 1000)))
        return out

    def alerts_to_send(self, ts: int, resend_delay_ms: int, interval_ms: int) -> list[Alert]:
        """Copies of the alerts due for (re)sending; marks them sent."""
        out = []
        for a in sorted(self.active.values(), key=lambda a: a.labels):
            if a.needs_sending(ts, resend_delay_ms):
                a.last_sent_at_ms = ts
                a.valid_until_ms = ts + 4 * max(resend_delay_ms, interval_ms)
                out.append(replace(a))
        return out


Rule = RecordingRule | AlertingRule


def _rule_key(rule: Rule) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    kind = "alert" if isinstance(rule, AlertingRule) else "record"
    return kind, rule.name, tuple(sorted(rule.spec.labels.items()))


class Group:
    """A rule group at run time: its rules, their state and the series they last wrote."""

    def __init__(self, spec: GroupSpec, default_interval_ms: int) -> None:
        self.spec = spec
        self.interval_ms = spec.interval_ms or default_interval_ms
        self.rules: list[Rule] = [
            RecordingRule(r) if isinstance(r, RecordingRuleSpec) else AlertingRule(r)
            for r in spec.rules
        ]
        self.previous_series: list[set[Labels]] = [set() for _ in self.rules]
        self.stale_series: list[Labels] = []  # of rules removed by a reload
        self.last_evaluation_ms: int | None = None
        self.evaluation_time_s = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def file(self) -> str:
        return self.spec.file

    @property
    def key(self) -> tuple[str, str]:
        return self.spec.file, self.spec.name

    def offset_ms(self) -> int:
        """Where in its interval this group runs, so groups spread out (stable per group)."""
        return zlib.crc32(f"{self.name};{self.file}".encode()) % self.interval_ms

    def next_evaluation_ms(self, now_ms: int) -> int:
        """The first evaluation timestamp after now on this group's grid."""
        adjusted = now_ms - self.offset_ms()
        return adjusted - adjusted % self.interval_ms + self.offset_ms() + self.interval_ms

    def copy_state(self, old: Group) -> None:
        """Carry alerts and written series over a reload, matching rules by name and labels;
        series of rules that went away get staleness markers at the next evaluation."""
        self.last_evaluation_ms = old.last_evaluation_ms
        self.evaluation_time_s = old.evaluation_time_s
        unmatched: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[int]] = {}
        for i, rule in enumerate(old.rules):
            unmatched.setdefault(_rule_key(rule), []).append(i)
        for i, rule in enumerate(self.rules):
            candidates = unmatched.get(_rule_key(rule))
            if not candidates:
                continue
            j = candidates.pop(0)
            self.previous_series[i] = old.previous_series[j]
            previous = old.rules[j]
            if isinstance(rule, AlertingRule) and isinstance(previous, AlertingRule):
                rule.active = previous.active
        self.stale_series = list(old.stale_series)
        for indexes in unmatched.values():
            for j in indexes:
                self.stale_series.extend(old.previous_series[j])


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
    ) -> None:
        self.files = list(files)
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
        return batches

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


def rfc3339_ms(t_ms: int | None) -> str:
    """Go's RFC3339Nano of a millisecond timestamp in UTC; None is Go's zero time."""
    if t_ms is None:
        return ZERO_TIME
    dt = datetime.fromtimestamp(t_ms // 1000, UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if t_ms % 1000:
        text += "." + f"{t_ms % 1000:03d}".rstrip("0")
    return text + "Z"


def go_float_e(v: float) -> str:
    """strconv.FormatFloat(v, 'e', -1, 64), how the API prints an alert's value."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    if v == 0:
        return sign + "0e+00"
    _, digits, exp = Decimal(repr(abs(v))).as_tuple()
    assert isinstance(exp, int)
    ds = "".join(map(str, digits))
    stripped = ds.rstrip("0")
    e = len(ds) + exp - 1
    mant = stripped[0] + ("." + stripped[1:] if len(stripped) > 1 else "")
    return f"{sign}{mant}e{'-' if e < 0 else '+'}{abs(e):02d}"


__all__ = [
    "ALERT_FOR_STATE_METRIC",
    "ALERT_METRIC",
    "Alert",
    "AlertState",
    "AlertingRule",
    "Effect",
    "Evaluator",
    "Group",
    "Observation",
    "RecordingRule",
    "RuleManager",
    "TRANSITIONS",
    "engine_evaluator",
    "observe",
    "results_from_json",
    "step",
]
