"""The WAL: pinned format, replay after torn tails and damage, group commit, checkpoints."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.monitoring import wal
from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import STALE_NAN, Labels

UP: Labels = (("__name__", "up"), ("job", "node"))


def samples(refs: list[int], ts: list[int], vs: list[float]) -> tuple[Any, Any, Any]:
    return np.array(refs, np.int64), np.array(ts, np.int64), np.array(vs, np.float64)


def norm(record: wal.Record) -> tuple[Any, ...]:
    """A record as plain, comparable values (values by bit pattern)."""
    if isinstance(record, wal.SamplesRecord):
        v = record.values.view(np.uint64).tolist()
        return ("samples", record.refs.tolist(), record.timestamps.tolist(), v)
    if isinstance(record, wal.SeriesRecord):
        return ("series", record.entries)
    return ("truncate", record.before)


def open_wal(path: Path, **options: Any) -> tuple[wal.WAL, list[tuple[Any, ...]]]:
    log = wal.WAL(path, **options)
    return log, [norm(r) for r in log.replay()]


def write_some(path: Path, batches: int, **options: Any) -> list[tuple[Any, ...]]:
    log, _ = open_wal(path, **options)
    expected = []
    for i in range(batches):
        series = [(i + 1, (("__name__", f"m{i}"),))]
        batch = samples([i + 1, 1], [1000 * i, 1000 * i + 1], [float(i), STALE_NAN])
        log.commit(series, batch)
        expected += [("series", series), norm(wal.SamplesRecord(*batch))]
    log.close()
    return expected


# -- format ----------------------------------------------------------------------------------


def test_golden_bytes() -> None:
    """CRCs checked against a bit-by-bit CRC-32C (polynomial 0x82F63B78) when pinned."""
    header = wal.segment_header(1)
    assert header.hex() == "534c574c01000000010000008c973564"  # magic, v1, index, CRC
    series = wal.frame(wal.SERIES, wal.encode_series([(7, UP)]))
    assert series.hex() == (
        "27000000"  # payload length 39
        "01000000"  # type 1 (series), reserved
        "ae851604"  # CRC-32C of the 8 bytes above and the payload
        "0700000000000000"  # ref 7
        "0200"  # 2 labels
        "0800"
        "02000000"
        "5f5f6e616d655f5f"
        "7570"  # __name__ = up
        "0300"
        "04000000"
        "6a6f62"
        "6e6f6465"  # job = node
    )
    batch = wal.frame(wal.SAMPLES, wal.encode_samples(*samples([7, 9], [5000, 4000], [1.0, 2.0])))
    assert batch.hex() == (
        "38000000"  # payload length 56
        "02000000"  # type 2 (samples), reserved
        "19b3cfca"  # CRC-32C
        "02000000"  # 2 samples
        "04"
        "04"
        "0000"  # 4-byte ref and time offsets, reserved
        "0700000000000000"  # base ref 7
        "a00f000000000000"  # base time 4000
        "00000000"
        "02000000"  # refs 7+0, 7+2
        "e8030000"
        "00000000"  # times 4000+1000, 4000+0
        "000000000000f03f"
        "0000000000000040"  # 1.0, 2.0
    )
    truncate = wal.frame(wal.TRUNCATE, wal.TRUNCATE_PAYLOAD.pack(-1))
    assert truncate.hex() == "0800000003000000d030485cffffffffffffffff"


def test_wide_offsets_switch_to_eight_bytes() -> None:
    refs, ts, vs = samples([1, 2**40], [-(2**63), 2**63 - 1], [0.0, -0.0])
    payload = wal.encode_samples(refs, ts, vs)
    assert payload[4:6] == b"\x08\x08"
    assert norm(wal.decode_payload(wal.SAMPLES, payload)) == norm(wal.SamplesRecord(refs, ts, vs))


label_text = st.text(min_size=1, max_size=20)
label_sets = st.lists(st.tuples(label_text, st.text(max_size=30)), max_size=6).map(tuple)
floats_by_bits = st.integers(0, 2**64 - 1).map(
    lambda b: float(np.array([b], np.uint64).view(np.float64)[0])
)


@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), label_sets), max_size=20))
def test_series_payload_round_trips(entries: list[tuple[int, Labels]]) -> None:
    record = wal.decode_payload(wal.SERIES, wal.encode_series(entries))
    assert norm(record) == ("series", entries)


@given(
    st.lists(
        st.tuples(st.integers(0, 2**63 - 1), st.integers(-(2**63), 2**63 - 1), floats_by_bits),
        max_size=50,
    )
)
def test_samples_payload_round_trips(rows: list[tuple[int, int, float]]) -> None:
    arrays = samples([r for r, _, _ in rows], [t for _, t, _ in rows], [v for _, _, v in rows])
    record = wal.decode_payload(wal.SAMPLES, wal.encode_samples(*arrays))
    assert norm(record) == norm(wal.SamplesRecord(*arrays))


def test_bad_payloads_are_storage_errors() -> None:
    good = wal.encode_samples(*samples([1], [2], [3.0]))
    for bad in (good[:-1], good[:10], good[:4] + b"\x05" + good[5:]):
        with pytest.raises(StorageError):
            wal.decode_payload(wal.SAMPLES, bad)
    with pytest.raises(StorageError):
        wal.decode_payload(wal.SERIES, wal.encode_series([(1, UP)])[:-1])
    with pytest.raises(StorageError, match="unknown"):
        wal.decode_payload(9, b"")


# -- replay and repair -----------------------------------------------------------------------


def test_replay_returns_what_was_committed(tmp_path: Path) -> None:
    expected = write_some(tmp_path / "wal", 5)
    log, replayed = open_wal(tmp_path / "wal")
    assert replayed == expected
    log.commit([(99, UP)])  # appends after the replayed records
    log.close()
    _, again = open_wal(tmp_path / "wal")
    assert again == expected + [("series", [(99, UP)])]


def test_segments_rotate_at_size_and_records_never_straddle(tmp_path: Path) -> None:
    expected = write_some(tmp_path / "wal", 40, segment_bytes=300)
    names = sorted(os.listdir(tmp_path / "wal"))
    assert len(names) > 5 and names[0] == "00000001"
    assert all(os.path.getsize(tmp_path / "wal" / n) <= 300 for n in names)
    _, replayed = open_wal(tmp_path / "wal", segment_bytes=300)
    assert replayed == expected


def test_torn_tail_is_cut_at_every_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = tmp_path / "source"
    expected = write_some(source, 3)
    segment = source / "00000001"
    size = segment.stat().st_size
    last = wal.scan(segment.read_bytes())[0][-1][0]  # offset of the last record
    for cut in range(last, size):
        case = tmp_path / f"cut{cut}"
        shutil.copytree(source, case)
        os.truncate(case / "00000001", cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="scalelab.monitoring.wal"):
            log, replayed = open_wal(case)
        assert replayed == expected[:-1]
        assert (cut == last) or "a torn tail" in caplog.text
        assert (case / "00000001").stat().st_size == last
        log.commit([(5, UP)])
        log.close()
        assert open_wal(case)[1] == expected[:-1] + [("series", [(5, UP)])]
        shutil.rmtree(case)


@pytest.mark.parametrize("tail", [b"\0" * 100, b"\xff" * 7, os.urandom(64)])
def test_garbage_tail_is_cut(tmp_path: Path, tail: bytes) -> None:
    expected = write_some(tmp_path, 2)
    with open(tmp_path / "00000001", "ab") as f:
        f.write(tail)
    assert open_wal(tmp_path)[1] == expected


def test_damage_in_an_earlier_segment_drops_what_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected = write_some(tmp_path, 40, segment_bytes=300)
    first = wal.scan((tmp_path / "00000002").read_bytes())[0]
    before = len(wal.scan((tmp_path / "00000001").read_bytes())[0])
    with open(tmp_path / "00000002", "r+b") as f:  # flip a bit in its second record
        f.seek(first[1][0] + 14)
        byte = f.read(1)
        f.seek(first[1][0] + 14)
        f.write(bytes([byte[0] ^ 1]))
    with caplog.at_level(logging.ERROR, logger="scalelab.monitoring.wal"):
        _, replayed = open_wal(tmp_path, segment_bytes=300)
    assert replayed == expected[: before + 1]
    assert "dropping" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["00000001", "00000002"]


def test_segment_with_torn_header_is_removed(tmp_path: Path) -> None:
    expected = write_some(tmp_path, 3)
    (tmp_path / "00000002").write_bytes(wal.segment_header(2)[:9])  # crash while creating it
    log, replayed = open_wal(tmp_path)
    assert replayed == expected
    log.close()
    assert not (tmp_path / "00000002").exists()


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    write_some(tmp_path, 40, segment_bytes=300)
    (tmp_path / "00000003").unlink()
    with pytest.raises(StorageError, match="00000003 is missing"):
        open_wal(tmp_path, segment_bytes=300)


def test_log_before_replay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="replay it first"):
        wal.WAL(tmp_path).commit([(1, UP)])


# -- durability --------------------------------------------------------------------------------


def test_concurrent_commits_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = open_wal(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    first = threading.Thread(target=log.commit, args=([(1, UP)],))
    first.start()
    assert entered.wait(10)  # the first commit is inside its fdatasync
    others = [threading.Thread(target=log.commit, args=([(i, UP)],)) for i in range(2, 9)]
    for t in others:
        t.start()
    record = len(wal.frame(wal.SERIES, wal.encode_series([(1, UP)])))
    while log._written < log._token(1, wal.SEGMENT_HEADER.size + 8 * record):
        time.sleep(0.001)  # until every commit has written its record
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert log.syncs == 2  # the first, then one for the seven that queued behind it
    log.close()
    assert len(open_wal(tmp_path)[1]) == 8


def test_a_sync_waits_out_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that reaches sync while another one rotates (the segment's fd briefly closed)
    waits for the rotation; it once answered "WAL is not open" and failed a remote-write."""
    log, _ = open_wal(tmp_path, segment_bytes=wal.SEGMENT_HEADER.size + 64)
    pending = log.log([(1, UP)])  # written, not yet synced
    rotating, release = threading.Event(), threading.Event()
    real = wal._create_segment

    def slow_create(path: Path, index: int) -> int:
        rotating.set()
        assert release.wait(10)
        return real(path, index)

    monkeypatch.setattr(wal, "_create_segment", slow_create)
    big = [(i, (("__name__", f"metric_{i}"),)) for i in range(2, 6)]
    rotator = threading.Thread(target=log.commit, args=(big,))
    rotator.start()
    assert rotating.wait(10)  # inside _rotate, with the old segment's fd closed
    errors: list[BaseException] = []

    def sync_pending() -> None:
        try:
            log.sync(pending)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=sync_pending)
    waiter.start()
    waiter.join(0.2)  # it must be waiting, not failing
    release.set()
    for t in (rotator, waiter):
        t.join(10)
    assert errors == []
    log.close()
    assert len(open_wal(tmp_path)[1]) == 2


