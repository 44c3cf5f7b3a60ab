"""A real broker on a free loopback port, in a thread of its own, for client tests."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scalelab.message_queue.server import BrokerServer
from scalelab.message_queue.settings import MessageQueueSettings


@dataclass
class RunningBroker:
    server: BrokerServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., RunningBroker]]:
    running: list[RunningBroker] = []

    def start(data: Path | None = None, **overrides: Any) -> RunningBroker:
        settings = MessageQueueSettings.from_env({}, data=data or tmp_path / "data", port=0,
                                                 **overrides)  # fmt: skip
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True, name="broker")
        thread.start()
        server = BrokerServer(settings)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        running.append(RunningBroker(server, loop, thread))
        return running[-1]

    yield start
    for b in running:
        if b.thread.is_alive():
            b.stop()


@pytest.fixture(autouse=True)
def collect_client_sockets() -> Iterator[None]:
    """kafka-python leaves a socket unclosed when a connect to a stopped broker fails; collect
    it inside the test that caused it (its ResourceWarning is the client's, not ours), so it
    cannot surface as an unraisable warning in whichever test runs next."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def broker(start_broker: Callable[..., RunningBroker]) -> RunningBroker:
    return start_broker()
