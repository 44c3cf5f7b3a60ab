"""Scrape loops and the scrape manager on virtual time, with a mock network and a fake store.

`VirtualClock` stands in for both the wall clock and `sleep`: `advance` wakes sleepers in
deadline order and lets the event loop settle after each, so a test says "15 seconds pass" and
then looks at exactly what was appended. `FakeStorage` records committed samples and enforces
the Appender contract (out-of-order, series limit, rollback).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from scalelab.monitoring import errors, model
from scalelab.monitoring.params import rfc3339
from scalelab.monitoring.scrape import ScrapeManager, default_http_client, global_url
from scalelab.monitoring.scrape_config import Config, ScrapeConfig, load_config

T = TypeVar("T")
L = model.labels_of
START = 1_700_000_000.0005  # off the millisecond grid: no scrape phase lands exactly on it


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def settle(rounds: int = 60) -> None:
    """Let every runnable task run until it blocks again."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def inline(fn: Callable[..., Any], /, *args: Any) -> Any:
    """Parse and commit on the loop itself: virtual time cannot wait for a thread."""
    return fn(*args)


class VirtualClock:
    """A wall clock and `sleep` on virtual time."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._sleepers:
            deadline, _, fut = self._sleepers[0]
            if fut.done():
                heapq.heappop(self._sleepers)
                continue
            if deadline > target:
                break
            heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            fut.set_result(None)
            await settle()
        self.now = target
        await settle()


@dataclass
class FakeStorage:
    """Committed samples, in commit order; series identity and order checks like the head's."""

    max_series: int | None = None
    broken: str = ""  # appending this metric raises StorageError
    samples: list[tuple[model.Labels, int, float]] = field(default_factory=list)
    last_t: dict[model.Labels, int] = field(default_factory=dict)
    commits: int = 0
    rollbacks: int = 0

    def appender(self) -> FakeAppender:
        return FakeAppender(self)

    def of(self, name: str, **labels: str) -> list[tuple[model.Labels, int, float]]:
        return [
            s
            for s in self.samples
            if model.metric_name(s[0]) == name
            and all(model.get(s[0], k) == v for k, v in labels.items())
        ]

    def values(self, name: str, **labels: str) -> list[float]:
        return [v for _, _, v in self.of(name, **labels)]

    def stale(self) -> set[model.Labels]:
        return {lbl for lbl, _, v in self.samples if model.is_stale(v)}


class FakeAppender:
    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage
        self.pending: list[tuple[model.Labels, int, float]] = []
        self.pending_t: dict[model.Labels, int] = {}

    def append(self, labels: model.Labels, t: int, v: float) -> None:
        st = self.storage
        if st.broken and model.metric_name(labels) == st.broken:
            raise errors.StorageError("disk on fire")
        last = self.pending_t.get(labels, st.last_t.get(labels))
        if last is not None and t <= last:
            raise errors.OutOfOrderSample(f"{model.format_labels(labels)} at {t} <= {last}")
        if labels not in st.last_t and labels not in self.pending_t and st.max_series is not None:
            if len(st.last_t) + sum(1 for x in self.pending_t if x not in st.last_t) >= (
                st.max_series
            ):
                raise errors.LimitExceeded(f"more than {st.max_series} series")
        self.pending.append((labels, t, v))
        self.pending_t[labels] = t

    def commit(self) -> None:
        self.storage.samples.extend(self.pending)
        self.storage.last_t.update(self.pending_t)
        self.storage.commits += 1
        self.pending, self.pending_t = [], {}

    def rollback(self) -> None:
        self.storage.rollbacks += 1
        self.pending, self.pending_t = [], {}


_LINE = re.compile(r"([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)(?:\s+(-?\d+))?\Z")


