"""The time-series database: the head block, the persisted blocks, and their life cycle.

Layout under the data dir: `head/wal/` (head.py's WAL) and `blocks/<id>/` (block.py). Life
cycle, as Prometheus runs it and the book's retention asks:
- compaction: once the head spans more than 1.5 block ranges, its oldest aligned range is
  written as a block, the block is opened, and only then is the head truncated (a query in
  between sees both and the merge removes the overlap);
- downsampling: every raw block also gets a 1-minute block, and every 1-minute block a 1-hour
  one, as soon as it exists (min/max/sum/count per window, so averages stay exact);
- retention: raw blocks go after `retention_raw`, 1-minute ones after `retention_1m`, 1-hour
  ones after `retention_1h`, each measured from the block's end to the newest sample.

A query reads, for each stretch of time, the finest data that still covers it: the head and
raw blocks where they are, 1-minute aggregates before the oldest raw block, 1-hour ones before
the oldest 1-minute block. Downsampled blocks answer plain selects with window averages.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from scalelab.monitoring import chunk
from scalelab.monitoring.block import (
    Block,
    BlockMeta,
    PendingChunk,
    list_blocks,
    remove_incomplete,
    write_chunks,
)
from scalelab.monitoring.downsample import downsample_block
from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.head import Head, HeadAppender
from scalelab.monitoring.index import ChunkKind
from scalelab.monitoring.model import Labels, Matcher, Series
from scalelab.monitoring.settings import DAY_MS, HOUR_MS, MINUTE_MS
from scalelab.storage.lock import ExclusiveUse

log = logging.getLogger(__name__)

RESOLUTIONS = (0, MINUTE_MS, HOUR_MS)


class TSDB:
    """Head + blocks behind one Querier and one Appender."""

    def __init__(
        self,
        directory: Path,
        *,
        block_range_ms: int = 2 * HOUR_MS,
        retention_ms: Sequence[int] = (7 * DAY_MS, 30 * DAY_MS, 365 * DAY_MS),
        max_series: int | None = None,
        wal_segment_bytes: int = 128 << 20,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._exclusive = ExclusiveUse(self.directory, "tsdb.lock")
        try:
            self._exclusive.__enter__()
        except BlockingIOError:
            raise StorageError(
                f"{self.directory} is in use by another process (tsdb.lock is held)"
            ) from None
        self.block_range_ms = block_range_ms
        self.retention_ms = dict(zip(RESOLUTIONS, retention_ms, strict=True))
        self._blocks_dir = self.directory / "blocks"
        self._blocks_dir.mkdir(parents=True, exist_ok=True)
        for leftover in remove_incomplete(self._blocks_dir):
            log.info("removed an incomplete block %s", leftover)
        self._lock = threading.Lock()  # guards self._blocks (a list replaced, never mutated)
        self._maintenance = threading.Lock()
        self._blocks: list[Block] = [Block.open(p) for p in list_blocks(self._blocks_dir)]
        raw_end = max((b.meta.max_time for b in self._raw_blocks()), default=None)
        self.head = Head.open(
            self.directory / "head",
            max_series=max_series,
            segment_bytes=wal_segment_bytes,
            chunk_range_ms=block_range_ms,
            min_valid_ms=None if raw_end is None else raw_end + 1,
        )

    def close(self) -> None:
        with self._maintenance:
            self.head.close()
            with self._lock:
                blocks, self._blocks = self._blocks, []
            for b in blocks:
                b.close()
            self._exclusive.__exit__()

    # -- writing and reading ---------------------------------------------------------------

    def appender(self) -> HeadAppender:
        return self.head.appender()

    @property
    def blocks(self) -> list[Block]:
        with self._lock:
            return list(self._blocks)

    def _raw_blocks(self) -> list[Block]:
        return [b for b in self._blocks if b.meta.resolution_ms == 0]

    def _sources(self, mint: int, maxt: int) -> list[tuple[Head | Block, int, int]]:
        """(source, from, to): the finest data for each stretch of [mint, maxt]."""
        blocks = self.blocks
        out: list[tuple[Head | Block, int, int]] = [(self.head, mint, maxt)]
        finer_start: int | None = self.head.mint
        for resolution in RESOLUTIONS:
            level = [b for b in blocks if b.meta.resolution_ms == resolution]
            if not level:
                continue
            # data of this resolution serves only where nothing finer exists
            upper = maxt if resolution == 0 or finer_start is None else min(maxt, finer_start - 1)
            for b in level:
                lo, hi = max(mint, b.meta.min_time), min(upper, b.meta.max_time)
                if lo <= hi:
                    out.append((b, lo, hi))
            start = min(b.meta.min_time for b in level)
            finer_start = start if finer_start is None else min(finer_start, start)
        return out

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        parts: dict[Labels, list[Series]] = {}
        for source, lo, hi in self._sources(mint, maxt):
            for s in source.select(matchers, lo, hi):
                parts.setdefault(s.labels, []).append(s)
        return [_merge(labels, pieces) for labels, pieces in sorted(parts.items())]

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        names: set[str] = set()
        for source, lo, hi in self._sources(mint, maxt):
            names.update(source.label_names(matchers, lo, hi))
        return sorted(names)

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        values: set[str] = set()
        for source, lo, hi in self._sources(mint, maxt):
            values.update(source.label_values(name, matchers, lo, hi))
        return sorted(values)

    # -- life cycle ------------------------------------------------------------------------

    def maintain(self, now_ms: int | None = None) -> list[BlockMeta]:
        """Compact the head, downsample, apply retention; the blocks written."""
        with self._maintenance:
            try:
                written = self._compact_head()
                written += self._downsample()
            finally:  # a failing step must not keep old blocks past their retention
                self._apply_retention(now_ms)
            return written

    def _compact_head(self) -> list[BlockMeta]:
        written: list[BlockMeta] = []
        span = self.block_range_ms
        while True:
            mint, maxt = self.head.mint, self.head.maxt
            if mint is None or maxt is None or maxt - mint <= span * 3 // 2:
                return written
            start = mint // span * span
            end = start + span - 1
            meta = self._persist_head(start, end)
            if meta is not None:
                written.append(meta)
            self.head.truncate(end + 1)

    def _persist_head(self, start: int, end: int) -> BlockMeta | None:
        def series() -> Iterator[tuple[Labels, list[PendingChunk]]]:
            for labels, chunks in self.head.chunks_in(start, end):
                yield (
                    labels,
                    [
                        (ChunkKind.RAW, lo, hi, chunk.num_samples(data), data)
                        for lo, hi, data in chunks
                    ],
                )

        meta = write_chunks(self._blocks_dir, series(), time_range=(start, end))
        if meta.num_series == 0:
            shutil.rmtree(self._blocks_dir / meta.id, ignore_errors=True)
            return None
        self._add(Block.open(self._blocks_dir / meta.id))
        log.info(
            "persisted head [%d, %d] as block %s (%d series)", start, end, meta.id, meta.num_series
        )
        return meta

    def _add(self, block: Block) -> None:
        with self._lock:
            self._blocks = sorted([*self._blocks, block], key=lambda b: b.meta.min_time)

    def _downsample(self) -> list[BlockMeta]:
        """Give every raw block a 1m child and every 1m block a 1h child."""
        written: list[BlockMeta] = []
        for finer, coarser in zip(RESOLUTIONS, RESOLUTIONS[1:], strict=False):
            done = {
                p for b in self.blocks if b.meta.resolution_ms == coarser for p in b.meta.parents
            }
            for b in self.blocks:
                if b.meta.resolution_ms != finer or b.meta.id in done:
                    continue
                meta = downsample_block(b, self._blocks_dir, coarser)
                self._add(Block.open(self._blocks_dir / meta.id))
                written.append(meta)
        return written

    def _apply_retention(self, now_ms: int | None) -> None:
        newest = self.head.maxt
        if newest is None:
            newest = max((b.meta.max_time for b in self.blocks), default=None)
        if now_ms is not None:
            newest = now_ms if newest is None else max(newest, now_ms)
        if newest is None:
            return
        expired = [
            b
            for b in self.blocks
            if b.meta.max_time < newest - self.retention_ms[b.meta.resolution_ms]
        ]
        if not expired:
            return
        with self._lock:
            self._blocks = [b for b in self._blocks if b not in expired]
        for b in expired:
            log.info(
                "retention: deleting block %s (resolution %d ms)", b.meta.id, b.meta.resolution_ms
            )
            # not closed: a query may still be reading its mmaps, which outlive the unlink
            shutil.rmtree(b.path, ignore_errors=True)


def _merge(labels: Labels, pieces: list[Series]) -> Series:
    """One series from the pieces several sources returned; on equal timestamps the first
    source (the finest: head, then raw blocks) wins."""
    if len(pieces) == 1:
        return pieces[0]
    ts = np.concatenate([p.timestamps for p in pieces])
    vs = np.concatenate([p.values for p in pieces])
    order = np.argsort(ts, kind="stable")
    ts, vs = ts[order], vs[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]
    return Series(labels, ts[keep], vs[keep])
