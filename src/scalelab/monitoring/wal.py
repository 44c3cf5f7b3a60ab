"""The head block's write-ahead log: a commit is acknowledged only once its records are on disk.

The log is a directory of numbered segment files, as in Prometheus; the head replays it at
start so a `kill -9` loses no committed sample. Concurrent committers share one fdatasync
(group commit): whoever finds no sync in flight syncs everything written so far for all.
Truncation drops whole segments whose samples are all older than the head's new lower bound,
after writing a checkpoint of the series those segments defined that are still alive.

Layout (segment indexes are 8 decimal digits):

    wal/00000001, wal/00000002, ...   segments, each at most `segment_bytes` (default 128 MiB)
                                      unless a single batch is larger
    wal/checkpoint.00000007/00000000  live series and the truncation time as of the moment
                                      segments <= 7 were dropped; replay starts here

All integers are little-endian. Segment header (16 bytes, at offset 0):

    offset size  field
    0      4     magic b"SLWL"
    4      1     format version (1)
    5      3     reserved, zero
    8      4     segment index (u32; checkpoint segments count from 0)
    12     4     CRC-32C of bytes 0..11

Then records back to back. Record (12-byte header + n payload bytes):

    0      4     payload length n (u32)
    4      1     type: 1 series, 2 samples, 3 truncate
    5      3     reserved, zero
    8      4     CRC-32C of header bytes 0..7 followed by the n payload bytes
    12     n     payload

Series payload, entries back to back until its end:

    0      8     series ref (u64)
    8      2     label count k (u16)
    10     ...   k labels, each: u16 name length, u32 value length, name, value (UTF-8)

Samples payload (columnar, so numpy encodes and decodes it in a few calls):

    0      4     sample count n (u32)
    4      1     width of each ref offset in bytes (4 or 8)
    5      1     width of each timestamp offset in bytes (4 or 8)
    6      2     reserved, zero
    8      8     base ref (u64, the smallest ref in the batch)
    16     8     base timestamp (i64 ms, the smallest in the batch)
    24     ...   n ref offsets (ref - base ref), then n timestamp offsets (t - base t, unsigned),
                 then n float64 values (IEEE-754 bits, NaN payloads kept)

Truncate payload: 8 bytes, i64 ms: samples older than this are no longer the log's to replay.

On replay a record that fails its checks ends the log: a torn tail (crash mid-write) is cut off
the last segment and logged; damage in an earlier segment cuts that segment and drops the
segments after it, logged as an error (Prometheus repairs the same way).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from awscrt.checksums import crc32c as _crc32c

from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import Labels, TimestampArray, ValueArray, format_labels

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"SLWL"
VERSION = 1
DEFAULT_SEGMENT_BYTES = 128 << 20
SERIES, SAMPLES, TRUNCATE = 1, 2, 3
RECORD_TYPES = frozenset({SERIES, SAMPLES, TRUNCATE})
SERIES_PER_RECORD = 10_000  # checkpoint series records are split so none gets huge

_SEGMENT_FIELDS = struct.Struct("<4sB3xI")
SEGMENT_HEADER = struct.Struct("<4sB3xII")
RECORD_HEADER = struct.Struct("<IB3xI")
_RECORD_FIELDS = struct.Struct("<IB3x")
SERIES_ENTRY = struct.Struct("<QH")
LABEL_HEADER = struct.Struct("<HI")
SAMPLES_HEADER = struct.Struct("<IBB2xQq")
TRUNCATE_PAYLOAD = struct.Struct("<q")
assert _SEGMENT_FIELDS.size == 12 and SEGMENT_HEADER.size == 16
assert _RECORD_FIELDS.size == 8 and RECORD_HEADER.size == 12
assert SERIES_ENTRY.size == 10 and LABEL_HEADER.size == 6
assert SAMPLES_HEADER.size == 24 and TRUNCATE_PAYLOAD.size == 8

_SEGMENT_NAME = re.compile(r"\d{8}\Z")
_CHECKPOINT_NAME = re.compile(r"checkpoint\.(\d{8})\Z")
_U32 = 1 << 32
RefArray = npt.NDArray[np.int64]


def crc32c(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    return int(_crc32c(data, previous))


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    entries: list[tuple[int, Labels]]


@dataclass(frozen=True, slots=True)
class SamplesRecord:
    refs: RefArray
    timestamps: TimestampArray
    values: ValueArray


@dataclass(frozen=True, slots=True)
class TruncateRecord:
    before: int


Record = SeriesRecord | SamplesRecord | TruncateRecord


# -- encoding ------------------------------------------------------------------------------


def segment_header(index: int) -> bytes:
    fields = _SEGMENT_FIELDS.pack(SEGMENT_MAGIC, VERSION, index)
    return fields + crc32c(fields).to_bytes(4, "little")


def frame(rtype: int, payload: bytes) -> bytes:
    """One record: header and payload, the CRC covering both."""
    fields = _RECORD_FIELDS.pack(len(payload), rtype)
    return RECORD_HEADER.pack(len(payload), rtype, crc32c(payload, crc32c(fields))) + payload


def encode_series(entries: Iterable[tuple[int, Labels]]) -> bytes:
    out = bytearray()
    for ref, labels in entries:
        out += SERIES_ENTRY.pack(ref, len(labels))
        for name, value in labels:
            n, v = name.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass")
            out += LABEL_HEADER.pack(len(n), len(v))
            out += n
            out += v
    return bytes(out)


def encode_samples(refs: RefArray, timestamps: TimestampArray, values: ValueArray) -> bytes:
    n = len(refs)
    if n == 0:
        return SAMPLES_HEADER.pack(0, 4, 4, 0, 0)
    base_ref, base_t = int(refs.min()), int(timestamps.min())
    rel_refs = (refs - base_ref).astype(np.uint64)
    rel_ts = np.asarray(timestamps, np.int64).view(np.uint64) - np.uint64(base_t % 2**64)
    ref_width = 4 if int(rel_refs.max()) < _U32 else 8  # offsets wrap mod 2**64, losslessly
    t_width = 4 if int(rel_ts.max()) < _U32 else 8
    header = SAMPLES_HEADER.pack(n, ref_width, t_width, base_ref, base_t)
    columns = (rel_refs.astype(f"<u{ref_width}"), rel_ts.astype(f"<u{t_width}"))
    return header + b"".join(c.tobytes() for c in columns) + np.asarray(values, "<f8").tobytes()


def decode_payload(rtype: int, payload: bytes | memoryview) -> Record:
    """A record's payload as a Record; StorageError when it does not parse."""
    try:
        if rtype == SERIES:
            return SeriesRecord(_decode_series(payload))
        if rtype == SAMPLES:
            return _decode_samples(payload)
        if rtype == TRUNCATE:
            return TruncateRecord(TRUNCATE_PAYLOAD.unpack(payload)[0])
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise StorageError(f"WAL record of type {rtype} does not parse: {exc}") from None
    raise StorageError(f"unknown WAL record type {rtype}")


