"""The scrape path end to end: a real prometheus_client exporter, real httpx, the real parser.

Scheduling still runs on the virtual clock (so no test waits out an interval); the network is
real, so after each advance the test waits for the scrape's commit to land.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from scalelab.monitoring import model
from scalelab.monitoring.scrape import ScrapeManager
from scalelab.monitoring.scrape_config import Config, load_config
from tests.monitoring.test_scrape import FakeStorage, VirtualClock


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """A prometheus_client exporter on a free loopback port (its metrics never change, so one
    serves the whole module); yields host:port."""
    registry = CollectorRegistry()
    requests = Counter("app_requests", "Requests served.", ["method"], registry=registry)
    requests.labels("get").inc(3)
    requests.labels("post").inc()
    Gauge("app_queue_depth", "Items waiting.", registry=registry).set(7.5)
    latency = Histogram(
        "app_latency_seconds", "Request latency.", buckets=(0.1, 1.0), registry=registry
    )
    for value in (0.05, 0.5, 2.0):
        latency.observe(value)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def refused() -> str:
    """host:port on which nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait for real I/O to finish; the bound only guards against a hang."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


async def scrape_round(clock: VirtualClock, storage: FakeStorage, scrapes: int) -> None:
    """One interval passes; wait until `scrapes` more scrapes have committed."""
    target = storage.commits + scrapes
    await clock.advance(10)
    await wait_for(lambda: storage.commits >= target, f"{target} commits")


def static_job(*targets: str) -> Config:
    quoted = ", ".join(f"'{t}'" for t in targets)
    return load_config(
        "scrape_configs:\n  - job_name: app\n    scrape_interval: 10s\n"
        f"    static_configs: [{{targets: [{quoted}]}}]\n"
    )


def test_scrape_a_real_exporter(exporter: str, refused: str) -> None:
    storage, clock = FakeStorage(), VirtualClock()

    async def main() -> None:
        manager = ScrapeManager(
            static_job(exporter, refused), storage.appender, clock=clock, sleep=clock.sleep
        )
        await manager.start()
        try:
            await scrape_round(clock, storage, 2)
        finally:
            await manager.stop()
        assert manager.targets() == []

    asyncio.run(main())

    def value(name: str, **labels: str) -> float:
        (v,) = storage.values(name, instance=exporter, **labels)
        return v

    assert value("up") == 1
    assert value("app_requests_total", method="get") == 3
    assert value("app_requests_total", method="post") == 1
    assert value("app_queue_depth") == 7.5
    assert value("app_latency_seconds_bucket", le="0.1") == 1
    assert value("app_latency_seconds_bucket", le="1.0") == 2
    assert value("app_latency_seconds_bucket", le="+Inf") == 3
    assert value("app_latency_seconds_count") == 3
    assert value("app_latency_seconds_sum") == pytest.approx(2.55)
    (sample,) = storage.of("app_queue_depth")
    assert dict(sample[0]) == {"__name__": "app_queue_depth", "instance": exporter, "job": "app"}
    scraped = value("scrape_samples_scraped")
    from_exporter = [s for s in storage.samples if model.get(s[0], "instance") == exporter]
    assert scraped == len(from_exporter) - 5  # everything but the five report series
    assert value("scrape_series_added") == scraped
    assert storage.stale() == set()
    assert storage.values("up", instance=refused) == [0]


def test_targets_status_of_real_scrapes(exporter: str, refused: str) -> None:
    storage, clock = FakeStorage(), VirtualClock()

    async def main() -> None:
        manager = ScrapeManager(
            static_job(exporter, refused), storage.appender, clock=clock, sleep=clock.sleep
        )
        await manager.start()
        try:
            await scrape_round(clock, storage, 2)
            status = {model.get(t.labels, "instance"): t for t in manager.targets()}
            assert status[exporter].health == "up"
            assert status[exporter].last_error == ""
            assert status[refused].health == "down"
            assert status[refused].last_error.startswith(f'Get "http://{refused}/metrics": ')
            assert "ConnectError" in status[refused].last_error
            data = manager.targets_json(hostname="box")
            health = {t["labels"]["instance"]: t["health"] for t in data["activeTargets"]}
            assert health == {exporter: "up", refused: "down"}
        finally:
            await manager.stop()

    asyncio.run(main())


def test_file_sd_rewrite_moves_scraping_between_targets(
    tmp_path: Path, exporter: str, refused: str
) -> None:
    sd = tmp_path / "targets.json"
    sd.write_text(f'[{{"targets": ["{exporter}"], "labels": {{"team": "a"}}}}]')
    config = load_config(
        "scrape_configs:\n  - job_name: files\n    scrape_interval: 10s\n"
        f"    file_sd_configs: [{{files: ['{tmp_path}/*.json']}}]\n"
    )
    storage, clock = FakeStorage(), VirtualClock()

    async def main() -> None:
        manager = ScrapeManager(config, storage.appender, clock=clock, sleep=clock.sleep)
        await manager.start()
        try:
            await scrape_round(clock, storage, 1)
            assert storage.values("up", instance=exporter, team="a") == [1]
            sd.write_text(f'[{{"targets": ["{refused}"], "labels": {{"team": "b"}}}}]')
            await manager.refresh_discovery()
            assert [model.get(t.labels, "instance") for t in manager.targets()] == [refused]
            # the exporter's series ended with the target
            assert model.is_stale(storage.values("up", instance=exporter)[-1])
            assert model.is_stale(storage.values("app_queue_depth", instance=exporter)[-1])
            await scrape_round(clock, storage, 1)
            assert storage.values("up", instance=refused, team="b") == [0]
            # and back: the exporter is scraped again
            sd.write_text(f'[{{"targets": ["{exporter}", "{refused}"]}}]')
            await manager.refresh_discovery()
            await scrape_round(clock, storage, 2)
            assert storage.values("app_queue_depth", instance=exporter)[-1] == 7.5
        finally:
            await manager.stop()

    asyncio.run(main())
