"""Group commit for the metadata store: many writers, one transaction, one fsync.

A single writer thread gathers whatever operations are waiting and runs them in one
transaction, each in its own savepoint, so one failing precondition (an `If-None-Match` that
does not hold) does not undo its neighbours. Sixteen concurrent PUTs share one fsync instead of
paying sixteen, and SQLite never sees two writers.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
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
        self._queue: queue.SimpleQueue[
            tuple[Callable[[Connection], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="metadata-committer", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[Connection], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
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

    def _commit(
        self, batch: list[tuple[Callable[[Connection], Any], concurrent.futures.Future[Any]]]
    ) -> None:
        results: list[tuple[concurrent.futures.Future[Any], bool, Any]] = []
        try:
            with self._engine.begin() as conn:
                for op, future in batch:
                    if len(batch) == 1:
                        try:
                            results.append((future, True, op(conn)))
                        except S3Error as exc:
                            results.append((future, False, exc))
                            raise
                        continue
                    savepoint = conn.begin_nested()
                    try:
                        value = op(conn)
                    except Exception as exc:
                        savepoint.rollback()
                        results.append((future, False, exc))
                    else:
                        savepoint.commit()
                        results.append((future, True, value))
        except S3Error:
            pass  # a single op's own failure: rolled back, reported below
        except Exception as exc:  # the commit itself failed: nobody's write landed
            log.exception("metadata commit of %d operations failed", len(batch))
            for _op, future in batch:
                future.set_exception(exc)
            return
        for future, ok, value in results:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
