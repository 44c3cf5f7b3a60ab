"""A real remote-write sender: Debian's Prometheus scrapes a prometheus_client exporter and
remote-writes what it scrapes to our server, whose API must then answer the exporter's series
(with the job and instance labels Prometheus adds), `up`, the metadata, and every sample
Prometheus stored for those series.

Without the `prometheus` package this test fails on purpose, saying why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from scalelab.monitoring import remote_write

from .promql_parity import PrometheusMissing, prometheus_binaries, run_prometheus
from .support import running_server, wait_for

WAIT_S = 30.0  # bound on every wait for data to travel exporter -> Prometheus -> us


@dataclass
class Exporter:
    target: str  # host:port, as Prometheus's instance label shows it
    jobs: Counter
    temperature: Gauge


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    jobs = Counter("jobs_done", "Jobs done", ["queue"], registry=registry)
    jobs.labels("fast").inc(7)
    temperature = Gauge("temperature_celsius", "Temperature", registry=registry)
    temperature.set(21.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield Exporter(f"127.0.0.1:{server.server_port}", jobs, temperature)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[str]:
    with running_server(tmp_path / "ours") as url:
        yield url


def query(url: str, q: str, **params: Any) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/api/v1/query", params={"query": q, **params}, timeout=30)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def config(exporter: str, ours: str) -> str:
    return f"""
global:
  scrape_interval: 250ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: app
    static_configs:
      - targets: ['{exporter}']
remote_write:
  - url: {ours}{remote_write.PATH}
    queue_config:
      batch_send_deadline: 200ms
      max_samples_per_send: 200
      min_backoff: 50ms
      max_backoff: 500ms
    metadata_config:
      send: true
      send_interval: 1s
"""


def test_prometheus_remote_writes_what_it_scrapes(
    exporter: Exporter, ours: str, tmp_path: Path
) -> None:
    try:
        prometheus_binaries()
    except PrometheusMissing as exc:
        pytest.fail(str(exc))
    instance = exporter.target
    with run_prometheus(tmp_path, config(exporter.target, ours)) as prometheus:

        def jobs_done(value: str) -> Callable[[], list[dict[str, Any]]]:
            def check() -> list[dict[str, Any]]:
                found = query(ours, 'jobs_done_total{job="app"}')
                return [r for r in found if r["value"][1] == value]

            return check

        (series,) = wait_for(jobs_done("7"), WAIT_S, "the exporter's counter")
        assert series["metric"] == {
            "__name__": "jobs_done_total",
            "instance": instance,
            "job": "app",
            "queue": "fast",
        }
        (up,) = wait_for(lambda: query(ours, 'up{job="app"} == 1'), WAIT_S, "up")
        assert up["metric"] == {"__name__": "up", "instance": instance, "job": "app"}
        gauge = query(ours, "temperature_celsius")
        assert [(g["metric"]["instance"], g["value"][1]) for g in gauge] == [(instance, "21.5")]
        assert query(ours, 'scrape_samples_scraped{job="app"}'), "Prometheus's own series"

        # the stream goes on: a change at the exporter reaches us
        exporter.jobs.labels("fast").inc(5)
        exporter.temperature.set(-3.25)
        wait_for(jobs_done("12"), WAIT_S, "the counter's new value")
        wait_for(
            lambda: [g for g in query(ours, "temperature_celsius") if g["value"][1] == "-3.25"],
            WAIT_S,
            "the gauge's new value",
        )

        def metadata() -> Any:
            reply = httpx.get(f"{ours}/api/v1/metadata", params={"metric": "temperature_celsius"})
            return reply.json()["data"]

        assert wait_for(metadata, WAIT_S, "the metadata") == {
            "temperature_celsius": [{"type": "gauge", "help": "Temperature", "unit": ""}]
        }

        # every sample Prometheus stored for these series, up to the newest one we have, is
        # here with the same timestamp and value (a sender sends each series in order)
        selector = '{job="app", __name__=~"up|jobs_done_total|temperature_celsius"}[10m]'
        at = time.time()
        theirs = {_key(s): s["values"] for s in query(prometheus, selector, time=at)}
        mine = {_key(s): s["values"] for s in query(ours, selector, time=at)}
        assert set(mine) == set(theirs) and len(mine) == 3, (sorted(mine), sorted(theirs))
        for key, values in mine.items():
            newest = float(values[-1][0])
            sent = [v for v in theirs[key] if float(v[0]) <= newest]
            assert values == sent, f"{key}: ours differ from what Prometheus stored"
            assert len(values) >= 2, f"{key}: only {len(values)} samples arrived"
        jobs = next(v for k, v in mine.items() if ("__name__", "jobs_done_total") in k)
        assert {"7", "12"} <= {v for _, v in jobs}


def _key(series: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(series["metric"].items()))
