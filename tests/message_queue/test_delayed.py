"""Delayed delivery: parked records reach their topic once, when due (virtual time where the
test must not depend on the machine's speed), across restarts and kill -9, with idempotent
producers still in sequence."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from scalelab.message_queue.batch import split
from scalelab.message_queue.delayed import CONFIG, HEADER, TOPIC, DelayedDelivery
from scalelab.message_queue.partition import LogConfig, Partition
from scalelab.message_queue.topics import TopicStore
from tests.message_queue.conftest import RunningBroker
from tests.message_queue.test_crash import broker_process

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.errors import InvalidRecordError
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder


class Clock:
    """Virtual seconds, for the broker's delayed store."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def batch(
    values: list[tuple[bytes, int | bytes | None]],
    pid: int = -1,
    seq: int = -1,
    transactional: bool = False,
) -> bytes:
    b = DefaultRecordBatchBuilder(2, 0, transactional, pid, 0 if pid >= 0 else -1, seq, 1 << 20)
    for i, (value, due) in enumerate(values):
        headers = [] if due is None else [(HEADER, due if isinstance(due, bytes) else b"%d" % due)]
        b.append(i, timestamp=1_000 + i, key=b"k%d" % i, value=value, headers=headers)
    return bytes(b.build())


def values_in(part: Partition) -> list[bytes]:
    data = part.read(part.log_start_offset, 1 << 24) if part.log_end_offset else b""
    return [r.value for _, v in split(data) for r in DefaultRecordBatch(bytes(v))]


def store_with_topic(directory: Path) -> TopicStore:
    store = TopicStore(directory, LogConfig())
    if "t" not in store.topics:
        store.create("t", 1, {CONFIG: "true"})
        store.create("plain", 1)
    return store


# ---- the store on virtual time, no server ----------------------------------------------------


def test_parked_records_go_out_when_due_never_before(tmp_path: Path) -> None:
    store, clock = store_with_topic(tmp_path), Clock(1000.0)
    d = DelayedDelivery(store, sync=False, tick_ms=10, clock=clock)
    target = store.partition("t", 0)
    to_sync: dict[Partition, int] = {}
    answer = d.intercept("t", 0, batch([(b"late", 1_005_000), (b"now", None)]), to_sync)
    assert answer is not None and (answer["error_code"], answer["base_offset"]) == (0, -1)
    assert d.partition in to_sync and target.log_end_offset == 0 and d.pending == 2
    asyncio.run(d.tick())  # the undelayed record of a parked batch: at the next tick
    assert values_in(target) == [b"now"]
    clock.t = 1004.999
    asyncio.run(d.tick())
    assert values_in(target) == [b"now"]
    clock.t = 1005.01  # due, plus the wheel's one tick of slack
    asyncio.run(d.tick())
    assert values_in(target) == [b"now", b"late"] and d.pending == 0
    # appended as received: no header, all due, or a topic that did not opt in
    assert d.intercept("t", 0, batch([(b"x", None)]), to_sync) is None
    assert d.intercept("t", 0, batch([(b"x", 1_004_000)]), to_sync) is None
    assert d.intercept("plain", 0, batch([(b"x", 9_999_999_999)]), to_sync) is None
    store.close()


def test_malformed_deadlines_and_transactions_are_refused_whole(tmp_path: Path) -> None:
    store = store_with_topic(tmp_path)
    d = DelayedDelivery(store, sync=False, clock=Clock(1000.0))
    for bad in (b"soon", b"", b"-5", b"1" * 20):
        answer = d.intercept("t", 0, batch([(b"ok", 2_000_000), (b"bad", bad)]), {})
        assert answer is not None and answer["error_code"] == 87, bad
    txn = batch([(b"v", 2_000_000)], pid=3, seq=0, transactional=True)
    answer = d.intercept("t", 0, txn, {})
    assert answer is not None and answer["error_code"] == 87
    answer = d.intercept(TOPIC, 0, batch([(b"forged", None)]), {})
    assert answer is not None and answer["error_code"] == 17  # only the broker writes there
    assert d.pending == 0 and d.partition.log_end_offset == 0
    store.close()


def test_restart_replays_deadlines_deliveries_and_producer_state(tmp_path: Path) -> None:
    store, clock = store_with_topic(tmp_path), Clock(1000.0)
    d = DelayedDelivery(store, sync=True, clock=clock)
    assert d.intercept("t", 0, batch([(b"p0", 2_000_000)], pid=7, seq=0), {}) is not None
    store.partition("t", 0).append(batch([(b"n1", None)], pid=7, seq=1))  # went straight in
    assert d.intercept("t", 0, batch([(b"p2", 3_000_000)], pid=7, seq=2), {}) is not None
    store.close()

    store = store_with_topic(tmp_path)
    d = DelayedDelivery(store, sync=True, clock=clock)
    target = store.partition("t", 0)
    assert d.pending == 2
    retry = d.intercept("t", 0, batch([(b"p2", 3_000_000)], pid=7, seq=2), {})
    assert retry is not None and (retry["error_code"], retry["base_offset"]) == (0, -1)
    assert d.pending == 2  # a duplicate, not parked twice
    target.append(batch([(b"n3", None)], pid=7, seq=3))  # the next sequence is accepted
    clock.t = 2000.02  # due plus one tick
    assert asyncio.run(d.tick()) == 1
    store.close()

    store = store_with_topic(tmp_path)
    d = DelayedDelivery(store, sync=True, clock=clock)
    assert d.pending == 1  # p0's delivery was recorded: not again
    clock.t = 3000.02
    asyncio.run(d.tick())
    assert values_in(store.partition("t", 0)) == [b"n1", b"n3", b"p0", b"p2"]
    assert store.topics[TOPIC].configs["retention.ms"] == "-1"
    store.close()


