"""The partition log: offsets, segments, sparse indexes, recovery of a torn tail, retention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatchBuilder

from scalelab.message_queue import batch as b
from scalelab.message_queue.partition import LogConfig, OffsetOutOfRange, Partition
from scalelab.message_queue.producer_state import ProducerStateError
from scalelab.message_queue.segment import INDEX_ENTRY


def batch(count: int, fill: bytes = b"r", *, ts: int = 1000, size: int = 40) -> bytes:
    """A v2 batch of `count` records; the broker never decodes records, so their bytes are
    opaque filler here."""
    return b.make_batch(fill * size * count, count, base_timestamp=ts, max_timestamp=ts + count)


def batches_in(data: bytes) -> list[tuple[int, int]]:
    """(base offset, record count) of every batch in a fetch response's records."""
    return [(h.base_offset, h.record_count) for h, _ in b.split(data)]


def test_offsets_are_assigned_and_reads_return_whole_batches(tmp_path: Path) -> None:
    p = Partition(tmp_path)
    assert p.append(batch(3)).base_offset == 0
    got = p.append(batch(2) + batch(4))
    assert (got.base_offset, got.last_offset) == (3, 8)
    assert p.log_end_offset == 9
    assert batches_in(p.read(0, 1 << 20)) == [(0, 3), (3, 2), (5, 4)]
    assert batches_in(p.read(4, 1 << 20)) == [(3, 2), (5, 4)]  # offset 4 is inside a batch
    assert batches_in(p.read(0, 1)) == [(0, 3)]  # at least one batch, even over max_bytes
    assert p.read(9, 1 << 20) == b""  # at the end: nothing yet
    with pytest.raises(OffsetOutOfRange):
        p.read(10, 100)
    p.close()


def test_an_invalid_batch_appends_nothing(tmp_path: Path) -> None:
    p = Partition(tmp_path)
    bad = bytearray(batch(1))
    bad[-1] ^= 1
    with pytest.raises(b.BatchError):
        p.append(batch(2) + bytes(bad))
    assert p.log_end_offset == 0
    p.close()


def test_segments_roll_by_size_and_survive_reopen(tmp_path: Path) -> None:
    p = Partition(tmp_path, LogConfig(segment_bytes=1000))
    for i in range(40):
        p.append(batch(1 + i % 3, bytes([65 + i % 26])))
    end, everything = p.log_end_offset, p.read(0, 1 << 30)
    assert len(list(tmp_path.glob("*.log"))) > 5
    p.close()
    again = Partition(tmp_path, LogConfig(segment_bytes=1000))
    assert again.log_end_offset == end
    assert again.read(0, 1 << 30) == everything
    for offset in range(end):
        first = batches_in(again.read(offset, 1))[0]
        assert first[0] <= offset < first[0] + first[1]
    again.close()


def test_torn_tail_is_cut_and_stale_index_entries_dropped(tmp_path: Path) -> None:
    p = Partition(tmp_path, LogConfig(segment_bytes=1 << 20))
    for _ in range(300):  # enough bytes for several index entries
        p.append(batch(2, size=30))
    end = p.log_end_offset
    seg = p.active
    log_path, index_path, size = seg.log_path, seg.index_path, seg.size
    p.close()
    entries = index_path.stat().st_size // INDEX_ENTRY.size
    assert entries > 3
    cut = size - 50  # inside the last batch
    os.truncate(log_path, cut)
    with open(index_path, "ab") as f:  # an index entry written before a log write was lost
        f.write(INDEX_ENTRY.pack(10_000, size + 5))
    again = Partition(tmp_path)
    assert again.log_end_offset == end - 2
    assert log_path.stat().st_size < cut
    assert index_path.stat().st_size // INDEX_ENTRY.size <= entries
    assert again.append(batch(1)).base_offset == end - 2
    assert batches_in(again.read(end - 4, 1 << 20)) == [(end - 4, 2), (end - 2, 1)]
    again.close()


def test_garbage_after_the_last_batch_is_truncated(tmp_path: Path) -> None:
    p = Partition(tmp_path)
    p.append(batch(5))
    path = p.active.log_path
    p.close()
    with open(path, "ab") as f:
        f.write(os.urandom(200))
    again = Partition(tmp_path)
    assert again.log_end_offset == 5 and batches_in(again.read(0, 1 << 20)) == [(0, 5)]
    again.close()


