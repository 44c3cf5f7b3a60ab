"""meta.json, a block's description, and the ULIDs that name blocks.

Split from block.py, which writes this file last when it creates a block and reads it first
when it opens one. A block's id is a ULID: 26 Crockford base-32 characters, 48 bits of
milliseconds then 80 random bits, so ids sort by creation time.

meta.json (UTF-8 JSON object):

    ulid            the block id
    minTime         earliest millisecond the block covers (inclusive)
    maxTime         latest millisecond the block covers (inclusive; Prometheus's is exclusive)
    stats           {"numSeries", "numChunks", "numSamples"} (samples over all chunk kinds)
    resolution_ms   0 for raw samples; 60000 or 3600000 for downsampled blocks
    compaction      {"level": 1 for a head block, max of the inputs + 1 after compaction,
                     "sources": ids of the level-1 blocks whose data is here,
                     "parents": ids of the blocks this one was made from}
    version         1
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

META_VERSION = 1
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_block_id(now_ms: int, rng: random.Random) -> str:
    """A ULID: 48 bits of milliseconds then 80 random bits, so ids sort by creation time."""
    value = ((now_ms & ((1 << 48) - 1)) << 80) | rng.getrandbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


@dataclass(frozen=True, slots=True)
class BlockMeta:
    """meta.json, parsed."""

    id: str
    min_time: int
    max_time: int
    num_series: int
    num_chunks: int
    num_samples: int
    resolution_ms: int = 0
    level: int = 1
    sources: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    version: int = META_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "ulid": self.id,
            "minTime": self.min_time,
            "maxTime": self.max_time,
            "stats": {
                "numSeries": self.num_series,
                "numChunks": self.num_chunks,
                "numSamples": self.num_samples,
            },
            "resolution_ms": self.resolution_ms,
            "compaction": {
                "level": self.level,
                "sources": list(self.sources),
                "parents": list(self.parents),
            },
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockMeta:
        stats, comp = data["stats"], data["compaction"]
        return cls(
            id=str(data["ulid"]),
            min_time=int(data["minTime"]),
            max_time=int(data["maxTime"]),
            num_series=int(stats["numSeries"]),
            num_chunks=int(stats["numChunks"]),
            num_samples=int(stats["numSamples"]),
            resolution_ms=int(data["resolution_ms"]),
            level=int(comp["level"]),
            sources=tuple(str(s) for s in comp["sources"]),
            parents=tuple(str(s) for s in comp.get("parents", ())),
            version=int(data["version"]),
        )
