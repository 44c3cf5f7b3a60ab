"""Log compaction for topics whose cleanup.policy contains "compact", as Kafka's log cleaner does.

A compacted topic keeps, for every key, at least its last record: `__consumer_offsets` needs
no more to rebuild the committed offsets, and a changelog topic no more to rebuild a table.

One pass over a partition:
1. The offset map: key -> offset of its last record, over the read-only segments (the active
   segment is never read nor touched, so records in it do not supersede older ones yet).
2. The read-only segments, in groups of consecutive ones whose sizes sum to at most
   segment.bytes, are copied into `<base>.log.cleaned` keeping, batch by batch, only records
   that are the last for their key. Offsets never change: a rewritten v2 batch keeps its base
   offset, last offset delta, producer id, epoch and base sequence, only its record count
   shrinks (consumers move on to the batch's last offset + 1), and it is re-compressed with
   its own codec. A group that would not change is not written.
3. Tombstones (null values) that are the last for their key stay until delete.retention.ms
   after the pass that first kept them: that pass stamps the delete horizon in the batch
   (attribute bit 6, the base timestamp holds the horizon and record timestamps are deltas
   from it, Kafka's KIP-534); a pass after the horizon drops them.
4. Swap, under the partition lock: fsync the copy, rename it `.log.swap` (the commit point),
   rename its rebuilt indexes into place, delete the group's other segments, rename the swap
   over `<base>.log`, fsyncing the directory between. `recover_interrupted`, run when a
   partition opens, deletes `.cleaned` leftovers and finishes any `.swap`: a crash at any
   step leaves the old segments or the new one, never a mix.

Choices where Kafka's rules need what this broker does not have (say so, not hide it):
- Records with a null key cannot be compacted; Kafka refuses them at produce time for such
  topics and its cleaner drops any it finds. This cleaner drops them too.
- Transactional batches and control batches (markers) are kept as they are, and their records
  do not enter the offset map: without the aborted-transaction index consulted here, an
  aborted write must not supersede a committed one. Conservative: a key written in
  transactions keeps its older values.
- A batch left with no records is dropped, unless it is its producer's last batch in the log:
  then an empty batch (header only, record count 0) stays, so the producer's sequence and
  epoch are still rebuilt from headers when the partition opens (Kafka does the same).
- Replaced segments are unlisted under the lock but closed only when the last reference goes
  (`Segment.close_when_unreferenced`), so a read that listed them finishes on their files.
- No checkpoint file: which offsets were cleaned is kept in memory (`LogCleaner`), so after a
  restart the first pass reads every read-only segment again.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from awscrt.checksums import crc32c

from scalelab.message_queue.batch import (
    COMPRESSION_MASK,
    HEADER_SIZE,
    BatchError,
    BatchHeader,
    decode_varint,
    encode_varint,
)
from scalelab.message_queue.files import fsync_dir
from scalelab.message_queue.segment import Segment, file_name

if TYPE_CHECKING:
    from scalelab.message_queue.partition import Partition

__all__ = ["CleanStats", "LogCleaner", "clean", "recover_interrupted"]

log = logging.getLogger(__name__)

DELETE_HORIZON = 0x40  # batch attribute: the base timestamp is the tombstones' delete horizon
LOG_APPEND_TIME = 0x08
CLEANED, SWAP = ".cleaned", ".swap"
_SWAP_NAME = re.compile(r"^(\d{20})\.log\.swap$")
_LOG_NAME = re.compile(r"^(\d{20})\.log$")
_BATCH_TAIL = struct.Struct(">hiqqqhii")  # attributes .. record count: the CRC'd header part
_BATCH_HEAD = struct.Struct(">qiibI")  # base offset, length, leader epoch, magic, CRC
MAX_GROUP_SPAN = (1 << 31) - 1  # offsets relative to a segment's base fit an index entry
Step = Callable[[str], None]


def _no_step(name: str) -> None:
    pass


# ---- the v2 record layout (inside a batch, after decompression) --------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """What compaction needs of a record; `tail` (offset delta onwards: key, value, headers)
    is copied verbatim, only the timestamp delta is re-encoded."""

    attributes: int
    timestamp: int
    offset_delta: int
    key: bytes | None
    tombstone: bool
    tail: bytes


def decode_records(payload: bytes, count: int, base_timestamp: int) -> list[Record]:
    out = []
    pos = 0
    for _ in range(count):
        length, pos = decode_varint(payload, pos)
        end = pos + length
        if length < 1 or end > len(payload):
            raise BatchError(f"record of {length} bytes runs past its batch", 2)
        ts_delta, tail = decode_varint(payload, pos + 1)
        offset_delta, p = decode_varint(payload, tail)
        key_len, p = decode_varint(payload, p)
        key = None if key_len < 0 else payload[p : p + key_len]
        value_len, _ = decode_varint(payload, p + max(key_len, 0))
        out.append(
            Record(
                payload[pos],
                base_timestamp + ts_delta,
                offset_delta,
                key,
                value_len < 0,
                payload[tail:end],
            )
        )
        pos = end
    return out


def encode_record(record: Record, base_timestamp: int) -> bytes:
    body = (
        bytes([record.attributes]) + encode_varint(record.timestamp - base_timestamp) + record.tail
    )
    return encode_varint(len(body)) + body


# ---- compression: each batch keeps its own codec ------------------------------------------


def _codec(kind: int) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import codec as c
    table = {
        1: (c.gzip_encode, c.gzip_decode),
        2: (c.snappy_encode, c.snappy_decode),
        3: (c.lz4_encode, c.lz4_decode),
        4: (c.zstd_encode, c.zstd_decode),
    }
    if kind not in table:
        raise BatchError(f"unknown compression codec {kind}", 2)
    return table[kind]


def encode_batch(
    header: BatchHeader, records: list[Record], base_timestamp: int, attributes: int
) -> bytes:
    """A batch in header's place (same base offset, last offset delta and producer fields)
    holding records; an empty list makes Kafka's empty batch (record count 0)."""
    payload = b"".join(encode_record(r, base_timestamp) for r in records)
    if records and attributes & COMPRESSION_MASK:
        payload = _codec(attributes & COMPRESSION_MASK)[0](payload)
    if records and not attributes & LOG_APPEND_TIME:
        max_ts = max(r.timestamp for r in records)
    else:
        max_ts = header.max_timestamp
    body = (
        _BATCH_TAIL.pack(
            attributes,
            header.last_offset_delta,
            base_timestamp,
            max_ts,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            len(records),
        )
        + payload
    )
    length = 4 + 1 + 4 + len(body)
    head = _BATCH_HEAD.pack(header.base_offset, length, header.leader_epoch, 2, crc32c(body))
    return head + body


