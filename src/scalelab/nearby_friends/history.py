"""The location history: every fix a user sent, append-only, queryable by time range.

The book writes history to a store tuned for heavy writes; here it is SQL, and what keeps the
write path cheap is batching: the WebSocket server `add`s each fix to a `HistoryWriter` on
the event loop (a deque append, no I/O) and a background task `flush`es it in a worker thread
about once a second, one transaction and one executemany per batch.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence

from sqlalchemy import Engine, insert, select

from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.schema import location_history
from scalelab.storage.sql import write_transaction


class LocationHistory:
    """Append and range-query location fixes in SQL (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = insert(location_history)

    def append(self, locations: Sequence[Location]) -> int:
        """Store the fixes in one transaction; how many were written."""
        if not locations:
            return 0
        rows = [
            {"user_id": loc.user_id, "ts": loc.updated_at, "lat": loc.lat, "lng": loc.lng}
            for loc in locations
        ]
        with write_transaction(self.engine) as conn:
            conn.execute(self._insert, rows)
        return len(rows)

    def query(self, user_id: int, start: float, end: float, limit: int = 1000) -> list[Location]:
        """The user's fixes with start <= updated_at < end, oldest first, at most limit.

        Half-open so consecutive windows never return a fix twice; end may be math.inf.
        """
        if limit <= 0:
            return []
        h = location_history.c
        query = select(h.ts, h.lat, h.lng).where(h.user_id == user_id, h.ts >= start)
        if not math.isinf(end):
            query = query.where(h.ts < end)
        query = query.order_by(h.ts).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [Location(user_id, float(r.lat), float(r.lng), float(r.ts)) for r in rows]


class HistoryWriter:
    """A bounded buffer between the event loop and LocationHistory.

    `add` is called on the event loop for every fix and must never block on I/O; `flush` runs
    in a worker thread and drains what is buffered. When the database falls behind and the
    buffer is full, the oldest fix is dropped and counted: the book accepts losing a few
    location points, and a bounded buffer keeps a slow database from exhausting memory.
    """

    def __init__(
        self, history: LocationHistory, max_pending: int = 100_000, batch_size: int = 5_000
    ) -> None:
        if max_pending < 1 or batch_size < 1:
            raise ValueError("max_pending and batch_size must be at least 1")
        self.history = history
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.dropped = 0  # fixes discarded because the buffer was full
        self.written = 0  # fixes stored by flush
        self._buffer: deque[Location] = deque()
        self._lock = threading.Lock()  # add (event loop) and flush (a thread) meet here

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, location: Location) -> None:
        """Buffer one fix (cheap, never blocks on I/O)."""
        with self._lock:
            if len(self._buffer) >= self.max_pending:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(location)

    def _take(self) -> list[Location]:
        with self._lock:
            n = min(self.batch_size, len(self._buffer))
            return [self._buffer.popleft() for _ in range(n)]

    def _put_back(self, batch: list[Location]) -> None:
        """Return a batch that failed to the front, still within the bound."""
        with self._lock:
            room = self.max_pending - len(self._buffer)
            keep = batch[-room:] if room > 0 else []
            self.dropped += len(batch) - len(keep)
            self._buffer.extendleft(reversed(keep))

    def flush(self) -> int:
        """Write everything buffered so far, batch by batch; how many fixes were written.

        Blocking: run it in a thread. If the database fails, the unwritten batch goes back to
        the buffer (oldest dropped if it no longer fits) and the error propagates, so the
        caller can log it and try again on its next tick.
        """
        total = 0
        for _ in range(math.ceil(self.pending / self.batch_size)):
            batch = self._take()
            if not batch:
                break
            try:
                self.history.append(batch)
            except BaseException:
                self._put_back(batch)
                raise
            total += len(batch)
            with self._lock:
                self.written += len(batch)
        return total
