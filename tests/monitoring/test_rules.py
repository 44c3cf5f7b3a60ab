"""Rule evaluation on virtual time: the alert state table, templates, rule-file validation,
the ALERTS series and staleness markers, notifications, reloads and the API shapes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring import template as T
from scalelab.monitoring.alert_state import (
    RESOLVED_RETENTION_MS,
    TRANSITIONS,
    Alert,
    AlertState,
    Observation,
    observe,
    step,
)
from scalelab.monitoring.errors import BadData, ExecutionError
from scalelab.monitoring.gofmt import go_float_e, go_g, go_sprintf
from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import Labels, is_stale, labels_of
from scalelab.monitoring.promql import Engine
from scalelab.monitoring.rulefile import (
    RuleFileError,
    format_duration,
    parse_duration_ms,
    parse_rules,
)
from scalelab.monitoring.rulegroup import (
    AlertingRule,
    EvalContext,
    engine_evaluator,
    results_from_json,
)
from scalelab.monitoring.rules import RuleManager
from scalelab.monitoring.settings import MonitoringSettings

MIN = 60_000


class Recorder:
    """An appender factory that keeps every committed sample."""

    def __init__(self) -> None:
        self.samples: list[tuple[Labels, int, float]] = []

    def __call__(self) -> Recorder.App:
        return Recorder.App(self)

    class App:
        def __init__(self, owner: Recorder) -> None:
            self.owner = owner
            self.pending: list[tuple[Labels, int, float]] = []

        def append(self, labels: Labels, t: int, v: float) -> None:
            self.pending.append((labels, t, v))

        def commit(self) -> None:
            self.owner.samples += self.pending
            self.pending = []

        def rollback(self) -> None:
            self.pending = []

    def at(self, t: int, name: str | None = None) -> dict[Labels, float]:
        return {
            lb: v
            for lb, ts, v in self.samples
            if ts == t and (name is None or dict(lb).get("__name__") == name)
        }


class Series:
    """A fake evaluator: per expression, a function of time giving the result."""

    def __init__(self) -> None:
        self.table: dict[str, Callable[[int], list[tuple[Labels, float]]]] = {}
        self.fail: set[str] = set()
        self.calls: list[tuple[str, int]] = []

    def __call__(self, query: str, t: int) -> list[tuple[Labels, float]]:
        self.calls.append((query.strip(), t))
        if query.strip() in self.fail:
            raise ExecutionError(f"cannot evaluate {query.strip()}")
        fn = self.table.get(query.strip())
        return [] if fn is None else fn(t)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def manager(
    tmp_path: Path, text: str, series: Series, **kwargs: Any
) -> tuple[RuleManager, Recorder, list[list[Alert]]]:
    write(tmp_path, "rules.yml", text)
    rec = Recorder()
    sent: list[list[Alert]] = []
    m = RuleManager(
        [str(tmp_path / "*.yml")], series, rec, sent.append, clock=lambda: 0.0, **kwargs
    )
    m.load()
    return m, rec, sent


UP = labels_of({"__name__": "up", "job": "api", "instance": "a"})
DOWN_RULES = """
groups:
  - name: g
    interval: 1m
    rules:
      - alert: Down
        expr: up == 0
        for: 2m
        labels: {severity: page}
        annotations: {summary: "{{ $labels.instance }} down, value {{ $value }}"}
"""


def down_between(start: int, end: int) -> Callable[[int], list[tuple[Labels, float]]]:
    return lambda t: [(UP, 0.0)] if start <= t < end else []


# ------------------------------------------------------------------------ state table


def test_transition_table_is_total() -> None:
    for state in AlertState:
        for obs in Observation:
            assert (state, obs) in TRANSITIONS


def test_pending_never_comes_from_absence() -> None:
    for (state, obs), (new, _) in TRANSITIONS.items():
        if obs.name.startswith("ABSENT"):
            assert new is not AlertState.PENDING or state is AlertState.PENDING
            assert new is not AlertState.PENDING


_times = st.integers(min_value=0, max_value=10**7)


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(list(AlertState)),
    obs=st.sampled_from(list(Observation)),
    active_at=_times,
    delta=st.integers(min_value=0, max_value=10**6),
    resolved=st.one_of(st.none(), _times),
    holding=st.one_of(st.none(), _times),
)
def test_step_fuzz_state_by_input(
    state: AlertState,
    obs: Observation,
    active_at: int,
    delta: int,
    resolved: int | None,
    holding: int | None,
) -> None:
    ts = active_at + delta
    fired = active_at if state is AlertState.FIRING else None
    alert = Alert((("alertname", "A"),), (), state, active_at, 1.0, fired, resolved, holding)
    fresh = Alert((("alertname", "A"),), (("a", "new"),), AlertState.PENDING, ts, 2.0)
    before = dataclasses.replace(alert)
    out = step(alert, obs, ts, fresh)
    new_state, effect = TRANSITIONS[(state, obs)]
    if out is None:
        assert (state, obs) in {
            (AlertState.PENDING, o) for o in Observation if o.name.startswith("ABSENT")
        } | {(AlertState.INACTIVE, Observation.ABSENT_EXPIRED)}
        return
    assert out.state is new_state
    if obs.name.startswith("PRESENT"):
        assert out.value == 2.0 and out.annotations == (("a", "new"),)
        assert out.keep_firing_since_ms is None
        if state is AlertState.INACTIVE:
            assert out.active_at_ms == ts and out.resolved_at_ms is None
        else:
            assert out.active_at_ms == before.active_at_ms
    else:
        assert out.value == before.value and out.active_at_ms == before.active_at_ms
    if out.state is AlertState.FIRING:
        assert out.fired_at_ms is not None and out.fired_at_ms <= ts
        if state is not AlertState.FIRING:
            assert out.fired_at_ms == ts
    if state is AlertState.FIRING and out.state is AlertState.INACTIVE:
        assert out.resolved_at_ms == ts
    if obs is Observation.ABSENT_HOLDING and state is AlertState.FIRING:
        assert out.keep_firing_since_ms == (holding if holding is not None else ts)


def _reference(
    present: list[bool], for_steps: int, keep_steps: int
) -> list[tuple[str | None, int | None]]:
    """Prometheus's alerting-rule loop, written out imperatively (one alert, 1m steps)."""
    state: str | None = None
    active = keep_since = resolved = None
    out: list[tuple[str | None, int | None]] = []
    for i, here in enumerate(present):
        ts = i * MIN
        if here:
            if state in (None, "inactive"):
                state, active, resolved = "pending", ts, None
            keep_since = None
            if state == "pending" and active is not None and ts - active >= for_steps * MIN:
                state = "firing"
        elif state == "pending":
            state = None
        elif state == "firing":
            keep_since = ts if keep_since is None else keep_since
            if not (keep_steps and ts - keep_since < keep_steps * MIN):
                state, resolved, keep_since = "inactive", ts, None
        elif state == "inactive" and resolved is not None:
            if ts - resolved > RESOLVED_RETENTION_MS:
                state = None
        out.append((state, active if state in ("pending", "firing") else None))
    return out


