"""The notifier on virtual time, its routing tree and config checks, silences, retries, and the
two built-in receivers against a real HTTP server and a real SMTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import http.server
import itertools
import json
import random
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scalelab.monitoring.alert_intake import Alert, fingerprint
from scalelab.monitoring.delivery import (
    DELIVERY_TRANSITIONS,
    Delivery,
    DeliveryEvent,
    IntegrationDelivery,
    LogEntry,
    needs_update,
)
from scalelab.monitoring.errors import BadData, NotFound
from scalelab.monitoring.model import labels_of
from scalelab.monitoring.notify import ConfigError, Notifier, parse_config
from scalelab.monitoring.receivers import (
    DeliveryError,
    GlobalConfig,
    Notification,
    NotifiedAlert,
    SendContext,
    email_subject,
    register_receiver,
    rfc3339,
    unregister_receiver,
)
from scalelab.monitoring.silences import SilenceState

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Recorder:
    """A test integration: records what it is sent; the first `fail` sends raise."""

    send_resolved: bool = True
    fail: int = 0
    retryable: bool = True
    attempts: list[float] = field(default_factory=list)
    sent: list[Notification] = field(default_factory=list)
    clock: Clock | None = None

    async def send(self, notification: Notification, ctx: SendContext) -> None:
        self.attempts.append(self.clock() if self.clock else 0.0)
        if len(self.attempts) <= self.fail:
            raise DeliveryError("receiver is down", retryable=self.retryable)
        self.sent.append(notification)


def _recorder(cfg: Mapping[str, Any], g: GlobalConfig) -> Recorder:
    return Recorder(
        send_resolved=cfg.get("send_resolved", True),
        fail=cfg.get("fail", 0),
        retryable=cfg.get("retryable", True),
    )


@pytest.fixture(autouse=True)
def recorder_kind() -> Iterator[None]:
    register_receiver("test_record", _recorder, replace=True)
    yield
    unregister_receiver("test_record")


def config(
    route: Mapping[str, Any] | None = None, record: Mapping[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    base = {
        "receiver": "rec",
        "group_by": ["alertname"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "1h",
    }
    return {
        "global": {"resolve_timeout": "1d"},
        "route": base | dict(route or {}),
        "receivers": [{"name": "rec", "test_record_configs": [dict(record or {})]}],
        **top,
    }


def make(
    cfg: Mapping[str, Any] | None = None, clock: Clock | None = None, **kw: Any
) -> tuple[Notifier, Clock, Recorder]:
    clock = clock or Clock()
    n = Notifier(cfg or config(), clock=clock, rng=random.Random(7), **kw)
    rec = n.config.receivers["rec"][0]
    assert isinstance(rec, Recorder)
    rec.clock = clock
    return n, clock, rec


def alert(name: str = "HighLatency", start: float = T0, end: float | None = None, **labels: str):
    return Alert(
        labels={"alertname": name, **labels},
        annotations={"summary": f"{name} is bad"},
        starts_at=start,
        ends_at=end,
        generator_url="http://prom:9090/graph?g0.expr=up",
    )


async def at(n: Notifier, clock: Clock, t: float) -> None:
    clock.t = t
    await n.tick()


def fps(notification: Notification) -> list[tuple[str, str]]:
    return [(a.labels["alertname"], a.status) for a in notification.alerts]


# --- timing: group_wait, group_interval, repeat_interval, dedupe, resolved ----------------


def test_group_wait_delays_the_first_notification() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.receive([alert()])
        await at(n, clock, T0 + 29.999)
        assert rec.sent == []
        await at(n, clock, T0 + 30)
        assert len(rec.sent) == 1
        sent = rec.sent[0]
        assert sent.status == "firing" and fps(sent) == [("HighLatency", "firing")]
        assert sent.group_key == '{}:{alertname="HighLatency"}'
        assert sent.group_labels == {"alertname": "HighLatency"}
        assert sent.alerts[0].ends_at is None  # the end of a firing alert is not exposed

    asyncio.run(main())


def test_group_interval_sends_changes_and_dedupes_the_rest() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.receive([alert(instance="a")])
        await at(n, clock, T0 + 30)
        clock.t = T0 + 100
        n.receive([alert(instance="a"), alert(instance="b", start=T0 + 100)])
        await at(n, clock, T0 + 329)  # the group is next looked at 5m after its first flush
        assert len(rec.sent) == 1
        await at(n, clock, T0 + 330)
        assert len(rec.sent) == 2
        assert [a.labels["instance"] for a in rec.sent[1].alerts] == ["a", "b"]
        for k in range(2, 6):  # the same alerts, sent again by every evaluation: no news
            n.receive([alert(instance="a"), alert(instance="b", start=T0 + 100)])
            await at(n, clock, T0 + 30 + 300 * k)
        assert len(rec.sent) == 2

    asyncio.run(main())


def test_repeat_interval_resends_an_unchanged_group() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.receive([alert()])
        for k in range(13):  # flushes at +30s, +5m30s, ... +1h0m30s
            await at(n, clock, T0 + 30 + 300 * k)
        assert len(rec.sent) == 2  # first, then exactly one repeat_interval later
        assert [t - T0 for t in rec.attempts] == [30, 3630]

    asyncio.run(main())


def test_resolved_is_sent_once_then_dropped() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.receive([alert(instance="a"), alert(instance="b")])
        await at(n, clock, T0 + 30)
        clock.t = T0 + 200
        n.receive([alert(instance="a", end=T0 + 200)])
        await at(n, clock, T0 + 330)
        assert len(rec.sent) == 2
        assert [(a.labels["instance"], a.status) for a in rec.sent[1].alerts] == [
            ("a", "resolved"),
            ("b", "firing"),
        ]
        assert rec.sent[1].status == "firing"
        assert rec.sent[1].alerts[0].ends_at == T0 + 200
        clock.t = T0 + 400
        n.receive([alert(instance="b", end=T0 + 400)])
        await at(n, clock, T0 + 630)
        assert rec.sent[2].status == "resolved"
        assert [a.labels["instance"] for a in rec.sent[2].alerts] == ["b"]
        assert n._groups == {}  # the group emptied and went away
        for k in range(3, 20):
            await at(n, clock, T0 + 30 + 300 * k)
        assert len(rec.sent) == 3
        assert n.alerts_json() == []

    asyncio.run(main())


def test_without_send_resolved_resolution_is_quiet_and_a_new_firing_starts_over() -> None:
    async def main() -> None:
        n, clock, rec = make(config(record={"send_resolved": False}))
        n.receive([alert()])
        await at(n, clock, T0 + 30)
        clock.t = T0 + 60
        n.receive([alert(end=T0 + 60)])
        await at(n, clock, T0 + 330)
        assert len(rec.sent) == 1 and n._groups == {}
        clock.t = T0 + 1000
        n.receive([alert(start=T0 + 1000)])
        await at(n, clock, T0 + 1029)
        assert len(rec.sent) == 1
        await at(n, clock, T0 + 1030)
        assert len(rec.sent) == 2 and rec.sent[1].status == "firing"

    asyncio.run(main())


def test_an_alert_older_than_group_wait_is_sent_at_once() -> None:
    async def main() -> None:
        n, clock, rec = make()
        clock.t = T0 + 3600
        n.receive([alert(start=T0)])
        await n.tick()
        assert len(rec.sent) == 1

    asyncio.run(main())


def test_alert_without_end_times_out_after_resolve_timeout() -> None:
    async def main() -> None:
        cfg = config() | {"global": {"resolve_timeout": "5m"}}
        n, clock, rec = make(cfg)
        n.receive([Alert(labels={"alertname": "X"})])  # no start, no end
        await at(n, clock, T0 + 30)
        await at(n, clock, T0 + 330)  # 5m after arrival: it counts as resolved
        assert [s.status for s in rec.sent] == ["firing", "resolved"]
        assert rec.sent[1].alerts[0].ends_at == T0 + 300

    asyncio.run(main())


def test_group_by_splits_and_dots_group_by_every_label() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.receive([alert("A", instance="1"), alert("A", instance="2"), alert("B")])
        await at(n, clock, T0 + 30)
        assert sorted(s.group_key for s in rec.sent) == [
            '{}:{alertname="A"}',
            '{}:{alertname="B"}',
        ]
        n, clock, rec = make(config({"group_by": ["..."]}))
        n.receive([alert("A", instance="1"), alert("A", instance="2")])
        await at(n, clock, T0 + 30)
        assert sorted(s.group_key for s in rec.sent) == [
            '{}:{alertname="A", instance="1"}',
            '{}:{alertname="A", instance="2"}',
        ]
        n, clock, rec = make(config({"group_by": []}))
        n.receive([alert("A"), alert("B")])
        await at(n, clock, T0 + 30)
        assert [s.group_key for s in rec.sent] == ["{}:{}"]
        assert fps(rec.sent[0]) == [("A", "firing"), ("B", "firing")]

    asyncio.run(main())


def test_invalid_alerts_are_reported_after_the_valid_ones_are_taken() -> None:
    n, _, _ = make()
    with pytest.raises(BadData) as err:
        n.receive(
            [
                Alert(labels={}),
                alert("Good"),
                Alert(labels={"a": "b"}, starts_at=T0, ends_at=T0 - 1),
                Alert(labels={"bad-name": "x"}),
            ]
        )
    assert "alert 0" in str(err.value) and "alert 2" in str(err.value)
    assert "alert 3" in str(err.value)
    assert [a["labels"]["alertname"] for a in n.alerts_json()] == ["Good"]


def test_alert_json_round_trip_and_receive_json() -> None:
    a = alert(end=T0 + 60, job="api")
    assert Alert.from_json(json.loads(json.dumps(a.to_json()))) == a
    n, clock, _ = make()
    n.receive_json([a.to_json() | {"endsAt": "0001-01-01T00:00:00Z"}])
    (got,) = n.alerts_json()
    assert got["labels"] == a.labels and got["startsAt"] == "2023-11-14T22:13:20Z"
    with pytest.raises(BadData):
        n.receive_json({"labels": {}})
    with pytest.raises(BadData):
        n.receive_json([{"labels": {"a": 1}}])


def test_fingerprint_is_prometheus_fnv1a() -> None:
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis
    assert fingerprint({"a": "b", "c": "d"}) == fingerprint({"c": "d", "a": "b"})
    assert fingerprint({"a": "bc"}) != fingerprint({"ab": "c"})  # the separator matters


# --- dedup rule and delivery state machine, as tables ---------------------------------------

F, R = frozenset({"f"}), frozenset({"r"})
NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    ("entry", "firing", "resolved", "send_resolved", "now", "expected"),
    [
        (None, F, NONE, True, 0, True),  # first notification
        (None, NONE, R, True, 0, False),  # only resolved alerts, never told: quiet
        (LogEntry(F, NONE, 0), F | {"g"}, NONE, True, 10, True),  # a new firing alert
        (LogEntry(F, NONE, 0), F, NONE, True, 10, False),  # unchanged
        (LogEntry(F, NONE, 0), F, NONE, True, 100, True),  # repeat interval passed
        (LogEntry(F, NONE, 0), NONE, R, False, 10, True),  # all resolved, even unwanted
        (LogEntry(NONE, R, 0), NONE, R, True, 10, False),  # nothing it knew is firing
        (LogEntry(F | R, NONE, 0), F, R, True, 10, True),  # newly resolved, wanted
        (LogEntry(F | R, NONE, 0), F, R, False, 10, False),  # newly resolved, unwanted
        (LogEntry(F, R, 0), F, R, True, 10, False),  # resolved already told
    ],
)
def test_needs_update(
    entry: LogEntry | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    send_resolved: bool,
    now: float,
    expected: bool,
) -> None:
    assert needs_update(entry, firing, resolved, send_resolved, 100, now) is expected


@pytest.mark.parametrize(("state", "event"), list(itertools.product(Delivery, DeliveryEvent)))
def test_delivery_transitions_are_exactly_the_table(state: Delivery, event: DeliveryEvent) -> None:
    d = IntegrationDelivery("r", Recorder(), state=state)
    if (state, event) in DELIVERY_TRANSITIONS:
        d.step(event)
        assert d.state is DELIVERY_TRANSITIONS[(state, event)]
    else:
        with pytest.raises(RuntimeError):
            d.step(event)


# --- routing tree and config checks ---------------------------------------------------------

TREE = """
global: {resolve_timeout: 1d}
route:
  receiver: default
  group_by: [alertname]
  group_wait: 10s
  routes:
    - matchers: ['team="db"']
      receiver: db
      group_wait: 1m
      routes:
        - matchers: ['severity="critical"']
          receiver: db-pager
    - matchers: ['team=~"front.*"']
      receiver: frontend
      continue: true
      group_by: ['...']
    - match: {severity: critical}
      receiver: pager
    - matchers: [env!=prod, 'env!~"stag.*"']
      receiver: dev
