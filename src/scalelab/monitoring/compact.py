"""Compaction: merging persisted blocks into one longer block, as Prometheus does.

Three 2-hour blocks become one 6-hour block, and so on: every series gets the chunks of all
the blocks it is in, copied as they are (not re-encoded), and the new block's meta.json records
its level and lineage. Like downsample.py, it reads blocks and writes the result through
block.py's writer, which makes it appear atomically.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from scalelab.monitoring.block import Block, BlockMeta, PendingChunk, write_chunks
from scalelab.monitoring.model import Labels
from scalelab.monitoring.segments import DEFAULT_SEGMENT_SIZE, ChunkKind, ChunkMeta


def compact(
    blocks: Sequence[Block],
    out_dir: Path,
    *,
    block_id: str | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> BlockMeta:
    """Merge blocks into one (e.g. three 2h blocks into a 6h block), chunks copied as they are.

    A series found in several blocks gets all their chunks; a chunk present twice (same kind,
    range and bytes, as when overlapping blocks are compacted) is kept once.
    """
    if not blocks:
        raise ValueError("nothing to compact")
    resolutions = {b.meta.resolution_ms for b in blocks}
    if len(resolutions) != 1:
        raise ValueError(f"cannot compact blocks of different resolutions {sorted(resolutions)}")
    merged: dict[Labels, list[tuple[Block, ChunkMeta]]] = {}
    for b in blocks:
        for labels, chunks in b.iter_series():
            merged.setdefault(labels, []).extend((b, c) for c in chunks)

    def series() -> Iterator[tuple[Labels, Iterator[PendingChunk]]]:
        for labels in sorted(merged):
            yield labels, chunks_of(labels, merged.pop(labels))

    def chunks_of(labels: Labels, chunks: list[tuple[Block, ChunkMeta]]) -> Iterator[PendingChunk]:
        seen: set[tuple[ChunkKind, int, int, bytes]] = set()
        for b, c in sorted(chunks, key=lambda bc: (bc[1].kind, bc[1].mint, bc[1].maxt)):
            data = b.chunk_bytes(c.ref, labels)
            key = (c.kind, c.mint, c.maxt, data)
            if key not in seen:
                seen.add(key)
                yield c.kind, c.mint, c.maxt, c.samples, data

    return write_chunks(
        out_dir,
        series(),
        resolution_ms=resolutions.pop(),
        block_id=block_id,
        time_range=(min(b.meta.min_time for b in blocks), max(b.meta.max_time for b in blocks)),
        level=max(b.meta.level for b in blocks) + 1,
        sources=[s for b in blocks for s in b.meta.sources],
        parents=[b.meta.id for b in blocks],
        segment_size=segment_size,
    )
