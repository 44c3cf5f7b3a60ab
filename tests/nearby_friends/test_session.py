"""One connection's state machine on virtual time: the frames it pushes, what it publishes and
which channels it holds, for friends moving in and out of range, expiring, being removed."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from scalelab.geo.distance import destination, haversine_m
from scalelab.geo.geohash import decode, encode, neighbours
from scalelab.nearby_friends.model import Location, control_payload, offline_payload
from scalelab.nearby_friends.protocol import (
    LocationUpdate,
    Ping,
    SetRandomNearby,
    SetSharing,
    encode_client,
    parse_server,
)
from scalelab.nearby_friends.session import (
    FRIEND_TRANSITIONS,
    Action,
    Observation,
    Publish,
    SaveSettings,
    Send,
    Session,
    StoreLocation,
    Subscribe,
    Unsubscribe,
    View,
)

RADIUS = 5 * 1609.344  # 8046.72 m, the book's 5 miles
TTL = 600.0
T0 = 1_700_000_000.0
HOME = (48.8566, 2.3522)


def at(
    distance_m: float, bearing: float = 0.0, origin: tuple[float, float] = HOME
) -> tuple[float, float]:
    return destination(origin[0], origin[1], bearing, distance_m)


NEAR = at(1_000, 90)  # 1 km east: in range
FAR = at(20_000, 270)  # 20 km west: out of range


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def frames(actions: Iterable[Action]) -> list[dict[str, Any]]:
    return [parse_server(a.text) for a in actions if isinstance(a, Send)]


def brief(actions: Iterable[Action]) -> list[tuple[str, Any]]:
    """Frames as (type, user_id) pairs: what a test usually wants to compare."""
    return [(f["type"], f.get("user_id")) for f in frames(actions)]


def location(lat_lng: tuple[float, float]) -> str:
    return encode_client(LocationUpdate(*lat_lng))


def update(user: int, lat_lng: tuple[float, float], t: float) -> bytes:
    return Location(user, lat_lng[0], lat_lng[1], t).payload()


def ctl(op: str, **fields: Any) -> bytes:
    return control_payload(op, **fields)


def make(
    friends: Iterable[int] = (2, 3, 4), clock: Clock | None = None, **kwargs: Any
) -> tuple[Session, Clock]:
    clock = clock or Clock()
    session = Session(1, friends, radius_m=RADIUS, ttl=TTL, clock=clock, **kwargs)
    return session, clock


def started(
    friends: Iterable[int] = (2, 3, 4), at_home: bool = True, **kwargs: Any
) -> tuple[Session, Clock]:
    session, clock = make(friends, **kwargs)
    session.start({})
    if at_home:
        session.receive_text(location(HOME))
    return session, clock


# -- the table --------------------------------------------------------------------------------


def test_the_friend_table_is_total() -> None:
    assert set(FRIEND_TRANSITIONS) == {(v, o) for v in View for o in Observation}


# -- start and welcome ------------------------------------------------------------------------


def test_start_subscribes_to_friends_and_control_and_welcomes() -> None:
    session, clock = make()
    cached = {2: Location(2, *NEAR, T0 - 5)}
    actions = session.start(cached)
    subscribes = [a.channel for a in actions if isinstance(a, Subscribe)]
    assert subscribes == ["ctl:1", "loc:2", "loc:3", "loc:4"]
    assert session.subscriptions == frozenset(subscribes)
    (welcome,) = frames(actions)
    # No location of ours yet: nothing to measure from, so no friends listed...
    assert welcome == {
        "v": 1,
        "type": "welcome",
        "user_id": 1,
        "radius_m": RADIUS,
        "friends": [],
        "sharing": True,
        "random_nearby": False,
    }
    assert isinstance(actions[-1], Send)
    # ...but they are remembered and pushed with our first location.
    clock.now += 1
    actions = session.receive_text(location(HOME))
    assert actions[:2] == [
        StoreLocation(Location(1, *HOME, T0 + 1)),
        Publish("loc:1", Location(1, *HOME, T0 + 1).payload()),
    ]
    assert brief(actions) == [("friend_location", 2)]
    (pushed,) = frames(actions)
    assert pushed["distance_m"] == pytest.approx(1000.0, abs=0.05)
    assert pushed["updated_at"] == T0 - 5


def test_welcome_lists_only_fresh_friends_in_range_nearest_first() -> None:
    session, _ = make(friends=[2, 3, 4, 5, 6])
    cached = {
        1: Location(1, *HOME, T0 - 30),  # our own last fix: a reconnect
        2: Location(2, *at(3_000, 10), T0 - 10),  # in range
        3: Location(3, *NEAR, T0 - TTL),  # in range but expired (not > now - ttl)
        4: Location(4, *FAR, T0 - 10),  # out of range
        5: Location(5, *NEAR, T0 - TTL + 1),  # in range, just fresh
        7: Location(7, *NEAR, T0),  # not a friend: never listed
    }
    (welcome,) = frames(session.start(cached))
    assert [(f["user_id"], f["distance_m"]) for f in welcome["friends"]] == [
        (5, pytest.approx(1000.0, abs=0.05)),
        (2, pytest.approx(3000.0, abs=0.05)),
    ]
    assert session.location == cached[1]
    assert session.shown == {2, 5}
    # Friend 4 is remembered out of range: moving near it pushes it.
    actions = session.receive_text(location(at(1_000, 270, FAR)))
    assert ("friend_location", 4) in brief(actions)


def test_start_with_random_nearby_and_a_location_subscribes_the_cells() -> None:
    session, _ = make(random_nearby=True)
    session.start({1: Location(1, *HOME, T0)})
    cell = encode(*HOME, 5)
    geo = {c for c in session.subscriptions if c.startswith("geo:")}
    assert geo == {f"geo:{c}" for c in [cell, *neighbours(cell).values()]}
    assert len(geo) == 9


def test_start_twice_and_frames_before_start_are_adapter_bugs() -> None:
    session, _ = make()
    with pytest.raises(RuntimeError):
        session.receive_text(location(HOME))
    assert session.on_message("loc:2", update(2, NEAR, T0)) == []
    assert session.tick() == []
    session.start({})
    with pytest.raises(RuntimeError):
        session.start({})


# -- friends moving in and out ----------------------------------------------------------------


def test_move_in_and_out_sequences_produce_exactly_the_expected_frames() -> None:
    session, clock = started()
    t = T0

    def friend(lat_lng: tuple[float, float]) -> list[tuple[str, Any]]:
        return brief(session.on_message("loc:2", update(2, lat_lng, t)))

    def me(lat_lng: tuple[float, float]) -> list[tuple[str, Any]]:
        return brief(session.receive_text(location(lat_lng)))

    assert friend(NEAR) == [("friend_location", 2)]
    assert friend(at(2_000, 180)) == [("friend_location", 2)]  # still near: new position
    assert friend(FAR) == [("friend_left_range", 2)]
    assert friend(at(30_000)) == []  # out -> out: nothing
    assert friend(at(8_000)) == [("friend_location", 2)]  # 8 km < 5 miles
    assert friend(at(8_100)) == [("friend_left_range", 2)]
    assert friend(NEAR) == [("friend_location", 2)]
    # Our own moves re-evaluate every friend, but only changes of range are sent: a friend
    # still near is not sent again (the client recomputes its distance).
    assert session.on_message("loc:3", update(3, FAR, t)) == []
    assert me(at(1_000, 270, FAR)) == [("friend_left_range", 2), ("friend_location", 3)]
    assert me(at(2_000, 270, FAR)) == []
    assert me(at(60_000, 0)) == [("friend_left_range", 3)]
    assert me(at(61_000, 0)) == []
    assert me(HOME) == [("friend_location", 2)]
    left = frames(session.receive_text(location(at(30_000, 90))))
    assert left[0]["type"] == "friend_left_range"
    assert left[0]["distance_m"] == pytest.approx(29_000.0, rel=1e-3)
    assert clock.now == T0


def test_a_friend_that_stops_sharing_goes_offline_at_once() -> None:
    session, _ = started()
    session.on_message("loc:2", update(2, NEAR, T0))
    session.on_message("loc:3", update(3, FAR, T0))
    assert brief(session.on_message("loc:2", offline_payload(2))) == [("friend_offline", 2)]
    assert session.on_message("loc:3", offline_payload(3)) == []  # was not shown
    # Both are forgotten: moving next to where they were pushes nothing.
    assert brief(session.receive_text(location(FAR))) == []
    assert brief(session.receive_text(location(NEAR))) == []


def test_ttl_expiry_on_tick() -> None:
    session, clock = started()
    session.on_message("loc:2", update(2, NEAR, T0))
    session.on_message("loc:3", update(3, FAR, T0))
    session.on_message("loc:4", update(4, at(500), T0 + 100))
    clock.now = T0 + TTL - 1
    assert session.tick() == []
    clock.now = T0 + TTL  # updated_at == now - ttl: expired
    assert brief(session.tick()) == [("friend_offline", 2)]
    assert session.tick() == []
    assert session.shown == {4}
    # Friend 3 expired silently (it was out of range) and is forgotten.
    assert ("friend_location", 3) not in brief(session.receive_text(location(FAR)))
    clock.now = T0 + 100 + TTL
    assert session.tick() == []  # 4 already left range when we moved to FAR, and expired quietly
    # A stale update is an expiry, not a location.
    session.receive_text(location(HOME))
    assert session.on_message("loc:2", update(2, NEAR, clock.now - TTL)) == []


def test_sessions_ignore_updates_of_expired_friends_at_welcome_and_on_move() -> None:
    session, clock = started()
    session.on_message("loc:2", update(2, NEAR, T0))
    clock.now = T0 + TTL + 5
    # No tick ran, but our move re-evaluates: expired means offline, not "in range".
    assert brief(session.receive_text(location(HOME))) == [("friend_offline", 2)]


# -- friendships change -----------------------------------------------------------------------


def test_removal_stops_updates_immediately_even_for_a_queued_message() -> None:
    session, _ = started()
    session.on_message("loc:2", update(2, NEAR, T0))
    queued = update(2, at(500), T0)  # published before the removal, delivered after it
    actions = session.on_message("ctl:1", ctl("friend_removed", friend=2))
    assert actions[0] == Unsubscribe("loc:2")
    assert brief(actions) == [("friend_removed", 2)]
    assert "loc:2" not in session.subscriptions
    assert session.on_message("loc:2", queued) == []
    assert session.on_message("loc:2", offline_payload(2)) == []
    assert brief(session.receive_text(location(at(100)))) == []
    assert session.on_message("ctl:1", ctl("friend_removed", friend=2)) == []  # idempotent
    assert 2 not in session.friends


def test_friend_added_subscribes_and_then_pushes() -> None:
    session, _ = started()
    assert session.on_message("loc:9", update(9, NEAR, T0)) == []  # not a friend yet
    actions = session.on_message("ctl:1", ctl("friend_added", friend=9))
    assert actions[0] == Subscribe("loc:9")
    assert brief(actions) == [("friend_added", 9)]
    assert session.on_message("ctl:1", ctl("friend_added", friend=9)) == []  # idempotent
    assert brief(session.on_message("loc:9", update(9, NEAR, T0))) == [("friend_location", 9)]


def test_non_friend_location_messages_never_produce_frames() -> None:
    session, _ = started()
    for channel, payload in [
        ("loc:7", update(7, NEAR, T0)),  # a channel we never subscribed to
        ("loc:2", update(7, NEAR, T0)),  # a friend's channel carrying someone else
        ("loc:1", update(1, NEAR, T0)),  # our own channel
        ("ctl:7", ctl("friend_added", friend=1)),  # someone else's control channel
        ("geo:u09tv", update(7, NEAR, T0)),  # random nearby is off
    ]:
        assert session.on_message(channel, payload) == []
    assert session.counters.malformed == 1  # the mismatched "u"


def test_malformed_pubsub_payloads_are_counted_and_ignored() -> None:
    session, _ = started(random_nearby=True)
    cell = encode(*HOME, 5)
    bad = [
        ("loc:2", b"not json"),
        ("loc:2", b"[1]"),
        ("loc:2", b'{"u": 2, "lat": "x", "lng": 0, "t": 1}'),
        ("loc:2", b'{"u": 2, "lat": 91, "lng": 0, "t": 1}'),
        ("loc:2", b'{"u": true, "lat": 1, "lng": 0, "t": 1}'),
        ("loc:2", b'{"u": 3, "off": true}'),
        ("ctl:1", b'{"op": "friend_added", "friend": "9"}'),
        ("ctl:1", b'{"op": "friend_added", "friend": 1}'),
        ("ctl:1", b'{"op": "sharing", "enabled": "no"}'),
        ("ctl:1", b'{"op": "reboot"}'),
        (f"geo:{cell}", b'{"u": 7}'),
    ]
    for channel, payload in bad:
        assert session.on_message(channel, payload) == []
    assert session.counters.malformed == len(bad)
    assert brief(session.on_message("loc:2", update(2, NEAR, T0))) == [("friend_location", 2)]


def test_one_payload_fanned_out_to_many_sessions_reads_the_same_for_each() -> None:
    """Sessions share the decode of a payload delivered to them in a row (a memo keyed by
    the bytes object); each still judges it against its own state."""
    near_one, _ = started(friends=(2,))
    far_one, _ = make(friends=(2, 3))
    far_one.start({})
    far_one.receive_text(location(FAR))
    stranger, _ = started(friends=(3,))
    payload = update(2, NEAR, T0)
    assert brief(near_one.on_message("loc:2", payload)) == [("friend_location", 2)]
    assert brief(far_one.on_message("loc:2", payload)) == []  # 21 km away: not shown
    assert stranger.on_message("loc:2", payload) == []  # not subscribed to 2
    moved = update(2, FAR, T0 + 1)  # another object: read afresh
    assert brief(near_one.on_message("loc:2", moved)) == [("friend_left_range", 2)]
    assert brief(far_one.on_message("loc:2", moved)) == [("friend_location", 2)]
    junk = b"not json"
    for session in (near_one, far_one):
        assert session.on_message("loc:2", junk) == []
        assert session.counters.malformed == 1  # counted by every session it reached


# -- sharing ----------------------------------------------------------------------------------


class Bus:
    """A stand-in for the adapter: carries out sessions' actions over one in-memory pub/sub."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sessions: dict[int, Session] = {}
        self.inbox: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        self.cache: dict[int, Location] = {}
        self.settings: dict[int, SaveSettings] = {}

    def connect(self, user: int, friends: Iterable[int], **kwargs: Any) -> Session:
        session = Session(user, friends, radius_m=RADIUS, ttl=TTL, clock=self.clock, **kwargs)
        self.sessions[user] = session
        self.run(user, session.start(dict(self.cache)))
        return session

    def run(self, user: int, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.inbox[user].append(parse_server(action.text))
            elif isinstance(action, Publish):
                self.publish(action.channel, action.payload)
            elif isinstance(action, StoreLocation):
                self.cache[action.location.user_id] = action.location
            elif isinstance(action, SaveSettings):
                self.settings[user] = action
                self.publish(f"ctl:{user}", ctl("sharing", enabled=action.sharing))
                self.publish(f"ctl:{user}", ctl("random_nearby", enabled=action.random_nearby))

    def publish(self, channel: str, payload: bytes) -> None:
        for user, session in list(self.sessions.items()):
            if channel in session.subscriptions:
                self.run(user, session.on_message(channel, payload))

    def send(self, user: int, frame: str) -> None:
        self.run(user, self.sessions[user].receive_text(frame))

    def befriend(self, a: int, b: int) -> None:
        self.publish(f"ctl:{a}", ctl("friend_added", friend=b))
        self.publish(f"ctl:{b}", ctl("friend_added", friend=a))

    def take(self, user: int) -> list[tuple[str, Any]]:
        out = [(f["type"], f.get("user_id")) for f in self.inbox[user]]
        self.inbox[user].clear()
        return out


def test_a_ring_of_friends_sees_exactly_the_neighbours_in_range() -> None:
    """Six users on a ring of friendships (i with i +- 1); even ones at home, odd ones far."""
    clock = Clock()
    bus = Bus(clock)
    users = range(6)
    for u in users:
        bus.connect(u, [(u - 1) % 6, (u + 1) % 6])
    spots = {u: at(500 * u, 60 * u) if u % 2 == 0 else at(20_000 + 100 * u, 60 * u) for u in users}
    for u in users:
        bus.send(u, location(spots[u]))
    for u in users:
        bus.take(u)
    # Odd user 1 walks home: both neighbours (0 and 2, at home) see it, and it sees them.
    bus.send(1, location(HOME))
    assert sorted(bus.take(1)) == [("friend_location", 0), ("friend_location", 2)]
    assert bus.take(0) == [("friend_location", 1)]
    assert bus.take(2) == [("friend_location", 1)]
    assert all(bus.take(u) == [] for u in (3, 4, 5))  # 4 is at home but not 1's friend
    # It walks away again: they see it leave, it sees them leave.
    bus.send(1, location(FAR))
    assert sorted(bus.take(1)) == [("friend_left_range", 0), ("friend_left_range", 2)]
    assert bus.take(0) == [("friend_left_range", 1)] and bus.take(2) == [("friend_left_range", 1)]
    # A newcomer connecting at home is welcomed with the ones in the cache that are near.
    newcomer = bus.connect(9, [0, 1, 2])
    assert bus.inbox[9][0]["friends"] == []  # no location of ours yet
    assert bus.take(9) == [("welcome", 9)]
    bus.send(9, location(HOME))
    assert sorted(bus.take(9)) == [("friend_location", 0), ("friend_location", 2)]
    assert newcomer.shown == {0, 2}  # 4 is near too, but not a friend of 9... until it is
    assert bus.take(4) == []
    bus.befriend(9, 4)
    assert bus.take(9) == [("friend_added", 4)] and bus.take(4) == [("friend_added", 9)]
    # Each learns where the other is from the other's next update (within 30 s in the book).
    bus.send(4, location(spots[4]))
    assert bus.take(9) == [("friend_location", 4)] and bus.take(4) == []
    bus.send(9, location(HOME))
    assert ("friend_location", 9) in bus.take(4)


def test_sharing_off_tells_friends_at_once_and_stops_publishing() -> None:
    clock = Clock()
    bus = Bus(clock)
    me = bus.connect(1, [2])
    bus.connect(2, [1])
    assert bus.take(1) == [("welcome", 1)] and bus.take(2) == [("welcome", 2)]
    bus.send(1, location(HOME))
    bus.send(2, location(NEAR))
    assert bus.take(2) == [("friend_location", 1)]
    actions = me.receive_text(encode_client(SetSharing(False)))
    assert actions == [Publish("loc:1", offline_payload(1)), SaveSettings(False, False)]
    bus.run(1, actions)
    assert bus.take(2) == [("friend_offline", 1)]
    assert me.sharing is False
    # Not sharing: our moves leave no trace outside the session, but we still see friends.
    bus.take(1)
    cached = bus.cache[1]
    actions = me.receive_text(location(at(30_000)))  # out of friend 2's range
    assert not any(isinstance(a, Publish | StoreLocation) for a in actions)
    assert brief(actions) == [("friend_left_range", 2)]
    actions = me.receive_text(location(at(100)))  # and back: we still see our friends
    assert not any(isinstance(a, Publish | StoreLocation) for a in actions)
    assert brief(actions) == [("friend_location", 2)]
    assert bus.cache[1] == cached
    # Back on: the current location goes out at once.
    clock.now += 1
    actions = me.receive_text(encode_client(SetSharing(True)))
    assert [type(a) for a in actions] == [StoreLocation, Publish, SaveSettings]
    bus.run(1, actions)
    assert bus.take(2) == [("friend_location", 1)]


def test_settings_from_another_socket_change_state_without_saving_again() -> None:
    session, _ = started()
    assert session.on_message("ctl:1", ctl("sharing", enabled=False)) == []
    assert session.sharing is False
    assert not any(isinstance(a, Publish) for a in session.receive_text(location(NEAR)))
    actions = session.on_message("ctl:1", ctl("random_nearby", enabled=True))
    assert len(actions) == 9 and all(isinstance(a, Subscribe) for a in actions)
    assert session.random_nearby is True
    # The echo of our own SaveSettings changes nothing.
    assert session.on_message("ctl:1", ctl("random_nearby", enabled=True)) == []


# -- random nearby ----------------------------------------------------------------------------


def _cells(cell: str) -> set[str]:
    return {f"geo:{c}" for c in [cell, *neighbours(cell).values()]}


def test_random_nearby_cells_follow_us_across_a_cell_boundary() -> None:
    session, _ = started()
    cell = encode(*HOME, 5)
    box = decode(cell).box
    actions = session.receive_text(encode_client(SetRandomNearby(True)))
    assert actions[-1] == SaveSettings(True, True)
    assert {a.channel for a in actions if isinstance(a, Subscribe)} == _cells(cell)
    # Just west of the cell's east edge: same cell, nothing moves; we publish to our cell.
    lat = (box.south + box.north) / 2
    west_side = (lat, box.east - 1e-4)
    actions = session.receive_text(location(west_side))
    assert [a.channel for a in actions if isinstance(a, Publish)] == ["loc:1", f"geo:{cell}"]
    assert not any(isinstance(a, Subscribe | Unsubscribe) for a in actions)
    # Across it: the west column is dropped, a new east column taken.
    east_side = (lat, box.east + 1e-4)
    new_cell = encode(*east_side, 5)
    assert new_cell == neighbours(cell)["e"]
    actions = session.receive_text(location(east_side))
    old = neighbours(cell)
    new = neighbours(new_cell)
    assert {a.channel for a in actions if isinstance(a, Unsubscribe)} == {
        f"geo:{old[d]}" for d in ("nw", "w", "sw")
    }
    assert {a.channel for a in actions if isinstance(a, Subscribe)} == {
        f"geo:{new[d]}" for d in ("ne", "e", "se")
    }
    assert [a.channel for a in actions if isinstance(a, Publish)] == ["loc:1", f"geo:{new_cell}"]
    assert {c for c in session.subscriptions if c.startswith("geo:")} == _cells(new_cell)
    # Opting out drops them all.
    actions = session.receive_text(encode_client(SetRandomNearby(False)))
    assert {a.channel for a in actions if isinstance(a, Unsubscribe)} == _cells(new_cell)
    assert actions[-1] == SaveSettings(True, False)
    assert session.subscriptions == {"ctl:1", "loc:2", "loc:3", "loc:4"}


def test_random_nearby_without_a_location_waits_for_one() -> None:
    session, _ = started(at_home=False)
    actions = session.receive_text(encode_client(SetRandomNearby(True)))
    assert actions == [SaveSettings(True, True)]
    actions = session.receive_text(location(HOME))
    assert {a.channel for a in actions if isinstance(a, Subscribe)} == _cells(encode(*HOME, 5))


def test_nearby_people_are_pushed_only_if_opted_in_and_in_range() -> None:
    session, clock = started(random_nearby=True)
    here = f"geo:{encode(*HOME, 5)}"
    near = frames(session.on_message(here, update(7, NEAR, T0)))
    assert [(f["type"], f["user_id"]) for f in near] == [("nearby_person", 7)]
    assert near[0]["distance_m"] == pytest.approx(1000.0, abs=0.05)
    east = f"geo:{neighbours(encode(*HOME, 5))['e']}"
    assert session.on_message(east, update(8, at(9_000, 90), T0)) == []  # beyond the radius
    assert session.on_message(here, update(1, NEAR, T0)) == []  # ourselves
    assert session.on_message(here, update(2, NEAR, T0)) == []  # a friend: via loc: only
    assert session.on_message(here, update(7, NEAR, T0 - TTL)) == []  # stale
    assert session.on_message(here, offline_payload(7)) == []
    # Friend 2's geo message did not count as its location.
    assert session.shown == frozenset()
    session.receive_text(encode_client(SetRandomNearby(False)))
    assert session.on_message(here, update(7, NEAR, T0)) == []
    assert clock.now == T0


# -- rate limit, bad frames, ping, close ------------------------------------------------------


def test_rate_limit_burst_then_refill_on_virtual_time() -> None:
    session, clock = started(at_home=False, rate=2.0, burst=10)
    ping = encode_client(Ping(1))
    for _ in range(10):
        assert brief(session.receive_text(ping)) == [("pong", None)]
    refused = frames(session.receive_text(ping))
    assert [(f["type"], f["code"]) for f in refused] == [("error", "rate_limited")]
    # A refused location is not applied.
    assert brief(session.receive_text(location(HOME))) == [("error", None)]
    assert session.location is None
    clock.now += 0.5  # one token at 2/s
    assert brief(session.receive_text(ping)) == [("pong", None)]
    assert brief(session.receive_text(ping)) == [("error", None)]
    clock.now += 3600  # refills to the burst, no more
    results = [brief(session.receive_text(ping))[0][0] for _ in range(12)]
    assert results == ["pong"] * 10 + ["error"] * 2
    assert session.counters.rate_limited == 5
    assert session.counters.messages_in == 26


def test_bad_frames_get_an_error_frame_and_the_session_goes_on() -> None:
    session, _ = started(at_home=False)
    bad: list[tuple[str | bytes, str]] = [
        ("{", "bad_json"),
        ('{"type": "location", "lat": 100, "lng": 0}', "bad_message"),
        ('{"type": "fly"}', "unknown_type"),
        ("x" * 5000, "too_large"),
        (b"\xff", "bad_json"),
    ]
    for frame, code in bad:
        actions = session.receive_text(frame)
        assert len(actions) == 1
        (error,) = frames(actions)
        assert error["type"] == "error" and error["code"] == code
    assert session.counters.bad_frames == 5
    session.on_message("loc:2", update(2, NEAR, T0))
    actions = session.receive_text(location(HOME))
    assert brief(actions) == [("friend_location", 2)]
    assert frames(session.receive_text(encode_client(Ping({"n": [1]}))))[0]["id"] == {"n": [1]}


def test_close_unsubscribes_everything_and_publishes_nothing() -> None:
    session, _ = started(random_nearby=True)
    subscribed = session.subscriptions
    actions = session.close()
    assert all(isinstance(a, Unsubscribe) for a in actions)
    assert {a.channel for a in actions if isinstance(a, Unsubscribe)} == subscribed
    assert len(subscribed) == 1 + 3 + 9
    assert session.subscriptions == frozenset() and session.closed
    assert session.close() == []
    assert session.receive_text(location(NEAR)) == []
    assert session.on_message("loc:2", update(2, NEAR, T0)) == []
    assert session.tick() == []


def test_counters() -> None:
    session, _ = started()
    session.on_message("loc:2", update(2, NEAR, T0))
    c = session.counters
    assert (c.messages_in, c.messages_out, c.published, c.pubsub_in) == (1, 2, 1, 1)


def test_constructor_checks_its_numbers() -> None:
    for bad in (
        {"radius_m": 0.0},
        {"radius_m": math.inf},
        {"ttl": 0.0},
        {"rate": 0.0},
        {"burst": 0},
        {"geohash_precision": 13},
    ):
        kwargs: dict[str, Any] = {"radius_m": RADIUS, "ttl": TTL, **bad}
        with pytest.raises(ValueError):
            Session(1, [], clock=Clock(), **kwargs)


# -- model-based: random events against a simple model ---------------------------------------

ME = 1
PEOPLE = [2, 3, 4, 5, 6]
SPOTS = [HOME] + [at(d, b) for d in (900, 4_000, 7_900, 8_200, 15_000) for b in (0, 135, 250)]
AGES = [0.0, 100.0, TTL - 1, TTL]  # how old an update is when it arrives


class SessionMachine(RuleBasedStateMachine):
    """Drives one Session with random client frames, pub/sub messages and time, and checks
    every frame against a model: friends' locations, ours, and what the client has been told."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.friends = {2, 3}
        self.sharing = True
        self.random_nearby = False
        self.session = Session(
            ME,
            self.friends,
            radius_m=RADIUS,
            ttl=TTL,
            clock=self.clock,
            sharing=self.sharing,
            random_nearby=self.random_nearby,
            rate=1000.0,
            burst=10**9,
        )
        self.mine: tuple[float, float] | None = None
        self.theirs: dict[int, Location] = {}  # friends' latest locations, as told
        self.view: dict[int, dict[str, Any]] = {}  # what the client lists, from the frames
        self.check(self.session.start({}), expect_welcome=True)

    # -- the model's expectations ---------------------------------------------------------

    def distance(self, lat_lng: tuple[float, float]) -> float:
        assert self.mine is not None
        return haversine_m(self.mine[0], self.mine[1], lat_lng[0], lat_lng[1])

    def fresh(self, loc: Location) -> bool:
        return loc.updated_at > self.clock.now - TTL

    def in_range(self) -> set[int]:
        if self.mine is None:
            return set()
        return {
            f
            for f, loc in self.theirs.items()
            if self.fresh(loc) and self.distance((loc.lat, loc.lng)) <= RADIUS
        }

    def geo_cells(self) -> set[str]:
        if not self.random_nearby or self.mine is None:
            return set()
        return _cells(encode(*self.mine, 5))

    def check(self, actions: list[Action], *, expect_welcome: bool = False) -> None:
        """Every frame is about a friend, or a nearby person while opted in; apply to view."""
        for frame in frames(actions):
            kind: str = frame["type"]
            user: int = frame.get("user_id", 0)
            if kind == "welcome":
                assert expect_welcome
                continue
            if kind in ("friend_location", "friend_left_range", "friend_offline"):
                assert user in self.friends, frame
            if kind == "friend_location":
                assert self.distance((frame["lat"], frame["lng"])) <= RADIUS
                self.view[user] = frame
            elif kind in ("friend_left_range", "friend_offline"):
                assert user in self.view, frame  # only what the client was shown leaves
                del self.view[user]
            elif kind == "friend_removed":
                assert user not in self.friends
                self.view.pop(user, None)
            elif kind == "friend_added":
                assert user in self.friends
            elif kind == "nearby_person":
                assert user not in self.friends and user != ME and self.random_nearby
                assert self.distance((frame["lat"], frame["lng"])) <= RADIUS
            else:
                raise AssertionError(f"unexpected frame {frame}")

    # -- rules ----------------------------------------------------------------------------

    @rule(spot=st.sampled_from(SPOTS))
    def move(self, spot: tuple[float, float]) -> None:
        self.mine = spot
        actions = self.session.receive_text(location(spot))
        published = {a.channel for a in actions if isinstance(a, Publish)}
        expected = set()
        if self.sharing:
            expected.add("loc:1")
            if self.random_nearby:
                expected.add(f"geo:{encode(*spot, 5)}")
        assert published == expected
        assert any(isinstance(a, StoreLocation) for a in actions) == self.sharing
        for f, loc in list(self.theirs.items()):
            if not self.fresh(loc):
                del self.theirs[f]
        self.check(actions)

    @rule(person=st.sampled_from(PEOPLE), spot=st.sampled_from(SPOTS), age=st.sampled_from(AGES))
    def person_moves(self, person: int, spot: tuple[float, float], age: float) -> None:
        loc = Location(person, *spot, self.clock.now - age)
        actions = self.session.on_message(f"loc:{person}", loc.payload())
        if person not in self.friends:
            assert actions == []
            return
        if self.fresh(loc):
            self.theirs[person] = loc
        else:
            self.theirs.pop(person, None)
        self.check(actions)

    @rule(person=st.sampled_from(PEOPLE))
    def person_stops_sharing(self, person: int) -> None:
        actions = self.session.on_message(f"loc:{person}", offline_payload(person))
        if person not in self.friends:
            assert actions == []
        self.theirs.pop(person, None)
        self.check(actions)

    @rule(person=st.sampled_from(PEOPLE), spot=st.sampled_from(SPOTS))
    def person_on_a_geo_channel(self, person: int, spot: tuple[float, float]) -> None:
        channel = f"geo:{encode(*spot, 5)}"
        actions = self.session.on_message(
            channel, Location(person, *spot, self.clock.now).payload()
        )
        pushed = channel in self.geo_cells() and person not in self.friends
        pushed = pushed and self.distance(spot) <= RADIUS
        assert brief(actions) == ([("nearby_person", person)] if pushed else [])
        self.check(actions)

    @rule(person=st.sampled_from(PEOPLE))
    def befriend(self, person: int) -> None:
        actions = self.session.on_message("ctl:1", ctl("friend_added", friend=person))
        new = person not in self.friends
        self.friends.add(person)
        assert brief(actions) == ([("friend_added", person)] if new else [])
        self.check(actions)

    @rule(person=st.sampled_from(PEOPLE))
    def unfriend(self, person: int) -> None:
        actions = self.session.on_message("ctl:1", ctl("friend_removed", friend=person))
        was = person in self.friends
        self.friends.discard(person)
        self.theirs.pop(person, None)
        assert brief(actions) == ([("friend_removed", person)] if was else [])
        self.check(actions)

    @rule(enabled=st.booleans(), from_client=st.booleans())
    def set_sharing(self, enabled: bool, from_client: bool) -> None:
        if from_client:
            actions = self.session.receive_text(encode_client(SetSharing(enabled)))
            assert actions[-1] == SaveSettings(enabled, self.random_nearby)
            offline = Publish("loc:1", offline_payload(ME))
            assert (offline in actions) == (self.sharing and not enabled)
        else:
            actions = self.session.on_message("ctl:1", ctl("sharing", enabled=enabled))
            assert actions == []
        self.sharing = enabled
        self.check(actions)

    @rule(enabled=st.booleans(), from_client=st.booleans())
    def set_random_nearby(self, enabled: bool, from_client: bool) -> None:
        if from_client:
            actions = self.session.receive_text(encode_client(SetRandomNearby(enabled)))
            assert actions[-1] == SaveSettings(self.sharing, enabled)
        else:
            actions = self.session.on_message("ctl:1", ctl("random_nearby", enabled=enabled))
            assert not any(isinstance(a, SaveSettings) for a in actions)
        self.random_nearby = enabled
        self.check(actions)

    @rule(seconds=st.sampled_from([1.0, 30.0, 299.0, TTL]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def tick(self) -> None:
        actions = self.session.tick()
        for f, loc in list(self.theirs.items()):
            if not self.fresh(loc):
                del self.theirs[f]
        self.check(actions)
        assert set(self.view) == self.in_range()  # after a tick nothing stale is listed

    @rule(frame=st.sampled_from(["", "{", "[]", '{"type": "x"}', '{"type": "location"}']))
    def garbage(self, frame: str) -> None:
        actions = self.session.receive_text(frame)
        assert [f["type"] for f in frames(actions)] == ["error"] and len(actions) == 1

    @rule()
    def ping(self) -> None:
        assert brief(self.session.receive_text(encode_client(Ping(5)))) == [("pong", None)]

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def subscriptions_follow_friends_and_cells(self) -> None:
        expected = {"ctl:1"} | {f"loc:{f}" for f in self.friends} | self.geo_cells()
        assert self.session.subscriptions == expected

    @invariant()
    def the_client_lists_exactly_the_friends_in_range(self) -> None:
        # Fresh friends in range are listed; listed ones are in range, and stale only until
        # the next tick (which checks equality).
        assert self.in_range() <= set(self.view)
        assert set(self.view) <= self.friends
        assert set(self.view) == set(self.session.shown)
        for f, frame in self.view.items():
            assert self.distance((frame["lat"], frame["lng"])) <= RADIUS
            told = self.theirs[f]
            assert (frame["lat"], frame["lng"], frame["updated_at"]) == (
                told.lat,
                told.lng,
                told.updated_at,
            )

    @invariant()
    def the_session_agrees_on_settings(self) -> None:
        assert (self.session.sharing, self.session.random_nearby) == (
            self.sharing,
            self.random_nearby,
        )
        assert self.session.friends == self.friends


SessionMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
test_session_machine = SessionMachine.TestCase
