"""Load generator for bench/message_queue.py, one process per producer or consumer.

    python bench/_mq_load.py '<json spec>'

Kafka side: confluent-kafka (librdkafka), so the client is C, batches with linger.ms/batch.size
and sends with acks=all. NATS side: a minimal NATS protocol client on asyncio (PUB with a reply
subject, acks counted as they come back, thousands outstanding), because nats-py spends more
CPU per message than nats-server does and would measure itself.

Protocol with the parent: the child connects and prints `ready`, waits for a line on stdin,
runs, and prints one JSON line: counts, wall seconds between its own start and end, and the
CPU seconds of the whole process (getrusage: every librdkafka thread included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import struct
import sys
import threading
import time
import uuid
from typing import Any, cast

MiB = 1 << 20
STAMP = struct.Struct("<qq")  # sequence number, send time (perf_counter_ns)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def payloads(size: int, count: int = 1024) -> list[bytes]:
    """Distinct incompressible values (no codec can help anyone)."""
    block = os.urandom(MiB + size)
    step = MiB // count
    return [block[i * step : i * step + size] for i in range(count)]


def percentiles(values: list[float], points: tuple[float, ...] = (50, 99, 99.9)) -> dict[str, Any]:
    """Nearest-rank percentiles (ms in, ms out) plus count, mean and max."""
    if not values:
        return {"count": 0}
    data = sorted(values)
    out: dict[str, Any] = {"count": len(data)}
    for p in points:
        rank = max(1, -(-len(data) * p // 100))  # ceil(n * p / 100), at least 1
        out[f"p{p:g}_ms"] = round(data[int(rank) - 1], 3)
    out["mean_ms"] = round(sum(data) / len(data), 3)
    out["max_ms"] = round(data[-1], 3)
    return out


def handshake() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


# -- Kafka (confluent-kafka) ---------------------------------------------------------------------


def kafka_produce(spec: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka import KafkaException, Producer

    errors = 0

    def on_error(err: Any, _msg: Any) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    producer = Producer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "acks": "all",
            "linger.ms": spec["linger_ms"],
            "batch.size": spec["batch_size"],
            "compression.type": "none",
            "enable.idempotence": False,
            "queue.buffering.max.kbytes": 256 * 1024,
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": on_error,
            "message.timeout.ms": int(spec["timeout"] * 1000),
        }
    )
    producer.list_topics(spec["topic"], timeout=30)  # connected, metadata known
    values = payloads(spec["size"])
    mask = len(values) - 1
    topic, partition, n = spec["topic"], spec["partition"], spec["count"]
    produce, poll = producer.produce, producer.poll
    handshake()
    start, cpu0 = time.time(), cpu_seconds()
    for i in range(n):
        while True:
            try:
                produce(topic, values[i & mask], partition=partition)
                break
            except BufferError:
                poll(0.005)
        if not i & 0x3FF:
            poll(0)
    left = producer.flush(spec["timeout"])
    end = time.time()
    try:
        poll(0)
    except KafkaException:
        errors += 1
    return {
        "messages": n - left - errors,
        "bytes": (n - left - errors) * spec["size"],
        "undelivered": left,
        "errors": errors,
        "start": start,
        "end": end,
        "cpu_seconds": round(cpu_seconds() - cpu0, 3),
    }


def kafka_produce_batches(spec: dict[str, Any]) -> dict[str, Any]:
    """Batched produce with a client that costs next to nothing: one record batch of
    `batch_records` records is built once and sent again and again (producer id -1, so the
    broker assigns new offsets each time), acks=all, `in_flight` requests outstanding on one
    connection. What it measures is the broker and the disk, not a client's per-record work,
    which on a 2-core machine shared with the broker bounds librdkafka first."""
    import socket
    import struct
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka.protocol.producer import ProduceRequest, ProduceResponse
        from kafka.record.default_records import DefaultRecordBatchBuilder

    values = payloads(spec["size"])
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
    per_batch = spec["batch_records"]
    for i in range(per_batch):
        builder.append(i, timestamp=int(time.time() * 1000), key=None,
                       value=values[i % len(values)], headers=[])  # fmt: skip
    records = bytes(builder.build())
    version = 7
    req = ProduceRequest[version](
        transactional_id=None,
        acks=-1,
        timeout_ms=int(spec["timeout"] * 1000),
        topic_data=[
            ProduceRequest[version].TopicProduceData(
                name=spec["topic"],
                partition_data=[
                    ProduceRequest[version].TopicProduceData.PartitionProduceData(
                        index=spec["partition"], records=records
                    )
                ],
            )
        ],
    )
    req.with_header(correlation_id=1, client_id="bench-batches")
    frame = bytes(req.encode(header=True, framed=True))
    host, port = spec["bootstrap"].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=spec["timeout"])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = sock.makefile("rb")

    def answer() -> int:
        size = struct.unpack(">i", reader.read(4))[0]
        body = reader.read(size)
        resp = ProduceResponse[version].decode(body[4:])
        return int(resp.responses[0].partition_responses[0].error_code)

    batches = max(1, spec["count"] // per_batch)
    handshake()
    start, cpu0 = time.time(), cpu_seconds()
    sent = acked = errors = 0
    while sent < min(spec["in_flight"], batches):
        sock.sendall(frame)
        sent += 1
    while acked < batches:
        errors += answer() != 0
        acked += 1
        if sent < batches:
            sock.sendall(frame)
            sent += 1
    end = time.time()
    sock.close()
    good = (batches - errors) * per_batch
    return {
        "messages": good,
        "bytes": good * spec["size"],
        "errors": errors,
        "start": start,
        "end": end,
        "cpu_seconds": round(cpu_seconds() - cpu0, 3),
    }


def kafka_consume(spec: dict[str, Any]) -> dict[str, Any]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
            "fetch.max.bytes": 50 * MiB,
            "max.partition.fetch.bytes": 8 * MiB,
            "queued.max.messages.kbytes": 256 * 1024,
            # librdkafka 2.x postpones a partition's next fetch by this much once its local
            # queue holds queued.min.messages (100,000) records; at the default (1 s) a broker
            # that answers the full 8 MiB per partition (as Kafka does) stalls every consumer
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.list_topics(spec["topic"], timeout=30)  # connected before the clock starts
    consumer.assign([TopicPartition(spec["topic"], spec["partition"], OFFSET_BEGINNING)])
    handshake()
    want, got, nbytes, errors = spec["count"], 0, 0, 0
    start, cpu0 = time.time(), cpu_seconds()
    deadline = time.monotonic() + spec["timeout"]
    while got < want and time.monotonic() < deadline:
        # consume() waits for all it asks for or the timeout: never ask for more than is left
        for m in consumer.consume(min(10_000, want - got), 0.1):
            if m.error() is not None:
                errors += 1
            else:
                got += 1
                nbytes += len(m)
    end = time.time()
    cpu = cpu_seconds() - cpu0
    consumer.close()
    return {
        "messages": got,
        "bytes": nbytes,
        "expected": want,
        "errors": errors,
        "timed_out": got < want,
        "start": start,
        "end": end,
        "cpu_seconds": round(cpu, 3),
    }


def kafka_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """A paced producer and a consumer thread in one process, so one clock stamps and reads."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    topic, rate, n, size = spec["topic"], spec["rate"], spec["count"], spec["size"]
    latencies: list[float] = []
    done = threading.Event()
    consumer = Consumer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "group.id": f"bench-lat-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])

    def consume() -> None:
        deadline = time.monotonic() + spec["timeout"]
        while len(latencies) < n and time.monotonic() < deadline and not done.is_set():
            m = consumer.poll(0.1)  # returns as soon as one record is there
            now = time.perf_counter_ns()
            if m is not None and m.error() is None and (value := m.value()) is not None:
                latencies.append((now - STAMP.unpack_from(value)[1]) / 1e6)

    producer = Producer(
        {
            "bootstrap.servers": spec["bootstrap"],
            "acks": "all",
            "linger.ms": spec["linger_ms"],
            "enable.idempotence": False,
        }
    )
    producer.list_topics(topic, timeout=30)
    consumer.consume(1, 0.5)  # joins the fetch loop before the first message is sent
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    handshake()
    pad = b"\0" * (size - STAMP.size)
    start = time.perf_counter()
    for i in range(n):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        producer.produce(topic, STAMP.pack(i, time.perf_counter_ns()) + pad, partition=0)
        producer.poll(0)
    left = producer.flush(30)
    reader.join(spec["timeout"])
    done.set()
    consumer.close()
    skip = min(spec["warmup"], len(latencies) // 10)
    return {
        "sent": n - left,
        "received": len(latencies),
        "rate_per_s": rate,
        "warmup_discarded": skip,
        **percentiles(latencies[skip:]),
    }


# -- NATS (raw protocol) -------------------------------------------------------------------------


class NatsConn(asyncio.Protocol):
    """Just enough of the NATS client protocol: CONNECT, PUB, SUB, PING/PONG, MSG/HMSG."""

    def __init__(self, on_msg: Any) -> None:
        self.buf = bytearray()
        self.on_msg = on_msg  # (subject, reply, payload, has_headers) -> None
        self.transport: asyncio.Transport | None = None
        self.pong: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        opts = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python-bench",
            "version": "0",
        }
        self.transport.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def ping(self) -> None:
        self.pong = asyncio.get_running_loop().create_future()
        self.write(b"PING\r\n")
        await asyncio.wait_for(self.pong, 30)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"MSG ", pos) or buf.startswith(b"HMSG ", pos):
                parts = bytes(buf[pos:eol]).split()
                size = int(parts[-1])
                end = eol + 2 + size
                if len(buf) < end + 2:
                    break
                hdr = parts[0] == b"HMSG"
                reply = parts[3] if len(parts) == (6 if hdr else 5) else b""
                self.on_msg(parts[1], reply, bytes(buf[eol + 2 : end]), hdr)
                pos = end + 2
                continue
            line = bytes(buf[pos:eol])
            pos = eol + 2
            if line == b"PING":
                self.write(b"PONG\r\n")
            elif line == b"PONG" and self.pong is not None and not self.pong.done():
                self.pong.set_result(None)
            elif line.startswith(b"-ERR"):
                self.error = line.decode(errors="replace")
        del buf[:pos]


