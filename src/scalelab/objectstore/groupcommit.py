"""Group commit: many writers, one transaction, one fsync.

A single writer thread gathers whatever operations are waiting and runs them in one
transaction; if one fails (an `If-None-Match` that does not hold), the batch is redone one
transaction per op, so a failure never undoes its neighbours. Sixteen concurrent PUTs share
one fsync instead of paying sixteen, and SQLite never sees two writers. `Reclaimer` does the
same for deleting the data of replaced versions on the data node, off the request path.

An op can wait for another future (the data node's commit of the bytes it will point at)
without a trip through the event loop. Its `on_error` runs when, and only when, it did not
commit: it failed, was cancelled before it ran, or what it waited for failed. Only the
committer knows which, so a caller cancelled mid-commit never cleans up after an op that
went through.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

from scalelab.objectstore.datanode import DataNode
from scalelab.objectstore.errors import S3Error
from scalelab.storage.sql import writing

log = logging.getLogger("scalelab.objectstore.groupcommit")

T = TypeVar("T")


class BatchWorker(Generic[T]):
    """One thread that takes every item waiting at once and handles them as one batch."""

    def __init__(self, name: str, max_batch: int) -> None:
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: T) -> None:
        self._queue.put(item)

    def close(self) -> None:
        """Handle what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _handle(self, batch: list[T]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._handle(batch)
            if stop:
                return


_Op = tuple[Callable[[Connection], Any], Future[Any], Callable[[], None] | None]


class Committer(BatchWorker[_Op]):
    """Group commit for the metadata store: one transaction and one fsync per batch."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int = 256,
        scope: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self._engine = writing(engine)
        self._scope = scope  # entered around each transaction (a per-transaction memo)
        self._conn: Connection | None = None  # kept open: a pool checkout per batch costs more
        super().__init__("metadata-committer", max_batch)  # than a small transaction's SQL

    def close(self) -> None:
        super().close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def submit(
        self,
        op: Callable[[Connection], T],
        *,
        after: Future[Any] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> Future[T]:
        """Queue op (once `after` has succeeded); its future has op's result or error."""
        future: Future[T] = Future()
        item: _Op = (op, future, on_error)
        if after is None:
            self._put(item)
        else:

            def ready(done: Future[Any]) -> None:  # on the thread that completed `after`
                exc = CancelledError() if done.cancelled() else done.exception()
                if exc is None:
                    self._put(item)
                elif future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                    _cleanup(item)
                else:
                    _cleanup(item)

            after.add_done_callback(ready)
        return future

    def run(self, op: Callable[[Connection], T]) -> T:
        return self.submit(op).result()

    def _handle(self, batch: list[_Op]) -> None:
        live = []
        for item in batch:  # a future cancelled while queued (its caller gone) never runs
            if item[1].set_running_or_notify_cancel():
                live.append(item)
            else:
                _cleanup(item)
        if live:
            self._commit(live)

    def _commit(self, batch: list[_Op]) -> None:
        """All ops in one transaction; if any op fails, redo them one transaction each.

        Failures (a precondition that does not hold, a bucket that vanished) are rare, so the
        common path pays no savepoints; ops are functions of the connection and safe to re-run,
        because nothing of the failed attempt was committed.
        """
        values: list[Any] = []
        if self._conn is None:
            self._conn = self._engine.connect()
        conn = self._conn
        try:
            with self._scope(), conn.begin():
                for op, _future, _on_error in batch:
                    values.append(op(conn))
        except Exception as exc:
            if not isinstance(exc, S3Error):  # perhaps the connection broke: use a new one
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()
            if len(batch) == 1:
                if not isinstance(exc, S3Error):
                    log.exception("metadata commit failed")
                batch[0][1].set_exception(exc)
                _cleanup(batch[0])
                return
            for item in batch:
                self._commit([item])
            return
        for (_op, future, _on_error), value in zip(batch, values, strict=True):
            future.set_result(value)


def _cleanup(item: _Op) -> None:
    """Run an op's on_error; a failing clean-up is logged (the orphan sweep is the backstop)."""
    if (on_error := item[2]) is not None:
        try:
            on_error()
        except Exception:
            log.exception("clean-up after a metadata op that did not commit failed")


class Reclaimer(BatchWorker[list[str]]):
    """Deletes data objects on a background thread, all that are waiting in one transaction."""

    def __init__(self, node: DataNode) -> None:
        self._node = node
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._lock = threading.Lock()
        super().__init__("data-reclaimer", 64)

    def submit(self, ids: list[str]) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._put(ids)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every submitted deletion has been applied (GC and fsck call this)."""
        self._idle.wait(timeout)

    def _handle(self, batch: list[list[str]]) -> None:
        ids = [oid for chunk in batch for oid in chunk]
        try:
            self._node.delete_many(ids)
        except Exception:  # the orphan sweep will get them
            log.exception("could not delete %d data objects", len(ids))
        with self._lock:
            self._pending -= len(batch)
            if self._pending == 0:
                self._idle.set()
