"""Delayed delivery: a record with the header `scalelab-deliver-at` (epoch ms, ASCII digits)
reaches its topic when due, not when produced (issue 4).

Opt-in per topic (`scalelab.delayed.delivery=true`), so every other topic keeps the hot path's
promise of never decoding a record. For an opted-in topic, `intercept` decodes the produced
record set; if no record is still to come (no header, or all due) it is appended as received.
Otherwise the whole record set is parked, as received, in the internal topic `__delayed`
(one partition, no retention), appended and synced with produce's own durability (it joins the
request's group commit), and the timing wheel (timing_wheel.py) gets one entry per record.
A broker task advances the wheel every tick and publishes what is due to its target partition
as a fresh batch: producer id -1 (not idempotent, not transactional), each record's key, value,
headers (the `scalelab-deliver-at` header is kept, so a consumer sees when it was meant for)
and create time. Records without the header, or already due, in a parked record set go out at
the next tick: after any batches produced in between (ordering is by deadline, then parking).

Idempotent producers: the target partition's producer state checks and records each parked
batch (with base offset -1), so a retry is answered as a duplicate and the next sequence is in
order. The Produce response for a parked batch says base_offset -1, Kafka's "no offset" (its
answer to acks=0): kafka-python reports offset -1 for every record; librdkafka (confluent-kafka)
reports None for the first record and -1 + i for the others, which are not offsets. A
malformed header value (not 1-19 ASCII digits) fails the partition's batch with INVALID_RECORD
(87), nothing written; so does a transactional batch with a delayed record (not supported).

`__delayed` records (one record per batch, uncompressed, built with kafka-python's builder),
key big-endian:

    PARK  key:   u8 version (1) | u8 kind (1) | i32 target partition | u16 n | n bytes topic
          value: the produced record set exactly as received (v2 batches, producer's offsets)
    DONE  key:   u8 version (1) | u8 kind (2)
          value: entries of i64 offset of the PARK record | i32 record index in its set

A record is delivered when due; its DONE entry is appended (and synced) only after the target
partition's append is durable. A broker that dies between the two delivers it again after a
restart: at-least-once. On start the whole of `__delayed` is read: PARK records feed their
target's producer state and the wheel (less what DONE says), past deadlines go out at once.
Reclaiming `__delayed` (out of scope): every PARK before the oldest one with an undelivered
record is dead, so whole segments before it can go, as retention deletes them, once producer
state for those producers no longer matters (Kafka's own producer-state expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import warnings
from collections.abc import Callable
from typing import Any

from scalelab.message_queue.batch import INVALID_RECORD, BatchError, BatchHeader, split
from scalelab.message_queue.partition import Partition
from scalelab.message_queue.producer_state import (
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    Duplicate,
    ProducerStateError,
)
from scalelab.message_queue.timing_wheel import TimingWheel
from scalelab.message_queue.topics import TopicError, TopicStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.errors import KafkaError
    from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

__all__ = ["CONFIG", "HEADER", "TOPIC", "DelayedDelivery"]

log = logging.getLogger(__name__)

TOPIC = "__delayed"
HEADER = "scalelab-deliver-at"
CONFIG = "scalelab.delayed.delivery"
WHEEL_SIZE = 64
MAX_SLEEP_MS = 1000
RETRY_MS = 1000  # a delivery that failed (I/O error) is tried again this much later
UNSUPPORTED_COMPRESSION_TYPE = 76
KAFKA_STORAGE_ERROR = 56
INVALID_TOPIC_EXCEPTION = 17
NO_OFFSET = -1  # base offset of a parked batch, in responses and producer state

_VERSION, _PARK, _DONE = 1, 1, 2
PARK_KEY = struct.Struct(">BBiH")
DONE_KEY = struct.Struct(">BB")
DONE_ENTRY = struct.Struct(">qi")
assert (PARK_KEY.size, DONE_KEY.size, DONE_ENTRY.size) == (8, 2, 12)

Entry = tuple[int, int]  # (offset of the PARK record, index of the record in its set)


class MalformedDeadline(ValueError):
    pass


def opted_in(configs: dict[str, str]) -> bool:
    return configs.get(CONFIG, "false").strip().lower() == "true"


def deliver_at(headers: list[tuple[str, bytes | None]]) -> int | None:
    """The record's deadline in epoch ms, None without the header."""
    for name, value in headers:
        if name == HEADER:
            if value is None or not value.isdigit() or len(value) > 19:
                raise MalformedDeadline(f"{HEADER} must be epoch milliseconds, got {value!r}")
            return int(value)
    return None


def records_of(record_set: bytes) -> list[Any]:
    """Every record of a checked record set, decompressed (kafka-python's DefaultRecord)."""
    return [r for _, view in split(record_set) for r in DefaultRecordBatch(bytes(view))]


def park_key(topic: str, partition: int) -> bytes:
    name = topic.encode()
    return PARK_KEY.pack(_VERSION, _PARK, partition, len(name)) + name


