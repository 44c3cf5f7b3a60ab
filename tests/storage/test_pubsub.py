"""One pub/sub contract, every backend: MemoryPubSub, RedisPubSub on the shared Redis, and
ShardedPubSub over in-process shards and over three Redis servers started for this module.

pytest-asyncio is not used: each test is sync and runs its body with `asyncio.run`. Nothing
sleeps for a fixed time. Arrival is polled with a deadline; "did not arrive" is shown with a
witness: a message published after the one that must not arrive, travelling the same connection
(same channel, or a channel on the same shard), so once the witness is in, the other would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scalelab.nearby_friends.ring import HashRing
from scalelab.storage.pubsub import (
    MemoryPubSub,
    PubSub,
    RedisPubSub,
    ShardedPubSub,
    open_pubsub,
)

TEST_TIMEOUT = 30.0  # seconds for a whole test body: a hang fails instead of blocking CI
ARRIVAL = 10.0  # deadline for an expected message


# -- helpers ----------------------------------------------------------------------------------


class Inbox:
    """A handler that records what it got (hashable by identity, as handlers must be)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, payload: bytes) -> None:
        self.got.append((channel, payload))

    def payloads(self) -> list[bytes]:
        return [payload for _, payload in self.got]

    async def wait(self, count: int, deadline: float = ARRIVAL) -> None:
        """Until at least count messages are in; fails after the deadline."""
        await until(lambda: len(self.got) >= count, f"{count} messages, got {self.got!r}", deadline)


async def until(cond: Callable[[], bool], what: str, deadline: float = ARRIVAL) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def companion(ps: PubSub, channel: str, prefix: str) -> str:
    """A second channel on the same connection as channel (the same shard when sharded), so
    messages published to the two, one after the other, arrive in that order."""
    if not isinstance(ps, ShardedPubSub):
        return prefix + "witness"
    target = ps.shard_for(channel)
    for i in itertools.count():
        candidate = f"{prefix}witness{i}"
        if ps.shard_for(candidate) is target:
            return candidate
    raise AssertionError("unreachable")


@contextlib.contextmanager
def sync_client(url: str) -> Iterator[Any]:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def _numsub(urls: list[str], channel: str) -> int:
    total = 0
    for url in urls:
        with sync_client(url) as client:
            total += int(client.pubsub_numsub(channel)[0][1])
    return total


async def numsub(urls: list[str], channel: str) -> int:
    """Redis connections subscribed to channel, over all servers (PUBSUB NUMSUB)."""
    return await asyncio.to_thread(_numsub, urls, channel)


