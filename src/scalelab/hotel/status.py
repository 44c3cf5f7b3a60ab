"""The reservation status state machine, as one table (CONVENTIONS 4).

    pending --payment_succeeded--> paid --refund--> refunded
    pending --payment_failed-----> rejected
    pending --cancel / expire----> cancelled

Statuses that hold rooms are `HOLDING`; leaving them releases the inventory in the same
transaction that records the new status. Every other (status, event) pair is refused.
"""

from __future__ import annotations

from enum import StrEnum

from scalelab.hotel.errors import InvalidTransition


class Status(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class Event(StrEnum):
    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    CANCEL = "cancel"  # the guest cancels before paying
    EXPIRE = "expire"  # the pending timeout passed without payment
    REFUND = "refund"  # the guest cancels a paid reservation; the payment is refunded


TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (Status.PENDING, Event.PAYMENT_SUCCEEDED): Status.PAID,
    (Status.PENDING, Event.PAYMENT_FAILED): Status.REJECTED,
    (Status.PENDING, Event.CANCEL): Status.CANCELLED,
    (Status.PENDING, Event.EXPIRE): Status.CANCELLED,
    (Status.PAID, Event.REFUND): Status.REFUNDED,
}

HOLDING = frozenset({Status.PENDING, Status.PAID})
"""Statuses whose reservation counts in room_type_inventory.total_reserved."""

FINAL = frozenset(s for s in Status if not any(k[0] == s for k in TRANSITIONS))


def next_status(current: Status | str, event: Event) -> Status:
    """The status after event, or InvalidTransition naming both."""
    status = Status(current)
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise InvalidTransition(
            f"a {status.value} reservation cannot take {event.value.replace('_', ' ')}",
            status=status.value,
            event=event.value,
        ) from None


def releases_rooms(before: Status, after: Status) -> bool:
    return before in HOLDING and after not in HOLDING
