"""End to end over real sockets: the `websockets` client library against a real server."""

from __future__ import annotations

import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.nearby_friends.conftest import FAR, HOME, NEAR, Client, NearbyApi, StartNearby, auth, of


class VirtualClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def ring(api: NearbyApi, n: int) -> list[tuple[int, str]]:
    """n users, each the friend of its two neighbours on a ring."""
    users = [api.user(f"ring{i}") for i in range(n)]
    for i in range(n):
        api.befriend(users[i], users[(i + 1) % n])
    return users


def joined(api: NearbyApi, user: tuple[int, str]) -> Client:
    client = api.connect(user)
    assert client.recv()["type"] == "welcome"
    return client


def test_friends_in_range_are_pushed_and_others_never(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a, b, c, d = ring(api, 4)  # a's friends: b and d; c is not a's friend
    ca, cb, cc, cd = (joined(api, u) for u in (a, b, c, d))
    ca.location(HOME)
    cc.location(NEAR)  # a stranger next door: a must never hear of it
    cd.location(FAR)  # a friend, but 20 km away
    cb.location(NEAR)  # a friend 1 km away
    got = ca.until(of("friend_location", b[0]))
    assert got["v"] == 1 and 900 < got["distance_m"] < 1100
    assert got["lat"] == NEAR[0] and got["updated_at"] > 0
    # b moving far away: "left range"; back: a location again
    cb.location(FAR)
    left = ca.until(of("friend_left_range", b[0]))
    assert left["distance_m"] > 15_000
    cb.location(NEAR)
    ca.until(of("friend_location", b[0]))
    seen = {(f["type"], f.get("user_id")) for f in ca.frames}
    assert ("friend_location", c[0]) not in seen and ("nearby_person", c[0]) not in seen
    assert ("friend_location", d[0]) not in seen


def test_welcome_lists_cached_friends_nearby(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a, b, _c = ring(api, 3)
    cb = joined(api, b)
    cb.location(NEAR)
    ca = joined(api, a)
    ca.location(HOME)  # the first own location: friends already cached are pushed
    assert ca.until(of("friend_location", b[0]))["distance_m"] < 1100
    ca.close()
    again = api.connect(a)  # a's location is cached now: the welcome itself lists b
    welcome = again.recv()
    assert welcome["type"] == "welcome"
    assert [f["user_id"] for f in welcome["friends"]] == [b[0]]
    snapshot = api.http.get(f"/v1/users/{a[0]}/nearby-friends", headers=auth(a[1])).json()
    assert [f["user_id"] for f in snapshot["friends"]] == [b[0]]


def test_ttl_expiry_on_virtual_time(start_nearby: StartNearby) -> None:
    clock = VirtualClock()
    api = start_nearby(clock=clock, location_ttl_seconds=60)
    a, b, _c = ring(api, 3)
    ca, cb = joined(api, a), joined(api, b)
    ca.location(HOME)
    cb.location(NEAR)
    ca.until(of("friend_location", b[0]))
    clock.now += 61  # b sent nothing for longer than the TTL: gone (the server ticks every 2 s)
    ca.until(of("friend_offline", b[0]), timeout=15)
    snapshot = api.http.get(f"/v1/users/{a[0]}/nearby-friends", headers=auth(a[1]))
    assert snapshot.status_code == 409  # a's own location expired too


def test_friend_removal_stops_updates_at_once(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a, b, c = ring(api, 3)
    ca, cb, cc = joined(api, a), joined(api, b), joined(api, c)
    ca.location(HOME)
    cb.location(NEAR)
    ca.until(of("friend_location", b[0]))
    r = api.http.delete(f"/v1/users/{a[0]}/friends/{b[0]}", headers=auth(a[1]))
    assert r.status_code == 204
    ca.until(of("friend_removed", b[0]))
    cb.until(of("friend_removed", a[0]))  # both sides' sockets hear of it
    cb.location(NEAR)
    cc.location(NEAR)  # c is still a's friend: its update is the marker that b's would be here
    ca.until(of("friend_location", c[0]))
    after = ca.frames[
        ca.frames.index(next(f for f in ca.frames if f["type"] == "friend_removed")) :
    ]
    assert not [f for f in after if f.get("user_id") == b[0] and f["type"] != "friend_removed"]
    # and adding back reaches the open sockets too
    api.befriend(a, b)
    ca.until(of("friend_added", b[0]))
    cb.location(NEAR)
    ca.until(of("friend_location", b[0]))


def test_sharing_off_shows_the_friend_offline(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a, b, _c = ring(api, 3)
    ca, cb = joined(api, a), joined(api, b)
    ca.location(HOME)
    cb.location(NEAR)
    ca.until(of("friend_location", b[0]))
    cb.send(type="sharing", enabled=False)
    ca.until(of("friend_offline", b[0]))
    deadline = time.monotonic() + 10  # the setting is saved right after the friends hear
    while api.http.get(f"/v1/users/{b[0]}", headers=auth(b[1])).json()["sharing"]:
        assert time.monotonic() < deadline, "sharing was never saved as off"
        time.sleep(0.05)


def test_random_nearby_people_who_both_opted_in(start_nearby: StartNearby) -> None:
    api = start_nearby()
    x, y, z = api.user(), api.user(), api.user()  # strangers
    cx, cy, cz = joined(api, x), joined(api, y), joined(api, z)
    for c in (cx, cy):
        c.send(type="random_nearby", enabled=True)
    cx.location(HOME)
    # A socket runs its actions in order: the pong means x's geo-cell subscriptions are in
    # place. Without it y may publish first, and that update is (by design) not replayed.
    cx.send(type="ping", id=1)
    cx.until(of("pong"))
    cz.location(NEAR)  # z did not opt in: never shown
    cy.location(NEAR)
    got = cx.until(of("nearby_person", y[0]))
    assert got["distance_m"] < 1100
    assert not [f for f in cx.frames if f.get("user_id") == z[0]]


def test_bad_input_gets_error_frames_and_the_socket_lives(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a = api.user()
    ca = joined(api, a)
    for bad, code in [
        ("{not json", "bad_json"),
        ('{"type": "location", "lat": 91, "lng": 0}', "bad_message"),
        ('{"type": "teleport"}', "unknown_type"),
        ("[1, 2]", "bad_message"),
        ("x" * 5000, "too_large"),
    ]:
        ca.ws.send(bad)
        frame = ca.until(of("error"))
        assert frame["code"] == code, (bad[:40], frame)
    ca.send(type="ping", id=7)
    assert ca.until(of("pong"))["id"] == 7


def test_rate_limit_per_connection(start_nearby: StartNearby) -> None:
    api = start_nearby(max_messages_per_second=1.0)
    ca = joined(api, api.user())
    for i in range(30):
        ca.send(type="ping", id=i)
    frames = [ca.recv() for _ in range(30)]
    kinds = [f["type"] for f in frames]
    assert "pong" in kinds and "error" in kinds
    assert {f["code"] for f in frames if f["type"] == "error"} == {"rate_limited"}


def test_bad_token_is_refused(start_nearby: StartNearby) -> None:
    api = start_nearby()
    client = api.connect((0, "not-a-token"))
    frame = client.recv()
    assert frame["type"] == "error" and frame["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed) as closed:
        client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_draining_server_sends_a_reconnect_hint(start_nearby: StartNearby) -> None:
    """Shutting a server down (SIGTERM runs the same path) first tells every client to come
    back elsewhere after a jittered delay, then closes with 1012 (service restart)."""
    api = start_nearby()
    ca = joined(api, api.user())
    stopper = threading.Thread(target=api.server.stop)
    stopper.start()
    frame = ca.until(of("reconnect"))
    assert frame["reason"] == "draining" and 0 <= frame["retry_after_ms"] <= 500
    with pytest.raises(ConnectionClosed) as closed:
        ca.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    stopper.join(15)


def test_location_history_is_queryable_per_user_and_time_range(start_nearby: StartNearby) -> None:
    api = start_nearby()
    a, b = api.user(), api.user()
    ca, cb = joined(api, a), joined(api, b)
    start = time.time()
    for point in (HOME, NEAR, FAR):
        ca.location(point)
        ca.send(type="ping", id=str(point))  # the pong says the update was handled
        ca.until(of("pong"))
    cb.location(NEAR)
    deadline = time.monotonic() + 10  # points are written in batches, about every second
    while True:
        r = api.http.get(f"/v1/users/{a[0]}/locations", params={"from": start}, headers=auth(a[1]))
        assert r.status_code == 200, r.text
        points = r.json()["locations"]
        if len(points) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(p["lat"], p["lng"]) for p in points] == [HOME, NEAR, FAR]
    stamps = [p["updated_at"] for p in points]
    assert stamps == sorted(stamps)
    later = api.http.get(
        f"/v1/users/{a[0]}/locations", params={"from": stamps[1]}, headers=auth(a[1])
    ).json()["locations"]
    assert [(p["lat"], p["lng"]) for p in later] == [NEAR, FAR]
    other = api.http.get(f"/v1/users/{b[0]}/locations", headers=auth(a[1]))
    assert other.status_code == 403  # only one's own history


def test_closed_sockets_leave_no_subscriptions_behind(start_nearby: StartNearby) -> None:
    api = start_nearby()
    users = ring(api, 4)
    clients = [joined(api, u) for u in users]
    pubsub = api.app.state.pubsub
    assert pubsub.stats()["channels"] == 8  # four ctl: channels, four loc: (each shared by two)
    for c in clients:
        c.close()
    deadline = time.monotonic() + 10
    while pubsub.stats()["channels"] or api.app.state.hub.connections:
        assert time.monotonic() < deadline, pubsub.stats()
        time.sleep(0.05)
