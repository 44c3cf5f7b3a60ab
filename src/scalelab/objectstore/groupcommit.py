"""Group commit: many writers, one transaction, one fsync.

A single writer thread gathers whatever operations are waiting and runs them in one
transaction; if one fails (an `If-None-Match` that does not hold), the batch is redone one
transaction per op, so a failure never undoes its neighbours. Sixteen concurrent PUTs share
one fsync instead of paying sixteen, and SQLite never sees two writers. `Reclaimer` does the
same for deleting the data of replaced versions on the data node, off the request path.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from scalelab.objectstore.datanode import DataNode
from scalelab.objectstore.errors import S3Error
from scalelab.storage.sql import writing

log = logging.getLogger("scalelab.objectstore.groupcommit")

T = TypeVar("T")


def take_waiting(q: queue.SimpleQueue[T | None], first: T, most: int) -> tuple[list[T], bool]:
    """`first` and whatever else is already waiting (at most `most` items): the batch that
    shares one transaction. True as the second value if the stop sentinel (None) was taken."""
    batch = [first]
    while len(batch) < most:
        try:
            more = q.get_nowait()
        except queue.Empty:
            break
        if more is None:
            return batch, True
        batch.append(more)
    return batch, False


class Committer:
    """Group commit: one writer thread, one transaction per batch, one savepoint per op."""

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self._engine = writing(engine)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Callable[[Connection], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="metadata-committer", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[Connection], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((op, future))
        return future

    def run(self, op: Callable[[Connection], T]) -> T:
        return self.submit(op).result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = take_waiting(self._queue, item, self._max_batch)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]]) -> None:
        """All ops in one transaction; if any op fails, redo them one transaction each.

        Failures (a precondition that does not hold, a bucket that vanished) are rare, so the
        common path pays no savepoints; ops are functions of the connection and safe to re-run,
        because nothing of the failed attempt was committed.
        """
        values: list[Any] = []
        try:
            with self._engine.begin() as conn:
                for op, _future in batch:
                    values.append(op(conn))
        except Exception as exc:
            if len(batch) == 1:
                if not isinstance(exc, S3Error):
                    log.exception("metadata commit failed")
                batch[0][1].set_exception(exc)
                return
            for item in batch:
                self._commit([item])
            return
        for (_op, future), value in zip(batch, values, strict=True):
            future.set_result(value)


class Reclaimer:
    """Deletes data objects on a background thread, all that are waiting in one transaction."""

    def __init__(self, node: DataNode) -> None:
        self._node = node
        self._queue: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="data-reclaimer", daemon=True)
        self._thread.start()

    def submit(self, ids: list[str]) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(ids)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every submitted deletion has been applied (GC and fsck call this)."""
        self._idle.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            lists, stop = take_waiting(self._queue, item, 64)
            batch = [oid for ids in lists for oid in ids]
            taken = len(lists)
            try:
                self._node.delete_many(batch)
            except Exception:  # the orphan sweep will get them
                log.exception("could not delete %d data objects", len(batch))
            with self._lock:
                self._pending -= taken
                if self._pending == 0:
                    self._idle.set()
            if stop:
                return