# ---- real clients, a real broker -------------------------------------------------------------


def create_delayed_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, 1, 1, topic_configs={CONFIG: "true"})])
    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    assert res["topic"][name][CONFIG]["value"] == "true"
    admin.close()


def consume(bootstrap: str, topic: str, want: int) -> list[Any]:
    """Every record from the beginning, until want of them (or a bound on a hang)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    out: list[Any] = []
    deadline = time.monotonic() + 30  # a bound on a hang, not an assertion on time
    while len(out) < want and time.monotonic() < deadline:
        for batch_ in consumer.poll(timeout_ms=200).values():
            out.extend(batch_)
    out.extend(m for b in consumer.poll(timeout_ms=300).values() for m in b)  # nothing more
    consumer.close()
    return out


def due_in(ms: int) -> bytes:
    return b"%d" % (int(time.time() * 1000) + ms)


def test_kafka_python_delayed_records_land_after_undelayed_ones(broker: RunningBroker) -> None:
    create_delayed_topic(broker.bootstrap, "later")
    delayed = broker.server.broker.delayed
    t0 = time.time()
    delayed.clock = lambda: t0  # frozen while producing: nothing can fall due meanwhile
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")  # idempotent
    due = b"%d" % int(t0 * 1000 + 1500)
    parked = [
        producer.send("later", key=b"d%d" % i, value=b"delayed-%d" % i, headers=[(HEADER, due)])
        for i in range(5)
    ]
    producer.flush()
    assert [f.get(timeout=10).offset for f in parked] == [-1] * 5  # no offset yet
    direct = [producer.send("later", value=b"direct-%d" % i) for i in range(5)]
    producer.flush()
    assert [f.get(timeout=10).offset for f in direct] == [0, 1, 2, 3, 4]
    producer.close()
    assert delayed.pending == 5
    delayed.clock = time.time  # the delayed records fall due 1.5 s after t0
    got = consume(broker.bootstrap, "later", 10)
    assert [m.value for m in got] == [b"direct-%d" % i for i in range(5)] + [
        b"delayed-%d" % i for i in range(5)
    ]
    late = got[5:]
    assert [m.key for m in late] == [b"d%d" % i for i in range(5)]
    assert all(m.headers == [(HEADER, due)] for m in late)
    # their create time is kept: made before the direct records, stored after them
    assert max(m.timestamp for m in late) <= min(m.timestamp for m in got[:5])


def test_confluent_kafka_and_an_ordinary_topic(broker: RunningBroker) -> None:
    create_delayed_topic(broker.bootstrap, "later")
    delayed = broker.server.broker.delayed
    t0 = time.time()
    delayed.clock = lambda: t0
    reports: list[tuple[Any, int]] = []
    headers = [(HEADER, b"%d" % (t0 * 1000 + 1000))]

    def report(err: Any, msg: Any) -> None:
        reports.append((err, msg.offset()))

    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True})
    for topic in ("later", "plain"):
        for i in range(3):
            producer.produce(topic, value=b"v%d" % i, headers=headers, on_delivery=report)
        assert producer.flush(10) == 0
    assert [err for err, _ in reports] == [None] * 6
    # a parked batch answers base offset -1 (Kafka's "no offset"); librdkafka reports None for
    # its first record only, then -1 + i (not offsets: docs/message_queue.md says so)
    assert reports[0][1] is None
    assert [offset for _, offset in reports[3:]] == [0, 1, 2]  # "plain" did not opt in
    assert delayed.pending == 3
    delayed.clock = time.time
    assert [m.value for m in consume(broker.bootstrap, "later", 3)] == [b"v0", b"v1", b"v2"]


def test_a_malformed_deadline_fails_the_send(broker: RunningBroker) -> None:
    create_delayed_topic(broker.bootstrap, "later")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0)
    future = producer.send("later", value=b"v", headers=[(HEADER, b"tomorrow")])
    with pytest.raises(InvalidRecordError):
        future.get(timeout=10)
    producer.close()
    assert broker.server.broker.topics.partition("later", 0).log_end_offset == 0


def test_acknowledged_delayed_records_survive_kill_9_and_arrive_once(
    tmp_path: Path, start_broker: Callable[..., RunningBroker]
) -> None:
    data = tmp_path / "data"
    proc, port = broker_process(data)
    try:
        create_delayed_topic(f"127.0.0.1:{port}", "later")
        producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks="all")
        futures = []
        for i in range(20):  # due in an hour: certainly parked when the broker dies
            futures.append(
                producer.send("later", value=b"r%d" % i, headers=[(HEADER, due_in(3_600_000))])
            )
            if i % 5 == 4:
                producer.flush()
        assert all(f.get(timeout=10).offset == -1 for f in futures)
        producer.close()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    again = start_broker(data)
    delayed = again.server.broker.delayed
    assert delayed.pending == 20
    assert again.server.broker.topics.partition("later", 0).log_end_offset == 0
    delayed.clock = lambda: time.time() + 3601  # an hour and a second later
    first = consume(again.bootstrap, "later", 20)
    assert sorted(m.value for m in first) == sorted(b"r%d" % i for i in range(20))
    assert delayed.pending == 0
    again.stop()
    third = start_broker(data)
    assert third.server.broker.delayed.pending == 0
    assert len(consume(third.bootstrap, "later", 20)) == 20  # not delivered twice
