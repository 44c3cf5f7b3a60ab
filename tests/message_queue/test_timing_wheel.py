"""The timing wheel against a sorted-list model: never early, never later than one tick past
due (at the first advance to reach it), nothing lost or returned twice, in deadline order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.message_queue.timing_wheel import TimingWheel

# (kind, number): add an item due `number` ms from now, or advance time by `number` ms
delays = st.one_of(
    st.integers(-50, 300),  # near, some already past
    st.integers(300, 200_000),  # a few levels up
    st.integers(10**9, 10**12),  # far future: many overflow wheels
)
jumps = st.one_of(st.integers(0, 40), st.integers(40, 5_000), st.integers(10**6, 10**12))
ops = st.lists(
    st.one_of(st.tuples(st.just("add"), delays), st.tuples(st.just("advance"), jumps)),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    tick=st.sampled_from([1, 7, 10, 100]),
    size=st.sampled_from([2, 3, 8, 64]),
    start=st.integers(-(10**6), 10**12),
)
def test_matches_a_sorted_model(
    ops: list[tuple[str, int]], tick: int, size: int, start: int
) -> None:
    wheel: TimingWheel[int] = TimingWheel(tick, size, start)
    now = start
    pending: dict[int, int] = {}  # item -> due: the model
    seen: set[int] = set()

    def advance_to(t: int) -> None:
        out = wheel.advance(t)
        dues = [pending[i] for i in out]
        assert dues == sorted(dues), "out of deadline order"
        for item in out:
            assert item not in seen, "returned twice"
            assert pending[item] <= t, "returned early"
            seen.add(item)
            del pending[item]
        late = [i for i, due in pending.items() if due + tick <= t]
        assert not late, f"items {late} should be out by {t}"
        assert len(wheel) == len(pending)

    for n, (kind, number) in enumerate(ops):
        if kind == "add":
            wheel.add(n, now + number)
            pending[n] = now + number
        else:
            now += number
            advance_to(now)
    if pending:
        advance_to(max(pending.values()) + tick)
    assert not pending


def test_one_insert_at_a_time_is_cheap_and_levels_grow_only_for_far_deadlines() -> None:
    wheel: TimingWheel[str] = TimingWheel(tick_ms=10, wheel_size=64)
    wheel.add("soon", 500)
    assert wheel.levels == 1
    wheel.add("in a year", 365 * 24 * 3600 * 1000)
    assert wheel.levels > 1
    assert wheel.advance(499) == []
    assert wheel.advance(510) == ["soon"]
    assert wheel.next_deadline() is not None
    assert wheel.advance(365 * 24 * 3600 * 1000 + 10) == ["in a year"]
    assert len(wheel) == 0 and wheel.next_deadline() is None


def test_ties_come_out_in_insertion_order_and_past_deadlines_at_once() -> None:
    wheel: TimingWheel[str] = TimingWheel(tick_ms=10, wheel_size=8, start_ms=1_000)
    for name in "abc":
        wheel.add(name, 1_055)
    wheel.add("past", 10)
    assert wheel.advance(1_000) == ["past"]
    assert wheel.advance(2_000) == ["a", "b", "c"]


def test_rejects_degenerate_shapes() -> None:
    with pytest.raises(ValueError):
        TimingWheel(tick_ms=0)
    with pytest.raises(ValueError):
        TimingWheel(wheel_size=1)