def _decode_series(payload: bytes | memoryview) -> list[tuple[int, Labels]]:
    entries: list[tuple[int, Labels]] = []
    buf = bytes(payload)
    pos = 0
    while pos < len(buf):
        ref, count = SERIES_ENTRY.unpack_from(buf, pos)
        pos += SERIES_ENTRY.size
        labels = []
        for _ in range(count):
            nlen, vlen = LABEL_HEADER.unpack_from(buf, pos)
            pos += LABEL_HEADER.size
            if pos + nlen + vlen > len(buf):
                raise ValueError("label runs past the record")
            name = buf[pos : pos + nlen].decode("utf-8", "surrogatepass")
            value = buf[pos + nlen : pos + nlen + vlen].decode("utf-8", "surrogatepass")
            labels.append((name, value))
            pos += nlen + vlen
        entries.append((ref, tuple(labels)))
    return entries


def _decode_samples(payload: bytes | memoryview) -> SamplesRecord:
    n, ref_width, t_width, base_ref, base_t = SAMPLES_HEADER.unpack_from(payload)
    if ref_width not in (4, 8) or t_width not in (4, 8):
        raise ValueError(f"bad column widths {ref_width}/{t_width}")
    pos = SAMPLES_HEADER.size
    if len(payload) != pos + n * (ref_width + t_width + 8):
        raise ValueError(f"{len(payload)} bytes do not hold {n} samples")
    rel_refs = np.frombuffer(payload, f"<u{ref_width}", n, pos)
    pos += n * ref_width
    rel_ts = np.frombuffer(payload, f"<u{t_width}", n, pos).astype(np.uint64)
    pos += n * t_width
    values = np.frombuffer(payload, "<f8", n, pos).astype(np.float64)
    refs = rel_refs.astype(np.int64) + base_ref
    ts = (rel_ts + np.uint64(base_t % 2**64)).view(np.int64)
    return SamplesRecord(refs, ts, values)


