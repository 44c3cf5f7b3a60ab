"""`scalelab message-queue dump-segment`: batches, offsets and CRC status of a segment."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from awscrt.checksums import crc32c
from click.testing import CliRunner

from scalelab.cli import main
from scalelab.message_queue import batch as b
from scalelab.message_queue.partition import Partition


def test_dump_segment_lists_batches_and_flags_a_torn_tail(tmp_path: Path) -> None:
    p = Partition(tmp_path)
    p.append(b.make_batch(b"r" * 30, 3, max_timestamp=7))
    p.append(b.make_batch(b"s" * 20, 2, producer_id=5, producer_epoch=0, base_sequence=0))
    path = p.active.log_path
    p.close()
    result = CliRunner().invoke(main, ["message-queue", "dump-segment", str(path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    found = [(r["base_offset"], r["last_offset"], r["crc"]) for r in rows]
    assert found == [(0, 2, "ok"), (3, 4, "ok")]
    assert rows[1]["producer_id"] == 5
    with path.open("ab") as f:
        f.write(b"\x00" * 30)
    torn = CliRunner().invoke(main, ["message-queue", "dump-segment", str(path)])
    assert torn.exit_code == 1 and '"invalid"' in torn.output.splitlines()[-1]


def test_dump_segment_accepts_compacted_batches(tmp_path: Path) -> None:
    """After compaction a batch keeps its offset range but holds fewer records (or none)."""

    raw = bytearray(b.make_batch(b"r" * 10, 2))
    struct.pack_into(">i", raw, 23, 4)  # five offsets, two records left
    struct.pack_into(">I", raw, 17, crc32c(bytes(raw[21:])))
    path = tmp_path / "00000000000000000000.log"
    path.write_bytes(bytes(raw))
    result = CliRunner().invoke(main, ["message-queue", "dump-segment", str(path)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert (row["last_offset"], row["records"], row["crc"]) == (4, 2, "ok")
    with pytest.raises(b.BatchError):  # a producer may not send such a batch
        b.BatchHeader.parse(raw).check(raw)