@settings(max_examples=200, deadline=None)
@given(
    present=st.lists(st.booleans(), min_size=1, max_size=40),
    for_steps=st.integers(min_value=0, max_value=4),
    keep_steps=st.integers(min_value=0, max_value=4),
)
def test_alert_lifecycle_matches_reference(
    present: list[bool], for_steps: int, keep_steps: int
) -> None:
    spec = parse_rules(
        f"groups: [{{name: g, rules: [{{alert: A, expr: x, for: {for_steps}m,"
        f" keep_firing_for: {keep_steps}m}}]}}]",
        "f.yml",
    )[0].rules[0]
    rule = AlertingRule(spec)  # type: ignore[arg-type]
    ctx = EvalContext(
        lambda q, t: [(labels_of({"i": "1"}), 1.0)] if present[t // MIN] else [], {}, ""
    )
    expected = _reference(present, for_steps, keep_steps)
    for i, _ in enumerate(present):
        samples = rule.evaluate(ctx, i * MIN, 0)
        alert = rule.active.get((("alertname", "A"), ("i", "1")))
        state, active = expected[i]
        got_state = alert.state.value if alert else None
        assert got_state == state, (i, expected)
        live = [a for a in rule.active.values() if a.state is not AlertState.INACTIVE]
        assert len(samples) == 2 * len(live)
        if active is not None:
            assert alert is not None and alert.active_at_ms == active


def test_observe_classifies() -> None:
    a = Alert((), (), AlertState.FIRING, 0, 1.0, 0)
    assert observe(None, True, 5, 0, 0) is Observation.PRESENT_DUE
    assert observe(None, True, 5, 1, 0) is Observation.PRESENT_WAITING
    assert observe(a, False, MIN, 0, 2 * MIN) is Observation.ABSENT_HOLDING
    a.keep_firing_since_ms = 0
    assert observe(a, False, 2 * MIN, 0, 2 * MIN) is Observation.ABSENT
    r = Alert((), (), AlertState.INACTIVE, 0, 1.0, 0, 0)
    assert observe(r, False, RESOLVED_RETENTION_MS, 0, 0) is Observation.ABSENT
    assert observe(r, False, RESOLVED_RETENTION_MS + 1, 0, 0) is Observation.ABSENT_EXPIRED


# ---------------------------------------------------------------- evaluation on time


def test_for_pending_then_firing_and_alerts_series(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(MIN, 5 * MIN)
    m, rec, sent = manager(tmp_path, DOWN_RULES, series)
    for i in range(8):
        m.evaluate_group_at("g", i * MIN)
    rule = m.groups[0].rules[0]
    assert isinstance(rule, AlertingRule)
    pending = {
        (("__name__", "ALERTS"), ("alertname", "Down"), ("alertstate", "pending"))
        + (("instance", "a"), ("job", "api"), ("severity", "page")): 1.0
    }
    assert rec.at(MIN, "ALERTS") == pending
    assert rec.at(2 * MIN, "ALERTS") == pending
    firing_labels = next(iter(rec.at(3 * MIN, "ALERTS")))
    assert dict(firing_labels)["alertstate"] == "firing"
    # The pending series went stale when the firing one started.
    stale_pending = rec.at(3 * MIN, "ALERTS")
    assert len(stale_pending) == 2
    assert any(is_stale(v) for v in stale_pending.values())
    assert rec.at(3 * MIN, "ALERTS_FOR_STATE") == {
        labels_of(
            {
                "__name__": "ALERTS_FOR_STATE",
                "alertname": "Down",
                "instance": "a",
                "job": "api",
                "severity": "page",
            }
        ): 60.0
    }
    # Resolved at 5m: both series get a staleness marker and nothing more after.
    at5 = rec.at(5 * MIN)
    assert len(at5) == 2 and all(is_stale(v) for v in at5.values())
    assert rec.at(6 * MIN) == {}
    assert rule.active_alerts() == []
    assert rule.active[next(iter(rule.active))].state is AlertState.INACTIVE
    # Sent: firing at 3m (once; resend delay 1m has not passed at 4m), resolved at 5m.
    flat = [(a.state, a.starts_at_ms, a.ends_at_ms) for batch in sent for a in batch]
    assert flat[0] == (AlertState.FIRING, 3 * MIN, 3 * MIN + 4 * MIN)
    assert (AlertState.INACTIVE, 3 * MIN, 5 * MIN) in flat
    postable = sent[0][0].to_postable()
    assert postable["startsAt"] == "1970-01-01T00:03:00Z"
    assert postable["endsAt"] == "1970-01-01T00:07:00Z"
    assert postable["annotations"] == {"summary": "a down, value 0"}
    assert postable["generatorURL"] == "/graph?g0.expr=up+%3D%3D+0&g0.tab=1"


def test_resend_delay_and_resolved_retention(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 10 * MIN)
    m, _, sent = manager(
        tmp_path,
        DOWN_RULES.replace("for: 2m", "for: 0s"),
        series,
        resend_delay_s=120,
        external_labels={"cluster": "eu", "severity": "ignored"},
        external_url="http://prom:9090",
    )
    times: dict[tuple[AlertState, int], Alert] = {}
    for i in range(40):
        m.evaluate_group_at("g", i * MIN)
        for a in [a for batch in sent for a in batch]:
            assert a.last_sent_at_ms == i * MIN
            times.setdefault((a.state, a.last_sent_at_ms), a)
        sent.clear()
    firing_sends = sorted(t for s, t in times if s is AlertState.FIRING)
    assert firing_sends == [0, 3 * MIN, 6 * MIN, 9 * MIN]  # every >2m (strictly after)
    resolved_sends = sorted(t for s, t in times if s is AlertState.INACTIVE)
    assert resolved_sends == [t * MIN for t in (10, 13, 16, 19, 22, 25)]  # kept 15m
    a = times[(AlertState.FIRING, 0)]
    assert dict(a.labels)["cluster"] == "eu" and dict(a.labels)["severity"] == "page"
    assert a.ends_at_ms == 4 * 2 * MIN  # 4 x max(interval 1m, resend delay 2m)
    assert a.generator_url.startswith("http://prom:9090/graph?g0.expr=")
    rule = m.groups[0].rules[0]
    assert isinstance(rule, AlertingRule) and rule.active == {}  # forgotten after 15m


def test_keep_firing_for_holds_then_resolves(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 3 * MIN)
    text = DOWN_RULES.replace("for: 2m", "for: 1m\n        keep_firing_for: 2m")
    m, rec, _ = manager(tmp_path, text, series)
    states = []
    for i in range(7):
        m.evaluate_group_at("g", i * MIN)
        rule = m.groups[0].rules[0]
        assert isinstance(rule, AlertingRule)
        states.append(rule.state().value)
    assert states == ["pending", "firing", "firing", "firing", "firing", "inactive", "inactive"]
    firing = [lb for lb, v in rec.at(4 * MIN, "ALERTS").items() if v == 1.0]
    assert dict(firing[0])["alertstate"] == "firing"


def test_recording_rule_writes_and_marks_stale(tmp_path: Path) -> None:
    series = Series()
    a = labels_of({"__name__": "x", "job": "a", "drop": "me"})
    b = labels_of({"__name__": "x", "job": "b"})
    series.table["x"] = lambda t: [(a, 1.0), (b, 2.0)] if t < 2 * MIN else [(b, 3.0)]
    series.table["scalar(x)"] = lambda t: [((), 7.0)]
    text = """
groups:
  - name: rec
    rules:
      - record: job:x
        expr: x
        labels: {drop: "", env: prod}
      - record: x:scalar
        expr: scalar(x)
"""
    m, rec, _ = manager(tmp_path, text, series)
    for i in range(3):
        m.evaluate_group_at("rec", i * MIN)
    want_a = labels_of({"__name__": "job:x", "job": "a", "env": "prod"})
    want_b = labels_of({"__name__": "job:x", "job": "b", "env": "prod"})
    assert rec.at(0, "job:x") == {want_a: 1.0, want_b: 2.0}
    at2 = rec.at(2 * MIN, "job:x")
    assert at2[want_b] == 3.0 and is_stale(at2[want_a])
    assert rec.at(0, "x:scalar") == {(("__name__", "x:scalar"),): 7.0}
    assert m.groups[0].rules[0].status.health == "ok"


def test_rule_errors_mark_health_and_keep_state(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 100 * MIN)
    dup = labels_of({"__name__": "a", "k": "1"}), labels_of({"__name__": "b", "k": "1"})
    series.table['{__name__=~"a|b"}'] = lambda t: [(dup[0], 1.0), (dup[1], 1.0)]
    text = (
        DOWN_RULES
        + """      - record: collide
        expr: '{__name__=~"a|b"}'
      - record: after
        expr: vector(1)
"""
    )
    series.table["vector(1)"] = lambda t: [((), 1.0)]
    m, rec, _ = manager(tmp_path, text, series)
    m.evaluate_group_at("g", 0)
    down, collide, after = m.groups[0].rules
    assert collide.status.health == "err"
    assert "same labelset after applying rule labels" in collide.status.last_error
    assert after.status.health == "ok"  # later rules still run
    assert isinstance(down, AlertingRule)
    before = dict(down.active)
    series.fail.add("up == 0")
    m.evaluate_group_at("g", MIN)
    assert down.status.health == "err" and "cannot evaluate" in down.status.last_error
    assert down.active == before  # a failed query changes no alert
    assert rec.at(MIN, "ALERTS") == {}  # and writes (or stales) nothing


def test_group_limit_drops_alerts(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = lambda t: [
        (labels_of({"instance": str(i)}), 0.0) for i in range(3 if t else 2)
    ]
    m, _, _ = manager(tmp_path, DOWN_RULES.replace("interval: 1m", "limit: 2"), series)
    m.evaluate_group_at("g", 0)
    rule = m.groups[0].rules[0]
    assert isinstance(rule, AlertingRule)
    assert len(rule.active_alerts()) == 2 and rule.status.health == "ok"
    m.evaluate_group_at("g", MIN)
    assert rule.status.last_error == "exceeded limit of 2 with 3 alerts"
    assert rule.active == {}


def test_duplicate_alert_labels_after_templating(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = lambda t: [
        (labels_of({"instance": "a"}), 0.0),
        (labels_of({"instance": "b"}), 0.0),
    ]
    text = DOWN_RULES.replace("severity: page", "instance: same")
    m, _, _ = manager(tmp_path, text, series)
    m.evaluate_group_at("g", 0)
    assert "same labelset after applying alert labels" in m.groups[0].rules[0].status.last_error


# ------------------------------------------------------------------------- API shapes


def test_rules_json_and_alerts_json_shapes(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 100 * MIN)
    series.table["sum(up)"] = lambda t: [((), 3.0)]
    text = (
        DOWN_RULES
        + """  - name: rec
    rules:
      - record: total:up
        expr: sum(up)
"""
    )
    m, _, _ = manager(tmp_path, text, series)
    assert m.rules_json()["groups"][0]["lastEvaluation"] == "0001-01-01T00:00:00Z"
    assert m.rules_json()["groups"][0]["rules"][0]["health"] == "unknown"
    m.evaluate_group_at("g", 90_500)
    m.evaluate_group_at("rec", 90_000)
    data = m.rules_json()
    g, rec = data["groups"]
    assert list(g) == [
        "name",
        "file",
        "rules",
        "interval",
        "limit",
        "evaluationTime",
        "lastEvaluation",
    ]
    assert g["name"] == "g" and g["file"].endswith("rules.yml")
    assert g["interval"] == 60 and rec["interval"] == 15  # default_interval_s
    assert g["lastEvaluation"] == "1970-01-01T00:01:30.5Z"
    alerting = g["rules"][0]
    assert alerting == {
        "state": "pending",
        "name": "Down",
        "query": "up == 0",
        "duration": 120,
        "keepFiringFor": 0,
        "labels": {"severity": "page"},
        "annotations": {"summary": "{{ $labels.instance }} down, value {{ $value }}"},
        "alerts": [
            {
                "labels": {
                    "alertname": "Down",
                    "instance": "a",
                    "job": "api",
                    "severity": "page",
                },
                "annotations": {"summary": "a down, value 0"},
                "state": "pending",
                "activeAt": "1970-01-01T00:01:30.5Z",
                "value": "0e+00",
            }
        ],
        "health": "ok",
        "evaluationTime": 0.0,
        "lastEvaluation": "1970-01-01T00:01:30.5Z",
        "type": "alerting",
    }
    assert rec["rules"][0] == {
        "name": "total:up",
        "query": "sum(up)",
        "health": "ok",
        "evaluationTime": 0.0,
        "lastEvaluation": "1970-01-01T00:01:30Z",
        "type": "recording",
    }
    assert m.alerts_json() == {"alerts": alerting["alerts"]}
    series.fail.add("sum(up)")
    m.evaluate_group_at("rec", 2 * MIN)
    assert m.rules_json()["groups"][1]["rules"][0]["lastError"] == "cannot evaluate sum(up)"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1e+00"),
        (0.5, "5e-01"),
        (12345.678, "1.2345678e+04"),
        (-2.0, "-2e+00"),
        (0.0, "0e+00"),
        (math.inf, "+Inf"),
        (math.nan, "NaN"),
        (1e21, "1e+21"),
    ],
)
def test_alert_value_formatting(value: float, text: str) -> None:
    assert go_float_e(value) == text


# --------------------------------------------------------------------------- templates

_DATA = T.alert_data({"__name__": "q", "job": "x"}, {"env": "prod"}, "http://ex:9090", 1e10)
_SAMPLES = [T.sample({"__name__": "q", "job": "x"}, 1e10), T.sample({"job": "y"}, 4.5)]


# Expected strings were produced by promtool 2.42 from the same templates.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ $labels }}", "map[__name__:q job:x]"),
        ("{{ .Value }}|{{ $value }}", "1e+10|1e+10"),
        ("{{ $externalLabels.env }} {{ $externalURL }}", "prod http://ex:9090"),
        ('{{ printf "%d" 3 }}|{{ printf "%d" $value }}', "3|%!d(float64=1e+10)"),
        ("{{ humanizePercentage 0.1234 }}|{{ humanize1024 2048 }}", "12.34%|2ki"),
        ("{{ humanize 0.00123 }}|{{ humanize 0 }}|{{ humanize 1234567 }}", "1.23m|0|1.235M"),
        ("{{ .Labels.job }}|{{ $labels.nope }}|", "x||"),
        (
            '{{ printf "%v %s %q %5.1f %e %g %x" $value $labels.job "hi" 3.14159 12345.678 '
            "0.000001 255 }}",
            '1e+10 x "hi"   3.1 1.234568e+04 1e-06 ff',
        ),
        ("{{ 1e21 }}|{{ 123456789.0 }}|{{ 0.00001 }}|{{ -0.0 }}", "1e+21|1.23456789e+08|1e-05|-0"),
        ('{{ if eq $labels.job "x" }}X{{ else if lt $value 5.0 }}L{{ else }}E{{ end }}', "X"),
        ('{{ toUpper "abc" }}{{ toLower "ABC" }}', "ABCabc"),
        (
            '{{ range $i, $v := query "q" }}{{ $i }}:{{ .Value }}:{{ .Labels.job }}{{ end }}',
            "0:1e+10:x1:4.5:y",
        ),
        ('{{ with query "nothing" }}some{{ else }}none{{ end }}', "none"),
        ("{{ humanizeDuration 0.0015 }}|{{ humanizeDuration 86400.5 }}", "1.5ms|1d 0h 0m 0s"),
        ("{{ humanizeDuration 59.123456 }}|{{ humanizeDuration -100 }}", "59.12s|-1m 40s"),
        (
            "{{ humanizeDuration 3700 }}|{{ humanize 1e30 }}|{{ humanize -1500 }}",
            "1h 1m 40s|1e+06Y|-1.5k",
        ),
        (
            '{{ query "q" | first | value }}|{{ len $labels }}|{{ index $labels "job" }}',
            "1e+10|2|x",
        ),
        (
            '{{ "a\\tb" }}|{{ `raw` }}|{{ and 1 0 }}|{{ or 0 "x" }}|{{ not true }}',
            "a\tb|raw|0|x|false",
        ),
        ('{{ print 1 2 "a" "b" 3.0 }}|{{ println "z" }}', "1 2ab3|z\n"),
        (
            '{{ printf "%.2f" 3.14159 }} {{ title "they\'re foo_bar x-y" }}',
            "3.14 They'Re Foo_bar X-Y",
        ),
        ("{{ humanizeTimestamp 100 }}", "1970-01-01 00:01:40 +0000 UTC"),
        ('{{ $x := "a" }}{{ $x = "b" }}{{ $x }}', "b"),
        ("a  {{- 1 -}}  b {{/* c */}} {{- /* x */ -}} z", "a1b z"),
        ('{{ reReplaceAll "(a+)" "<$1>" "baab" }}|{{ match "^x" "xy" }}', "b<aa>b|true"),
        ("{{ if gt $value 0.5 }}high{{ else }}low{{ end }}", "high"),
        (
            '{{ toTime 1.5 }}|{{ stripPort "host:90" }}|{{ stripPort "[::1]:90" }}',
            "1970-01-01 00:00:01.5 +0000 UTC|host|::1",
        ),
        (
            '{{ args 1 "x" }}|{{ parseDuration "1h30m" }}|{{ humanizeTimestamp 1.5e9 }}',
            "map[arg0:1 arg1:x]|5400|2017-07-14 02:40:00 +0000 UTC",
        ),
        (
            '{{ graphLink "up == 1" }}|{{ tableLink "a b" }}',
            "/graph?g0.expr=up+%3D%3D+1&g0.tab=0|/graph?g0.expr=a+b&g0.tab=1",
        ),
        (
            '{{ urlquery "a b&c" }}|{{ html "<a href=\\"x\\">" }}|{{ js "it\'s <b>" }}',
            "a+b%26c|&lt;a href=&#34;x&#34;&gt;|it\\'s \\u003Cb\\u003E",
        ),
        (
            '{{ reReplaceAll "(\\\\w+)@(\\\\w+)" "${2}_$1" "me@host" }}|{{ safeHtml "<b>" }}',
            "host_me|<b>",
        ),
        (
            "{{ with $x := 0 }}no{{ else }}zero{{ end }}|"
            "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
            "zero|__name__=q;job=x;",
        ),
        (
            "{{ gt $value 1 }}",
            "<error expanding template: error executing template __alert_B: template: "
            '__alert_B:1:115: executing "__alert_B" at <gt $value 1>: error calling gt: '
            "incompatible types for comparison>",
        ),
    ],
)
def test_template_expansion(text: str, expected: str) -> None:
    tmpl = T.parse(text, "__alert_B")
    got = T.expand(tmpl, _DATA, query=lambda q: _SAMPLES if q == "q" else [])
    assert got == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{ nofunc 1 }}", 'function "nofunc" not defined'),
        ("{{ $undefined }}", 'undefined variable "$undefined"'),
        ("{{ if }}", "missing value for if"),
        ("{{ end }}", "unexpected {{end}}"),
        ("{{ if 1 }}x", "unexpected EOF"),
        ('{{ "a }}', "unterminated quoted string"),
        ("{{ 1 | 2 }}", "non executable command in pipeline stage 2"),
        ('{{ define "x" }}{{ end }}', "not supported"),
        ("{{ .Labels.job", "unclosed action"),
    ],
)
def test_template_parse_errors(text: str, error: str) -> None:
    with pytest.raises(T.TemplateError, match="template: __alert_X:1: .*") as info:
        T.parse(text, "__alert_X")
    assert error in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_shortest_float_round_trips(value: float) -> None:
    text = go_g(value)
    assert float(text) == value
    mantissa = text.split("e")[0].lstrip("-")
    assert mantissa.replace(".", "").lstrip("0") or value == 0
    assert go_float_e(value) == "NaN" or float(go_float_e(value)) == value


