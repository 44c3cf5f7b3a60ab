"""The transaction APIs: InitProducerId (idempotent and transactional producers),
AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit. Requests in, response dicts out;
the rules live in transactions.py. The coordinator's methods write to disk, so they run in a
worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from scalelab.message_queue import codec
from scalelab.message_queue.coordinator import GroupCoordinator
from scalelab.message_queue.topics import UNKNOWN_TOPIC_OR_PARTITION, TopicError, TopicStore
from scalelab.message_queue.transactions import (
    INVALID_PRODUCER_EPOCH,
    PRODUCER_FENCED,
    TransactionCoordinator,
    TxnError,
)

__all__ = ["TransactionAPI"]

NONE = 0
OPERATION_NOT_ATTEMPTED = 55


class TransactionAPI:
    def __init__(
        self,
        txns: TransactionCoordinator,
        topics: TopicStore,
        groups: GroupCoordinator,
        new_producer_id: Callable[[], int],
    ) -> None:
        self.txns = txns
        self.topics = topics
        self.groups = groups
        self._new_producer_id = new_producer_id

    def handlers(self) -> dict[int, Any]:
        return {
            22: self.init_producer_id,
            24: self.add_partitions_to_txn,
            25: self.add_offsets_to_txn,
            26: self.end_txn,
            28: self.txn_offset_commit,
        }

    async def init_producer_id(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        if b.transactional_id is None:
            pid = await asyncio.to_thread(self._new_producer_id)
            return {"throttle_time_ms": 0, "error_code": NONE, "producer_id": pid,
                    "producer_epoch": 0}  # fmt: skip
        try:
            pid, epoch = await asyncio.to_thread(
                self.txns.init_producer_id, b.transactional_id, b.transaction_timeout_ms,
                getattr(b, "producer_id", -1), getattr(b, "producer_epoch", -1),
            )  # fmt: skip
        except TxnError as exc:
            code = _fenced_code(exc.code, req.api_version, 3)
            return {"throttle_time_ms": 0, "error_code": code, "producer_id": -1,
                    "producer_epoch": -1}  # fmt: skip
        return {"throttle_time_ms": 0, "error_code": NONE, "producer_id": pid,
                "producer_epoch": epoch}  # fmt: skip

    async def add_partitions_to_txn(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        wanted = {(t.name, p) for t in b.v3_and_below_topics for p in t.partitions}
        unknown = {(t, p) for t, p in wanted if not self._exists(t, p)}
        code = NONE
        if not unknown:
            try:
                await asyncio.to_thread(
                    self.txns.add_partitions, b.v3_and_below_transactional_id,
                    b.v3_and_below_producer_id, b.v3_and_below_producer_epoch, wanted,
                )  # fmt: skip
            except TxnError as exc:
                code = _fenced_code(exc.code, req.api_version, 2)
        by_topic: dict[str, list[dict[str, int]]] = {}
        for t, p in sorted(wanted):
            error = code
            if unknown:
                error = UNKNOWN_TOPIC_OR_PARTITION if (t, p) in unknown else OPERATION_NOT_ATTEMPTED
            by_topic.setdefault(t, []).append({"partition_index": p, "partition_error_code": error})
        return {
            "throttle_time_ms": 0,
            "results_by_topic_v3_and_below": [
                {"name": t, "results_by_partition": rows} for t, rows in by_topic.items()
            ],
        }

    def _exists(self, topic: str, index: int) -> bool:
        try:
            self.topics.partition(topic, index)
        except TopicError:
            return False
        return True

    async def add_offsets_to_txn(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        code = await self._txn_call(
            req, 2, self.txns.add_offsets, b.transactional_id, b.producer_id, b.producer_epoch,
            b.group_id,
        )  # fmt: skip
        return {"throttle_time_ms": 0, "error_code": code}

    async def end_txn(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        code = await self._txn_call(
            req, 2, self.txns.end_txn, b.transactional_id, b.producer_id, b.producer_epoch,
            b.committed,
        )  # fmt: skip
        return {"throttle_time_ms": 0, "error_code": code}

    async def txn_offset_commit(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        code = NONE
        if getattr(b, "generation_id", -1) >= 0:  # v3: the consumer must still be a member
            code = self.groups.check_generation(b.group_id, b.generation_id, b.member_id or "")
        if code == NONE:
            offsets = {
                (t.name, p.partition_index): (p.committed_offset, p.committed_metadata)
                for t in b.topics
                for p in t.partitions
            }
            code = await self._txn_call(
                req, 3, self.txns.txn_offset_commit, b.transactional_id, b.producer_id,
                b.producer_epoch, b.group_id, offsets,
            )  # fmt: skip
        return {
            "throttle_time_ms": 0,
            "topics": [
                {
                    "name": t.name,
                    "partitions": [
                        {"partition_index": p.partition_index, "error_code": code}
                        for p in t.partitions
                    ],
                }
                for t in b.topics
            ],
        }

    async def _txn_call(
        self, req: codec.Request, fenced_from: int, call: Callable[..., None], *args: Any
    ) -> int:
        try:
            await asyncio.to_thread(call, *args)
        except TxnError as exc:
            return _fenced_code(exc.code, req.api_version, fenced_from)
        return NONE


def _fenced_code(code: int, version: int, fenced_from: int) -> int:
    """PRODUCER_FENCED (KIP-588) only for versions that know it; INVALID_PRODUCER_EPOCH before."""
    if code == PRODUCER_FENCED and version < fenced_from:
        return INVALID_PRODUCER_EPOCH
    return code
