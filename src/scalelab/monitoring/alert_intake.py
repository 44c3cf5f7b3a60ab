"""Alerts as the notifier takes them in: Alertmanager's API v2 alert, and how it is held.

`Alert` is what `Notifier.receive` takes, from the rule evaluator or POST /api/v2/alerts alike,
known by its `fingerprint` (Prometheus's label-set hash). `Stored` is an alert as the notifier
holds it, its times filled in, and `merge_alert` is how a repeat of an alert it holds joins it.
Split from notify.py, which groups, silences, inhibits and delivers these alerts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from scalelab.monitoring.errors import BadData
from scalelab.monitoring.model import Labels
from scalelab.monitoring.params import rfc3339
from scalelab.monitoring.receivers import parse_rfc3339


def fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus's label-set fingerprint: FNV-1a 64 over sorted name, 0xff, value, 0xff."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@dataclass(frozen=True)
class Alert:
    """An alert as Alertmanager's API v2 takes it (a "postable alert").

    `starts_at`/`ends_at` are float seconds since the epoch; None means "not given": the start
    becomes the time it arrives, the end `global.resolve_timeout` later unless it is sent
    again. An alert whose end has passed is resolved.
    """

    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: float | None = None
    ends_at: float | None = None
    generator_url: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)

    @classmethod
    def from_json(cls, obj: Any) -> Alert:
        """One element of POST /api/v2/alerts (RFC 3339 times)."""
        if not isinstance(obj, Mapping):
            raise BadData(f"alert must be a JSON object, got {type(obj).__name__}")
        gen = obj.get("generatorURL", "")
        if not isinstance(gen, str):
            raise BadData("alert: generatorURL must be a string")
        return cls(
            labels=str_map(obj.get("labels"), "labels"),
            annotations=str_map(obj.get("annotations") or {}, "annotations"),
            starts_at=parse_rfc3339(obj.get("startsAt", ""), "startsAt"),
            ends_at=parse_rfc3339(obj.get("endsAt", ""), "endsAt"),
            generator_url=gen,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "generatorURL": self.generator_url,
        }


def str_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadData(f"alert: {what} must map strings to strings")
    return dict(value)


@dataclass(frozen=True)
class Stored:
    """An alert as held here: times filled in, end possibly set by resolve_timeout."""

    alert: Alert
    fp: str
    labels: Labels
    starts_at: float
    ends_at: float
    timeout: bool
    updated_at: float

    def resolved(self, now: float) -> bool:
        return self.ends_at <= now


def merge_alert(old: Stored | None, new: Stored, now: float) -> Stored:
    """The same alert again: while the two activity windows overlap it is one incident, so
    the earliest start is kept and an explicit end is not undone by a timeout guess."""
    if old is None or not (new.starts_at < old.ends_at and old.starts_at < new.ends_at):
        return new
    start = min(old.starts_at, new.starts_at)
    end = new.ends_at
    if new.resolved(now):
        if old.resolved(now) and old.ends_at > end:
            end = old.ends_at
    elif old.ends_at > end and not old.timeout:
        end = old.ends_at
    return replace(new, starts_at=start, ends_at=end)
