"""The group coordinator: consumer groups, rebalancing, and who owns which partitions.

The book's consumer rebalancing: consumers join a group through its coordinator; when one
joins, leaves or stops heartbeating, the coordinator starts a rebalance, every member rejoins,
the first to join leads and assigns partitions with the assignor the members chose, and the
coordinator hands each member its share. Kafka's state machine, as the clients expect it:

    Empty --join--> PreparingRebalance --all rejoined or timeout--> CompletingRebalance
    CompletingRebalance --leader's SyncGroup--> Stable --join/leave/expiry--> PreparingRebalance

Generation checks (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS), the
member id round trip of JoinGroup v4+ (MEMBER_ID_REQUIRED), and static membership
(`group.instance.id`: a restarted member takes its old place without a rebalance).
asyncio only: a join or sync waits on a future until the rebalance completes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GroupCoordinator", "JoinResult"]

log = logging.getLogger(__name__)

NONE = 0
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = 82

EMPTY, PREPARING, COMPLETING, STABLE = (
    "Empty",
    "PreparingRebalance",
    "CompletingRebalance",
    "Stable",
)
MIN_SESSION_MS, MAX_SESSION_MS = 1000, 30 * 60 * 1000
INITIAL_REBALANCE_DELAY_S = 0.0  # Kafka waits 3 s for more members of a new group; tests do not


@dataclass
class JoinResult:
    error: int
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)


@dataclass
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    joining: asyncio.Future[JoinResult] | None = None
    syncing: asyncio.Future[tuple[int, bytes]] | None = None
    last_seen: float = field(default_factory=time.monotonic)

    def metadata_for(self, protocol: str) -> bytes:
        return next(meta for name, meta in self.protocols if name == protocol)


@dataclass
class Group:
    group_id: str
    state: str = EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    pending: set[str] = field(default_factory=set)  # ids handed out by MEMBER_ID_REQUIRED
    rebalance_timer: asyncio.TimerHandle | None = None


class GroupCoordinator:
    """Every group on this broker (one broker coordinates all of them)."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._expire_loop())

    def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()

    # ---- joining ---------------------------------------------------------------------

    async def join(
        self,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        client_id: str,
        *,
        require_known_member_id: bool,
    ) -> JoinResult:
        if not MIN_SESSION_MS <= session_timeout_ms <= MAX_SESSION_MS:
            return JoinResult(INVALID_SESSION_TIMEOUT, member_id=member_id)
        group = self.groups.setdefault(group_id, Group(group_id))
        if group.members and group.protocol_type not in (None, protocol_type):
            return JoinResult(INCONSISTENT_GROUP_PROTOCOL, member_id=member_id)
        names = {name for name, _ in protocols}
        if group.members and not any(
            names & {n for n, _ in m.protocols} for m in group.members.values()
        ):
            return JoinResult(INCONSISTENT_GROUP_PROTOCOL, member_id=member_id)
        if instance_id is not None and instance_id in group.static:
            old = group.static[instance_id]
            if member_id and member_id != old:
                return JoinResult(FENCED_INSTANCE_ID, member_id=member_id)
            member_id = old
        elif not member_id:
            member_id = f"{client_id}-{uuid.uuid4()}"
            if require_known_member_id and instance_id is None:
                group.pending.add(member_id)
                return JoinResult(MEMBER_ID_REQUIRED, member_id=member_id)
        elif member_id not in group.members and member_id not in group.pending:
            return JoinResult(UNKNOWN_MEMBER_ID, member_id=member_id)
        group.pending.discard(member_id)
        member = group.members.get(member_id)
        if member is None:
            member = group.members[member_id] = Member(
                member_id, instance_id, client_id, session_timeout_ms,
                rebalance_timeout_ms if rebalance_timeout_ms > 0 else session_timeout_ms,
                protocols,
            )  # fmt: skip
            if instance_id is not None:
                group.static[instance_id] = member_id
        else:
            member.protocols = protocols
            member.session_timeout_ms = session_timeout_ms
        group.protocol_type = protocol_type
        member.last_seen = time.monotonic()
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(REBALANCE_IN_PROGRESS, member_id=member_id))
        member.joining = asyncio.get_running_loop().create_future()
        future = member.joining
        if group.state != PREPARING:
            self._prepare_rebalance(group)
        self._maybe_complete_join(group)
        return await future

    def _prepare_rebalance(self, group: Group) -> None:
        for m in group.members.values():  # a sync still waiting learns it must rejoin
            if m.syncing is not None and not m.syncing.done():
                m.syncing.set_result((REBALANCE_IN_PROGRESS, b""))
        group.state = PREPARING
        timeout = max((m.rebalance_timeout_ms for m in group.members.values()), default=0)
        delay = timeout / 1000 if group.generation > 0 else INITIAL_REBALANCE_DELAY_S
        loop = asyncio.get_running_loop()
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
        group.rebalance_timer = loop.call_later(max(delay, 0.0), self._rebalance_timeout, group)

    def _rebalance_timeout(self, group: Group) -> None:
        """Members that did not rejoin in time are dropped; the rest carry on."""
        group.rebalance_timer = None
        if group.state != PREPARING:
            return
        for member_id in [i for i, m in group.members.items() if not _waiting(m.joining)]:
            self._remove(group, member_id)
        self._maybe_complete_join(group, timed_out=True)

    def _maybe_complete_join(self, group: Group, timed_out: bool = False) -> None:
        if group.state != PREPARING:
            return
        everyone = all(_waiting(m.joining) for m in group.members.values())
        if not group.members:
            group.state = EMPTY
            return
        if not everyone and not timed_out:
            return
        if group.generation == 0 and not timed_out and INITIAL_REBALANCE_DELAY_S > 0:
            return
        if group.rebalance_timer is not None:
            group.rebalance_timer.cancel()
            group.rebalance_timer = None
        group.generation += 1
        group.protocol_name = _choose_protocol(group)
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = COMPLETING
        now = time.monotonic()
        for m in group.members.values():  # parked in JoinGroup: alive; their session restarts
            m.last_seen = now
        roster = [
            (m.member_id, m.instance_id, m.metadata_for(group.protocol_name))
            for m in group.members.values()
        ]
        for m in group.members.values():
            assert m.joining is not None
            m.joining.set_result(
                JoinResult(
                    NONE, group.generation, group.protocol_type, group.protocol_name,
                    group.leader, m.member_id, roster if m.member_id == group.leader else [],
                )
            )  # fmt: skip

    # ---- syncing, heartbeats, leaving --------------------------------------------------

    async def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        assignments: dict[str, bytes],
    ) -> tuple[int, bytes]:
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return UNKNOWN_MEMBER_ID, b""
        if generation != group.generation:
            return ILLEGAL_GENERATION, b""
        if group.state == PREPARING:
            return REBALANCE_IN_PROGRESS, b""
        member = group.members[member_id]
        member.last_seen = time.monotonic()
        if group.state == STABLE:
            return NONE, member.assignment
        member.syncing = asyncio.get_running_loop().create_future()
        future = member.syncing
        if member_id == group.leader:
            for m in group.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            group.state = STABLE
            now = time.monotonic()
            for m in group.members.values():
                m.last_seen = now
                if m.syncing is not None and not m.syncing.done():
                    m.syncing.set_result((NONE, m.assignment))
        return await future

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> int:
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return UNKNOWN_MEMBER_ID
        group.members[member_id].last_seen = time.monotonic()
        if group.state == PREPARING:
            return REBALANCE_IN_PROGRESS
        if generation != group.generation:
            return ILLEGAL_GENERATION
        return NONE

    def leave(self, group_id: str, members: list[tuple[str, str | None]]) -> list[int]:
        """Per member: NONE or UNKNOWN_MEMBER_ID. A static member leaving gives up its
        place; the group rebalances without it."""
        group = self.groups.get(group_id)
        results = []
        for member_id, instance_id in members:
            if group is not None and instance_id is not None and not member_id:
                member_id = group.static.get(instance_id, "")
            if group is None or member_id not in group.members:
                results.append(UNKNOWN_MEMBER_ID)
                continue
            self._remove(group, member_id)
            results.append(NONE)
            self._rebalance_after_change(group)
        return results

    def check_generation(self, group_id: str, generation: int, member_id: str) -> int:
        """OffsetCommit's membership check (generation -1: a simple, unmanaged consumer)."""
        group = self.groups.get(group_id)
        if generation < 0 and (group is None or group.state == EMPTY):
            return NONE
        if group is None or member_id not in group.members:
            return UNKNOWN_MEMBER_ID if group is None or group.members else NONE
        if generation != group.generation:
            return ILLEGAL_GENERATION
        if group.state == COMPLETING:
            return REBALANCE_IN_PROGRESS
        return NONE

    def describe(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    def _remove(self, group: Group, member_id: str) -> None:
        member = group.members.pop(member_id)
        if member.instance_id is not None:
            group.static.pop(member.instance_id, None)
        for fut, value in ((member.joining, JoinResult(UNKNOWN_MEMBER_ID, member_id=member_id)),
                           (member.syncing, (UNKNOWN_MEMBER_ID, b""))):  # fmt: skip
            if fut is not None and not fut.done():
                fut.set_result(value)  # type: ignore[arg-type]
        if group.leader == member_id:
            group.leader = None

    def _rebalance_after_change(self, group: Group) -> None:
        if not group.members:
            group.state, group.leader, group.protocol_name = EMPTY, None, None
            group.generation += 1
            return
        if group.state in (STABLE, COMPLETING):
            self._prepare_rebalance(group)
        self._maybe_complete_join(group)

    async def _expire_loop(self) -> None:
        """Members silent for longer than their session timeout are removed."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for group in list(self.groups.values()):
                for member_id, m in list(group.members.items()):
                    if _waiting(m.joining) and group.state == PREPARING:
                        continue  # a parked join counts as alive until the rebalance ends
                    if now - m.last_seen > m.session_timeout_ms / 1000:
                        log.info(
                            "group %s: member %s missed its session (%d ms); removed",
                            group.group_id,
                            member_id,
                            m.session_timeout_ms,
                        )
                        self._remove(group, member_id)
                        self._rebalance_after_change(group)


def _waiting(future: asyncio.Future[Any] | None) -> bool:
    return future is not None and not future.done()


def _choose_protocol(group: Group) -> str:
    """The first protocol, in the leader's (or first member's) order, that all members have."""
    members = list(group.members.values())
    common = set.intersection(*({n for n, _ in m.protocols} for m in members))
    first = group.members.get(group.leader or "", members[0])
    return next(name for name, _ in first.protocols if name in common)
