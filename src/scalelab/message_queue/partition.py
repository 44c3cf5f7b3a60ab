"""A partition's log: the book's write-ahead log, as a list of segments in one directory.

Producers append record batches at the end and get offsets; consumers read from any offset.
The partition assigns offsets, rolls the active segment by size or age, deletes whole old
segments for retention (by time and by total size), and says how durable the end of the log
is: `append` writes to the OS, `sync` makes everything appended so far survive a power loss.
Whether a produce waits for `sync` is the durability policy (`FlushPolicy`), which the broker
applies; a replicated broker would replace the policy with its in-sync replicas.

Thread-safety: one lock per partition around appends, rolls, deletes and reads of the segment
list; reads of a segment's bytes happen outside it (segments are append-only and deleted only
when no longer listed).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from scalelab.message_queue.batch import (
    INVALID_RECORD,
    BatchError,
    BatchHeader,
    control_batch,
    control_type,
    split,
)
from scalelab.message_queue.cleaner import recover_interrupted
from scalelab.message_queue.producer_state import (
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    Duplicate,
    ProducerStateError,
    ProducerStates,
)
from scalelab.message_queue.segment import Segment
from scalelab.message_queue.txn_index import AbortedTxn, TxnIndex

log = logging.getLogger(__name__)

_LOG_NAME = re.compile(r"^(\d{20})\.log$")
OFFSET_OUT_OF_RANGE = 1


@dataclass(frozen=True)
class LogConfig:
    """Per-topic settings, named as Kafka's topic configs (seconds and bytes)."""

    segment_bytes: int = 1 << 30  # segment.bytes
    segment_ms: int = 7 * 24 * 3600 * 1000  # segment.ms
    retention_ms: int = 14 * 24 * 3600 * 1000  # retention.ms: the book's two weeks
    retention_bytes: int = -1  # retention.bytes; -1: no size limit
    cleanup_policy: str = "delete"  # cleanup.policy: delete | compact | compact,delete
    delete_retention_ms: int = 24 * 3600 * 1000  # delete.retention.ms: tombstones kept
    min_cleanable_dirty_ratio: float = 0.5  # min.cleanable.dirty.ratio


class OffsetOutOfRange(Exception):
    def __init__(self, offset: int, start: int, end: int) -> None:
        super().__init__(f"offset {offset} is outside the log [{start}, {end})")
        self.code = OFFSET_OUT_OF_RANGE


@dataclass(frozen=True)
class Appended:
    base_offset: int
    last_offset: int
    log_start_offset: int
    duplicate: bool = False  # a retry: nothing was written


