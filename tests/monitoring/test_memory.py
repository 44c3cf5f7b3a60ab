"""MemoryStorage: the in-memory Querier the engine and API tests run on."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import STALE_NAN, Matcher, MatchType, Querier, is_stale


def _m(kind: str, name: str, value: str) -> Matcher:
    return Matcher(MatchType(kind), name, value)


@pytest.fixture
def storage() -> MemoryStorage:
    s = MemoryStorage()
    for t in range(0, 100_000, 10_000):
        s.add({"__name__": "up", "job": "api", "instance": "a"}, t, 1.0)
        s.add({"__name__": "up", "job": "db", "instance": "b"}, t, 0.0)
        s.add({"__name__": "temp", "job": "api", "zone": "eu"}, t, t / 1000)
    return s


def test_is_a_querier(storage: MemoryStorage) -> None:
    querier: Querier = storage
    assert querier.select([_m("=", "__name__", "up")], 0, 0)


def test_select_by_name_and_time_range_inclusive(storage: MemoryStorage) -> None:
    found = storage.select([_m("=", "__name__", "up")], 20_000, 40_000)
    assert [dict(s.labels)["job"] for s in found] == ["api", "db"]
    assert found[0].timestamps.tolist() == [20_000, 30_000, 40_000]
    assert found[0].values.dtype == np.float64
    assert found[0].timestamps.dtype == np.int64


def test_series_without_samples_in_range_are_left_out(storage: MemoryStorage) -> None:
    assert storage.select([_m("=", "__name__", "up")], 200_000, 300_000) == []


@pytest.mark.parametrize(
    ("matchers", "expected"),
    [
        ([_m("=", "job", "api")], ["temp", "up"]),
        ([_m("!=", "job", "api")], ["up"]),
        ([_m("=~", "__name__", "u.")], ["up", "up"]),
        ([_m("=~", "__name__", "u")], []),  # anchored
        ([_m("!~", "__name__", "up|x")], ["temp"]),
        ([_m("=", "__name__", "up"), _m("=", "zone", "")], ["up", "up"]),
        ([_m("=", "zone", "")], ["up", "up"]),
        ([_m("!=", "zone", "")], ["temp"]),
        ([_m("=~", "zone", ".*"), _m("=", "job", "api")], ["temp", "up"]),
        ([_m("=", "job", "api"), _m("=", "instance", "a")], ["up"]),
        ([_m("=", "job", "nope")], []),
    ],
)
def test_matchers(storage: MemoryStorage, matchers: list[Matcher], expected: list[str]) -> None:
    found = storage.select(matchers, 0, 100_000)
    assert sorted(dict(s.labels)["__name__"] for s in found) == expected


def test_results_are_sorted_by_labels(storage: MemoryStorage) -> None:
    found = storage.select([_m("=~", "job", ".+")], 0, 100_000)
    assert [s.labels for s in found] == sorted(s.labels for s in found)


def test_labels_are_canonical() -> None:
    s = MemoryStorage()
    s.add({"b": "2", "a": "1", "empty": ""}, 1, 1.0)
    s.add((("a", "1"), ("b", "2")), 2, 2.0)
    assert len(s) == 1
    (series,) = s.select([_m("=", "a", "1")], 0, 10)
    assert series.labels == (("a", "1"), ("b", "2"))
    assert series.values.tolist() == [1.0, 2.0]


def test_out_of_order_samples_are_placed_and_duplicates_replaced() -> None:
    s = MemoryStorage()
    for t, v in ((30, 3.0), (10, 1.0), (20, 2.0), (20, 2.5), (40, 4.0)):
        s.add({"x": "y"}, t, v)
    (series,) = s.select([_m("=", "x", "y")], 0, 100)
    assert series.timestamps.tolist() == [10, 20, 30, 40]
    assert series.values.tolist() == [1.0, 2.5, 3.0, 4.0]


def test_special_values_are_kept_bit_for_bit() -> None:
    s = MemoryStorage()
    s.add_many({"x": "y"}, [(1, math.nan), (2, STALE_NAN), (3, math.inf)])
    (series,) = s.select([_m("=", "x", "y")], 0, 10)
    assert math.isnan(series.values[0]) and not is_stale(float(series.values[0]))
    assert is_stale(float(series.values[1]))
    assert series.values[2] == math.inf


def test_label_names_and_values(storage: MemoryStorage) -> None:
    assert storage.label_names([], 0, 100_000) == ["__name__", "instance", "job", "zone"]
    assert storage.label_names([_m("=", "__name__", "up")], 0, 100_000) == [
        "__name__",
        "instance",
        "job",
    ]
    assert storage.label_values("job", [], 0, 100_000) == ["api", "db"]
    assert storage.label_values("job", [_m("=", "zone", "eu")], 0, 100_000) == ["api"]
    assert storage.label_values("job", [], 500_000, 600_000) == []


def test_concurrent_writers_and_readers() -> None:
    s = MemoryStorage()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for t in range(500):
                s.add({"__name__": "c", "w": str(worker)}, t, float(t))
                s.select([_m("=", "__name__", "c")], 0, t)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    found = s.select([_m("=", "__name__", "c")], 0, 1000)
    assert [len(x) for x in found] == [500] * 4


@settings(max_examples=50, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 50), st.floats(allow_nan=False)),
        max_size=60,
    ),
    mint=st.integers(0, 50),
    span=st.integers(0, 50),
)
def test_matches_a_dict_model(samples: list[tuple[str, int, float]], mint: int, span: int) -> None:
    s = MemoryStorage()
    model: dict[str, dict[int, float]] = {}
    for name, t, v in samples:
        s.add({"__name__": name}, t, v)
        model.setdefault(name, {})[t] = v
    maxt = mint + span
    found = {
        dict(x.labels)["__name__"]: x for x in s.select([_m("=~", "__name__", ".+")], mint, maxt)
    }
    for name, points in model.items():
        want = sorted((t, v) for t, v in points.items() if mint <= t <= maxt)
        if not want:
            assert name not in found
            continue
        got = list(zip(found[name].timestamps.tolist(), found[name].values.tolist(), strict=True))
        assert got == want
