"""Persisted, immutable blocks: the TSDB's storage for everything older than the head.

The head block cuts its chunks into a block every two hours; compaction merges blocks into
longer ones (compact.py) and downsampling writes 1-minute and 1-hour copies (downsample.py), as
in Prometheus and Thanos. A block is never changed after it is written, so readers need no
locks and a crash can only ever leave a temporary directory behind: a block is written under
`<id>.tmp-for-creation/`, every file and directory fsynced, then renamed into place in one step.

Directory layout (`<id>` is a ULID: 26 Crockford base-32 characters, sortable by time):

    <id>/meta.json          what the block holds; its format is in block_meta.py
    <id>/index              the inverted index; its format is in index.py
    <id>/chunks/000001 ...  chunk segment files; their format is in segments.py
"""

from __future__ import annotations

import functools
import importlib
import json
import mmap
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from scalelab.monitoring.block_meta import META_VERSION, BlockMeta, new_block_id
from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.index import IndexReader, dump_index, encode_index
from scalelab.monitoring.model import (
    Labels,
    Matcher,
    Series,
    TimestampArray,
    ValueArray,
    format_labels,
    get,
)
from scalelab.monitoring.segments import (
    AGGREGATE_KINDS,
    DEFAULT_SEGMENT_SIZE,
    MAX_OFFSET,
    RECORD_CRC,
    RECORD_LENGTH,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    SEGMENT_VERSION,
    ChunkKind,
    ChunkMeta,
    SegmentWriter,
    crc32c,
)

__all__ = [
    "Block",
    "BlockMeta",
    "ChunkKind",
    "ChunkMeta",
    "dump",
    "list_blocks",
    "new_block_id",
    "remove_incomplete",
    "write_block",
    "write_chunks",
]

TMP_SUFFIX = ".tmp-for-creation"
_BLOCK_ID = re.compile(r"[0-9A-Za-z_-]+")

Decode = Callable[[bytes], tuple[TimestampArray, ValueArray]]
Encode = Callable[[TimestampArray, ValueArray], bytes]
ChunkInput = tuple[int, int, bytes] | tuple[int, int, bytes, ChunkKind]
# (kind, mint, maxt, samples, data): a chunk on its way into a block
PendingChunk = tuple[ChunkKind, int, int, int, bytes]


def codec(name: str) -> Any:
    """chunk.py's function, imported at call time so a block can be read with any codec."""
    return getattr(importlib.import_module("scalelab.monitoring.chunk"), name)


# --- writing --------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_labels(labels: Labels) -> None:
    if not labels:
        raise ValueError("a series needs at least one label")
    names = [k for k, _ in labels]
    if any(a >= b for a, b in zip(names, names[1:], strict=False)):
        raise ValueError(f"labels must be sorted by name without repeats: {labels!r}")
    if any(not k or not v for k, v in labels):
        raise ValueError(f"label names and values must not be empty: {labels!r}")


