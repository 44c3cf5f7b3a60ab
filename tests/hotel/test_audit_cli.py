"""`scalelab hotel audit`: exit 0 and a summary when inventory and reservations agree; exit 1
and every mismatch named when someone changed total_reserved (or a reservation) behind the
service's back."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, update

from scalelab.cli import main
from scalelab.hotel.schema import reservation, room_type_inventory
from scalelab.storage import sql
from tests.hotel.conftest import StartHotel
from tests.hotel.test_race import first_night
from tests.hotel.test_sharding import schema_url

SUMMARY = re.compile(
    r"^(?P<url>\S+): (?P<nights>\d+) nights, (?P<held>\d+) holding reservations, "
    r"(?P<bad>\d+) mismatches, (?P<oversold>\d+) oversold$"
)
inv = room_type_inventory


def audit_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["hotel", "audit", *args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output.splitlines()


def summary(line: str) -> dict[str, str]:
    m = SUMMARY.match(line)
    assert m, line
    return m.groupdict()


def populate(start_hotel: StartHotel, url: str) -> tuple[Engine, int, int]:
    """A real server books, cancels and pays on the database at url; its engine, hotel, type."""
    api = start_hotel(database_url=url)
    h = api.hotel(name="Audited")
    t = api.room_type(h["id"], 2)["id"]
    g = api.guest()
    night = first_night()
    api.ok(api.book(g, "gone", h["id"], t, night, 3), 201)
    api.ok(api.http.delete("/v1/reservations/gone", headers=g))
    for i in range(3):
        api.ok(api.book(g, f"a-{i}", h["id"], t, night + timedelta(days=i), 2), 201)
    r = api.http.post("/v1/reservations/a-1/payment", json={"method": "pm_card_ok"}, headers=g)
    api.ok(r)
    engine: Engine = api.app.state.shards.shards[0].engine
    return engine, h["id"], t


def test_consistent_database_exits_0(start_hotel: StartHotel, tmp_path: Path) -> None:
    url = sql.sqlite_url(tmp_path / "hotel.db")
    populate(start_hotel, url)

    code, lines = audit_cli("--database-url", url)

    assert code == 0, lines
    assert len(lines) == 1
    assert summary(lines[0]) == {
        "url": url,
        "nights": "60",  # the test server's 60-day horizon of one room type
        "held": "3",  # a-0, a-1 (paid) and a-2; the cancelled one holds nothing
        "bad": "0",
        "oversold": "0",
    }


def test_corrupted_total_reserved_exits_1(start_hotel: StartHotel, tmp_path: Path) -> None:
    url = sql.sqlite_url(tmp_path / "hotel.db")
    engine, hotel_id, type_id = populate(start_hotel, url)
    night = first_night()
    with engine.begin() as conn:  # 1 room held that night; the row now claims 2
        conn.execute(update(inv).where(inv.c.date == night).values(total_reserved=2))

    code, lines = audit_cli("--database-url", url)

    assert code == 1, lines
    assert summary(lines[0])["bad"] == "1" and summary(lines[0])["oversold"] == "0"
    assert lines[1:] == [
        f"  hotel {hotel_id} room type {type_id} {night}: inventory says 2 reserved, "
        "reservations hold 1, cap 2"
    ]


def test_every_kind_of_mismatch_and_show(start_hotel: StartHotel, tmp_path: Path) -> None:
    url = sql.sqlite_url(tmp_path / "hotel.db")
    engine, hotel_id, type_id = populate(start_hotel, url)
    night = [first_night() + timedelta(days=i) for i in range(4)]
    later = first_night() + timedelta(days=10)
    r = reservation.c
    with engine.begin() as conn:
        # counts that drifted up on nights nobody holds
        drifted = conn.execute(
            update(inv).where(inv.c.date >= later).values(total_reserved=1)
        ).rowcount
        # a cancelled reservation brought back to life: 3 held on nights 1 and 2, which allow 2
        conn.execute(update(reservation).where(r.reservation_id == "gone").values(status="pending"))
        # a held night whose inventory row vanished
        conn.execute(delete(inv).where(inv.c.date == night[3]))

    code, lines = audit_cli("--database-url", url, "--show", "2")

    assert code == 1, lines
    first = summary(lines[0])
    assert first["held"] == "4"
    assert first["oversold"] == "2"
    assert int(first["bad"]) == drifted + 3 + 1  # + nights 0-2 of "gone", + the missing row
    assert len(lines) == 1 + 2  # --show 2

    code, lines = audit_cli("--database-url", url, "--show", "1000")
    assert code == 1
    shown = lines[1:]
    assert len(shown) == int(first["bad"])
    prefix = f"  hotel {hotel_id} room type {type_id}"
    for expected in (
        f"{night[0]}: inventory says 1 reserved, reservations hold 2, cap 2",
        f"{night[1]}: inventory says 2 reserved, reservations hold 3, cap 2",
        f"{night[2]}: inventory says 2 reserved, reservations hold 3, cap 2",
        f"{night[3]}: inventory says 0 reserved, reservations hold 1, cap 0",
        f"{later}: inventory says 1 reserved, reservations hold 0, cap 2",
    ):
        assert f"{prefix} {expected}" in shown


def test_every_shard_of_the_settings(start_hotel: StartHotel, tmp_path: Path) -> None:
    """Without --database-url the settings' databases are audited: every shard, one line each."""
    urls = [sql.sqlite_url(tmp_path / "a.db"), sql.sqlite_url(tmp_path / "b.db")]
    api = start_hotel(shards=",".join(urls))
    g = api.guest()
    for name in ("Even", "Odd"):
        h = api.hotel(name=name)
        t = api.room_type(h["id"], 3)["id"]
        api.ok(api.book(g, f"in-{name}", h["id"], t, first_night()), 201)
    env = {"SCALELAB_DATA": str(tmp_path / "unused"), "SCALELAB_HOTEL_SHARDS": ",".join(urls)}

    code, lines = audit_cli(env=env)

    assert code == 0, lines
    assert [summary(line)["url"] for line in lines] == urls
    assert [summary(line)["held"] for line in lines] == ["1", "1"]

    with api.app.state.shards.shards[1].engine.begin() as conn:
        conn.execute(update(inv).values(total_reserved=0))
    code, lines = audit_cli(env=env)
    assert code == 1
    assert [summary(line)["bad"] for line in lines if not line.startswith(" ")] == ["0", "1"]
    assert lines[-1].endswith("inventory says 0 reserved, reservations hold 1, cap 3")


