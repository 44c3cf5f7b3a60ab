"""One segment of a partition's log: record batches back to back, plus two sparse indexes.

The book's write-ahead log is cut into segments so old data can be dropped a file at a time:
the active segment takes appends, the others are read-only until retention deletes them.
Files are named by the segment's base offset, as Kafka names them:

- `NNNNNNNNNNNNNNNNNNNN.log`: v2 record batches exactly as the producer sent them, the base
  offset rewritten by the broker (batch.py has the header layout; each batch carries its CRC).
- `.index`: every ~4 KiB of log, an entry (offset relative to the segment's base u32, byte
  position u32), big-endian, ascending: binary search gives the batch to start scanning at.
- `.timeindex`: entries (max timestamp so far i64, relative offset u32) when the segment's max
  timestamp grows, ascending in both: the first batch with a timestamp >= t.

The indexes are hints rebuilt from the log after a crash, so they never need an fsync of their
own: on open, the active segment is scanned from its last index entry, every batch's CRC is
checked, a torn tail is cut off, and index entries past the valid end are dropped.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scalelab.message_queue.batch import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchError,
    BatchHeader,
    record_timestamps,
)
from scalelab.message_queue.files import fsync_dir

log = logging.getLogger(__name__)

INDEX_ENTRY = struct.Struct(">II")
TIME_ENTRY = struct.Struct(">qI")
INDEX_INTERVAL_BYTES = 4096
_BASE_OFFSET = struct.Struct(">q")


def file_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


def _close_fds(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


@dataclass
class Segment:
    """A segment's files, and what is known of them without reading the log again."""

    directory: Path
    base_offset: int
    fd: int = -1
    size: int = 0  # bytes of valid batches
    next_offset: int = 0  # one past the last offset in the segment
    max_timestamp: int = -1
    synced: int = 0  # bytes known durable
    readonly: bool = False
    created: float = 0.0  # for rolling by age (mtime of the log when reopened)
    _offsets: list[int] = field(default_factory=list)  # index: relative offsets
    _positions: list[int] = field(default_factory=list)  # index: byte positions
    _times: list[int] = field(default_factory=list)  # time index: timestamps
    _time_offsets: list[int] = field(default_factory=list)  # time index: relative offsets
    _since_index: int = 0  # bytes appended since the last index entry
    _index_fd: int = -1
    _time_fd: int = -1

    @property
    def log_path(self) -> Path:
        return self.directory / file_name(self.base_offset, ".log")

    @property
    def index_path(self) -> Path:
        return self.directory / file_name(self.base_offset, ".index")

    @property
    def time_path(self) -> Path:
        return self.directory / file_name(self.base_offset, ".timeindex")

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base_offset: int, now: float) -> Segment:
        seg = cls(directory, base_offset, next_offset=base_offset, created=now)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        seg.fd = os.open(seg.log_path, flags, 0o644)
        seg._index_fd = os.open(seg.index_path, flags, 0o644)
        seg._time_fd = os.open(seg.time_path, flags, 0o644)
        fsync_dir(directory)  # the new names survive a power loss
        return seg

    @classmethod
    def open(cls, directory: Path, base_offset: int, *, active: bool) -> Segment:
        """Open an existing segment; the active one is checked batch by batch from its last
        index entry and its torn tail cut off."""
        seg = cls(directory, base_offset, next_offset=base_offset, readonly=not active)
        mode = os.O_RDWR if active else os.O_RDONLY
        seg.fd = os.open(seg.log_path, mode | os.O_CLOEXEC)
        seg.created = os.fstat(seg.fd).st_mtime
        seg._load_indexes(mode)
        seg.size = os.fstat(seg.fd).st_size
        if active:
            seg._recover()
        else:
            seg._scan_tail_metadata()
        seg.synced = seg.size
        return seg

    @classmethod
    def from_file(cls, directory: Path, base_offset: int, log_path: Path, suffix: str) -> Segment:
        """A finished read-only segment from a whole, fsynced log file (the log cleaner's
        output): every batch header is scanned and both indexes rebuilt into `.index<suffix>`
        and `.timeindex<suffix>`, fsynced, so they can be renamed into place beside the log."""
        seg = cls(directory, base_offset, next_offset=base_offset, readonly=True)
        seg.fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
        seg.created = os.fstat(seg.fd).st_mtime
        seg.size = os.fstat(seg.fd).st_size
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        seg._index_fd = os.open(str(seg.index_path) + suffix, flags, 0o644)
        seg._time_fd = os.open(str(seg.time_path) + suffix, flags, 0o644)
        for pos, header in seg.headers():
            if not seg._positions or seg._since_index >= INDEX_INTERVAL_BYTES:
                seg._add_index(header.base_offset - base_offset, pos)
            seg._add_time(header)
            seg._since_index += header.size
            seg.next_offset = header.last_offset + 1
        seg.synced = seg.size
        os.fsync(seg._index_fd)
        os.fsync(seg._time_fd)
        return seg

    def close_when_unreferenced(self) -> None:
        """For a segment just unlisted (replaced by a compacted copy): its files stay open
        until the last reader holding it lets go, so a read that listed it still succeeds."""
        weakref.finalize(self, _close_fds, self.fd, self._index_fd, self._time_fd)

    def _load_indexes(self, mode: int) -> None:
        for path, entry, keys, values, attr in (
            (self.index_path, INDEX_ENTRY, self._offsets, self._positions, "_index_fd"),
            (self.time_path, TIME_ENTRY, self._times, self._time_offsets, "_time_fd"),
        ):
            fd = os.open(path, mode | os.O_CREAT | os.O_CLOEXEC, 0o644)
            setattr(self, attr, fd)
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            usable = len(raw) - len(raw) % entry.size
            for a, b in entry.iter_unpack(raw[:usable]):
                keys.append(a)
                values.append(b)

    def _scan_from(self) -> int:
        """Where scanning the log may start: the last index entry at or before its end."""
        while self._positions and self._positions[-1] >= self.size:
            self._offsets.pop()
            self._positions.pop()
        return self._positions[-1] if self._positions else 0

    def _recover(self) -> None:
        """Validate the active segment from its last index entry; cut a torn tail; bring the
        indexes in line with what is left (they may run ahead of, or lag behind, the log)."""
        pos = self._scan_from()
        next_offset = self.base_offset + (self._offsets[-1] if self._offsets else 0)
        scanned: list[tuple[int, BatchHeader]] = []
        while pos < self.size:
            try:
                header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, pos))
                if header.length < HEADER_SIZE - LOG_OVERHEAD or pos + header.size > self.size:
                    raise BatchError("batch runs past the end of the segment", 2)
                header.check(os.pread(self.fd, header.size, pos))
            except BatchError as exc:
                log.warning("segment %s: %s at byte %d; truncating %d bytes",
                            self.log_path, exc, pos, self.size - pos)  # fmt: skip
                os.ftruncate(self.fd, pos)
                os.fsync(self.fd)
                self.size = pos
                break
            scanned.append((pos, header))
            next_offset = header.last_offset + 1
            pos += header.size
        keep = bisect.bisect_left(self._positions, self.size)
        if scanned:  # the entry at the scan start is re-added below
            keep = min(keep, bisect.bisect_left(self._positions, scanned[0][0]))
        del self._offsets[keep:], self._positions[keep:]
        os.ftruncate(self._index_fd, keep * INDEX_ENTRY.size)
        keep_t = bisect.bisect_left(self._time_offsets, next_offset - self.base_offset)
        del self._times[keep_t:], self._time_offsets[keep_t:]
        os.ftruncate(self._time_fd, keep_t * TIME_ENTRY.size)
        self.max_timestamp = self._times[-1] if self._times else -1
        start = scanned[0][0] if scanned else self.size
        self._since_index = start - (self._positions[-1] if self._positions else 0)
        for at, header in scanned:
            if self._since_index >= INDEX_INTERVAL_BYTES or not self._positions:
                self._add_index(header.base_offset - self.base_offset, at)
            self._add_time(header)
            self._since_index += header.size
        self.next_offset = next_offset

    def _scan_tail_metadata(self) -> None:
        """next_offset and max_timestamp from the batches after the last index entry."""
        pos = self._positions[-1] if self._positions else 0
        last_offset, max_ts = self.base_offset - 1, self._times[-1] if self._times else -1
        while pos + HEADER_SIZE <= self.size:
            header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, pos))
            last_offset, max_ts = header.last_offset, max(max_ts, header.max_timestamp)
            pos += header.size
        self.next_offset = last_offset + 1
        self.max_timestamp = max_ts
        self._since_index = self.size - (self._positions[-1] if self._positions else 0)

    # ---- writing ------------------------------------------------------------------------

    def append(self, batch: bytes | bytearray | memoryview, header: BatchHeader) -> int:
        """Append one batch at this log's next offset, header.base_offset; its position. The
        batch's own first 8 bytes (the producer's base offset) are replaced on the way to the
        disk, by a gathered write: the batch itself is never copied (the CRC does not cover
        the base offset, so it stays valid).

        Index entries go first: if the log write is lost they point past the end and are
        dropped on recovery; never the other way round.
        """
        pos = self.size
        if not self._positions or self._since_index >= INDEX_INTERVAL_BYTES:
            self._add_index(header.base_offset - self.base_offset, pos)
        self._add_time(header)
        view = memoryview(batch)
        written = os.pwritev(self.fd, [_BASE_OFFSET.pack(header.base_offset), view[8:]], pos)
        if written != len(batch):
            os.ftruncate(self.fd, pos)
            raise OSError(f"short write to {self.log_path}: {written} of {len(batch)} bytes")
        self.size = pos + len(batch)
        self._since_index += len(batch)
        self.next_offset = header.last_offset + 1
        return pos

    def _add_index(self, relative_offset: int, position: int) -> None:
        os.pwrite(
            self._index_fd,
            INDEX_ENTRY.pack(relative_offset, position),
            len(self._offsets) * INDEX_ENTRY.size,
        )
        self._offsets.append(relative_offset)
        self._positions.append(position)
        self._since_index = 0

    def _add_time(self, header: BatchHeader) -> None:
        if header.max_timestamp <= self.max_timestamp:
            return
        rel = header.last_offset - self.base_offset
        entry = TIME_ENTRY.pack(header.max_timestamp, rel)
        os.pwrite(self._time_fd, entry, len(self._times) * TIME_ENTRY.size)
        self._times.append(header.max_timestamp)
        self._time_offsets.append(rel)
        self.max_timestamp = header.max_timestamp

    def sync(self) -> None:
        """fdatasync the log up to its current size (indexes are rebuilt, never synced)."""
        end = self.size
        if self.synced < end:
            os.fdatasync(self.fd)
            self.synced = max(self.synced, end)

    # ---- reading ------------------------------------------------------------------------

    def position_of(self, offset: int) -> int | None:
        """Byte position of the batch holding offset, or None if it is past this segment."""
        if offset >= self.next_offset:
            return None
        i = bisect.bisect_right(self._offsets, offset - self.base_offset) - 1
        pos = self._positions[i] if i >= 0 else 0
        while pos + HEADER_SIZE <= self.size:
            header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, pos))
            if header.last_offset >= offset:
                return pos
            pos += header.size
        return None

    def headers(self) -> Iterator[tuple[int, BatchHeader]]:
        """Every batch's position and header, in order (rebuilding producer and transaction
        state on open)."""
        pos = 0
        while pos + HEADER_SIZE <= self.size:
            header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, pos))
            yield pos, header
            pos += header.size

    def read_batch(self, position: int, header: BatchHeader) -> bytes:
        return os.pread(self.fd, header.size, position)

    def read(self, position: int, max_bytes: int, upto: int | None = None) -> bytes:
        """Whole batches from position, at least one, then as many as fit in max_bytes;
        `upto` (a byte position) stops before uncommitted or unstable data."""
        end = self.size if upto is None else min(upto, self.size)
        if position >= end:
            return b""
        first = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, position))
        stop = position + first.size
        while stop + HEADER_SIZE <= end:
            header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, stop))
            if stop + header.size - position > max_bytes or stop + header.size > end:
                break
            stop += header.size
        return os.pread(self.fd, min(stop, end) - position, position)

    def offset_for_time(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= timestamp, if any here.

        The time index finds the batch; the batch's records are then decoded (and
        decompressed) to find the record: ListOffsets is not the hot path, and Kafka answers
        with the exact record too.
        """
        i = bisect.bisect_left(self._times, timestamp)
        if i == len(self._times):
            return None
        start = self._time_offsets[i - 1] + 1 if i > 0 else 0
        pos = self.position_of(self.base_offset + start)
        while pos is not None and pos + HEADER_SIZE <= self.size:
            header = BatchHeader.parse(os.pread(self.fd, HEADER_SIZE, pos))
            if header.max_timestamp >= timestamp and not header.control:
                for offset, ts in record_timestamps(os.pread(self.fd, header.size, pos)):
                    if ts >= timestamp:
                        return offset, ts
            pos += header.size
        return None

    # ---- closing ------------------------------------------------------------------------

    def close(self) -> None:
        for fd in (self.fd, self._index_fd, self._time_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self._index_fd = self._time_fd = -1

    def delete(self) -> None:
        """Remove the files of a segment retention just unlisted; a read that listed it before
        keeps its open files until it lets go (unlinked files stay readable)."""
        for path in (self.log_path, self.index_path, self.time_path):
            path.unlink(missing_ok=True)
        self.close_when_unreferenced()