def test_a_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log, _ = open_wal(tmp_path)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError, match="Input/output error"):
        log.commit([(1, UP)])
    monkeypatch.undo()
    with pytest.raises(StorageError, match="failed earlier"):
        log.commit([(2, UP)])
    log.close()


# -- truncation and checkpoints ------------------------------------------------------------


def fill(log: wal.WAL, start: int, count: int) -> None:
    """One series per batch (ref = t // 1000), one sample each, t = 1000 * i."""
    for i in range(start, start + count):
        log.commit([(i, (("__name__", f"m{i}"),))], samples([i], [1000 * i], [float(i)]))


def test_truncate_drops_old_segments_behind_a_checkpoint(tmp_path: Path) -> None:
    log, _ = open_wal(tmp_path, segment_bytes=400)
    fill(log, 1, 30)
    first, last = log.segment_range
    assert last - first >= 5
    live = [(i, (("__name__", f"m{i}"),)) for i in range(1, 31, 3)]  # what the head still holds
    dropped = log.truncate(15_000, lambda: live)
    assert dropped >= 2
    cps = [n for n in os.listdir(tmp_path) if n.startswith("checkpoint.")]
    assert len(cps) == 1
    assert int(cps[0].split(".")[1]) == log.segment_range[0] - 1
    log.close()
    log, replayed = open_wal(tmp_path, segment_bytes=400)
    assert replayed[0] == ("truncate", 15_000)
    assert replayed[1] == ("series", live)
    times = [t for r in replayed if r[0] == "samples" for t in r[2]]
    assert min(times) < 15_000 <= max(times)  # kept segments still hold some older samples
    assert max(times) == 30_000 and replayed[-1] == ("truncate", 15_000)
    fill(log, 31, 30)  # and a second checkpoint replaces the first
    log.truncate(50_000, lambda: live[-2:])
    log.close()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("checkpoint.")]) == 1
    _, replayed = open_wal(tmp_path, segment_bytes=400)
    assert replayed[:2] == [("truncate", 50_000), ("series", live[-2:])]


