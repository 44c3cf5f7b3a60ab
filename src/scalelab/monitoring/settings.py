"""The monitoring system's settings (env: SCALELAB_MONITORING_<NAME>)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scalelab.config import SystemSettings, setting

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# file_sd targets `scalelab up` writes under the monitoring folder: every system's /metrics,
# scraped by the default config (the one used when no scrape_config is given).
SCALELAB_TARGETS = "targets/scalelab.json"


@dataclass(frozen=True)
class MonitoringSettings(SystemSettings):
    system = "monitoring"

    port: int = setting(9090, "port of the Prometheus-compatible HTTP API (0 picks a free port)")
    scrape_config: Path | None = setting(
        None,
        "Prometheus-style YAML with global: and scrape_configs: (default: the systems that "
        "`scalelab up` started)",
    )
    alertmanager_config: Path | None = setting(
        None, "Alertmanager-style YAML (route:, receivers:) for notifications (default: none)"
    )
    rule_files: str = setting("", "comma-separated globs of Prometheus rule files (YAML)")
    block_duration_ms: int = setting(2 * HOUR_MS, "time span of one persisted block")
    retention_raw_days: float = setting(7.0, "keep raw samples this long (the book: 7 days)")
    retention_1m_days: float = setting(30.0, "keep 1-minute aggregates this long (30 days)")
    retention_1h_days: float = setting(365.0, "keep 1-hour aggregates this long (1 year)")
    max_active_series: int = setting(1_000_000, "global limit of series in the head block")
    sample_limit: int = setting(0, "default per-scrape sample limit (0: none)")
    lookback_delta_s: float = setting(300.0, "how far back an instant selector looks")
    query_max_samples: int = setting(50_000_000, "samples one query may load at most")
    query_timeout_s: float = setting(120.0, "longest a query may run")
    query_cache_entries: int = setting(512, "range-query results kept for repeated dashboards")
    decoded_chunk_cache_samples: int = setting(
        4_000_000, "samples of decoded chunks kept for queries (16 bytes each; 0: none)"
    )
    remote_write_max_bytes: int = setting(
        64 * 1024 * 1024, "largest decompressed remote-write body accepted"
    )
    wal_segment_bytes: int = setting(128 * 1024 * 1024, "size of one WAL segment file")
    evaluation_interval_s: float = setting(15.0, "how often rules are evaluated")