def parse_key(key: bytes) -> tuple[int, tuple[str, int] | None]:
    """(kind, target) of a `__delayed` key; target only for PARK."""
    version, kind = DONE_KEY.unpack_from(key)
    if version != _VERSION:
        raise ValueError(f"__delayed key version {version}")
    if kind != _PARK:
        return kind, None
    _, _, partition, n = PARK_KEY.unpack_from(key)
    return kind, (key[PARK_KEY.size : PARK_KEY.size + n].decode(), partition)


def _one_record_batch(key: bytes, value: bytes, timestamp: int) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
    builder.append(0, timestamp=timestamp, key=key, value=value, headers=[])
    return bytes(builder.build())


class DelayedDelivery:
    """The parked records of every opted-in topic, and the task that publishes them when due."""

    def __init__(
        self,
        topics: TopicStore,
        *,
        sync: bool = True,
        tick_ms: int = 20,
        wake: Callable[[str, int], None] = lambda topic, index: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topics = topics
        self.sync = sync
        self.tick_ms = tick_ms
        self._wake = wake
        self.clock = clock  # tests swap in a virtual clock
        if TOPIC not in topics.topics:
            topics.create(TOPIC, 1, {"retention.ms": "-1", "retention.bytes": "-1"})
        self.partition: Partition = topics.partition(TOPIC, 0)
        self.wheel: TimingWheel[Entry] = TimingWheel(tick_ms, WHEEL_SIZE, self.now_ms())
        self.delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._stopping = False
        self._replay()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def pending(self) -> int:
        """Records parked and not yet delivered."""
        return len(self.wheel)

    # ---- produce side ---------------------------------------------------------------------

    def intercept(
        self, topic: str, index: int, records: Any, to_sync: dict[Partition, int]
    ) -> dict[str, Any] | None:
        """The Produce partition response if the record set was parked (or refused here), None
        if the broker should append it as usual."""
        if topic == TOPIC:  # only the broker writes there (Kafka's rule for internal topics)
            return _response(index, INVALID_TOPIC_EXCEPTION, f"{TOPIC} is internal")
        meta = self.topics.topics.get(topic)
        if records is None or meta is None or not opted_in(meta.configs):
            return None
        raw = bytes(records)
        now = self.now_ms()
        try:
            batches = list(split(raw))
            dues = [deliver_at(r.headers) for r in records_of(raw)]
        except BatchError as exc:
            return _response(index, exc.code, str(exc))
        except MalformedDeadline as exc:
            return _response(index, INVALID_RECORD, str(exc))
        except KafkaError as exc:  # a codec kafka-python lacks, a record it cannot read
            return _response(index, UNSUPPORTED_COMPRESSION_TYPE, f"cannot decode: {exc}")
        if not any(d is not None and d > now for d in dues):
            return None
        if any(h.transactional for h, _ in batches):
            return _response(index, INVALID_RECORD, "delayed records in a transaction")
        try:
            part = self.topics.partition(topic, index)
        except TopicError:
            return None  # the broker answers that itself
        refused = self._check_producers(part, [h for h, _ in batches])
        if refused is not None:
            refused["index"] = index
            return refused
        try:
            offset = self.partition.append(_one_record_batch(park_key(topic, index), raw, now))
        except OSError as exc:
            log.error("parking for %s-%d failed: %s", topic, index, exc)
            return _response(index, KAFKA_STORAGE_ERROR, f"storage error: {exc}")
        for header, _ in batches:
            part.producers.record(header, NO_OFFSET)
        to_sync[self.partition] = to_sync.get(self.partition, 0) + 1  # joins the group commit
        for i, due in enumerate(dues):
            self.wheel.add((offset.base_offset, i), now if due is None else due)
        if self._wakeup is not None:
            self._wakeup.set()
        return _response(index, 0, None, part.log_start_offset)

    def _check_producers(
        self, part: Partition, headers: list[BatchHeader]
    ) -> dict[str, Any] | None:
        """Partition.append's idempotence rules, for batches that go elsewhere."""
        states = part.producers.clone() if len(headers) > 1 else part.producers
        for header in headers:
            try:
                states.check(header)
            except Duplicate as dup:  # a retry: answered as the first time
                if len(headers) > 1:
                    msg = "a retried batch inside a multi-batch record set"
                    return _response(0, OUT_OF_ORDER_SEQUENCE_NUMBER, msg)
                return _response(0, 0, None, base_offset=dup.base_offset)
            except ProducerStateError as exc:
                return _response(0, exc.code, str(exc))
            if states is not part.producers:
                states.record(header, NO_OFFSET)
        return None

    # ---- delivery side --------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Finish the delivery in progress (so no thread writes to a closed log), then stop."""
        if self._task is None or self._wakeup is None:
            return
        self._stopping = True
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        """Tick while anything is due soon: sleep until the wheel's next bucket (at most
        MAX_SLEEP_MS, so a clock that jumps is noticed), and while empty until the next park."""
        assert self._wakeup is not None
        while not self._stopping:
            timeout: float | None = None
            if (next_ms := self.wheel.next_deadline()) is not None:
                wait = min(max(next_ms - self.now_ms(), self.tick_ms), MAX_SLEEP_MS)
                timeout = wait / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            self._wakeup.clear()
            if self._stopping:
                return
            await self.tick()

    async def tick(self) -> int:
        """Publish everything due now; returns how many records went out."""
        due = self.wheel.advance(self.now_ms())
        if not due:
            return 0
        try:
            targets = await asyncio.to_thread(self.deliver, due)
        except Exception:
            log.exception("delayed delivery of %d records failed; retrying", len(due))
            for entry in due:
                self.wheel.add(entry, self.now_ms() + RETRY_MS)
            return 0
        for topic, index in targets:
            self._wake(topic, index)
        return len(due)

    def deliver(self, due: list[Entry]) -> list[tuple[str, int]]:
        """Append due records to their partitions (one batch each), make that durable, then
        record them DONE. Runs in a worker thread; returns the partitions appended to."""
        parked: dict[int, tuple[tuple[str, int], list[Any]]] = {}
        by_target: dict[tuple[str, int], list[Any]] = {}
        for offset, i in due:
            if offset not in parked:
                parked[offset] = self._read_parked(offset)
            target, records = parked[offset]
            by_target.setdefault(target, []).append(records[i])
        appended: list[tuple[tuple[str, int], Partition]] = []
        for (topic, index), records in by_target.items():
            try:
                part = self.topics.partition(topic, index)
            except TopicError:
                log.warning(
                    "dropping %d delayed records: %s-%d is gone", len(records), topic, index
                )
                continue
            part.append(_fresh_batch(records))
            appended.append(((topic, index), part))
        if self.sync:
            for _, part in appended:
                part.sync()
        value = b"".join(DONE_ENTRY.pack(o, i) for o, i in due)
        self.partition.append(_one_record_batch(DONE_KEY.pack(_VERSION, _DONE), value,
                                                self.now_ms()))  # fmt: skip
        if self.sync:
            self.partition.sync()
        self.delivered += len(due)
        return [target for target, _ in appended]

    def _read_parked(self, offset: int) -> tuple[tuple[str, int], list[Any]]:
        data = self.partition.read(offset, 1)  # at least the batch holding offset
        _, view = next(split(data))
        record = next(iter(DefaultRecordBatch(bytes(view))))
        kind, target = parse_key(record.key)
        assert kind == _PARK and target is not None and record.offset == offset
        return target, records_of(record.value)

    # ---- restart --------------------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild the wheel and the targets' producer state from `__delayed`."""
        parked: list[tuple[int, int, int]] = []  # (offset, index, due)
        done: set[Entry] = set()
        offset, end = self.partition.log_start_offset, self.partition.log_end_offset
        while offset < end:
            data = self.partition.read(offset, 1 << 20)
            if not data:
                break
            for header, view in split(data):
                offset = header.last_offset + 1
                for record in DefaultRecordBatch(bytes(view)):
                    try:
                        kind, target = parse_key(record.key)
                        if kind == _DONE:
                            done.update(DONE_ENTRY.iter_unpack(record.value))
                        elif target is not None:
                            dues = [_lenient_due(r.headers) for r in records_of(record.value)]
                            self._observe(target, record.value)
                            parked.extend((record.offset, i, due) for i, due in enumerate(dues))
                    except (ValueError, TypeError, struct.error, KafkaError) as exc:
                        log.warning("%s: skipping unreadable record at %d: %s", TOPIC,
                                    record.offset, exc)  # fmt: skip
        for o, i, due in parked:
            if (o, i) not in done:
                self.wheel.add((o, i), due)
        if len(self.wheel):
            log.info("%s: %d delayed records still to deliver", TOPIC, len(self.wheel))

    def _observe(self, target: tuple[str, int], record_set: bytes) -> None:
        """Feed a parked record set's batches to the target's producer state, in the order the
        producer sent them: a batch older than what the target's own log holds is skipped."""
        try:
            part = self.topics.partition(*target)
        except TopicError:
            return
        for header, _ in split(record_set):
            known = part.producers.epoch_of(header.producer_id) is not None
            try:
                part.producers.check(header)
            except (Duplicate, ProducerStateError):
                if known:
                    continue
            part.producers.record(header, NO_OFFSET)


def _lenient_due(headers: list[tuple[str, bytes | None]]) -> int:
    try:
        return deliver_at(headers) or 0
    except MalformedDeadline:  # never parked; at once if it were
        return 0


def _fresh_batch(records: list[Any]) -> bytes:
    """A non-idempotent, non-transactional batch of decoded records, as their producer sent
    them (key, value, headers, create time)."""
    builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, 1 << 30)
    for i, r in enumerate(records):
        builder.append(i, timestamp=r.timestamp, key=r.key, value=r.value, headers=r.headers)
    return bytes(builder.build())


def _response(
    index: int, error: int, message: str | None, log_start: int = -1, base_offset: int = -1
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "error_code": error,
        "base_offset": base_offset,
        "log_append_time_ms": -1,
        "log_start_offset": log_start,
    }
    if message is not None:
        out["error_message"] = message
    return out
