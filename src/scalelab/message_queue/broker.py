"""The broker's request handlers: what each Kafka API does, as functions of decoded requests.

Handlers return plain dicts shaped like the response schema (snake_case field names, nested
lists of dicts); `response_for` turns one into kafka-python's response object for whatever
version the client asked, so a handler writes every field once and the schema decides which
ones a version carries. The book's broker components map here: the partitions (the WAL) are
in `TopicStore`, the producer side is `produce` (acks and the durability policy), the consumer
side is `fetch` (the pull model with long polling), and the metadata storage is `metadata`.
The consumer-group and transaction APIs are in group_api.py and txn_api.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from scalelab.message_queue import codec
from scalelab.message_queue.batch import BatchError, BatchHeader, require_keys
from scalelab.message_queue.coordinator import GroupCoordinator
from scalelab.message_queue.delayed import CONFIG as DELAYED_CONFIG
from scalelab.message_queue.delayed import DelayedDelivery
from scalelab.message_queue.files import replace_durably
from scalelab.message_queue.flush import Flusher
from scalelab.message_queue.group_api import GroupAPI
from scalelab.message_queue.partition import LogConfig, OffsetOutOfRange, Partition
from scalelab.message_queue.producer_state import ProducerStateError
from scalelab.message_queue.settings import MessageQueueSettings
from scalelab.message_queue.state_storage import TOPIC as OFFSETS_TOPIC
from scalelab.message_queue.state_storage import KeyedLog, OffsetStore
from scalelab.message_queue.topics import UNKNOWN_TOPIC_OR_PARTITION, TopicError, TopicStore
from scalelab.message_queue.transactions import TOPIC as TXN_TOPIC
from scalelab.message_queue.transactions import (
    TransactionCoordinator,
)
from scalelab.message_queue.txn_api import TransactionAPI

log = logging.getLogger(__name__)

NONE = 0
CLUSTER_ID = "scalelab-mq"
EARLIEST, LATEST, MAX_TIMESTAMP = -2, -1, -3
TOPIC_RESOURCE = 2
READ_COMMITTED = 1
TXN_EXPIRY_CHECK_SECONDS = 1.0

Handler = Callable[[codec.Request], Awaitable[dict[str, Any] | None]]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _build(cls: Any, fields: list[dict[str, Any]], values: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in fields:
        key = _snake(f["name"])
        if key not in values:
            continue
        value = values[key]
        if "fields" in f and value is not None:
            sub = getattr(cls, f["type"].removeprefix("[]"))
            if f["type"].startswith("[]"):
                value = [_build(sub, f["fields"], v) for v in value]
            else:
                value = _build(sub, f["fields"], value)
        kwargs[key] = value
    return cls(**kwargs)


def response_for(req: codec.Request, values: dict[str, Any]) -> Any:
    """kafka-python's response object for req's API and version, from a dict."""
    cls = codec.RESPONSES[req.api_key]
    return _build(cls[req.api_version], cls.json["fields"], values)


class Broker:
    """One broker: its topics, and a handler per supported API."""

    def __init__(self, settings: MessageQueueSettings, directory: Path) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.host, self.port = settings.host, settings.port
        defaults = LogConfig(
            segment_bytes=settings.segment_bytes,
            retention_ms=int(settings.retention_hours * 3600 * 1000),
            retention_bytes=settings.retention_bytes,
        )
        self.topics = TopicStore(directory / "topics", defaults)
        for internal in (OFFSETS_TOPIC, TXN_TOPIC):
            if internal not in self.topics.topics:
                self.topics.create(internal, 1, {"cleanup.policy": "compact"})
        self.offsets = OffsetStore(
            self.topics.partition(OFFSETS_TOPIC, 0), sync=settings.fsync_before_ack
        )
        self.groups = GroupCoordinator()
        self._producer_ids = _Counter(directory / "producer_id")
        self.txns = TransactionCoordinator(
            KeyedLog(self.topics.partition(TXN_TOPIC, 0), sync=settings.fsync_before_ack),
            new_producer_id=self._producer_ids.next,
            write_markers=self._write_markers,
            commit_offsets=self.offsets.commit,
        )
        self.txns.recover()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._txn_expiry: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.flusher = Flusher(
            settings.fsync_before_ack, settings.flush_interval_messages, settings.flush_interval_ms
        )
        self._appended: dict[tuple[str, int], asyncio.Event] = {}
        self.delayed = DelayedDelivery(
            self.topics,
            sync=settings.fsync_before_ack,
            tick_ms=settings.delayed_tick_ms,
            wake=self._wake,
        )
        self.handlers: dict[int, Handler] = {
            18: self.api_versions,
            3: self.metadata,
            0: self.produce,
            1: self.fetch,
            2: self.list_offsets,
            19: self.create_topics,
            20: self.delete_topics,
            10: self.find_coordinator,
            32: self.describe_configs,
            **GroupAPI(self.groups, self.offsets).handlers(),
            **TransactionAPI(
                self.txns, self.topics, self.groups, self._producer_ids.next
            ).handlers(),
        }

    async def handle(self, req: codec.Request) -> Any | None:
        """The response object for a decoded request, or None if it gets no response."""
        handler = self.handlers.get(req.api_key)
        if handler is None:
            raise LookupError(f"API {req.api_key} is advertised but has no handler")
        values = await handler(req)
        return None if values is None else response_for(req, values)

    # ---- metadata --------------------------------------------------------------------

    async def api_versions(self, req: codec.Request) -> dict[str, Any]:
        keys = [
            {"api_key": k, "min_version": lo, "max_version": hi}
            for k, (_, lo, hi) in sorted(codec.SUPPORTED.items())
            if k in self.handlers
        ]
        return {"error_code": NONE, "api_keys": keys, "throttle_time_ms": 0}

    def _auto_create(self, name: str) -> bool:
        if name in self.topics.topics:
            return True
        if not self.settings.auto_create_topics:
            return False
        try:
            self.topics.create(name, self.settings.default_partitions)
        except TopicError as exc:
            return exc.code == 36  # created meanwhile
        return True

    async def metadata(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        wanted = None if body.topics is None else [t.name for t in body.topics]
        # v0 sends an empty list for "all topics"; later versions send null
        if wanted is not None and not wanted and req.api_version == 0:
            wanted = None
        allow = getattr(body, "allow_auto_topic_creation", True)
        topics: list[dict[str, Any]] = []
        for name in wanted if wanted is not None else sorted(self.topics.topics):
            topic = self.topics.topics.get(name)
            if topic is None and allow and self._auto_create(name):
                topic = self.topics.topics.get(name)
            if topic is None:
                code = UNKNOWN_TOPIC_OR_PARTITION
                topics.append({"error_code": code, "name": name, "partitions": []})
                continue
            partitions = [
                {
                    "error_code": NONE,
                    "partition_index": i,
                    "leader_id": self.node_id,
                    "leader_epoch": 0,
                    "replica_nodes": [self.node_id],
                    "isr_nodes": [self.node_id],
                    "offline_replicas": [],
                }
                for i in range(topic.partitions)
            ]
            topics.append(
                {
                    "error_code": NONE,
                    "name": name,
                    "topic_id": uuid.UUID(topic.topic_id),
                    "is_internal": name.startswith("__"),
                    "partitions": partitions,
                }
            )
        return {
            "throttle_time_ms": 0,
            "brokers": [
                {"node_id": self.node_id, "host": self.host, "port": self.port, "rack": None}
            ],
            "cluster_id": CLUSTER_ID,
            "controller_id": self.node_id,
            "topics": topics,
        }

    async def create_topics(self, req: codec.Request) -> dict[str, Any]:
        results = []
        for t in req.body.topics:
            count = t.num_partitions if t.num_partitions > 0 else self.settings.default_partitions
            configs = {c.name: c.value for c in t.configs or [] if c.value is not None}
            try:
                if not req.body.validate_only:
                    self.topics.create(t.name, count, configs)
                code, message = NONE, None
            except TopicError as exc:
                code, message = exc.code, str(exc)
            results.append(
                {
                    "name": t.name,
                    "error_code": code,
                    "error_message": message,
                    "num_partitions": count,
                    "replication_factor": 1,
                    "configs": [],
                }
            )
        return {"throttle_time_ms": 0, "topics": results}

    async def delete_topics(self, req: codec.Request) -> dict[str, Any]:
        names = getattr(req.body, "topic_names", None) or [t.name for t in req.body.topics or []]
        results = []
        for name in names:
            try:
                for part in self.topics.delete(name):
                    self.flusher.forget(part)
                code = NONE
            except TopicError as exc:
                code = exc.code
            results.append({"name": name, "error_code": code})
        return {"throttle_time_ms": 0, "responses": results}

    # ---- producing ---------------------------------------------------------------------

    async def produce(self, req: codec.Request) -> dict[str, Any] | None:
        body = req.body
        responses = []
        to_sync: dict[Partition, int] = {}
        for topic in body.topic_data:
            if not self._auto_create(topic.name):
                responses.append(
                    {
                        "name": topic.name,
                        "partition_responses": [
                            {
                                "index": p.index,
                                "error_code": UNKNOWN_TOPIC_OR_PARTITION,
                                "base_offset": -1,
                            }
                            for p in topic.partition_data
                        ],
                    }
                )
                continue
            parts = []
            for p in topic.partition_data:
                parts.append(self._append(topic.name, p.index, p.records, to_sync))
            responses.append({"name": topic.name, "partition_responses": parts})
        if to_sync:
            await self.flusher.appended(to_sync, acked=body.acks != 0)
        if body.acks == 0:
            return None
        return {"responses": responses, "throttle_time_ms": 0}

    def _append(
        self, topic: str, index: int, records: Any, to_sync: dict[Partition, int]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": index,
            "base_offset": -1,
            "log_append_time_ms": -1,
            "log_start_offset": -1,
        }
        if (parked := self.delayed.intercept(topic, index, records, to_sync)) is not None:
            return parked
        try:
            part = self.topics.partition(topic, index)
            if records is None:
                raise BatchError("no records", 2)
            first = BatchHeader.parse(records)
            if first.transactional:
                error = self.txns.check_produce(
                    first.producer_id, first.producer_epoch, topic, index
                )
                if error != NONE:
                    out.update(error_code=error, error_message="not in an open transaction")
                    return out
            if "compact" in part.config.cleanup_policy:
                require_keys(records)
            appended = part.append(bytes(records))
        except (TopicError, BatchError, ProducerStateError) as exc:
            out.update(error_code=exc.code, error_message=str(exc))
            return out
        except OSError as exc:
            log.error("append to %s-%d failed: %s", topic, index, exc)
            out.update(error_code=56, error_message=f"storage error: {exc}")  # KAFKA_STORAGE_ERROR
            return out
        if not appended.duplicate:
            count = appended.last_offset - appended.base_offset + 1
            to_sync[part] = to_sync.get(part, 0) + count
            self._wake(topic, index)
        out.update(
            error_code=NONE,
            base_offset=appended.base_offset,
            log_start_offset=appended.log_start_offset,
        )
        return out

    def _wake(self, topic: str, index: int) -> None:
        event = self._appended.pop((topic, index), None)
        if event is not None:
            event.set()

    def _appended_event(self, topic: str, index: int) -> asyncio.Event:
        return self._appended.setdefault((topic, index), asyncio.Event())

    # ---- transactions: the coordinator's markers ---------------------------------------

    def _write_markers(
        self, producer_id: int, epoch: int, kind: int, partitions: Iterable[tuple[str, int]]
    ) -> None:
        """COMMIT or ABORT markers, durable before the coordinator records completion."""
        for topic, index in partitions:
            try:
                part = self.topics.partition(topic, index)
            except TopicError:
                continue  # deleted meanwhile: nothing left to mark
            if part.append_marker(producer_id, epoch, kind) is not None:
                if self.settings.fsync_before_ack:  # the policy the coordinator's log follows
                    part.sync()
                if self._loop is not None:  # consumers long-polling for the marker
                    self._loop.call_soon_threadsafe(self._wake, topic, index)

    # ---- consuming ---------------------------------------------------------------------

    async def fetch(self, req: codec.Request) -> dict[str, Any]:
        body = req.body
        deadline = time.monotonic() + max(body.max_wait_ms, 0) / 1000
        while True:
            events: list[asyncio.Event] = []
            responses, total = self._read_all(body, events)
            if total >= max(body.min_bytes, 1) or time.monotonic() >= deadline or not events:
                return {
                    "throttle_time_ms": 0,
                    "error_code": NONE,
                    "session_id": 0,
                    "responses": responses,
                }
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(
                    waits, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()

    def _read_all(self, body: Any, events: list[asyncio.Event]) -> tuple[list[dict[str, Any]], int]:
        budget = body.max_bytes if body.max_bytes > 0 else 1 << 31
        committed_only = getattr(body, "isolation_level", 0) == READ_COMMITTED
        total = 0
        responses = []
        for topic in body.topics:
            parts = []
            for p in topic.partitions:
                entry: dict[str, Any] = {
                    "partition_index": p.partition,
                    "high_watermark": -1,
                    "last_stable_offset": -1,
                    "log_start_offset": -1,
                    "aborted_transactions": None,
                    "preferred_read_replica": -1,
                    "records": b"",
                }
                try:
                    part = self.topics.partition(topic.topic, p.partition)
                    end, stable = part.log_end_offset, part.last_stable_offset
                    entry.update(
                        high_watermark=end,
                        last_stable_offset=stable,
                        log_start_offset=part.log_start_offset,
                    )
                    limit = min(p.partition_max_bytes, budget - total)
                    upto = stable if committed_only else None
                    data = b""
                    if limit > 0 or not total:
                        data = part.read(p.fetch_offset, limit, upto_offset=upto)
                    if committed_only and data:
                        entry["aborted_transactions"] = [
                            {"producer_id": a.producer_id, "first_offset": a.first_offset}
                            for a in part.aborted_between(p.fetch_offset, stable)
                        ]
                    entry.update(error_code=NONE, records=data)
                    total += len(data)
                    if not data:
                        events.append(self._appended_event(topic.topic, p.partition))
                except TopicError as exc:
                    entry["error_code"] = exc.code
                except OffsetOutOfRange as exc:
                    entry["error_code"] = exc.code
                parts.append(entry)
            responses.append({"topic": topic.topic, "partitions": parts})
        return responses, total

    async def list_offsets(self, req: codec.Request) -> dict[str, Any]:
        committed_only = getattr(req.body, "isolation_level", 0) == READ_COMMITTED
        topics = []
        for t in req.body.topics:
            parts = []
            for p in t.partitions:
                entry: dict[str, Any] = {
                    "partition_index": p.partition_index,
                    "timestamp": -1,
                    "offset": -1,
                    "leader_epoch": 0,
                }
                try:
                    part = self.topics.partition(t.name, p.partition_index)
                    if p.timestamp == LATEST and committed_only:
                        offset = part.last_stable_offset
                    elif p.timestamp == LATEST:
                        offset = part.log_end_offset
                    elif p.timestamp == EARLIEST:
                        offset = part.log_start_offset
                    elif p.timestamp == MAX_TIMESTAMP:
                        offset = max(part.log_end_offset - 1, part.log_start_offset)
                    else:
                        found = part.offset_for_time(p.timestamp)
                        offset, stamp = (-1, -1) if found is None else found
                        entry["timestamp"] = stamp
                    entry.update(error_code=NONE, offset=offset)
                except TopicError as exc:
                    entry["error_code"] = exc.code
                parts.append(entry)
            topics.append({"name": t.name, "partitions": parts})
        return {"throttle_time_ms": 0, "topics": topics}

    # ---- consumer groups: where the coordinator is (group_api.py has the rest) -------------

    async def find_coordinator(self, req: codec.Request) -> dict[str, Any]:
        me = {"node_id": self.node_id, "host": self.host, "port": self.port}
        keys = getattr(req.body, "coordinator_keys", None) or [req.body.key]
        return {
            "throttle_time_ms": 0,
            "error_code": NONE,
            "error_message": None,
            **me,
            "coordinators": [
                {"key": k, **me, "error_code": NONE, "error_message": None} for k in keys
            ],
        }

    async def describe_configs(self, req: codec.Request) -> dict[str, Any]:
        """The topic configs the broker applies (segment.*, retention.*, cleanup.policy):
        set on the topic (source 1) or the broker's default (source 5)."""
        results = []
        for res in req.body.resources:
            entry: dict[str, Any] = {
                "resource_type": res.resource_type,
                "resource_name": res.resource_name,
                "error_code": NONE,
                "error_message": None,
                "configs": [],
            }
            if res.resource_type == TOPIC_RESOURCE:
                topic = self.topics.topics.get(res.resource_name)
                if topic is None:
                    entry.update(
                        error_code=UNKNOWN_TOPIC_OR_PARTITION,
                        error_message=f"unknown topic {res.resource_name!r}",
                    )
                else:
                    entry["configs"] = self._topic_configs(topic.configs, res.configuration_keys)
            results.append(entry)
        return {"throttle_time_ms": 0, "results": results}

    def _topic_configs(
        self, overrides: dict[str, str], keys: list[str] | None
    ) -> list[dict[str, Any]]:
        d = self.topics.defaults
        defaults = {
            "segment.bytes": (d.segment_bytes, 3),
            "segment.ms": (d.segment_ms, 5),
            "retention.ms": (d.retention_ms, 5),
            "retention.bytes": (d.retention_bytes, 5),
            "cleanup.policy": (d.cleanup_policy, 7),
            "delete.retention.ms": (d.delete_retention_ms, 5),
            "min.cleanable.dirty.ratio": (d.min_cleanable_dirty_ratio, 6),
            DELAYED_CONFIG: ("false", 1),  # BOOLEAN (delayed.py)
        }
        out = []
        for name, (default, kind) in defaults.items():
            if keys and name not in keys:
                continue
            is_set = name in overrides
            out.append(
                {
                    "name": name,
                    "value": str(overrides.get(name, default)),
                    "read_only": False,
                    "config_source": 1 if is_set else 5,
                    "is_default": not is_set,
                    "is_sensitive": False,
                    "synonyms": [],
                    "config_type": kind,
                    "documentation": None,
                }
            )
        return out

    def start(self) -> None:
        """Start the broker's timers (on the running event loop)."""
        self._loop = asyncio.get_running_loop()
        self.groups.start()
        self._txn_expiry = asyncio.create_task(self._expire_transactions())
        self._flushing = asyncio.create_task(
            self.flusher.run(lambda: [p for _, _, p in self.topics.partitions()])
        )

    async def _expire_transactions(self) -> None:
        while True:
            await asyncio.sleep(TXN_EXPIRY_CHECK_SECONDS)
            try:
                await asyncio.to_thread(self.txns.expire)
            except Exception:  # a disk error writing markers: logged, retried next tick
                log.exception("transaction expiry failed")

    def close(self) -> None:
        self.groups.stop()
        for task in (self._txn_expiry, self._flushing):
            if task is not None:
                task.cancel()
        self.topics.close()


class _Counter:
    """Producer ids, handed out in blocks whose end is fsynced before any id of it is used."""

    BLOCK = 1000

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._next = int(path.read_text()) if path.exists() else 0
        self._limit = self._next

    def next(self) -> int:
        with self._lock:
            if self._next >= self._limit:
                self._limit = self._next + self.BLOCK
                replace_durably(self._path, str(self._limit))
            pid = self._next
            self._next += 1
            return pid
