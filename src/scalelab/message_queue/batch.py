"""Kafka record batches (magic v2), read from their 61-byte header only.

The book batches messages so the broker moves them as one unit; Kafka's producers send them as
record batches, and a broker that stores them as received (validating the CRC, rewriting the
base offset) never decodes or re-encodes a record on the hot path. This module reads and
checks the header, splits a Produce request's record set into batches, and rewrites the base
offset. Big-endian, as on the wire:

    offset size  field
    0      8     base offset (the broker assigns it)
    8      4     batch length: bytes after this field
    12     4     partition leader epoch
    16     1     magic (2)
    17     4     CRC-32C of bytes 21..end (so rewriting the offset keeps it valid)
    21     2     attributes: bits 0-2 compression, 3 timestamp type, 4 transactional,
                 5 control batch, 6 delete horizon
    23     4     last offset delta (records - 1 for a fresh batch)
    27     8     base timestamp
    35     8     max timestamp
    43     8     producer id (-1: none)
    51     2     producer epoch
    53     4     base sequence (-1: none)
    57     4     record count
    61     ...   records (possibly compressed; never looked at here)
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from awscrt.checksums import crc32c

__all__ = [
    "HEADER_SIZE",
    "BatchError",
    "BatchHeader",
    "control_batch",
    "control_type",
    "rewrite_base_offset",
    "split",
    "stored_batches",
]

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LENGTH_OFFSET = 8  # the batch length field
CRC_START = 21  # the CRC covers the attributes onwards
LOG_OVERHEAD = 12  # base offset + batch length: what the length field does not count

COMPRESSION_MASK = 0x07
TRANSACTIONAL = 0x10
CONTROL = 0x20
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
assert HEADER_SIZE == 61


class BatchError(ValueError):
    """Bytes that are not a valid v2 record batch; `code` is the Kafka error to answer with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


CORRUPT_MESSAGE = 2
UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
INVALID_RECORD = 87


@dataclass(frozen=True, slots=True)
class BatchHeader:
    base_offset: int
    length: int  # the batch length field; the batch takes length + 12 bytes
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @classmethod
    def parse(cls, buf: bytes | memoryview, offset: int = 0) -> BatchHeader:
        """The header at offset (not checked beyond its length; see `check`)."""
        if len(buf) - offset < HEADER_SIZE:
            raise BatchError(
                f"record batch header needs {HEADER_SIZE} bytes, got {len(buf) - offset}",
                CORRUPT_MESSAGE,
            )
        return cls(*HEADER.unpack_from(buf, offset))

    @property
    def size(self) -> int:
        """Bytes the whole batch takes."""
        return self.length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> str:
        return CODECS.get(self.attributes & COMPRESSION_MASK, "unknown")

    @property
    def transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL)

    @property
    def control(self) -> bool:
        return bool(self.attributes & CONTROL)

    @property
    def idempotent(self) -> bool:
        return self.producer_id >= 0

    def check(self, batch: bytes | memoryview, *, stored: bool = False) -> None:
        """Everything a broker must verify before it appends: magic, sizes, CRC, counts. A
        batch read back from a log (`stored`) may hold fewer records than its offset range
        (log compaction removes records, never offsets), or none."""
        if self.magic != 2:
            raise BatchError(
                f"record batch magic {self.magic}: only v2 batches are stored",
                UNSUPPORTED_FOR_MESSAGE_FORMAT,
            )
        if self.length < HEADER_SIZE - LOG_OVERHEAD or len(batch) != self.size:
            raise BatchError(
                f"record batch length {self.length} does not match its {len(batch)} bytes",
                CORRUPT_MESSAGE,
            )
        if (self.attributes & COMPRESSION_MASK) not in CODECS:
            raise BatchError(f"unknown compression codec in attributes {self.attributes:#x}",
                             CORRUPT_MESSAGE)  # fmt: skip
        actual = crc32c(memoryview(batch)[CRC_START:])
        if actual != self.crc:
            raise BatchError(
                f"record batch CRC {self.crc:#010x} does not match its contents ({actual:#010x})",
                CORRUPT_MESSAGE,
            )
        if stored:
            if not 0 <= self.record_count <= self.last_offset_delta + 1:
                raise BatchError(
                    f"record batch holds {self.record_count} records in "
                    f"{self.last_offset_delta + 1} offsets",
                    INVALID_RECORD,
                )
        elif self.record_count <= 0 or self.last_offset_delta != self.record_count - 1:
            raise BatchError(
                f"record batch says {self.record_count} records but last offset delta "
                f"{self.last_offset_delta}",
                INVALID_RECORD,
            )


