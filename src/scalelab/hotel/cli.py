"""`scalelab hotel ...`: checks over the hotel database."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import exc
from sqlalchemy.engine import make_url

from scalelab.hotel.audit import audit
from scalelab.hotel.server import database_urls
from scalelab.hotel.settings import HotelSettings
from scalelab.storage import sql


@click.group(name="hotel")
def hotel() -> None:
    """Tools for the hotel reservation system's databases."""


@hotel.command(name="audit")
@click.option("--database-url", default=None, help="audit this database (default: the settings')")
@click.option("--show", default=20, help="mismatches to print")
def audit_command(database_url: str | None, show: int) -> None:
    """Check that inventory equals the reservations holding it, on every shard."""
    urls = [database_url] if database_url else database_urls(HotelSettings.from_env())
    bad = False
    for url in urls:
        parsed = make_url(sql.normalize_url(url))
        if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise click.ClickException(f"{url}: no hotel database there")
        engine = sql.create_engine(url, pool_size=1)
        try:
            report = audit(engine)
        except exc.DBAPIError as error:  # reachable, but not a hotel database
            raise click.ClickException(f"{url}: {error.orig}") from None
        finally:
            engine.dispose()
        click.echo(
            f"{make_url(url).render_as_string(hide_password=True)}: {report.nights_checked} "
            f"nights, {report.reservations} holding reservations, "
            f"{len(report.mismatches)} mismatches, {report.oversold} oversold"
        )
        for m in report.mismatches[:show]:
            click.echo(f"  {m}")
        bad = bad or not report.ok
    if bad:
        raise SystemExit(1)