async def nats_connect(url: str, on_msg: Any) -> NatsConn:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: NatsConn(on_msg), host, int(port))
    await conn.ping()
    return conn


async def nats_produce(spec: dict[str, Any]) -> dict[str, Any]:
    """PUBs with a reply subject, `window` outstanding; each JetStream ack frees one slot."""
    n, size, window = spec["count"], spec["size"], spec["window"]
    inbox = f"_INBOX.{uuid.uuid4().hex}".encode()
    acked = errors = 0
    room = asyncio.Event()
    finished = asyncio.Event()

    def on_msg(_subject: bytes, _reply: bytes, payload: bytes, hdr: bool) -> None:
        nonlocal acked, errors
        acked += 1
        if hdr or b'"error"' in payload:
            errors += 1
        if acked == n:
            finished.set()
        room.set()

    conn = await nats_connect(spec["url"], on_msg)
    conn.write(b"SUB %s 1\r\n" % inbox)
    await conn.ping()
    head = b"PUB %s %s %d\r\n" % (spec["subject"].encode(), inbox, size)
    frames = [head + v + b"\r\n" for v in payloads(size)]
    mask = len(frames) - 1
    await asyncio.get_running_loop().run_in_executor(None, handshake)
    start, cpu0 = time.time(), cpu_seconds()
    deadline = time.monotonic() + spec["timeout"]
    sent = 0
    while sent < n and time.monotonic() < deadline:
        burst = min(n - sent, window - (sent - acked), 256)
        if burst <= 0:
            room.clear()
            await asyncio.wait_for(room.wait(), spec["timeout"])
            continue
        conn.write(b"".join(frames[(sent + k) & mask] for k in range(burst)))
        sent += burst
        await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), max(1.0, deadline - time.monotonic()))
    end = time.time()
    cpu = cpu_seconds() - cpu0
    assert conn.transport is not None
    conn.transport.close()
    ok = acked - errors
    return {
        "messages": ok,
        "bytes": ok * size,
        "sent": sent,
        "errors": errors,
        "server_error": conn.error,
        "start": start,
        "end": end,
        "cpu_seconds": round(cpu, 3),
    }