receivers:
  - {name: default}
  - {name: db}
  - {name: db-pager}
  - {name: frontend}
  - {name: pager}
  - {name: dev}
"""


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"team": "db", "env": "prod"}, ["db"]),
        ({"team": "db", "severity": "critical"}, ["db-pager"]),  # first match wins
        ({"team": "frontend", "severity": "critical", "env": "prod"}, ["frontend", "pager"]),
        ({"team": "frontend", "env": "prod"}, ["frontend"]),
        ({"severity": "critical", "env": "prod"}, ["pager"]),
        ({"env": "dev"}, ["dev"]),
        ({"env": "staging"}, ["default"]),
        ({"env": "prod"}, ["default"]),
    ],
)
def test_routing_tree(labels: dict[str, str], receivers: list[str]) -> None:
    root = parse_config(TREE).route
    assert [r.receiver for r in root.match(labels_of(labels))] == receivers


def test_routes_inherit_and_have_alertmanager_keys() -> None:
    root = parse_config(TREE).route
    db, front, pager, _ = root.routes
    (db_pager,) = db.routes
    assert (root.group_wait, db.group_wait, db_pager.group_wait) == (10, 60, 60)
    assert db_pager.group_by == ("alertname",) and db_pager.group_interval == 300
    assert front.group_by_all and front.continue_ and not pager.continue_
    assert db_pager.key == '{}/{team="db"}/{severity="critical"}'
    assert front.key == '{}/{team=~"front.*"}'
    assert sorted(r.index for r in root.walk()) == list(range(6))


BAD_CONFIGS = [
    ({"receivers": [{"name": "a"}]}, "route is required"),
    ({"route": {"receiver": "a", "matchers": ['x="y"']}}, "root route must not have matchers"),
    ({"route": {"receiver": "nope"}}, "undefined receiver 'nope'"),
    ({"route": {"receiver": "a"}, "receivers": [{"name": "a"}, {"name": "a"}]}, "duplicate"),
    ({"route": {"receiver": "a", "group_wait": "5 minutes"}}, "route: group_wait"),
    ({"route": {"receiver": "a", "group_interval": "0"}}, "group_interval cannot be zero"),
    ({"route": {"receiver": "a", "group_by": ["...", "x"]}}, "'...' cannot be combined"),
    ({"route": {"receiver": "a", "recevier": "a"}}, "unknown field(s) recevier"),
    ({"route": {"receiver": "a", "routes": [{"matchers": ['a=="b']}]}}, "routes[0]: matchers[0]"),
    ({"route": {"receiver": "a"}, "receivers": [{"name": "a", "slack_configs": [{}]}]}, "slack"),
    (
        {"route": {"receiver": "a"}, "receivers": [{"name": "a", "webhook_configs": [{}]}]},
        "receivers[0] (a).webhook_configs[0]: url is required",
    ),
    (
        {
            "route": {"receiver": "a"},
            "receivers": [{"name": "a", "email_configs": [{"to": "x@y"}]}],
        },
        "no sender",
    ),
    ({"route": {"receiver": "a"}, "inhibit_rules": [{"equals": ["x"]}]}, "inhibit_rules[0]"),
    ({"route": {"receiver": "a"}, "templates": ["x.tmpl"]}, "unknown field(s) templates"),
]


@pytest.mark.parametrize(("cfg", "message"), BAD_CONFIGS)
def test_config_errors_say_where(cfg: dict[str, Any], message: str) -> None:
    cfg.setdefault("receivers", [{"name": "a"}])
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert message in str(err.value)


def test_config_from_yaml_text_and_bad_yaml() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config("route: [")
    cfg = parse_config(
        "route: {receiver: w}\nreceivers:\n- name: w\n  webhook_configs: [{url: 'http://h/x'}]\n"
        "  email_configs: [{to: a@b.c, from: n@b.c, smarthost: 'mx:25'}]\n"
    )
    hook, mail = cfg.receivers["w"]
    assert hook.send_resolved and not mail.send_resolved  # Alertmanager's defaults


# --- silences and inhibition ----------------------------------------------------------------


def test_silenced_alerts_are_not_sent_and_show_as_suppressed() -> None:
    async def main() -> None:
        n, clock, rec = make()
        sid = n.silences.create(['instance="a"'], T0, T0 + 3600, "ops", "maintenance")
        n.receive([alert(instance="a"), alert(instance="b")])
        await at(n, clock, T0 + 30)
        assert [a.labels["instance"] for a in rec.sent[0].alerts] == ["b"]
        by_instance = {a["labels"]["instance"]: a["status"] for a in n.alerts_json()}
        assert by_instance["a"] == {
            "inhibitedBy": [],
            "silencedBy": [sid],
            "mutedBy": [],
            "state": "suppressed",
        }
        assert by_instance["b"]["state"] == "active"
        assert [a["labels"]["instance"] for a in n.alerts_json(silenced=False)] == ["b"]
        assert [a["labels"]["instance"] for a in n.alerts_json(active=False)] == ["a"]
        assert n.alerts_json(filter=['instance="b"'])[0]["receivers"] == [{"name": "rec"}]
        n.expire_silence(sid)
        await at(n, clock, T0 + 330)
        assert [a.labels["instance"] for a in rec.sent[1].alerts] == ["a", "b"]

    asyncio.run(main())


def test_a_fully_silenced_group_sends_nothing() -> None:
    async def main() -> None:
        n, clock, rec = make()
        n.silences.create(['alertname=~"High.*"'], T0, T0 + 3600, "ops", "")
        n.receive([alert()])
        for k in range(5):
            await at(n, clock, T0 + 30 + 300 * k)
        assert rec.sent == []

    asyncio.run(main())


def test_silence_states_and_the_expire_table() -> None:
    n, clock, _ = make()
    pending = n.silences.create(['a="1"'], T0 + 100, T0 + 200, "ops", "later")
    active = n.silences.create(['a="2"'], T0 - 100, T0 + 200, "ops", "now")
    assert n.silences.get(active).starts_at == T0  # a new silence cannot start in the past
    assert n.silences.get(pending).state(T0) is SilenceState.PENDING
    assert n.silences.get(active).state(T0) is SilenceState.ACTIVE
    clock.t = T0 + 10
    n.expire_silence(pending)
    s = n.silences.get(pending)
    assert (s.starts_at, s.ends_at, s.state(clock.t)) == (T0 + 10, T0 + 10, SilenceState.EXPIRED)
    n.expire_silence(active)
    assert n.silences.get(active).ends_at == T0 + 10
    with pytest.raises(BadData, match="already expired"):
        n.expire_silence(active)
    with pytest.raises(NotFound):
        n.silences.get("nope")
    assert [s["status"]["state"] for s in n.silences_json()] == ["expired", "expired"]


@pytest.mark.parametrize(
    ("matchers", "start", "end", "message"),
    [
        ([], T0, T0 + 1, "at least one matcher"),
        (['a=~".*"', 'b=""'], T0, T0 + 1, "must not match the empty string"),
        (['a="1"'], T0 + 5, T0 + 1, "start time must be before end time"),
        (['a="1"'], T0 - 10, T0 - 5, "end time can't be in the past"),
        (['a=="1"'], T0, T0 + 1, "bad matcher"),
    ],
)
def test_silence_validation(matchers: list[str], start: float, end: float, message: str) -> None:
    n, _, _ = make()
    with pytest.raises(BadData, match=message):
        n.silences.create(matchers, start, end, "ops", "")


def test_silence_update_in_place_or_replace() -> None:
    n, clock, _ = make()
    sid = n.silences.create(['a="1"'], T0, T0 + 100, "ops", "")
    assert n.silences.create(['a="1"'], T0, T0 + 500, "ops", "longer", silence_id=sid) == sid
    assert n.silences.get(sid).ends_at == T0 + 500
    clock.t = T0 + 10
    new = n.silences.create(['a="2"'], T0, T0 + 500, "ops", "other", silence_id=sid)
    assert new != sid
    assert n.silences.get(sid).state(clock.t) is SilenceState.EXPIRED
    assert n.silences.get(new).state(clock.t) is SilenceState.ACTIVE
    with pytest.raises(NotFound):
        n.silences.create(['a="1"'], T0, T0 + 50, "ops", "", silence_id="missing")


def test_silence_api_json_and_persistence_across_restart(tmp_path: Path) -> None:
    n, clock, _ = make(data_dir=tmp_path)
    body = {
        "matchers": [
            {"name": "alertname", "value": "HighLatency", "isRegex": False, "isEqual": True},
            {"name": "instance", "value": "web-.*", "isRegex": True},
        ],
        "startsAt": "2023-11-14T22:13:20Z",
        "endsAt": "2023-11-14T23:13:20.5Z",
        "createdBy": "alice",
        "comment": "deploy",
    }
    sid = n.create_silence_json(body)["silenceID"]
    expected = {
        "id": sid,
        "status": {"state": "active"},
        "updatedAt": "2023-11-14T22:13:20Z",
        "comment": "deploy",
        "createdBy": "alice",
        "endsAt": "2023-11-14T23:13:20.5Z",
        "matchers": [
            {"name": "alertname", "value": "HighLatency", "isRegex": False, "isEqual": True},
            {"name": "instance", "value": "web-.*", "isRegex": True, "isEqual": True},
        ],
        "startsAt": "2023-11-14T22:13:20Z",
    }
    assert n.silence_json(sid) == expected
    assert n.silences_json(filter=['instance=~"web-.*"']) == [expected]
    assert n.silences_json(filter=['instance="x"']) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silences.json"]  # no temp left
    assert json.loads((tmp_path / "silences.json").read_text())["version"] == 1

    again = Notifier(config(), data_dir=tmp_path, clock=clock)
    assert again.silence_json(sid) == expected
    again.receive([alert(instance="web-1")])
    assert again.alerts_json()[0]["status"]["silencedBy"] == [sid]
    again.expire_silence(sid)
    third = Notifier(config(), data_dir=tmp_path, clock=clock)
    assert third.silence_json(sid)["status"]["state"] == "expired"
    clock.t += 121 * 3600  # past the retention of expired silences
    third.silences.gc(clock.t)
    assert Notifier(config(), data_dir=tmp_path, clock=clock).silences_json() == []


def test_inhibition_mutes_targets_with_equal_labels() -> None:
    async def main() -> None:
        rule = {
            "source_matchers": ['severity="critical"'],
            "target_matchers": ['severity="warning"'],
            "equal": ["cluster"],
        }
        n, clock, rec = make(config({"group_by": []}, inhibit_rules=[rule]))
        n.receive(
            [
                alert("Down", severity="critical", cluster="eu"),
                alert("Slow", severity="warning", cluster="eu"),
                alert("Slow", severity="warning", cluster="us"),
            ]
        )
        await at(n, clock, T0 + 30)
        sent = [(a.labels["alertname"], a.labels["cluster"]) for a in rec.sent[0].alerts]
        assert sent == [("Down", "eu"), ("Slow", "us")]
        down = fingerprint({"alertname": "Down", "severity": "critical", "cluster": "eu"})
        muted = n.alerts_json(filter=['cluster="eu"', 'severity="warning"'])
        assert muted[0]["status"]["inhibitedBy"] == [down]
        unmuted = n.alerts_json(inhibited=False, filter=['cluster="eu"'])
        assert [a["labels"]["alertname"] for a in unmuted] == ["Down"]

    asyncio.run(main())


# --- retries -------------------------------------------------------------------------------


def test_retry_with_exponential_backoff_and_seeded_full_jitter() -> None:
    async def main() -> None:
        n, clock, rec = make(config(record={"fail": 2}), retry_base=10.0, retry_max=25.0)
        jitter = random.Random(7)  # the same seed as the notifier's
        d1 = jitter.uniform(0, 10.0)
        d2 = jitter.uniform(0, 20.0)
        n.receive([alert()])
        await at(n, clock, T0 + 30)
        assert rec.attempts == [T0 + 30] and rec.sent == []
        await at(n, clock, T0 + 30 + d1 - 0.001)
        assert len(rec.attempts) == 1
        await at(n, clock, T0 + 30 + d1)
        await at(n, clock, T0 + 30 + d1 + d2)
        assert rec.attempts == [T0 + 30, T0 + 30 + d1, T0 + 30 + d1 + d2]
        assert len(rec.sent) == 1
        assert (n.requests_total["rec"], n.requests_failed["rec"]) == (3, 2)
        assert (n.notifications_sent["rec"], n.notifications_failed["rec"]) == (1, 0)

    asyncio.run(main())


def test_retries_stop_at_the_next_group_interval_then_the_next_flush_tries_again() -> None:
    async def main() -> None:
        n, clock, rec = make(config(record={"fail": 10**6}), retry_base=4.0, retry_max=120.0)
        n.receive([alert()])
        for s in range(30, 331):
            await at(n, clock, T0 + s)
        within = [t - T0 for t in rec.attempts if t < T0 + 330]
        assert len(within) >= 3 and all(30 <= t < 330 for t in within)
        gaps = [b - a for a, b in itertools.pairwise(within)]
        assert all(0 <= g <= min(120, 4 * 2**i) + 1 for i, g in enumerate(gaps))
        assert n.notifications_failed["rec"] == 1  # given up once the next flush came due
        assert rec.attempts[-1] == T0 + 330  # ... and that flush tried afresh
        assert n.requests_failed["rec"] == len(rec.attempts)

    asyncio.run(main())


def test_a_non_retryable_failure_gives_up_at_once_and_the_next_flush_tries_again() -> None:
    async def main() -> None:
        n, clock, rec = make(config(record={"fail": 1, "retryable": False}))
        n.receive([alert()])
        for s in range(30, 330):
            await at(n, clock, T0 + s)
        assert len(rec.attempts) == 1 and n.notifications_failed["rec"] == 1
        await at(n, clock, T0 + 330)
        assert len(rec.sent) == 1 and rec.sent[0].status == "firing"

    asyncio.run(main())


def test_resolved_alerts_stay_until_their_notification_gets_through() -> None:
    async def main() -> None:
        n, clock, rec = make(config(record={"retryable": False}))
        n.receive([alert()])
        await at(n, clock, T0 + 30)
        rec.fail = 3  # the next two attempts fail
        clock.t = T0 + 100
        n.receive([alert(end=T0 + 100)])
        for k in (1, 2):
            await at(n, clock, T0 + 30 + 300 * k)
            assert len(rec.attempts) == k + 1 and n._groups  # kept for the next flush
        await at(n, clock, T0 + 930)
        assert [s.status for s in rec.sent] == ["firing", "resolved"] and n._groups == {}

    asyncio.run(main())


class VirtualSleep:
    """An injected sleep on virtual time: sleepers wait until the test jumps the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []

    async def __call__(self, seconds: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        entry = (self.clock.t + seconds, fut)
        self.sleepers.append(entry)
        try:
            await fut
        finally:
            self.sleepers.remove(entry)

    async def settle(self) -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    async def jump(self) -> float:
        """Move the clock to the earliest sleeper's wake-up time and wake it."""
        await self.settle()
        when, fut = min(self.sleepers, key=lambda e: e[0])
        self.clock.t = when
        fut.set_result(None)
        await self.settle()
        return when


def test_run_loop_on_virtual_time() -> None:
    async def main() -> None:
        clock = Clock()
        sleep = VirtualSleep(clock)
        n, _, rec = make(clock=clock, sleep=sleep, retry_base=8.0)
        rec.fail = 1
        task = asyncio.create_task(n.run())
        await sleep.settle()
        # From a worker thread, as the rule evaluator calls it: it hops onto the loop and
        # wakes it, and the loop then sleeps until group_wait is over.
        await asyncio.to_thread(n.receive, [alert()])
        with pytest.raises(BadData):
            await asyncio.to_thread(n.receive, [Alert(labels={})])
        assert await sleep.jump() == T0 + 30
        assert rec.attempts == [T0 + 30] and rec.sent == []
        retry_at = await sleep.jump()
        assert T0 + 30 < retry_at <= T0 + 38  # the backoff, on the loop's own sleep
        assert rec.attempts == [T0 + 30, retry_at] and len(rec.sent) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sleep.sleepers == []

    asyncio.run(main())


# --- webhook against a real HTTP server -----------------------------------------------------


class HookServer:
    """A threaded HTTP server on 127.0.0.1:0 that records POSTs and answers with `statuses`."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.statuses = statuses or []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, dict(self.headers), json.loads(body)))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> HookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def hook_config(url: str, **hook: Any) -> dict[str, Any]:
    return {
        "global": {"resolve_timeout": "1d"},
        "route": {"receiver": "hook", "group_by": ["alertname"], "group_wait": "30s"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": url, **hook}]}],
    }


def test_webhook_payload_is_alertmanagers_version_4() -> None:
    async def main(server: HookServer) -> None:
        clock = Clock()
        cfg = hook_config(server.url)
        async with Notifier(cfg, clock=clock, external_url="http://am.example:9093") as n:
            n.receive([alert(job="api", instance="a"), alert(job="api", instance="b")])
            await at(n, clock, T0 + 30)
            clock.t = T0 + 45.25
            n.receive([alert(job="api", instance="a", end=T0 + 45.25)])
            await at(n, clock, T0 + 330)

    with HookServer() as server:
        asyncio.run(main(server))
    assert len(server.posts) == 2
    path, headers, first = server.posts[0]
    assert path == "/hook" and headers["Content-Type"] == "application/json"

    def item(instance: str, status: str, ends: str) -> dict[str, Any]:
        labels = {"alertname": "HighLatency", "instance": instance, "job": "api"}
        return {
            "status": status,
            "labels": labels,
            "annotations": {"summary": "HighLatency is bad"},
            "startsAt": "2023-11-14T22:13:20Z",
            "endsAt": ends,
            "generatorURL": "http://prom:9090/graph?g0.expr=up",
            "fingerprint": fingerprint(labels),
        }

    common = {
        "version": "4",
        "groupKey": '{}:{alertname="HighLatency"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "hook",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency", "job": "api"},
        "commonAnnotations": {"summary": "HighLatency is bad"},
        "externalURL": "http://am.example:9093",
    }
    zero = "0001-01-01T00:00:00Z"
    assert first == common | {"alerts": [item("a", "firing", zero), item("b", "firing", zero)]}
    second = server.posts[1][2]
    assert second == common | {
        "alerts": [item("a", "resolved", "2023-11-14T22:14:05.25Z"), item("b", "firing", zero)]
    }


def test_webhook_max_alerts_truncates_and_a_503_is_retried() -> None:
    async def main(server: HookServer) -> None:
        clock = Clock()
        cfg = hook_config(server.url, max_alerts=1, send_resolved=False)
        async with Notifier(cfg, clock=clock, rng=random.Random(1), retry_base=1.0) as n:
            n.receive([alert(instance="a"), alert(instance="b"), alert(instance="c")])
            await at(n, clock, T0 + 30)
            assert n.requests_failed["hook"] == 1
            await at(n, clock, T0 + 31)  # the first retry comes within base * 2**0 = 1s
            assert (n.notifications_sent["hook"], n.requests_total["hook"]) == (1, 2)

    with HookServer(statuses=[503]) as server:
        asyncio.run(main(server))
    first, second = (p[2] for p in server.posts)
    assert first == second
    assert first["truncatedAlerts"] == 2 and len(first["alerts"]) == 1
    assert first["commonLabels"]["instance"] == "a"  # computed over the alerts sent


def test_webhook_4xx_is_not_retried() -> None:
    async def main(server: HookServer) -> None:
        clock = Clock()
        async with Notifier(hook_config(server.url), clock=clock) as n:
            n.receive([alert()])
            for s in range(30, 60):
                await at(n, clock, T0 + s)
            assert n.notifications_failed["hook"] == 1 and n.requests_total["hook"] == 1

    with HookServer(statuses=[400]) as server:
        asyncio.run(main(server))
    assert len(server.posts) == 1


# --- email against a real SMTP server -------------------------------------------------------


class SmtpSink:
    """A minimal SMTP server on 127.0.0.1:0: EHLO, optional STARTTLS and AUTH PLAIN, MAIL,
    RCPT, DATA, QUIT. Records each message with whether the session was encrypted."""

    def __init__(self, tls: ssl.SSLContext | None = None, auth: bool = False) -> None:
        self.tls, self.auth = tls, auth
        self.messages: list[dict[str, Any]] = []
        self.logins: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> SmtpSink:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        secure, env = False, {"from": "", "rcpt": []}

        async def reply(*lines: str) -> None:
            for i, text in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                writer.write(f"{text[:3]}{sep}{text[4:]}\r\n".encode())
            await writer.drain()

        await reply("220 sink ready")
        try:
            while line := await reader.readline():
                cmd = line.decode().rstrip("\r\n")
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    ext = ["250 sink"]
                    if self.tls and not secure:
                        ext.append("250 STARTTLS")
                    if self.auth:
                        ext.append("250 AUTH PLAIN")
                    await reply(*ext, "250 8BITMIME")
                elif verb == "STARTTLS" and self.tls:
                    await reply("220 go ahead")
                    await writer.start_tls(self.tls)
                    secure = True
                elif verb == "AUTH":
                    self.logins.append(base64.b64decode(cmd.split()[2]).decode())
                    await reply("235 ok")
                elif verb == "MAIL":
                    env = {"from": cmd[10:].split(">")[0].strip("<"), "rcpt": []}
                    await reply("250 ok")
                elif verb == "RCPT":
                    env["rcpt"].append(cmd[8:].split(">")[0].strip("<"))  # type: ignore[union-attr]
                    await reply("250 ok")
                elif verb == "DATA":
                    await reply("354 end with .")
                    data = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        data += chunk[1:] if chunk.startswith(b"..") else chunk
                    self.messages.append({**env, "data": data, "secure": secure})
                    await reply("250 queued")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("250 ok")
        finally:
            writer.close()
            await writer.wait_closed()


def mail_config(port: int, **extra: Any) -> dict[str, Any]:
    mail = {
        "to": "oncall@example.org, boss@example.org",
        "from": "Alerts <alerts@example.org>",
        "smarthost": f"127.0.0.1:{port}",
        "require_tls": False,
        **extra,
    }
    return {
        "global": {"resolve_timeout": "1d"},
        "route": {"receiver": "mail", "group_by": ["alertname"], "group_wait": "30s"},
        "receivers": [{"name": "mail", "email_configs": [mail]}],
    }


def test_email_through_a_real_smtp_server() -> None:
    async def main() -> list[dict[str, Any]]:
        clock = Clock()
        async with SmtpSink() as sink:
            async with Notifier(mail_config(sink.port), clock=clock) as n:
                n.receive([alert(job="api", instance="a"), alert(job="api", instance="b")])
                await at(n, clock, T0 + 30)
                assert n.notifications_sent["mail"] == 1
            return sink.messages

    (msg,) = asyncio.run(main())
    assert msg["from"] == "alerts@example.org"
    assert msg["rcpt"] == ["oncall@example.org", "boss@example.org"]
    parsed = email.message_from_bytes(msg["data"], policy=email.policy.default)
    assert parsed["Subject"] == "[FIRING:2] HighLatency (api)"
    assert parsed["To"] == "oncall@example.org, boss@example.org"
    body = parsed.get_body().get_content()  # type: ignore[union-attr]
    assert "Firing alerts (2):" in body
    assert "- alertname=HighLatency instance=a job=api" in body
    assert "summary: HighLatency is bad" in body and "started: 2023-11-14T22:13:20Z" in body


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway certificate for 127.0.0.1, made with the openssl command."""
    # Debian's openssl is on every machine here; a STARTTLS test that cannot run must fail
    assert shutil.which("openssl") is not None, "the openssl command makes the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx, cert


def test_email_starttls_and_auth(tls_pair: tuple[ssl.SSLContext, Path]) -> None:
    server_tls, cert = tls_pair

    async def main() -> SmtpSink:
        clock = Clock()
        async with SmtpSink(tls=server_tls, auth=True) as sink:
            extra = {
                "require_tls": True,
                "tls_config": {"ca_file": str(cert)},
                "auth_username": "notifier",
                "auth_password": "s3cret",
                "headers": {"Subject": "custom subject"},
            }
            async with Notifier(mail_config(sink.port, **extra), clock=clock) as n:
                n.receive([alert()])
                await at(n, clock, T0 + 30)
            return sink

    sink = asyncio.run(main())
    (msg,) = sink.messages
    assert msg["secure"] is True
    assert sink.logins == ["\0notifier\0s3cret"]
    parsed = email.message_from_bytes(msg["data"], policy=email.policy.default)
    assert parsed["Subject"] == "custom subject"


def test_email_require_tls_without_starttls_fails_and_retries() -> None:
    async def main() -> None:
        clock = Clock()
        async with SmtpSink() as sink:
            cfg = mail_config(sink.port, require_tls=True)
            async with Notifier(cfg, clock=clock) as n:
                n.receive([alert()])
                await at(n, clock, T0 + 30)
                assert n.requests_failed["mail"] == 1 and n.notifications_sent["mail"] == 0
            assert sink.messages == []

    asyncio.run(main())


def test_email_subject_like_alertmanagers_default() -> None:
    def notified(status: str, **labels: str) -> NotifiedAlert:
        return NotifiedAlert(status, labels, {}, T0, None, "", fingerprint(labels))

    n = Notification(
        "r",
        "k",
        {"alertname": "Disk"},
        (notified("firing", alertname="Disk", env="prod", host="a"),
         notified("resolved", alertname="Disk", env="prod", host="b")),
    )  # fmt: skip
    assert email_subject(n) == "[FIRING:1] Disk (prod)"
    resolved = Notification("r", "k", {"alertname": "Disk"}, (n.alerts[1],))
    assert email_subject(resolved) == "[RESOLVED] Disk (prod b)"
    assert rfc3339(T0 + 0.5) == "2023-11-14T22:13:20.5Z" and rfc3339(None).startswith("0001")
