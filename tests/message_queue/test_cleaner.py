"""Log compaction: the record codec, a model of what survives (with crashes at every swap step),
concurrent reads during a swap, kafka-python on a compacted topic, and the offsets topic."""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer
from confluent_kafka import TopicPartition as ConfluentPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab.message_queue import segment
from scalelab.message_queue.batch import BatchHeader, stored_batches
from scalelab.message_queue.cleaner import (
    DELETE_HORIZON,
    LogCleaner,
    batch_records,
    clean,
    encode_batch,
)
from scalelab.message_queue.partition import LogConfig, Partition
from scalelab.message_queue.segment import Segment, file_name
from scalelab.message_queue.state_storage import OffsetStore
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    from kafka.errors import InvalidRecordError
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

DAY_MS = 24 * 3600 * 1000
CODECS = [0, 1, 2, 3, 4]  # none, gzip, snappy, lz4, zstd
STEPS = ["cleaned", "swap", "indexes", "deleted", "renamed"]
Rec = tuple[int, bytes | None, bytes | None]  # offset, key, value


class Crash(Exception):
    pass


def make_batch(records: list[tuple[bytes | None, bytes | None]], codec: int = 0, ts: int = 1000,
               pid: int = -1, seq: int = -1) -> bytes:  # fmt: skip
    builder = DefaultRecordBatchBuilder(2, codec, False, pid, 0 if pid >= 0 else -1, seq, 1 << 30)
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp=ts + i, key=key, value=value, headers=[("h", b"x")])
    return bytes(builder.build())


def read_all(part: Partition) -> list[Rec]:
    out: list[Rec] = []
    offset = part.log_start_offset
    while offset < part.log_end_offset:
        data = part.read(offset, 1 << 20)
        for header, view in stored_batches(data):
            assert DefaultRecordBatch(bytes(view)).validate_crc()
            out += [(r.offset, r.key, r.value) for r in DefaultRecordBatch(bytes(view))]
            offset = header.last_offset + 1
    return out


def expected_after(original: list[Rec], dirty_end: int, expired: bool) -> list[Rec]:
    """The model: below dirty_end (the active segment's base) the last record per key, no
    keyless records, and tombstones only while not expired; the active segment as it was."""
    last = {key: off for off, key, _ in original if off < dirty_end and key is not None}
    return [
        (off, key, value)
        for off, key, value in original
        if off >= dirty_end
        or (key is not None and last[key] == off and not (value is None and expired))
    ]


# ---- the record codec -----------------------------------------------------------------------

keys = st.sampled_from([b"a", b"b", b"c", b"d", None])
values = st.one_of(st.none(), st.binary(max_size=40))


@given(st.lists(st.tuples(keys, values), min_size=1, max_size=20), st.sampled_from(CODECS),
       st.integers(-(10**12), 10**12))  # fmt: skip
def test_reencoded_batch_decodes_the_same_with_kafka_python(
    records: list[tuple[bytes | None, bytes | None]], codec: int, new_base: int
) -> None:
    raw = make_batch(records, codec)
    header = BatchHeader.parse(raw)
    decoded = batch_records(raw, header)
    again = encode_batch(header, decoded, new_base, header.attributes)
    batch = DefaultRecordBatch(again)
    assert batch.validate_crc() and batch.compression_type == header.attributes & 7
    before = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in DefaultRecordBatch(raw)]
    after = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]
    assert after == before


# ---- the model, with a crash at each swap step ----------------------------------------------

batches_st = st.lists(
    st.tuples(st.lists(st.tuples(keys, values), min_size=1, max_size=4),
              st.sampled_from(CODECS), st.booleans()),
    min_size=1, max_size=25,
)  # fmt: skip


def fill(part: Partition, batches: list[Any]) -> int:
    """Append batches (some from idempotent producer 7), then roll and add one filler batch
    so that all of them are read-only; returns the producer's last sequence."""
    seq = 0
    for records, codec, idempotent in batches:
        pid = 7 if idempotent else -1
        part.append(make_batch(records, codec, pid=pid, seq=seq if idempotent else -1))
        seq += len(records) if idempotent else 0
    with part._lock:
        part._roll()
    part.append(make_batch([(b"filler", b"f")]))
    return seq - 1


