"""AutoPipeline against the loopback Redis: batching, order, per-command errors, cancellation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from scalelab.storage.autopipeline import AutoPipeline

pytestmark = pytest.mark.redis


def run(redis_url: str, body: Callable[[AutoPipeline, str], Awaitable[None]]) -> None:
    from redis.asyncio import Redis

    async def main() -> None:
        client = Redis.from_url(redis_url)
        pipe = AutoPipeline(client)
        prefix = f"test-autopipe:{uuid.uuid4().hex[:12]}:"
        try:
            async with asyncio.timeout(30):
                await body(pipe, prefix)
        finally:
            await pipe.close()
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    asyncio.run(main())


def test_concurrent_callers_share_pipelines_and_keep_their_order(redis_url: str) -> None:
    async def body(pipe: AutoPipeline, prefix: str) -> None:
        key = prefix + "list"
        # 500 tasks at once: far fewer pipelines than commands, and RPUSH order = call order.
        replies = await asyncio.gather(*(pipe.execute("RPUSH", key, str(i)) for i in range(500)))
        assert replies == list(range(1, 501))
        assert pipe.commands == 500 and pipe.batches < 50
        items = await pipe.execute("LRANGE", key, 0, -1)
        assert [int(x) for x in items] == list(range(500))

    run(redis_url, body)


def test_a_refused_command_fails_only_its_caller(redis_url: str) -> None:
    from redis.exceptions import ResponseError

    async def body(pipe: AutoPipeline, prefix: str) -> None:
        await pipe.execute("SET", prefix + "text", "not a number")
        results = await asyncio.gather(
            pipe.execute("INCR", prefix + "n"),
            pipe.execute("INCR", prefix + "text"),  # WRONGTYPE / not an integer
            pipe.execute("INCR", prefix + "n"),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], ResponseError)

    run(redis_url, body)


def test_a_cancelled_caller_does_not_disturb_the_others(redis_url: str) -> None:
    async def body(pipe: AutoPipeline, prefix: str) -> None:
        tasks = [asyncio.create_task(pipe.execute("INCR", prefix + "n")) for _ in range(20)]
        tasks[5].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[5], asyncio.CancelledError)
        others = [r for i, r in enumerate(done) if i != 5]
        assert len(set(others)) == 19 and set(others) <= set(range(1, 21))
        # The cancelled INCR may or may not have run; every other one did, exactly once.
        final = int(await pipe.execute("GET", prefix + "n"))
        assert final in (19, 20)

    run(redis_url, body)


def test_unreachable_redis_fails_every_caller_of_the_batch() -> None:
    pytest.importorskip("redis")
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def main() -> None:
        no_retry = Retry(NoBackoff(), 0)
        client = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=no_retry)
        pipe = AutoPipeline(client)
        results = await asyncio.gather(
            *(pipe.execute("PING") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RedisConnectionError | OSError) for r in results), results
        await client.aclose()

    asyncio.run(main())


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        AutoPipeline(None, max_batch=0)  # type: ignore[arg-type]
