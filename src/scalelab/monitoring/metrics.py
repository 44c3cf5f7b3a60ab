"""What the monitoring server shows on its own /metrics, under Prometheus's names where
Prometheus has one (so its dashboards and alerts about itself carry over).

Collected when scraped, from the live objects: the head's series and refusals, blocks,
scrape counters, notifications and the results cache.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scalelab.monitoring import chunk
from scalelab.monitoring.service import Monitoring


class MonitoringCollector(Collector):
    def __init__(self, service: Monitoring) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        head = s.tsdb.head
        yield GaugeMetricFamily(
            "prometheus_tsdb_head_series", "Series in the head block", value=head.num_series
        )
        yield CounterMetricFamily(
            "prometheus_tsdb_head_series_limit_hits",
            "New series refused because the active-series limit was reached",
            value=head.series_limit_hits,
        )
        yield CounterMetricFamily(
            "prometheus_tsdb_out_of_order_samples",
            "Samples refused for being older than their series' newest",
            value=head.out_of_order_samples,
        )
        blocks = GaugeMetricFamily(
            "prometheus_tsdb_blocks_loaded", "Persisted blocks", labels=["resolution"]
        )
        counts: dict[int, int] = {}
        for b in s.tsdb.blocks:
            counts[b.meta.resolution_ms] = counts.get(b.meta.resolution_ms, 0) + 1
        for resolution in (0, 60_000, 3_600_000):
            blocks.add_metric([str(resolution)], counts.get(resolution, 0))
        yield blocks
        for name, value in s.scrape.counters.as_metrics().items():
            yield CounterMetricFamily(name.removesuffix("_total"), name, value=value)
        sent = CounterMetricFamily(
            "alertmanager_notifications", "Notifications delivered", labels=["receiver"]
        )
        failed = CounterMetricFamily(
            "alertmanager_notifications_failed", "Notifications given up", labels=["receiver"]
        )
        for receiver, n in sorted(s.notifier.notifications_sent.items()):
            sent.add_metric([receiver], n)
        for receiver, n in sorted(s.notifier.notifications_failed.items()):
            failed.add_metric([receiver], n)
        yield sent
        yield failed
        cache = CounterMetricFamily(
            "scalelab_monitoring_query_cache_steps", "Range-query steps", labels=["result"]
        )
        cache.add_metric(["hit"], s.cache.hits)
        cache.add_metric(["miss"], s.cache.misses)
        yield cache
        decoded = CounterMetricFamily(
            "scalelab_monitoring_decoded_chunk_cache_lookups",
            "Chunk decodes asked of the decoded-chunk cache",
            labels=["result"],
        )
        decoded.add_metric(["hit"], chunk.DECODED.hits)
        decoded.add_metric(["miss"], chunk.DECODED.misses)
        yield decoded
        yield CounterMetricFamily(
            "prometheus_remote_storage_samples_rejected",
            "Pushed samples refused (out of order)",
            value=s.samples_rejected,
        )