def batch_records(raw: bytes, header: BatchHeader) -> list[Record]:
    payload = raw[HEADER_SIZE:]
    if header.attributes & COMPRESSION_MASK and header.record_count:
        payload = _codec(header.attributes & COMPRESSION_MASK)[1](payload)
    return decode_records(bytes(payload), header.record_count, header.base_timestamp)


# ---- one batch ----------------------------------------------------------------------------


@dataclass
class CleanStats:
    groups_rewritten: int = 0
    segments_before: int = 0
    segments_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    keyless_removed: int = 0
    clean_end: int = -1  # one past the last offset this pass looked at
    next_horizon: int | None = None  # the earliest delete horizon still pending (ms)
    _horizons: list[int] = field(default_factory=list, repr=False)


def clean_batch(
    raw: bytes,
    header: BatchHeader,
    latest: dict[bytes, int],
    keep_empty: bool,
    now_ms: int,
    delete_retention_ms: int,
    stats: CleanStats,
) -> bytes | None:
    """The batch to write in raw's place (raw itself when nothing changes), or None."""
    if header.control or header.transactional:
        return raw
    if header.record_count == 0:  # an empty batch from an earlier pass
        return raw if keep_empty else None
    records = batch_records(raw, header)
    has_horizon = bool(header.attributes & DELETE_HORIZON)
    expired = has_horizon and now_ms >= header.base_timestamp
    kept = []
    for r in records:
        if r.key is None:
            stats.keyless_removed += 1
        elif latest.get(r.key) != header.base_offset + r.offset_delta:
            pass  # superseded by a later record for its key
        elif r.tombstone and expired:
            stats.tombstones_removed += 1
        else:
            kept.append(r)
    stats.records_removed += len(records) - len(kept)
    tombstones = any(r.tombstone for r in kept)
    if tombstones:
        horizon = header.base_timestamp if has_horizon else now_ms + delete_retention_ms
        stats._horizons.append(horizon)
    if len(kept) == len(records) and (has_horizon or not tombstones):
        return raw
    if not kept:
        empty_attrs = header.attributes & ~(COMPRESSION_MASK | DELETE_HORIZON)
        return encode_batch(header, [], header.max_timestamp, empty_attrs) if keep_empty else None
    if tombstones:
        return encode_batch(header, kept, horizon, header.attributes | DELETE_HORIZON)
    return encode_batch(header, kept, kept[0].timestamp, header.attributes & ~DELETE_HORIZON)


