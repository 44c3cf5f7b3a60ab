"""A real S3 server on a free loopback port, and boto3 clients pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from scalelab.objectstore.server import create_app
from scalelab.objectstore.settings import ObjectStoreSettings
from scalelab.web import ServerThread

ACCESS, SECRET = "SLTESTACCESSKEY", "test-secret-key/with+chars"
OTHER_ACCESS, OTHER_SECRET = "SLOTHERKEY", "other-secret"


@dataclass
class S3Server:
    url: str
    settings: ObjectStoreSettings
    app: Any
    thread: ServerThread
    clients: list[Any] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the server (clean shutdown), closing the clients made for it."""
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.thread.stop()

    def client(
        self,
        access: str = ACCESS,
        secret: str = SECRET,
        *,
        addressing: str = "path",
        **config: Any,
    ) -> Any:
        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": addressing}, retries={"max_attempts": 1}, **config
            ),
        )
        self.clients.append(client)
        return client

    @property
    def runtime(self) -> Any:
        return self.app.state["rt"]


def make_settings(data: Path, **overrides: Any) -> ObjectStoreSettings:
    return ObjectStoreSettings.from_env(
        {},
        data=data,
        port=0,
        access_key=ACCESS,
        secret_key=SECRET,
        extra_credentials=f"{OTHER_ACCESS}:{OTHER_SECRET}",
        gc_interval_seconds=3600.0,
        **overrides,
    )


@pytest.fixture
def start_s3(tmp_path: Path) -> Iterator[Callable[..., S3Server]]:
    running: list[ServerThread] = []
    servers: list[S3Server] = []

    def start(data: Path | None = None, **overrides: Any) -> S3Server:
        settings = make_settings(data or tmp_path / "data", **overrides)
        app = create_app(settings)
        thread = ServerThread(app).start()
        running.append(thread)
        server = S3Server(thread.url, settings, app, thread)
        servers.append(server)
        return server

    yield start
    for server in servers:
        for client in server.clients:
            client.close()
    for thread in running:
        thread.stop()


@pytest.fixture
def s3server(start_s3: Callable[..., S3Server]) -> S3Server:
    return start_s3()


@pytest.fixture
def s3(s3server: S3Server) -> Any:
    return s3server.client()
