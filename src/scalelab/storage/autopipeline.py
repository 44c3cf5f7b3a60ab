"""Auto-pipelining for redis.asyncio: commands that many tasks issue while a batch is in flight
go to Redis together, in one pipeline, on one connection.

Why: the nearby friends server issues a PUBLISH and a `SET ... EX` per location update from
thousands of sockets' tasks. Sent one by one, each pays redis-py's per-command cost (pool
checkout, retry wrapper, timeout scope) and a round trip; that cost, not Redis, capped a
server at a few hundred updates/s. Here a caller appends its command to a queue and awaits a
future; one flusher task sends everything queued as a pipeline, resolves the futures in order,
and repeats while more arrived meanwhile (the idea of ioredis's `enableAutoPipelining`).

One batch is in flight at a time, so commands reach Redis in the order they were issued. A
command Redis refuses fails only its own caller; a broken connection fails the whole batch
(redis-py reconnects for the next one).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["AutoPipeline"]

_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class AutoPipeline:
    """Batch the commands of concurrent callers into pipelines (no MULTI: not a transaction)."""

    def __init__(self, client: Redis, *, max_batch: int = 2000) -> None:
        """client: a redis.asyncio client (its pool lends one connection per batch).
        max_batch bounds one pipeline's size; a longer queue goes out in several."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._client = client
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (commands / batches = the batching achieved)
        self.commands = 0

    async def execute(self, *args: Any) -> Any:
        """Run one command (e.g. "PUBLISH", channel, payload); its reply, or its error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="redis-autopipeline")
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            pipe = self._client.pipeline(transaction=False)
            for args, _ in batch:
                pipe.execute_command(*args)
            self.batches += 1
            self.commands += len(batch)
            try:
                results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # the connection broke: every command of it failed
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            except BaseException:  # cancelled (closing): nobody waits in vain
                for _, fut in batch:
                    fut.cancel()
                for _, fut in self._queue:
                    fut.cancel()
                self._queue.clear()
                raise
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():  # the caller was cancelled; the command ran anyway
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Finish what is queued, then stop (the client is the caller's to close)."""
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait([flusher])
