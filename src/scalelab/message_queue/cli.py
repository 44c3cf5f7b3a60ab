"""`scalelab message-queue ...`: offline tools over the broker's files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from scalelab.message_queue.batch import HEADER_SIZE, BatchError, BatchHeader

_BASE = re.compile(r"^(\d{20})\.log$")


@click.group(name="message-queue")
def message_queue() -> None:
    """Tools for the message queue's data directory."""


@message_queue.command(name="dump-segment")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def dump_segment(path: Path) -> None:
    """Print a segment's batches (one JSON object per line) with offsets and CRC status.

    Exits 1 if the segment ends in bytes that are not a whole valid batch (a torn tail the
    broker would cut off when it opens the partition).
    """
    size = path.stat().st_size
    bad = False
    with path.open("rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            head = f.read(HEADER_SIZE)
            try:
                header = BatchHeader.parse(head)
                if header.length < HEADER_SIZE - 12 or pos + header.size > size:
                    raise BatchError(f"batch of {header.size} bytes runs past the end", 2)
                f.seek(pos)
                header.check(f.read(header.size), stored=True)
                crc = "ok"
            except BatchError as exc:
                click.echo(json.dumps({"position": pos, "invalid": str(exc),
                                       "bytes_left": size - pos}))  # fmt: skip
                bad = True
                break
            click.echo(json.dumps({
                "position": pos, "base_offset": header.base_offset,
                "last_offset": header.last_offset, "records": header.record_count,
                "bytes": header.size, "compression": header.compression,
                "max_timestamp": header.max_timestamp, "producer_id": header.producer_id,
                "base_sequence": header.base_sequence, "transactional": header.transactional,
                "control": header.control, "crc": crc,
            }))  # fmt: skip
            pos += header.size
    match = _BASE.match(path.name)
    if match is None:
        click.echo(f"note: {path.name} is not named by a base offset", err=True)
    sys.exit(1 if bad else 0)
