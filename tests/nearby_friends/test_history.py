"""Location history on SQLite and PostgreSQL, and the bounded buffer that batches its writes."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from scalelab.nearby_friends.history import HistoryWriter, LocationHistory
from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.schema import create_schema

T0 = 1_700_000_000.0
_users = itertools.count(1000)


@pytest.fixture
def history(sql_engine: Engine) -> LocationHistory:
    create_schema(sql_engine)
    return LocationHistory(sql_engine)


def fix(user_id: int, t: float, lat: float = 37.5, lng: float = 127.0) -> Location:
    return Location(user_id, lat, lng, t)


def test_append_then_query_a_range(history: LocationHistory) -> None:
    mine = [fix(1, T0 + i, lat=37.0 + i / 100) for i in range(10)]
    theirs = [fix(2, T0 + i + 0.5) for i in range(10)]
    assert history.append([*reversed(mine), *theirs]) == 20
    assert history.query(1, T0, math.inf, 100) == mine  # oldest first, whatever the insert order
    # Half-open: start is in, end is out.
    assert history.query(1, T0 + 2, T0 + 5, 100) == mine[2:5]
    assert history.query(1, T0 + 2.5, T0 + 2.9, 100) == []
    assert history.query(1, T0 + 9, T0 + 9, 100) == []
    assert history.query(1, T0, math.inf, 3) == mine[:3]  # the oldest three
    assert history.query(1, T0, math.inf, 0) == []
    assert history.query(2, T0, T0 + 2, 100) == theirs[:2]
    assert history.query(3, 0, math.inf, 100) == []


def test_append_is_append_only(history: LocationHistory) -> None:
    """Two fixes with the same timestamp (a virtual clock that stood still) are both kept."""
    assert history.append([]) == 0
    history.append([fix(1, T0, lat=1.0)])
    history.append([fix(1, T0, lat=2.0), fix(1, T0 + 1)])
    found = history.query(1, T0, T0 + 0.5, 10)
    assert sorted(f.lat for f in found) == [1.0, 2.0]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(st.integers(0, 50), max_size=30),
    start=st.integers(-5, 55),
    width=st.integers(0, 60),
    limit=st.integers(1, 40),
)
def test_query_matches_a_list_model(
    sql_engine: Engine, data: list[int], start: int, width: int, limit: int
) -> None:
    create_schema(sql_engine)
    history = LocationHistory(sql_engine)
    user_id = next(_users)  # a fresh user per example, in the same database
    fixes = [fix(user_id, T0 + t / 4, lat=i) for i, t in enumerate(data)]
    history.append(fixes)
    lo, hi = T0 + start / 4, T0 + (start + width) / 4
    expected = sorted((f for f in fixes if lo <= f.updated_at < hi), key=lambda f: f.updated_at)
    got = history.query(user_id, lo, hi, limit)
    # Equal timestamps may come back in either order: compare the times.
    assert len(got) == min(limit, len(expected))
    assert [f.updated_at for f in got] == [f.updated_at for f in expected][:limit]
    assert all(f.user_id == user_id and lo <= f.updated_at < hi for f in got)


class FakeHistory(LocationHistory):
    """Records batches instead of writing; can be told to fail."""

    def __init__(self) -> None:
        self.batches: list[list[Location]] = []
        self.fail = False

    def append(self, locations: Sequence[Location]) -> int:
        if self.fail:
            raise ConnectionError("database down")
        self.batches.append(list(locations))
        return len(locations)


def test_writer_batches_in_order() -> None:
    history = FakeHistory()
    writer = HistoryWriter(history, max_pending=100, batch_size=4)
    fixes = [fix(1, T0 + i) for i in range(10)]
    for f in fixes:
        writer.add(f)
    assert writer.pending == 10 and history.batches == []  # add does no I/O
    assert writer.flush() == 10
    assert [len(b) for b in history.batches] == [4, 4, 2]
    assert [f for b in history.batches for f in b] == fixes
    assert (writer.pending, writer.written, writer.dropped) == (0, 10, 0)
    assert writer.flush() == 0
    assert len(history.batches) == 3  # nothing buffered: no empty transaction


def test_writer_drops_the_oldest_when_full() -> None:
    history = FakeHistory()
    writer = HistoryWriter(history, max_pending=3)
    fixes = [fix(1, T0 + i) for i in range(5)]
    for f in fixes:
        writer.add(f)
    assert (writer.pending, writer.dropped) == (3, 2)
    writer.flush()
    assert history.batches == [fixes[2:]]


def test_writer_keeps_a_failed_batch() -> None:
    history = FakeHistory()
    writer = HistoryWriter(history, max_pending=4, batch_size=10)
    first = [fix(1, T0 + i) for i in range(3)]
    for f in first:
        writer.add(f)
    history.fail = True
    with pytest.raises(ConnectionError):
        writer.flush()
    assert (writer.pending, writer.dropped, writer.written) == (3, 0, 0)
    later = [fix(1, T0 + 10 + i) for i in range(2)]
    for f in later:
        writer.add(f)  # over the bound: the oldest goes
    assert (writer.pending, writer.dropped) == (4, 1)
    history.fail = False
    assert writer.flush() == 4
    assert history.batches == [[*first[1:], *later]]


def test_writer_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        HistoryWriter(FakeHistory(), max_pending=0)
    with pytest.raises(ValueError):
        HistoryWriter(FakeHistory(), batch_size=0)


def test_writer_flushes_to_the_database(history: LocationHistory) -> None:
    writer = HistoryWriter(history, batch_size=3)
    fixes = [fix(7, T0 + i) for i in range(8)]
    for f in fixes:
        writer.add(f)
    assert writer.flush() == 8
    assert history.query(7, T0, math.inf, 100) == fixes
