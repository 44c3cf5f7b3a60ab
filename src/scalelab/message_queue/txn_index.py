"""A partition's view of transactions: which are open, where the stable end is, which aborted.

Transactional producers write their batches into the log as they go; the transaction
coordinator ends each transaction by appending a control batch (a COMMIT or ABORT marker) to
every partition the transaction touched. A read_committed consumer must not see past the first
offset of a transaction still open (the last stable offset, LSO), and must be told which
producer's records to drop because their transaction aborted; a Fetch response carries those as
`aborted_transactions` (producer id, first offset), and the client skips that producer's
records from the first offset up to its ABORT marker.

Pure state, rebuilt from batch headers whenever the partition opens (Kafka keeps a `.txnindex`
file per segment for the aborted list; replaying headers gives the same answer without a
second file to keep in step with the log).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from scalelab.message_queue.batch import ABORT, BatchHeader

__all__ = ["AbortedTxn", "TxnIndex"]


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    producer_id: int
    first_offset: int
    last_offset: int  # the ABORT marker's offset


class TxnIndex:
    def __init__(self) -> None:
        self.ongoing: dict[int, int] = {}  # producer id -> first offset of its open transaction
        self._aborted: list[AbortedTxn] = []  # ascending last_offset (markers are appended)
        self._aborted_ends: list[int] = []

    def on_batch(self, header: BatchHeader, base_offset: int) -> None:
        """A transactional data batch was appended at base_offset."""
        if header.transactional and not header.control:
            self.ongoing.setdefault(header.producer_id, base_offset)

    def on_marker(self, producer_id: int, kind: int, offset: int) -> None:
        """A marker for producer_id's open transaction was appended at offset."""
        first = self.ongoing.pop(producer_id, None)
        if first is not None and kind == ABORT:
            self._aborted.append(AbortedTxn(producer_id, first, offset))
            self._aborted_ends.append(offset)

    def is_open(self, producer_id: int) -> bool:
        return producer_id in self.ongoing

    def last_stable_offset(self, log_end_offset: int) -> int:
        return min(self.ongoing.values(), default=log_end_offset)

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions that overlap offsets [start, end)."""
        i = bisect.bisect_left(self._aborted_ends, start)
        return [a for a in self._aborted[i:] if a.first_offset < end]

    def forget_before(self, log_start_offset: int) -> None:
        """Retention deleted everything before log_start_offset."""
        i = bisect.bisect_left(self._aborted_ends, log_start_offset)
        del self._aborted[:i], self._aborted_ends[:i]
        self.ongoing = {p: max(o, log_start_offset) for p, o in self.ongoing.items()}
