"""The metadata committer: chained ops, and clean-up exactly when an op did not commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, Table, event, func, insert, select

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.groupcommit import Committer
from scalelab.objectstore.metadata import MetadataStore
from scalelab.objectstore.model import Bucket
from scalelab.storage.sql import create_engine, create_schema, sqlite_url

meta = MetaData()
rows = Table("rows", meta, Column("n", Integer, primary_key=True))


@pytest.fixture
def committer(tmp_path: Path) -> Iterator[Committer]:
    engine = create_engine(sqlite_url(tmp_path / "m.db"))
    create_schema(engine, meta)
    c = Committer(engine)
    yield c
    c.close()
    engine.dispose()


def add(n: int) -> Callable[[Connection], int]:
    def op(conn: Connection) -> int:
        conn.execute(insert(rows).values(n=n))
        return n

    return op


def stored(c: Committer) -> set[int]:
    return set(c.run(lambda conn: {r.n for r in conn.execute(select(rows.c.n))}))


def count(c: Committer) -> int:
    return int(c.run(lambda conn: conn.execute(select(func.count()).select_from(rows)).scalar()))


def test_op_waits_for_its_prerequisite(committer: Committer) -> None:
    data: Future[None] = Future()
    cleaned: list[int] = []
    fut = committer.submit(add(1), after=data, on_error=lambda: cleaned.append(1))
    assert count(committer) == 0 and not fut.done()
    data.set_result(None)
    assert fut.result(timeout=5) == 1
    assert stored(committer) == {1} and cleaned == []


def test_failed_prerequisite_skips_the_op_and_cleans_up(committer: Committer) -> None:
    data: Future[None] = Future()
    cleaned: list[int] = []
    fut = committer.submit(add(1), after=data, on_error=lambda: cleaned.append(1))
    data.set_exception(OSError("fdatasync failed"))
    with pytest.raises(OSError, match="fdatasync"):
        fut.result(timeout=5)
    assert cleaned == [1] and count(committer) == 0


def test_op_cancelled_while_queued_never_runs_and_committer_lives_on(
    committer: Committer,
) -> None:
    gate, entered = threading.Event(), threading.Event()

    def blocker(conn: Connection) -> None:
        entered.set()
        gate.wait(5)

    first = committer.submit(blocker)
    entered.wait(5)
    cleaned: list[int] = []
    queued = committer.submit(add(2), on_error=lambda: cleaned.append(2))
    assert queued.cancel()  # its caller went away (an asyncio task cancelled)
    gate.set()
    first.result(timeout=5)
    assert committer.submit(add(3)).result(timeout=5) == 3  # the thread survived
    assert stored(committer) == {3} and cleaned == [2]


def test_running_op_is_not_cleaned_up_when_its_caller_gives_up(committer: Committer) -> None:
    entered, gate = threading.Event(), threading.Event()
    cleaned: list[int] = []

    def slow(conn: Connection) -> int:
        entered.set()
        gate.wait(5)
        return add(4)(conn)

    fut = committer.submit(slow, on_error=lambda: cleaned.append(4))
    entered.wait(5)
    assert not fut.cancel()  # running: too late to cancel, so it commits
    gate.set()
    assert fut.result(timeout=5) == 4
    assert stored(committer) == {4} and cleaned == []


def test_failing_op_cleans_up_and_spares_its_batch(committer: Committer) -> None:
    entered, gate = threading.Event(), threading.Event()

    def blocker(conn: Connection) -> None:
        entered.set()
        gate.wait(5)

    def refuse(conn: Connection) -> None:
        raise S3Error("PreconditionFailed")

    first = committer.submit(blocker)
    entered.wait(5)
    cleaned: list[str] = []
    futs = [
        committer.submit(add(5), on_error=lambda: cleaned.append("5")),
        committer.submit(refuse, on_error=lambda: cleaned.append("refused")),
        committer.submit(add(6), on_error=lambda: cleaned.append("6")),
    ]
    gate.set()  # the three run as one batch, then one transaction each
    first.result(timeout=5)
    assert futs[0].result(timeout=5) == 5 and futs[2].result(timeout=5) == 6
    with pytest.raises(S3Error):
        futs[1].result(timeout=5)
    assert stored(committer) == {5, 6} and cleaned == ["refused"]


def test_bucket_memo_sees_changes_made_in_the_same_transaction(tmp_path: Path) -> None:
    """A batch reads each bucket once, but a bucket changed or dropped in it is read afresh."""
    engine = create_engine(sqlite_url(tmp_path / "meta.db"))
    store = MetadataStore(engine)
    store.create_schema()
    try:
        store.committer.run(lambda conn: store.create_bucket(conn, Bucket("b", "me", 0.0, "r")))
        selects: list[str] = []
        event.listen(
            engine,
            "before_cursor_execute",
            lambda *a: (
                selects.append(a[2])
                if "buckets" in a[2] and a[2].lstrip().upper().startswith("SELECT")
                else None
            ),
        )

        def batch(conn: Connection) -> list[str]:
            seen = [store.get_bucket_in(conn, "b").versioning]
            seen.append(store.get_bucket_in(conn, "b").versioning)  # from the memo
            store.update_bucket(conn, "b", versioning="Enabled")
            seen.append(store.get_bucket_in(conn, "b").versioning)
            store.update_bucket(conn, "b", versioning="Suspended")
            store.delete_bucket(conn, "b")
            with pytest.raises(S3Error, match="bucket does not exist"):
                store.get_bucket_in(conn, "b")
            return seen

        assert store.committer.run(batch) == ["", "", "Enabled"]
        bucket_reads = [s for s in selects if "FROM buckets" in s and "objects" not in s]
        assert len(bucket_reads) == 4  # first read, after each change, and the one that fails
    finally:
        store.close()
        engine.dispose()
