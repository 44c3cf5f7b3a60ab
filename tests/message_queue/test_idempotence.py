"""An idempotent producer's retry after a lost response is not written twice: a proxy between
the real client and the broker swallows the first Produce response and drops the connection,
the client retries the same batch on a new connection, and the log holds every record once."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from scalelab.message_queue import batch as b
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer

PRODUCE = 0


class LossyProxy:
    """Forwards Kafka connections to the broker; the first Produce response it sees is
    dropped along with the connection (the broker has appended: only the answer is lost)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()  # the broker is gone: so is this connection
                continue
            produce_ids: set[int] = set()
            threading.Thread(target=self._pump, args=(client, upstream, produce_ids, True),
                             daemon=True).start()  # fmt: skip
            threading.Thread(target=self._pump, args=(upstream, client, produce_ids, False),
                             daemon=True).start()  # fmt: skip

    def _pump(self, src: socket.socket, dst: socket.socket, ids: set[int], requests: bool) -> None:
        buf = b""
        try:
            while chunk := src.recv(65536):
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">i", buf[:4])[0]:
                    size = struct.unpack(">i", buf[:4])[0]
                    frame, buf = buf[: 4 + size], buf[4 + size :]
                    if requests:
                        key, _, correlation = struct.unpack(">hhi", frame[4:12])
                        if key == PRODUCE:
                            ids.add(correlation)
                    elif struct.unpack(">i", frame[4:8])[0] in ids:
                        with self._lock:
                            drop = self.dropped == 0
                            self.dropped += drop
                        if drop:
                            raise ConnectionResetError("response lost on purpose")
                    dst.sendall(frame)
        except OSError:
            pass  # either side went away: the other is shut below
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        self.listener.close()


@pytest.fixture
def proxy(broker: RunningBroker) -> Iterator[LossyProxy]:
    p = LossyProxy(broker.server.port)
    broker.server.broker.port = p.port  # Metadata sends clients through the proxy too
    yield p
    p.close()


def records_in(broker: RunningBroker, topic: str) -> list[int]:
    part = broker.server.broker.topics.partition(topic, 0)
    data = part.read(0, 1 << 24)
    return [h.record_count for h, _ in b.split(data)]


def test_kafka_python_retry_after_a_lost_response(broker: RunningBroker, proxy: LossyProxy) -> None:
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{proxy.port}", acks="all",
                             enable_idempotence=True, request_timeout_ms=5000,
                             retry_backoff_ms=50)  # fmt: skip
    futures = [producer.send("lost", value=b"v%d" % i) for i in range(10)]
    producer.flush(30)
    offsets = sorted(f.get(timeout=30).offset for f in futures)
    producer.close()
    assert proxy.dropped == 1
    assert offsets == list(range(10))
    assert sum(records_in(broker, "lost")) == 10  # the retried batch was not appended again


def test_confluent_kafka_retry_after_a_lost_response(
    broker: RunningBroker, proxy: LossyProxy
) -> None:
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{proxy.port}", "acks": "all",
                         "enable.idempotence": True, "linger.ms": 20})  # fmt: skip
    reports: list[tuple[object, int]] = []

    def delivered(err: object, msg: Any) -> None:
        reports.append((err, msg.offset()))

    for i in range(10):
        producer.produce("lost2", value=b"v%d" % i, on_delivery=delivered)
    deadline = time.monotonic() + 30
    while len(reports) < 10 and time.monotonic() < deadline:
        producer.poll(0.1)
    assert proxy.dropped == 1
    assert [err for err, _ in reports] == [None] * 10
    assert sorted(offset for _, offset in reports) == list(range(10))
    assert sum(records_in(broker, "lost2")) == 10
