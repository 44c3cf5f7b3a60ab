"""The durability policy: when a partition's appended bytes are fsynced, and what an ack waits for.

Two policies, chosen by `fsync_before_ack`:

- **fsync before ack** (the default here): a produce with acks=1 or all is answered only once
  its partition is fsynced. Group commit keeps that affordable: one fsync runs at a time per
  partition, and every produce whose bytes were appended while it ran waits for the next one,
  which covers all of them. Under load a partition does one fsync per round of produce
  requests, not one per request; with requests pipelined on a connection (server.py) the same
  holds for a single producer with several requests in flight.
- **flush by interval** (Kafka's model): acks do not wait for the disk. A partition is fsynced
  once `flush_interval_messages` records were appended since its last fsync, and every
  `flush_interval_ms` if it has unsynced bytes. Kafka's defaults never fsync at all and rely
  on replicas; a single node has none, so the time bound defaults to one second: a killed
  process loses nothing (the bytes are in the OS), a power loss at most about a second.

asyncio only: the fsyncs themselves run in worker threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from scalelab.message_queue.partition import Partition

__all__ = ["Flusher", "GroupSync"]

log = logging.getLogger(__name__)


class GroupSync:
    """One partition's fsyncs: never two at once, each covering all appended before it began."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.durable = -1  # the log end offset the last finished fsync covered
        self._running: asyncio.Future[int] | None = None

    async def sync(self) -> None:
        """Return once everything appended before the call is durable."""
        target = self.partition.log_end_offset
        while self.durable < target:
            running = self._running
            if running is not None and running.done():  # finished, not yet folded in
                self._running = None
                if not running.cancelled() and running.exception() is None:
                    self.durable = max(self.durable, running.result())
                continue  # a failed one is tried again; a second failure raises below
            if running is None:
                running = asyncio.ensure_future(asyncio.to_thread(self.partition.sync))
                self._running = running
            # a fresh fsync cannot finish before this await (it runs in a thread), so the
            # loop always yields to the event loop
            self.durable = max(self.durable, await asyncio.shield(running))

    @property
    def dirty(self) -> bool:
        return self.durable < self.partition.log_end_offset


class Flusher:
    """The broker's durability policy over all its partitions."""

    def __init__(
        self, fsync_before_ack: bool, interval_messages: int = -1, interval_ms: int = 1000
    ) -> None:
        self.fsync_before_ack = fsync_before_ack
        self.interval_messages = interval_messages
        self.interval_ms = interval_ms
        self._groups: dict[Partition, GroupSync] = {}
        self._unsynced: dict[Partition, int] = {}  # records appended since the last fsync
        self._background: set[asyncio.Future[None]] = set()

    def group(self, partition: Partition) -> GroupSync:
        g = self._groups.get(partition)
        if g is None:
            g = self._groups[partition] = GroupSync(partition)
        return g

    async def appended(self, counts: dict[Partition, int], acked: bool) -> None:
        """After a produce appended counts[p] records to each p: wait for what the policy
        promises before the ack (nothing, for acks=0 or flush-by-interval)."""
        if self.fsync_before_ack:
            if acked:
                await asyncio.gather(*(self.group(p).sync() for p in counts))
            return
        if self.interval_messages <= 0:
            return
        for part, n in counts.items():
            total = self._unsynced.get(part, 0) + n
            if total >= self.interval_messages:
                total = 0
                self._spawn(self.group(part).sync())
            self._unsynced[part] = total

    def _spawn(self, sync: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(sync)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def run(self, partitions: Callable[[], Iterable[Partition]]) -> None:
        """The time-based flush (flush-by-interval only): every interval_ms, fsync each of
        the broker's partitions that has unsynced bytes."""
        if self.fsync_before_ack or self.interval_ms <= 0:
            return
        while True:
            await asyncio.sleep(self.interval_ms / 1000)
            try:
                await self.flush_all(partitions())
            except OSError as exc:
                log.error("interval fsync failed: %s", exc)

    async def flush_all(self, partitions: Iterable[Partition]) -> None:
        current = set(partitions)
        for gone in [p for p in self._groups if p not in current]:
            self.forget(gone)
        dirty = [g for g in map(self.group, current) if g.dirty]
        for g in dirty:
            self._unsynced.pop(g.partition, None)
        await asyncio.gather(*(g.sync() for g in dirty))

    def forget(self, partition: Partition) -> None:
        """A deleted topic's partition."""
        self._groups.pop(partition, None)
        self._unsynced.pop(partition, None)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background fsync failed: %s", task.exception())
