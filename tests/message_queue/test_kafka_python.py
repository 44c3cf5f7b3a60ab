"""kafka-python against the broker: produce, consume, offsets, topics, idempotence."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic


def consume(
    bootstrap: str, topic: str, partitions: int, expect: int
) -> list[tuple[int, bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000, fetch_max_wait_ms=200)  # fmt: skip
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    got = []
    for msg in consumer:
        got.append((msg.partition, msg.key, msg.value))
        if len(got) == expect:
            break
    consumer.close()
    return got


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_produce_and_consume_with_each_codec(broker: RunningBroker, codec: str | None) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type=codec, linger_ms=5)  # fmt: skip
    sent = [(b"k%d" % (i % 7), b"value-%d" % i) for i in range(200)]
    metas = [producer.send("events", key=k, value=v) for k, v in sent]
    producer.flush()
    offsets = [m.get(timeout=10).offset for m in metas]
    assert offsets == list(range(200))
    producer.close()
    got = consume(broker.bootstrap, "events", 1, 200)
    assert [(k, v) for _, k, v in got] == sent


def test_keyed_partitioning_and_restart(start_broker: Callable[..., RunningBroker]) -> None:
    first = start_broker(default_partitions=4)
    admin = KafkaAdminClient(bootstrap_servers=first.bootstrap)
    admin.create_topics([NewTopic("keyed", num_partitions=6, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=first.bootstrap, acks="all")
    for i in range(120):
        producer.send("keyed", key=b"user-%d" % (i % 10), value=b"%d" % i)
    producer.flush()
    producer.close()
    data = first.server.settings.data
    first.stop()
    again = start_broker(data)
    got = consume(again.bootstrap, "keyed", 6, 120)
    by_key: dict[bytes, set[int]] = {}
    for partition, key, _ in got:
        by_key.setdefault(key, set()).add(partition)
    assert len(got) == 120 and all(len(parts) == 1 for parts in by_key.values())
    assert len({p for parts in by_key.values() for p in parts}) > 1
    per_key = [int(v) for _, k, v in got if k == b"user-3"]
    assert per_key == sorted(per_key)  # order within a key's partition is kept


def test_offsets_by_time_and_ends(broker: RunningBroker) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(10):
        producer.send("timed", value=b"x", timestamp_ms=1_000_000 + i * 1000)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    tp = TopicPartition("timed", 0)
    assert consumer.beginning_offsets([tp])[tp] == 0
    assert consumer.end_offsets([tp])[tp] == 10
    found = consumer.offsets_for_times({tp: 1_004_500})[tp]
    assert found is not None and found.offset == 5
    consumer.close()


def test_describe_configs_shows_topic_overrides_and_defaults(broker: RunningBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("configured", 1, 1, topic_configs={"retention.ms": "60000"})])
    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "configured")])
    admin.close()
    configs = result["topic"]["configured"]
    assert configs["retention.ms"]["value"] == "60000"
    assert configs["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    # kafka-python shows only what is set on the topic; the broker also answers the defaults
    everything = broker.server.broker._topic_configs({"retention.ms": "60000"}, None)
    defaults = {c["name"]: c for c in everything if c["is_default"]}
    assert defaults["segment.bytes"]["value"] == str(1 << 30) and "retention.ms" not in defaults


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_each_acks_setting_delivers(broker: RunningBroker, acks: int | str) -> None:
    """acks=0 gets no response at all, 1 and all are answered after the write (and, by
    default, the fsync): all three records arrive, in order."""
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks,
                             enable_idempotence=acks == "all")  # fmt: skip
    metas = [producer.send(f"acks-{acks}", value=b"r%d" % i).get(timeout=10) for i in range(3)]
    producer.close()
    if acks != 0:  # with acks=0 no offset comes back (kafka-python reports its own count)
        assert [m.offset for m in metas] == [0, 1, 2]
    got = consume(broker.bootstrap, f"acks-{acks}", 1, 3)
    assert [v for _, _, v in got] == [b"r0", b"r1", b"r2"]
