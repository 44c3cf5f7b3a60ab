"""Recording and alerting rules, and the groups that hold them, as they run.

What one evaluation of a rule does: a recording rule turns its query's result into series under
a new name; an alerting rule expands its label and annotation templates for each element of
the result, moves its alerts through alert_state.py's table and returns the `ALERTS` and
`ALERTS_FOR_STATE` series. A `Group` holds its rules' state and the series they last wrote, and
carries both over a reload. Rules query through an `Evaluator`; `engine_evaluator` adapts the
PromQL engine to it. Split from rules.py, whose `RuleManager` loads and schedules groups,
writes what they return and reports them in the API.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from scalelab.monitoring.alert_state import Alert, AlertState, observe, step
from scalelab.monitoring.errors import ExecutionError
from scalelab.monitoring.model import METRIC_NAME, Labels, labels_of, with_label, without
from scalelab.monitoring.rulefile import AlertingRuleSpec, GroupSpec, RecordingRuleSpec
from scalelab.monitoring.template import alert_data, expand, sample

ALERT_METRIC = "ALERTS"
ALERT_FOR_STATE_METRIC = "ALERTS_FOR_STATE"

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