def log_files(directory: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in directory.iterdir() if f.suffix == ".log"}


def check_indexes(part: Partition) -> None:
    """Each read-only segment's indexes are what a fresh scan of its log builds."""
    for seg in part._segments[:-1]:
        fresh = Segment.from_file(part.directory, seg.base_offset, seg.log_path, ".check")
        for attr in ("_offsets", "_positions", "_times", "_time_offsets", "next_offset"):
            assert getattr(seg, attr) == getattr(fresh, attr), attr
        fresh.close()
        for suffix in (".index.check", ".timeindex.check"):
            (part.directory / file_name(seg.base_offset, suffix)).unlink()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches_st, st.sampled_from([None, *STEPS]), st.booleans())
def test_compaction_keeps_the_last_record_per_key(
    tmp_path_factory: pytest.TempPathFactory, batches: list[Any], crash_at: str | None,
    late: bool,
) -> None:  # fmt: skip
    directory = tmp_path_factory.mktemp("p")
    with patch.object(segment, "INDEX_INTERVAL_BYTES", 64):  # indexes with many entries
        run_model(directory, batches, crash_at, late)


def run_model(directory: Path, batches: list[Any], crash_at: str | None, late: bool) -> None:
    config = LogConfig(segment_bytes=300, cleanup_policy="compact", delete_retention_ms=DAY_MS)
    part = Partition(directory, config, clock=lambda: 1000.0)
    last_seq = fill(part, batches)
    original = read_all(part)
    dirty_end = part.active.base_offset
    files = log_files(directory)

    def step(name: str) -> None:
        if name == crash_at:
            raise Crash(name)

    try:
        clean(part, now_ms=5_000, step=step)
    except Crash:  # the process dies here: reopen from what is on disk
        for seg in part._segments:
            seg.close()
        part = Partition(directory, config, clock=lambda: 1000.0)
        assert not [n for n in os.listdir(directory) if n.endswith((".cleaned", ".swap"))]
        check_indexes(part)
        got = read_all(part)
        kept = expected_after(original, dirty_end, expired=False)
        assert set(kept) <= set(got) <= set(original)
        # the crash hit a group being rewritten: past the commit point the copy must win
        assert (log_files(directory) == files) == (crash_at == "cleaned")
        clean(part, now_ms=5_000)
    got = read_all(part)
    assert got == expected_after(original, dirty_end, expired=False)
    offsets = [off for off, _, _ in got]
    assert offsets == sorted(set(offsets))
    # a second pass before the horizon changes nothing; one at it drops the tombstones
    clean(part, now_ms=5_000 + DAY_MS - (0 if late else 1))
    assert read_all(part) == expected_after(original, dirty_end, expired=late)
    for seg in part._segments:
        seg.close()
    part = Partition(directory, config, clock=lambda: 1000.0)  # indexes and state reopen
    check_indexes(part)
    assert read_all(part) == expected_after(original, dirty_end, expired=late)
    for off, _, _ in expected_after(original, dirty_end, expired=late):
        first = next(stored_batches(part.read(off, 1)))[0]  # the index finds every record
        assert first.base_offset <= off <= first.last_offset
    if last_seq >= 0:  # the producer's last batch survives, empty if need be
        assert part.producers._producers[7].last_sequence == last_seq
    assert not [n for n in os.listdir(directory) if n.endswith((".cleaned", ".swap"))]
    part.close()


def test_an_emptied_last_batch_of_a_producer_stays_as_a_header(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=1 << 20, cleanup_policy="compact")
    part = Partition(tmp_path, config)
    part.append(make_batch([(b"k", b"1")]))
    part.append(make_batch([(None, b"keyless"), (None, b"keyless")], pid=3, seq=0))
    part.append(make_batch([(None, b"keyless")]))
    with part._lock:
        part._roll()
    part.append(make_batch([(b"z", b"1")]))
    stats = clean(part, now_ms=0)
    assert stats.keyless_removed == 3
    headers = [h for h, _ in stored_batches(part.read(0, 1 << 20))]
    assert [(h.base_offset, h.record_count, h.producer_id) for h in headers] == [
        (0, 1, -1), (1, 0, 3), (4, 1, -1)
    ]  # fmt: skip
    assert headers[1].last_offset_delta == 1 and headers[1].base_sequence == 0
    part.close()
    part = Partition(tmp_path, config)
    assert part.producers._producers[3].last_sequence == 1
    part.close()