async def nats_consume(spec: dict[str, Any]) -> dict[str, Any]:
    """Pull requests of `batch` messages to a durable pull consumer, two outstanding, until
    `count` messages arrived. Its ack policy is `all`: one ack every half batch covers the
    messages before it (pull consumers of nats-server 2.9 need an ack policy)."""
    want, batch = spec["count"], spec["batch"]
    inbox = f"_INBOX.{uuid.uuid4().hex}".encode()
    got = nbytes = status = 0
    requested = 0
    more = asyncio.Event()
    finished = asyncio.Event()

    def on_msg(_subject: bytes, reply: bytes, payload: bytes, hdr: bool) -> None:
        nonlocal got, nbytes, status
        if hdr and not reply:  # 404/408 status of a pull request, not a stored message
            status += 1
            more.set()
            return
        got += 1
        nbytes += len(payload)
        if reply and (got % (batch // 2) == 0 or got >= want):
            conn.write(b"PUB %s 0\r\n\r\n" % reply)
        if got >= want:
            finished.set()
        elif got % batch == 0:
            more.set()

    conn = await nats_connect(spec["url"], on_msg)
    conn.write(b"SUB %s 1\r\n" % inbox)
    await conn.ping()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec['stream']}.{spec['consumer']}".encode()

    def request() -> None:
        nonlocal requested
        k = min(batch, want - requested)
        if k <= 0:
            return
        body = json.dumps({"batch": k, "expires": 5_000_000_000}).encode()
        conn.write(b"PUB %s %s %d\r\n%s\r\n" % (next_subject, inbox, len(body), body))
        requested += k

    await asyncio.get_running_loop().run_in_executor(None, handshake)
    start, cpu0 = time.time(), cpu_seconds()
    deadline = time.monotonic() + spec["timeout"]
    request()
    request()
    while not finished.is_set() and time.monotonic() < deadline:
        more.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(more.wait(), 1.0)
        if status:  # an expired or empty request: ask again for what is missing
            requested, status = got, 0
        while requested - got < 2 * batch and requested < want:
            request()
    end = time.time()
    cpu = cpu_seconds() - cpu0
    assert conn.transport is not None
    conn.transport.close()
    return {
        "messages": got,
        "bytes": nbytes,
        "expected": want,
        "timed_out": got < want,
        "server_error": conn.error,
        "start": start,
        "end": end,
        "cpu_seconds": round(cpu, 3),
    }


async def nats_latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Paced PUBs (each acked by JetStream) and a push consumer on `deliver` in one process."""
    rate, n, size = spec["rate"], spec["count"], spec["size"]
    inbox = f"_INBOX.{uuid.uuid4().hex}".encode()
    deliver = spec["deliver"].encode()
    latencies: list[float] = []
    acks = 0
    finished = asyncio.Event()

    def on_msg(subject: bytes, _reply: bytes, payload: bytes, hdr: bool) -> None:
        nonlocal acks
        now = time.perf_counter_ns()
        if subject == inbox:
            acks += 1
        elif not hdr and len(payload) >= STAMP.size:
            latencies.append((now - STAMP.unpack_from(payload)[1]) / 1e6)
            if len(latencies) >= n:
                finished.set()

    conn = await nats_connect(spec["url"], on_msg)
    conn.write(b"SUB %s 1\r\nSUB %s 2\r\n" % (inbox, deliver))
    await conn.ping()
    head = b"PUB %s %s %d\r\n" % (spec["subject"].encode(), inbox, size)
    pad = b"\0" * (size - STAMP.size)
    await asyncio.get_running_loop().run_in_executor(None, handshake)
    start = time.perf_counter()
    for i in range(n):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        conn.write(head + STAMP.pack(i, time.perf_counter_ns()) + pad + b"\r\n")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), spec["timeout"])
    assert conn.transport is not None
    conn.transport.close()
    skip = min(spec["warmup"], len(latencies) // 10)
    return {
        "sent": n,
        "acked": acks,
        "received": len(latencies),
        "rate_per_s": rate,
        "warmup_discarded": skip,
        **percentiles(latencies[skip:]),
    }


MODES: dict[str, Any] = {
    "kafka-produce": kafka_produce,
    "kafka-produce-batches": kafka_produce_batches,
    "kafka-consume": kafka_consume,
    "kafka-latency": kafka_latency,
    "nats-produce": nats_produce,
    "nats-consume": nats_consume,
    "nats-latency": nats_latency,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    fn = MODES[spec["mode"]]
    if asyncio.iscoroutinefunction(fn):
        try:
            import uvloop

            result = uvloop.run(fn(spec))
        except ImportError:
            result = asyncio.run(fn(spec))
    else:
        result = fn(spec)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