# --------------------------------------------------------------------- rule validation


GOOD_RULE = "      - record: ok\n        expr: up\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  - name: g\n    rules:\n" + GOOD_RULE + "  - name: g\n    rules: []\n",
            'groupname: "g" is repeated in the same file',
        ),
        (
            "  - name: g\n    rules:\n      - record: a\n        alert: b\n        expr: up\n",
            "only one of 'record' and 'alert' must be set",
        ),
        ("  - name: g\n    rules:\n      - expr: up\n", "one of 'record' or 'alert' must be set"),
        (
            "  - name: g\n    rules:\n      - record: 'bad name'\n        expr: up\n",
            'rule 1, "bad name": invalid recording rule name: bad name',
        ),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: 'up +'\n",
            'group "g", rule 1, "A": could not parse expression',
        ),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: up\n        for: 5\n",
            'not a valid duration string: "5"',
        ),
        ("  - name: g\n    interval: 1x\n    rules: []\n", 'not a valid duration string: "1x"'),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: up\n        bogus: 1\n",
            'rule 1, "A": field bogus not found in rule',
        ),
        ("  - name: g\n    extra: 1\n    rules: []\n", "field extra not found in rule group"),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: up\n"
            "        annotations: {s: '{{ humanise $value }}'}\n",
            'annotation "s": template: __alert_A:1: function "humanise" not defined',
        ),
        (
            "  - name: g\n    rules:\n      - record: r\n        expr: up\n        for: 1m\n",
            "invalid field 'for' in recording rule",
        ),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: up\n"
            "        labels: {__name__: x}\n",
            "invalid label name: __name__",
        ),
        ("  - name: ''\n    rules: []\n", "Groupname must not be empty"),
        (
            "  - name: g\n    rules:\n      - alert: A\n        expr: ''\n",
            "field 'expr' must be set in rule",
        ),
    ],
)
def test_validation_errors_name_file_group_and_rule(body: str, message: str) -> None:
    with pytest.raises(RuleFileError) as info:
        parse_rules("groups:\n" + body, "rules/x.yml")
    assert any(e.startswith("rules/x.yml: ") and message in e for e in info.value.errors), (
        info.value.errors
    )
    assert isinstance(info.value, BadData)