def test_tombstones_get_a_delete_horizon_and_keep_their_timestamps(tmp_path: Path) -> None:
    config = LogConfig(cleanup_policy="compact", delete_retention_ms=500)
    part = Partition(tmp_path, config)
    part.append(make_batch([(b"k", b"v"), (b"j", None)], ts=1000))
    with part._lock:
        part._roll()
    part.append(make_batch([(b"z", b"1")]))
    clean(part, now_ms=10_000)
    header, view = next(stored_batches(part.read(0, 1)))
    raw = bytes(view)
    assert header.attributes & DELETE_HORIZON and header.base_timestamp == 10_500
    assert [(r.key, r.timestamp) for r in DefaultRecordBatch(raw)] == [(b"k", 1000), (b"j", 1001)]
    part.close()


def test_a_read_that_listed_replaced_segments_still_reads_them(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=200, cleanup_policy="compact")
    part = Partition(tmp_path, config)
    for i in range(30):
        part.append(make_batch([(b"k%d" % (i % 3), b"v%d" % i)]))
    before = read_all(part)
    with part._lock:
        listed = list(part._segments)  # what a concurrent read holds
    watch = weakref.ref(listed[0])
    assert clean(part, now_ms=0).groups_rewritten > 0
    assert listed[0] not in part._segments
    again = b"".join(s.read(0, 1 << 20) for s in listed if s.size)
    assert [(r.offset, r.value) for h, v in stored_batches(again)
            for r in DefaultRecordBatch(bytes(v))] == [(o, v) for o, _, v in before]  # fmt: skip
    del listed
    assert watch() is None  # nothing holds it: its files are closed
    assert len(read_all(part)) < len(before)
    part.close()


