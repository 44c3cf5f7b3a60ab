"""The simulated payment provider: each test method, the ledger, idempotency, virtual time."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from scalelab.hotel.payment import (
    PaymentError,
    PaymentOutcome,
    PaymentProvider,
    PaymentResult,
    SimulatedProvider,
)


class FakeSleep:
    """Records the durations asked for instead of waiting them."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def provider(seed: int = 7, latency: float = 0.0) -> tuple[SimulatedProvider, FakeSleep]:
    sleep = FakeSleep()
    return SimulatedProvider(sleep=sleep, latency=latency, rng=random.Random(seed)), sleep


def test_is_a_payment_provider() -> None:
    p: PaymentProvider = provider()[0]
    assert isinstance(p, SimulatedProvider)


@pytest.mark.parametrize("method", ["pm_card_ok", "pm_card_visa"])
def test_succeeding_methods_charge(method: str) -> None:
    p, sleep = provider()
    result = p.charge("r1", 12_345, "EUR", method, timeout=5.0)
    assert result.outcome is PaymentOutcome.SUCCEEDED
    assert result.payment_ref is not None
    assert p.charges() == {result.payment_ref: ("r1", 12_345, "EUR")}
    assert p.refunded() == set()
    assert sleep.calls == []


def test_declined_card() -> None:
    p, _ = provider()
    result = p.charge("r1", 100, "USD", "pm_card_declined", timeout=5.0)
    assert result == PaymentResult(PaymentOutcome.DECLINED, None, "card declined")
    assert p.charges() == {}


def test_unknown_method_declines_naming_it() -> None:
    p, _ = provider()
    result = p.charge("r1", 100, "USD", "pm_card_amex_typo", timeout=5.0)
    assert result.outcome is PaymentOutcome.DECLINED
    assert result.payment_ref is None
    assert result.message == "unknown payment method pm_card_amex_typo"
    assert p.charges() == {}


def test_timeout_waits_the_callers_timeout_and_charges_nothing() -> None:
    p, sleep = provider(latency=0.25)
    result = p.charge("r1", 100, "USD", "pm_card_timeout", timeout=3.5)
    assert result.outcome is PaymentOutcome.TIMEOUT
    assert result.payment_ref is None
    assert sleep.calls == [3.5]
    assert p.charges() == {}


def test_retry_after_timeout_charges_once() -> None:
    p, _ = provider()
    assert p.charge("r1", 100, "USD", "pm_card_timeout", 1.0).outcome is PaymentOutcome.TIMEOUT
    first = p.charge("r1", 100, "USD", "pm_card_ok", 1.0)
    again = p.charge("r1", 100, "USD", "pm_card_ok", 1.0)
    assert first.outcome is PaymentOutcome.SUCCEEDED
    assert again == first
    assert list(p.charges()) == [first.payment_ref]


def test_latency_is_slept_before_answering() -> None:
    p, sleep = provider(latency=0.25)
    p.charge("r1", 100, "USD", "pm_card_ok", timeout=5.0)
    p.charge("r2", 100, "USD", "pm_card_declined", timeout=5.0)
    assert sleep.calls == [0.25, 0.25]


def test_decline_then_success_for_the_same_reservation() -> None:
    p, _ = provider()
    assert p.charge("r1", 100, "USD", "pm_card_declined", 1.0).outcome is PaymentOutcome.DECLINED
    ok = p.charge("r1", 100, "USD", "pm_card_ok", 1.0)
    assert ok.outcome is PaymentOutcome.SUCCEEDED
    assert len(p.charges()) == 1


def test_a_charged_reservation_gets_its_first_result_whatever_the_method() -> None:
    p, _ = provider()
    first = p.charge("r1", 100, "USD", "pm_card_ok", 1.0)
    assert p.charge("r1", 100, "USD", "pm_card_declined", 1.0) == first
    assert p.charge("r1", 999, "USD", "pm_card_visa", 1.0) == first
    assert p.charges() == {first.payment_ref: ("r1", 100, "USD")}


def test_distinct_reservations_get_distinct_refs() -> None:
    p, _ = provider()
    refs = {p.charge(f"r{i}", i, "USD", "pm_card_ok", 1.0).payment_ref for i in range(200)}
    assert len(refs) == 200
    assert set(p.charges()) == refs
    assert sorted(p.charges().values()) == sorted((f"r{i}", i, "USD") for i in range(200))


def test_refs_come_from_the_seeded_random() -> None:
    a = provider(seed=1)[0].charge("r1", 1, "USD", "pm_card_ok", 1.0)
    b = provider(seed=1)[0].charge("r1", 1, "USD", "pm_card_ok", 1.0)
    c = provider(seed=2)[0].charge("r1", 1, "USD", "pm_card_ok", 1.0)
    assert a.payment_ref == b.payment_ref != c.payment_ref
    assert a.payment_ref is not None and len(a.payment_ref) <= 64  # reservation.payment_ref


def test_concurrent_charges_of_one_reservation_record_one_charge() -> None:
    threads = 20
    # Every thread is held inside the provider's latency until all 20 are there, so all of
    # them race the ledger check together; with virtual time nothing actually waits.
    barrier = threading.Barrier(threads)

    def meet(_: float) -> None:
        barrier.wait(timeout=10)

    p = SimulatedProvider(sleep=meet, latency=0.1, rng=random.Random(3))
    with ThreadPoolExecutor(threads) as pool:
        results = list(
            pool.map(lambda _: p.charge("r1", 500, "JPY", "pm_card_ok", 5.0), range(threads))
        )
    assert {r.outcome for r in results} == {PaymentOutcome.SUCCEEDED}
    assert len({r.payment_ref for r in results}) == 1
    assert p.charges() == {results[0].payment_ref: ("r1", 500, "JPY")}


def test_refund() -> None:
    p, _ = provider()
    ref = p.charge("r1", 100, "USD", "pm_card_ok", 1.0).payment_ref
    other = p.charge("r2", 100, "USD", "pm_card_ok", 1.0).payment_ref
    assert ref is not None and other is not None
    p.refund(ref)
    assert p.refunded() == {ref}
    assert len(p.charges()) == 2  # the ledger keeps the refunded charge


def test_refunding_twice_is_a_no_op() -> None:
    p, _ = provider()
    ref = p.charge("r1", 100, "USD", "pm_card_ok", 1.0).payment_ref
    assert ref is not None
    p.refund(ref)
    p.refund(ref)
    assert p.refunded() == {ref}


def test_refund_of_unknown_ref() -> None:
    p, _ = provider()
    p.charge("r1", 100, "USD", "pm_card_ok", 1.0)
    with pytest.raises(PaymentError):
        p.refund("pay_0000000000000000")
    assert p.refunded() == set()


def test_ledger_views_are_copies() -> None:
    p, _ = provider()
    ref = p.charge("r1", 100, "USD", "pm_card_ok", 1.0).payment_ref
    assert ref is not None
    p.charges().clear()
    p.refunded().add(ref)
    assert list(p.charges()) == [ref]
    assert p.refunded() == set()


def test_negative_amount_is_refused() -> None:
    p, _ = provider()
    with pytest.raises(ValueError):
        p.charge("r1", -1, "USD", "pm_card_ok", 1.0)