def fake_parse(data: bytes, content_type: str | None) -> model.Exposition:
    """A tiny text-format subset: `name{a="b"} value [timestamp_ms]` per line."""
    samples: list[tuple[model.Labels, float, int | None]] = []
    for line in data.decode().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise errors.ParseError(f"bad line {line!r}")
        pairs = [("__name__", m[1])]
        for part in filter(None, (m[2] or "").split(",")):
            k, v = part.split("=", 1)
            pairs.append((k.strip(), v.strip().strip('"')))
        samples.append((L(pairs), float(m[3]), int(m[4]) if m[4] else None))
    return model.Exposition(samples, {"m": model.MetricMetadata(model.MetricType.GAUGE)})


@dataclass
class Endpoint:
    body: str = ""
    status: int = 200
    hang: bool = False


class FakeNet:
    """Targets by host:port; an unknown one refuses the connection."""

    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.requests: list[httpx.Request] = []
        self.clients: list[httpx.AsyncClient] = []

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        ep = self.endpoints.get(f"{request.url.host}:{request.url.port}")
        if ep is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if ep.hang:
            await asyncio.Event().wait()
        return httpx.Response(ep.status, text=ep.body, headers={"Content-Type": "text/plain"})

    def client(self, cfg: ScrapeConfig) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        self.clients.append(client)
        return client


@dataclass
class Rig:
    clock: VirtualClock
    net: FakeNet
    storage: FakeStorage
    manager: ScrapeManager


def job_config(body: str = "", *, targets: str = "['a:1']", interval: str = "10s") -> Config:
    text = (
        "scrape_configs:\n  - job_name: j\n"
        f"    scrape_interval: {interval}\n    scrape_timeout: 5s\n"
        f"    static_configs: [{{targets: {targets}}}]\n"
    )
    text += "".join(f"    {line}\n" for line in body.split("\n") if line)
    return load_config(text)


def with_rig(
    config: Config,
    test: Callable[[Rig], Awaitable[None]],
    *,
    storage: FakeStorage | None = None,
    offset_seed: int = 0,
    endpoints: dict[str, Endpoint] | None = None,
) -> Rig:
    clock, net = VirtualClock(), FakeNet()
    net.endpoints.update(endpoints or {})
    store = storage or FakeStorage()
    manager = ScrapeManager(
        config,
        store.appender,
        clock=clock,
        sleep=clock.sleep,
        http_client_factory=net.client,
        parse=fake_parse,
        accept_header="text/plain;version=0.0.4",
        offset_seed=offset_seed,
        run_blocking=inline,
    )
    rig = Rig(clock, net, store, manager)

    async def main() -> None:
        await manager.start()
        try:
            await test(rig)
        finally:
            await manager.stop()

    run(main())
    assert all(c.is_closed for c in net.clients)
    return rig


def ts(labels: model.Labels) -> dict[str, str]:
    return dict(labels)


# --- a plain scrape -------------------------------------------------------------------------


def test_scrape_appends_samples_with_target_labels_and_report_series() -> None:
    body = 'm{path="/a"} 1\nm{path="/b"} 2.5\nother 7\n'

    async def test(rig: Rig) -> None:
        (status,) = rig.manager.targets()
        assert status.health == "unknown" and status.last_scrape is None
        await rig.clock.advance(10)
        up = rig.storage.of("up")
        assert len(up) == 1
        labels, t, v = up[0]
        assert ts(labels) == {"__name__": "up", "job": "j", "instance": "a:1"}
        assert v == 1
        assert rig.storage.of("m", path="/a") == [
            (L({"__name__": "m", "path": "/a", "job": "j", "instance": "a:1"}), t, 1.0)
        ]
        assert rig.storage.values("m", path="/b") == [2.5]
        assert rig.storage.values("other") == [7]
        assert rig.storage.values("scrape_samples_scraped") == [3]
        assert rig.storage.values("scrape_samples_post_metric_relabeling") == [3]
        assert rig.storage.values("scrape_series_added") == [3]
        assert rig.storage.values("scrape_duration_seconds") == [0]
        (status,) = rig.manager.targets()
        assert status.health == "up" and status.last_error == ""
        (metadata,) = rig.manager.metadata().values()
        assert metadata["m"].type is model.MetricType.GAUGE
        assert status.last_scrape == t / 1000
        assert status.last_samples == 3
        (request,) = rig.net.requests
        assert str(request.url) == "http://a:1/metrics"
        assert request.headers["Accept"] == "text/plain;version=0.0.4"
        assert request.headers["X-Prometheus-Scrape-Timeout-Seconds"] == "5"
        # the second scrape sees no new series
        await rig.clock.advance(10)
        assert rig.storage.values("scrape_series_added") == [3, 0]
        assert rig.storage.values("up") == [1, 1]

    with_rig(job_config(), test, endpoints={"a:1": Endpoint(body)})


