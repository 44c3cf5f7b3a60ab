"""The on-disk format of a data file: many objects' records packed into one append-only file.

The book packs small objects into large files so the file system holds a few big files
instead of millions of tiny ones; the object lookup table (datanode.py) says where each
record is. Every record carries its own CRC-32C, so a bit flip on disk or a torn append is
caught on read instead of being served. All integers are little-endian.

File header (24 bytes, at offset 0):

    offset size  field
    0      4     magic b"SLDF"
    4      1     format version (1)
    5      3     reserved, zero
    8      8     file id (u64, also in the file name)
    16     4     CRC-32C of bytes 0..15
    20     4     reserved, zero

Then records, back to back, until end of file. Record header (40 bytes):

    offset size  field
    0      4     magic b"SLRC"
    4      1     format version (1)
    5      1     kind (1 = object data)
    6      2     flags (bit 0: the object's last record, written at commit; other bits zero)
    8      16    object id (the uuid's 16 bytes)
    24     4     sequence number of this record within its object (u32, from 0)
    28     4     data length n (u32)
    32     4     CRC-32C of the n data bytes
    36     4     CRC-32C of header bytes 0..35

followed by the n data bytes. The header CRC is checked before its length is trusted, so a
torn or garbled tail is recognised without reading past it.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awscrt.checksums import crc32c as _crc32c

from scalelab.objectstore.errors import CorruptObject, DataStoreError

log = logging.getLogger(__name__)

FILE_MAGIC = b"SLDF"
RECORD_MAGIC = b"SLRC"
VERSION = 1
KIND_DATA = 1
KINDS = frozenset({KIND_DATA})
# Record flags. LAST marks an object's final record, written when its writer commits: after a
# crash, a run of records seq 0..n ending in LAST is a whole object whose index rows may be
# lost (the index commits without fsync), while a run without it is an abandoned write.
FLAG_LAST = 1
FLAGS = FLAG_LAST

# The header CRC covers the fields before it, so each header is "fields" + "<I".
_FILE_FIELDS = struct.Struct("<4sB3xQ")
FILE_HEADER = struct.Struct("<4sB3xQI4x")
_RECORD_FIELDS = struct.Struct("<4sBBH16sIII")
RECORD_HEADER = struct.Struct("<4sBBH16sIIII")
FILE_HEADER_SIZE = FILE_HEADER.size
RECORD_HEADER_SIZE = RECORD_HEADER.size
MAX_RECORD_DATA = (1 << 32) - 1
assert _FILE_FIELDS.size == 16 and FILE_HEADER_SIZE == 24
assert _RECORD_FIELDS.size == 36 and RECORD_HEADER_SIZE == 40

_SCAN_READ = 1 << 20  # bytes read at a time when verifying data during a scan


class BadRecord(DataStoreError):
    """Bytes that are not a valid record (torn append, overwrite, bit flip)."""


def crc32c(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """CRC-32C (Castagnoli), hardware-accelerated by awscrt."""
    return int(_crc32c(data, previous))


@dataclass(frozen=True, slots=True)
class RecordHeader:
    kind: int
    object_id: bytes
    seq: int
    length: int
    crc: int
    flags: int = 0

    @property
    def size(self) -> int:
        """Bytes the record takes in the file, header included."""
        return RECORD_HEADER_SIZE + self.length


def encode_file_header(file_id: int) -> bytes:
    fields = _FILE_FIELDS.pack(FILE_MAGIC, VERSION, file_id)
    return FILE_HEADER.pack(FILE_MAGIC, VERSION, file_id, crc32c(fields))


def decode_file_header(buf: bytes) -> int:
    """The file id in a file header; BadRecord if it is not one."""
    if len(buf) < FILE_HEADER_SIZE:
        raise BadRecord(f"file header is {len(buf)} bytes, expected {FILE_HEADER_SIZE}")
    magic, version, file_id, crc = FILE_HEADER.unpack_from(buf)
    if magic != FILE_MAGIC:
        raise BadRecord(f"bad file magic {magic!r}")
    if crc != crc32c(memoryview(buf)[: _FILE_FIELDS.size]):
        raise BadRecord("file header checksum mismatch")
    if version != VERSION:
        raise BadRecord(f"unsupported data file version {version}")
    return int(file_id)


def encode_record_header(
    object_id: bytes, seq: int, data: bytes | memoryview, kind: int = KIND_DATA, flags: int = 0
) -> tuple[bytes, int]:
    """The header for data, and the data's CRC (the lookup table keeps it too)."""
    if len(object_id) != 16:
        raise ValueError("object id must be 16 bytes")
    if len(data) > MAX_RECORD_DATA:
        raise ValueError(f"record data of {len(data)} bytes exceeds {MAX_RECORD_DATA}")
    crc = crc32c(data)
    fields = _RECORD_FIELDS.pack(RECORD_MAGIC, VERSION, kind, flags, object_id, seq, len(data), crc)
    return fields + crc32c(fields).to_bytes(4, "little"), crc