# -- reading -------------------------------------------------------------------------------


def scan(buf: bytes | memoryview) -> tuple[list[tuple[int, int, memoryview]], int, str | None]:
    """The valid records of one segment's bytes: ([(offset, type, payload)], end of the last
    valid record, why scanning stopped early or None at a clean end)."""
    view = memoryview(buf)
    if len(view) < SEGMENT_HEADER.size:
        return [], 0, f"segment header cut short ({len(view)} bytes)"
    magic, version, _index, crc = SEGMENT_HEADER.unpack_from(view)
    if magic != SEGMENT_MAGIC or crc != crc32c(view[: _SEGMENT_FIELDS.size]):
        return [], 0, "bad segment header"
    if version != VERSION:
        return [], 0, f"unsupported WAL version {version}"
    records: list[tuple[int, int, memoryview]] = []
    pos = SEGMENT_HEADER.size
    while pos < len(view):
        if len(view) - pos < RECORD_HEADER.size:
            return records, pos, f"record header cut short at offset {pos}"
        length, rtype, crc = RECORD_HEADER.unpack_from(view, pos)
        if rtype not in RECORD_TYPES or bytes(view[pos + 5 : pos + 8]) != b"\0\0\0":
            return records, pos, f"invalid record header at offset {pos}"
        end = pos + RECORD_HEADER.size + length
        if end > len(view):
            return records, pos, f"record at offset {pos} runs past the end ({length} bytes)"
        payload = view[pos + RECORD_HEADER.size : end]
        if crc != crc32c(payload, crc32c(view[pos : pos + _RECORD_FIELDS.size])):
            return records, pos, f"checksum mismatch in record at offset {pos}"
        records.append((pos, rtype, payload))
        pos = end
    return records, pos, None


def segments(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if _SEGMENT_NAME.match(p.name))


def _checkpoints(directory: Path) -> list[int]:
    return sorted(
        int(m.group(1)) for p in directory.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))
    )


