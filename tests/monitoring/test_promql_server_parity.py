"""PromQL parity, server mode: the corpus of test_promql_parity, asked over HTTP of a real
Prometheus (Debian's 2.42) and of our real server, with the same data set remote-written into
ours (`POST /api/v1/write`, time-ordered batches). Ours runs in two layouts: everything in the
head, and the bulk compacted into persisted blocks with the stale tail in the head.

Range queries go through our results cache: in the head layout each range is asked twice (the
second answer is the cache's), then over ranges that overlap the first ones on the same step
grid (answered partly from the cache, partly computed); every answer must match Prometheus's.

Without the `prometheus` package these tests fail on purpose, saying why.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .promql_parity import (
    CASES,
    LAYOUTS,
    RANGES,
    SLID_RANGES,
    Case,
    Outcome,
    PrometheusMissing,
    ask_api,
    compare,
    generate,
    instant_params,
    our_server,
    prometheus_server,
    range_params,
    seconds,
)

Question = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Prometheus:
    """Prometheus on the parity data. Its answers are asked on a few threads while ours
    answers (it is another process: the two overlap), and kept, as both layouts ask the same
    questions."""

    client: httpx.Client
    url: str
    pool: ThreadPoolExecutor
    answers: dict[Question, Future[Outcome]] = field(default_factory=dict)

    def ask(self, query: str, params: dict[str, str]) -> Future[Outcome]:
        key = (query, tuple(sorted(params.items())))
        if key not in self.answers:
            asked = {"query": query, **params}
            self.answers[key] = self.pool.submit(ask_api, self.client, self.url, asked)
        return self.answers[key]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus | str]:
    """Prometheus on the parity data; a message instead when it is not installed, so that
    every test fails (not errors, not skips) saying why."""
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    try:
        server = prometheus_server(generate(), workdir)
        url = server.__enter__()
    except PrometheusMissing as exc:
        yield str(exc)
        return
    try:
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(4) as pool:
            yield Prometheus(client, url, pool)
    finally:
        server.__exit__(None, None, None)


@dataclass(frozen=True)
class Ours:
    layout: str
    client: httpx.Client
    url: str


@pytest.fixture(scope="module", params=LAYOUTS)
def ours(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ours]:
    """Our real server with the parity data remote-written into it, in one layout."""
    layout: str = request.param
    workdir = tmp_path_factory.mktemp(f"ours-{layout}")
    with our_server(generate(), workdir, layout) as url, httpx.Client(timeout=60) as client:
        yield Ours(layout, client, url)


@pytest.mark.parametrize("case", CASES, ids=[c.query for c in CASES])
def test_server_parity(case: Case, prometheus: Prometheus | str, ours: Ours) -> None:
    if isinstance(prometheus, str):
        pytest.fail(prometheus)
    runs = instant_params()
    if case.range:
        runs += range_params(RANGES)
        if ours.layout == "head":  # the cache does not depend on the layout: checked once
            runs += range_params(RANGES) + range_params(SLID_RANGES)  # hit, partial hit
    expected = [prometheus.ask(case.query, params) for params in runs]
    problems: list[str] = []
    for n, params in enumerate(runs):
        actual = ask_api(ours.client, ours.url, {"query": case.query, **params})
        for problem in compare(expected[n].result(), actual, ordered=case.ordered):
            problems.append(f"run {n} {params}: {problem}")
    assert not problems, "\n".join(problems[:20])


def _cache_steps(ours: Ours) -> tuple[int, int]:
    """(hits, misses) of our results cache, from our /metrics page."""
    text = ours.client.get(f"{ours.url}/metrics").text
    found = dict(
        re.findall(
            r'^scalelab_monitoring_query_cache_steps_total\{result="(\w+)"\} (\S+)', text, re.M
        )
    )
    return round(float(found["hit"])), round(float(found["miss"]))


def test_results_cache_answers_repeated_and_slid_ranges(
    prometheus: Prometheus | str, ours: Ours
) -> None:
    """The cache really answers: a repeated range is all hits, a slid one partly hits; both
    still equal Prometheus's answers."""
    if isinstance(prometheus, str):
        pytest.fail(prometheus)
    # a query of its own (the corpus's queries may have filled the cache already)
    query = "sum by (job) (rate(http_requests_total[5m])) + on() group_left vector(0.5)"
    start, end, step = RANGES[0]
    first = {"start": seconds(start), "end": seconds(end), "step": seconds(step)}
    slid = {
        "start": seconds(start + 7 * step),
        "end": seconds(end + 7 * step),
        "step": first["step"],
    }
    steps = (end - start) // step + 1
    problems: list[str] = []
    for params, hits_wanted in ((first, 0), (first, steps), (slid, steps - 7)):
        hits, misses = _cache_steps(ours)
        actual = ask_api(ours.client, ours.url, {"query": query, **params})
        problems += compare(prometheus.ask(query, params).result(), actual)
        hits_after, misses_after = _cache_steps(ours)
        assert (hits_after - hits, misses_after - misses) == (hits_wanted, steps - hits_wanted)
    assert not problems, "\n".join(problems[:20])
