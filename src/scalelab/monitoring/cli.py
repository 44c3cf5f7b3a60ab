"""`scalelab monitoring ...`: offline tools over the TSDB's files, and rule unit tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from scalelab.monitoring import block, chunk, ruletest, wal
from scalelab.monitoring.errors import MonitoringError


@click.group(name="monitoring")
def monitoring() -> None:
    """Tools for the monitoring system's data directory and rule files."""


def _echo_all(lines: Iterable[str]) -> None:
    try:
        for line in lines:
            click.echo(line)
    except (MonitoringError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@monitoring.command(name="dump-block")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def dump_block(path: Path) -> None:
    """Print a persisted block: meta, symbols, series, postings, chunk refs and CRCs."""
    _echo_all(block.dump(path))


@monitoring.command(name="dump-wal")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--samples", is_flag=True, help="print every sample too")
def dump_wal(path: Path, samples: bool) -> None:
    """Print a WAL directory (checkpoint, then segments) or one segment, record by record."""
    _echo_all(wal.dump(path, samples=samples))


@monitoring.command(name="dump-chunk")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def dump_chunk(path: Path) -> None:
    """Decode one Gorilla chunk saved to a file (e.g. cut out of a block with dump-block)."""
    _echo_all(chunk.dump(path.read_bytes()))


@monitoring.command(name="test-rules")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def test_rules(files: tuple[Path, ...]) -> None:
    """Run rule unit tests in `promtool test rules` format; exit 1 when any fails."""
    raise SystemExit(ruletest.main([str(f) for f in files]))