def test_scrapes_run_every_interval_at_a_per_target_phase() -> None:
    targets = "['a:1', 'b:1', 'c:1', 'd:1']"
    endpoints = {f"{h}:1": Endpoint("m 1") for h in "abcd"}
    times: dict[int, dict[str, list[int]]] = {}

    for seed in (0, 12345):

        async def test(rig: Rig) -> None:
            await rig.clock.advance(10 * 5)

        rig = with_rig(job_config(targets=targets), test, offset_seed=seed, endpoints=endpoints)
        per_target: dict[str, list[int]] = {}
        for labels, t, _ in rig.storage.of("up"):
            per_target.setdefault(model.get(labels, "instance"), []).append(t)
        times[seed] = per_target
        start_ms = START * 1000
        for series in per_target.values():
            assert len(series) == 5
            assert all(b - a == 10_000 for a, b in itertools.pairwise(series))
            assert start_ms <= series[0] < start_ms + 10_000
        # each target keeps its own phase and the phases spread out
        assert len({s[0] for s in per_target.values()}) == 4
    assert times[0] != times[12345]


def test_loops_schedule_deterministically() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(30)

    first = with_rig(job_config(), test, endpoints={"a:1": Endpoint("m 1")})
    second = with_rig(job_config(), test, endpoints={"a:1": Endpoint("m 1")})
    assert [t for _, t, _ in first.storage.of("up")] == [t for _, t, _ in second.storage.of("up")]


def test_params_reach_the_url() -> None:
    cfg = job_config("metrics_path: /probe\nparams: {module: [icmp]}")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert str(rig.net.requests[0].url) == "http://a:1/probe?module=icmp"

    with_rig(cfg, test, endpoints={"a:1": Endpoint("m 1")})


# --- label conflicts, timestamps, relabeling -------------------------------------------------


def test_clashing_scraped_labels_become_exported_without_honor_labels() -> None:
    body = 'm{job="theirs",instance="x",exported_job="old"} 1\n'

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        (sample,) = rig.storage.of("m")
        assert ts(sample[0]) == {
            "__name__": "m",
            "job": "j",
            "instance": "a:1",
            "exported_instance": "x",
            "exported_job": "old",
            "exported_exported_job": "theirs",
        }

    with_rig(job_config(), test, endpoints={"a:1": Endpoint(body)})


def test_honor_labels_keeps_scraped_values() -> None:
    body = 'm{job="theirs"} 1\n'

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        (sample,) = rig.storage.of("m")
        assert ts(sample[0]) == {"__name__": "m", "job": "theirs", "instance": "a:1"}
        # the report series carry the target's labels regardless
        assert model.get(rig.storage.of("up")[0][0], "job") == "j"

    with_rig(job_config("honor_labels: true"), test, endpoints={"a:1": Endpoint(body)})


@pytest.mark.parametrize(("honor", "expected"), [("true", 1234), ("false", None)])
def test_honor_timestamps(honor: str, expected: int | None) -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        (sample,) = rig.storage.of("m")
        up_t = rig.storage.of("up")[0][1]
        assert sample[1] == (expected if expected is not None else up_t)

    cfg = job_config(f"honor_timestamps: {honor}")
    with_rig(cfg, test, endpoints={"a:1": Endpoint("m 1 1234\n")})


