"""The shared app factory: error shapes, health, metrics; tested in-process via ASGI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from scalelab.web import HTTPError, ServerThread, create_app

router = APIRouter()


class Conflict(Exception):
    code = "already_there"


class Body(BaseModel):
    size: int


@router.post("/things/{n}")
def make(n: int, body: Body) -> dict[str, Any]:
    if n == 1:
        raise Conflict("thing 1 exists")
    if n == 2:
        raise HTTPError(418, "teapot", "short and stout")
    if n == 3:
        raise RuntimeError("bug")
    return {"n": n, "size": body.size}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    healthy = {"ok": True}

    async def health() -> dict[str, Any]:
        if not healthy["ok"]:
            raise ConnectionError("database down")
        return {"extra": 1}

    app = create_app("demo", routers=[router], error_statuses={Conflict: 409}, health=health)
    app.state.healthy = healthy
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as c:
        c.healthy = healthy  # type: ignore[attr-defined]
        yield c


def test_errors_have_one_shape(client: httpx.Client) -> None:
    ok = client.post("/things/5", json={"size": 3})
    assert ok.status_code == 200 and ok.json() == {"n": 5, "size": 3}
    cases = [
        (client.post("/things/5", json={"size": "big"}), 422, "validation_error"),
        (client.post("/things/1", json={"size": 1}), 409, "already_there"),
        (client.post("/things/2", json={"size": 1}), 418, "teapot"),
        (client.post("/things/3", json={"size": 1}), 500, "internal_error"),
        (client.get("/nowhere"), 404, "not_found"),
        (client.get("/things/5"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200  # a crash did not take it down


def test_validation_names_the_field(client: httpx.Client) -> None:
    err = client.post("/things/5", json={"size": "big"}).json()["error"]
    assert err["fields"][0]["field"] == "size" and "size" in err["message"]


def test_health_reports_failing_dependency(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "system": "demo", "extra": 1}
    client.healthy["ok"] = False  # type: ignore[attr-defined]
    r = client.get("/healthz")
    assert r.status_code == 503 and "database down" in r.json()["reason"]


def test_metrics_use_route_templates(client: httpx.Client) -> None:
    for n in (5, 6, 7):
        client.post(f"/things/{n}", json={"size": 1})
    client.get("/random/path/1")
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/things/{n}",status="200"} 3.0' in text
    assert 'route="unmatched"' in text and "/random/path" not in text


def test_accepted_connections_have_nodelay() -> None:
    """Without TCP_NODELAY a response split in two writes waits for a delayed ACK (~40 ms)."""
    import socket

    from scalelab.web import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