def decode_record_header(buf: bytes | memoryview) -> RecordHeader:
    """Parse and verify a record header; BadRecord says what is wrong."""
    if len(buf) < RECORD_HEADER_SIZE:
        raise BadRecord(f"truncated record header ({len(buf)} of {RECORD_HEADER_SIZE} bytes)")
    magic, version, kind, flags, oid, seq, length, crc, hcrc = RECORD_HEADER.unpack_from(buf)
    if magic != RECORD_MAGIC:
        raise BadRecord(f"bad record magic {bytes(magic)!r}")
    if hcrc != crc32c(memoryview(buf)[: _RECORD_FIELDS.size]):
        raise BadRecord("record header checksum mismatch")
    if version != VERSION:
        raise BadRecord(f"unsupported record version {version}")
    if kind not in KINDS:
        raise BadRecord(f"unknown record kind {kind}")
    if flags & ~FLAGS:
        raise BadRecord(f"unknown record flags {flags:#x}")
    return RecordHeader(kind, bytes(oid), seq, length, crc, flags)


def create(path: Path, file_id: int) -> int:
    """Create a data file with its header, durable (file and directory entry); returns an fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, 0, encode_file_header(file_id))
        os.fsync(fd)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _write_all(fd: int, offset: int, *parts: bytes | memoryview) -> None:
    total = sum(len(p) for p in parts)
    done = os.pwritev(fd, list(parts), offset)
    if done < total:  # short write: finish the rest piece by piece
        rest = memoryview(b"".join(parts))[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + done)
            done += n
            rest = rest[n:]


def append_record(fd: int, offset: int, header: bytes, data: bytes | memoryview) -> int:
    """Write one encoded record at offset; returns its size. The caller owns the offset."""
    _write_all(fd, offset, header, data)
    return len(header) + len(data)


def read_record(fd: int, offset: int, object_id: bytes, seq: int, length: int, crc: int) -> bytes:
    """Read the record the lookup table describes and verify it, or raise CorruptObject."""
    hex_id = object_id.hex()
    if length >= 1 << 16:  # two reads: the data is not copied out of a joint buffer
        head = os.pread(fd, RECORD_HEADER_SIZE, offset)
        data = os.pread(fd, length, offset + RECORD_HEADER_SIZE)
    else:
        buf = os.pread(fd, RECORD_HEADER_SIZE + length, offset)
        head, data = buf[:RECORD_HEADER_SIZE], buf[RECORD_HEADER_SIZE:]
    try:
        header = decode_record_header(head)
    except BadRecord as exc:
        raise CorruptObject(hex_id, f"record {seq} at offset {offset}: {exc}") from None
    expected = (object_id, seq, length, crc)
    found = (header.object_id, header.seq, header.length, header.crc)
    if found != expected:
        raise CorruptObject(
            hex_id,
            f"record {seq} at offset {offset} is (object {header.object_id.hex()}, "
            f"seq {header.seq}, {header.length} bytes, crc {header.crc:#010x}), "
            f"expected ({length} bytes, crc {crc:#010x})",
        )
    if len(data) != length:
        raise CorruptObject(hex_id, f"record {seq} at offset {offset}: data cut short")
    if crc32c(data) != crc:
        raise CorruptObject(hex_id, f"record {seq} at offset {offset}: data checksum mismatch")
    return data


class RecordScan:
    """Iterate a file's records from an offset; stops at the first invalid one.

    After iteration, `end` is the offset just past the last valid record (where a torn tail
    starts) and `error` says why scanning stopped early (None at a clean end of file).
    """

    def __init__(self, fd: int, start: int, stop: int | None, verify_data: bool) -> None:
        self.fd = fd
        self.end = start
        self.stop = stop
        self.verify_data = verify_data
        self.error: str | None = None

    def __iter__(self) -> Iterator[tuple[int, RecordHeader]]:
        stop = os.fstat(self.fd).st_size if self.stop is None else self.stop
        offset = self.end
        while offset < stop:
            try:
                header = decode_record_header(os.pread(self.fd, RECORD_HEADER_SIZE, offset))
                if offset + header.size > stop:
                    raise BadRecord(
                        f"record of {header.length} bytes runs past end of file at {stop}"
                    )
                if self.verify_data and not data_ok(self.fd, offset, header):
                    raise BadRecord("data checksum mismatch")
            except BadRecord as exc:
                self.error = f"invalid record at offset {offset}: {exc}"
                return
            yield offset, header
            offset += header.size
            self.end = offset


def data_ok(fd: int, offset: int, header: RecordHeader) -> bool:
    """Whether the data of the record at offset matches its header's CRC (bounded memory)."""
    crc, pos, left = 0, offset + RECORD_HEADER_SIZE, header.length
    while left:
        piece = os.pread(fd, min(left, _SCAN_READ), pos)
        if not piece:
            return False
        crc = crc32c(piece, crc)
        pos += len(piece)
        left -= len(piece)
    return crc == header.crc


