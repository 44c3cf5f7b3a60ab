"""The book's metadata storage: which topics exist, their partition counts and configs.

Kept in `topics.json` under the broker's directory, replaced atomically (write, fsync,
rename, fsync the directory), beside one directory per partition (`<topic>-<n>`, as Kafka
lays them out). Topic names follow Kafka's rules.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scalelab.message_queue.files import replace_durably
from scalelab.message_queue.partition import LogConfig, Partition

__all__ = ["Topic", "TopicError", "TopicStore"]

_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
INVALID_TOPIC_EXCEPTION = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
UNKNOWN_TOPIC_OR_PARTITION = 3


class TopicError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Topic:
    name: str
    partitions: int
    topic_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    configs: dict[str, str] = field(default_factory=dict)


def check_name(name: str) -> None:
    if not _NAME.match(name) or name in (".", ".."):
        raise TopicError(
            f"topic name {name!r} must be 1-249 of [a-zA-Z0-9._-] and not '.' or '..'",
            INVALID_TOPIC_EXCEPTION,
        )


class TopicStore:
    """Topics and their open partitions."""

    def __init__(self, directory: Path, defaults: LogConfig) -> None:
        self.directory = Path(directory)
        self.defaults = defaults
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path = self.directory / "topics.json"
        self._lock = threading.Lock()
        self.topics: dict[str, Topic] = {}
        self._partitions: dict[tuple[str, int], Partition] = {}
        if self._path.exists():
            for raw in json.loads(self._path.read_text())["topics"]:
                topic = Topic(**raw)
                self.topics[topic.name] = topic
        for topic in self.topics.values():
            for i in range(topic.partitions):
                self._open(topic, i)

    def _config(self, topic: Topic) -> LogConfig:
        c, d = topic.configs, self.defaults
        return LogConfig(
            segment_bytes=int(c.get("segment.bytes", d.segment_bytes)),
            segment_ms=int(c.get("segment.ms", d.segment_ms)),
            retention_ms=int(c.get("retention.ms", d.retention_ms)),
            retention_bytes=int(c.get("retention.bytes", d.retention_bytes)),
            cleanup_policy=c.get("cleanup.policy", d.cleanup_policy),
            delete_retention_ms=int(c.get("delete.retention.ms", d.delete_retention_ms)),
            min_cleanable_dirty_ratio=float(
                c.get("min.cleanable.dirty.ratio", d.min_cleanable_dirty_ratio)
            ),
        )

    def _open(self, topic: Topic, index: int) -> Partition:
        p = Partition(self.directory / f"{topic.name}-{index}", self._config(topic))
        self._partitions[(topic.name, index)] = p
        return p

    def create(self, name: str, partitions: int, configs: dict[str, str] | None = None) -> Topic:
        check_name(name)
        if partitions < 1 or partitions > 10_000:
            raise TopicError(f"{partitions} partitions: must be 1-10000", INVALID_PARTITIONS)
        with self._lock:
            if name in self.topics:
                raise TopicError(f"topic {name!r} already exists", TOPIC_ALREADY_EXISTS)
            topic = Topic(name, partitions, configs=dict(configs or {}))
            for i in range(partitions):
                self._open(topic, i)
            self.topics[name] = topic
            self._save()
        return topic

    def delete(self, name: str) -> list[Partition]:
        """Delete a topic and its files; its partitions (closed), so holders can let go."""
        with self._lock:
            topic = self.topics.pop(name, None)
            if topic is None:
                raise TopicError(f"unknown topic {name!r}", UNKNOWN_TOPIC_OR_PARTITION)
            self._save()
            gone = []
            for i in range(topic.partitions):
                part = self._partitions.pop((name, i))
                part.close()
                for f in part.directory.iterdir():
                    f.unlink()
                part.directory.rmdir()
                gone.append(part)
            return gone

    def partition(self, name: str, index: int) -> Partition:
        try:
            return self._partitions[(name, index)]
        except KeyError:
            raise TopicError(
                f"unknown partition {name}-{index}", UNKNOWN_TOPIC_OR_PARTITION
            ) from None

    def partitions(self) -> list[tuple[str, int, Partition]]:
        return [(t, i, p) for (t, i), p in self._partitions.items()]

    def _save(self) -> None:
        data = json.dumps({"topics": [asdict(t) for t in self.topics.values()]}, indent=1)
        replace_durably(self._path, data)

    def close(self) -> None:
        with self._lock:
            for p in self._partitions.values():
                p.close()
