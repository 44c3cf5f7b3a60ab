"""An alerting rule's alerts and the table of their states: inactive, pending, firing.

Split from rules.py so the state machine reads on its own: `observe` classifies what one
evaluation says about one alert, `TRANSITIONS` maps (state, observation) to the next state and
its effects (the only place states change), and `step` applies them; `for`, `keep_firing_for`
and the 15-minute memory of resolved alerts are as Prometheus has them. Times are epoch
milliseconds, passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from scalelab.monitoring.model import Labels
from scalelab.monitoring.params import rfc3339_ms

RESOLVED_RETENTION_MS = 15 * 60_000  # resolved alerts are still sent (and kept) this long


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