def test_metric_relabel_configs_drop_and_rewrite() -> None:
    cfg = job_config(
        "metric_relabel_configs:\n"
        "  - {source_labels: [__name__], regex: 'go_.*', action: drop}\n"
        "  - {source_labels: [path], regex: '/user/.*', target_label: path, replacement: /user}\n"
        "  - {source_labels: [job], target_label: team, replacement: infra}"
    )
    body = 'go_gc 1\ngo_threads 2\nhttp{path="/user/1"} 3\nhttp{path="/"} 4\n'

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.of("go_gc") == [] and rig.storage.of("go_threads") == []
        paths = {model.get(lbl, "path") for lbl, _, _ in rig.storage.of("http")}
        assert paths == {"/user", "/"}
        assert all(model.get(lbl, "team") == "infra" for lbl, _, _ in rig.storage.of("http"))
        assert rig.storage.values("scrape_samples_scraped") == [4]
        assert rig.storage.values("scrape_samples_post_metric_relabeling") == [2]
        assert model.get(rig.storage.of("up")[0][0], "team") == ""  # report series: no relabel

    with_rig(cfg, test, endpoints={"a:1": Endpoint(body)})


def test_relabeling_away_the_metric_name_fails_the_scrape() -> None:
    cfg = job_config("metric_relabel_configs:\n  - {action: labeldrop, regex: __name__}")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [0]
        assert "__name__" in rig.manager.targets()[0].last_error

    with_rig(cfg, test, endpoints={"a:1": Endpoint("m 1")})


def test_duplicates_and_out_of_order_samples_are_counted_and_skipped() -> None:
    body = "m 1\nm 2\nt 1 5000\nt 2 4000\nt 3 5000\nok 1\n"

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        counters = rig.manager.counters
        assert rig.storage.values("up") == [1]
        assert rig.storage.values("m") == [1]  # the second m at the same time is a duplicate
        assert [(t, v) for _, t, v in rig.storage.of("t")] == [(5000, 1)]
        assert counters.sample_duplicate_timestamp_total == 2  # m, and t at 5000 again
        assert counters.sample_out_of_order_total == 1  # t at 4000 after 5000
        assert rig.storage.values("ok") == [1]

    with_rig(job_config(), test, endpoints={"a:1": Endpoint(body)})


# --- staleness ------------------------------------------------------------------------------


def test_vanished_series_get_a_stale_marker_at_the_scrape_time() -> None:
    ep = Endpoint("a 1\nb 1\n")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        ep.body = "a 2\n"
        await rig.clock.advance(10)
        (b1, b2) = rig.storage.of("b")
        assert b1[2] == 1 and model.is_stale(b2[2])
        assert b2[1] == rig.storage.of("up")[1][1]
        assert rig.storage.values("a") == [1, 2]
        # once marked, not marked again
        await rig.clock.advance(10)
        assert len(rig.storage.of("b")) == 2

    with_rig(job_config(), test, endpoints={"a:1": ep})


def test_series_with_explicit_timestamps_are_not_marked_stale() -> None:
    ep = Endpoint("a 1 1000\nb 1\n")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        ep.body = ""
        await rig.clock.advance(10)
        assert rig.storage.stale() == {L({"__name__": "b", "job": "j", "instance": "a:1"})}

    with_rig(job_config(), test, endpoints={"a:1": ep})


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ({"status": 500}, "server returned HTTP status 500 Internal Server Error"),
        ({"hang": True}, "context deadline exceeded"),
        ({"body": "!!bad"}, "parse error: bad line"),
        ({"gone": True}, "ConnectError: [Errno 111] Connection refused"),
    ],
)
def test_failed_scrape_reports_down_and_marks_previous_series_stale(
    breakage: dict[str, Any], message: str
) -> None:
    ep = Endpoint("a 1\nb 1\n")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        if breakage.pop("gone", False):
            del rig.net.endpoints["a:1"]
        for key, value in breakage.items():
            setattr(ep, key, value)
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [1, 0]
        assert [model.is_stale(v) for v in rig.storage.values("a")] == [False, True]
        assert [model.is_stale(v) for v in rig.storage.values("b")] == [False, True]
        assert rig.storage.values("scrape_samples_scraped") == [2, 0]
        (status,) = rig.manager.targets()
        assert status.health == "down"
        assert message in status.last_error
        assert rig.manager.counters.failed_scrapes_total == 1
        # report series are not stale: up=0 is the news
        assert not any(model.metric_name(s) == "up" for s in rig.storage.stale())
        # a third failure writes no more markers; recovery brings the series back
        await rig.clock.advance(10)
        assert len(rig.storage.of("a")) == 2
        rig.net.endpoints["a:1"] = Endpoint("a 3\n")
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [1, 0, 0, 1]
        assert rig.storage.values("a")[-1] == 3
        assert rig.manager.targets()[0].health == "up"
        assert rig.manager.targets()[0].last_error == ""

    with_rig(job_config(), test, endpoints={"a:1": ep})


