"""Real hotel servers on free loopback ports, on SQLite or on a fresh PostgreSQL schema."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from scalelab.hotel.payment import PaymentProvider
from scalelab.hotel.server import create_app
from scalelab.hotel.settings import HotelSettings
from scalelab.web import ServerThread
from tests.conftest import POSTGRES_URL

STAFF = "staff-test-token"


class VirtualClock:
    """Epoch seconds that only move when a test says so (CONVENTIONS 7)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class HotelApi:
    """httpx on a real hotel server: staff calls, guest registration, booking helpers."""

    _emails = itertools.count()

    def __init__(self, url: str, app: Any) -> None:
        self.url = url
        self.app = app
        self.http = httpx.Client(base_url=url, timeout=60)
        self.staff = {"Authorization": f"Bearer {STAFF}"}

    def close(self) -> None:
        self.http.close()

    def ok(self, response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def hotel(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "Hotel")
        return self.ok(self.http.post("/v1/hotels", json=body, headers=self.staff), 201)

    def room_type(self, hotel_id: int, inventory: int, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "Double")
        body.setdefault("basePrice", "100.00")
        body["totalInventory"] = inventory
        r = self.http.post(f"/v1/hotels/{hotel_id}/room-types", json=body, headers=self.staff)
        return self.ok(r, 201)

    def guest(self, name: str = "Guest") -> dict[str, str]:
        """Register a guest; the Authorization header to act as them."""
        email = f"guest{next(self._emails)}@example.org"
        data = self.ok(self.http.post("/v1/guests", json={"name": name, "email": email}), 201)
        return {"Authorization": f"Bearer {data['token']}"}

    def book(
        self,
        headers: dict[str, str],
        reservation_id: str,
        hotel_id: int,
        room_type_id: int,
        start: date,
        nights: int = 1,
        **extra: Any,
    ) -> httpx.Response:
        body = {
            "reservationID": reservation_id,
            "hotelID": hotel_id,
            "roomTypeID": room_type_id,
            "startDate": start.isoformat(),
            "endDate": (start + timedelta(days=nights)).isoformat(),
            **extra,
        }
        return self.http.post("/v1/reservations", json=body, headers=headers)


StartHotel = Callable[..., HotelApi]


@pytest.fixture
def start_hotel(tmp_path: Path) -> Iterator[StartHotel]:
    """start(backend="sqlite"|"postgres", clock=..., provider=..., **settings) -> HotelApi."""
    servers: list[ServerThread] = []
    clients: list[HotelApi] = []
    counter = itertools.count()

    def start(
        backend: str = "sqlite",
        *,
        clock: Callable[[], float] | None = None,
        provider: PaymentProvider | None = None,
        schema: str | None = None,
        **overrides: Any,
    ) -> HotelApi:
        overrides.setdefault("inventory_horizon_days", 60)
        if backend == "postgres":
            assert schema is not None, "pass schema=postgres_schema for PostgreSQL"
            overrides.setdefault("database_url", POSTGRES_URL)
        data = tmp_path / f"data{next(counter)}"
        settings = HotelSettings.from_env({}, data=data, staff_token=STAFF, **overrides)
        kwargs: dict[str, Any] = {"provider": provider, "schema_name": schema}
        if clock is not None:
            kwargs["clock"] = clock
        app = create_app(settings, **kwargs)
        server = ServerThread(app).start()
        servers.append(server)
        api = HotelApi(server.url, app)
        clients.append(api)
        return api

    yield start
    for api in clients:
        api.close()
    for server in servers:
        server.stop()