def split(records: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """The batches of a record set as sent in Produce: each header and its bytes, checked.

    A record set that ends inside a batch is corrupt (a producer never sends a partial batch).
    """
    view = memoryview(records)
    pos = 0
    while pos < len(view):
        header = BatchHeader.parse(view, pos)
        end = pos + header.size
        if header.length < 0 or end > len(view):
            raise BatchError(
                f"record batch at {pos} claims {header.size} bytes, {len(view) - pos} remain",
                CORRUPT_MESSAGE,
            )
        batch = view[pos:end]
        header.check(batch)
        yield header, batch
        pos = end


def stored_batches(data: bytes | memoryview) -> Iterator[tuple[BatchHeader, memoryview]]:
    """The batches of bytes read back from a log. Unlike `batch.split` (for Produce), a
    compacted batch may hold fewer records than its offset range, or none."""
    view = memoryview(data)
    pos = 0
    while pos + HEADER_SIZE <= len(view):
        header = BatchHeader.parse(view, pos)
        yield header, view[pos : pos + header.size]
        pos += header.size


def record_timestamps(batch: bytes) -> Iterator[tuple[int, int]]:
    """(offset, timestamp) of each record, decoding (and decompressing) the batch: for the
    rare reads that need records, never for produce or fetch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka.record.default_records import DefaultRecordBatch

    for record in DefaultRecordBatch(batch):
        yield record.offset, record.timestamp


def require_keys(records: bytes | memoryview) -> None:
    """Kafka refuses keyless records on a compacted topic (compaction keeps the last record
    per key, so a record without one could never be kept or replaced). Decodes the records:
    only compacted topics pay for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka.record.default_records import DefaultRecordBatch

    for header, view in split(records):
        if header.control:
            continue
        for record in DefaultRecordBatch(bytes(view)):
            if record.key is None:
                raise BatchError(
                    f"record at offset delta {record.offset} has no key: a compacted topic "
                    "needs one on every record",
                    INVALID_RECORD,
                )


def rewrite_base_offset(batch: bytes | memoryview, base_offset: int) -> bytearray:
    """A copy of batch with the broker's base offset (the CRC does not cover it)."""
    out = bytearray(batch)
    struct.pack_into(">q", out, 0, base_offset)
    return out


def make_batch(
    records: bytes,
    record_count: int,
    *,
    base_offset: int = 0,
    attributes: int = 0,
    base_timestamp: int = 0,
    max_timestamp: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    leader_epoch: int = -1,
) -> bytes:
    """A v2 batch around already-encoded records (control batches, tests)."""
    body = (
        struct.pack(
            ">hiqqqhii",
            attributes,
            record_count - 1,
            base_timestamp,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            record_count,
        )
        + records
    )
    length = 4 + 1 + 4 + len(body)  # leader epoch, magic, crc, then the CRC'd part
    return struct.pack(">qiibI", base_offset, length, leader_epoch, 2, crc32c(body)) + body


# -- control batches (transaction markers) ---------------------------------------------------
#
# A control batch holds one record whose key is (version int16 = 0, type int16: 0 abort,
# 1 commit) and whose value is (version int16 = 0, coordinator epoch int32). The record uses
# v2's record layout: length, attributes int8, timestamp delta, offset delta, key length, key,
# value length, value, header count; every number but the attributes a zigzag varint.

ABORT, COMMIT = 0, 1
_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")


def encode_varint(n: int) -> bytes:
    """A zigzag varint, as v2 records encode their lengths, deltas and counts."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position) of the zigzag varint at pos."""
    z = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise BatchError("truncated or overlong varint in a record", CORRUPT_MESSAGE)
        byte = buf[pos]
        pos += 1
        z |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (z >> 1) ^ -(z & 1), pos


def control_batch(
    producer_id: int, producer_epoch: int, kind: int, coordinator_epoch: int, timestamp: int
) -> bytes:
    """A transaction marker: a control batch of one COMMIT or ABORT record."""
    key = _CONTROL_KEY.pack(0, kind)
    value = _CONTROL_VALUE.pack(0, coordinator_epoch)
    body = (
        b"\x00" + encode_varint(0) + encode_varint(0)
        + encode_varint(len(key)) + key + encode_varint(len(value)) + value + encode_varint(0)
    )  # fmt: skip
    return make_batch(
        encode_varint(len(body)) + body,
        1,
        attributes=TRANSACTIONAL | CONTROL,
        base_timestamp=timestamp,
        max_timestamp=timestamp,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
    )


def control_type(batch: bytes | memoryview) -> int:
    """ABORT or COMMIT, from a control batch's first record's key."""
    pos = HEADER_SIZE
    _, pos = decode_varint(batch, pos)  # record length
    pos += 1  # attributes
    _, pos = decode_varint(batch, pos)  # timestamp delta
    _, pos = decode_varint(batch, pos)  # offset delta
    key_len, pos = decode_varint(batch, pos)
    if key_len < _CONTROL_KEY.size or pos + key_len > len(batch):
        raise BatchError(f"control record key of {key_len} bytes", CORRUPT_MESSAGE)
    _version, kind = _CONTROL_KEY.unpack_from(batch, pos)
    return int(kind)
