"""What the broker shows on /metrics: each partition's log, and each group's lag.

Consumer lag is the book's signal that consumers fall behind: per group and partition, the
log end offset minus the group's committed offset. Collected when scraped, from the broker's
state, so nothing is counted twice or kept in step by hand.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scalelab.message_queue.broker import Broker


class BrokerCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        end = GaugeMetricFamily(
            "scalelab_mq_log_end_offset", "Next offset to be written", labels=["topic", "partition"]
        )
        start = GaugeMetricFamily(
            "scalelab_mq_log_start_offset", "Oldest offset kept", labels=["topic", "partition"]
        )
        size = GaugeMetricFamily(
            "scalelab_mq_log_size_bytes", "Bytes in the partition's segments",
            labels=["topic", "partition"],
        )  # fmt: skip
        ends: dict[tuple[str, int], int] = {}
        for topic, index, part in self.broker.topics.partitions():
            labels = [topic, str(index)]
            ends[(topic, index)] = part.log_end_offset
            end.add_metric(labels, part.log_end_offset)
            start.add_metric(labels, part.log_start_offset)
            size.add_metric(labels, part.size_bytes)
        committed = GaugeMetricFamily(
            "scalelab_mq_group_committed_offset", "A consumer group's committed offset",
            labels=["group", "topic", "partition"],
        )  # fmt: skip
        lag = GaugeMetricFamily(
            "scalelab_mq_group_lag", "Log end offset minus the group's committed offset",
            labels=["group", "topic", "partition"],
        )  # fmt: skip
        for (group, topic, index), (offset, _) in sorted(self.broker.offsets.offsets.items()):
            if (topic, index) not in ends or offset < 0:
                continue
            labels = [group, topic, str(index)]
            committed.add_metric(labels, offset)
            lag.add_metric(labels, max(ends[(topic, index)] - offset, 0))
        yield from (end, start, size, committed, lag)
