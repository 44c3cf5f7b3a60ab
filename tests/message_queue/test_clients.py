"""The other clients: confluent-kafka (librdkafka), aiokafka and kcat, against one broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition

from scalelab.message_queue.batch import split
from tests.message_queue.conftest import RunningBroker

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_idempotent_producer_and_group_consumer(
    broker: RunningBroker, codec: str
) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                         "enable.idempotence": True, "linger.ms": 5})  # fmt: skip
    errors: list[object] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(err)

    for i in range(300):
        producer.produce("ck", key=b"k%d" % (i % 5), value=b"v%03d" % i, on_delivery=delivered)
    assert producer.flush(15) == 0 and errors == []
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"cg-{codec}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe(["ck"])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 300 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition("ck", 0)], timeout=10)
    consumer.close()
    assert got == [b"v%03d" % i for i in range(300)]
    assert committed[0].offset == 300


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_aiokafka_round_trip(broker: RunningBroker, codec: str | None) -> None:
    async def main() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                                    compression_type=codec, enable_idempotence=True)  # fmt: skip
        await producer.start()
        try:
            for i in range(100):
                await producer.send("aio", value=b"a%03d" % i)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("aio", bootstrap_servers=broker.bootstrap, group_id="ag",
                                    auto_offset_reset="earliest")  # fmt: skip
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < 100:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
                for records in batch.values():
                    got += [r.value for r in records]
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(main()) == [b"a%03d" % i for i in range(100)]


@pytest.mark.skipif(
    shutil.which("kcat") is None, reason="kcat is not installed (.ci/run installs it)"
)
@pytest.mark.parametrize("codec", CODECS)
def test_kcat_produces_and_consumes(broker: RunningBroker, codec: str) -> None:
    topic = f"kc-{codec}"
    lines = "".join(f"key{i}:value {i}\n" for i in range(50))
    subprocess.run(["kcat", "-b", broker.bootstrap, "-P", "-t", topic, "-K:", "-z", codec],
                   input=lines, text=True, check=True, timeout=30)  # fmt: skip
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning",
                          "-e", "-f", "%k=%s@%o\n"], capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    assert out.stdout.splitlines() == [f"key{i}=value {i}@{i}" for i in range(50)]
    stored = broker.server.broker.topics.partition(topic, 0).read(0, 1 << 20)
    found = {h.compression for h, _ in split(stored)}  # kept as kcat sent it: librdkafka
    assert codec in found and found <= {codec, "none"}  # sends batches too small to shrink plain
    listing = subprocess.run(["kcat", "-b", broker.bootstrap, "-L", "-t", topic],
                             capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
    assert f'topic "{topic}" with 1 partitions' in listing.stdout
