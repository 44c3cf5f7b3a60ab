"""The broker's network side: one asyncio task per connection, requests answered in order.

Thin on purpose: bytes go through the codec, decoded requests through the broker. A client
that sends bytes that are not Kafka, or a request the broker cannot answer, loses its own
connection; every other connection carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI

from scalelab import web
from scalelab.message_queue import codec
from scalelab.message_queue.broker import Broker
from scalelab.message_queue.cleaner import LogCleaner
from scalelab.message_queue.metrics import BrokerCollector
from scalelab.message_queue.settings import MessageQueueSettings
from scalelab.storage.lock import ExclusiveUse
from scalelab.systems import Announce

log = logging.getLogger(__name__)

SETTINGS = MessageQueueSettings
RETENTION_CHECK_SECONDS = 300.0
READ_CHUNK = 1 << 20  # big produce requests arrive in few reads, with few copies
MAX_IN_FLIGHT = 64  # requests read ahead of their answers on one connection
SEND_TIMEOUT_SECONDS = 30.0  # for answers still owed when a client stops sending


class DataDirInUse(RuntimeError):
    pass


class BrokerServer:
    """A listening broker; `start` binds (port 0 picks one), `stop` closes everything."""

    def __init__(self, settings: MessageQueueSettings) -> None:
        self.settings = settings
        self._lock = ExclusiveUse(settings.data_dir, "message_queue.lock")
        try:
            self._lock.__enter__()
        except BlockingIOError:
            raise DataDirInUse(f"{settings.data_dir} is in use by another broker") from None
        try:
            self.broker = Broker(settings, settings.data_dir)
        except BaseException:
            self._lock.__exit__()
            raise
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None
        self._cleaning: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.settings.host, self.settings.port, limit=READ_CHUNK * 4
        )
        self.broker.port = self.port  # what Metadata advertises
        self.broker.start()
        self.broker.delayed.start()
        self._housekeeping = asyncio.create_task(self._retention_loop())
        self._cleaning = asyncio.create_task(self._cleaner_loop())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        except asyncio.CancelledError:
            pass  # the broker is stopping: this connection ends here, quietly
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read requests and answer them in order. Produce requests are pipelined: each one
        appends as soon as it arrives (handlers append before their first await, and tasks
        start in the order they are created), and its wait for the fsync overlaps the next
        one's append, so a producer with several requests in flight shares fsyncs (flush.py).
        Any other request first waits until the handlers before it have finished, so it sees
        their effects, as with Kafka's one request at a time per connection."""
        frames = codec.FrameBuffer()
        peer = writer.get_extra_info("peername")
        answers: asyncio.Queue[asyncio.Task[bytes | None]] = asyncio.Queue(MAX_IN_FLIGHT)
        closing = asyncio.Event()
        sender = asyncio.create_task(self._send_in_order(answers, writer, closing))
        try:
            while not closing.is_set() and (data := await reader.read(READ_CHUNK)):
                for frame in frames.feed(data):
                    if closing.is_set():
                        break
                    if codec.api_key_of(frame) != codec.PRODUCE:
                        await answers.join()
                    await answers.put(asyncio.create_task(self._answer(frame, peer)))
        except codec.FrameError as exc:
            log.info("closing %s: %s", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            try:
                task = asyncio.current_task()
                if task is None or not task.cancelling():  # answered requests still go out
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(answers.join(), SEND_TIMEOUT_SECONDS)
            finally:
                queued: list[asyncio.Task[Any]] = [sender]  # its cancel reaches its answer
                while not answers.empty():
                    queued.append(answers.get_nowait())
                for t in queued:
                    t.cancel()
                await asyncio.gather(*queued, return_exceptions=True)

    @staticmethod
    async def _send_in_order(
        answers: asyncio.Queue[asyncio.Task[bytes | None]],
        writer: asyncio.StreamWriter,
        closing: asyncio.Event,
    ) -> None:
        """Write each answer when it is ready, in request order; after an answer that closes
        the connection, drop the rest."""
        while True:
            task = await answers.get()
            try:
                if closing.is_set():
                    task.cancel()
                    continue
                out = await task
                if out is None:
                    closing.set()
                    writer.transport.close()  # the reader sees the end and stops
                elif out:
                    writer.write(out)
                    await writer.drain()
            except (ConnectionError, OSError):
                closing.set()
                writer.transport.close()
            finally:
                answers.task_done()

    async def _answer(self, frame: bytes, peer: object) -> bytes | None:
        """The bytes to send for one frame (b"" for none), or None to close the connection."""
        req = codec.decode_request(frame)
        if req.error == codec.UNSUPPORTED_VERSION:
            log.info("%s: API %d v%d is not supported", peer, req.api_key, req.api_version)
            return codec.unsupported_version_response(req)
        if req.error:
            log.info("%s: undecodable API %d v%d request", peer, req.api_key, req.api_version)
            return None
        try:
            response = await self.broker.handle(req)
        except Exception:
            log.exception("%s: API %d v%d failed", peer, req.api_key, req.api_version)
            return None
        return b"" if response is None else codec.encode_response(req, response)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_CHECK_SECONDS)
            for _topic, _index, part in self.broker.topics.partitions():
                await asyncio.to_thread(part.enforce_retention)

    async def _cleaner_loop(self) -> None:
        """Compaction of `cleanup.policy=compact` topics (cleaner.py), one partition at a time
        in a worker thread, as Kafka's single cleaner thread does."""
        cleaner = LogCleaner()
        while True:
            await asyncio.sleep(self.settings.cleaner_interval_seconds)
            for topic, index, part in self.broker.topics.partitions():
                try:
                    await asyncio.to_thread(cleaner.run, part)
                except Exception:  # one partition's failure must not stop the others' cleaning
                    log.exception("log cleaner failed on %s-%d", topic, index)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in [*self._connections, self._housekeeping, self._cleaning]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.broker.delayed.stop()
        self.broker.close()
        self._lock.__exit__()


def create_admin_app(broker: Broker) -> FastAPI:
    """/healthz, and /metrics with every partition's offsets and every group's lag."""
    app = web.create_app("message_queue")
    app.state.metrics_registry.register(BrokerCollector(broker))
    return app


async def serve(settings: MessageQueueSettings, *, demo: bool, announce: Announce) -> None:
    """Run the broker until cancelled (the CLI's `serve message-queue`): the Kafka listener,
    and beside it an HTTP listener for health and metrics, whose URL is announced."""
    server = BrokerServer(settings)
    await server.start()
    admin = web.HTTPServer(create_admin_app(server.broker), settings.host, settings.http_port)
    announce(admin.url, {"kafka bootstrap": f"{settings.host}:{server.port}"})
    try:
        await admin.serve()
    finally:
        await server.stop()