class Partition:
    """The segments of one topic-partition, oldest first."""

    def __init__(
        self,
        directory: Path,
        config: LogConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.config = config or LogConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        recover_interrupted(self.directory)  # a compaction swap a crash cut short
        bases = sorted(
            int(m[1]) for n in self.directory.iterdir() if (m := _LOG_NAME.match(n.name))
        )
        self._segments: list[Segment] = [
            Segment.open(self.directory, base, active=i == len(bases) - 1)
            for i, base in enumerate(bases)
        ]
        if not self._segments:
            self._segments.append(Segment.create(self.directory, 0, clock()))
        self.producers = ProducerStates()
        self.txns = TxnIndex()
        for seg in self._segments:  # headers only, and the key of each transaction marker
            for pos, header in seg.headers():
                self.producers.observe(header)
                if header.control:
                    kind = control_type(seg.read_batch(pos, header))
                    self.txns.on_marker(header.producer_id, kind, header.base_offset)
                else:
                    self.txns.on_batch(header, header.base_offset)

    # ---- state ---------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        return self._segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        """The next offset to be assigned (Kafka's LEO; the high watermark on one node)."""
        return self._segments[-1].next_offset

    @property
    def last_stable_offset(self) -> int:
        """Where read_committed consumers stop: the first offset of the oldest open
        transaction, or the log end."""
        with self._lock:
            return self.txns.last_stable_offset(self.log_end_offset)

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        with self._lock:
            return self.txns.aborted_between(start, end)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def active(self) -> Segment:
        return self._segments[-1]

    # ---- writing -------------------------------------------------------------------------

    def append(self, records: bytes | memoryview) -> Appended:
        """Append every batch of a Produce record set, assigning offsets; all or none.

        Raises BatchError for a batch that is not valid, ProducerStateError for one the
        idempotent producer checks refuse; a retried batch already in the log is not written
        again, and its original offsets come back (`duplicate`).
        """
        batches = list(split(records))  # BatchError before anything is written
        if not batches:
            raise BatchError("empty record set", 2)
        if any(header.control for header, _ in batches):
            raise BatchError("control batches are written by the broker only", INVALID_RECORD)
        with self._lock:
            offset = self.log_end_offset
            states = self.producers.clone() if len(batches) > 1 else self.producers
            planned = []
            for header, _ in batches:
                try:
                    states.check(header)
                except Duplicate as dup:
                    if len(batches) > 1:
                        raise ProducerStateError(
                            "a retried batch inside a multi-batch record set",
                            OUT_OF_ORDER_SEQUENCE_NUMBER,
                        ) from None
                    return Appended(
                        dup.base_offset, dup.last_offset, self.log_start_offset, duplicate=True
                    )
                if states is not self.producers:  # the next batch's check needs this one
                    states.record(header, offset)
                planned.append(offset)
                offset += header.last_offset_delta + 1
            first = planned[0]
            for (header, view), base in zip(batches, planned, strict=True):
                self._maybe_roll(header.size)
                self.active.append(view, replace(header, base_offset=base))
                self.txns.on_batch(header, base)
            if states is self.producers:  # remembered only once written
                states.record(batches[0][0], first)
            else:
                self.producers = states
            return Appended(first, offset - 1, self.log_start_offset)

    def append_marker(
        self, producer_id: int, producer_epoch: int, kind: int, coordinator_epoch: int = 0
    ) -> int | None:
        """End producer_id's open transaction here with a COMMIT or ABORT marker; its offset,
        or None when the producer has no open transaction in this partition (a marker written
        again after a coordinator restart, or a partition the transaction never wrote to)."""
        with self._lock:
            if not self.txns.is_open(producer_id):
                return None
            raw = control_batch(
                producer_id, producer_epoch, kind, coordinator_epoch, int(self.clock() * 1000)
            )
            header = BatchHeader.parse(raw)
            offset = self.log_end_offset
            self._maybe_roll(header.size)
            self.active.append(raw, replace(header, base_offset=offset))
            self.txns.on_marker(producer_id, kind, offset)
            self.producers.record(header, offset)
            return offset

    def _maybe_roll(self, incoming: int) -> None:
        seg = self.active
        too_big = seg.size > 0 and seg.size + incoming > self.config.segment_bytes
        too_old = seg.size > 0 and (self.clock() - seg.created) * 1000 >= self.config.segment_ms
        if too_big or too_old:
            self._roll()

    def _roll(self) -> None:
        old = self.active
        old.sync()  # a read-only segment is whole on disk before the next one starts
        old.readonly = True
        self._segments.append(Segment.create(self.directory, old.next_offset, self.clock()))

    def sync(self) -> int:
        """Make everything appended so far durable; returns the durable end offset."""
        with self._lock:
            seg, end = self.active, self.log_end_offset
        seg.sync()
        return end

    # ---- reading -------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, upto_offset: int | None = None) -> bytes:
        """Whole batches from the one holding offset: at least one batch (Kafka's rule, so a
        consumer can always make progress), then as many as fit in max_bytes, never past
        upto_offset (the last stable offset for read_committed)."""
        with self._lock:
            start, end = self.log_start_offset, self.log_end_offset
            if not start <= offset <= end:
                raise OffsetOutOfRange(offset, start, end)
            segments = [s for s in self._segments if s.next_offset > offset]
        limit = end if upto_offset is None else min(end, upto_offset)
        out = []
        budget = max_bytes
        for seg in segments:
            if offset >= limit:
                break
            pos = seg.position_of(offset)
            if pos is None:
                continue
            upto = None if limit >= seg.next_offset else seg.position_of(limit)
            chunk = seg.read(pos, budget, upto)  # at least one batch, even over budget
            if not chunk:
                break
            out.append(chunk)
            budget -= len(chunk)
            if budget <= 0:
                break
            offset = seg.next_offset
        return b"".join(out)

    def offset_for_time(self, timestamp: int) -> tuple[int, int] | None:
        """ListOffsets by timestamp: (offset, timestamp) of the first record at or after it."""
        with self._lock:
            segments = list(self._segments)
        for seg in segments:
            if seg.max_timestamp >= timestamp:
                found = seg.offset_for_time(timestamp)
                if found is not None:
                    return found
        return None

    # ---- retention -----------------------------------------------------------------------

    def enforce_retention(self) -> int:
        """Delete whole read-only segments past retention.ms or beyond retention.bytes;
        returns how many were deleted. The active segment is never deleted."""
        if "delete" not in self.config.cleanup_policy:
            return 0  # compact only: the log cleaner decides what goes (Kafka's rule)
        now_ms = self.clock() * 1000
        deleted = 0
        with self._lock:
            total = self.size_bytes
            while len(self._segments) > 1:
                seg = self._segments[0]
                expired = (
                    self.config.retention_ms >= 0
                    and seg.max_timestamp >= 0
                    and now_ms - seg.max_timestamp > self.config.retention_ms
                )
                # Kafka's rule: drop the oldest while what remains is still >= retention.bytes
                oversize = 0 <= self.config.retention_bytes <= total - seg.size
                if not (expired or oversize):
                    break
                self._segments.pop(0)
                total -= seg.size
                seg.delete()
                deleted += 1
        if deleted:
            with self._lock:
                self.txns.forget_before(self.log_start_offset)
            log.info("%s: deleted %d segments (retention)", self.directory.name, deleted)
        return deleted

    def replace_segments(
        self, old: list[Segment], new: Segment, swap_files: Callable[[], None]
    ) -> bool:
        """Put new (the log cleaner's copy) in place of the consecutive read-only segments
        old, running swap_files (its renames) under the lock so no roll, retention or close
        interleaves; False, with nothing done, if old are no longer listed as they were. The
        old segments close once the last read that listed them lets go."""
        with self._lock:
            i = next((i for i, s in enumerate(self._segments) if s is old[0]), -1)
            listed = self._segments[i : i + len(old)] if i >= 0 else []
            if (
                len(listed) != len(old)
                or i + len(old) >= len(self._segments)  # never the active segment
                or any(a is not b or a.fd < 0 for a, b in zip(listed, old, strict=True))
            ):
                return False
            swap_files()
            self._segments[i : i + len(old)] = [new]
        for seg in old:
            seg.close_when_unreferenced()
        return True

    def close(self) -> None:
        with self._lock:
            for seg in self._segments:
                if not seg.readonly:
                    seg.sync()
                seg.close()
