"""`scalelab objectstore ...`: offline tools over a data directory (fsck, dump-datafile)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from scalelab.config import DATA_ENV


@click.group(name="objectstore")
def objectstore() -> None:
    """Tools for the S3-like object store's data directory."""


@objectstore.command()
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help=f"data dir (${DATA_ENV})"
)
def fsck(data: Path | None) -> None:
    """Verify every object's checksum and that metadata and data agree (server stopped)."""
    from scalelab.objectstore.background import fsck as check
    from scalelab.objectstore.server import LOCK_NAME, Runtime
    from scalelab.objectstore.settings import ObjectStoreSettings
    from scalelab.storage.lock import ExclusiveUse

    settings = ObjectStoreSettings.from_env(data=data)
    try:
        with ExclusiveUse(settings.data_dir, LOCK_NAME):
            runtime = Runtime(settings, reclaim=False)
            try:
                report = check(runtime.store)
            finally:
                runtime.close_sync()
    except BlockingIOError:
        raise click.ClickException(
            f"{settings.data_dir} is in use by a running server; stop it first"
        ) from None
    click.echo(json.dumps(report, indent=2, default=str))
    if not report["ok"]:
        sys.exit(1)


@objectstore.command(name="dump-datafile")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def dump_datafile(path: Path) -> None:
    """Print a data file's header and records (one JSON object per line), checking CRCs."""
    from scalelab.objectstore.datafile import dump

    for item in dump(path):
        click.echo(json.dumps(item, default=str))
