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
from collections.abc import Iterator

from scalelab.message_queue.batch import stored_batches
from scalelab.message_queue.partition import Partition

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

__all__ = ["KeyedLog", "OffsetStore"]

TOPIC = "__consumer_offsets"
_KEY_VERSION = 1
_Key = tuple[str, str, int]


def _encode_key(key: _Key) -> bytes:
    group, topic, partition = key
    return json.dumps([_KEY_VERSION, group, topic, partition]).encode()


def _decode_key(raw: bytes) -> _Key | None:
    version, group, topic, partition = json.loads(raw)
    return (group, topic, int(partition)) if version == _KEY_VERSION else None


class KeyedLog:
    """Key/value records in an internal topic's partition, where the last record per key wins
    (a compacted topic's semantics) and a null value deletes the key. The consumer offsets and
    the transaction coordinator's state both live in one."""

    def __init__(self, partition: Partition, sync: bool = True) -> None:
        self.partition = partition
        self.sync = sync
        self._lock = threading.Lock()

    def replay(self) -> Iterator[tuple[bytes, bytes | None]]:
        """Every record from the start, in log order."""
        offset = self.partition.log_start_offset
        while offset < self.partition.log_end_offset:
            data = self.partition.read(offset, 1 << 20)
            if not data:
                break
            for header, view in stored_batches(data):  # compacted batches too
                offset = header.last_offset + 1
                if header.control:
                    continue
                for record in DefaultRecordBatch(bytes(view)):
                    if record.key is not None:
                        yield record.key, record.value

    def append(self, items: list[tuple[bytes, bytes | None]]) -> None:
        """Append records as one batch: durable on return when `sync`."""
        if not items:
            return
        builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
        now = int(time.time() * 1000)
        for i, (key, value) in enumerate(items):
            builder.append(i, timestamp=now, key=key, value=value, headers=[])
        with self._lock:
            self.partition.append(bytes(builder.build()))
            if self.sync:
                self.partition.sync()


class OffsetStore:
    """Committed offsets in memory, every change appended (and synced) to the log first."""

    def __init__(self, partition: Partition, sync: bool = True) -> None:
        self.log = KeyedLog(partition, sync)
        self._lock = threading.Lock()
        self.offsets: dict[_Key, tuple[int, str | None]] = {}
        for raw_key, raw_value in self.log.replay():
            key = _decode_key(raw_key)
            if key is None:
                continue
            if raw_value is None:
                self.offsets.pop(key, None)
            else:
                value = json.loads(raw_value)
                self.offsets[key] = (int(value["offset"]), value.get("metadata"))

    def commit(self, group: str, entries: dict[tuple[str, int], tuple[int, str | None]]) -> None:
        """Store several partitions' offsets for a group: one batch, durable on return."""
        items: list[tuple[bytes, bytes | None]] = [
            (
                _encode_key((group, topic, part)),
                json.dumps({"offset": offset, "metadata": meta}).encode(),
            )
            for (topic, part), (offset, meta) in entries.items()
        ]
        with self._lock:
            self.log.append(items)
            for (topic, part), committed in entries.items():
                self.offsets[(group, topic, part)] = committed

    def fetch(self, group: str, topic: str, partition: int) -> tuple[int, str | None]:
        return self.offsets.get((group, topic, partition), (-1, None))

    def group_partitions(self, group: str) -> list[tuple[str, int]]:
        return sorted((t, p) for g, t, p in self.offsets if g == group)

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.offsets}