def test_reads_running_beside_the_cleaner_see_whole_valid_batches(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=250, cleanup_policy="compact")
    part = Partition(tmp_path, config)
    stop, failures, reads = threading.Event(), list[BaseException](), [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                got = read_all(part)
                offsets = [off for off, _, _ in got]
                assert offsets == sorted(set(offsets)) and all(k for _, k, _ in got)
                reads[0] += 1
            except BaseException as exc:
                failures.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(20):
            for i in range(15):
                part.append(make_batch([(b"k%d" % (i % 4), b"v%d-%d" % (round_, i))]))
            clean(part, now_ms=0)
    finally:
        stop.set()
        thread.join()
    assert failures == [] and reads[0] > 0
    part.close()


def test_the_cleaner_runs_when_enough_is_dirty_or_a_horizon_passes(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=300, cleanup_policy="compact", delete_retention_ms=100)
    part = Partition(tmp_path, config)
    for i in range(40):
        part.append(make_batch([(b"k%d" % (i % 4), b"v%d" % i)]))
    part.append(make_batch([(b"gone", None)]))
    with part._lock:
        part._roll()
    cleaner = LogCleaner()
    stats = cleaner.run(part, now_ms=1000)
    assert stats is not None and stats.next_horizon == 1100
    assert cleaner.run(part, now_ms=1099) is None  # nothing new, horizon not reached
    stats = cleaner.run(part, now_ms=1100)
    assert stats is not None and stats.tombstones_removed == 1
    for i in range(3):  # a little new data: under min.cleanable.dirty.ratio
        part.append(make_batch([(b"x", b"%d" % i)]))
    with part._lock:
        part._roll()
    assert not cleaner.needs_cleaning(part, 2000)
    assert cleaner.run(part, now_ms=2000) is None
    assert not LogCleaner().needs_cleaning(Partition(tmp_path / "d", LogConfig()), 0)
    part.close()


def test_the_broker_compacts_in_the_background(start_broker: Any) -> None:
    broker: RunningBroker = start_broker(cleaner_interval_seconds=0.05)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    configs = {"cleanup.policy": "compact", "segment.bytes": "300"}
    admin.create_topics([NewTopic("bg", 1, 1, topic_configs=configs)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    for i in range(60):
        producer.send("bg", key=b"k", value=b"v%d" % i).get(timeout=30)
    producer.close()
    part = broker.server.broker.topics.partition("bg", 0)

    def below_active() -> list[Rec]:
        return [r for r in read_all(part) if r[0] < part.active.base_offset]

    deadline = time.monotonic() + 60  # a bound on a hang, not an assertion on time
    while len(below_active()) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(below_active()) == 1 and read_all(part)[-1][2] == b"v59"


# ---- the offsets topic ----------------------------------------------------------------------


def test_committed_offsets_replay_the_same_after_compaction(tmp_path: Path) -> None:
    config = LogConfig(segment_bytes=400, cleanup_policy="compact")
    part = Partition(tmp_path, config)
    store = OffsetStore(part, sync=False)
    for i in range(200):
        store.commit(f"g{i % 3}", {("t", i % 4): (i, None), ("u", 0): (i * 2, "m")})
    committed = dict(store.offsets)
    size = part.size_bytes
    stats = clean(part, now_ms=0)
    assert stats.records_removed > 300 and part.size_bytes < size / 4
    assert OffsetStore(part).offsets == committed
    part.close()
    reopened = Partition(tmp_path, config)
    assert OffsetStore(reopened).offsets == committed
    reopened.close()


# ---- a real client --------------------------------------------------------------------------


def disk_usage(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir())


def test_kafka_python_reads_only_the_last_value_per_key(start_broker: Any) -> None:
    broker: RunningBroker = start_broker(cleaner_interval_seconds=3600.0)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    configs = {"cleanup.policy": "compact", "segment.bytes": "300", "delete.retention.ms": "1"}
    admin.create_topics([NewTopic("table", 1, 1, topic_configs=configs)])
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "table")])
    admin.close()
    assert described["topic"]["table"]["delete.retention.ms"]["value"] == "1"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             compression_type="gzip", linger_ms=0)  # fmt: skip
    last: dict[bytes, bytes | None] = {}
    for i in range(300):
        key, value = b"key-%d" % (i % 10), b"value-%d" % i
        if i % 10 == 3 and i > 250:
            value = None  # a tombstone, kept until a pass after its horizon
        producer.send("table", key=key, value=value).get(timeout=30)
        last[key] = value
    for i in range(4):  # the active segment holds only these once the log rolls
        producer.send("table", key=b"filler-%d" % i, value=b"f").get(timeout=30)
    producer.close()
    part = broker.server.broker.topics.partition("table", 0)
    before = disk_usage(part.directory)
    end = part.log_end_offset
    clean(part)
    clean(part, now_ms=int(part.clock() * 1000) + 10)  # past the 1 ms horizon
    assert disk_usage(part.directory) < before / 5

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000, fetch_max_wait_ms=100)  # fmt: skip
    tp = TopicPartition("table", 0)
    consumer.assign([tp])
    consumer.seek_to_beginning()
    seen: list[tuple[bytes, bytes | None]] = []
    for msg in consumer:
        seen.append((msg.key, msg.value))
        if msg.offset == end - 1:
            break
    consumer.close()
    updates = [(k, v) for k, v in seen if not k.startswith(b"filler")]
    assert sorted(updates) == sorted((k, v) for k, v in last.items() if v is not None)
    assert len(seen) == len(updates) + 4
    assert confluent_reads(broker.bootstrap, "table", end) == seen


def test_keyless_records_are_refused_on_a_compacted_topic(broker: RunningBroker) -> None:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic("keyed-only", 1, 1, topic_configs={"cleanup.policy": "compact"})])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=0)
    producer.send("keyed-only", key=b"k", value=b"kept").get(timeout=30)
    with pytest.raises(InvalidRecordError):
        producer.send("keyed-only", value=b"no key").get(timeout=30)
    producer.close()
    assert broker.server.broker.topics.partition("keyed-only", 0).log_end_offset == 1


def confluent_reads(bootstrap: str, topic: str, end: int) -> list[tuple[bytes, bytes | None]]:
    """librdkafka too moves past batches whose last records compaction removed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "c",
                         "enable.auto.commit": False})  # fmt: skip
    consumer.assign([ConfluentPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[tuple[bytes, bytes | None]] = []
    deadline = time.monotonic() + 30  # a bound on a hang, not an assertion on time
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append((msg.key(), msg.value()))
            if msg.offset() == end - 1:
                break
    consumer.close()
    return got
