"""The consumer-group APIs: JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
OffsetFetch, DescribeGroups, ListGroups. Requests in, response dicts out (broker.py turns them
into the schema's objects); the rules live in coordinator.py, the offsets in state_storage.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from scalelab.message_queue import codec
from scalelab.message_queue.coordinator import GroupCoordinator
from scalelab.message_queue.state_storage import OffsetStore

__all__ = ["GroupAPI"]

NONE = 0


class GroupAPI:
    def __init__(self, groups: GroupCoordinator, offsets: OffsetStore) -> None:
        self.groups = groups
        self.offsets = offsets

    def handlers(self) -> dict[int, Any]:
        return {
            11: self.join_group,
            14: self.sync_group,
            12: self.heartbeat,
            13: self.leave_group,
            8: self.offset_commit,
            9: self.offset_fetch,
            15: self.describe_groups,
            16: self.list_groups,
        }

    async def join_group(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        result = await self.groups.join(
            b.group_id,
            b.member_id,
            getattr(b, "group_instance_id", None),
            b.protocol_type,
            [(p.name, bytes(p.metadata)) for p in b.protocols],
            b.session_timeout_ms,
            getattr(b, "rebalance_timeout_ms", -1),
            req.client_id or "",
            require_known_member_id=req.api_version >= 4,
        )
        return {
            "throttle_time_ms": 0,
            "error_code": result.error,
            "generation_id": result.generation,
            "protocol_type": result.protocol_type,
            "protocol_name": result.protocol_name or "",
            "leader": result.leader,
            "member_id": result.member_id,
            "members": [
                {"member_id": m, "group_instance_id": i, "metadata": meta}
                for m, i, meta in result.members
            ],
        }

    async def sync_group(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        assignments = {a.member_id: bytes(a.assignment) for a in b.assignments or []}
        error, assignment = await self.groups.sync(
            b.group_id, b.generation_id, b.member_id, assignments
        )
        group = self.groups.describe(b.group_id)
        return {
            "throttle_time_ms": 0,
            "error_code": error,
            "assignment": assignment,
            "protocol_type": group.protocol_type if group else None,
            "protocol_name": group.protocol_name if group else None,
        }

    async def heartbeat(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        error = self.groups.heartbeat(b.group_id, b.generation_id, b.member_id)
        return {"throttle_time_ms": 0, "error_code": error}

    async def leave_group(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        if req.api_version >= 3:
            who = [(m.member_id, m.group_instance_id) for m in b.members]
        else:
            who = [(b.member_id, None)]
        errors = self.groups.leave(b.group_id, who)
        top = errors[0] if req.api_version < 3 else NONE
        return {
            "throttle_time_ms": 0,
            "error_code": top,
            "members": [
                {"member_id": m, "group_instance_id": i, "error_code": e}
                for (m, i), e in zip(who, errors, strict=True)
            ],
        }

    async def offset_commit(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        generation = getattr(b, "generation_id_or_member_epoch", -1)
        error = self.groups.check_generation(b.group_id, generation, b.member_id or "")
        entries: dict[tuple[str, int], tuple[int, str | None]] = {}
        if error == NONE:
            for t in b.topics:
                for p in t.partitions:
                    entries[(t.name, p.partition_index)] = (
                        p.committed_offset,
                        p.committed_metadata,
                    )
            await asyncio.to_thread(self.offsets.commit, b.group_id, entries)
        return {
            "throttle_time_ms": 0,
            "topics": [
                {
                    "name": t.name,
                    "partitions": [
                        {"partition_index": p.partition_index, "error_code": error}
                        for p in t.partitions
                    ],
                }
                for t in b.topics
            ],
        }

    async def offset_fetch(self, req: codec.Request) -> dict[str, Any]:
        b = req.body
        if req.api_version >= 8:
            groups = [(g.group_id, g.topics) for g in b.groups]
        else:
            groups = [(b.group_id, b.topics)]
        out = []
        for group_id, topics in groups:
            if topics is None:  # all partitions the group has offsets for
                wanted: dict[str, list[int]] = {}
                for t, p in self.offsets.group_partitions(group_id):
                    wanted.setdefault(t, []).append(p)
            else:
                wanted = {t.name: list(t.partition_indexes) for t in topics}
            rows = []
            for name, indexes in wanted.items():
                parts = []
                for i in indexes:
                    offset, meta = self.offsets.fetch(group_id, name, i)
                    parts.append(
                        {
                            "partition_index": i,
                            "committed_offset": offset,
                            "committed_leader_epoch": -1,
                            "metadata": meta,
                            "error_code": NONE,
                        }
                    )
                rows.append({"name": name, "partitions": parts})
            out.append({"group_id": group_id, "topics": rows, "error_code": NONE})
        if req.api_version >= 8:
            return {"throttle_time_ms": 0, "groups": out}
        return {"throttle_time_ms": 0, "topics": out[0]["topics"], "error_code": NONE}

    async def describe_groups(self, req: codec.Request) -> dict[str, Any]:
        described = []
        for group_id in req.body.groups:
            g = self.groups.describe(group_id)
            if g is None:
                described.append(
                    {
                        "error_code": NONE,
                        "group_id": group_id,
                        "group_state": "Dead",
                        "protocol_type": "",
                        "protocol_data": "",
                        "members": [],
                    }
                )
                continue
            described.append(
                {
                    "error_code": NONE,
                    "group_id": group_id,
                    "group_state": g.state,
                    "protocol_type": g.protocol_type or "",
                    "protocol_data": g.protocol_name or "",
                    "members": [
                        {
                            "member_id": m.member_id,
                            "group_instance_id": m.instance_id,
                            "client_id": m.client_id,
                            "client_host": "",
                            "member_metadata": m.metadata_for(g.protocol_name)
                            if g.protocol_name
                            else b"",
                            "member_assignment": m.assignment,
                        }
                        for m in g.members.values()
                    ],
                }
            )
        return {"throttle_time_ms": 0, "groups": described}

    async def list_groups(self, req: codec.Request) -> dict[str, Any]:
        names = set(self.groups.groups) | self.offsets.groups()
        rows = []
        for name in sorted(names):
            g = self.groups.describe(name)
            rows.append(
                {
                    "group_id": name,
                    "protocol_type": (g.protocol_type if g else None) or "consumer",
                    "group_state": g.state if g else "Empty",
                }
            )
        return {"throttle_time_ms": 0, "error_code": NONE, "groups": rows}
