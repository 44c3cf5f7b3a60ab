"""The book's state storage: consumer groups' committed offsets, kept in a log of their own.

Like Kafka's `__consumer_offsets`, commits are records appended to an internal topic's
partition (key: group, topic, partition; value: offset and metadata), so they share the log's
format, its CRCs and its recovery; on start the log is read from the beginning and the last
record per key wins (a compacted topic's semantics). The records are ours, versioned by their
first byte, as Kafka versions its own.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

from scalelab.message_queue.batch import BatchHeader, split
from scalelab.message_queue.partition import Partition

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

__all__ = ["OffsetStore"]

TOPIC = "__consumer_offsets"
_KEY_VERSION = 1
_Key = tuple[str, str, int]


def _encode_key(key: _Key) -> bytes:
    group, topic, partition = key
    return json.dumps([_KEY_VERSION, group, topic, partition]).encode()


def _decode_key(raw: bytes) -> _Key | None:
    version, group, topic, partition = json.loads(raw)
    return (group, topic, int(partition)) if version == _KEY_VERSION else None


class OffsetStore:
    """Committed offsets in memory, every change appended (and synced) to the log first."""

    def __init__(self, partition: Partition, sync: bool = True) -> None:
        self.partition = partition
        self.sync = sync
        self._lock = threading.Lock()
        self.offsets: dict[_Key, tuple[int, str | None]] = {}
        self._replay()

    def _replay(self) -> None:
        offset = self.partition.log_start_offset
        while offset < self.partition.log_end_offset:
            data = self.partition.read(offset, 1 << 20)
            if not data:
                break
            for header, view in split(data):
                self._apply(header, bytes(view))
                offset = header.last_offset + 1

    def _apply(self, header: BatchHeader, raw: bytes) -> None:
        if header.control:
            return
        for record in DefaultRecordBatch(raw):
            key = _decode_key(record.key)
            if key is None:
                continue
            if record.value is None:
                self.offsets.pop(key, None)
            else:
                value = json.loads(record.value)
                self.offsets[key] = (int(value["offset"]), value.get("metadata"))

    def commit(self, group: str, entries: dict[tuple[str, int], tuple[int, str | None]]) -> None:
        """Store several partitions' offsets for a group: one batch, durable on return."""
        if not entries:
            return
        builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
        now = int(time.time() * 1000)
        for i, ((topic, part), (offset, meta)) in enumerate(entries.items()):
            value = json.dumps({"offset": offset, "metadata": meta}).encode()
            builder.append(i, timestamp=now, key=_encode_key((group, topic, part)),
                           value=value, headers=[])  # fmt: skip
        with self._lock:
            self.partition.append(bytes(builder.build()))
            if self.sync:
                self.partition.sync()
            for (topic, part), committed in entries.items():
                self.offsets[(group, topic, part)] = committed

    def fetch(self, group: str, topic: str, partition: int) -> tuple[int, str | None]:
        return self.offsets.get((group, topic, partition), (-1, None))

    def group_partitions(self, group: str) -> list[tuple[str, int]]:
        return sorted((t, p) for g, t, p in self.offsets if g == group)

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.offsets}