def _name(index: int) -> str:
    return f"{index:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_segment(path: Path, index: int) -> int:
    """A new segment with its header, durable (file and directory entry); returns its fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, segment_header(index))
        os.fsync(fd)
        _fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the log -------------------------------------------------------------------------------


class WAL:
    """An open log. Call `replay()` (and consume it) once before the first `log()`."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        if segment_bytes < SEGMENT_HEADER.size + RECORD_HEADER.size:
            raise ValueError(f"segment_bytes of {segment_bytes} is too small")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._write_lock = threading.Lock()  # order of records; segment rotation
        self._cond = threading.Condition()  # group commit state below
        self._fd = -1
        self._index = 0  # current segment
        self._size = 0  # bytes in the current segment
        self._written = 0  # position token of the end of everything written
        self._synced = 0  # position token up to which everything is durable
        self._syncing = False
        self._failed: BaseException | None = None
        self._maxt: dict[int, int | None] = {}  # segment -> newest sample timestamp in it
        self.syncs = 0  # fdatasync calls by commits (group commit folds many into one)

    @staticmethod
    def _token(index: int, offset: int) -> int:
        return (index << 40) | offset

    # replay

    def replay(self) -> Iterator[Record]:
        """Every record from the latest checkpoint on, repairing a torn or damaged tail."""
        for stale in self.directory.glob("checkpoint.*.tmp"):
            shutil.rmtree(stale)
        checkpoints = _checkpoints(self.directory)
        first = 1
        if checkpoints:
            first = checkpoints[-1] + 1
            cp_dir = self.directory / f"checkpoint.{_name(checkpoints[-1])}"
            for index in segments(cp_dir):
                buf = (cp_dir / _name(index)).read_bytes()
                records, _end, error = scan(buf)
                if error is not None:  # written whole and fsynced before the rename
                    raise StorageError(f"WAL checkpoint {cp_dir / _name(index)}: {error}")
                for _offset, rtype, payload in records:
                    yield decode_payload(rtype, payload)
            self._remove_before(first, checkpoints[-1])
        indexes = [i for i in segments(self.directory) if i >= first]
        for pos, index in enumerate(indexes):
            if index != indexes[0] + pos:
                raise StorageError(f"WAL segment {_name(indexes[0] + pos)} is missing")
        for pos, index in enumerate(indexes):
            path = self.directory / _name(index)
            buf = path.read_bytes()
            records, end, error = scan(buf)
            maxt: int | None = None
            for _offset, rtype, payload in records:
                record = decode_payload(rtype, payload)
                if isinstance(record, SamplesRecord) and len(record.timestamps):
                    newest = int(record.timestamps.max())
                    maxt = newest if maxt is None else max(maxt, newest)
                yield record
            self._maxt[index] = maxt
            if error is None:
                continue
            later = indexes[pos + 1 :]  # damage before the last segment is not a torn write
            what = f"dropping {len(later)} later segment(s)" if later else "a torn tail"
            report = log.error if later else log.warning
            report("WAL segment %s: %s; cutting %d bytes, %s", path, error, len(buf) - end, what)
            for gone in later:
                (self.directory / _name(gone)).unlink()
            if end == 0:  # not even a valid header: nothing in it was ever committed
                path.unlink()
                del self._maxt[index]
            else:
                with open(path, "r+b") as f:
                    f.truncate(end)
                    os.fsync(f.fileno())
            break
        self._open_for_append(first)

    def _open_for_append(self, first: int) -> None:
        existing = sorted(self._maxt)
        if existing:
            self._index = existing[-1]
            path = self.directory / _name(self._index)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            self._size = os.fstat(self._fd).st_size
        else:
            self._index = first
            self._fd = _create_segment(self.directory / _name(first), first)
            self._size = SEGMENT_HEADER.size
            self._maxt[first] = None
        self._written = self._synced = self._token(self._index, self._size)

    def _remove_before(self, first: int, keep_checkpoint: int) -> None:
        """Delete segments below first and checkpoints older than keep_checkpoint."""
        with self._write_lock:
            for index in [i for i in self._maxt if i < first]:
                del self._maxt[index]
        for index in segments(self.directory):
            if index < first:
                (self.directory / _name(index)).unlink()
        for cp in _checkpoints(self.directory):
            if cp < keep_checkpoint:
                shutil.rmtree(self.directory / f"checkpoint.{_name(cp)}")
        _fsync_dir(self.directory)

    # writing

    def log(
        self,
        series: Sequence[tuple[int, Labels]] = (),
        samples: tuple[RefArray, TimestampArray, ValueArray] | None = None,
    ) -> int:
        """Write a series record then a samples record (either may be absent), not yet
        durable; returns the token to pass to `sync`."""
        data = b""
        if series:
            data += frame(SERIES, encode_series(series))
        maxt = None
        if samples is not None and len(samples[0]):
            data += frame(SAMPLES, encode_samples(*samples))
            maxt = int(samples[1].max())
        return self._append(data, maxt)

    def _append(self, data: bytes, maxt: int | None) -> int:
        with self._write_lock:
            self._check()
            if self._size + len(data) > self.segment_bytes and self._size > SEGMENT_HEADER.size:
                self._rotate()
            try:
                _write_all(self._fd, data)
            except OSError as exc:
                self._fail(exc)
            self._size += len(data)
            if maxt is not None:
                old = self._maxt.get(self._index)
                self._maxt[self._index] = maxt if old is None else max(old, maxt)
            token = self._token(self._index, self._size)
            with self._cond:
                self._written = token
            return token

    def sync(self, token: int) -> None:
        """Return once everything up to token is on disk; one fdatasync serves all waiters."""
        with self._cond:
            while self._synced < token:
                if self._syncing:  # a sync or a rotation (fd briefly closed) is under way
                    self._cond.wait()
                    continue
                self._check()
                self._syncing = True
                target, fd = self._written, self._fd
                break
            else:
                return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()
            self._fail(exc)
        with self._cond:
            self.syncs += 1
            self._synced = max(self._synced, target)
            self._syncing = False
            self._cond.notify_all()

    def commit(
        self,
        series: Sequence[tuple[int, Labels]] = (),
        samples: tuple[RefArray, TimestampArray, ValueArray] | None = None,
    ) -> None:
        self.sync(self.log(series, samples))

    def _rotate(self) -> None:
        """Close the current segment durably and start the next (write lock held)."""
        with self._cond:
            while self._syncing:
                self._cond.wait()
            self._syncing = True  # no group sync may touch the fd we are about to close
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            done = self._token(self._index, self._size)
            self._index += 1
            self._fd = _create_segment(self.directory / _name(self._index), self._index)
            self._size = SEGMENT_HEADER.size
            self._maxt[self._index] = None
        except OSError as exc:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()
            self._fail(exc)
        with self._cond:
            self._synced = max(self._synced, done)
            self._written = self._token(self._index, self._size)
            self._syncing = False
            self._cond.notify_all()

    def _check(self) -> None:
        if self._failed is not None:
            raise StorageError(f"WAL {self.directory} failed earlier: {self._failed}")
        if self._fd < 0:
            raise StorageError(f"WAL {self.directory} is not open (replay it first)")

    def _fail(self, exc: OSError) -> None:
        """After a failed write or fsync nothing later can be trusted to be durable."""
        self._failed = exc
        raise StorageError(f"WAL {self.directory}: {exc}") from exc

    # truncation

    def truncate(self, before: int, live_series: Callable[[], Iterable[tuple[int, Labels]]]) -> int:
        """Record that samples older than `before` are gone, and drop the oldest segments that
        hold nothing newer, checkpointing the series still alive; returns segments dropped."""
        with self._write_lock:
            self._check()
            current = self._maxt.get(self._index)
            if self._size > SEGMENT_HEADER.size and (current is None or current < before):
                self._rotate()  # everything in it is old: let it go too
            last = 0
            for index in sorted(self._maxt):
                newest = self._maxt[index]
                if index == self._index or (newest is not None and newest >= before):
                    break
                last = index
            dropped = sum(1 for index in self._maxt if index <= last)
        if last:
            # after the rotation: a series logged into a dropped segment is in this listing
            self._write_checkpoint(last, before, list(live_series()))
            self._remove_before(last + 1, last)
        self.commit_truncate(before)
        return dropped

    def commit_truncate(self, before: int) -> None:
        self.sync(self._append(frame(TRUNCATE, TRUNCATE_PAYLOAD.pack(before)), None))

    def _write_checkpoint(self, last: int, before: int, live: list[tuple[int, Labels]]) -> None:
        final = self.directory / f"checkpoint.{_name(last)}"
        tmp = self.directory / f"checkpoint.{_name(last)}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        parts = [frame(TRUNCATE, TRUNCATE_PAYLOAD.pack(before))]
        for i in range(0, len(live), SERIES_PER_RECORD):
            parts.append(frame(SERIES, encode_series(live[i : i + SERIES_PER_RECORD])))
        fd = _create_segment(tmp / _name(0), 0)
        try:
            for part in parts:
                _write_all(fd, part)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(self.directory)

    def close(self) -> None:
        with self._write_lock:
            with self._cond:
                while self._syncing:
                    self._cond.wait()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def segment_range(self) -> tuple[int, int]:
        """(first, last) segment index on disk."""
        with self._write_lock:
            return min(self._maxt), max(self._maxt)