@pytest.mark.postgres
def test_postgres(start_hotel: StartHotel, postgres_schema: str) -> None:
    api = start_hotel("postgres", schema=postgres_schema)
    h = api.hotel(name="PG")
    t = api.room_type(h["id"], 4)["id"]
    g = api.guest()
    api.ok(api.book(g, "pg-1", h["id"], t, first_night(), 3), 201)
    url = schema_url(postgres_schema)

    code, lines = audit_cli("--database-url", url)
    assert code == 0, lines
    assert summary(lines[0])["held"] == "1"

    engine = api.app.state.shards.shards[0].engine
    with engine.begin() as conn:
        conn.execute(update(inv).where(inv.c.date == first_night()).values(total_reserved=4))
    code, lines = audit_cli("--database-url", url)
    assert code == 1
    assert summary(lines[0])["bad"] == "1"
    assert lines[1].endswith("inventory says 4 reserved, reservations hold 1, cap 4")


def test_missing_database_is_a_clear_error_and_stays_missing(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "hotel.db"

    result = CliRunner().invoke(main, ["hotel", "audit", "--database-url", sql.sqlite_url(path)])

    assert not path.exists() and not path.parent.exists()
    assert isinstance(result.exception, SystemExit) and result.exit_code != 0, result.exception
    assert str(path) in result.output
