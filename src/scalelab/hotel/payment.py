"""The payment step (the book's payment service), behind a provider protocol, and a simulated
provider for development and tests.

The simulated provider answers according to the payment method, named like Stripe's test
methods:

    pm_card_ok, pm_card_visa   succeed
    pm_card_declined           decline ("card declined")
    pm_card_timeout            do not answer: wait `timeout`, then TIMEOUT, nothing charged
    anything else              decline ("unknown payment method <name>")

Charges are idempotent per reservation_id, as a real provider's idempotency key is: once a
reservation has been charged, every later charge for it returns that first result and charges
nothing. That is what makes retrying a payment after a timeout safe. Time is passed in
(`sleep`) and refs come from a passed-in `random.Random`, so tests run on virtual time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class PaymentOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class PaymentResult:
    outcome: PaymentOutcome
    payment_ref: str | None  # the provider's id of the charge; None unless SUCCEEDED
    message: str


class PaymentError(Exception):
    """The provider refused an operation outright (refund of a charge it does not know)."""


class PaymentProvider(Protocol):
    """What the reservation service needs from a payment provider."""

    def charge(
        self, reservation_id: str, amount: int, currency: str, method: str, timeout: float
    ) -> PaymentResult:
        """Charge amount (minor units); idempotent per reservation_id."""
        ...

    def refund(self, payment_ref: str) -> None:
        """Refund a charge; PaymentError for an unknown ref, a no-op the second time."""
        ...


SUCCEEDING_METHODS = frozenset({"pm_card_ok", "pm_card_visa"})
DECLINED_METHOD = "pm_card_declined"
TIMEOUT_METHOD = "pm_card_timeout"


class SimulatedProvider:
    """An in-memory PaymentProvider with a ledger; thread-safe, on injected time and randomness."""

    def __init__(
        self,
        sleep: Callable[[float], None] = time.sleep,
        latency: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self._sleep = sleep
        self._latency = latency
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._by_reservation: dict[str, PaymentResult] = {}
        self._charges: dict[str, tuple[str, int, str]] = {}
        self._refunded: set[str] = set()

    def charge(
        self, reservation_id: str, amount: int, currency: str, method: str, timeout: float
    ) -> PaymentResult:
        if amount < 0:
            raise ValueError("amount must be >= 0")
        if method == TIMEOUT_METHOD:
            # The provider never answers: the caller waits its whole timeout, nothing happens.
            self._sleep(timeout)
            return PaymentResult(
                PaymentOutcome.TIMEOUT, None, f"provider did not answer within {timeout:g}s"
            )
        if self._latency > 0:
            self._sleep(self._latency)  # outside the lock: slow answers must not serialize
        with self._lock:
            first = self._by_reservation.get(reservation_id)
            if first is not None:
                return first  # idempotent: the reservation is already paid
            if method == DECLINED_METHOD:
                return PaymentResult(PaymentOutcome.DECLINED, None, "card declined")
            if method not in SUCCEEDING_METHODS:
                return PaymentResult(
                    PaymentOutcome.DECLINED, None, f"unknown payment method {method}"
                )
            ref = self._new_ref()
            result = PaymentResult(PaymentOutcome.SUCCEEDED, ref, "charged")
            self._by_reservation[reservation_id] = result
            self._charges[ref] = (reservation_id, amount, currency)
            return result

    def refund(self, payment_ref: str) -> None:
        with self._lock:
            if payment_ref not in self._charges:
                raise PaymentError(f"unknown payment {payment_ref}")
            self._refunded.add(payment_ref)  # a set: refunding twice changes nothing

    def charges(self) -> dict[str, tuple[str, int, str]]:
        """The ledger: payment_ref -> (reservation_id, amount, currency); a copy."""
        with self._lock:
            return dict(self._charges)

    def refunded(self) -> set[str]:
        """The refs refunded so far; a copy."""
        with self._lock:
            return set(self._refunded)

    def _new_ref(self) -> str:
        # Called under the lock; a collision is astronomically unlikely but cheap to rule out.
        while True:
            ref = f"pay_{self._rng.getrandbits(64):016x}"
            if ref not in self._charges:
                return ref