def test_timeout_counts_on_the_clock_not_the_wall() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        up_times = [t for _, t, _ in rig.storage.of("up")]
        assert rig.storage.values("up") == [0]
        # the report is written at the scrape's start; the duration is the timeout
        assert rig.storage.values("scrape_duration_seconds") == [5]
        assert rig.manager.targets()[0].last_duration == 5
        assert up_times[0] < rig.clock.now * 1000

    with_rig(job_config(), test, endpoints={"a:1": Endpoint(hang=True)})


# --- limits ---------------------------------------------------------------------------------


def test_sample_limit_fails_the_whole_scrape() -> None:
    ep = Endpoint("a 1\n")
    cfg = job_config(
        "sample_limit: 2\nmetric_relabel_configs:\n"
        "  - {source_labels: [__name__], regex: skip, action: drop}"
    )

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        ep.body = "a 1\nb 1\nc 1\nskip 1\nskip2 1\n"
        await rig.clock.advance(10)
        assert rig.storage.of("b") == [] and rig.storage.of("c") == []
        assert rig.storage.values("up") == [1, 0]
        assert model.is_stale(rig.storage.values("a")[-1])
        assert rig.storage.values("scrape_samples_scraped") == [1, 5]
        assert rig.storage.values("scrape_samples_post_metric_relabeling") == [1, 4]
        assert rig.storage.values("scrape_series_added") == [1, 0]
        assert rig.storage.rollbacks == 1
        assert rig.manager.counters.exceeded_sample_limit_total == 1
        assert "sample limit exceeded" in rig.manager.targets()[0].last_error
        ep.body = "a 1\nskip 1\nb 2\n"  # two after relabeling: within the limit again
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [1, 0, 1]

    with_rig(cfg, test, endpoints={"a:1": ep})


def test_series_limit_of_the_storage_fails_the_scrape() -> None:
    ep = Endpoint("a 1\n")

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [1]
        ep.body = "a 1\n" + "".join(f"n{i} 1\n" for i in range(10))
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [1, 0]
        assert rig.storage.of("n0") == []
        assert rig.manager.counters.exceeded_series_limit_total == 1
        assert "series limit exceeded" in rig.manager.targets()[0].last_error

    # a, and the five report series, fit; ten new ones do not
    with_rig(job_config(), test, storage=FakeStorage(max_series=8), endpoints={"a:1": ep})


def test_a_storage_error_voids_the_scrape_and_the_loop_goes_on() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [0]
        assert rig.storage.of("ok") == [] and rig.storage.rollbacks == 1
        assert "StorageError: disk on fire" in rig.manager.targets()[0].last_error
        rig.storage.broken = ""
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [0, 1]

    body = "ok 1\nbad 1\n"
    with_rig(
        job_config(), test, storage=FakeStorage(broken="bad"), endpoints={"a:1": Endpoint(body)}
    )


