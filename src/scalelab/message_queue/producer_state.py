"""Idempotent producers: the sequence check that keeps a retried batch from being written twice.

A producer that asked InitProducerId for an id numbers its batches per partition (base
sequence, counting records). The broker remembers, per (producer id, partition), the epoch and
the last few batches it appended; a batch that repeats one of them is a retry whose response
was lost, and gets the original offsets without being written again; a batch that skips ahead
is refused (OUT_OF_ORDER_SEQUENCE_NUMBER), as is one from an older epoch (a fenced zombie).
Kafka keeps the last five batches per producer and partition, because a producer has at most
five requests in flight; so does this.

Pure logic: `check` decides, `record` remembers after the append; the partition rebuilds the
state from its batch headers when it opens (`observe`), so nothing here is stored on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scalelab.message_queue.batch import BatchHeader

__all__ = ["Duplicate", "ProducerStateError", "ProducerStates"]

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
UNKNOWN_PRODUCER_ID = 59
KEEP_BATCHES = 5
_SEQ_MOD = 1 << 31  # sequences are int32 and wrap


class ProducerStateError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Duplicate(Exception):
    """A retry of a batch already in the log: answer with its original offsets."""

    def __init__(self, base_offset: int, last_offset: int) -> None:
        super().__init__(f"duplicate of the batch at offsets {base_offset}-{last_offset}")
        self.base_offset, self.last_offset = base_offset, last_offset


@dataclass
class _Producer:
    epoch: int
    # (first sequence, last sequence, base offset, last offset) of the latest batches
    batches: deque[tuple[int, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=KEEP_BATCHES)
    )

    @property
    def last_sequence(self) -> int:
        return self.batches[-1][1] if self.batches else -1


def _last_sequence(header: BatchHeader) -> int:
    return (header.base_sequence + header.last_offset_delta) % _SEQ_MOD


class ProducerStates:
    """Per producer id, for one partition."""

    def __init__(self) -> None:
        self._producers: dict[int, _Producer] = {}

    def check(self, header: BatchHeader) -> None:
        """Raise Duplicate for a retried batch, ProducerStateError for one to refuse."""
        if header.producer_id < 0 or header.control:
            return
        known = self._producers.get(header.producer_id)
        seq = header.base_sequence
        if known is None:
            if seq != 0:  # the state was lost (retention) or the producer is confused
                raise ProducerStateError(
                    f"producer {header.producer_id} starts at sequence {seq}, not 0",
                    UNKNOWN_PRODUCER_ID,
                )
            return
        if header.producer_epoch < known.epoch:
            raise ProducerStateError(
                f"producer {header.producer_id} epoch {header.producer_epoch} is older than "
                f"{known.epoch}",
                INVALID_PRODUCER_EPOCH,
            )
        if header.producer_epoch > known.epoch:
            if seq != 0:
                raise ProducerStateError(
                    f"a new epoch must start at sequence 0, not {seq}",
                    OUT_OF_ORDER_SEQUENCE_NUMBER,
                )
            return
        last = _last_sequence(header)
        for first_seq, last_seq, base, end in known.batches:
            if (first_seq, last_seq) == (seq, last):
                raise Duplicate(base, end)
        expected = (known.last_sequence + 1) % _SEQ_MOD
        if seq != expected:
            raise ProducerStateError(
                f"producer {header.producer_id}: sequence {seq}, expected {expected}",
                OUT_OF_ORDER_SEQUENCE_NUMBER,
            )

    def record(self, header: BatchHeader, base_offset: int) -> None:
        """Remember a batch that was appended at base_offset. A transaction marker carries the
        coordinator's epoch for the producer: a newer one fences the older epoch here too."""
        if header.producer_id < 0:
            return
        known = self._producers.get(header.producer_id)
        if header.control:
            if known is not None and header.producer_epoch > known.epoch:
                self._producers[header.producer_id] = _Producer(header.producer_epoch)
            return
        if known is None or header.producer_epoch > known.epoch:
            known = self._producers[header.producer_id] = _Producer(header.producer_epoch)
        known.batches.append(
            (
                header.base_sequence,
                _last_sequence(header),
                base_offset,
                base_offset + header.last_offset_delta,
            )
        )

    def observe(self, header: BatchHeader) -> None:
        """Replay a batch read back from the log (its base offset is in the header)."""
        self.record(header, header.base_offset)

    def clone(self) -> ProducerStates:
        """A copy to check a multi-batch record set against before anything is written."""
        other = ProducerStates()
        for pid, known in self._producers.items():
            copy = other._producers[pid] = _Producer(known.epoch)
            copy.batches.extend(known.batches)
        return other

    def epoch_of(self, producer_id: int) -> int | None:
        known = self._producers.get(producer_id)
        return None if known is None else known.epoch
