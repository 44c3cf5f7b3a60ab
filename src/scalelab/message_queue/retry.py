"""Retry topics and a dead-letter topic for consumers: a failed record waits in another topic
instead of blocking its partition.

A consumer that retries a failing record in place stalls every record behind it; one that
drops it loses data. The usual answer (and the book's) is to hand the record on: republish it
to a retry topic with a time before which it must not be processed, commit past it, and after
the last attempt republish it to a dead-letter topic for a human or a repair job.

Topics: `<topic>.retry.1`, `<topic>.retry.2`, ... up to `max_attempts - 1`, then `<topic>.dlq`.
One retry topic per level rather than a single `<topic>.retry`, because a retry consumer must
not process a record before it is due, and a partition is read in order: in a single retry
topic a record waiting 60 s at level 5 would hold back a record behind it due in 1 s at
level 1. Within one level every delay is drawn from the same bounded range, so the wait a
record imposes on those behind it is at most that level's cap.

Headers (kafka-python's `(str, bytes)` pairs, values in ASCII decimal or UTF-8):
`retry.attempt` (failed attempts so far), `retry.original.topic`, `retry.original.partition`,
`retry.original.offset` (where the record was first read; kept across hops), `retry.error`
(`Type: message` of the last failure), `retry.due.ms` (epoch ms before which it is not
processed). The record's key, value and other headers travel unchanged.

At least once: offsets are committed only after a record was handled, or its republished copy
was acknowledged by the broker. A record not yet due pauses its partition and seeks back to it;
kafka-python keeps heartbeating from its own thread, so a paused consumer stays in the group.
Time (`clock`, epoch seconds) and randomness (`rng`) are passed in, so tests run on virtual time.
Only the public Kafka API is used: the same code works against Apache Kafka.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

with warnings.catch_warnings():  # kafka-python 3.0 loads its schemas with a deprecated API
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.structs import OffsetAndMetadata

__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_DUE",
    "HEADER_ERROR",
    "HEADER_OFFSET",
    "HEADER_PARTITION",
    "HEADER_TOPIC",
    "Record",
    "RetryPolicy",
    "RetryProcessor",
    "RetryStats",
    "dlq_topic",
    "due_ms",
    "failed_attempts",
    "retry_headers",
]

log = logging.getLogger(__name__)

HEADER_ATTEMPT = "retry.attempt"
HEADER_TOPIC = "retry.original.topic"
HEADER_PARTITION = "retry.original.partition"
HEADER_OFFSET = "retry.original.offset"
HEADER_ERROR = "retry.error"
HEADER_DUE = "retry.due.ms"
_ORIGIN = (HEADER_TOPIC, HEADER_PARTITION, HEADER_OFFSET)
_OURS = (HEADER_ATTEMPT, *_ORIGIN, HEADER_ERROR, HEADER_DUE)
_MAX_ERROR_BYTES = 1000

Jitter = Literal["full", "equal", "none"]


class Record(Protocol):
    """What the helpers read from a consumed record (kafka-python's `ConsumerRecord`)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap and jitter; pure, the caller brings the `random.Random`.

    Full jitter draws the delay from [0, cap], equal jitter from [cap/2, cap]: full spreads
    retries of records that failed together the widest, equal keeps a floor under the wait.
    """

    max_attempts: int = 4
    base_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if self.multiplier < 1:
            raise ValueError("multiplier must be at least 1 (delays never shrink)")
        if self.jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")

    def cap(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1 for the first retry)."""
        if retry < 1:
            raise ValueError("retries are numbered from 1")
        if self.base_delay_s == 0:
            return 0.0
        try:
            raw = self.base_delay_s * self.multiplier ** (retry - 1)
        except OverflowError:
            raw = math.inf
        return min(float(raw), self.max_delay_s)

    def delay(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry`, jittered."""
        cap = self.cap(retry)
        if self.jitter == "full":
            return rng.uniform(0.0, cap)
        if self.jitter == "equal":
            return cap / 2 + rng.uniform(0.0, cap / 2)
        return cap

    def retry_topic(self, topic: str, retry: int) -> str:
        return f"{topic}.retry.{retry}"

    def topics(self, topic: str) -> list[str]:
        """The topic and its retry topics: what a retrying consumer subscribes to."""
        return [topic] + [self.retry_topic(topic, n) for n in range(1, self.max_attempts)]

    def route(self, topic: str, failed_attempts: int) -> str:
        """Where a record of `topic` goes after its `failed_attempts`-th failure."""
        if failed_attempts >= self.max_attempts:
            return dlq_topic(topic)
        return self.retry_topic(topic, failed_attempts)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def _header(record: Record, name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return value
    return None


def failed_attempts(record: Record) -> int:
    raw = _header(record, HEADER_ATTEMPT)
    return int(raw) if raw is not None else 0


def due_ms(record: Record) -> int | None:
    raw = _header(record, HEADER_DUE)
    return int(raw) if raw is not None else None


def retry_headers(
    record: Record, attempts: int, error: BaseException, due_s: float
) -> list[tuple[str, bytes]]:
    """The headers of a republished copy: the record's own, then ours (replacing old ones);
    the original coordinates are the first hop's."""
    origin = [(k, v) for k, v in record.headers or () if k in _ORIGIN]
    if len(origin) != len(_ORIGIN):
        origin = [
            (HEADER_TOPIC, record.topic.encode()),
            (HEADER_PARTITION, str(record.partition).encode()),
            (HEADER_OFFSET, str(record.offset).encode()),
        ]
    text = f"{type(error).__name__}: {error}".encode(errors="replace")[:_MAX_ERROR_BYTES]
    kept = [(k, v) for k, v in record.headers or () if k not in _OURS]
    return [
        *kept,
        (HEADER_ATTEMPT, str(attempts).encode()),
        *origin,
        (HEADER_ERROR, text),
        (HEADER_DUE, str(math.ceil(due_s * 1000)).encode()),
    ]


@dataclass
class RetryStats:
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    deferred: int = 0  # times a partition was paused because its next record was not yet due


class RetryProcessor:
    """Runs `handler` on the records of `topic` and its retry topics with at-least-once
    delivery, handing failures on to the next retry topic and finally to the dead-letter topic.

    `consumer` is a kafka-python `KafkaConsumer` with a `group_id` and auto-commit off; the
    processor subscribes it. `producer` is a `KafkaProducer` (acks="all" advised): a record is
    committed past only once its copy is acknowledged.
    """

    def __init__(
        self,
        consumer: Any,
        producer: Any,
        topic: str,
        handler: Callable[[Record], object],
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.topic = topic
        self.handler = handler
        self.policy = policy
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.stats = RetryStats()
        self._paused_until: dict[Any, float] = {}  # TopicPartition -> epoch seconds
        consumer.subscribe(policy.topics(topic))

    def next_due(self) -> float | None:
        """When the earliest paused partition may be read again (epoch seconds), if any."""
        return min(self._paused_until.values(), default=None)

    def poll_once(self, timeout_ms: int = 100) -> int:
        """One poll: handle or hand on every due record, commit; returns how many records."""
        self._resume_due()
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        offsets: dict[Any, Any] = {}
        sends: list[Any] = []
        done = 0
        try:
            for tp, records in batches.items():
                for record in records:
                    due = due_ms(record)
                    if due is not None and due > self.clock() * 1000:
                        self._defer(tp, record.offset, due / 1000)
                        break
                    send = self._handle(record)
                    if send is not None:
                        sends.append(send)
                    offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
                    done += 1
            for send in sends:
                send.get(timeout=30)  # raises if the broker refused a copy
        except BaseException:
            # Nothing of this batch is committed; rewind so this consumer reads it again too.
            for tp, records in batches.items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
            raise
        if offsets:
            self.consumer.commit(offsets)
        return done

    def run(self, should_stop: Callable[[], bool], timeout_ms: int = 100) -> None:
        while not should_stop():
            self.poll_once(timeout_ms)

    def _handle(self, record: Record) -> Any | None:
        try:
            self.handler(record)
        except Exception as exc:  # the handler's failure is the input we route
            attempts = failed_attempts(record) + 1
            target = self.policy.route(self.topic, attempts)
            now = self.clock()
            if attempts >= self.policy.max_attempts:
                due, self.stats.dead_lettered = now, self.stats.dead_lettered + 1
            else:
                due = now + self.policy.delay(attempts, self.rng)
                self.stats.retried += 1
            log.info("%s-%d@%d failed (attempt %d): %r; to %s", record.topic,
                     record.partition, record.offset, attempts, exc, target)  # fmt: skip
            headers = retry_headers(record, attempts, exc, due)
            return self.producer.send(target, key=record.key, value=record.value, headers=headers)
        self.stats.handled += 1
        return None

    def _defer(self, tp: Any, offset: int, until: float) -> None:
        """Not due yet: stop fetching this partition and read the record again when due."""
        self.consumer.pause(tp)
        self.consumer.seek(tp, offset)
        self._paused_until[tp] = until
        self.stats.deferred += 1

    def _resume_due(self) -> None:
        now = self.clock()
        assigned = self.consumer.assignment()
        for tp, until in list(self._paused_until.items()):
            if tp not in assigned:  # revoked in a rebalance; its new owner starts over
                del self._paused_until[tp]
            elif until <= now:
                self.consumer.resume(tp)
                del self._paused_until[tp]
