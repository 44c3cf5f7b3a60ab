"""The broker's settings (env: SCALELAB_MESSAGE_QUEUE_<NAME>)."""

from __future__ import annotations

from dataclasses import dataclass

from scalelab.config import SystemSettings, setting


@dataclass(frozen=True)
class MessageQueueSettings(SystemSettings):
    system = "message_queue"

    port: int = setting(9092, "port of the Kafka protocol listener (0 picks a free port)")
    http_port: int = setting(9308, "port of /healthz and /metrics (consumer lag) over HTTP")
    node_id: int = setting(0, "this broker's id in Metadata responses")
    auto_create_topics: bool = setting(True, "create unknown topics on Metadata and Produce")
    default_partitions: int = setting(1, "partitions of an auto-created topic")
    segment_bytes: int = setting(1 << 30, "size at which a partition rolls to a new segment")
    retention_hours: float = setting(336.0, "age after which whole segments are deleted")
    retention_bytes: int = setting(-1, "per-partition size beyond which old segments go (-1: none)")
    cleaner_interval_seconds: float = setting(
        15.0, "how often compacted topics are checked for a log cleaner pass"
    )
    delayed_tick_ms: int = setting(20, "tick of the timing wheel that publishes delayed records")
    fsync_before_ack: bool = setting(
        True, "acks=1/all answer only after the partition's log is fsynced (group commit)"
    )
    flush_interval_messages: int = setting(
        -1, "without fsync_before_ack: fsync a partition every N records (-1: never)"
    )
    flush_interval_ms: int = setting(
        1000, "without fsync_before_ack: fsync unsynced partitions this often (-1: never)"
    )