# -- Redis servers started for this module ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a free loopback port, nothing persisted."""

    def __init__(self, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server binary not installed")
        self.exe = exe
        self.proc: subprocess.Popen[bytes] | None = None
        for _ in range(5):  # a free port can be taken between probing and binding
            self.port = port or _free_port()
            if self._start():
                return
            if port is not None:
                break
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self) -> bool:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--save", "", "--appendonly", "no"]
            + ["--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        redis = pytest.importorskip("redis")
        deadline = time.monotonic() + 15
        with sync_client(self.url) as client:
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    client.ping()
                    return True
                except redis.ConnectionError:
                    time.sleep(0.01)
        self.stop()
        return False

    def restart(self) -> None:
        self.stop()
        if not self._start():
            raise RuntimeError(f"redis-server did not restart on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def redis_servers() -> Iterator[list[str]]:
    """Three private Redis servers: the pub/sub cluster a ring shards over."""
    servers: list[RedisServer] = []
    try:
        for _ in range(3):
            servers.append(RedisServer())
        yield [s.url for s in servers]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """One private Redis server this test may kill, restart and CLIENT KILL freely."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


# -- the backends -----------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    make: Callable[[], PubSub]  # another process's view of the same bus
    servers: list[str]  # the Redis servers holding its channels; [] when in-process
    counts_handlers: bool  # publish counts handlers (in-process) or connections (Redis)

    def run(self, body: Callable[[Callable[[], PubSub]], Awaitable[None]]) -> None:
        """Run body(open) on a fresh event loop; everything it opened is closed after."""

        async def main() -> None:
            opened: list[PubSub] = []

            def open_() -> PubSub:
                ps = self.make()
                opened.append(ps)
                return ps

            try:
                async with asyncio.timeout(TEST_TIMEOUT):
                    await body(open_)
            finally:
                for ps in opened:
                    await ps.close()

        asyncio.run(main())


SHARD_NAMES = ["shard-a", "shard-b", "shard-c"]


@pytest.fixture(
    params=[
        "memory",
        "sharded-memory",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("sharded-redis", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    name: str = request.param
    if name == "memory":
        bus = MemoryPubSub()  # in-process: every "server" of this process shares one bus
        return Backend(name, lambda: bus, [], counts_handlers=True)
    if name == "sharded-memory":
        shards: dict[str, PubSub] = {n: MemoryPubSub() for n in SHARD_NAMES}
        return Backend(
            name, lambda: ShardedPubSub(HashRing(SHARD_NAMES), shards), [], counts_handlers=True
        )
    if name == "redis":
        url: str = request.getfixturevalue("redis_url")
        return Backend(name, lambda: RedisPubSub(url), [url], counts_handlers=False)
    urls: list[str] = request.getfixturevalue("redis_servers")

    def sharded() -> PubSub:
        # Each process builds its own ring from the same config, in whatever order.
        ring = HashRing(random.sample(urls, len(urls)))
        return ShardedPubSub(ring, {u: RedisPubSub(u) for u in urls})

    return Backend(name, sharded, urls, counts_handlers=False)


@pytest.fixture
def prefix() -> str:
    """Unique channel names per test: the shared Redis may serve other tests at once."""
    return f"test-pubsub:{uuid.uuid4().hex[:12]}:"


# -- the contract -----------------------------------------------------------------------------


def test_publish_reaches_every_subscriber_of_the_channel_and_no_other(
    backend: Backend, prefix: str
) -> None:
    one, two = prefix + "one", prefix + "two"

    async def body(open_: Callable[[], PubSub]) -> None:
        a, b = open_(), open_()
        here, there, other = Inbox(), Inbox(), Inbox()
        await a.subscribe(one, here)
        await b.subscribe(one, there)
        await a.subscribe(two, other)
        assert await a.publish(one, b"hello") >= 1
        await here.wait(1)
        await there.wait(1)
        assert await b.publish(prefix + "nobody", b"lost") == 0
        await b.publish(two, b"for two")
        await other.wait(1)
        assert here.got == [(one, b"hello")]
        assert there.got == [(one, b"hello")]
        assert other.got == [(two, b"for two")]

    backend.run(body)


def test_two_handlers_on_one_channel_both_receive_in_order(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        first, second = Inbox(), Inbox()
        await ps.subscribe(channel, first)
        await ps.subscribe(channel, second)
        sent = [b"1", b"2", b"3"]
        for payload in sent:
            await ps.publish(channel, payload)
        await first.wait(3)
        await second.wait(3)
        assert first.payloads() == sent
        assert second.payloads() == sent

    backend.run(body)


def test_unsubscribe_stops_delivery_at_once(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps, publisher = open_(), open_()
        leaving, witness = Inbox(), Inbox()
        await ps.subscribe(channel, leaving)
        await ps.subscribe(channel, witness)
        await publisher.publish(channel, b"before")
        await leaving.wait(1)
        await ps.unsubscribe(channel, leaving)
        await publisher.publish(channel, b"after")
        await witness.wait(2)
        assert leaving.payloads() == [b"before"]
        assert witness.payloads() == [b"before", b"after"]

    backend.run(body)


def test_last_unsubscribe_releases_the_channel(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps, publisher = open_(), open_()
        h1, h2 = Inbox(), Inbox()
        await ps.subscribe(channel, h1)
        await ps.subscribe(channel, h2)
        assert ps.stats()["channels"] == 1
        if backend.servers:
            assert await numsub(backend.servers, channel) == 1  # one connection, two handlers
        await ps.unsubscribe(channel, h1)
        if backend.servers:
            assert await numsub(backend.servers, channel) == 1
        await ps.unsubscribe(channel, h2)
        if backend.servers:
            assert await numsub(backend.servers, channel) == 0  # UNSUBSCRIBE was sent
        assert ps.stats()["channels"] == 0
        assert await publisher.publish(channel, b"x") == 0
        assert h1.got == [] and h2.got == []

    backend.run(body)


def test_publish_count(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        a, b = open_(), open_()
        assert await a.publish(channel, b"none yet") == 0
        await a.subscribe(channel, Inbox())
        await a.subscribe(channel, Inbox())
        # In-process: exactly the handlers. Redis: subscribed connections (one per process).
        assert await b.publish(channel, b"x") == (2 if backend.counts_handlers else 1)
        await b.subscribe(channel, Inbox())
        assert await b.publish(channel, b"y") == (3 if backend.counts_handlers else 2)

    backend.run(body)


PAYLOADS = [
    b"",
    b"\x00",
    bytes(range(256)),
    b"\xff\xfe\xfd not utf-8 \x80\xc3",
    "héllo, 世界".encode(),
    b"\r\n*1\r\n$4\r\nPING\r\n",  # RESP framing inside a payload
    random.Random(42).randbytes(256 * 1024),
]


def test_payload_bytes_round_trip(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps, publisher = open_(), open_()
        inbox = Inbox()
        await ps.subscribe(channel, inbox)
        for payload in PAYLOADS:
            await publisher.publish(channel, payload)
        await inbox.wait(len(PAYLOADS))
        assert inbox.payloads() == PAYLOADS
        assert all(type(p) is bytes for p in inbox.payloads())

    backend.run(body)


def test_instances_deliver_across_each_other(backend: Backend, prefix: str) -> None:
    """Two server processes: each subscribes to one channel, the other publishes there."""
    to_a, to_b = prefix + "to-a", prefix + "to-b"

    async def body(open_: Callable[[], PubSub]) -> None:
        a, b = open_(), open_()
        inbox_a, inbox_b = Inbox(), Inbox()
        await a.subscribe(to_a, inbox_a)
        await b.subscribe(to_b, inbox_b)
        await a.publish(to_b, b"from a")
        await b.publish(to_a, b"from b")
        await inbox_a.wait(1)
        await inbox_b.wait(1)
        assert inbox_a.got == [(to_a, b"from b")]
        assert inbox_b.got == [(to_b, b"from a")]

    backend.run(body)


def test_subscribing_twice_delivers_once(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        inbox, witness = Inbox(), Inbox()
        await ps.subscribe(channel, inbox)
        await ps.subscribe(channel, inbox)
        await ps.subscribe(channel, witness)
        await ps.publish(channel, b"1")
        await witness.wait(1)
        await ps.unsubscribe(channel, inbox)  # one unsubscribe undoes both (a set)
        await ps.publish(channel, b"2")
        await witness.wait(2)
        assert inbox.payloads() == [b"1"]

    backend.run(body)


def test_unsubscribe_of_unknown_handler_is_a_noop(backend: Backend, prefix: str) -> None:
    channel = prefix + "c"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        inbox = Inbox()
        await ps.unsubscribe(prefix + "never", inbox)
        await ps.subscribe(channel, inbox)
        await ps.unsubscribe(channel, Inbox())
        await ps.publish(channel, b"still here")
        await inbox.wait(1)
        if backend.servers:
            assert await numsub(backend.servers, channel) == 1

    backend.run(body)


def test_failing_handler_does_not_stop_the_others(
    backend: Backend, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = prefix + "c"

    def broken(channel: str, payload: bytes) -> None:
        raise RuntimeError("boom")

    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        before, after = Inbox(), Inbox()
        await ps.subscribe(channel, before)
        await ps.subscribe(channel, broken)
        await ps.subscribe(channel, after)
        await ps.publish(channel, b"1")
        await ps.publish(channel, b"2")
        await after.wait(2)
        assert before.payloads() == after.payloads() == [b"1", b"2"]

    with caplog.at_level(logging.ERROR, logger="scalelab.storage.pubsub"):
        backend.run(body)
    assert sum("boom" in (r.exc_text or "") for r in caplog.records) == 2


def test_stats_count_published_delivered_channels(backend: Backend, prefix: str) -> None:
    one, two = prefix + "one", prefix + "two"

    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        h1, h2, h3 = Inbox(), Inbox(), Inbox()
        await ps.subscribe(one, h1)
        await ps.subscribe(one, h2)
        await ps.subscribe(two, h3)
        for channel in (one, one, two, prefix + "nobody"):
            await ps.publish(channel, b"x")
        await h1.wait(2)
        await h2.wait(2)
        await h3.wait(1)
        stats = ps.stats()
        assert (stats["published"], stats["delivered"], stats["channels"]) == (4, 5, 2)

    backend.run(body)


@pytest.mark.parametrize("seed", range(6))
def test_concurrent_subscribe_unsubscribe_ends_consistent(
    backend: Backend, prefix: str, seed: int
) -> None:
    """Racing subscribes and unsubscribes of one channel (a friend list changing while its
    sockets connect) leave exactly the last state: delivery and the Redis subscription agree.
    Each call changes local state before its first await, so the model is the calls in order.
    The connection is up first, so the SUBSCRIBE/UNSUBSCRIBE traffic itself races.
    """
    channel = prefix + "c"
    rnd = random.Random(seed)

    async def body(open_: Callable[[], PubSub]) -> None:
        ps, publisher = open_(), open_()
        witness_channel = companion(ps, channel, prefix)
        witness = Inbox()
        await ps.subscribe(witness_channel, witness)  # connects the shard channel lives on
        handlers = [Inbox() for _ in range(3)]
        model: set[int] = set()
        for _ in range(5):  # bursts: replies to one burst land while the next is sent
            calls: list[Awaitable[None]] = []
            for _ in range(rnd.randrange(1, 16)):
                i = rnd.randrange(len(handlers))
                if rnd.random() < 0.5:
                    model.add(i)
                    calls.append(ps.subscribe(channel, handlers[i]))
                else:
                    model.discard(i)
                    calls.append(ps.unsubscribe(channel, handlers[i]))
            await asyncio.gather(*calls)
            if backend.servers:
                assert await numsub(backend.servers, channel) == (1 if model else 0)
        await publisher.publish(channel, b"m")
        await publisher.publish(witness_channel, b"w")
        await witness.wait(1)
        got = {i for i, h in enumerate(handlers) if h.got}
        assert got == model
        assert all(h.payloads() == [b"m"] for h in handlers if h.got)

    backend.run(body)


def test_subscribe_many_and_unsubscribe_many_act_on_every_channel(
    backend: Backend, prefix: str
) -> None:
    channels = [f"{prefix}{i}" for i in range(40)]

    async def body(open_: Callable[[], PubSub]) -> None:
        ps, publisher = open_(), open_()
        inbox, earlier = Inbox(), Inbox()
        await ps.subscribe(channels[0], earlier)  # a channel another handler already holds
        await ps.subscribe_many([*channels, channels[3]], inbox)  # duplicates are harmless
        for channel in channels:  # in force on return: nothing published now is missed
            await publisher.publish(channel, channel.encode())
        await inbox.wait(len(channels))
        assert sorted(inbox.got) == sorted((c, c.encode()) for c in channels)
        await ps.unsubscribe_many(channels[:30], inbox)
        if backend.servers:
            assert await numsub(backend.servers, channels[1]) == 0
            assert await numsub(backend.servers, channels[0]) == 1  # `earlier` still holds it
            assert await numsub(backend.servers, channels[35]) == 1
        for channel in channels:
            await publisher.publish(channel, b"after")
        await earlier.wait(2)
        await inbox.wait(len(channels) + 10)
        assert [c for c, p in inbox.got if p == b"after"] == channels[30:]
        assert ps.stats()["channels"] == 11  # channels[0] for `earlier`, the last ten
        await ps.unsubscribe_many(channels, inbox)
        await ps.unsubscribe_many(channels, inbox)  # again: a no-op
        assert ps.stats()["channels"] == 1

    backend.run(body)


def test_closed_pubsub_refuses_use(backend: Backend, prefix: str) -> None:
    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        await ps.subscribe(prefix + "c", Inbox())
        await ps.close()
        await ps.close()  # idempotent
        with pytest.raises(RuntimeError):
            await ps.publish(prefix + "c", b"x")
        with pytest.raises(RuntimeError):
            await ps.subscribe(prefix + "c", Inbox())

    backend.run(body)


def test_payload_must_be_bytes(backend: Backend, prefix: str) -> None:
    async def body(open_: Callable[[], PubSub]) -> None:
        ps = open_()
        with pytest.raises(TypeError):
            await ps.publish(prefix + "c", "text")  # type: ignore[arg-type]

    backend.run(body)


# -- RedisPubSub ------------------------------------------------------------------------------


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await body()

    asyncio.run(main())


@pytest.mark.redis
def test_redis_one_connection_carries_every_subscription(redis_url: str, prefix: str) -> None:
    name = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        ps = RedisPubSub(redis_url, client_name=name)
        try:
            for i in range(50):
                await ps.subscribe(f"{prefix}{i}", Inbox())
            with sync_client(redis_url) as client:
                ours = [c for c in client.client_list() if c.get("name") == name]
            assert len(ours) == 1
            assert int(ours[0]["sub"]) == 50
        finally:
            await ps.close()

    run(body)


@pytest.mark.redis
def test_redis_subscription_is_confirmed_when_subscribe_returns(
    redis_url: str, prefix: str
) -> None:
    """A PUBLISH sent by anyone right after subscribe returns is not missed."""

    async def body() -> None:
        ps = RedisPubSub(redis_url)
        try:
            with sync_client(redis_url) as client:
                for i in range(20):
                    await ps.subscribe(f"{prefix}{i}", Inbox())
                    assert client.publish(f"{prefix}{i}", b"x") == 1
        finally:
            await ps.close()

    run(body)


@pytest.mark.redis
def test_redis_reconnects_and_resubscribes_after_the_connection_is_killed(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    one, two, three = prefix + "one", prefix + "two", prefix + "three"

    async def body() -> None:
        ps = RedisPubSub(own_redis.url)
        try:
            inbox_one, inbox_two, inbox_three = Inbox(), Inbox(), Inbox()
            await ps.subscribe(one, inbox_one)
            await ps.subscribe(two, inbox_two)
            with sync_client(own_redis.url) as client:  # blocks the loop: nobody noticed yet
                assert client.client_kill_filter(_type="pubsub") == 1
            # Sent on the dead connection, never confirmed there: must not be forgotten.
            await ps.subscribe(three, inbox_three)
            # Messages published while the connection is down are lost (Redis pub/sub is
            # at-most-once), so keep publishing until the re-subscription is in place.
            for inbox, channel in ((inbox_one, one), (inbox_two, two), (inbox_three, three)):

                async def delivered(inbox: Inbox = inbox, channel: str = channel) -> bool:
                    await ps.publish(channel, b"after")
                    await asyncio.sleep(0.01)
                    return b"after" in inbox.payloads()

                loop = asyncio.get_running_loop()
                end = loop.time() + ARRIVAL
                while not await delivered():
                    assert loop.time() < end, "no delivery after reconnect"
            assert await numsub([own_redis.url], one) == 1
            assert ps.stats()["reconnects"] >= 1
        finally:
            await ps.close()

    with caplog.at_level(logging.INFO, logger="scalelab.storage.pubsub"):
        run(body)
    messages = [r.getMessage() for r in caplog.records]
    assert any("connection down" in m for m in messages)
    assert any("re-subscribed 3 channels" in m for m in messages)


@pytest.mark.redis
def test_redis_silent_connection_is_found_by_ping_and_replaced(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that stops answering (here CLIENT PAUSE; in life a half-open TCP connection)
    sends no error: only the health check's unanswered PING reveals it."""
    channel = prefix + "c"

    async def body() -> None:
        ps = RedisPubSub(own_redis.url, health_check_interval=0.05)
        try:
            inbox = Inbox()
            await ps.subscribe(channel, inbox)
            with sync_client(own_redis.url) as client:
                client.execute_command("CLIENT", "PAUSE", 1000, "ALL")
            await until(lambda: ps.stats()["reconnects"] >= 1, "a reconnect")
            assert await ps.publish(channel, b"after") == 1
            await inbox.wait(1)
        finally:
            await ps.close()

    with caplog.at_level(logging.WARNING, logger="scalelab.storage.pubsub"):
        run(body)
    assert any("no reply to PING" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_redis_refused_channel_fails_alone(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL that denies one channel fails that subscribe; the others keep flowing on the
    same connection (no reconnect, nothing re-subscribed)."""
    with sync_client(own_redis.url) as client:
        client.execute_command(
            "ACL", "SETUSER", "limited", "on", "nopass", "~*", "+@all", "resetchannels", "&ok:*"
        )
    url = f"redis://limited:x@127.0.0.1:{own_redis.port}/0"

    async def body() -> None:
        ps = RedisPubSub(url, timeout=0.5)
        try:
            inbox = Inbox()
            await ps.subscribe("ok:1", inbox)
            with pytest.raises(TimeoutError):
                await ps.subscribe(prefix + "denied", Inbox())
            await ps.subscribe("ok:2", inbox)
            await ps.publish("ok:1", b"1")
            await ps.publish("ok:2", b"2")
            await inbox.wait(2)
            assert ps.stats()["reconnects"] == 0
            assert ps.stats()["channels"] == 2
        finally:
            await ps.close()

    with caplog.at_level(logging.ERROR, logger="scalelab.storage.pubsub"):
        run(body)
    assert any("no permissions" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_redis_subscribe_during_an_outage_completes_after_restart(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis restarted (every subscription gone server-side): subscribes made meanwhile wait,
    and afterwards old and new channels all deliver."""
    old, new = prefix + "old", prefix + "new"

    async def body() -> None:
        ps = RedisPubSub(own_redis.url, timeout=20)
        try:
            inbox_old, inbox_new = Inbox(), Inbox()
            await ps.subscribe(old, inbox_old)
            await asyncio.to_thread(own_redis.stop)
            pending = asyncio.create_task(ps.subscribe(new, inbox_new))
            await asyncio.to_thread(own_redis.restart)
            await pending
            await until(lambda: ps.stats()["reconnects"] >= 1, "a reconnect")
            assert await ps.publish(old, b"o") == 1
            assert await ps.publish(new, b"n") == 1
            await inbox_old.wait(1)
            await inbox_new.wait(1)
        finally:
            await ps.close()

    with caplog.at_level(logging.WARNING, logger="scalelab.storage.pubsub"):
        run(body)


def test_redis_unreachable_subscribe_times_out_and_leaves_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nobody listens there

    async def body() -> None:
        ps = RedisPubSub(url, timeout=0.2)
        try:
            with pytest.raises(TimeoutError):
                await ps.subscribe(prefix + "c", Inbox())
            assert ps.stats()["channels"] == 0
            with pytest.raises(redis.ConnectionError):
                await ps.publish(prefix + "c", b"x")
        finally:
            await ps.close()

    with caplog.at_level(logging.CRITICAL, logger="scalelab.storage.pubsub"):
        run(body)


@pytest.mark.redis
def test_redis_subscribe_many_is_a_few_commands_and_confirmed_on_return(
    own_redis: RedisServer, prefix: str
) -> None:
    """2,500 channels: three SUBSCRIBE commands (1,000 channels each at most), one wait."""
    channels = [f"{prefix}{i}" for i in range(2500)]

    def subscribes(client: Any) -> int:
        return int(client.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0))

    async def body() -> None:
        ps = RedisPubSub(own_redis.url)
        try:
            await ps.subscribe(prefix + "warm", Inbox())  # the connection is up
            with sync_client(own_redis.url) as client:
                before = subscribes(client)
                await ps.subscribe_many(channels, Inbox())
                assert subscribes(client) - before == 3
                for channel in channels[::97]:
                    assert client.publish(channel, b"x") == 1
                await ps.unsubscribe_many(channels, Inbox())  # another handler: nothing
                assert client.pubsub_numsub(channels[0])[0][1] == 1
        finally:
            await ps.close()

    run(body)


def test_redis_unreachable_subscribe_many_times_out_and_leaves_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nobody listens there

    async def body() -> None:
        ps = RedisPubSub(url, timeout=0.2)
        try:
            with pytest.raises(TimeoutError, match="3 channel"):
                await ps.subscribe_many([prefix + "a", prefix + "b", prefix + "c"], Inbox())
            assert ps.stats()["channels"] == 0
        finally:
            await ps.close()

    with caplog.at_level(logging.CRITICAL, logger="scalelab.storage.pubsub"):
        run(body)


# -- ShardedPubSub ----------------------------------------------------------------------------


@pytest.mark.redis
def test_sharded_channels_live_on_their_ring_node(redis_servers: list[str], prefix: str) -> None:
    channels = [f"{prefix}{i}" for i in range(60)]

    async def body() -> None:
        ring = HashRing(redis_servers)
        ps = ShardedPubSub(ring, {u: RedisPubSub(u) for u in redis_servers})
        try:
            for channel in channels:
                await ps.subscribe(channel, Inbox())
            used = 0
            for url in redis_servers:
                with sync_client(url) as client:
                    held = {c.decode() for c in client.pubsub_channels(prefix + "*")}
                assert held == {c for c in channels if ring.node_for(c) == url}
                used += bool(held)
            assert used >= 2
        finally:
            await ps.close()

    run(body)


@pytest.mark.redis
def test_sharded_publisher_and_subscriber_in_different_instances_meet(
    redis_servers: list[str], prefix: str
) -> None:
    channels = [f"{prefix}{i}" for i in range(30)]

    async def body() -> None:
        # Two processes, each with its own ring from the same config (listed in other orders).
        pub = ShardedPubSub(HashRing(redis_servers), {u: RedisPubSub(u) for u in redis_servers})
        backwards = redis_servers[::-1]
        sub = ShardedPubSub(HashRing(backwards), {u: RedisPubSub(u) for u in backwards})
        try:
            inbox = Inbox()
            for channel in channels:
                await sub.subscribe(channel, inbox)
            for channel in channels:
                assert await pub.publish(channel, channel.encode()) == 1
            await inbox.wait(len(channels))
            assert sorted(inbox.got) == sorted((c, c.encode()) for c in channels)
        finally:
            await pub.close()
            await sub.close()

    run(body)


def test_sharded_unsubscribe_reaches_the_shard_subscribed_on_after_a_ring_change() -> None:
    shards = {n: MemoryPubSub() for n in ["a", "b", "c"]}
    ring = HashRing(["a", "b"])
    ps = ShardedPubSub(ring, shards)
    channels = [f"loc:{i}" for i in range(100)]
    inbox = Inbox()

    async def body() -> None:
        for channel in channels:
            await ps.subscribe(channel, inbox)
        ring.add("c")
        moved = [c for c in channels if ring.node_for(c) == "c"]
        assert moved  # the test means something
        for channel in channels:
            await ps.unsubscribe(channel, inbox)
        assert [s.stats()["channels"] for s in shards.values()] == [0, 0, 0]
        await ps.close()

    run(body)


class _RefusingShard(MemoryPubSub):
    """A shard whose subscriptions fail (say its Redis is down)."""

    async def subscribe_many(self, channels: Any, handler: Any) -> None:
        raise TimeoutError("shard down")


def test_sharded_subscribe_many_is_all_or_nothing_across_shards() -> None:
    shards: dict[str, PubSub] = {"a": MemoryPubSub(), "b": _RefusingShard()}
    ps = ShardedPubSub(HashRing(["a", "b"]), shards)
    channels = [f"loc:{i}" for i in range(50)]
    inbox, kept = Inbox(), Inbox()

    async def body() -> None:
        on_a = next(c for c in channels if HashRing(["a", "b"]).node_for(c) == "a")
        await shards["a"].subscribe(on_a, kept)
        await ps.subscribe_many([on_a], kept)  # placed before: the failure must not undo it
        with pytest.raises(TimeoutError, match="shard down"):
            await ps.subscribe_many(channels, inbox)
        # Nothing of the failed call stays subscribed, on the shard that took its part too.
        assert await shards["a"].publish(on_a, b"x") == 1  # `kept` only
        assert shards["a"].stats()["channels"] == 1
        assert all(key[1] is not inbox for key in ps._placed)
        await ps.close()

    run(body)


def test_sharded_needs_a_shard_for_every_ring_node() -> None:
    with pytest.raises(ValueError):
        ShardedPubSub(HashRing(["a", "b"]), {"a": MemoryPubSub()})


# -- open_pubsub ------------------------------------------------------------------------------


def test_open_pubsub_picks_the_backend_from_config() -> None:
    async def body() -> None:
        opened = [
            open_pubsub(None),
            open_pubsub("memory://"),
            open_pubsub(None, []),  # an empty ring is no ring
            open_pubsub("redis://127.0.0.1:6379/0"),
            open_pubsub("memory://", ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]),
        ]
        try:
            kinds = [type(ps) for ps in opened]
            assert kinds == [MemoryPubSub, MemoryPubSub, MemoryPubSub, RedisPubSub, ShardedPubSub]
            sharded = opened[-1]
            assert isinstance(sharded, ShardedPubSub)
            assert isinstance(sharded.shard_for("loc:1"), RedisPubSub)
            assert sharded.stats()["shards"] == 2
        finally:
            for ps in opened:
                await ps.close()  # none of them connected: nothing was subscribed

    run(body)


def test_open_pubsub_refuses_unknown_schemes_without_leaking_secrets() -> None:
    with pytest.raises(ValueError, match="'amqp'") as info:
        open_pubsub("amqp://user:s3cret@host/")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="Redis URLs") as info:
        open_pubsub(None, ["redis://10.0.0.1:6379", "http://user:s3cret@host/"])
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError) as info:
        open_pubsub(None, ["redis://:s3cret@10.0.0.1:6379"] * 2)
    assert "s3cret" not in str(info.value)
    with pytest.raises(TypeError):
        open_pubsub(None, "redis://10.0.0.1:6379,redis://10.0.0.2:6379")
