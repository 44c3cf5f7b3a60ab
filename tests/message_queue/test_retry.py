"""Retry and dead-letter topics: the backoff policy as pure logic (hypothesis), then the
processor against the real broker on virtual time."""

from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.message_queue.retry import (
    HEADER_ATTEMPT,
    HEADER_DUE,
    HEADER_ERROR,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TOPIC,
    Record,
    RetryPolicy,
    RetryProcessor,
    dlq_topic,
    due_ms,
    failed_attempts,
    retry_headers,
)
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.floats(0, 100))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 20)),
        base_delay_s=base,
        multiplier=draw(st.floats(1, 10)),
        max_delay_s=base + draw(st.floats(0, 1000)),
        jitter=draw(st.sampled_from(["full", "equal", "none"])),
    )


@given(policies(), st.integers(1, 2000), st.integers(0, 2**32))
def test_delays_stay_within_the_jitter_range_under_the_cap(
    policy: RetryPolicy, retry: int, seed: int
) -> None:
    cap = policy.cap(retry)
    delay = policy.delay(retry, random.Random(seed))
    assert 0 <= cap <= policy.max_delay_s
    if policy.jitter == "full":
        assert 0 <= delay <= cap
    elif policy.jitter == "equal":
        assert cap / 2 <= delay <= cap
    else:
        assert delay == cap
    assert delay == policy.delay(retry, random.Random(seed))  # seeded: reproducible


@given(policies(), st.integers(1, 2000))
def test_caps_start_at_the_base_delay_and_never_decrease(policy: RetryPolicy, retry: int) -> None:
    assert policy.cap(1) == policy.base_delay_s
    assert policy.cap(retry) <= policy.cap(retry + 1)


def test_caps_grow_exponentially_until_the_maximum() -> None:
    policy = RetryPolicy(base_delay_s=1, multiplier=2, max_delay_s=10, jitter="none")
    assert [policy.cap(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_full_jitter_spreads_records_that_failed_together() -> None:
    policy = RetryPolicy(base_delay_s=8, max_delay_s=8, jitter="full")
    rng = random.Random(3)
    delays = [policy.delay(1, rng) for _ in range(1000)]
    assert min(delays) < 1 and max(delays) > 7


@given(policies())
def test_each_failure_moves_a_record_one_level_on_and_the_last_to_the_dlq(
    policy: RetryPolicy,
) -> None:
    topics = policy.topics("orders")
    assert topics[0] == "orders" and len(topics) == policy.max_attempts
    for failed in range(1, policy.max_attempts):
        assert policy.route("orders", failed) == topics[failed] == f"orders.retry.{failed}"
    assert policy.route("orders", policy.max_attempts) == dlq_topic("orders") == "orders.dlq"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"base_delay_s": -1}, {"base_delay_s": 5, "max_delay_s": 1},
     {"multiplier": 0.5}, {"jitter": "some"}],
)  # fmt: skip
def test_nonsense_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None = b"k"
    value: bytes | None = b"v"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def test_headers_keep_the_first_coordinates_and_the_records_own_headers() -> None:
    first = FakeRecord("orders", 2, 17, headers=[("tag", b"red")])
    hop1 = retry_headers(first, 1, ValueError("bad"), 100.0)
    assert dict(hop1) == {
        "tag": b"red", HEADER_ATTEMPT: b"1", HEADER_TOPIC: b"orders", HEADER_PARTITION: b"2",
        HEADER_OFFSET: b"17", HEADER_ERROR: b"ValueError: bad", HEADER_DUE: b"100000",
    }  # fmt: skip
    second = FakeRecord("orders.retry.1", 0, 5, headers=hop1)
    hop2 = retry_headers(second, 2, KeyError("x"), 250.5)
    assert len(hop2) == len(hop1)  # replaced, not piled up
    assert dict(hop2) == dict(hop1) | {
        HEADER_ATTEMPT: b"2",
        HEADER_ERROR: b"KeyError: 'x'",
        HEADER_DUE: b"250500",
    }
    assert failed_attempts(second) == 1 and due_ms(second) == 100000
    assert failed_attempts(first) == 0 and due_ms(first) is None


class VirtualClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_flaky_record_is_retried_and_a_doomed_one_lands_in_the_dlq(
    broker: RunningBroker,
) -> None:
    clock = VirtualClock(1_700_000_000.0)
    calls: list[tuple[bytes, int, float, int | None]] = []  # value, attempt, time, due (ms)

    def handler(record: Record) -> None:
        assert record.value is not None
        calls.append((record.value, failed_attempts(record), clock(), due_ms(record)))
        if record.value == b"doomed" or (record.value == b"flaky" and len(calls_of(b"flaky")) < 3):
            raise RuntimeError(f"cannot handle {record.value!r}")

    def calls_of(value: bytes) -> list[tuple[bytes, int, float, int | None]]:
        return [c for c in calls if c[0] == value]

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    clients: list[Any] = [producer]  # closed whatever happens: a leaked client's socket
    try:  # warns in whichever later test the collector runs in
        producer.send("orders", key=b"a", value=b"ok")
        producer.send("orders", key=b"b", value=b"doomed", headers=[("tag", b"red")])
        producer.send("orders", key=b"c", value=b"flaky")
        producer.flush()
        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap, group_id="workers", auto_offset_reset="earliest",
            enable_auto_commit=False, fetch_max_wait_ms=50, heartbeat_interval_ms=300,
        )  # fmt: skip
        clients.append(consumer)
        policy = RetryPolicy(max_attempts=3, base_delay_s=10, multiplier=3, jitter="equal")
        # subscribe once every topic's partitions are known: a group leader that assigns
        # before it knows them hands out nothing, and kafka-python may not rejoin for a long
        # while (see test_groups.GroupMember)
        for topic in policy.topics("orders"):
            assert producer.partitions_for(topic), topic  # waits for it (auto-creates it)
            assert consumer.partitions_for_topic(topic), topic
        processor = RetryProcessor(consumer, producer, "orders", handler, policy, clock=clock,
                                   rng=random.Random(1))  # fmt: skip
        deadline = time.monotonic() + 60
        while processor.stats.handled < 2 or processor.stats.dead_lettered < 1:
            assert time.monotonic() < deadline, f"stuck: {processor.stats}, {calls}"
            if processor.poll_once(50) == 0 and (due := processor.next_due()) is not None:
                clock.now = max(clock.now, due)  # idle and waiting: let virtual time pass
        consumer.close()

        assert calls_of(b"ok") == [(b"ok", 0, 1_700_000_000.0, None)]
        for value in (b"flaky", b"doomed"):
            mine = calls_of(value)
            assert [c[1] for c in mine] == [0, 1, 2]
            for before, after in zip(mine, mine[1:], strict=False):
                due = after[3]
                assert due is not None and after[2] >= due / 1000  # never handled before due
                cap = policy.cap(after[1])  # equal jitter: the wait is in [cap / 2, cap]
                assert cap / 2 <= due / 1000 - before[2] <= cap + 0.001
        # one deferral per level, at least
        assert processor.stats.retried == 4 and processor.stats.deferred >= 2

        dlq = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                            consumer_timeout_ms=3000)  # fmt: skip
        clients.append(dlq)
        dlq.assign([TopicPartition("orders.dlq", 0)])
        dlq.seek_to_beginning()
        dead = list(dlq)
        assert [(r.key, r.value) for r in dead] == [(b"b", b"doomed")]
        headers = dict(dead[0].headers)
        assert headers["tag"] == b"red"
        assert headers[HEADER_ATTEMPT] == b"3"
        assert (headers[HEADER_TOPIC], headers[HEADER_PARTITION], headers[HEADER_OFFSET]) == (
            b"orders",
            b"0",
            b"1",
        )
        assert headers[HEADER_ERROR] == b"RuntimeError: cannot handle b'doomed'"

        topics = [TopicPartition(t, 0) for t in policy.topics("orders")]
        check = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="workers",
                              enable_auto_commit=False)  # fmt: skip
        clients.append(check)
        ends = check.end_offsets(topics)
        assert [ends[tp] for tp in topics] == [3, 2, 2]  # retry.1: both; retry.2: both again
        assert [check.committed(tp) for tp in topics] == [3, 2, 2]
    finally:
        for client in clients:
            client.close()


class RefusedSend:
    def get(self, timeout: float) -> None:
        raise RuntimeError("broker refused the copy")


class FakeConsumer:
    """Just enough of KafkaConsumer to see what the processor commits and where it seeks."""

    def __init__(self, batch: dict[str, list[FakeRecord]]) -> None:
        self.batch = batch
        self.commits: list[object] = []
        self.seeks: list[tuple[str, int]] = []

    def subscribe(self, topics: list[str]) -> None:
        pass

    def assignment(self) -> set[str]:
        return set(self.batch)

    def poll(self, timeout_ms: int) -> dict[str, list[FakeRecord]]:
        return self.batch

    def seek(self, tp: str, offset: int) -> None:
        self.seeks.append((tp, offset))

    def commit(self, offsets: object) -> None:
        self.commits.append(offsets)


class FakeProducer:
    def send(self, topic: str, **kwargs: object) -> RefusedSend:
        return RefusedSend()


def test_a_refused_copy_commits_nothing_and_rewinds_the_batch() -> None:
    batch = {"orders-0": [FakeRecord("orders", 0, 7), FakeRecord("orders", 0, 8)]}
    consumer = FakeConsumer(batch)

    def handler(record: Record) -> None:
        if record.offset == 8:
            raise ValueError("no")

    processor = RetryProcessor(consumer, FakeProducer(), "orders", handler, RetryPolicy(),
                               clock=VirtualClock(0.0), rng=random.Random(0))  # fmt: skip
    with pytest.raises(RuntimeError, match="refused"):
        processor.poll_once()
    assert consumer.commits == []  # not even offset 7, handled: at least once, not at most
    assert consumer.seeks == [("orders-0", 7)]