def scan(
    fd: int, start: int = FILE_HEADER_SIZE, *, stop: int | None = None, verify_data: bool = False
) -> RecordScan:
    """Records of the file from start (a record boundary) up to stop (default: end of file)."""
    return RecordScan(fd, start, stop, verify_data)


@dataclass
class FileCheck:
    """What check() found in one data file."""

    records: int = 0  # valid records
    unreferenced: int = 0  # valid records no expected row points at (garbage)
    unreferenced_bytes: int = 0
    problems: list[str] = field(default_factory=list)


def check(
    fd: int, file_id: int, stop: int, expected: Iterable[tuple[bytes, int, int, int, int]]
) -> FileCheck:
    """Verify a file up to stop: its header, every record's checksums, and that each
    expected (object id, seq, offset, length, crc) is a record there."""
    result = FileCheck()
    problems = result.problems
    try:
        if (found_id := decode_file_header(os.pread(fd, FILE_HEADER_SIZE, 0))) != file_id:
            problems.append(f"data file {file_id}: header says file {found_id}")
    except BadRecord as exc:
        problems.append(f"data file {file_id}: {exc}")
    found: dict[int, RecordHeader] = {}
    records = scan(fd, stop=stop)
    for offset, h in records:
        found[offset] = h
        if not data_ok(fd, offset, h):
            oid = h.object_id.hex()
            problems.append(f"data file {file_id} offset {offset}: object {oid} record {h.seq} "
                            "fails its data checksum")  # fmt: skip
    if records.error is not None:
        problems.append(f"data file {file_id}: {records.error} ({stop - records.end} bytes)")
    result.records = len(found)
    for object_id, seq, offset, n, crc in expected:
        rec = found.pop(offset, None)
        if rec is None or (rec.object_id, rec.seq, rec.length, rec.crc) != (object_id, seq, n, crc):
            problems.append(f"object {object_id.hex()} record {seq}: not at offset {offset} "
                            f"of data file {file_id}")  # fmt: skip
    result.unreferenced = len(found)
    result.unreferenced_bytes = sum(h.size for h in found.values())
    return result