def write_chunks(
    directory: Path,
    series: Iterable[tuple[Labels, Iterable[PendingChunk]]],
    *,
    resolution_ms: int = 0,
    block_id: str | None = None,
    time_range: tuple[int, int] | None = None,
    level: int = 1,
    sources: Sequence[str] = (),
    parents: Sequence[str] = (),
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> BlockMeta:
    """write_block for callers that know each chunk's kind and sample count (the head does):
    chunks stream to segments as series arrive, then the index and meta, atomically."""
    if resolution_ms < 0:
        raise ValueError("resolution must not be negative")
    if block_id is None:
        block_id = new_block_id(time.time_ns() // 1_000_000, random.Random())
    if not _BLOCK_ID.fullmatch(block_id) or block_id.endswith(TMP_SUFFIX):
        raise ValueError(f"block id {block_id!r} is not a plain directory name")
    allowed = AGGREGATE_KINDS if resolution_ms else (ChunkKind.RAW,)
    final = directory / block_id
    if final.exists():
        raise FileExistsError(f"block {final} already exists")
    tmp = directory / (block_id + TMP_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed attempt's leftovers
    try:
        (tmp / "chunks").mkdir(parents=True)
        writer = SegmentWriter(tmp / "chunks", segment_size)
        metas: dict[Labels, list[ChunkMeta]] = {}
        try:
            for labels, chunks in series:
                _check_labels(labels)
                out = metas.setdefault(labels, [])
                for kind, mint, maxt, samples, data in chunks:
                    if kind not in allowed:
                        raise ValueError(f"{kind!r} chunk in a block of resolution {resolution_ms}")
                    if maxt < mint:
                        raise ValueError(f"chunk of {labels!r} ends ({maxt}) before it starts")
                    ref = writer.write(data)
                    out.append(ChunkMeta(kind, mint, maxt, samples, ref))
        finally:
            writer.close()
        ordered = [(labels, sorted(metas[labels])) for labels in sorted(metas) if metas[labels]]
        chunks_all = [c for _, cs in ordered for c in cs]
        if chunks_all:
            span = (min(c.mint for c in chunks_all), max(c.maxt for c in chunks_all))
            if time_range is not None and (span[0] < time_range[0] or span[1] > time_range[1]):
                raise ValueError(f"chunks span {span}, outside time_range {time_range}")
        elif time_range is None:
            raise ValueError("a block without chunks needs a time_range")
        lo, hi = time_range if time_range is not None else span
        _write_file(tmp / "index", encode_index(ordered))
        meta = BlockMeta(
            id=block_id,
            min_time=lo,
            max_time=hi,
            num_series=len(ordered),
            num_chunks=len(chunks_all),
            num_samples=sum(c.samples for c in chunks_all),
            resolution_ms=resolution_ms,
            level=level,
            sources=tuple(sorted(set(sources) or {block_id})),
            parents=tuple(parents),
        )
        body = json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n"
        _write_file(tmp / "meta.json", body.encode())
        _fsync_dir(tmp / "chunks")
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _sample_count(decode: Decode, data: bytes) -> int:
    return len(decode(data)[0])


def write_block(
    directory: Path,
    series: Iterable[tuple[Labels, Sequence[ChunkInput]]],
    *,
    resolution_ms: int = 0,
    block_id: str | None = None,
    time_range: tuple[int, int] | None = None,
    count_samples: Callable[[bytes], int] | None = None,
    level: int = 1,
    sources: Sequence[str] = (),
    parents: Sequence[str] = (),
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> BlockMeta:
    """Write a block under directory/<block id> from series in any order.

    Each chunk is (mint, maxt, data), or (mint, maxt, data, kind) in a downsampled block;
    a series given twice gets the chunks of both. count_samples tells how many samples a chunk
    holds (for the index and meta.json); by default the chunk is decoded with chunk.decode.
    time_range (inclusive) records the range the block stands for, e.g. an aligned 2 hours.
    """
    count = count_samples

    def pending(chunks: Sequence[ChunkInput]) -> Iterator[PendingChunk]:
        nonlocal count
        for c in chunks:
            if count is None:
                count = functools.partial(_sample_count, cast(Decode, codec("decode")))
            kind = c[3] if len(c) == 4 else ChunkKind.RAW
            yield ChunkKind(kind), c[0], c[1], count(c[2]), c[2]

    return write_chunks(
        directory,
        ((labels, pending(chunks)) for labels, chunks in series),
        resolution_ms=resolution_ms,
        block_id=block_id,
        time_range=time_range,
        level=level,
        sources=sources,
        parents=parents,
        segment_size=segment_size,
    )


# --- reading --------------------------------------------------------------------------------


class Block:
    """An open block: implements model.Querier over its index and mmapped chunk segments."""

    def __init__(self, path: Path, meta: BlockMeta, index: IndexReader, decode: Decode | None):
        self.path, self.meta, self.index = path, meta, index
        self._decode = decode
        self._segments: dict[int, mmap.mmap] = {}

    @classmethod
    def open(cls, path: Path, *, decode: Decode | None = None) -> Block:
        """Open and verify a block; decode defaults to chunk.decode, looked up at first use."""
        path = Path(path)
        try:
            meta = BlockMeta.from_json(json.loads((path / "meta.json").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"block {path.name}: unreadable meta.json: {exc}") from None
        if meta.version != META_VERSION:
            raise StorageError(f"block {meta.id}: unsupported meta version {meta.version}")
        try:
            index = IndexReader(path / "index", meta.id)
        except OSError as exc:
            raise StorageError(f"block {meta.id}: cannot open index: {exc}") from None
        return cls(path, meta, index, decode)

    def close(self) -> None:
        for mm in self._segments.values():
            mm.close()
        self._segments.clear()
        self.index.close()

    def __enter__(self) -> Block:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.meta
        return f"<Block {m.id} [{m.min_time}, {m.max_time}] resolution {m.resolution_ms} ms>"

    @property
    def decode(self) -> Decode:
        """The chunk decoder: chunk.decode_cached (decoded chunks shared through its LRU)
        unless one was given at open."""
        if self._decode is None:
            self._decode = cast(Decode, codec("decode_cached"))
        return self._decode

    # chunks

    def _segment(self, number: int) -> mmap.mmap:
        mm = self._segments.get(number)
        if mm is None:
            path = self.path / "chunks" / f"{number:06d}"
            try:
                with open(path, "rb") as f:
                    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise StorageError(f"block {self.meta.id}: chunk segment {path}: {exc}") from None
            if mm[: SEGMENT_HEADER.size] != SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION):
                mm.close()
                raise StorageError(f"block {self.meta.id}: {path} is not a chunk segment")
            kept = self._segments.setdefault(number, mm)  # another thread may have won
            if kept is not mm:
                mm.close()
            return kept
        return mm

    def chunk_bytes(self, ref: int, labels: Labels) -> bytes:
        """A chunk's data, its CRC checked; StorageError names the block and the series."""
        number, offset = ref >> 32, ref & MAX_OFFSET
        mm = self._segments.get(number)
        if mm is None:
            try:
                mm = self._segment(number)
            except StorageError as exc:
                raise self._chunk_error(labels, ref, str(exc)) from None
        end = offset + RECORD_LENGTH.size
        if offset < SEGMENT_HEADER.size or end > len(mm):
            raise self._chunk_error(labels, ref, "offset past the end of its segment")
        (n,) = RECORD_LENGTH.unpack_from(mm, offset)
        if end + n + RECORD_CRC.size > len(mm):
            raise self._chunk_error(labels, ref, f"{n}-byte chunk runs past its segment's end")
        record = mm[offset : end + n]
        (crc,) = RECORD_CRC.unpack_from(mm, end + n)
        if crc32c(record) != crc:
            raise self._chunk_error(labels, ref, "checksum mismatch")
        return record[RECORD_LENGTH.size :]

    def _chunk_error(self, labels: Labels, ref: int, problem: str) -> StorageError:
        return StorageError(
            f"block {self.meta.id}: series {format_labels(labels)}: "
            f"chunk {ref >> 32}:{ref & MAX_OFFSET}: {problem}"
        )

    def read_samples(
        self, labels: Labels, chunks: Sequence[ChunkMeta], mint: int, maxt: int
    ) -> tuple[TimestampArray, ValueArray]:
        """Decoded samples of a series' chunks (one kind), trimmed to [mint, maxt]."""
        decode = self.decode
        parts = []
        overlap = False
        for i, c in enumerate(chunks):
            data = self.chunk_bytes(c.ref, labels)
            try:
                t, v = decode(data)
            except Exception as exc:
                raise self._chunk_error(labels, c.ref, f"does not decode: {exc}") from exc
            if len(t) != len(v):
                raise self._chunk_error(labels, c.ref, "decodes to unequal t and v arrays")
            parts.append((t, v))
            overlap = overlap or (i > 0 and c.mint <= chunks[i - 1].maxt)
        if len(parts) == 1:
            t, v = parts[0]
        else:
            t = np.concatenate([p[0] for p in parts])
            v = np.concatenate([p[1] for p in parts])
            if overlap and chunks[0].kind is not ChunkKind.COUNTER:
                # chunks of overlapping blocks, kept as they were: merge; at equal timestamps
                # the chunk that sorts first (by mint, maxt) wins
                order = np.argsort(t, kind="stable")
                t, v = t[order], v[order]
                first = np.concatenate(([True], t[1:] != t[:-1]))
                t, v = t[first], v[first]
        if t.size and (t[0] < mint or t[-1] > maxt):
            lo, hi = np.searchsorted(t, mint, "left"), np.searchsorted(t, maxt, "right")
            t, v = t[lo:hi], v[lo:hi]
        return t, v

    # queries

    def _overlaps(self, mint: int, maxt: int) -> bool:
        return mint <= maxt and mint <= self.meta.max_time and maxt >= self.meta.min_time

    def _select(
        self, matchers: Sequence[Matcher], mint: int, maxt: int, kind: ChunkKind
    ) -> list[Series]:
        if not self._overlaps(mint, maxt):
            return []
        out = []
        for ref in self.index.postings_for_matchers(matchers).tolist():
            labels, chunks = self.index.series(ref)
            hit = [c for c in chunks if c.kind is kind and c.maxt >= mint and c.mint <= maxt]
            if hit:
                t, v = self.read_samples(labels, hit, mint, maxt)
                if t.size:
                    out.append(Series(labels, t, v))
        return out

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        """Raw samples; a downsampled block answers with its window averages (sum / count)."""
        if not self.meta.resolution_ms:
            return self._select(matchers, mint, maxt, ChunkKind.RAW)
        sums = self._select(matchers, mint, maxt, ChunkKind.SUM)
        counts = {s.labels: s for s in self._select(matchers, mint, maxt, ChunkKind.COUNT)}
        out = []
        for s in sums:
            c = counts.get(s.labels)
            if c is None or not np.array_equal(c.timestamps, s.timestamps):
                raise StorageError(
                    f"block {self.meta.id}: series {format_labels(s.labels)}: "
                    "sum and count aggregates are not aligned"
                )
            out.append(Series(s.labels, s.timestamps, s.values / c.values))
        return out

    def select_aggregate(
        self, matchers: Sequence[Matcher], mint: int, maxt: int, kind: ChunkKind | str
    ) -> list[Series]:
        """One aggregate (count, sum, min, max, counter) of a downsampled block's windows."""
        k = ChunkKind[kind.upper()] if isinstance(kind, str) else ChunkKind(kind)
        if (k is ChunkKind.RAW) != (self.meta.resolution_ms == 0):
            raise ValueError(
                f"block {self.meta.id} of resolution "
                f"{self.meta.resolution_ms} ms has no {k.name.lower()} chunks"
            )
        return self._select(matchers, mint, maxt, k)

    def _matching_labels(
        self, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> Iterator[Labels]:
        for ref in self.index.postings_for_matchers(matchers).tolist():
            labels, chunks = self.index.series(ref)
            if any(c.maxt >= mint and c.mint <= maxt for c in chunks):
                yield labels

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        """Without matchers, from the postings table alone (block granularity, as Prometheus)."""
        if not self._overlaps(mint, maxt):
            return []
        if not matchers:
            return self.index.label_names()
        names = {k for labels in self._matching_labels(matchers, mint, maxt) for k, _ in labels}
        return sorted(names)

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        if not self._overlaps(mint, maxt):
            return []
        if not matchers:
            return self.index.label_values(name)
        values = {get(labels, name) for labels in self._matching_labels(matchers, mint, maxt)}
        values.discard("")
        return sorted(values)

    def iter_series(self) -> Iterator[tuple[Labels, list[ChunkMeta]]]:
        """Every series with its chunk metas, in label order."""
        for ref in self.index.all_postings().tolist():
            yield self.index.series(ref)


# --- the data directory ---------------------------------------------------------------------


def list_blocks(directory: Path) -> list[Path]:
    """Complete blocks under directory, oldest id first; temporary directories are not blocks."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and TMP_SUFFIX not in p.name and (p / "meta.json").is_file()
    ]
    return sorted(found, key=lambda p: p.name)


def remove_incomplete(directory: Path) -> list[Path]:
    """Delete what a crash mid-write left behind; returns the paths removed."""
    gone = [p for p in directory.glob(f"*{TMP_SUFFIX}") if p.is_dir()]
    for p in gone:
        shutil.rmtree(p)
    return gone


def dump(path: Path) -> Iterator[str]:
    """Describe a block for `dump-block`: meta, symbols, series, postings, every chunk's CRC."""
    path = Path(path)
    yield f"block {path}"
    try:
        meta_text = (path / "meta.json").read_text()
        yield f"meta.json {json.dumps(json.loads(meta_text), sort_keys=True)}"
        block = Block.open(path)
    except (OSError, ValueError, StorageError) as exc:
        yield f"error: {exc}"
        return
    with block:
        try:
            yield from dump_index(block.index)
        except StorageError as exc:
            yield f"error: {exc}"
        for number, segment in enumerate(sorted((path / "chunks").iterdir()), 1):
            yield f"segment {segment.name}: {segment.stat().st_size} bytes"
            if segment.name != f"{number:06d}":
                yield f"error: segment {segment.name} out of sequence"
        bad = 0
        try:
            for labels, chunks in block.iter_series():
                for c in chunks:
                    try:
                        block.chunk_bytes(c.ref, labels)
                    except StorageError as exc:
                        bad += 1
                        yield f"error: {exc}"
        except StorageError as exc:
            yield f"error: {exc}"
        yield f"chunks: {block.meta.num_chunks} total, {bad} failing their checksum"
