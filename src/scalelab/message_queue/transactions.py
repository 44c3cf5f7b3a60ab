"""The transaction coordinator: exactly-once read-process-write (the book's exactly-once).

A transactional producer names itself with a `transactional.id`. InitProducerId maps the id to
a producer id and a new epoch (fencing any older instance of the same producer: its epoch is
now stale everywhere), and aborts a transaction the old instance left open. The producer then
registers every partition it writes to (AddPartitionsToTxn) and every consumer group whose
offsets it commits (AddOffsetsToTxn, TxnOffsetCommit), and ends with EndTxn: the coordinator
records its decision, appends a COMMIT or ABORT marker to each registered partition, makes
the offsets visible on commit, and records the transaction complete. A transaction left open
longer than its timeout is aborted and its producer fenced.

The coordinator's state is a key/value log (`__transaction_state`, one record per change, the
last per transactional id wins), so a restart resumes where it stopped: a decision recorded
but not carried out (PrepareCommit, PrepareAbort) is carried out again (markers are only
written where the producer still has an open transaction, so redoing is harmless), and open
transactions keep running until they end or time out.

Every state change goes through `TRANSITIONS`, one table (state, event) -> next state, so
the rules can be read in one place:
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from scalelab.message_queue.batch import ABORT, COMMIT
from scalelab.message_queue.state_storage import KeyedLog

__all__ = ["TRANSITIONS", "TransactionCoordinator", "TxnMeta"]

log = logging.getLogger(__name__)

NONE = 0
INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_PRODUCER_ID_MAPPING = 49
INVALID_TRANSACTION_TIMEOUT = 50
CONCURRENT_TRANSACTIONS = 51
PRODUCER_FENCED = 90

TOPIC = "__transaction_state"
MAX_TIMEOUT_MS = 15 * 60 * 1000  # Kafka's transaction.max.timeout.ms

EMPTY, ONGOING = "Empty", "Ongoing"
PREPARE_COMMIT, PREPARE_ABORT = "PrepareCommit", "PrepareAbort"
COMPLETE_COMMIT, COMPLETE_ABORT = "CompleteCommit", "CompleteAbort"
_IDLE = (EMPTY, COMPLETE_COMMIT, COMPLETE_ABORT)

# (state, event) -> next state; a pair not in the table is INVALID_TXN_STATE, except that any
# event but "complete" in a Prepare state is CONCURRENT_TRANSACTIONS (the client retries).
TRANSITIONS: dict[tuple[str, str], str] = {
    **{(s, "init"): EMPTY for s in _IDLE},
    **{(s, "add"): ONGOING for s in (*_IDLE, ONGOING)},
    (ONGOING, "commit"): PREPARE_COMMIT,
    (ONGOING, "abort"): PREPARE_ABORT,
    (ONGOING, "init"): PREPARE_ABORT,  # a new instance aborts what the old one left open
    (ONGOING, "expire"): PREPARE_ABORT,
    (PREPARE_COMMIT, "complete"): COMPLETE_COMMIT,
    (PREPARE_ABORT, "complete"): COMPLETE_ABORT,
    (COMPLETE_COMMIT, "commit"): COMPLETE_COMMIT,  # a retried EndTxn whose answer was lost
    (COMPLETE_ABORT, "abort"): COMPLETE_ABORT,
}
__doc__ = (__doc__ or "") + "\n".join(
    f"    {s:>15} --{e}--> {t}" for (s, e), t in TRANSITIONS.items()
)

Offsets = dict[tuple[str, int], tuple[int, str | None]]


class TxnError(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or f"error {code}")
        self.code = code


@dataclass
class TxnMeta:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: str = EMPTY
    started_ms: int = -1  # when the open transaction began (wall clock: survives restarts)
    partitions: set[tuple[str, int]] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    pending_offsets: dict[str, Offsets] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "producer_id": self.producer_id,
                "producer_epoch": self.producer_epoch,
                "timeout_ms": self.timeout_ms,
                "state": self.state,
                "started_ms": self.started_ms,
                "partitions": sorted(self.partitions),
                "groups": sorted(self.groups),
                "pending_offsets": {
                    g: [[t, p, o, m] for (t, p), (o, m) in sorted(entries.items())]
                    for g, entries in self.pending_offsets.items()
                },
            }
        ).encode()

    @classmethod
    def from_json(cls, transactional_id: str, raw: bytes) -> TxnMeta:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            transactional_id,
            int(d["producer_id"]),
            int(d["producer_epoch"]),
            int(d["timeout_ms"]),
            d["state"],
            int(d["started_ms"]),
            {(t, int(p)) for t, p in d["partitions"]},
            set(d["groups"]),
            {
                g: {(t, int(p)): (int(o), m) for t, p, o, m in rows}
                for g, rows in d["pending_offsets"].items()
            },
        )


MarkerWriter = Callable[[int, int, int, Iterable[tuple[str, int]]], None]
OffsetWriter = Callable[[str, Offsets], None]


class TransactionCoordinator:
    """Every transactional id on this broker. Methods block (they write the state log and
    markers) and are called from a worker thread; one lock orders them."""

    def __init__(
        self,
        state_log: KeyedLog,
        *,
        new_producer_id: Callable[[], int],
        write_markers: MarkerWriter,
        commit_offsets: OffsetWriter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = state_log
        self._new_producer_id = new_producer_id
        self._write_markers = write_markers
        self._commit_offsets = commit_offsets
        self._clock = clock
        self._lock = threading.RLock()
        self.txns: dict[str, TxnMeta] = {}
        self._by_producer: dict[int, TxnMeta] = {}
        for key, value in state_log.replay():
            txn_id = key.decode()
            if value is None:
                self.txns.pop(txn_id, None)
            else:
                self.txns[txn_id] = TxnMeta.from_json(txn_id, value)
        self._by_producer = {m.producer_id: m for m in self.txns.values()}

    def recover(self) -> None:
        """Carry out decisions recorded before a restart but not completed."""
        with self._lock:
            for meta in list(self.txns.values()):
                if meta.state in (PREPARE_COMMIT, PREPARE_ABORT):
                    log.info("transaction %s: completing %s after restart",
                             meta.transactional_id, meta.state)  # fmt: skip
                    self._complete(meta)

    # ---- the APIs ------------------------------------------------------------------------

    def init_producer_id(
        self, transactional_id: str, timeout_ms: int, producer_id: int = -1, epoch: int = -1
    ) -> tuple[int, int]:
        """(producer id, epoch) for a (re)starting transactional producer."""
        if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
            raise TxnError(
                INVALID_TRANSACTION_TIMEOUT, f"timeout {timeout_ms} ms: must be 1-{MAX_TIMEOUT_MS}"
            )
        with self._lock:
            meta = self.txns.get(transactional_id)
            if meta is None:
                meta = TxnMeta(transactional_id, self._new_producer_id(), 0, timeout_ms)
                self.txns[transactional_id] = meta
                self._by_producer[meta.producer_id] = meta
                self._save(meta)
                return meta.producer_id, meta.producer_epoch
            if producer_id >= 0 and (producer_id, epoch) != (meta.producer_id, meta.producer_epoch):
                raise TxnError(PRODUCER_FENCED, "a newer instance of this producer is active")
            if meta.state == ONGOING:
                self._bump_epoch(meta)
                self._transition(meta, "init")
                self._save(meta)
                self._complete(meta)
            self._transition(meta, "init")
            self._bump_epoch(meta)
            meta.timeout_ms = timeout_ms
            self._save(meta)
            return meta.producer_id, meta.producer_epoch

    def add_partitions(
        self, transactional_id: str, producer_id: int, epoch: int, partitions: set[tuple[str, int]]
    ) -> None:
        with self._lock:
            meta = self._check(transactional_id, producer_id, epoch)
            if meta.state == ONGOING and partitions <= meta.partitions:
                return  # a retry: nothing new to record
            self._begin(meta)
            meta.partitions |= partitions
            self._save(meta)

    def add_offsets(self, transactional_id: str, producer_id: int, epoch: int, group: str) -> None:
        with self._lock:
            meta = self._check(transactional_id, producer_id, epoch)
            if meta.state == ONGOING and group in meta.groups:
                return
            self._begin(meta)
            meta.groups.add(group)
            self._save(meta)

    def txn_offset_commit(
        self, transactional_id: str, producer_id: int, epoch: int, group: str, offsets: Offsets
    ) -> None:
        """Offsets that become the group's committed offsets if, and when, the transaction
        commits."""
        with self._lock:
            meta = self._check(transactional_id, producer_id, epoch)
            if meta.state != ONGOING or group not in meta.groups:
                raise TxnError(INVALID_TXN_STATE, f"group {group!r} was not added (AddOffsets)")
            meta.pending_offsets.setdefault(group, {}).update(offsets)
            self._save(meta)

    def end_txn(self, transactional_id: str, producer_id: int, epoch: int, commit: bool) -> None:
        with self._lock:
            meta = self._check(transactional_id, producer_id, epoch)
            before = meta.state
            self._transition(meta, "commit" if commit else "abort")
            if before == ONGOING:
                self._save(meta)  # the decision is durable before any marker is written
                self._complete(meta)

    def check_produce(self, producer_id: int, epoch: int, topic: str, partition: int) -> int:
        """A transactional batch may only go to a partition its open transaction added."""
        meta = self._by_producer.get(producer_id)
        if meta is None:
            return INVALID_PRODUCER_ID_MAPPING
        if epoch != meta.producer_epoch:
            return INVALID_PRODUCER_EPOCH
        if meta.state != ONGOING or (topic, partition) not in meta.partitions:
            return INVALID_TXN_STATE
        return NONE

    def expire(self) -> list[str]:
        """Abort transactions open longer than their timeout and fence their producers; retry
        decisions whose markers could not be written (a disk error) until they are."""
        now_ms = int(self._clock() * 1000)
        expired = []
        with self._lock:
            for meta in list(self.txns.values()):
                if meta.state in (PREPARE_COMMIT, PREPARE_ABORT):
                    self._complete(meta)
                elif meta.state == ONGOING and now_ms - meta.started_ms > meta.timeout_ms:
                    log.info("transaction %s: open for over %d ms; aborting",
                             meta.transactional_id, meta.timeout_ms)  # fmt: skip
                    self._bump_epoch(meta)
                    self._transition(meta, "expire")
                    self._save(meta)
                    self._complete(meta)
                    expired.append(meta.transactional_id)
        return expired

    # ---- internals -----------------------------------------------------------------------

    def _check(self, transactional_id: str, producer_id: int, epoch: int) -> TxnMeta:
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            raise TxnError(
                INVALID_PRODUCER_ID_MAPPING, f"{transactional_id!r} is not producer {producer_id}"
            )
        if epoch != meta.producer_epoch:
            raise TxnError(PRODUCER_FENCED, f"epoch {epoch} is not {meta.producer_epoch}")
        return meta

    def _transition(self, meta: TxnMeta, event: str) -> None:
        target = TRANSITIONS.get((meta.state, event))
        if target is None:
            if meta.state in (PREPARE_COMMIT, PREPARE_ABORT) and event != "complete":
                raise TxnError(CONCURRENT_TRANSACTIONS, f"{meta.state}: completing")
            raise TxnError(INVALID_TXN_STATE, f"{event} in state {meta.state}")
        meta.state = target

    def _begin(self, meta: TxnMeta) -> None:
        was_open = meta.state == ONGOING
        self._transition(meta, "add")
        if not was_open:
            meta.started_ms = int(self._clock() * 1000)
            meta.partitions, meta.groups, meta.pending_offsets = set(), set(), {}

    def _bump_epoch(self, meta: TxnMeta) -> None:
        if meta.producer_epoch >= (1 << 15) - 2:  # epochs are int16: start a new producer id
            self._by_producer.pop(meta.producer_id, None)
            meta.producer_id, meta.producer_epoch = self._new_producer_id(), 0
            self._by_producer[meta.producer_id] = meta
        else:
            meta.producer_epoch += 1

    def _complete(self, meta: TxnMeta) -> None:
        """Write the markers (and, on commit, the offsets), then record completion."""
        commit = meta.state == PREPARE_COMMIT
        kind = COMMIT if commit else ABORT
        self._write_markers(meta.producer_id, meta.producer_epoch, kind, sorted(meta.partitions))
        if commit:
            for group, offsets in meta.pending_offsets.items():
                self._commit_offsets(group, offsets)
        self._transition(meta, "complete")
        meta.partitions, meta.groups, meta.pending_offsets = set(), set(), {}
        self._save(meta)

    def _save(self, meta: TxnMeta) -> None:
        self._log.append([(meta.transactional_id.encode(), meta.to_json())])
