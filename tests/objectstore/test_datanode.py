"""The data node: durability, checksums, range reads, rollover, compaction, crash recovery."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from scalelab.objectstore import datafile as df
from scalelab.objectstore.datanode import DataNode, StoredObject
from scalelab.objectstore.errors import CorruptObject, DataStoreError, ObjectMissing

CHUNK, FILE = 16, 256  # small records and files, so every test crosses both boundaries
HDR = df.RECORD_HEADER_SIZE


def live_bytes(sizes: Iterator[int] | list[int]) -> int:
    """What objects of these sizes occupy: full chunks, a tail, or one empty record."""
    return sum(max(1, math.ceil(n / CHUNK)) * HDR + n for n in sizes)


def scratch_dir() -> Path:
    """A fresh directory, in RAM when possible: fsync there is free, so tests stay fast."""
    shm = Path("/dev/shm")
    use_shm = shm.is_dir() and os.access(shm, os.W_OK)
    return Path(tempfile.mkdtemp(prefix="datanode-test-", dir=shm if use_shm else None))


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = scratch_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_node(scratch: Path) -> Iterator[Callable[..., DataNode]]:
    nodes: list[DataNode] = []

    def open_(directory: Path | None = None, **kw: int) -> DataNode:
        kw = {"chunk_bytes": CHUNK, "data_file_bytes": FILE, **kw}
        nodes.append(DataNode(directory or scratch / "node", **kw))
        return nodes[-1]

    yield open_
    for node in nodes:
        node.close()


@pytest.fixture
def node(open_node: Callable[..., DataNode]) -> DataNode:
    return open_node()


def read_all(node: DataNode, object_id: str, start: int = 0, end: int | None = None) -> bytes:
    pieces = list(node.read(object_id, start, end))
    assert all(0 < len(p) <= node.chunk_bytes for p in pieces)
    return b"".join(pieces)


def records_of(node: DataNode, object_id: str) -> list[tuple[Path, int, df.RecordHeader]]:
    """(file, offset, header) of each record of an object, in seq order, from the files."""
    found = []
    for path in sorted(node.directory.glob("*.dat")):
        fd = os.open(path, os.O_RDONLY)
        try:
            found += [(path, o, h) for o, h in df.scan(fd) if h.object_id.hex() == object_id]
        finally:
            os.close(fd)
    return sorted(found, key=lambda r: r[2].seq)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x20]))


def test_put_read_sizes_ids(node: DataNode) -> None:
    before = time.time()
    blobs = [b"", b"a", os.urandom(CHUNK - 1), os.urandom(CHUNK), os.urandom(CHUNK + 1),
             os.urandom(7 * CHUNK + 3)]  # fmt: skip
    stored = [node.put(b) for b in blobs]
    for obj, blob in zip(stored, blobs, strict=True):
        assert obj == StoredObject(obj.object_id, len(blob)) and len(obj.object_id) == 32
        assert read_all(node, obj.object_id) == blob
        assert node.size(obj.object_id) == len(blob) and node.exists(obj.object_id)
    assert list(node.read(stored[0].object_id)) == []
    ids = dict(node.ids())
    assert set(ids) == {o.object_id for o in stored}
    assert all(before - 1 <= t <= time.time() + 1 for t in ids.values())
    usage = node.usage()
    assert usage["live_bytes"] == live_bytes([len(b) for b in blobs])
    assert usage["garbage_bytes"] == 0
    assert usage["bytes_on_disk"] == sum(p.stat().st_size for p in node.directory.glob("*.dat"))
    assert node.fsck()["ok"]


def test_missing_and_malformed_ids(node: DataNode) -> None:
    unknown = "0" * 32
    with pytest.raises(ObjectMissing):
        node.read(unknown)  # raised at the call, before any byte is streamed
    with pytest.raises(ObjectMissing):
        node.size(unknown)
    assert not node.exists(unknown)
    node.delete(unknown)  # idempotent
    with pytest.raises(ValueError):
        node.read("not-an-id")
    obj = node.put(b"x")
    for bad in ((-1, 1), (2, 1)):
        with pytest.raises(ValueError):
            node.read(obj.object_id, *bad)


def test_writer_streams_fixed_size_records(node: DataNode) -> None:
    data = os.urandom(5 * CHUNK + 7)
    with node.writer() as w:
        for piece in (data[:1], data[1:6], data[6:50], data[50:51], data[51:]):
            w.write(piece)
            assert w._buffered < CHUNK  # bounded: everything else is already in a file
        assert w.size == len(data)
        obj = w.commit()
    assert obj.size == len(data) and read_all(node, obj.object_id) == data
    lengths = [h.length for _, _, h in records_of(node, obj.object_id)]
    assert lengths == [CHUNK] * 5 + [7]
    with pytest.raises(DataStoreError):
        w.write(b"more")


def test_large_object_in_bounded_memory(open_node: Callable[..., DataNode]) -> None:
    node = open_node(chunk_bytes=64 << 10, data_file_bytes=1 << 20)
    piece = os.urandom(50_000)
    tracemalloc.start()
    try:
        with node.writer() as w:
            for _ in range(200):  # 10 MB through a 64 KiB buffer
                w.write(piece)
            obj = w.commit()
        crc = 0
        for chunk in node.read(obj.object_id):
            crc = df.crc32c(chunk, crc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert obj.size == 10_000_000 and peak < 2_000_000
    assert crc == df.crc32c(piece * 200)


def test_range_reads_across_record_boundaries(node: DataNode) -> None:
    data = os.urandom(6 * CHUNK + 5)
    obj = node.put(data)
    for start in range(len(data) + 3):
        for end in (start, start + 1, start + CHUNK - 1, start + CHUNK + 1, len(data), None):
            if end is not None and end < start:
                continue
            expected = data[start:end]
            assert read_all(node, obj.object_id, start, end) == expected, (start, end)


def test_range_read_reads_only_overlapping_records(node: DataNode) -> None:
    data = os.urandom(6 * CHUNK)
    obj = node.put(data)
    path, offset, header = records_of(node, obj.object_id)[3]
    flip(path, offset + HDR + 2)  # corrupt bytes [3*CHUNK, 4*CHUNK)
    assert read_all(node, obj.object_id, 0, 3 * CHUNK) == data[: 3 * CHUNK]
    assert read_all(node, obj.object_id, 4 * CHUNK) == data[4 * CHUNK :]
    assert node.corruptions == 0
    with pytest.raises(CorruptObject, match="data checksum"):
        read_all(node, obj.object_id, 3 * CHUNK + 5, 3 * CHUNK + 6)
    assert node.corruptions == 1


@pytest.mark.parametrize("where", ["data", "header", "seq"])
def test_corruption_is_detected_counted_and_reported(node: DataNode, where: str) -> None:
    keep = node.put(b"k" * 40)
    obj = node.put(os.urandom(40))
    path, offset, _ = records_of(node, obj.object_id)[1]
    flip(path, offset + {"data": HDR + 9, "header": 1, "seq": 24}[where])
    with pytest.raises(CorruptObject) as exc:
        read_all(node, obj.object_id)
    assert exc.value.object_id == obj.object_id and node.corruptions == 1
    assert read_all(node, keep.object_id) == b"k" * 40
    report = node.fsck()
    assert not report["ok"] and report["problems"]


def test_rollover_at_threshold(node: DataNode, open_node: Callable[..., DataNode]) -> None:
    blobs = {node.put(os.urandom(n)).object_id: n for n in range(0, 300, 7)}
    usage = node.usage()
    files = usage["per_file"]
    assert [f["state"] for f in files] == ["readonly"] * (len(files) - 1) + ["active"]
    assert len(files) > 5 and files[-1]["size"] < FILE
    for f in files[:-1]:
        assert f["size"] >= FILE  # turned read-only on reaching the threshold...
        assert f["size"] - HDR - CHUNK < FILE  # ...by the record that crossed it
    assert sorted(int(p.stem) for p in node.directory.glob("*.dat")) == [
        f["file_id"] for f in files
    ]
    assert usage["live_bytes"] == live_bytes(list(blobs.values()))
    node.close()
    again = open_node()
    assert again.usage()["per_file"] == files
    assert {i: again.size(i) for i in blobs} == blobs


def test_delete_and_abort_become_garbage(node: DataNode) -> None:
    a, b = node.put(b"a" * 20), node.put(b"b" * 20)
    node.delete(a.object_id)
    node.delete(a.object_id)
    assert node.delete_many([a.object_id, b.object_id, "f" * 32]) == 1
    with node.writer() as w:
        w.write(b"c" * (2 * CHUNK + 1))  # two records in the file, then abort
    with pytest.raises(RuntimeError), node.writer() as w2:
        w2.write(b"d" * (CHUNK + 1))  # one record written, the last byte held back
        raise RuntimeError("client went away")  # leaving the block aborts
    usage = node.usage()
    assert usage["live_bytes"] == 0
    assert usage["garbage_bytes"] == 2 * live_bytes([20]) + 3 * (HDR + CHUNK)
    assert not node.exists(w.object_id) and list(node.ids()) == []
    report = node.fsck()
    assert report["ok"] and report["unreferenced_records"] == 7


def test_compaction_reclaims_space_and_keeps_live_objects(
    node: DataNode, open_node: Callable[..., DataNode]
) -> None:
    objects = {node.put(os.urandom(random.randrange(0, 70))).object_id: b"" for _ in range(80)}
    for oid in objects:
        objects[oid] = read_all(node, oid)
    doomed = list(objects)[::3] + list(objects)[1::3]
    for oid in doomed:
        node.delete(oid)
        del objects[oid]
    before = node.usage()
    report = node.compact()
    after = node.usage()
    assert report["files_compacted"] > 0 and not report["problems"]
    assert after["bytes_on_disk"] < before["bytes_on_disk"] - report["bytes_reclaimed"] // 2
    assert after["garbage_bytes"] < before["garbage_bytes"]
    assert after["live_bytes"] == before["live_bytes"]
    assert after["files"] == len(list(node.directory.glob("*.dat")))
    for oid, data in objects.items():
        assert read_all(node, oid) == data
    assert all(not node.exists(oid) for oid in doomed)
    assert node.fsck()["ok"]
    assert node.compact(0.0)["files_compacted"] >= 0  # again, with nothing much left to do
    node.close()
    again = open_node()
    assert {oid: read_all(again, oid) for oid in objects} == objects
    assert again.fsck()["ok"]


def test_compaction_waits_for_uncommitted_writers(node: DataNode) -> None:
    w = node.writer()
    w.write(b"w" * (CHUNK + 1))  # a record in file 1, not yet committed
    filler = [node.put(os.urandom(60)) for _ in range(5)]  # file 1 turns read-only
    for obj in filler:
        node.delete(obj.object_id)
    readonly = [f["file_id"] for f in node.usage()["per_file"] if f["state"] == "readonly"]
    assert 1 in readonly and len(readonly) > 1
    assert node.compact(0.0)["files_compacted"] == len(readonly) - 1
    assert 1 in [f["file_id"] for f in node.usage()["per_file"]]  # pinned: left alone
    obj = w.commit()
    assert node.compact(0.5)["files_compacted"] >= 1
    assert 1 not in [f["file_id"] for f in node.usage()["per_file"]]
    assert read_all(node, obj.object_id) == b"w" * (CHUNK + 1) and node.fsck()["ok"]


def test_reader_with_stale_location_retries(node: DataNode) -> None:
    data = os.urandom(4 * CHUNK)
    obj = node.put(data)
    doomed = [node.put(os.urandom(60)) for _ in range(4)]
    stream = node.read(obj.object_id)  # locations looked up now...
    assert next(stream) == data[:CHUNK]
    for d in doomed:
        node.delete(d.object_id)
    assert node.compact(0.0)["records_moved"] >= 4  # ...then the records move
    assert not (node.directory / "00000001.dat").exists()
    assert b"".join(stream) == data[CHUNK:]  # found again at the new location
    assert node.corruptions == 0


def test_compaction_concurrent_with_readers_and_writers(node: DataNode) -> None:
    keep = {node.put(bytes([i]) * (i % 50)).object_id: bytes([i]) * (i % 50) for i in range(60)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    def reader() -> None:
        for oid, data in random.sample(list(keep.items()), 10):
            assert read_all(node, oid) == data

    def churn() -> None:
        obj = node.put(os.urandom(random.randrange(80)))
        node.delete(obj.object_id)

    threads = [threading.Thread(target=guarded(f)) for f in [reader] * 4 + [churn] * 3]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 0.6
    compacted = 0
    while time.monotonic() < deadline and not stop.is_set():
        compacted += node.compact(0.3)["files_compacted"]
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    assert compacted > 0 and node.corruptions == 0
    assert {oid: read_all(node, oid) for oid in keep} == keep
    report = node.fsck()
    assert report["ok"], report["problems"]


def test_sixteen_writers_then_reopen(node: DataNode, open_node: Callable[..., DataNode]) -> None:
    written: dict[str, bytes] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for i in range(15):
                data = rng.randbytes(rng.randrange(0, 5 * CHUNK))
                with node.writer() as w:
                    for at in range(0, len(data), 11):
                        w.write(data[at : at + 11])
                    obj = w.commit() if i % 2 else w.commit_future().result()
                with lock:
                    written[obj.object_id] = data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(written) == 16 * 15
    node.close()
    again = open_node()
    assert {oid: read_all(again, oid) for oid in written} == written
    report = again.fsck()
    assert report["ok"] and report["objects"] == len(written)
    assert again.usage()["live_bytes"] == live_bytes([len(d) for d in written.values()])


def test_commit_future_from_asyncio_shares_fsyncs(
    node: DataNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = os.fdatasync

    def counting_fdatasync(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting_fdatasync)

    async def put(i: int) -> StoredObject:
        w = node.writer()
        w.write(bytes([i]) * 5)
        return await asyncio.wrap_future(w.commit_future())

    async def main() -> list[StoredObject]:
        return await asyncio.gather(*(put(i) for i in range(64)))

    stored = asyncio.run(main())
    assert [read_all(node, o.object_id) for o in stored] == [bytes([i]) * 5 for i in range(64)]
    assert len(syncs) < 64  # group commit: many commits per fdatasync


def test_commit_cancelled_before_it_runs_is_an_abort(node: DataNode) -> None:
    with node._db_lock:  # hold the group-commit thread inside a first batch
        first = node.writer()
        first.write(b"first")
        f1 = first.commit_future()
        while not f1.running():
            time.sleep(0.001)
        second = node.writer()
        second.write(b"second" * 5)
        f2 = second.commit_future()
        assert f2.cancel()  # still queued: cancelling it aborts it
    assert f1.result().size == 5
    assert not node.exists(second.object_id) and node.exists(first.object_id)
    assert all(f.pins == 0 for f in node._files._files.values())
    assert node.usage()["garbage_bytes"] == 2 * HDR + 30  # its two records


def torn_tail_setup(node: DataNode) -> tuple[dict[str, bytes], Path, int]:
    """Two committed objects, then an uncommitted writer whose second append is torn."""
    objects = {node.put(x).object_id: x for x in (b"first object", b"second object!" * 2)}
    w = node.writer()
    w.write(b"u" * (3 * CHUNK))  # two complete records (the third held back), uncommitted
    path, offset, header = records_of(node, w.object_id)[-1]
    node.close()  # dies here: the lookup table never hears of w
    return objects, path, offset


def test_torn_tail_truncated_at_every_offset(
    scratch: Path, open_node: Callable[..., DataNode], caplog: pytest.LogCaptureFixture
) -> None:
    objects, path, last = torn_tail_setup(open_node(scratch / "orig", data_file_bytes=4096))
    end = path.stat().st_size
    caplog.set_level(logging.WARNING)
    for cut in range(last, end):
        copy = scratch / f"cut{cut}"
        shutil.copytree(scratch / "orig", copy)
        os.truncate(copy / path.name, cut)
        caplog.clear()
        node = open_node(copy, data_file_bytes=4096)
        assert (copy / path.name).stat().st_size == last
        assert node.recovery["truncated_bytes"] == cut - last
        assert node.recovery["garbage_records"] == 1  # the complete uncommitted record
        torn_logged = any("torn tail" in r.getMessage() for r in caplog.records)
        assert torn_logged == (cut > last)
        assert {oid: read_all(node, oid) for oid in objects} == objects
        report = node.fsck()
        assert report["ok"] and report["unreferenced_records"] == 1
        assert read_all(node, node.put(b"after").object_id) == b"after"
        node.close()
        shutil.rmtree(copy)


def test_garbage_tail_after_crash(open_node: Callable[..., DataNode]) -> None:
    objects, path, _ = torn_tail_setup(open_node(data_file_bytes=4096))
    with open(path, "ab") as f:
        f.write(os.urandom(100))
    node = open_node(data_file_bytes=4096)
    assert node.recovery["truncated_bytes"] == 100
    assert {oid: read_all(node, oid) for oid in objects} == objects


def test_acknowledged_objects_survive_kill_9(scratch: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from scalelab.objectstore.datanode import DataNode
        node = DataNode(Path({str(scratch / "node")!r}), chunk_bytes=64, data_file_bytes=4096)
        i = 0
        while True:
            w = node.writer()
            w.write(bytes([i % 256]) * (i % 300))
            fut = w.commit_future()
            if i % 3 == 0:
                w2 = node.writer()
                w2.write(b"never committed" * 10)
            print(i, fut.result().object_id, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked: dict[str, bytes] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        i, oid = line.split()
        acked[oid] = bytes([int(i) % 256]) * (int(i) % 300)
        if len(acked) == 60:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    with DataNode(scratch / "node", chunk_bytes=64, data_file_bytes=4096) as node:
        assert {oid: b"".join(node.read(oid)) for oid in acked} == acked
        assert node.fsck()["ok"]


LOOKUP_FILES = ("lookup.db", "lookup.db-wal")


def power_loss_copy(directory: Path, saved: Path, into: Path) -> None:
    """The node as a power loss would leave it: data files as written (every commit
    fdatasynced them), the lookup table as saved at its last durable point."""
    shutil.copytree(directory, into, ignore=shutil.ignore_patterns("lookup.db*"))
    for name in LOOKUP_FILES:
        if (saved / name).exists():
            shutil.copy(saved / name, into / name)


def test_power_loss_of_unsynced_index_commits(scratch: Path) -> None:
    """Index commits are not fsynced: what a power loss takes, the data file gives back."""
    kw = {"chunk_bytes": CHUNK, "data_file_bytes": 1 << 20}
    with DataNode(scratch / "node", **kw) as node:
        old = node.put(b"old" * 7)
    node = DataNode(scratch / "node", **kw)  # opening moved the mark, durably
    (saved := scratch / "saved").mkdir()
    for name in LOOKUP_FILES:
        if (node.directory / name).exists():
            shutil.copy(node.directory / name, saved / name)
    datas = (b"", b"a", b"b" * CHUNK, b"c" * (3 * CHUNK + 5), os.urandom(5 * CHUNK))
    objects = {node.put(data).object_id: data for data in datas}
    node.delete(old.object_id)
    abandoned = node.writer()
    abandoned.write(b"u" * (2 * CHUNK + 1))  # two records, the last byte held back
    power_loss_copy(node.directory, saved, scratch / "crashed")
    node.close()
    with DataNode(scratch / "crashed", **kw) as again:
        assert again.recovery["reindexed_objects"] == len(objects)
        assert again.recovery["garbage_records"] == 2  # the abandoned writer's
        assert {oid: read_all(again, oid) for oid in objects} == objects
        multi = next(oid for oid, data in objects.items() if data.startswith(b"c"))
        assert read_all(again, multi, CHUNK + 3, 2 * CHUNK + 1) == b"c" * (CHUNK - 2)
        assert read_all(again, old.object_id) == b"old" * 7  # its deletion was lost too
        assert again.usage()["live_bytes"] == live_bytes([21, *map(len, datas)])
        assert again.fsck()["ok"]
    with DataNode(scratch / "crashed", **kw) as third:  # the mark moved: nothing to redo
        assert third.recovery["reindexed_objects"] == 0
        assert {oid: read_all(third, oid) for oid in objects} == objects


def test_deleted_objects_stay_deleted_after_reopen(open_node: Callable[..., DataNode]) -> None:
    node = open_node()
    gone, kept = node.put(b"gone"), node.put(b"kept")
    node.delete(gone.object_id)
    node.close()
    again = open_node()
    assert not again.exists(gone.object_id) and again.exists(kept.object_id)
    assert again.recovery["reindexed_objects"] == 0


def test_commits_the_scan_cannot_redo_are_fsynced(node: DataNode) -> None:
    """Rows of records outside the indexed active file (an object spanning a rollover) and
    the rollover itself commit with synchronous=FULL; rows inside it do not."""
    durable_inserts: list[bool] = []
    synchronous_full = False

    def trace(sql: str) -> None:
        nonlocal synchronous_full
        if sql.startswith("PRAGMA synchronous"):
            synchronous_full = sql.endswith("FULL")
        elif sql.startswith(("INSERT INTO records", "INSERT INTO files")):
            durable_inserts.append(synchronous_full)

    node._db.set_trace_callback(trace)
    node.put(b"small")
    assert durable_inserts == [False]
    durable_inserts.clear()
    node.put(os.urandom(FILE))  # crosses into the next file
    assert durable_inserts and all(durable_inserts)
    durable_inserts.clear()
    node.put(b"small again")
    assert durable_inserts == [False]


def test_open_refuses_data_without_lookup_table(scratch: Path) -> None:
    with DataNode(scratch / "n", chunk_bytes=CHUNK, data_file_bytes=FILE) as node:
        node.put(b"x")
    (scratch / "n" / "lookup.db").unlink()
    with pytest.raises(DataStoreError, match="no lookup table"):
        DataNode(scratch / "n")


def test_open_removes_files_left_by_compaction(
    open_node: Callable[..., DataNode], caplog: pytest.LogCaptureFixture
) -> None:
    node = open_node()
    obj = node.put(b"x" * 300)
    node.close()
    stray = node.directory / "00000099.dat"
    df.DataFile.create(stray, 99).close()
    again = open_node()
    assert not stray.exists() and "removing data file 99" in caplog.text
    assert read_all(again, obj.object_id) == b"x" * 300


def test_closed_node_refuses_work(node: DataNode) -> None:
    w = node.writer()
    node.close()
    node.close()
    with pytest.raises(DataStoreError):
        node.put(b"x")
    with pytest.raises(DataStoreError):
        w.commit()
    with pytest.raises(DataStoreError):
        node.exists("0" * 32)


class DataNodeMachine(RuleBasedStateMachine):
    """The node against a dict, through puts, deletes, compaction, reopening and crashes."""

    objects = Bundle("objects")

    def __init__(self) -> None:
        super().__init__()
        self.dir = scratch_dir()
        self.node = self._open()
        self.model: dict[str, bytes] = {}

    def _open(self) -> DataNode:
        return DataNode(self.dir, chunk_bytes=CHUNK, data_file_bytes=FILE)

    @rule(target=objects, data=st.binary(max_size=4 * CHUNK))
    def put(self, data: bytes) -> str:
        obj = self.node.put(data)
        self.model[obj.object_id] = data
        return obj.object_id

    @rule(target=objects, pieces=st.lists(st.binary(max_size=2 * CHUNK), max_size=4))
    def stream(self, pieces: list[bytes]) -> str:
        w = self.node.writer()
        for piece in pieces:
            w.write(piece)
        obj = w.commit_future().result()
        self.model[obj.object_id] = b"".join(pieces)
        return obj.object_id

    @rule(data=st.binary(max_size=3 * CHUNK))
    def abort(self, data: bytes) -> None:
        with self.node.writer() as w:
            w.write(data)

    @rule(oid=consumes(objects))
    def delete(self, oid: str) -> None:
        self.node.delete(oid)
        del self.model[oid]
        assert not self.node.exists(oid)

    @rule(oid=objects, start=st.integers(0, 70), length=st.integers(0, 70))
    def read(self, oid: str, start: int, length: int) -> None:
        got = b"".join(self.node.read(oid, start, start + length))
        assert got == self.model[oid][start : start + length]

    @rule(ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    def compact(self, ratio: float) -> None:
        assert not self.node.compact(ratio)["problems"]

    @rule()
    def reopen(self) -> None:
        self.node.close()
        self.node = self._open()

    @rule(uncommitted=st.binary(max_size=3 * CHUNK), torn=st.integers(0, HDR + CHUNK))
    def crash_reopen(self, uncommitted: bytes, torn: int) -> None:
        w = self.node.writer()
        w.write(uncommitted)  # appended but never committed
        active = max(self.dir.glob("*.dat"))
        self.node.close()  # the process dies: what is on disk stays as it is...
        header, _ = df.encode_record_header(os.urandom(16), 0, b"t" * CHUNK)
        with open(active, "ab") as f:
            f.write((header + b"t" * CHUNK)[:torn])  # ...including a half-written record
        self.node = self._open()
        report = self.node.fsck()
        assert report["ok"], report["problems"]

    @invariant()
    def matches_model(self) -> None:
        assert {oid for oid, _ in self.node.ids()} == set(self.model)
        usage = self.node.usage()
        assert usage["live_bytes"] == live_bytes([len(d) for d in self.model.values()])
        assert usage["garbage_bytes"] >= 0

    def teardown(self) -> None:
        try:
            for oid, data in self.model.items():
                assert b"".join(self.node.read(oid)) == data
            assert self.node.fsck()["ok"]
        finally:
            self.node.close()
            shutil.rmtree(self.dir)


TestDataNodeModel = DataNodeMachine.TestCase
TestDataNodeModel.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)
