from pathlib import Path

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    text,
)

from scalelab.storage import sql


def test_urls_people_paste_are_normalised() -> None:
    assert sql.normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sql.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sql.normalize_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    with pytest.raises(ValueError, match="mysql"):
        sql.normalize_url("mysql://u@h/db")


def test_sqlite_is_configured_for_durability(tmp_path: Path) -> None:
    engine = sql.create_engine(sql.sqlite_url(tmp_path / "sub" / "x.db"))
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_both_backends_commit_and_roll_back(sql_engine: Engine) -> None:
    with sql.writing(sql_engine).begin() as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)"))
        conn.execute(text("INSERT INTO t VALUES (1, 'a')"))
    with pytest.raises(RuntimeError):
        with sql.writing(sql_engine).begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (2, 'b')"))
            raise RuntimeError("abort")
    with sql_engine.connect() as conn:
        assert conn.execute(text("SELECT k, v FROM t")).all() == [(1, "a")]


def test_schema_name_is_checked() -> None:
    with pytest.raises(ValueError):
        sql.create_engine("postgresql://u@h/db", schema="x; drop table y")


def test_prepared_statements_on_both_backends(sql_engine: Engine) -> None:
    """Compiled once per dialect, run in the caller's transaction, literals kept, rows named."""
    meta = MetaData()
    t = Table(
        "prep", meta, Column("id", Integer, primary_key=True), Column("k", String(20)),
        Column("v", String(20)), Column("flag", Boolean),
    )  # fmt: skip
    meta.create_all(sql_engine)
    dialect = sql_engine.dialect
    add = sql.Prepared(insert(t).values(k=bindparam("k"), v=bindparam("v"), flag=True), dialect)
    gone = delete(t).where(t.c.k == "a", t.c.v == bindparam("v")).returning(t.c.k, t.c.flag)
    take_a = sql.Prepared(gone, dialect)
    with sql.writing(sql_engine).begin() as conn:
        assert add.run(conn, {"k": "a", "v": "1"}) == []
        add.run(conn, {"k": "b", "v": "1"})
    with pytest.raises(RuntimeError), sql.writing(sql_engine).begin() as conn:
        add.run(conn, {"k": "c", "v": "1"})
        raise RuntimeError("rolled back with the transaction")
    with sql.writing(sql_engine).begin() as conn:
        rows = take_a.run(conn, {"v": "1"})
    assert [(r.k, bool(r.flag)) for r in rows] == [("a", True)]
    with sql_engine.connect() as conn:
        assert conn.execute(select(t.c.k)).scalars().all() == ["b"]
    meta.drop_all(sql_engine)
