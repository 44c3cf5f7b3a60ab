"""/metrics shows each partition's offsets and each consumer group's lag."""

from __future__ import annotations

import asyncio
import warnings

import httpx

from scalelab.message_queue.server import create_admin_app
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata


def test_consumer_lag_is_log_end_minus_committed(broker: RunningBroker) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for i in range(10):
        producer.send("lagging", b"%d" % i)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="slow")
    consumer.commit({TopicPartition("lagging", 0): OffsetAndMetadata(4, "", -1)})
    consumer.close()

    async def scrape() -> tuple[int, str]:
        transport = httpx.ASGITransport(app=create_admin_app(broker.server.broker))
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            return (await client.get("/healthz")).status_code, (await client.get("/metrics")).text

    health, text = asyncio.run(scrape())
    assert health == 200
    assert 'scalelab_mq_log_end_offset{partition="0",topic="lagging"} 10.0' in text
    assert (
        'scalelab_mq_group_committed_offset{group="slow",partition="0",topic="lagging"} 4.0' in text
    )
    assert 'scalelab_mq_group_lag{group="slow",partition="0",topic="lagging"} 6.0' in text
