"""tsdb.py: the head and blocks behind one Querier, compaction, downsampling, retention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalelab.monitoring.errors import OutOfOrderSample, StorageError
from scalelab.monitoring.model import Matcher
from scalelab.monitoring.tsdb import TSDB

HOUR = 3_600_000
MINUTE = 60_000
DAY = 24 * HOUR
TEMP = (("__name__", "temp"), ("room", "lab"))
REQS = (("__name__", "reqs_total"), ("room", "lab"))
NAME = [Matcher.equal("__name__", "temp")]


def fill(db: TSDB, start: int, end: int, step: int = MINUTE) -> None:
    app = db.appender()
    for t in range(start, end, step):
        app.append(TEMP, t, float(t // MINUTE % 10))
        app.append(REQS, t, float(t // MINUTE))
    app.commit()


def test_compaction_persists_aligned_blocks_and_queries_see_one_series(tmp_path: Path) -> None:
    db = TSDB(tmp_path, block_range_ms=2 * HOUR)
    fill(db, 0, 5 * HOUR)
    before = db.select(NAME, 0, 5 * HOUR)
    written = db.maintain()
    raw = sorted((m.min_time, m.max_time) for m in written if m.resolution_ms == 0)
    assert raw == [(0, 2 * HOUR - 1)]  # the head spanned 5h > 1.5 x 2h: one range persisted
    assert {m.resolution_ms for m in written} == {0, MINUTE, HOUR}
    assert db.head.mint == 2 * HOUR
    after = db.select(NAME, 0, 5 * HOUR)
    assert len(after) == 1
    assert np.array_equal(after[0].timestamps, before[0].timestamps)
    assert np.array_equal(after[0].values, before[0].values)
    with pytest.raises(OutOfOrderSample):  # the persisted range is closed to writes
        app = db.appender()
        app.append(TEMP, HOUR, 1.0)
        app.commit()
    db.close()

    reopened = TSDB(tmp_path, block_range_ms=2 * HOUR)
    again = reopened.select(NAME, 0, 5 * HOUR)
    assert np.array_equal(again[0].values, before[0].values)
    assert reopened.label_values("room", [], 0, 5 * HOUR) == ["lab"]
    assert reopened.label_names(NAME, 0, HOUR) == ["__name__", "room"]
    reopened.close()


def test_retention_falls_back_to_downsampled_averages(tmp_path: Path) -> None:
    db = TSDB(tmp_path, block_range_ms=2 * HOUR, retention_ms=(3 * HOUR, 30 * DAY, 365 * DAY))
    fill(db, 0, 8 * HOUR)
    db.maintain()  # persists [0, 2h), [2h, 4h), [4h, 6h), with 1m and 1h copies of each
    db.maintain(now_ms=8 * HOUR)  # raw retention 3h: raw blocks ending before 5h go
    kept = sorted((b.meta.resolution_ms, b.meta.min_time) for b in db.blocks)
    assert [t for r, t in kept if r == 0] == [4 * HOUR]
    assert [t for r, t in kept if r == MINUTE] == [0, 2 * HOUR, 4 * HOUR]
    old = db.select(NAME, 0, HOUR - 1)[0]  # served by the 1m block: one average per window
    assert len(old) == 60
    assert old.timestamps[0] == MINUTE - 1  # stamped at each window's last millisecond
    assert np.all(old.values == (np.arange(60) % 10))  # one sample per minute: average = value
    recent = db.select(NAME, 4 * HOUR, 5 * HOUR - 1)[0]  # raw data where it still exists
    assert recent.timestamps[0] == 4 * HOUR and len(recent) == 60
    spanning = db.select(NAME, 0, 8 * HOUR)[0]  # 1m averages up to 4h, then raw and head
    assert len(spanning) == 8 * 60 and np.all(np.diff(spanning.timestamps) > 0)
    db.close()


def test_a_second_process_cannot_open_the_same_directory(tmp_path: Path) -> None:
    db = TSDB(tmp_path)
    with pytest.raises(StorageError, match="in use"):
        TSDB(tmp_path)
    db.close()
    TSDB(tmp_path).close()
