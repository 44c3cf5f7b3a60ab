"""PromQL parity, engine mode: every query of the corpus (promql_parity.CASES), at several
instants and over several ranges, answered by a real Prometheus (Debian's 2.42) and by our
engine over a MemoryStorage holding the same samples. test_promql_server_parity.py asks our
real server instead, over HTTP, with the data remote-written into it.

Without the `prometheus` package these tests fail on purpose: the engine's acceptance is this
comparison, and CI installs the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scalelab.monitoring.promql import Engine

from .promql_parity import (
    CASES,
    RANGES,
    Case,
    PrometheusMissing,
    ask_api,
    ask_engine,
    compare,
    generate,
    instant_params,
    memory_storage,
    prometheus_server,
    range_params,
)

Parity = tuple[httpx.Client, str, Engine]


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parity | str]:
    """Prometheus and our engine on the same data; a message instead when Prometheus is not
    installed, so that every parity test fails (not errors, not skips) saying why."""
    ds = generate()
    engine = Engine(memory_storage(ds))
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    try:
        server = prometheus_server(ds, workdir)
        url = server.__enter__()
    except PrometheusMissing as exc:
        yield str(exc)
        return
    try:
        with httpx.Client(timeout=30) as client:
            yield client, url, engine
    finally:
        server.__exit__(None, None, None)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 150
    assert len({c.query for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.query for c in CASES])
def test_parity(case: Case, parity: Parity | str) -> None:
    if isinstance(parity, str):
        pytest.fail(parity)
    client, url, engine = parity
    runs = instant_params() + (range_params(RANGES) if case.range else [])
    problems: list[str] = []
    for params in runs:
        expected = ask_api(client, url, {"query": case.query, **params})
        actual = ask_engine(engine, case.query, params)
        for problem in compare(expected, actual, ordered=case.ordered):
            problems.append(f"{params}: {problem}")
    assert not problems, "\n".join(problems[:20])
