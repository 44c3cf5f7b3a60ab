"""The socket adapter's queue: superseded location updates under overload, order kept."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.session import Publish, Send, StoreLocation
from scalelab.nearby_friends.websocket import YIELD_EVERY, Connection, Hub, HubStats

T0 = 1_700_000_000.0


class Recorder:
    """The parts of a Hub (and of a socket) that running actions touch, recording calls."""

    def __init__(self) -> None:
        self.stats = HubStats()
        self.calls: list[tuple[str, Any]] = []
        self.pubsub = self

    async def publish(self, channel: str, payload: bytes) -> int:
        self.calls.append(("publish", payload))
        return 0

    async def store_location(self, location: Location) -> None:
        self.stats.locations += 1
        self.calls.append(("store", location.lat))

    async def send_text(self, text: str) -> None:
        self.calls.append(("send", text))


def share(lat: float) -> list[Any]:
    loc = Location(1, lat, 0.0, T0)
    return [StoreLocation(loc), Publish("loc:1", f"at {lat}".encode())]


def connection(recorder: Recorder) -> Connection:
    hub = cast(Hub, recorder)
    return Connection(hub, cast(Any, recorder), cast(Any, None))


def test_a_waiting_update_is_replaced_by_a_newer_one_and_order_is_kept() -> None:
    async def body() -> None:
        rec = Recorder()
        conn = connection(rec)
        conn.enqueue([*share(1.0), Send("frame a")])
        conn.enqueue(share(2.0))  # replaces 1.0 in its place: frames do not pin it
        conn.enqueue([Publish("loc:1", b"off")])  # a publish after it: 2.0 is now fixed
        conn.enqueue(share(3.0))
        conn.enqueue(share(4.0))  # replaces 3.0
        assert rec.stats.superseded == 2
        conn.actions.put_nowait(None)
        await conn.run_actions()
        assert rec.calls == [
            ("store", 2.0),
            ("publish", b"at 2.0"),
            ("send", "frame a"),
            ("publish", b"off"),
            ("store", 4.0),
            ("publish", b"at 4.0"),
        ]
        assert rec.stats.locations == 2

    asyncio.run(body())


def test_an_update_that_already_ran_is_not_replaced() -> None:
    async def body() -> None:
        rec = Recorder()
        conn = connection(rec)
        runner = asyncio.create_task(conn.run_actions())
        conn.enqueue(share(1.0))
        for _ in range(10):  # the runner's turn: it takes the share off the queue and runs it
            await asyncio.sleep(0)
        assert rec.stats.locations == 1
        conn.enqueue(share(2.0))
        conn.actions.put_nowait(None)
        await runner
        assert [c for c in rec.calls if c[0] == "store"] == [("store", 1.0), ("store", 2.0)]
        assert rec.stats.superseded == 0

    asyncio.run(body())


def test_a_long_queue_lets_other_tasks_run() -> None:
    async def body() -> None:
        rec = Recorder()
        conn = connection(rec)
        conn.enqueue([Send(f"f{i}") for i in range(YIELD_EVERY * 4)])
        conn.actions.put_nowait(None)
        sent_when_other_ran: list[int] = []

        async def other() -> None:
            await asyncio.sleep(0)
            sent_when_other_ran.append(len(rec.calls))

        others = asyncio.gather(other(), other())
        await conn.run_actions()
        await others
        assert len(rec.calls) == YIELD_EVERY * 4
        assert sent_when_other_ran and sent_when_other_ran[0] < YIELD_EVERY * 4

    asyncio.run(body())
