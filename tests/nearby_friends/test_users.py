"""UserStore on SQLite and PostgreSQL (one contract, every backend), and the REST routes
in process (httpx over ASGITransport, hand-made services on app.state)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, func, select

from scalelab.nearby_friends.api import nearby_error, router
from scalelab.nearby_friends.errors import Invalid, NearbyError, NotFound, Unauthorized
from scalelab.nearby_friends.history import LocationHistory
from scalelab.nearby_friends.location_cache import LocationCache
from scalelab.nearby_friends.model import Location
from scalelab.nearby_friends.schema import create_schema, friendships, tokens
from scalelab.nearby_friends.users import UserStore
from scalelab.storage import sql
from scalelab.storage.kv import MemoryKV
from scalelab.web import create_app

T0 = 1_700_000_000.0


class VirtualClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store(sql_engine: Engine) -> UserStore:
    create_schema(sql_engine)
    return UserStore(sql_engine, VirtualClock())


def test_register_then_authenticate(store: UserStore, sql_engine: Engine) -> None:
    alice, token = store.register("alice")
    bob, _ = store.register("bob")
    assert alice != bob
    assert store.authenticate(token) == alice
    assert store.authenticate(token) == alice  # from the hash cache
    # A fresh store (another server process) reads the hash from the database.
    assert UserStore(sql_engine).authenticate(token) == alice
    for bad in ("", "nf-not-a-token", token + "x"):
        with pytest.raises(Unauthorized):
            store.authenticate(bad)


def test_only_the_token_hash_is_stored(store: UserStore, sql_engine: Engine) -> None:
    user_id, token = store.register("alice")
    with sql_engine.connect() as conn:
        rows = conn.execute(select(tokens.c.token_hash, tokens.c.user_id)).all()
    assert [(r.token_hash, r.user_id) for r in rows] == [
        (hashlib.sha256(token.encode()).hexdigest(), user_id)
    ]


def test_get_user(store: UserStore) -> None:
    user_id, _ = store.register("alice")
    assert store.get(user_id) == {
        "id": user_id,
        "name": "alice",
        "created_at": T0,
        "sharing": True,
        "random_nearby": False,
    }
    with pytest.raises(NotFound) as err:
        store.get(user_id + 100)
    assert err.value.details == {"user_id": user_id + 100}


def test_friendship_is_stored_both_ways(store: UserStore, sql_engine: Engine) -> None:
    a, _ = store.register("a")
    b, _ = store.register("b")
    c, _ = store.register("c")
    assert store.add_friend(a, b) is True
    assert store.friends(a) == [b]
    assert store.friends(b) == [a]
    assert store.friends(c) == []
    assert store.are_friends(a, b) and store.are_friends(b, a)
    assert not store.are_friends(a, c)
    with sql_engine.connect() as conn:
        rows = conn.execute(select(friendships.c.user_id, friendships.c.friend_id)).all()
    assert sorted(tuple(r) for r in rows) == sorted([(a, b), (b, a)])


def test_add_and_remove_are_idempotent(store: UserStore) -> None:
    a, _ = store.register("a")
    b, _ = store.register("b")
    assert store.add_friend(a, b) is True
    assert store.add_friend(a, b) is False
    assert store.add_friend(b, a) is False  # the same friendship from the other side
    assert store.friends(a) == [b]
    assert store.remove_friend(b, a) is True
    assert store.remove_friend(a, b) is False
    assert store.friends(a) == [] and store.friends(b) == []
    assert store.add_friend(b, a) is True  # and back again
    assert store.friends(a) == [b]


def test_friends_are_sorted(store: UserStore) -> None:
    ids = [store.register(f"u{i}")[0] for i in range(5)]
    me = ids[0]
    for other in reversed(ids[1:]):
        store.add_friend(other, me)
    assert store.friends(me) == ids[1:]


def test_bad_friendships(store: UserStore) -> None:
    a, _ = store.register("a")
    with pytest.raises(Invalid):
        store.add_friend(a, a)
    with pytest.raises(Invalid):
        store.remove_friend(a, a)
    with pytest.raises(NotFound) as err:
        store.add_friend(a, a + 42)
    assert err.value.details == {"user_id": a + 42}
    with pytest.raises(NotFound):
        store.add_friend(a + 42, a)
    assert store.friends(a) == []
    assert store.remove_friend(a, a + 42) is False


def test_befriending_each_other_at_once(store: UserStore) -> None:
    """Both sides add at the same moment: one wins, no deadlock, no error, both rows exist."""
    ids = [store.register(f"u{i}")[0] for i in range(20)]
    pairs = list(itertools.pairwise(ids))
    with ThreadPoolExecutor(8) as pool:
        forward = pool.map(lambda p: store.add_friend(p[0], p[1]), pairs)
        backward = pool.map(lambda p: store.add_friend(p[1], p[0]), pairs)
        results = list(zip(forward, backward, strict=True))
    assert all(f != b for f, b in results)  # exactly one of the two created it
    for a, b in pairs:
        assert store.are_friends(a, b) and store.are_friends(b, a)


def test_settings(store: UserStore) -> None:
    a, _ = store.register("a")
    assert store.settings(a) == (True, False)
    assert store.set_settings(a, sharing=False) == (False, False)
    assert store.set_settings(a, random_nearby=True) == (False, True)
    assert store.set_settings(a) == (False, True)
    assert store.set_settings(a, sharing=True, random_nearby=False) == (True, False)
    assert store.settings(a) == (True, False)
    with pytest.raises(NotFound):
        store.settings(a + 1)
    with pytest.raises(NotFound):
        store.set_settings(a + 1, sharing=False)


def test_sharing_friends(store: UserStore) -> None:
    a, _ = store.register("a")
    b, _ = store.register("b")
    c, _ = store.register("c")
    store.add_friend(a, c)
    store.add_friend(a, b)
    assert store.sharing_friends(a) == [b, c]
    store.set_settings(b, sharing=False)
    assert store.sharing_friends(a) == [c]
    assert store.friends(a) == [b, c]


def test_session_view_is_friends_sharing_and_settings_at_once(store: UserStore) -> None:
    a, _ = store.register("a")
    b, _ = store.register("b")
    c, _ = store.register("c")
    lonely, _ = store.register("lonely")
    store.add_friend(a, c)
    store.add_friend(a, b)
    store.set_settings(b, sharing=False)
    store.set_settings(a, random_nearby=True)
    view = store.session_view(a)
    assert (view.friends, view.sharing_friends) == (store.friends(a), store.sharing_friends(a))
    assert (view.friends, view.sharing_friends) == ([b, c], [c])
    assert (view.sharing, view.random_nearby) == store.settings(a) == (True, True)
    alone = store.session_view(lonely)  # no friends: still the settings
    assert (alone.friends, alone.sharing_friends, alone.sharing) == ([], [], True)
    with pytest.raises(NotFound):
        store.session_view(lonely + 100)


def test_bulk_helpers(store: UserStore) -> None:
    created = store.bulk_create(6, name_prefix="walker")
    ids = [u for u, _ in created]
    assert ids == sorted(ids) and len(set(ids)) == 6
    for user_id, token in created:
        assert store.authenticate(token) == user_id
    assert store.get(ids[2])["name"] == "walker-2"
    a, b, c, d, e, _ = ids
    # Repeats, reversed repeats and self pairs are skipped.
    assert store.bulk_befriend([(a, b), (b, a), (a, c), (c, c), (d, e)]) == 3
    assert store.friends(a) == [b, c]
    assert store.friends(c) == [a]
    assert store.friends(e) == [d]
    # Existing friendships are kept; new ones are added in the same call.
    assert store.bulk_befriend(iter([(a, b), (b, c)])) == 2
    assert store.friends(b) == [a, c]
    with pytest.raises(NotFound):
        store.bulk_befriend([(a, d), (a, 10**9)])
    assert store.friends(d) == [e]  # the failed batch wrote nothing
    assert store.bulk_befriend([]) == 0
    assert store.bulk_create(0) == []


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sql.create_engine(sql.sqlite_url(tmp_path / "nearby.db"))
    create_schema(engine)
    yield engine
    engine.dispose()


def test_bulk_load_of_a_bench_sized_graph(sqlite_engine: Engine) -> None:
    """10,000 users with 50 friends each (a ring: i befriends i+1 .. i+25) in one go."""
    store = UserStore(sqlite_engine)
    ids = [u for u, _ in store.bulk_create(10_000)]
    n = len(ids)
    pairs = ((ids[i], ids[(i + k) % n]) for i in range(n) for k in range(1, 26))
    assert store.bulk_befriend(pairs) == n * 25
    degree = (
        select(func.count().label("n"))
        .select_from(friendships)
        .group_by(friendships.c.user_id)
        .subquery()
    )
    with sqlite_engine.connect() as conn:
        users, lo, hi = conn.execute(
            select(func.count(), func.min(degree.c.n), func.max(degree.c.n))
        ).one()
    assert (users, lo, hi) == (n, 50, 50)
    assert len(store.friends(ids[0])) == 50
    assert store.friends(ids[0]) == sorted([*ids[1:26], *ids[-25:]])


# -- the REST routes, in process ----------------------------------------------------------


class Services:
    """Hand-made app.state: SQLite users and history, a MemoryKV cache on virtual time."""

    def __init__(self, engine: Engine) -> None:
        self.clock = VirtualClock()
        self.users = UserStore(engine, self.clock)
        self.history = LocationHistory(engine)
        self.cache = LocationCache(MemoryKV(clock=self.clock), ttl=600)
        self.notified: list[tuple[int, dict[str, Any]]] = []
        self.fail_notify = False

    async def notify(self, user_id: int, payload: bytes) -> None:
        if self.fail_notify:
            raise ConnectionError("pub/sub is down")
        self.notified.append((user_id, orjson.loads(payload)))

    def app(self) -> Any:
        app = create_app("nearby_friends", routers=[router])
        app.add_exception_handler(NearbyError, nearby_error)
        app.state.users = self.users
        app.state.history = self.history
        app.state.cache = self.cache
        app.state.notify = self.notify
        app.state.radius_m = 8046.72
        app.state.ttl = 600.0
        return app


def test_rest_api(sqlite_engine: Engine) -> None:
    services = Services(sqlite_engine)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=services.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://nf") as http:

            async def user(name: str) -> tuple[int, dict[str, str]]:
                r = await http.post("/v1/users", json={"name": name})
                assert r.status_code == 201, r.text
                body = r.json()
                assert body["name"] == name and r.headers["location"] == f"/v1/users/{body['id']}"
                return body["id"], {"Authorization": f"Bearer {body['token']}"}

            me, mine = await user("me")
            near, near_auth = await user("near")
            far, _ = await user("far")
            hidden, hidden_auth = await user("hidden")
            stranger, _ = await user("stranger")

            # Authentication and authorisation.
            r = await http.get(f"/v1/users/{me}/friends")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            r = await http.get(f"/v1/users/{me}", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
            r = await http.get(f"/v1/users/{me}/friends", headers=near_auth)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = await http.get(f"/v1/users/{me}", headers=near_auth)
            assert r.json() == {"id": me, "name": "me", "created_at": T0}
            r = await http.get(f"/v1/users/{me}", headers=mine)
            assert r.json()["sharing"] is True
            r = await http.get("/v1/users/999", headers=mine)
            assert r.status_code == 404 and r.json()["error"]["user_id"] == 999

            # Friends: 201 then 200, both users' sockets are told each time.
            for friend in (near, far, hidden):
                r = await http.post(
                    f"/v1/users/{me}/friends", json={"friend_id": friend}, headers=mine
                )
                assert r.status_code == 201, r.text
            assert services.notified[:2] == [
                (me, {"op": "friend_added", "friend": near}),
                (near, {"op": "friend_added", "friend": me}),
            ]
            r = await http.post(f"/v1/users/{me}/friends", json={"friend_id": near}, headers=mine)
            assert r.status_code == 200
            r = await http.post(f"/v1/users/{me}/friends", json={"friend_id": me}, headers=mine)
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
            r = await http.post(f"/v1/users/{me}/friends", json={"friend_id": 999}, headers=mine)
            assert r.status_code == 404
            r = await http.post(f"/v1/users/{me}/friends", json={"friend": near}, headers=mine)
            assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
            r = await http.get(f"/v1/users/{me}/friends", headers=mine)
            assert r.json() == {"friends": [near, far, hidden]}

            # Settings: the named ones are announced.
            services.notified.clear()
            r = await http.put(
                f"/v1/users/{hidden}/settings", json={"sharing": False}, headers=hidden_auth
            )
            assert r.json() == {"sharing": False, "random_nearby": False}
            assert services.notified == [(hidden, {"op": "sharing", "enabled": False})]
            r = await http.put(f"/v1/users/{me}/settings", json={"sharing": "no"}, headers=mine)
            assert r.status_code == 422
            r = await http.get(f"/v1/users/{hidden}/settings", headers=hidden_auth)
            assert r.json() == {"sharing": False, "random_nearby": False}

            # The snapshot: 409 until the caller has a location, then friends in range.
            r = await http.get(f"/v1/users/{me}/nearby-friends", headers=mine)
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
            services.cache.put(Location(me, 37.7749, -122.4194, T0))
            services.cache.put(Location(near, 37.7849, -122.4094, T0 + 1))  # ~1.4 km
            services.cache.put(Location(far, 37.3382, -121.8863, T0 + 2))  # San Jose, ~68 km
            services.cache.put(Location(hidden, 37.7750, -122.4194, T0))  # close, not sharing
            services.cache.put(Location(stranger, 37.7749, -122.4195, T0))  # close, no friend
            r = await http.get(f"/v1/users/{me}/nearby-friends", headers=mine)
            body = r.json()
            assert body["location"] == {"lat": 37.7749, "lng": -122.4194, "updated_at": T0}
            assert [f["user_id"] for f in body["friends"]] == [near]
            assert 1000 < body["friends"][0]["distance_m"] < 2000
            assert body["friends"][0]["updated_at"] == T0 + 1
            r = await http.get(f"/v1/users/{near}/nearby-friends", headers=mine)
            assert r.status_code == 403
            services.clock.advance(601)  # every location expires
            r = await http.get(f"/v1/users/{me}/nearby-friends", headers=mine)
            assert r.status_code == 409

            # History.
            services.history.append([Location(me, 1.0, 2.0, T0 + i) for i in range(5)])
            r = await http.get(
                f"/v1/users/{me}/locations", params={"from": T0 + 1, "to": T0 + 3}, headers=mine
            )
            assert [p["updated_at"] for p in r.json()["locations"]] == [T0 + 1, T0 + 2]
            r = await http.get(f"/v1/users/{me}/locations", params={"limit": 2}, headers=mine)
            assert [p["updated_at"] for p in r.json()["locations"]] == [T0, T0 + 1]
            r = await http.get(
                f"/v1/users/{me}/locations", params={"from": 5, "to": 5}, headers=mine
            )
            assert r.status_code == 422
            r = await http.get(f"/v1/users/{me}/locations", headers=near_auth)
            assert r.status_code == 403

            # Removing: 204 either way; both sides told.
            services.notified.clear()
            r = await http.delete(f"/v1/users/{me}/friends/{near}", headers=mine)
            assert r.status_code == 204
            assert services.notified == [
                (me, {"op": "friend_removed", "friend": near}),
                (near, {"op": "friend_removed", "friend": me}),
            ]
            r = await http.delete(f"/v1/users/{me}/friends/{near}", headers=mine)
            assert r.status_code == 204
            r = await http.get(f"/v1/users/{near}/friends", headers=near_auth)
            assert r.json() == {"friends": []}

            # A failed announcement: the change stands, the client is told to retry.
            services.fail_notify = True
            r = await http.post(f"/v1/users/{me}/friends", json={"friend_id": near}, headers=mine)
            assert r.status_code == 503 and r.json()["error"]["code"] == "notify_failed"
            assert services.users.are_friends(me, near)

    asyncio.run(scenario())