class DataFile:
    """An open data file: its fd, append end and durable end, and who is using it.

    The node serialises appends; FileTable guards pins and refs. A retired file (compacted
    away) keeps its fd until the last reader releases it, so a reader that looked up a
    location just before compaction moved it still reads the old, intact bytes.
    """

    __slots__ = ("fd", "file_id", "path", "pins", "readonly", "refs", "retired", "size", "synced")

    def __init__(self, file_id: int, path: Path, fd: int, readonly: bool) -> None:
        self.file_id, self.path, self.fd, self.readonly = file_id, path, fd, readonly
        self.size = self.synced = os.fstat(fd).st_size  # append end; end known durable
        self.pins = 0  # writers with uncommitted records here: not compactable yet
        self.refs = 0  # readers in a pread right now
        self.retired = False

    @classmethod
    def create(cls, path: Path, file_id: int) -> DataFile:
        return cls(file_id, path, create(path, file_id), readonly=False)

    @classmethod
    def open(cls, path: Path, file_id: int, readonly: bool) -> DataFile:
        """Open an existing data file, logging (not failing on) a damaged header."""
        fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            if (found := decode_file_header(os.pread(fd, FILE_HEADER_SIZE, 0))) != file_id:
                log.error("data file %s: header says file %d", path, found)
        except BadRecord as exc:
            log.error("data file %s: %s", path, exc)
        return cls(file_id, path, fd, readonly)

    def append(self, header: bytes, data: bytes | memoryview) -> int:
        """Write a record at the end (caller holds the append lock); returns its offset."""
        offset = self.size
        try:
            append_record(self.fd, offset, header, data)
        except OSError as exc:
            os.ftruncate(self.fd, offset)  # no half record left behind; raises if it cannot
            raise DataStoreError(f"append to {self.path} failed: {exc}") from exc
        self.size = offset + len(header) + len(data)
        return offset

    def sync(self, end: int) -> None:
        """Make bytes below end durable, with one fdatasync unless they already are."""
        if end > self.synced:
            target = self.size  # everything below was written before the fdatasync starts
            os.fdatasync(self.fd)
            self.synced = max(self.synced, target)

    def recover(self, committed_end: int) -> tuple[list[tuple[int, RecordHeader]], int]:
        """Cut a torn tail after committed_end; returns (the whole records after it, bytes cut)."""
        records = scan(self.fd, committed_end, verify_data=True)
        complete = list(records)
        torn = self.size - records.end
        if torn:
            log.warning("data file %s: %s; truncating the torn tail (%d bytes)",
                        self.path, records.error, torn)  # fmt: skip
            os.ftruncate(self.fd, records.end)
            os.fsync(self.fd)
            self.size = self.synced = records.end
        return complete, torn

    def close(self) -> None:
        os.close(self.fd)


class FileTable:
    """A node's open data files by id; one lock guards the table, reader refs and writer pins."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._files: dict[int, DataFile] = {}

    def add(self, f: DataFile) -> DataFile:
        with self.lock:
            self._files[f.file_id] = f
        return f

    def get(self, file_id: int) -> DataFile | None:
        return self._files.get(file_id)

    def acquire(self, file_id: int) -> DataFile | None:
        """The file, held open for a read until release(); None if it is gone."""
        with self.lock:
            if f := self._files.get(file_id):
                f.refs += 1
            return f

    def release(self, f: DataFile) -> None:
        with self.lock:
            f.refs -= 1
            close = f.retired and f.refs == 0
        if close:
            f.close()

    def retire(self, f: DataFile) -> None:
        """Forget a compacted file; its fd closes when the last reader releases it."""
        with self.lock:
            del self._files[f.file_id]
            f.retired = True
            close = f.refs == 0
        if close:
            f.close()

    def pin(self, f: DataFile) -> None:
        with self.lock:
            f.pins += 1

    def unpin(self, files: set[DataFile]) -> None:
        with self.lock:
            for f in files:
                f.pins -= 1
        files.clear()

    def snapshot(self) -> dict[int, tuple[int, int]]:
        """file id -> (fd, size) at this instant."""
        with self.lock:
            return {file_id: (f.fd, f.size) for file_id, f in self._files.items()}

    def close(self) -> None:
        with self.lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def dump(path: Path) -> Iterator[dict[str, Any]]:
    """Describe a data file (header, every record, any invalid tail), verifying checksums."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        try:
            file_id: int | None = decode_file_header(os.pread(fd, FILE_HEADER_SIZE, 0))
            problem = None
        except BadRecord as exc:
            file_id, problem = None, str(exc)
        yield {"type": "file", "path": str(path), "file_id": file_id, "size": size}
        if problem is not None:
            yield {"type": "invalid", "offset": 0, "problem": problem, "bytes": size}
            return
        records = scan(fd, verify_data=True)
        for offset, header in records:
            yield {
                "type": "record",
                "offset": offset,
                "kind": header.kind,
                "object_id": header.object_id.hex(),
                "seq": header.seq,
                "last": bool(header.flags & FLAG_LAST),
                "length": header.length,
                "crc32c": f"{header.crc:#010x}",
            }
        if records.error is not None:
            yield {
                "type": "invalid",
                "offset": records.end,
                "problem": records.error,
                "bytes": size - records.end,
            }
    finally:
        os.close(fd)