# ---- one pass over a partition ------------------------------------------------------------


def _batches(seg: Segment) -> Iterator[tuple[BatchHeader, bytes]]:
    for pos, header in seg.headers():
        yield header, os.pread(seg.fd, header.size, pos)


def _offset_map(segments: list[Segment]) -> tuple[dict[bytes, int], dict[int, int]]:
    """key -> offset of its last record; producer id -> base offset of its last batch."""
    latest: dict[bytes, int] = {}
    last_batch: dict[int, int] = {}
    for seg in segments:
        for header, raw in _batches(seg):
            if header.producer_id >= 0:
                last_batch[header.producer_id] = header.base_offset
            if header.control or header.transactional or header.record_count == 0:
                continue
            for r in batch_records(raw, header):
                if r.key is not None:
                    latest[r.key] = header.base_offset + r.offset_delta
    return latest, last_batch


def _groups(segments: list[Segment], max_bytes: int) -> list[list[Segment]]:
    groups: list[list[Segment]] = []
    for seg in segments:
        g = groups[-1] if groups else None
        if (
            g
            and sum(s.size for s in g) + seg.size <= max_bytes
            and seg.next_offset - g[0].base_offset <= MAX_GROUP_SPAN
        ):
            g.append(seg)
        else:
            groups.append([seg])
    return groups


def clean(partition: Partition, now_ms: int | None = None, step: Step = _no_step) -> CleanStats:
    """Compact partition's read-only segments once; `step` is called at each swap step (tests
    raise from it to simulate a crash there)."""
    stats = CleanStats()
    if "compact" not in partition.config.cleanup_policy:
        return stats
    if now_ms is None:
        now_ms = int(partition.clock() * 1000)
    with partition._lock:
        segments = list(partition._segments)
    cleanable, active = segments[:-1], segments[-1]
    if not cleanable:
        return stats
    latest, last_batch = _offset_map(cleanable)
    for _, header in active.headers():  # producers still writing keep their last batch there
        last_batch.pop(header.producer_id, None)
    keep_empty = set(last_batch.values())
    for group in _groups(cleanable, partition.config.segment_bytes):
        _clean_group(partition, group, latest, keep_empty, now_ms, stats, step)
    stats.clean_end = cleanable[-1].next_offset
    stats.next_horizon = min(stats._horizons, default=None)
    if stats.groups_rewritten:
        log.info(
            "%s: compacted %d segments (%d bytes) into %d (%d bytes), %d records removed",
            partition.directory.name,
            stats.segments_before,
            stats.bytes_before,
            stats.segments_after,
            stats.bytes_after,
            stats.records_removed,
        )
    return stats