# -- dump ----------------------------------------------------------------------------------


def dump(path: Path, *, samples: bool = False) -> Iterator[str]:
    """Describe a WAL directory (checkpoint, then segments) or one segment file, record by
    record, verifying checksums; with samples=True, every sample too."""
    path = Path(path)
    if path.is_dir():
        for cp in _checkpoints(path)[-1:]:
            cp_dir = path / f"checkpoint.{_name(cp)}"
            for index in segments(cp_dir):
                yield from dump(cp_dir / _name(index), samples=samples)
        for index in segments(path):
            yield from dump(path / _name(index), samples=samples)
        return
    buf = path.read_bytes()
    number = SEGMENT_HEADER.unpack_from(buf)[2] if len(buf) >= SEGMENT_HEADER.size else None
    yield f"segment {path} index={number} bytes={len(buf)}"
    records, end, error = scan(buf)
    for offset, rtype, payload in records:
        try:
            record = decode_payload(rtype, payload)
        except StorageError as exc:
            yield f"  @{offset} type={rtype} length={len(payload)}: {exc}"
            continue
        yield from _describe(offset, len(payload), record, samples)
    if error is not None:
        yield f"  @{end} invalid: {error} ({len(buf) - end} bytes)"


def _describe(offset: int, length: int, record: Record, samples: bool) -> Iterator[str]:
    at = f"  @{offset}"
    if isinstance(record, TruncateRecord):
        yield f"{at} truncate length={length} before={record.before}"
    elif isinstance(record, SeriesRecord):
        yield f"{at} series length={length} count={len(record.entries)}"
        yield from (f"    ref={ref} {format_labels(labels)}" for ref, labels in record.entries)
    else:
        refs, ts, vs = record.refs.tolist(), record.timestamps.tolist(), record.values.tolist()
        span = f" refs={min(refs)}..{max(refs)} t={min(ts)}..{max(ts)}" if refs else ""
        yield f"{at} samples length={length} count={len(refs)}{span}"
        if samples:
            yield from (f"    ref={r} t={t} v={v!r}" for r, t, v in zip(refs, ts, vs, strict=True))