def timed_batch(timestamps: list[int]) -> bytes:
    """Real records (kafka-python's builder): a time lookup decodes the batch it lands in."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 20)
    for i, ts in enumerate(timestamps):
        builder.append(i, timestamp=ts, key=None, value=b"v", headers=[])
    return bytes(builder.build())


def test_offset_for_time_finds_the_record(tmp_path: Path) -> None:
    p = Partition(tmp_path, LogConfig(segment_bytes=600))
    for i in range(30):
        p.append(timed_batch([1000 * i, 1000 * i + 500]))
    assert p.offset_for_time(0) == (0, 0)
    assert p.offset_for_time(5000) == (10, 5000)  # batch 5: offsets 10-11
    assert p.offset_for_time(5001) == (11, 5500)  # inside the batch
    assert p.offset_for_time(5501) == (12, 6000)
    assert p.offset_for_time(29_500) == (59, 29_500)
    assert p.offset_for_time(10**9) is None
    p.close()


def test_retention_deletes_whole_old_segments(tmp_path: Path) -> None:
    now = [100_000.0]
    cfg = LogConfig(segment_bytes=500, retention_ms=60_000, retention_bytes=-1)
    p = Partition(tmp_path, cfg, clock=lambda: now[0])
    for i in range(20):
        p.append(batch(1, ts=int(now[0] * 1000) - 120_000 + i))  # two minutes old
    for _ in range(5):
        p.append(batch(1, ts=int(now[0] * 1000)))
    before = len(list(tmp_path.glob("*.log")))
    oldest = p._segments[0]  # as a read that listed the segments before retention holds it
    assert p.enforce_retention() > 0
    assert batches_in(oldest.read(0, 1 << 20))[0][0] == 0  # still readable, files unlinked
    assert len(list(tmp_path.glob("*.log"))) < before
    assert p.log_start_offset > 0
    with pytest.raises(OffsetOutOfRange):
        p.read(0, 100)
    assert batches_in(p.read(p.log_start_offset, 1 << 20))[0][0] == p.log_start_offset
    p.close()


def test_retention_by_size_keeps_at_least_the_limit(tmp_path: Path) -> None:
    p = Partition(tmp_path, LogConfig(segment_bytes=400, retention_bytes=1500, retention_ms=-1))
    for _ in range(40):
        p.append(batch(1))
    p.enforce_retention()
    assert 1500 <= p.size_bytes <= 1500 + 400 + 200
    p.close()


@settings(max_examples=40)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=40), st.integers(200, 2000))
def test_any_appends_read_back_after_reopen(
    tmp_path_factory: pytest.TempPathFactory, counts: list[int], segment_bytes: int
) -> None:
    d = tmp_path_factory.mktemp("p")
    p = Partition(d, LogConfig(segment_bytes=segment_bytes))
    expected = []
    for i, n in enumerate(counts):
        expected.append((p.append(batch(n, bytes([i % 256]))).base_offset, n))
    p.close()
    again = Partition(d, LogConfig(segment_bytes=segment_bytes))
    assert batches_in(again.read(0, 1 << 30)) == expected
    assert again.log_end_offset == sum(counts)
    again.close()


def test_idempotent_retry_is_not_written_twice_even_after_reopen(tmp_path: Path) -> None:
    def produced(seq: int, count: int = 3) -> bytes:
        return b.make_batch(b"x" * count, count, producer_id=42, producer_epoch=0,
                            base_sequence=seq)  # fmt: skip

    p = Partition(tmp_path)
    p.append(batch(2))  # someone else's records first
    first = p.append(produced(0))
    assert (first.base_offset, first.duplicate) == (2, False)
    retry = p.append(produced(0))  # the response was lost; the producer sends it again
    assert (retry.base_offset, retry.last_offset, retry.duplicate) == (2, 4, True)
    assert p.log_end_offset == 5
    p.close()
    again = Partition(tmp_path)  # the state comes back from the batch headers
    assert again.append(produced(0)).duplicate
    with pytest.raises(ProducerStateError):
        again.append(produced(7))  # a gap
    assert again.append(produced(3)).base_offset == 5
    assert batches_in(again.read(0, 1 << 20)) == [(0, 2), (2, 3), (5, 3)]
    again.close()
