"""Two WebSocket server processes behind one Redis (pub/sub and location cache) and one
database: friends on different servers see each other, and a draining server sends its
clients to the other one (the book's scale-out of stateful servers)."""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.nearby_friends.conftest import HOME, NEAR, Client, auth, of

pytestmark = pytest.mark.redis


@pytest.fixture
def two_servers(
    spawn_server: Callable[..., Any], redis_url: str, tmp_path: Path
) -> Iterator[tuple[Any, Any]]:
    env = {
        "SCALELAB_DATA": str(tmp_path),  # one SQLite file for both: users and friendships
        "SCALELAB_NEARBY_FRIENDS_PUBSUB_URL": redis_url,
        "SCALELAB_NEARBY_FRIENDS_CACHE_URL": redis_url,
        "SCALELAB_NEARBY_FRIENDS_CACHE_NAMESPACE": f"nf-test-{uuid.uuid4().hex}",
        "SCALELAB_NEARBY_FRIENDS_DRAIN_SECONDS": "0.3",
    }
    yield spawn_server("nearby_friends", env), spawn_server("nearby_friends", env)


def register(http: httpx.Client, name: str) -> tuple[int, str]:
    body = http.post("/v1/users", json={"name": name}).json()
    return int(body["id"]), str(body["token"])


@contextlib.contextmanager
def socket(url: str, token: str) -> Iterator[Client]:
    with connect(url.replace("http://", "ws://") + f"/v1/ws?token={token}") as ws:
        client = Client(ws)
        assert client.recv()["type"] == "welcome"
        yield client


def test_friends_on_different_servers_see_each_other(two_servers: tuple[Any, Any]) -> None:
    a_srv, b_srv = two_servers
    with httpx.Client(base_url=a_srv.url, timeout=30) as http:
        a, b = register(http, "a"), register(http, "b")
        r = http.post(f"/v1/users/{a[0]}/friends", json={"friend_id": b[0]}, headers=auth(a[1]))
        assert r.status_code == 201, r.text
    with socket(a_srv.url, a[1]) as ca, socket(b_srv.url, b[1]) as cb:
        ca.location(HOME)
        cb.location(NEAR)
        got = ca.until(of("friend_location", b[0]))
        assert got["distance_m"] < 1100
        cb.until(of("friend_location", a[0]))
        # A friendship removed through server B's REST API reaches a's socket on server A.
        with httpx.Client(base_url=b_srv.url, timeout=30) as http:
            r = http.delete(f"/v1/users/{b[0]}/friends/{a[0]}", headers=auth(b[1]))
            assert r.status_code == 204
        ca.until(of("friend_removed", b[0]))
        # The snapshot on either server reads the shared Redis location cache.
        with httpx.Client(base_url=b_srv.url, timeout=30) as http:
            snap = http.get(f"/v1/users/{a[0]}/nearby-friends", headers=auth(a[1])).json()
        assert snap["friends"] == []  # b is no longer a friend


def test_a_draining_server_sends_clients_to_another(two_servers: tuple[Any, Any]) -> None:
    a_srv, b_srv = two_servers
    with httpx.Client(base_url=b_srv.url, timeout=30) as http:
        a, b = register(http, "a"), register(http, "b")
        http.post(f"/v1/users/{a[0]}/friends", json={"friend_id": b[0]}, headers=auth(a[1]))
    with socket(b_srv.url, b[1]) as cb:
        cb.location(NEAR)
        with socket(a_srv.url, a[1]) as ca:
            ca.location(HOME)
            ca.until(of("friend_location", b[0]))
            a_srv.proc.send_signal(signal.SIGTERM)  # scale down: server A drains
            hint = ca.until(of("reconnect"))
            assert hint["reason"] == "draining"
            with pytest.raises(ConnectionClosed) as closed:
                ca.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        # The client resumes on server B, where its cached location lists b at once.
        with socket(b_srv.url, a[1]) as again:
            again.location(HOME)
            cb.location(NEAR)
            assert again.until(of("friend_location", b[0]))["distance_m"] < 1100
    assert a_srv.proc.wait(15) == 0
    assert json.dumps(hint)  # the frame is plain JSON


def test_two_servers_on_a_ring_of_redis_pubsub_servers(
    spawn_server: Callable[..., Any], redis_url: str, tmp_path: Path
) -> None:
    """The book's pub/sub cluster: channels sharded over two Redis servers by the hash ring
    every WebSocket server builds from the same config; friends still meet across servers."""
    from tests.storage.test_pubsub import RedisServer, sync_client

    ring = [RedisServer(), RedisServer()]
    try:
        env = {
            "SCALELAB_DATA": str(tmp_path),
            "SCALELAB_NEARBY_FRIENDS_PUBSUB_RING": ",".join(r.url for r in ring),
            "SCALELAB_NEARBY_FRIENDS_CACHE_URL": redis_url,
            "SCALELAB_NEARBY_FRIENDS_CACHE_NAMESPACE": f"nf-test-{uuid.uuid4().hex}",
        }
        servers = [spawn_server("nearby_friends", env), spawn_server("nearby_friends", env)]
        with httpx.Client(base_url=servers[0].url, timeout=30) as http:
            users = [register(http, f"u{i}") for i in range(16)]
            for i in range(0, 16, 2):  # pairs (0,1), (2,3) ...: a friend on each server
                a, b = users[i], users[i + 1]
                http.post(f"/v1/users/{a[0]}/friends", json={"friend_id": b[0]}, headers=auth(a[1]))
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(socket(servers[i % 2].url, u[1])) for i, u in enumerate(users)
            ]
            for i in range(0, 16, 2):
                clients[i].location(HOME)
                clients[i + 1].location(NEAR)
            for i in range(0, 16, 2):
                clients[i].until(of("friend_location", users[i + 1][0]))
            channels = []
            for r in ring:
                with sync_client(r.url) as client:
                    channels.append({c.decode() for c in client.pubsub_channels("loc:*")})
        assert all(channels), channels  # both ring members carry some users' channels
        assert not channels[0] & channels[1]  # and each channel lives on one of them
    finally:
        for r in ring:
            r.stop()