@pytest.mark.parametrize(
    ("limit", "body", "message"),
    [
        ("label_limit: 3", 'm{x="1",y="2"} 1', "label_limit exceeded"),
        ("label_name_length_limit: 5", 'm{longname="1"} 1', "label_name_length_limit"),
        ("label_value_length_limit: 3", 'm{x="long"} 1', "label_value_length_limit"),
    ],
)
def test_label_limits_fail_the_scrape(limit: str, body: str, message: str) -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.values("up") == [0]
        assert rig.storage.of("m") == []
        assert message in rig.manager.targets()[0].last_error
        assert rig.manager.counters.exceeded_label_limits_total == 1

    with_rig(job_config(limit), test, endpoints={"a:1": Endpoint(body)})


# --- reload and removal ---------------------------------------------------------------------


def test_reload_keeps_unchanged_jobs_and_carries_state_of_changed_ones() -> None:
    text = """
scrape_configs:
  - job_name: keep
    scrape_interval: 10s
    static_configs: [{targets: ['a:1']}]
  - job_name: change
    scrape_interval: 10s
    static_configs: [{targets: ['b:1', 'c:1']}]
"""
    endpoints = {"a:1": Endpoint("m 1"), "b:1": Endpoint("m 1"), "c:1": Endpoint("m 1")}

    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        keep_pool = rig.manager.pool("keep")
        assert keep_pool is not None
        keep_loop = next(iter(keep_pool.loops.values()))
        new = load_config(text.replace("['b:1', 'c:1']}]", "['b:1']}]\n    sample_limit: 10"))
        await rig.manager.apply_config(new)
        assert rig.manager.config is new
        assert rig.manager.pool("keep") is keep_pool
        assert next(iter(keep_pool.loops.values())) is keep_loop
        change = rig.manager.pool("change")
        assert change is not None and change.cfg.sample_limit == 10
        # b kept its series and status; c is gone, so its series (and up) went stale
        stale = {(model.metric_name(s), model.get(s, "instance")) for s in rig.storage.stale()}
        assert ("m", "c:1") in stale and ("up", "c:1") in stale
        assert all(instance == "c:1" for _, instance in stale)
        b = [t for t in rig.manager.targets() if model.get(t.labels, "instance") == "b:1"]
        assert b[0].health == "up"
        await rig.clock.advance(10)
        assert rig.storage.values("scrape_series_added", instance="b:1") == [1, 0]
        assert len(rig.storage.values("up", instance="a:1")) == 2

    with_rig(load_config(text), test, endpoints=endpoints)


def test_removing_a_job_marks_everything_stale_and_stop_marks_nothing() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        assert rig.storage.stale() == set()
        await rig.manager.apply_config(load_config(""))
        assert rig.manager.targets() == []
        names = {model.metric_name(s) for s in rig.storage.stale()}
        assert names == {
            "m",
            "up",
            "scrape_duration_seconds",
            "scrape_samples_scraped",
            "scrape_samples_post_metric_relabeling",
            "scrape_series_added",
        }

    with_rig(job_config(), test, endpoints={"a:1": Endpoint("m 1")})

    async def shutdown(rig: Rig) -> None:
        await rig.clock.advance(10)

    rig = with_rig(job_config(), shutdown, endpoints={"a:1": Endpoint("m 1")})
    assert rig.storage.stale() == set()


def test_changing_a_targets_interval_restarts_its_loop_without_staleness() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        await rig.manager.apply_config(job_config(interval="20s"))
        assert rig.storage.stale() == set()
        await rig.clock.advance(40)
        times = [t for _, t, _ in rig.storage.of("up")]
        assert len(times) == 3 and times[2] - times[1] == 20_000

    with_rig(job_config(), test, endpoints={"a:1": Endpoint("m 1")})


def test_apply_config_before_start_only_stores_it() -> None:
    async def main() -> None:
        manager = ScrapeManager(load_config(""), FakeStorage().appender, parse=fake_parse)
        cfg = job_config()
        await manager.apply_config(cfg)
        assert manager.config is cfg and manager.targets() == []

    run(main())