def _clean_group(
    partition: Partition,
    group: list[Segment],
    latest: dict[bytes, int],
    keep_empty: set[int],
    now_ms: int,
    stats: CleanStats,
    step: Step,
) -> None:
    base, directory = group[0].base_offset, partition.directory
    cleaned = directory / file_name(base, ".log" + CLEANED)
    changed = len(group) > 1  # merging small segments is worth a rewrite by itself
    retention = partition.config.delete_retention_ms
    fd = os.open(cleaned, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        size = 0
        for seg in group:
            for header, raw in _batches(seg):
                out = clean_batch(
                    raw, header, latest, header.base_offset in keep_empty, now_ms, retention, stats
                )
                changed = changed or out is not raw
                if out is not None:
                    size += _write_all(fd, out)
        if changed:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not changed:
        cleaned.unlink()
        return
    new = Segment.from_file(directory, base, cleaned, CLEANED)
    if partition.replace_segments(group, new, lambda: _swap_files(group, new, cleaned, step)):
        stats.groups_rewritten += 1
        stats.segments_before += len(group)
        stats.segments_after += 1
        stats.bytes_before += sum(s.size for s in group)
        stats.bytes_after += size
        return
    new.close()  # retention or close got there first: the copy is not needed
    for suffix in (".log", ".index", ".timeindex"):
        (directory / file_name(base, suffix + CLEANED)).unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def _swap_files(group: list[Segment], new: Segment, cleaned: Path, step: Step) -> None:
    """The renames that put the copy in the group's place (run under the partition lock)."""
    directory, base = new.directory, new.base_offset
    step("cleaned")
    swap = directory / file_name(base, ".log" + SWAP)
    os.rename(cleaned, swap)
    fsync_dir(directory)  # the commit point: recovery finishes the swap from here on
    step("swap")
    for suffix in (".index", ".timeindex"):
        os.rename(
            directory / file_name(base, suffix + CLEANED), directory / file_name(base, suffix)
        )
    step("indexes")
    for seg in group[1:]:
        for path in (seg.log_path, seg.index_path, seg.time_path):
            path.unlink(missing_ok=True)
    fsync_dir(directory)
    step("deleted")
    os.rename(swap, directory / file_name(base, ".log"))
    fsync_dir(directory)
    step("renamed")


def recover_interrupted(directory: Path) -> None:
    """Before a partition lists its segments: delete a copy that never reached `.swap`, and
    finish a swap that did (indexes rebuilt from it, the segments it replaces deleted)."""
    names = sorted(os.listdir(directory))
    touched = False
    for name in names:
        if name.endswith(CLEANED):
            (directory / name).unlink()
            touched = True
    bases = [int(m[1]) for n in names if (m := _LOG_NAME.match(n))]
    for name in names:
        if not (m := _SWAP_NAME.match(name)):
            continue
        base = int(m[1])
        seg = Segment.from_file(directory, base, directory / name, "")
        end = seg.next_offset
        seg.close()
        for other in bases:
            if base < other < end:
                for suffix in (".log", ".index", ".timeindex"):
                    (directory / file_name(other, suffix)).unlink(missing_ok=True)
        os.rename(directory / name, directory / file_name(base, ".log"))
        log.warning("%s: finished a compaction swap a crash interrupted (%s)", directory, name)
        touched = True
    if touched:
        fsync_dir(directory)


# ---- when to clean ------------------------------------------------------------------------


@dataclass
class _Cleaned:
    upto: int = -1  # offsets below this were cleaned by an earlier pass
    next_horizon: int | None = None


class LogCleaner:
    """Decides which partitions need a pass (Kafka's min.cleanable.dirty.ratio: the share of
    read-only bytes written since the last pass, or a delete horizon that has passed)."""

    def __init__(self) -> None:
        self._state: weakref.WeakKeyDictionary[Partition, _Cleaned] = weakref.WeakKeyDictionary()

    def needs_cleaning(self, partition: Partition, now_ms: int) -> bool:
        if "compact" not in partition.config.cleanup_policy:
            return False
        with partition._lock:
            cleanable = partition._segments[:-1]
        total = sum(s.size for s in cleanable)
        if not total:
            return False
        state = self._state.get(partition, _Cleaned())
        if state.next_horizon is not None and now_ms >= state.next_horizon:
            return True
        dirty = sum(s.size for s in cleanable if s.base_offset >= state.upto)
        return dirty > 0 and dirty / total >= partition.config.min_cleanable_dirty_ratio

    def run(self, partition: Partition, now_ms: int | None = None) -> CleanStats | None:
        """One pass if the partition needs it; its stats, or None."""
        if now_ms is None:
            now_ms = int(partition.clock() * 1000)
        if not self.needs_cleaning(partition, now_ms):
            return None
        stats = clean(partition, now_ms)
        self._state[partition] = _Cleaned(stats.clean_end, stats.next_horizon)
        return stats
