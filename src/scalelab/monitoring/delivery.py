"""Delivery of one aggregation group's notifications to one integration.

Per integration (one `email_configs` entry, one webhook...) of a group's receiver, a
notification is idle, being sent, or waiting to retry; `DELIVERY_TRANSITIONS` is every legal
move between those (`IntegrationDelivery.step` raises on any other). `LogEntry` is what the
integration was last told, Alertmanager's notification log, and `needs_update` the dedup rule
that decides from it whether a flush sends. Split from notify.py, whose `Notifier` drives
these on its clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from scalelab.monitoring.receivers import Integration, Notification


class Delivery(enum.Enum):
    """Where one integration's notification for one flush stands."""

    IDLE = "idle"  # nothing outstanding
    SENDING = "sending"  # an attempt is in flight
    BACKOFF = "backoff"  # an attempt failed; the next one is scheduled


class DeliveryEvent(enum.Enum):
    SEND = "send"  # a flush decided to notify, or a scheduled retry came due
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retryable, and the next attempt fits before the group's next flush
    GAVE_UP = "gave_up"  # not retryable, out of time, or the deadline passed while waiting


# Every legal transition; anything else is a bug and raises.
DELIVERY_TRANSITIONS: dict[tuple[Delivery, DeliveryEvent], Delivery] = {
    (Delivery.IDLE, DeliveryEvent.SEND): Delivery.SENDING,
    (Delivery.SENDING, DeliveryEvent.SUCCEEDED): Delivery.IDLE,
    (Delivery.SENDING, DeliveryEvent.FAILED): Delivery.BACKOFF,
    (Delivery.SENDING, DeliveryEvent.GAVE_UP): Delivery.IDLE,
    (Delivery.BACKOFF, DeliveryEvent.SEND): Delivery.SENDING,
    (Delivery.BACKOFF, DeliveryEvent.GAVE_UP): Delivery.IDLE,
}


@dataclass(frozen=True)
class LogEntry:
    """What an integration was last told (Alertmanager's notification log entry)."""

    firing: frozenset[str]
    resolved: frozenset[str]
    at: float


def needs_update(
    entry: LogEntry | None,
    firing: frozenset[str],
    resolved: frozenset[str],
    send_resolved: bool,
    repeat_interval: float,
    now: float,
) -> bool:
    """The dedup rule: send when something the receiver cares about changed, or to repeat."""
    if entry is None:
        return bool(firing)  # a group that only ever had resolved alerts stays quiet
    if not firing <= entry.firing:
        return True  # an alert it was not told about is firing
    if not firing:
        return bool(entry.firing)  # everything it knew to be firing has resolved
    if send_resolved and not resolved <= entry.resolved:
        return True
    return entry.at <= now - repeat_interval


@dataclass(eq=False)
class IntegrationDelivery:
    """One integration of a group's receiver: its dedup log and the attempt in progress."""

    receiver: str
    integration: Integration
    state: Delivery = Delivery.IDLE
    log: LogEntry | None = None
    notification: Notification | None = None
    pending_log: LogEntry | None = None
    attempts: int = 0
    retry_at: float = 0.0
    deadline: float = 0.0

    def step(self, event: DeliveryEvent) -> None:
        try:
            self.state = DELIVERY_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise RuntimeError(f"delivery: no transition from {self.state} on {event}") from None
