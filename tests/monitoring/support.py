"""What several monitoring test modules share: bounded polling, and a real server on port 0."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scalelab.monitoring.server import create_app
from scalelab.monitoring.settings import MonitoringSettings
from scalelab.web import ServerThread


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll check until it returns something truthy (and return that), at most timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s (last: {result!r})")
        time.sleep(0.05)


@contextmanager
def running_server(data: Path, **overrides: Any) -> Iterator[str]:
    """Our monitoring server in a thread, on a free loopback port; yields its URL."""
    settings = MonitoringSettings.from_env({}, data=data, port=0, **overrides)
    server = ServerThread(create_app(settings)).start()
    try:
        yield server.url
    finally:
        server.stop()