# --- file discovery -------------------------------------------------------------------------


def _file_job(path: Path, refresh: str = "5m") -> Config:
    return load_config(
        "scrape_configs:\n  - job_name: f\n    scrape_interval: 10s\n"
        f"    file_sd_configs: [{{files: ['{path.parent}/*.json', '{path.parent}/*.yml'],"
        f" refresh_interval: {refresh}}}]\n"
        "    relabel_configs: [{source_labels: [env], regex: dev, action: drop}]\n"
    )


def test_file_sd_targets_follow_the_file(tmp_path: Path) -> None:
    sd = tmp_path / "sd" / "targets.json"
    sd.parent.mkdir()
    sd.write_text('[{"targets": ["a:1"], "labels": {"env": "prod"}}]')
    endpoints = {"a:1": Endpoint("m 1"), "b:1": Endpoint("m 2"), "c:1": Endpoint("m 3")}

    def instances(rig: Rig) -> list[str]:
        return [model.get(t.labels, "instance") for t in rig.manager.targets()]

    async def test(rig: Rig) -> None:
        assert instances(rig) == ["a:1"]
        (target,) = rig.manager.targets()
        assert model.get(target.discovered_labels, "__meta_filepath") == str(sd)
        assert model.get(target.labels, "env") == "prod"
        await rig.clock.advance(10)
        # a rewrite is noticed on the next scrape tick: a goes, b comes, c is dropped
        sd.write_text(
            '[{"targets": ["b:1"], "labels": {"env": "prod"}},'
            ' {"targets": ["c:1"], "labels": {"env": "dev"}}]'
        )
        await rig.clock.advance(10)
        assert instances(rig) == ["b:1"]
        assert {model.get(s, "instance") for s in rig.storage.stale()} == {"a:1"}
        assert len(rig.manager.dropped_targets()) == 1
        await rig.clock.advance(10)
        assert rig.storage.values("m", instance="b:1") == [2]
        # a second file (YAML) adds a target; a broken rewrite keeps the previous ones
        (sd.parent / "more.yml").write_text("- targets: ['c:1']\n")
        sd.write_text("[{broken")
        await rig.manager.refresh_discovery()
        assert instances(rig) == ["b:1", "c:1"]
        # deleting the files removes their targets
        sd.unlink()
        (sd.parent / "more.yml").unlink()
        await rig.manager.refresh_discovery()
        assert instances(rig) == []

    with_rig(_file_job(sd), test, endpoints=endpoints)


def test_file_sd_refresh_interval_alone_picks_up_changes(tmp_path: Path) -> None:
    sd = tmp_path / "t.json"
    sd.write_text("[]")

    async def test(rig: Rig) -> None:
        assert rig.manager.targets() == []
        sd.write_text('[{"targets": ["a:1"]}]')
        await rig.clock.advance(29)
        assert rig.manager.targets() == []
        await rig.clock.advance(2)
        assert len(rig.manager.targets()) == 1

    with_rig(_file_job(sd, refresh="30s"), test, endpoints={"a:1": Endpoint("m 1")})


# --- /api/v1/targets ------------------------------------------------------------------------


