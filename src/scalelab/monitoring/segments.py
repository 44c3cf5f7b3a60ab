"""Chunk segment files, where a block's chunk data lives, and the chunk metas that point there.

Split from block.py (which writes and reads blocks through these files) and index.py (which
stores a `ChunkMeta` per chunk): the on-disk format of the segments, their writer, what a chunk
ref means, and the CRC-32C both formats use.

Chunk segment file (`chunks/NNNNNN`, numbered from 000001; a segment is cut before it would
pass the segment size, 512 MiB by default). All integers little-endian:

    offset size  field
    0      4     magic b"SLCS"
    4      1     format version (1)
    5      3     zero

then chunk records back to back:

    0      4     data length n (u32)
    4      n     chunk data (opaque here: chunk.py's encoding, e.g. Gorilla XOR)
    4+n    4     CRC-32C of bytes 0..4+n (the length and the data)

A chunk ref, as the index stores it, is (segment number << 32) | (record offset in the file).
The CRC is checked on every read, so a damaged chunk fails the query that touches it (naming
the series) rather than the whole block at open.
"""

from __future__ import annotations

import enum
import os
import struct
from pathlib import Path
from typing import BinaryIO, NamedTuple

from awscrt.checksums import crc32c as _crc32c

SEGMENT_MAGIC = b"SLCS"
SEGMENT_VERSION = 1
SEGMENT_HEADER = struct.Struct("<4sB3x")
RECORD_LENGTH = struct.Struct("<I")
RECORD_CRC = struct.Struct("<I")
assert SEGMENT_HEADER.size == 8 and RECORD_LENGTH.size == 4 and RECORD_CRC.size == 4

DEFAULT_SEGMENT_SIZE = 512 << 20
MAX_OFFSET = (1 << 32) - 1


class ChunkKind(enum.IntEnum):
    """What a chunk holds: raw samples, or one aggregate of a downsampled block."""

    RAW = 0
    COUNT = 1
    SUM = 2
    MIN = 3
    MAX = 4
    COUNTER = 5


AGGREGATE_KINDS = (ChunkKind.COUNT, ChunkKind.SUM, ChunkKind.MIN, ChunkKind.MAX, ChunkKind.COUNTER)


class ChunkMeta(NamedTuple):
    """Where a chunk is and what it covers (a NamedTuple: decoded by the thousand per query)."""

    kind: ChunkKind
    mint: int
    maxt: int
    samples: int
    ref: int

    @property
    def segment(self) -> int:
        return self.ref >> 32

    @property
    def offset(self) -> int:
        return self.ref & MAX_OFFSET


def crc32c(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    return int(_crc32c(data, previous))


class SegmentWriter:
    """Appends chunk records to numbered segment files, cutting a new one when full."""

    def __init__(self, directory: Path, segment_size: int) -> None:
        self.directory, self.segment_size = directory, segment_size
        self.number, self.pos = 0, 0
        self.file: BinaryIO | None = None

    def write(self, data: bytes) -> int:
        need = RECORD_LENGTH.size + len(data) + RECORD_CRC.size
        if self.file is None or (
            self.pos > SEGMENT_HEADER.size and self.pos + need > self.segment_size
        ):
            self._cut()
        assert self.file is not None
        if self.pos + need > MAX_OFFSET:
            raise ValueError(f"chunk of {len(data)} bytes does not fit a segment")
        ref = (self.number << 32) | self.pos
        length = RECORD_LENGTH.pack(len(data))
        self.file.write(length)
        self.file.write(data)
        self.file.write(RECORD_CRC.pack(crc32c(data, crc32c(length))))
        self.pos += need
        return ref

    def _cut(self) -> None:
        self.close()
        self.number += 1
        self.file = open(self.directory / f"{self.number:06d}", "xb")
        self.file.write(SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION))
        self.pos = SEGMENT_HEADER.size

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