def test_truncate_with_everything_old_rotates_first(tmp_path: Path) -> None:
    log, _ = open_wal(tmp_path)
    fill(log, 1, 5)
    assert log.truncate(10**9, list) == 1
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["00000002", "checkpoint.00000001"]
    _, replayed = open_wal(tmp_path)
    assert replayed == [("truncate", 10**9), ("truncate", 10**9)]


def test_interrupted_checkpoints_are_cleaned_up(tmp_path: Path) -> None:
    log, _ = open_wal(tmp_path, segment_bytes=400)
    fill(log, 1, 30)
    log.truncate(15_000, list)
    log.close()
    kept = sorted(n for n in os.listdir(tmp_path) if not n.startswith("checkpoint"))
    (tmp_path / "checkpoint.00000099.tmp").mkdir()  # crash while writing a checkpoint
    (tmp_path / wal._name(int(kept[0]) - 1)).write_bytes(wal.segment_header(1))  # before delete
    _, replayed = open_wal(tmp_path, segment_bytes=400)
    assert replayed[0] == ("truncate", 15_000)
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("checkpoint")) == kept
    assert not (tmp_path / "checkpoint.00000099.tmp").exists()


def test_dump(tmp_path: Path) -> None:
    log, _ = open_wal(tmp_path)
    log.commit([(1, UP)], samples([1, 1], [10, 20], [0.5, STALE_NAN]))
    log.commit_truncate(5)
    log.close()
    with open(tmp_path / "00000001", "ab") as f:
        f.write(b"\x01\x02\x03")
    lines = list(wal.dump(tmp_path, samples=True))
    assert lines[0].startswith(f"segment {tmp_path / '00000001'} index=1")
    assert lines[1] == "  @16 series length=39 count=1"
    assert lines[2] == '    ref=1 up{job="node"}'
    assert lines[3].startswith("  @67 samples length=56 count=2 refs=1..1 t=10..20")
    assert lines[4:6] == ["    ref=1 t=10 v=0.5", "    ref=1 t=20 v=nan"]
    assert lines[6] == "  @135 truncate length=8 before=5"
    assert lines[7] == "  @155 invalid: record header cut short at offset 155 (3 bytes)"
