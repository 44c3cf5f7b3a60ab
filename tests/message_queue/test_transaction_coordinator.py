"""The transaction coordinator on virtual time, and the partition's transaction index, without
a network: the state table, fencing, expiry, and recovery of a decision cut short by a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.message_queue import batch as b
from scalelab.message_queue.partition import Partition
from scalelab.message_queue.state_storage import KeyedLog
from scalelab.message_queue.transactions import (
    CONCURRENT_TRANSACTIONS,
    INVALID_TXN_STATE,
    PRODUCER_FENCED,
    TRANSITIONS,
    TransactionCoordinator,
    TxnError,
)
from scalelab.message_queue.txn_index import TxnIndex

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """A coordinator over a real state log, with markers and offsets recorded in lists."""

    def __init__(self, directory: Path, clock: Clock, fail_markers: bool = False) -> None:
        self.directory = directory
        self.markers: list[tuple[int, int, int, list[tuple[str, int]]]] = []
        self.offsets: list[tuple[str, dict[tuple[str, int], tuple[int, str | None]]]] = []
        self.fail_markers = fail_markers
        self.next_pid = 100
        self.state = Partition(directory / "__transaction_state-0")
        self.coordinator = TransactionCoordinator(
            KeyedLog(self.state), new_producer_id=self._pid, write_markers=self._markers,
            commit_offsets=lambda g, o: self.offsets.append((g, dict(o))), clock=clock,
        )  # fmt: skip

    def _pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def _markers(self, pid: int, epoch: int, kind: int, parts: object) -> None:
        if self.fail_markers:
            raise OSError("disk gone")
        self.markers.append((pid, epoch, kind, list(parts)))  # type: ignore[call-overload]


def test_commit_writes_markers_then_offsets(tmp_path: Path) -> None:
    w = World(tmp_path, Clock())
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 60_000)
    c.add_partitions("t", pid, epoch, {("out", 0), ("out", 1)})
    c.add_offsets("t", pid, epoch, "g")
    c.txn_offset_commit("t", pid, epoch, "g", {("in", 0): (42, None)})
    assert c.check_produce(pid, epoch, "out", 1) == 0
    assert c.check_produce(pid, epoch, "elsewhere", 0) == INVALID_TXN_STATE
    c.end_txn("t", pid, epoch, commit=True)
    assert w.markers == [(pid, epoch, b.COMMIT, [("out", 0), ("out", 1)])]
    assert w.offsets == [("g", {("in", 0): (42, None)})]
    c.end_txn("t", pid, epoch, commit=True)  # a retry whose answer was lost: fine, no redo
    assert len(w.markers) == 1
    with pytest.raises(TxnError) as err:
        c.end_txn("t", pid, epoch, commit=False)
    assert err.value.code == INVALID_TXN_STATE


def test_abort_drops_the_pending_offsets(tmp_path: Path) -> None:
    w = World(tmp_path, Clock())
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 60_000)
    c.add_offsets("t", pid, epoch, "g")
    c.txn_offset_commit("t", pid, epoch, "g", {("in", 0): (7, "m")})
    c.end_txn("t", pid, epoch, commit=False)
    assert w.offsets == [] and w.markers == [(pid, epoch, b.ABORT, [])]
    with pytest.raises(TxnError) as err:  # offsets for a group the transaction did not add
        c.txn_offset_commit("t", pid, epoch, "other", {("in", 0): (8, None)})
    assert err.value.code == INVALID_TXN_STATE


def test_a_new_instance_fences_and_aborts(tmp_path: Path) -> None:
    w = World(tmp_path, Clock())
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 60_000)
    c.add_partitions("t", pid, epoch, {("out", 0)})
    pid2, epoch2 = c.init_producer_id("t", 60_000)
    assert pid2 == pid and epoch2 > epoch
    assert [(m[0], m[2]) for m in w.markers] == [(pid, b.ABORT)]
    assert w.markers[0][1] > epoch  # the abort marker carries the new epoch: zombies fenced
    for call in (
        lambda: c.add_partitions("t", pid, epoch, {("out", 0)}),
        lambda: c.end_txn("t", pid, epoch, commit=True),
    ):
        with pytest.raises(TxnError) as err:
            call()
        assert err.value.code == PRODUCER_FENCED


def test_an_open_transaction_expires_on_virtual_time(tmp_path: Path) -> None:
    clock = Clock()
    w = World(tmp_path, clock)
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 10_000)
    c.add_partitions("t", pid, epoch, {("out", 0)})
    clock.now += 9
    assert c.expire() == []
    clock.now += 2
    assert c.expire() == ["t"]
    assert w.markers[-1][2] == b.ABORT
    with pytest.raises(TxnError) as err:
        c.end_txn("t", pid, epoch, commit=True)
    assert err.value.code == PRODUCER_FENCED


def test_a_decision_cut_short_is_carried_out_after_restart(tmp_path: Path) -> None:
    w = World(tmp_path, Clock(), fail_markers=True)
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 60_000)
    c.add_partitions("t", pid, epoch, {("out", 3)})
    c.add_offsets("t", pid, epoch, "g")
    c.txn_offset_commit("t", pid, epoch, "g", {("in", 0): (5, None)})
    with pytest.raises(OSError):
        c.end_txn("t", pid, epoch, commit=True)  # PrepareCommit recorded, markers not written
    with pytest.raises(TxnError) as err:
        c.add_partitions("t", pid, epoch, {("out", 4)})
    assert err.value.code == CONCURRENT_TRANSACTIONS
    assert c.txns["t"].partitions == {("out", 3)}  # a refused request changes nothing
    w.state.close()
    again = World(tmp_path, Clock())
    assert again.coordinator.txns["t"].state == "PrepareCommit"
    again.coordinator.recover()
    assert again.markers == [(pid, epoch, b.COMMIT, [("out", 3)])]
    assert again.offsets == [("g", {("in", 0): (5, None)})]
    assert again.coordinator.txns["t"].state == "CompleteCommit"


def test_the_state_table_is_closed() -> None:
    states = {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values())
    assert states == {"Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit",
                      "CompleteAbort"}  # fmt: skip
    assert all(t in {s for s, _ in TRANSITIONS} for t in TRANSITIONS.values())


# ---- control batches and the partition's transaction index --------------------------------


@given(
    pid=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 2**15 - 1),
    kind=st.sampled_from([b.ABORT, b.COMMIT]),
    coordinator_epoch=st.integers(-(2**31), 2**31 - 1),
    ts=st.integers(0, 2**42),
)
def test_control_batches_round_trip_through_kafka_python(
    pid: int, epoch: int, kind: int, coordinator_epoch: int, ts: int
) -> None:
    raw = b.control_batch(pid, epoch, kind, coordinator_epoch, ts)
    header = b.BatchHeader.parse(raw)
    header.check(raw)
    assert header.control and header.transactional and header.producer_id == pid
    assert b.control_type(raw) == kind
    decoded = DefaultRecordBatch(raw)
    assert decoded.is_control_batch
    (record,) = list(decoded)
    assert record.key == kind.to_bytes(4, "big")


@given(st.binary(max_size=80))
def test_control_type_never_crashes_on_garbage(tail: bytes) -> None:
    try:
        b.control_type(bytes(b.HEADER_SIZE) + tail)
    except b.BatchError:
        pass


def test_txn_index_lso_and_aborted_ranges() -> None:
    idx = TxnIndex()

    def data(pid: int, at: int) -> None:
        idx.on_batch(b.BatchHeader(at, 0, 0, 2, 0, b.TRANSACTIONAL, 0, 0, 0, pid, 0, 0, 1), at)

    data(1, 10)
    data(2, 12)
    data(1, 13)
    assert idx.last_stable_offset(20) == 10
    idx.on_marker(1, b.ABORT, 14)
    assert idx.last_stable_offset(20) == 12
    idx.on_marker(2, b.COMMIT, 15)
    assert idx.last_stable_offset(20) == 20
    assert [(a.producer_id, a.first_offset) for a in idx.aborted_between(0, 20)] == [(1, 10)]
    assert idx.aborted_between(15, 20) == [] and idx.aborted_between(0, 10) == []
    idx.forget_before(15)
    assert idx.aborted_between(0, 20) == []


def test_partition_rebuilds_transaction_state_on_open(tmp_path: Path) -> None:
    part = Partition(tmp_path / "p")
    txn = b.make_batch(b"r", 1, attributes=b.TRANSACTIONAL, producer_id=5, producer_epoch=0,
                       base_sequence=0)  # fmt: skip
    part.append(txn)
    part.append(b.make_batch(b"s", 1))
    assert part.last_stable_offset == 0
    assert part.append_marker(5, 0, b.ABORT) == 2
    assert part.append_marker(5, 0, b.ABORT) is None  # nothing open: no second marker
    part.append(b.make_batch(b"r", 1, attributes=b.TRANSACTIONAL, producer_id=6,
                             producer_epoch=0, base_sequence=0))  # fmt: skip
    part.close()
    again = Partition(tmp_path / "p")
    assert again.log_end_offset == 4 and again.last_stable_offset == 3
    assert [(a.producer_id, a.first_offset, a.last_offset)
            for a in again.aborted_between(0, 4)] == [(5, 0, 2)]  # fmt: skip
    with pytest.raises(b.BatchError):  # clients may not write markers
        again.append(b.control_batch(6, 0, b.COMMIT, 0, 0))


def test_a_decision_whose_markers_failed_is_retried_in_process(tmp_path: Path) -> None:
    w = World(tmp_path, Clock(), fail_markers=True)
    c = w.coordinator
    pid, epoch = c.init_producer_id("t", 60_000)
    c.add_partitions("t", pid, epoch, {("out", 0)})
    with pytest.raises(OSError):
        c.end_txn("t", pid, epoch, commit=False)
    w.fail_markers = False
    c.expire()
    assert w.markers == [(pid, epoch, b.ABORT, [("out", 0)])]
    assert c.txns["t"].state == "CompleteAbort"
