"""The group state machine on its own: generations, expiry, static members, error codes."""

from __future__ import annotations

import asyncio

from scalelab.message_queue import coordinator as c

PROTOCOLS = [("range", b"meta-r"), ("roundrobin", b"meta-rr")]


async def join(g: c.GroupCoordinator, member: str = "", instance: str | None = None,
               session_ms: int = 1000) -> c.JoinResult:  # fmt: skip
    return await g.join("grp", member, instance, "consumer", PROTOCOLS, session_ms, 2000,
                        "client", require_known_member_id=True)  # fmt: skip


async def joined(g: c.GroupCoordinator, **kw: object) -> c.JoinResult:
    first = await join(g, **kw)  # type: ignore[arg-type]
    if first.error == c.MEMBER_ID_REQUIRED:
        return await join(g, first.member_id, **kw)  # type: ignore[arg-type]
    return first


def test_join_sync_heartbeat_and_generation_checks() -> None:
    async def main() -> None:
        g = c.GroupCoordinator()
        g.start()
        first = await join(g)
        assert first.error == c.MEMBER_ID_REQUIRED and first.member_id
        a = await join(g, first.member_id)
        assert (a.error, a.generation, a.leader, a.protocol_name) == (0, 1, a.member_id, "range")
        assert [m[0] for m in a.members] == [a.member_id]  # the leader sees the roster
        assert await g.sync("grp", 1, a.member_id, {a.member_id: b"all"}) == (0, b"all")
        assert g.heartbeat("grp", 1, a.member_id) == 0
        assert g.heartbeat("grp", 0, a.member_id) == c.ILLEGAL_GENERATION
        assert g.heartbeat("grp", 1, "nobody") == c.UNKNOWN_MEMBER_ID
        assert (await join(g, "made-up")).error == c.UNKNOWN_MEMBER_ID
        assert g.check_generation("grp", 0, a.member_id) == c.ILLEGAL_GENERATION
        g.stop()

    asyncio.run(main())


def test_a_silent_member_expires_and_the_group_rebalances() -> None:
    async def main() -> None:
        g = c.GroupCoordinator()
        g.start()
        a = await joined(g, session_ms=1000)
        await g.sync("grp", a.generation, a.member_id, {a.member_id: b"x"})
        b_join = asyncio.create_task(joined(g, session_ms=1000))
        await asyncio.sleep(0.05)
        assert g.heartbeat("grp", a.generation, a.member_id) == c.REBALANCE_IN_PROGRESS
        # a never rejoins and stops heartbeating: after its session it is dropped, b leads
        b = await asyncio.wait_for(b_join, 10)
        assert b.error == 0 and b.leader == b.member_id and b.generation == a.generation + 1
        assert [m[0] for m in b.members] == [b.member_id]
        g.stop()

    asyncio.run(main())


def test_static_member_keeps_its_place_and_a_stale_twin_is_fenced() -> None:
    async def main() -> None:
        g = c.GroupCoordinator()
        g.start()
        a = await joined(g, instance="pod-1")
        assert a.error == 0  # static members skip the member-id round trip
        await g.sync("grp", a.generation, a.member_id, {a.member_id: b"x"})
        again = await join(g, "", "pod-1")  # restarted: same instance id, no member id
        assert again.member_id == a.member_id
        assert (await join(g, "other-id", "pod-1")).error == c.FENCED_INSTANCE_ID
        assert g.leave("grp", [("", "pod-1")]) == [0]
        assert g.describe("grp").state == c.EMPTY  # type: ignore[union-attr]
        g.stop()

    asyncio.run(main())


def test_a_long_rebalance_does_not_expire_the_members_that_waited_in_it() -> None:
    async def main() -> None:
        g = c.GroupCoordinator()
        g.start()
        a = await joined(g, session_ms=1000)
        await g.sync("grp", a.generation, a.member_id, {a.member_id: b"x"})
        b_join = asyncio.create_task(joined(g, session_ms=1000))
        for _ in range(5):  # a heartbeats but rejoins late: b waits longer than its session
            await asyncio.sleep(0.3)
            assert g.heartbeat("grp", a.generation, a.member_id) == c.REBALANCE_IN_PROGRESS
        a2 = await join(g, a.member_id, session_ms=1000)
        b = await asyncio.wait_for(b_join, 5)
        assert a2.error == 0 and b.error == 0
        await asyncio.sleep(0.3)  # the reaper runs: b's session started again at the join
        group = g.describe("grp")
        assert group is not None and set(group.members) == {a.member_id, b.member_id}
        g.stop()

    asyncio.run(main())
