"""Consumer groups with kafka-python: rebalancing on join, leave and a killed member, committed
offsets that survive a broker restart."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable

from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic


class GroupMember(threading.Thread):
    """A consumer polling in its own thread (kafka-python heartbeats from poll)."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
            enable_auto_commit=False, session_timeout_ms=10000, heartbeat_interval_ms=300,
            max_poll_interval_ms=20000, fetch_max_wait_ms=100,
        )  # fmt: skip
        # subscribe once the topic's partitions are known: a leader that assigns before its
        # metadata has them hands out nothing, and kafka-python may not rejoin for a while
        assert self.consumer.partitions_for_topic(topic)
        self.consumer.subscribe([topic])
        self.values: list[bytes] = []
        self.assigned: set[int] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            batches = self.consumer.poll(timeout_ms=100)
            for records in batches.values():
                self.values += [r.value for r in records]
            self.assigned = {tp.partition for tp in self.consumer.assignment()}
        self.consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        if self.is_alive() or self.ident is not None:
            self.join(15)
        else:  # never started: run() would have closed the consumer
            self.consumer.close()


def wait_until(check: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_three_consumers_share_six_partitions_and_rebalance_when_one_leaves(
    broker: RunningBroker,
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("shared", num_partitions=6, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    members: list[GroupMember] = []
    try:  # whatever happens, close every client: a leaked socket fails later, unrelated tests
        for i in range(300):
            producer.send("shared", key=b"%d" % i, value=b"%d" % i)
        producer.flush()
        members += [GroupMember(broker.bootstrap, "g1", "shared") for _ in range(3)]
        for m in members:
            m.start()
        wait_until(lambda: sorted(len(m.assigned) for m in members) == [2, 2, 2])
        assert set().union(*(m.assigned for m in members)) == set(range(6))
        wait_until(lambda: sum(len(m.values) for m in members) >= 300)
        members[0].stop()  # leaves the group: the other two take over its partitions
        rest = members[1:]
        wait_until(lambda: sorted(len(m.assigned) for m in rest) == [3, 3])
        assert set().union(*(m.assigned for m in rest)) == set(range(6))
    finally:
        producer.close()
        for m in members:
            m.stop()
    everything = [v for m in members for v in m.values]
    assert len(set(everything)) == 300


def test_committed_offsets_survive_a_restart(start_broker: Callable[..., RunningBroker]) -> None:
    first = start_broker()
    producer = KafkaProducer(bootstrap_servers=first.bootstrap, acks="all")
    for i in range(20):
        producer.send("resume", value=b"%02d" % i)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer("resume", bootstrap_servers=first.bootstrap, group_id="g2",
                             auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
    seen: list[bytes] = []
    while len(seen) < 12:
        for records in consumer.poll(timeout_ms=500).values():
            seen += [r.value for r in records]
    consumer.commit()
    committed = consumer.position(next(iter(consumer.assignment())))
    consumer.close()
    data = first.server.settings.data
    first.stop()
    again = start_broker(data)
    resumed = KafkaConsumer("resume", bootstrap_servers=again.bootstrap, group_id="g2",
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            consumer_timeout_ms=3000)  # fmt: skip
    rest = [r.value for r in resumed]
    resumed.close()
    assert rest == [b"%02d" % i for i in range(committed, 20)]


MEMBER_PROCESS = """
import sys, warnings
warnings.simplefilter("ignore")
from kafka import KafkaConsumer
bootstrap, group, topic = sys.argv[1:]
consumer = KafkaConsumer(
    bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
    enable_auto_commit=False, session_timeout_ms=6000, heartbeat_interval_ms=500,
    max_poll_interval_ms=20000, fetch_max_wait_ms=100,
)
assert consumer.partitions_for_topic(topic)  # see GroupMember: subscribe once they are known
consumer.subscribe([topic])
reported = None
while True:
    batches = consumer.poll(timeout_ms=100)
    for records in batches.values():
        for r in records:
            print("record", r.value.decode(), flush=True)
    if batches:
        consumer.commit()
    assigned = sorted(tp.partition for tp in consumer.assignment())
    if assigned != reported:
        print("assigned", *assigned, flush=True)
        reported = assigned
"""


class MemberProcess:
    """A group member in a child process of its own (so it can be SIGKILLed), reporting its
    assignment and the records it consumed as lines on stdout."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", MEMBER_PROCESS, bootstrap, group, topic],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.assigned: set[int] = set()
        self.values: set[str] = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, *rest = line.split()
            if kind == "assigned":
                self.assigned = {int(p) for p in rest}
            elif kind == "record":
                self.values.add(rest[0])

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no LeaveGroup, no last commit; only its session can end it
        self.proc.wait(30)
        self.reader.join(30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_survivors_take_over_every_partition_when_a_member_is_killed(
    broker: RunningBroker,
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("crashy", num_partitions=6, replication_factor=1)])
    admin.close()
    members: list[MemberProcess] = []
    producer: KafkaProducer | None = None
    try:
        members += [MemberProcess(broker.bootstrap, "g3", "crashy") for _ in range(3)]
        wait_until(lambda: sorted(len(m.assigned) for m in members) == [2, 2, 2])
        assert set().union(*(m.assigned for m in members)) == set(range(6))
        victim, rest = members[0], members[1:]
        victim.kill()
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        after = {f"after-{i}" for i in range(120)}
        for value in sorted(after):  # keyed: every partition gets some, the victim's included
            producer.send("crashy", key=value.encode(), value=value.encode())
        producer.flush()
        wait_until(lambda: sorted(len(m.assigned) for m in rest) == [3, 3])
        assert set().union(*(m.assigned for m in rest)) == set(range(6))
        wait_until(lambda: after <= rest[0].values | rest[1].values)
    finally:
        if producer is not None:
            producer.close()
        for m in members:
            m.kill()
