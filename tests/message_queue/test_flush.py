"""The durability policy: group commit shares fsyncs, flush-by-interval counts records, and
pipelined produce requests on one connection are answered in order."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import warnings
from pathlib import Path

from scalelab.message_queue import batch as b
from scalelab.message_queue.flush import Flusher, GroupSync
from scalelab.message_queue.partition import Partition
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.producer import ProduceRequest


class GatedPartition(Partition):
    """A partition whose fsyncs wait for the test to let them finish, and are counted."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.syncs = 0

    def sync(self) -> int:
        """Covers what was appended when it began, like a real fsync that is slow to finish."""
        self.syncs += 1
        end = self.log_end_offset
        self.gate.wait(10)
        super().sync()
        return end


def test_group_commit_one_fsync_covers_everyone_who_waited(tmp_path: Path) -> None:
    async def main() -> int:
        part = GatedPartition(tmp_path / "p")
        group = GroupSync(part)
        part.append(b.make_batch(b"a", 1))
        first = asyncio.create_task(group.sync())
        await asyncio.sleep(0.05)  # the first fsync is running (held at the gate)
        for _ in range(5):
            part.append(b.make_batch(b"b", 1))
        waiting = [asyncio.create_task(group.sync()) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert part.syncs == 1  # nobody starts a second fsync while one runs
        part.gate.set()
        await asyncio.gather(first, *waiting)
        assert group.durable == part.log_end_offset == 6
        await group.sync()  # nothing new: no fsync at all
        part.close()
        return part.syncs

    assert asyncio.run(main()) == 2


def test_flush_by_interval_counts_records(tmp_path: Path) -> None:
    async def main() -> list[int]:
        part = GatedPartition(tmp_path / "p")
        part.gate.set()
        flusher = Flusher(fsync_before_ack=False, interval_messages=10, interval_ms=-1)
        seen = []
        for _ in range(4):
            part.append(b.make_batch(b"x" * 4, 4))
            await flusher.appended({part: 4}, acked=True)  # never waits for the disk
            await asyncio.sleep(0.05)  # let a background fsync run
            seen.append(part.syncs)
        await flusher.flush_all([part])
        seen.append(part.syncs)
        part.close()
        return seen

    # 4, 8: under the threshold; 12: fsync; 4 more: under again; flush_all: the rest
    assert asyncio.run(main()) == [0, 0, 1, 1, 2]


def frame(request: object, correlation_id: int) -> bytes:
    request.with_header(correlation_id=correlation_id, client_id="pipe")  # type: ignore[attr-defined]
    return bytes(request.encode(header=True, framed=True))  # type: ignore[attr-defined]


def test_pipelined_requests_are_answered_in_order(broker: RunningBroker) -> None:
    """Twenty produce requests and a metadata request written at once: twenty-one answers,
    in request order, the produces at consecutive offsets."""
    records = b.make_batch(b"\x00" * 8, 1)
    produce = ProduceRequest[7](
        transactional_id=None, acks=-1, timeout_ms=5000,
        topic_data=[ProduceRequest[7].TopicProduceData(
            name="piped",
            partition_data=[ProduceRequest[7].TopicProduceData.PartitionProduceData(
                index=0, records=records)])],
    )  # fmt: skip
    payload = b"".join(frame(produce, i) for i in range(20))
    payload += frame(MetadataRequest[1](topics=None), 20)
    with socket.create_connection(("127.0.0.1", broker.server.port), timeout=10) as s:
        s.sendall(payload)
        ids = []
        buf = b""
        while len(ids) < 21:
            chunk = s.recv(65536)
            assert chunk, "the broker closed the connection"
            buf += chunk
            while len(buf) >= 8 and len(buf) >= 4 + struct.unpack(">i", buf[:4])[0]:
                size = struct.unpack(">i", buf[:4])[0]
                ids.append(struct.unpack(">i", buf[4:8])[0])
                buf = buf[4 + size :]
    assert ids == list(range(21))
    part = broker.server.broker.topics.partition("piped", 0)
    assert part.log_end_offset == 20


def test_a_finished_fsync_not_yet_collected_is_not_awaited_forever(tmp_path: Path) -> None:
    """An fsync that finished before its waiter resumed (its callbacks not run yet) covered
    less than the waiter needs: a new one starts, rather than re-awaiting the finished one
    in a loop that never yields (the bench once hung the broker that way)."""

    async def main() -> int:
        part = Partition(tmp_path / "p")
        group = GroupSync(part)
        stale: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        stale.set_result(0)  # covered an empty log
        group._running = stale
        part.append(b.make_batch(b"a", 1))
        await asyncio.wait_for(group.sync(), 10)
        part.close()
        return group.durable

    assert asyncio.run(main()) == 1


def test_a_deleted_topic_leaves_no_partition_behind_in_the_policy(broker: RunningBroker) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send("doomed-topic", b"x").get(timeout=10)
    producer.close()
    flusher = broker.server.broker.flusher
    part = broker.server.broker.topics.partition("doomed-topic", 0)
    assert part in flusher._groups  # the produce went through group commit
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.delete_topics(["doomed-topic"])
    admin.close()
    assert part not in flusher._groups