def test_targets_json_has_prometheus_shape() -> None:
    cfg = job_config(
        "relabel_configs: [{source_labels: [__address__], regex: 'z:.*', action: drop}]",
        targets="['127.0.0.1:1', 'z:1']",
    )

    async def test(rig: Rig) -> None:
        data = rig.manager.targets_json(hostname="box")
        (active,) = data["activeTargets"]
        assert active["lastScrape"] == "0001-01-01T00:00:00Z"
        assert active["health"] == "unknown"
        await rig.clock.advance(10)
        data = rig.manager.targets_json(hostname="box")
        (active,) = data["activeTargets"]
        assert set(active) == {
            "discoveredLabels",
            "labels",
            "scrapePool",
            "scrapeUrl",
            "globalUrl",
            "lastError",
            "lastScrape",
            "lastScrapeDuration",
            "health",
            "scrapeInterval",
            "scrapeTimeout",
        }
        assert active["labels"] == {"instance": "127.0.0.1:1", "job": "j"}
        assert active["discoveredLabels"]["__address__"] == "127.0.0.1:1"
        assert active["scrapePool"] == "j"
        assert active["scrapeUrl"] == "http://127.0.0.1:1/metrics"
        assert active["globalUrl"] == "http://box:1/metrics"
        assert active["health"] == "up" and active["lastError"] == ""
        assert (
            active["lastScrape"].startswith("2023-11-14T22:13:") and active["lastScrape"][-1] == "Z"
        )
        assert (active["scrapeInterval"], active["scrapeTimeout"]) == ("10s", "5s")
        assert data["droppedTargets"] == [
            {
                "discoveredLabels": {
                    "__address__": "z:1",
                    "__metrics_path__": "/metrics",
                    "__scheme__": "http",
                    "__scrape_interval__": "10s",
                    "__scrape_timeout__": "5s",
                    "job": "j",
                },
                "scrapePool": "j",
            }
        ]
        assert data["droppedTargetCounts"] == {"j": 1}
        active_only = rig.manager.targets_json("active", hostname="box")
        assert active_only["droppedTargets"] == [] and len(active_only["activeTargets"]) == 1
        dropped_only = rig.manager.targets_json("dropped", hostname="box")
        assert dropped_only["activeTargets"] == [] and len(dropped_only["droppedTargets"]) == 1
        assert rig.manager.targets_json(scrape_pool="other")["activeTargets"] == []

    with_rig(cfg, test, endpoints={"127.0.0.1:1": Endpoint("m 1")})


def test_rfc3339_and_global_url() -> None:
    assert rfc3339(None) == "0001-01-01T00:00:00Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1.25) == "1970-01-01T00:00:01.25Z"
    assert global_url("http://localhost:9/m?x=1", "h") == "http://h:9/m?x=1"
    assert global_url("http://[::1]:9/m", "h") == "http://h:9/m"
    assert global_url("http://10.0.0.1:9/m", "h") == "http://10.0.0.1:9/m"
    assert global_url("http://example.com/m", "h") == "http://example.com/m"


def test_counters_have_prometheus_names() -> None:
    async def test(rig: Rig) -> None:
        await rig.clock.advance(10)
        metrics = rig.manager.counters.as_metrics()
        assert metrics["prometheus_target_scrapes_total"] == 1
        assert metrics["prometheus_target_scrapes_exceeded_sample_limit_total"] == 0

    with_rig(job_config(), test, endpoints={"a:1": Endpoint("m 1")})


# --- the production HTTP client -------------------------------------------------------------


def _auth_header(cfg: ScrapeConfig) -> str:
    client = default_http_client(cfg)
    try:
        assert client.auth is not None
        request = next(client.auth.sync_auth_flow(httpx.Request("GET", "http://x/metrics")))
        return request.headers["Authorization"]
    finally:
        run(client.aclose())


def test_default_client_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    basic = job_config(f"basic_auth: {{username: me, password_file: {secret}}}").scrape_configs[0]
    assert _auth_header(basic) == "Basic bWU6czNjcmV0"  # me:s3cret
    bearer = job_config("authorization: {credentials: tok}").scrape_configs[0]
    assert _auth_header(bearer) == "Bearer tok"
    # the file is read per request: a rotated secret is used without a reload
    secret.write_text("n3w")
    assert _auth_header(basic) == "Basic bWU6bjN3"  # me:n3w


def test_default_client_tls_files_must_exist(tmp_path: Path) -> None:
    cfg = job_config(f"tls_config: {{ca_file: {tmp_path}/missing.pem}}").scrape_configs[0]
    with pytest.raises(errors.BadData, match='job "j": tls_config: '):
        default_http_client(cfg)
    insecure = job_config("tls_config: {insecure_skip_verify: true}").scrape_configs[0]
    run(default_http_client(insecure).aclose())
