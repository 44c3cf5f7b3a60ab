"""Group commit for the metadata store: many writers, one transaction, one fsync.

A single writer thread gathers whatever operations are waiting and runs them in one
transaction; if one fails (an `If-None-Match` that does not hold), the batch is redone one
transaction per op, so a failure never undoes its neighbours. Sixteen concurrent PUTs share
one fsync instead of paying sixteen, and SQLite never sees two writers.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from scalelab.objectstore.errors import S3Error
from scalelab.storage.sql import writing

log = logging.getLogger("scalelab.objectstore.groupcommit")

T = TypeVar("T")


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
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
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
