"""Publish/subscribe: in-process by default, Redis PUBLISH/SUBSCRIBE by URL, or channels sharded
over several Redis servers by consistent hashing (the book's Redis pub/sub cluster).

Why one interface: the nearby friends WebSocket server fans each location update out to the
friends' sockets. A laptop needs no extra servers (`MemoryPubSub`); server processes sharing
Redis (`RedisPubSub`) let a user on server A see a friend on server B; `ShardedPubSub` spreads
channels over many Redis servers, each on the node a `HashRing` picks, so every process agrees
where a channel lives without talking.

Handlers `(channel, payload)` run on the event loop and must not block. One that raises is
logged and the others still run. Payloads are bytes, delivered unchanged. Handlers per channel
are a set: subscribing twice delivers once; unsubscribing an unknown handler is a no-op.

`RedisPubSub`: one connection per process carries every SUBSCRIBE (Redis pays per connection),
a reader task dispatches by channel, PUBLISH uses a separate bounded pool. Reference counting:
the first local handler of a channel sends SUBSCRIBE, the last one's removal UNSUBSCRIBE.
`subscribe` returns once Redis confirmed, so no later publish is missed. A dropped connection
(or one that stops answering PING) is replaced and everything re-subscribed, and logged.
Publish errors (Redis down) propagate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from urllib.parse import urlsplit

from scalelab.storage.autopipeline import AutoPipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

__all__ = [
    "Handler",
    "HashRing",
    "MemoryPubSub",
    "PubSub",
    "RedisPubSub",
    "Ring",
    "ShardedPubSub",
    "open_pubsub",
]

log = logging.getLogger("scalelab.storage.pubsub")

T = TypeVar("T")

Handler = Callable[[str, bytes], None]
"""(channel, payload); called on the event loop, must not block."""

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
_SUBSCRIBE_BATCH = 1000  # channels per SUBSCRIBE when re-subscribing: bounded command size
_RECONNECT_MIN = 0.05  # seconds; doubled per failed attempt up to _RECONNECT_MAX
_RECONNECT_MAX = 2.0


class PubSub(Protocol):
    """What a pub/sub backend offers to asyncio code (one event loop per instance)."""

    async def publish(self, channel: str, payload: bytes) -> int:
        """Send payload to channel's subscribers; returns how many got it where knowable
        (in-process: handlers called; Redis: PUBLISH's count of subscribed connections).
        Zero subscribers is not an error."""
        ...

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Call handler for every later message on channel; returns once that is in force."""
        ...

    async def subscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        """subscribe() for each channel, in one go: a socket joining with 400 friends' channels
        costs one SUBSCRIBE command and one wait on Redis, not 400 of each."""
        ...

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        """Stop calling handler for channel; it is not called again once this returns."""
        ...

    async def unsubscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        """unsubscribe() for each channel, in one go."""
        ...

    async def close(self) -> None:
        """Drop every subscription and connection; idempotent."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for metrics: published, delivered (handler calls), channels (subscribed)."""
        ...


def _check_payload(payload: bytes) -> None:
    # Both backends take exactly bytes, so code tested on one cannot fail on the other.
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")


def _dispatch(channel: str, payload: bytes, handlers: Iterable[Handler]) -> int:
    """Call each handler in turn; a failing one is logged, never stops the rest."""
    called = 0
    for handler in handlers:
        called += 1
        try:
            handler(channel, payload)
        except Exception:
            log.exception("pub/sub handler %r failed on channel %r", handler, channel)
    return called


class MemoryPubSub:
    """In-process pub/sub: a dict channel -> handlers; publish calls them directly, in the order
    they subscribed. The cheapest fan-out there is, and exact about who got a message."""

    def __init__(self) -> None:
        # Dicts as ordered sets: delivery order is subscription order, every run.
        self._channels: dict[str, dict[Handler, None]] = {}
        self._published = 0
        self._delivered = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("MemoryPubSub is closed")

    async def publish(self, channel: str, payload: bytes) -> int:
        self._check_open()
        _check_payload(payload)
        self._published += 1
        handlers = self._channels.get(channel)
        if not handlers:
            return 0
        # A snapshot: a handler may schedule (un)subscribes that land while we iterate.
        called = _dispatch(channel, payload, list(handlers))
        self._delivered += called
        return called

    async def subscribe(self, channel: str, handler: Handler) -> None:
        await self.subscribe_many((channel,), handler)

    async def subscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        self._check_open()
        for channel in channels:
            self._channels.setdefault(channel, {})[handler] = None

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        await self.unsubscribe_many((channel,), handler)

    async def unsubscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        for channel in channels:
            handlers = self._channels.get(channel)
            if handlers is None:
                continue
            handlers.pop(handler, None)
            if not handlers:
                del self._channels[channel]

    async def close(self) -> None:
        self._closed = True
        self._channels.clear()

    def stats(self) -> dict[str, int]:
        return {
            "published": self._published,
            "delivered": self._delivered,
            "channels": len(self._channels),
        }


@dataclass(eq=False)
class _Countdown:
    """One (un)subscribe_many call waiting for Redis to answer about `remaining` channels:
    one future per call, ticked by each channel's reply, not one per channel."""

    remaining: int
    fut: asyncio.Future[None]

    def tick(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self.fut.done():
            self.fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


@dataclass(eq=False)
class _Channel:
    """One channel's local state in RedisPubSub."""

    handlers: dict[Handler, None] = field(default_factory=dict)
    # SUBSCRIBE replies still expected on the current connection.
    pending: int = 0
    # Redis confirmed the subscription on the current connection (and it is still wanted).
    live: bool = False
    # subscribe calls waiting for confirmation (ticked when pending reaches 0).
    waiters: list[_Countdown] = field(default_factory=list)
    # One per UNSUBSCRIBE sent; Redis replies in order, so each reply ticks the oldest.
    unsub_waiters: deque[_Countdown] = field(default_factory=deque)

    def idle(self) -> bool:
        return not (self.handlers or self.pending or self.waiters or self.unsub_waiters)

    def release_waiters(self) -> None:
        for waiter in self.waiters:
            waiter.tick()
        self.waiters.clear()


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    """Slices of _SUBSCRIBE_BATCH channels: one command's size stays bounded."""
    return (items[i : i + _SUBSCRIBE_BATCH] for i in range(0, len(items), _SUBSCRIBE_BATCH))


class RedisPubSub:
    """Pub/sub over Redis: one subscription connection per process, a bounded PUBLISH pool.

    Commands on the subscription connection are sent under one FIFO lock, taken right after the
    local state changed, so SUBSCRIBE/UNSUBSCRIBE reach Redis in the order the refcounts moved
    and a channel can never end up unsubscribed on Redis while a local handler wants it.
    redis-py is imported here, not at module level, so the package works without it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        health_check_interval: float = 30.0,
        publish_connections: int = 16,
        client_name: str = "scalelab-pubsub",
    ) -> None:
        """timeout bounds connecting, each command, and how long subscribe waits for Redis to
        confirm (it then raises TimeoutError, leaving no subscription behind).
        health_check_interval: after this long without traffic the subscription connection is
        PINGed; no reply within another interval means it is dead and gets replaced.
        client_name shows in CLIENT LIST, so operators (and tests) can find the connection."""
        if not (timeout > 0 and health_check_interval > 0 and publish_connections >= 1):
            raise ValueError("timeout, health_check_interval and publish_connections must be > 0")
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.connection import Connection, parse_url
            from redis.exceptions import ResponseError
        except ImportError as exc:
            raise RuntimeError("RedisPubSub needs redis-py: pip install 'scalelab[redis]'") from exc
        parts = urlsplit(url)
        # For logs: never the whole URL, it may carry a password.
        self._where = f"{parts.hostname or parts.path}:{parts.port or 6379}"
        self._timeout = timeout
        self._health = health_check_interval
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=publish_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._publisher: Redis = Redis.from_pool(pool)
        # PUBLISHes of concurrent callers share pipelines: one round trip for many updates.
        self._pipeline = AutoPipeline(self._publisher)
        # The subscription connection is built by hand: RESP2 (messages arrive as plain replies,
        # whatever protocol the URL asks for) and no pool, since we own its whole life.
        kwargs: dict[str, Any] = dict(parse_url(url))
        for pool_only in ("max_connections", "protocol", "timeout"):
            kwargs.pop(pool_only, None)
        self._conn_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        self._conn_kwargs = {
            **kwargs,
            "protocol": 2,
            "decode_responses": False,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "client_name": client_name,
        }
        self._response_error = ResponseError
        self._chans: dict[str, _Channel] = {}
        self._conn: AbstractConnection | None = None  # set while connected and subscribed
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._reconnects = 0

    # -- public API ---------------------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes) -> int:
        self._check_open()
        _check_payload(payload)
        count = await self._pipeline.execute("PUBLISH", channel, payload)
        self._published += 1
        return int(count)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        await self.subscribe_many((channel,), handler)

    async def subscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        self._check_open()
        self._ensure_reader()
        names = list(dict.fromkeys(channels))
        added: list[str] = []  # the handler is new here: what a timeout undoes
        first: list[tuple[str, _Channel]] = []  # no local handler before: Redis must SUBSCRIBE
        for name in names:
            chan = self._chans.get(name)
            if chan is None:
                chan = self._chans[name] = _Channel()
            if not chan.handlers:
                first.append((name, chan))
            if handler not in chan.handlers:
                added.append(name)
                chan.handlers[handler] = None
        if first:
            async with self._send_lock:
                for part in _chunks(first):
                    chans = [chan for _, chan in part]
                    await self._send_on_current(chans, "SUBSCRIBE", *(name for name, _ in part))
        waiting = [
            chan
            for name in names
            if (chan := self._chans.get(name)) is not None  # None: unsubscribed meanwhile
            and chan.handlers
            and not (chan.live and chan.pending == 0)
        ]
        if not waiting:
            return  # all confirmed on the current connection already
        countdown = _Countdown(len(waiting), asyncio.get_running_loop().create_future())
        for chan in waiting:
            chan.waiters.append(countdown)
        try:
            async with asyncio.timeout(self._timeout):
                await countdown.fut
        except TimeoutError:
            for chan in waiting:
                if countdown in chan.waiters:
                    chan.waiters.remove(countdown)
            if added:  # undo only our own part: earlier subscribes of handler stand
                await self.unsubscribe_many(added, handler)
            raise TimeoutError(
                f"Redis at {self._where} did not confirm SUBSCRIBE of {len(waiting)} "
                f"channel(s) (e.g. {names[0]!r}) within {self._timeout}s"
            ) from None

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        await self.unsubscribe_many((channel,), handler)

    async def unsubscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        gone: list[tuple[str, _Channel]] = []
        for name in dict.fromkeys(channels):
            chan = self._chans.get(name)
            if chan is None or handler not in chan.handlers:
                continue
            del chan.handlers[handler]  # from here on the handler is never called again
            if chan.handlers:
                continue
            chan.live = False
            chan.release_waiters()  # their handlers are gone; nothing left to wait for
            gone.append((name, chan))
        if not gone:
            return
        countdown = _Countdown(len(gone), asyncio.get_running_loop().create_future())
        async with self._send_lock:
            if self._conn is None:
                countdown.fut.set_result(None)  # not connected: Redis holds none of ours
            else:
                for name, chan in gone:
                    # The reply is looked up by name: make sure it finds this countdown.
                    self._chans.setdefault(name, chan).unsub_waiters.append(countdown)
                for part in _chunks([name for name, _ in gone]):
                    await self._send_on_current((), "UNSUBSCRIBE", *part)
        try:
            # Wait for the replies so that PUBSUB NUMSUB agrees once we return. Not an error
            # if they are slow: a dead connection resolves it, a late reply is dropped unseen.
            async with asyncio.timeout(self._timeout):
                await countdown.fut
        except TimeoutError:
            log.warning(
                "pub/sub %s: no reply to UNSUBSCRIBE of %d channel(s) (e.g. %r)",
                self._where,
                len(gone),
                gone[0][0],
            )
        for name, _ in gone:
            self._prune(name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        while reader is not None and not reader.done():
            # redis-py sends through asyncio.wait_for, which on Python 3.11 can swallow a
            # cancellation that races with the send completing: cancel until it takes.
            reader.cancel()
            await asyncio.wait([reader], timeout=0.1)
        closed = RuntimeError("RedisPubSub closed")
        for chan in self._chans.values():
            for waiter in chan.waiters:
                waiter.fail(closed)
            for countdown in chan.unsub_waiters:
                countdown.tick()
        self._chans.clear()
        await self._pipeline.close()
        await self._publisher.aclose()

    def stats(self) -> dict[str, int]:
        return {
            "published": self._published,
            "delivered": self._delivered,
            "channels": sum(1 for c in self._chans.values() if c.handlers),
            "reconnects": self._reconnects,
        }

    # -- internals ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("RedisPubSub is closed")

    def _ensure_reader(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(
                self._run(), name=f"pubsub-reader {self._where}"
            )

    def _prune(self, channel: str) -> None:
        chan = self._chans.get(channel)
        if chan is not None and chan.idle():
            del self._chans[channel]

    async def _send_on_current(self, chans: Sequence[_Channel], *args: str) -> None:
        """Send a command on the live subscription connection, if any (caller holds the lock).

        Not connected: nothing to do, the reader subscribes every wanted channel on connect.
        A failed send is left to the reader, which sees the same dead socket, resets the
        counters and re-subscribes on a fresh connection."""
        conn = self._conn
        if conn is None or not conn.is_connected:
            return
        for chan in chans:
            chan.pending += 1
        try:
            # check_health=False: a health check would read a reply the reader task is owed.
            await conn.send_command(*args, check_health=False)
        except Exception as exc:
            log.debug("pub/sub %s: %s failed (%s); reader reconnects", self._where, args[0], exc)

    async def _run(self) -> None:
        """The reader task: connect, (re)subscribe, dispatch; on any failure, start over."""
        delay = _RECONNECT_MIN
        connected_before = False
        while not self._closed:
            conn = self._conn_class(**self._conn_kwargs)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py: untyped
                count = await self._subscribe_all(conn)
                if connected_before:
                    self._reconnects += 1
                    log.info(
                        "pub/sub %s: reconnected, re-subscribed %d channels", self._where, count
                    )
                connected_before = True
                delay = _RECONNECT_MIN
                await self._read(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "pub/sub %s: subscription connection down (%s: %s); reconnecting in %.2fs",
                    self._where,
                    type(exc).__name__,
                    exc,
                    delay,
                )
            finally:
                self._lost()
                with contextlib.suppress(Exception):  # already broken: nothing more to learn
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _subscribe_all(self, conn: AbstractConnection) -> int:
        """SUBSCRIBE every channel with a local handler; then the connection goes live."""
        async with self._send_lock:
            wanted = [name for name, chan in self._chans.items() if chan.handlers]
            for batch in _chunks(wanted):
                for name in batch:
                    self._chans[name].pending += 1
                await conn.send_command("SUBSCRIBE", *batch, check_health=False)
            self._conn = conn
        return len(wanted)

    def _lost(self) -> None:
        """The connection is gone, and with it every subscription and every reply owed."""
        self._conn = None
        for name in list(self._chans):
            chan = self._chans[name]
            chan.pending = 0
            chan.live = False
            while chan.unsub_waiters:
                chan.unsub_waiters.popleft().tick()
            self._prune(name)

    async def _read(self, conn: AbstractConnection) -> None:
        awaiting_pong = False
        while not self._closed:
            try:
                # A float timeout makes redis-py return None instead of failing; parsing resumes.
                reply = await conn.read_response(timeout=self._health)
            except self._response_error as exc:
                # One refused command (say an ACL denying a channel) is no reason to drop every
                # subscription: the subscribe waiting for it times out and undoes itself.
                log.error("pub/sub %s: Redis refused a command: %s", self._where, exc)
                continue
            if reply is None:
                if awaiting_pong:
                    raise ConnectionError(f"no reply to PING within {self._health}s")
                awaiting_pong = True
                async with self._send_lock:
                    await conn.send_command("PING", check_health=False)
                continue
            awaiting_pong = False
            self._on_reply(reply)

    def _on_reply(self, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG (["pong", ""] or +PONG): liveness only
        kind = reply[0]
        channel = cast(bytes, reply[1]).decode("utf-8", "replace")
        chan = self._chans.get(channel)
        if chan is None:
            return
        if kind == b"message":
            if chan.handlers:
                self._delivered += _dispatch(channel, cast(bytes, reply[2]), list(chan.handlers))
        elif kind == b"subscribe":
            if chan.pending:
                chan.pending -= 1
            if chan.pending == 0 and chan.handlers:
                chan.live = True
                chan.release_waiters()
        elif kind == b"unsubscribe":
            if chan.unsub_waiters:
                chan.unsub_waiters.popleft().tick()
        self._prune(channel)


def _point(key: str) -> int:
    """A stable 64-bit ring position (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class Ring(Protocol):
    """What ShardedPubSub needs of a ring: any process with the same nodes gives the same
    answer. HashRing is the one provided; a ring fed by service discovery fits too."""

    def node_for(self, key: str) -> str: ...

    @property
    def nodes(self) -> tuple[str, ...]: ...


class HashRing:
    """Consistent hashing: each node owns `vnodes` points on a 64-bit ring, a key belongs to the
    first point after its hash. Adding or removing one of n nodes moves only about 1/n of keys,
    all to or from that node, so resizing the pub/sub cluster disturbs few channels.

    Lives in storage (not in nearby_friends, which re-exports it) so that `open_pubsub` can
    build one from config without a shared module importing a system.
    """

    def __init__(self, nodes: Iterable[str], vnodes: int = 160) -> None:
        """nodes: e.g. the Redis URLs from config; the order they come in does not matter."""
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self._vnodes = vnodes
        self._nodes: dict[str, None] = {}
        self._points: list[int] = []
        self._owners: list[str] = []
        for node in nodes:
            self._check_new(node)
            self._nodes[node] = None
        self._rebuild()

    def _check_new(self, node: str) -> None:
        if not node:
            raise ValueError("a ring node needs a non-empty name")
        if node in self._nodes:  # not named: nodes are URLs that may carry a password
            raise ValueError("a node is already on the ring (listed twice?)")

    def _rebuild(self) -> None:
        # Ties (two nodes' points equal; 2**-64 odds) break by node name: still order-free.
        ring = sorted(
            (_point(f"{node}#{i}"), node) for node in self._nodes for i in range(self._vnodes)
        )
        self._points = [point for point, _ in ring]
        self._owners = [node for _, node in ring]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    def node_for(self, key: str) -> str:
        if not self._points:
            raise LookupError("the ring has no nodes")
        i = bisect_right(self._points, _point(key))
        return self._owners[i % len(self._owners)]

    def add(self, node: str) -> None:
        self._check_new(node)
        self._nodes[node] = None
        self._rebuild()

    def remove(self, node: str) -> None:
        if node not in self._nodes:
            raise KeyError(node)
        del self._nodes[node]
        self._rebuild()


class ShardedPubSub:
    """Channels spread over several pub/sub backends: each lives on ring.node_for(channel).

    Publishers and subscribers in different processes meet as long as their rings have the
    same nodes. A subscription stays on the node it was made on until unsubscribed, so
    unsubscribe reaches the right shard even if the ring changed in between."""

    def __init__(self, ring: Ring, shards: Mapping[str, PubSub]) -> None:
        missing = [node for node in ring.nodes if node not in shards]
        if missing:
            raise ValueError(f"ring nodes without a shard: {len(missing)} of {len(ring.nodes)}")
        self._ring = ring
        self._shards = dict(shards)
        self._placed: dict[tuple[str, Handler], str] = {}

    def shard_for(self, channel: str) -> PubSub:
        return self._shards[self._ring.node_for(channel)]

    async def publish(self, channel: str, payload: bytes) -> int:
        return await self.shard_for(channel).publish(channel, payload)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        await self.subscribe_many((channel,), handler)

    async def subscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        by_node: dict[str, list[str]] = {}
        new: set[str] = set()
        for channel in dict.fromkeys(channels):
            key = (channel, handler)
            node = self._placed.get(key)
            if node is None:
                # Recorded before the await, so an unsubscribe racing with us finds the shard.
                node = self._placed[key] = self._ring.node_for(channel)
                new.add(channel)
            by_node.setdefault(node, []).append(channel)
        nodes = list(by_node)
        results = await asyncio.gather(
            *(self._shards[node].subscribe_many(by_node[node], handler) for node in nodes),
            return_exceptions=True,
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            return
        # All or nothing: undo what this call added, on the shards that took it as well.
        for node, result in zip(nodes, results, strict=True):
            undo = [c for c in by_node[node] if c in new]
            for channel in undo:
                self._placed.pop((channel, handler), None)
            if not isinstance(result, BaseException):
                await self._shards[node].unsubscribe_many(undo, handler)
        raise failure

    async def unsubscribe(self, channel: str, handler: Handler) -> None:
        await self.unsubscribe_many((channel,), handler)

    async def unsubscribe_many(self, channels: Iterable[str], handler: Handler) -> None:
        by_node: dict[str, list[str]] = {}
        for channel in dict.fromkeys(channels):
            node = self._placed.pop((channel, handler), None) or self._ring.node_for(channel)
            by_node.setdefault(node, []).append(channel)
        parts = by_node.items()
        await asyncio.gather(*(self._shards[n].unsubscribe_many(cs, handler) for n, cs in parts))

    async def close(self) -> None:
        self._placed.clear()
        shards = self._shards.values()
        results = await asyncio.gather(*(s.close() for s in shards), return_exceptions=True)
        for result in results:  # every shard got closed; now report the first failure
            if isinstance(result, BaseException):
                raise result

    def stats(self) -> dict[str, int]:
        """Sums over the shards, plus how many shards there are."""
        total: dict[str, int] = {"published": 0, "delivered": 0, "channels": 0}
        for shard in self._shards.values():
            for name, value in shard.stats().items():
                total[name] = total.get(name, 0) + value
        total["shards"] = len(self._shards)
        return total


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def open_pubsub(url: str | None, ring_urls: Sequence[str] | None = None) -> PubSub:
    """The backend the settings name. ring_urls (non-empty): channels sharded over one
    RedisPubSub per URL by consistent hashing, overriding url. Otherwise url: None or
    memory:// (in-process), redis://, rediss:// or unix:// (one Redis)."""
    if isinstance(ring_urls, str):
        raise TypeError("ring_urls is a sequence of URLs, not one comma-separated string")
    if ring_urls:
        bad = {_scheme(u) for u in ring_urls} - _REDIS_SCHEMES
        if bad:
            raise ValueError(f"pub/sub ring nodes must be Redis URLs, got schemes {sorted(bad)}")
        ring = HashRing(ring_urls)
        return ShardedPubSub(ring, {node: RedisPubSub(node) for node in ring.nodes})
    if url is None:
        return MemoryPubSub()
    scheme = _scheme(url)
    if scheme == "memory":
        return MemoryPubSub()
    if scheme in _REDIS_SCHEMES:
        return RedisPubSub(url)
    # Name the scheme, not the URL: a Redis URL may carry a password.
    raise ValueError(
        f"unsupported pub/sub URL scheme {scheme!r}: use memory://, redis://, rediss:// or unix://"
    )
