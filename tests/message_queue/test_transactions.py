"""Transactions with real clients: confluent-kafka's exactly-once read-process-write (abort once,
commit once), kafka-python's transactional producer, fencing, and read_committed consumers."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer


def consume_all(bootstrap: str, topic: str, isolation: str, expect: int, group: str) -> list[bytes]:
    """Everything a fresh consumer with the given isolation reads, waiting for `expect`
    records and then a little longer for any that should not be there."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "isolation.level": isolation,
                         "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    quiet_until = None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
        if len(got) >= expect and quiet_until is None:
            quiet_until = time.monotonic() + 1.0
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
    consumer.close()
    return got


def produce_plain(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, value=v)
    assert p.flush(15) == 0


def test_confluent_read_process_write_aborts_once_and_commits_once(broker: RunningBroker) -> None:
    """The acceptance test: input -> transform -> output, offsets committed in the same
    transaction; the first transaction aborts, the second commits; read_committed sees only the
    committed output, once, and the group's offset moves only with the commit."""
    inputs = [b"in-%02d" % i for i in range(20)]
    produce_plain(broker.bootstrap, "txn-in", inputs)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "processor",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_committed"})  # fmt: skip
    consumer.subscribe(["txn-in"])
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "proc-1",
                         "linger.ms": 5})  # fmt: skip
    producer.init_transactions(15)

    def batch_of(n: int) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert len(got) == n
        return got

    def process(values: list[bytes], commit: bool) -> None:
        producer.begin_transaction()
        for v in values:
            producer.produce("txn-out", value=v.replace(b"in", b"out"))
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 15
        )
        # in the log before the end: librdkafka's abort purges records it has not sent yet
        assert producer.flush(15) == 0
        if commit:
            producer.commit_transaction(15)
        else:
            producer.abort_transaction(15)

    first = batch_of(20)
    process(first, commit=False)
    # an aborted transaction moves neither the output nor the group's offset: rewind, redo
    committed = consumer.committed([TopicPartition("txn-in", 0)], timeout=10)
    assert committed[0].offset < 0
    consumer.seek(TopicPartition("txn-in", 0, 0))
    again = batch_of(20)
    assert again == first
    process(again, commit=True)
    committed = consumer.committed([TopicPartition("txn-in", 0)], timeout=10)
    assert committed[0].offset == 20
    consumer.close()

    outputs = [v.replace(b"in", b"out") for v in inputs]
    assert consume_all(broker.bootstrap, "txn-out", "read_committed", 20, "rc") == outputs
    uncommitted = consume_all(broker.bootstrap, "txn-out", "read_uncommitted", 40, "ru")
    assert uncommitted == outputs + outputs  # the aborted copy is there, the markers are not


def test_read_committed_waits_for_the_open_transaction(broker: RunningBroker) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "slow"})
    producer.init_transactions(15)
    producer.begin_transaction()
    for i in range(5):
        producer.produce("open-txn", value=b"t%d" % i)
    assert producer.flush(15) == 0  # written to the log, transaction still open
    produce_plain(broker.bootstrap, "open-txn", [b"after"])
    part = broker.server.broker.topics.partition("open-txn", 0)
    assert part.log_end_offset == 6 and part.last_stable_offset == 0
    assert consume_all(broker.bootstrap, "open-txn", "read_committed", 0, "w1") == []
    producer.commit_transaction(15)
    assert part.last_stable_offset == part.log_end_offset == 7
    got = consume_all(broker.bootstrap, "open-txn", "read_committed", 6, "w2")
    assert got == [b"t%d" % i for i in range(5)] + [b"after"]


def test_a_new_instance_fences_the_old_one_and_aborts_its_transaction(
    broker: RunningBroker,
) -> None:
    old = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "fence-me"})
    old.init_transactions(15)
    old.begin_transaction()
    old.produce("fenced", value=b"zombie")
    assert old.flush(15) == 0
    new = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "fence-me"})
    new.init_transactions(15)  # aborts the zombie's open transaction
    new.begin_transaction()
    new.produce("fenced", value=b"fresh")
    new.commit_transaction(15)
    with pytest.raises(KafkaException) as caught:
        old.commit_transaction(15)
    assert caught.value.args[0].fatal() or caught.value.args[0].txn_requires_abort()
    assert consume_all(broker.bootstrap, "fenced", "read_committed", 1, "f") == [b"fresh"]


def test_kafka_python_transactional_producer(broker: RunningBroker) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="kp-txn")
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(3):
        producer.send("kp-txn", value=b"no%d" % i)
    producer.abort_transaction()
    producer.begin_transaction()
    for i in range(3):
        producer.send("kp-txn", value=b"yes%d" % i)
    producer.commit_transaction()
    producer.close()
    consumer = KafkaConsumer("kp-txn", bootstrap_servers=broker.bootstrap,
                             isolation_level="read_committed", auto_offset_reset="earliest",
                             consumer_timeout_ms=3000)  # fmt: skip
    got = [r.value for r in consumer]
    consumer.close()
    assert got == [b"yes0", b"yes1", b"yes2"]


def test_transactions_survive_a_restart(start_broker: Callable[..., RunningBroker]) -> None:
    """The coordinator's state is in its log: after a restart the same transactional id is
    fenced forward (epoch grows), an open transaction is still open, and committing it works."""
    first = start_broker()
    producer = Producer({"bootstrap.servers": first.bootstrap, "transactional.id": "durable"})
    producer.init_transactions(15)
    producer.begin_transaction()
    producer.produce("restart-txn", value=b"before")
    assert producer.flush(15) == 0
    coordinator = first.server.broker.txns
    pid, epoch = coordinator.txns["durable"].producer_id, coordinator.txns["durable"].producer_epoch
    producer.abort_transaction(15)
    del producer
    data = first.server.settings.data
    first.stop()
    again = start_broker(data)
    meta = again.server.broker.txns.txns["durable"]
    assert (meta.producer_id, meta.producer_epoch, meta.state) == (pid, epoch, "CompleteAbort")
    part = again.server.broker.topics.partition("restart-txn", 0)
    assert part.last_stable_offset == part.log_end_offset == 2  # the record and its marker
    assert [a.producer_id for a in part.aborted_between(0, 2)] == [pid]
    producer = Producer({"bootstrap.servers": again.bootstrap, "transactional.id": "durable"})
    producer.init_transactions(15)
    assert again.server.broker.txns.txns["durable"].producer_epoch > epoch
    producer.begin_transaction()
    producer.produce("restart-txn", value=b"after")
    producer.commit_transaction(15)
    assert consume_all(again.bootstrap, "restart-txn", "read_committed", 1, "r") == [b"after"]