def test_all_errors_are_reported_at_once() -> None:
    text = "groups:\n  - name: g\n    rules:\n      - expr: up\n      - record: 'a b'\n"
    with pytest.raises(RuleFileError) as info:
        parse_rules(text + "        expr: 'sum('\n", "f.yml")
    assert len(info.value.errors) == 3
    assert [e.split(": ", 2)[1] for e in info.value.errors] == ["4:9", "6:15", "5:9"]
    assert 'rule 1, ""' in info.value.errors[0] and 'rule 2, "a b"' in info.value.errors[1]


def test_yaml_oddities() -> None:
    assert parse_rules("", "f.yml") == []
    with pytest.raises(RuleFileError, match="field foo not found in rule file"):
        parse_rules("foo: 1\n", "f.yml")
    with pytest.raises(RuleFileError, match='mapping key "labels" already defined'):
        parse_rules(
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up\n"
            "    labels: {a: b}\n    labels: {c: d}\n",
            "f.yml",
        )
    with pytest.raises(RuleFileError, match="yaml"):
        parse_rules("groups: [", "f.yml")
    spec = parse_rules("groups:\n- name: g\n  rules:\n  - record: r\n    expr: 1\n", "f.yml")
    assert spec[0].rules[0].expr == "1"


@pytest.mark.parametrize(
    ("text", "ms"),
    [("0", 0), ("5m", 300_000), ("1h30m", 5_400_000), ("1d", 86_400_000), ("10ms", 10)],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms
    assert format_duration(ms) == ("0s" if ms == 0 else text)
    for bad in ("", "5", "1x", "m", "-1m", "1.5h"):
        with pytest.raises(ValueError):
            parse_duration_ms(bad)


# ------------------------------------------------------------------ loading, reloading


def test_load_keeps_old_rules_on_error(tmp_path: Path) -> None:
    series = Series()
    m, _, _ = manager(tmp_path, DOWN_RULES, series)
    before = m.groups
    write(tmp_path, "rules.yml", DOWN_RULES.replace("for: 2m", "for: soon"))
    with pytest.raises(RuleFileError, match="rules.yml"):
        m.load()
    assert m.groups is before
    assert m.last_error is not None and "soon" in m.last_error
    assert m.reload() is False
    assert m.reload_if_changed() is False  # nothing changed since the failed attempt
    write(tmp_path, "more.yml", DOWN_RULES.replace("name: g", "name: h"))
    assert m.reload_if_changed() is False  # rules.yml is still broken
    write(tmp_path, "rules.yml", DOWN_RULES)
    os.utime(tmp_path / "rules.yml", (1, 1))
    assert m.reload_if_changed() is True
    assert [g.name for g in m.groups] == ["h", "g"]  # files in glob order: more.yml first
    assert m.last_error is None
    assert m.reload_if_changed() is False


def test_reload_carries_state_and_stales_removed_series(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 100 * MIN)
    series.table["vector(1)"] = lambda t: [((), 1.0)]
    text = DOWN_RULES + "      - record: one\n        expr: vector(1)\n"
    text += "  - name: gone\n    rules:\n      - record: two\n        expr: vector(1)\n"
    clock = [0.0]
    write(tmp_path, "rules.yml", text)
    rec = Recorder()
    m = RuleManager([str(tmp_path / "rules.yml")], series, rec, clock=lambda: clock[0])
    m.load()
    for i in range(4):
        m.evaluate_group_at("g", i * MIN)
        m.evaluate_group_at("gone", i * MIN)
    old_alert = m.groups[0].rules[0]
    assert isinstance(old_alert, AlertingRule) and old_alert.state() is AlertState.FIRING
    # Change the group (drop the recording rule), remove the other group.
    clock[0] = 250.0
    write(tmp_path, "rules.yml", DOWN_RULES.replace("severity: page", "severity: page\n"))
    m.load()
    gone = rec.at(250_000)
    assert gone == {(("__name__", "two"),): gone[(("__name__", "two"),)]}
    assert is_stale(next(iter(gone.values())))
    m.evaluate_group_at("g", 5 * MIN)
    new_alert = m.groups[0].rules[0]
    assert isinstance(new_alert, AlertingRule) and new_alert.state() is AlertState.FIRING
    assert new_alert.active_alerts()[0].active_at_ms == 0
    at5 = rec.at(5 * MIN)
    assert is_stale(at5[(("__name__", "one"),)])
    m.evaluate_group_at("g", 6 * MIN)
    assert (("__name__", "one"),) not in rec.at(6 * MIN)


def test_unchanged_groups_are_kept_as_they_are(tmp_path: Path) -> None:
    m, _, _ = manager(tmp_path, DOWN_RULES, Series())
    group = m.groups[0]
    m.load()
    assert m.groups[0] is group


def test_from_settings(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", DOWN_RULES)
    s = dataclasses.replace(
        MonitoringSettings(),
        rule_files=f"{tmp_path}/a.yml, {tmp_path}/none*.yml",
        evaluation_interval_s=30.0,
    )
    m = RuleManager.from_settings(s, Series(), Recorder())
    m.load()
    assert m.default_interval_ms == 30_000 and [g.name for g in m.groups] == ["g"]


# ---------------------------------------------------------------------- the run loop


def test_run_loop_on_virtual_time(tmp_path: Path) -> None:
    now = [1000.0]
    slept: list[float] = []
    stop = asyncio.Event()
    series = Series()
    series.table["up == 0"] = down_between(0, 10**9)
    notified_on: set[int] = set()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        if len(series.calls) >= 12:
            stop.set()

    text = DOWN_RULES.replace("for: 2m", "for: 0s")
    text += "  - name: fast\n    interval: 20s\n    rules:\n"
    text += "      - record: one\n        expr: vector(1)\n"
    write(tmp_path, "rules.yml", text)
    m = RuleManager(
        [str(tmp_path / "rules.yml")],
        series,
        Recorder(),
        lambda alerts: notified_on.add(threading.get_ident()),
        clock=lambda: now[0],
        sleep=sleep,
    )
    m.load()
    asyncio.run(m.run(stop))  # evaluations on a worker thread
    by_expr: dict[str, list[int]] = {}
    for expr, t in series.calls:
        by_expr.setdefault(expr, []).append(t)
    for expr, name in (("up == 0", "g"), ("vector(1)", "fast")):
        g, ts = m.group(name), by_expr[expr]
        assert len(ts) >= 2
        assert all(t % g.interval_ms == g.offset_ms() for t in ts)  # on the group's grid
        assert all(b - a == g.interval_ms for a, b in zip(ts, ts[1:], strict=False))
        assert 1_000_000 < ts[0] <= 1_000_000 + g.interval_ms
    assert all(s >= 0 for s in slept)
    assert notified_on == {threading.get_ident()}  # notify runs on the loop's thread


def test_run_skips_missed_ticks(tmp_path: Path) -> None:
    now = [0.0]
    stop = asyncio.Event()
    series = Series()

    async def sleep(seconds: float) -> None:
        now[0] += seconds + 185.0  # oversleep by three intervals
        if len(series.calls) >= 2:
            stop.set()

    write(tmp_path, "rules.yml", DOWN_RULES)
    m = RuleManager(
        [str(tmp_path / "rules.yml")], series, Recorder(), clock=lambda: now[0], sleep=sleep
    )
    m.load()
    asyncio.run(m.run(stop, in_thread=False))
    seen = [t for _, t in series.calls]
    assert seen[1] - seen[0] >= 3 * MIN
    assert all(t <= now[0] * 1000 for t in seen)
    g = m.group("g")
    assert all(t % g.interval_ms == g.offset_ms() for t in seen)


def test_notify_failure_does_not_stop_evaluation(tmp_path: Path) -> None:
    series = Series()
    series.table["up == 0"] = down_between(0, 10**9)

    def broken(alerts: list[Alert]) -> None:
        raise RuntimeError("alertmanager is down")

    write(tmp_path, "rules.yml", DOWN_RULES.replace("for: 2m", "for: 0s"))
    m = RuleManager([str(tmp_path / "rules.yml")], series, Recorder(), broken, clock=lambda: 0)
    m.load()
    m.evaluate_group_at("g", 0)
    assert m.groups[0].rules[0].status.health == "ok"


# ------------------------------------------------------------ with the real engine


def test_results_from_json_shapes() -> None:
    vec = {"resultType": "vector", "result": [{"metric": {"a": "1"}, "value": [1.0, "+Inf"]}]}
    assert results_from_json(vec) == [((("a", "1"),), math.inf)]
    assert results_from_json({"resultType": "scalar", "result": [1.0, "2.5"]}) == [((), 2.5)]
    with pytest.raises(ExecutionError, match="not a vector or scalar"):
        results_from_json({"resultType": "string", "result": [1.0, "x"]})


def test_with_engine_and_memory_storage(tmp_path: Path) -> None:
    storage = MemoryStorage()
    for i in range(10):
        storage.add({"__name__": "up", "job": "api", "instance": "a"}, i * MIN, 0.0)
        storage.add({"__name__": "up", "job": "api", "instance": "b"}, i * MIN, 1.0)

    class Appender:
        def __init__(self) -> None:
            self.pending: list[tuple[Labels, int, float]] = []

        def append(self, labels: Labels, t: int, v: float) -> None:
            self.pending.append((labels, t, v))

        def commit(self) -> None:
            for lb, t, v in self.pending:
                storage.add(lb, t, v)

        def rollback(self) -> None:
            self.pending.clear()

    write(
        tmp_path,
        "r.yml",
        """
groups:
  - name: g
    rules:
      - record: job:up:avg
        expr: avg by (job) (up)
      - alert: Degraded
        expr: job:up:avg < 0.75
        annotations:
          summary: "{{ $value | humanizePercentage }} of {{ $labels.job }} up"
""",
    )
    engine = Engine(storage)
    m = RuleManager([str(tmp_path / "r.yml")], engine, Appender, clock=lambda: 0.0)
    m.load()
    m.evaluate_group_at("g", 5 * MIN)
    assert engine_evaluator(engine)("job:up:avg", 5 * MIN) == [
        (labels_of({"__name__": "job:up:avg", "job": "api"}), 0.5)
    ]
    alerts = m.alerts_json()["alerts"]
    assert alerts[0]["annotations"] == {"summary": "50% of api up"}
    assert alerts[0]["state"] == "firing"
    assert engine_evaluator(engine)("ALERTS", 5 * MIN)[0][1] == 1.0
    with pytest.raises(BadData):
        engine_evaluator(engine)("up +", 0)


_PIECES = st.sampled_from(
    [
        "{{",
        "}}",
        " ",
        "-",
        "$value",
        "$labels",
        ".job",
        ".Labels",
        "|",
        "humanize",
        "printf",
        '"%.2f"',
        '"a"',
        "1",
        "2.5",
        "if",
        "else",
        "end",
        "range",
        "with",
        "(",
        ")",
        ":=",
        "$x",
        "gt",
        "eq",
        "query",
        "first",
        "/*",
        "*/",
        "text",
        "\n",
        "`r`",
        "nil",
        "true",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=25))
def test_template_parser_never_crashes(pieces: list[str]) -> None:
    text = "".join(pieces)
    try:
        tmpl = T.parse(text, "__alert_F")
    except T.TemplateError:
        return
    out = T.expand(tmpl, _DATA, query=lambda q: _SAMPLES)
    assert isinstance(out, str)


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.text(alphabet="%-+# 0123456789.vsdqfeEgGxXtc%ab", max_size=12),
    args=st.lists(
        st.one_of(st.floats(), st.integers(-1000, 1000), st.text(max_size=3), st.booleans()),
        max_size=3,
    ),
)
def test_printf_never_raises(fmt: str, args: list[Any]) -> None:
    assert isinstance(go_sprintf(fmt, args), str)


@pytest.mark.parametrize(
    ("expr", "query"),
    [
        ("up==0", "up == 0"),
        ("sum by(job)(rate(x[5m]))>0.5", "sum by (job) (rate(x[5m])) > 0.5"),
        ("avg without(instance)(up)", "avg without (instance) (up)"),
        (
            "a_very_long_metric_name_number_one + " * 4 + "x\n",
            ("a_very_long_metric_name_number_one + " * 4 + "x"),
        ),
    ],
)
def test_query_is_shown_as_prometheus_prints_it(tmp_path: Path, expr: str, query: str) -> None:
    text = (
        f"groups:\n  - name: g\n    rules:\n      - record: r\n        expr: {json.dumps(expr)}\n"
    )
    m, _, _ = manager(tmp_path, text, Series())
    assert m.rules_json()["groups"][0]["rules"][0]["query"] == query


SLOW_RULES = """
groups:
  - name: g
    interval: 1m
    rules:
      - alert: Down
        expr: up == 0
        for: 20m
"""


@pytest.mark.parametrize(
    ("last_written", "restart", "fires_at"),
    [
        # 5 m pending when the last run stopped, back after 7 m down: 15 m left, shifted by
        # the downtime (Prometheus's rule) -> fires at 12 + 15 = 27 m, not 12 + 20 = 32 m
        (5 * MIN, 12 * MIN, 27 * MIN),
        # 15 m pending (5 m left, under the 10 m grace period): fires after the grace period
        (15 * MIN, 16 * MIN, 26 * MIN),
        # last run stopped over an hour ago: nothing to restore, the clock starts over
        (5 * MIN, 70 * MIN, 90 * MIN),
    ],
)
def test_for_state_is_restored_after_a_restart(
    tmp_path: Path, last_written: int, restart: int, fires_at: int
) -> None:
    """The first run wrote ALERTS_FOR_STATE every minute; a new manager reading the same
    storage (a restart) restores how long the alert had been pending."""
    storage = MemoryStorage()
    for_state = labels_of({"__name__": "ALERTS_FOR_STATE", "alertname": "Down", "job": "api"})
    for t in range(0, last_written + 1, MIN):
        storage.add(for_state, t, 0.0)  # active since t = 0 (value in seconds)
    series = Series()
    up = labels_of({"__name__": "up", "job": "api"})
    series.table["up == 0"] = lambda t: [(up, 0.0)]
    m, _rec, _sent = manager(tmp_path, SLOW_RULES, series, querier=storage)
    rule = m.groups[0].rules[0]
    assert isinstance(rule, AlertingRule)
    t = restart
    while t < fires_at:
        m.evaluate_group_at("g", t)
        assert [a.state for a in rule.active.values()] == [AlertState.PENDING], t
        t += MIN
    m.evaluate_group_at("g", fires_at)
    assert [a.state for a in rule.active.values()] == [AlertState.FIRING]


def test_restore_happens_once_at_start_up(tmp_path: Path) -> None:
    storage = MemoryStorage()
    for_state = labels_of({"__name__": "ALERTS_FOR_STATE", "alertname": "Down", "job": "api"})
    storage.add(for_state, 5 * MIN, 0.0)
    series = Series()
    series.table["up == 0"] = lambda t: [(labels_of({"__name__": "up", "job": "api"}), 0.0)]
    m, _rec, _sent = manager(tmp_path, SLOW_RULES, series, querier=storage)
    m.evaluate_group_at("g", 12 * MIN)
    rule = m.groups[0].rules[0]
    assert isinstance(rule, AlertingRule)
    (alert,) = rule.active.values()
    assert alert.active_at_ms == 7 * MIN  # 0 + the 7 minutes the server was down
    storage.add(for_state, 12 * MIN, 600.0)  # what a later evaluation reads must not matter
    m.evaluate_group_at("g", 13 * MIN)
    assert alert.active_at_ms == 7 * MIN
