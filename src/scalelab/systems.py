"""The nine systems: what each is, where it listens, and whether it is built yet.

The CLI, the console and the README table read this one list. An implemented system's
`server` module provides `SETTINGS` (its settings class) and
`async serve(settings, *, demo, announce)`; the registry imports it lazily by name so the
systems stay independent of each other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, cast

from scalelab.config import SystemSettings

Announce = Callable[[str, dict[str, str]], None]


class SystemServer(Protocol):
    SETTINGS: type[SystemSettings]

    def serve(
        self, settings: SystemSettings, *, demo: bool, announce: Announce
    ) -> Coroutine[Any, Any, None]: ...


@dataclass(frozen=True)
class SystemInfo:
    name: str
    chapter: int
    title: str
    protocol: str
    port: int
    issue: int
    implemented: bool

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def server(self) -> SystemServer:
        if not self.implemented:
            raise LookupError(f"{self.name} is not implemented yet (issue {self.issue})")
        module = importlib.import_module(f"scalelab.{self.name}.server")
        return cast(SystemServer, module)


SYSTEMS: tuple[SystemInfo, ...] = (
    SystemInfo("proximity", 1, "Proximity service", "REST", 8081, 2, True),
    SystemInfo("nearby_friends", 2, "Nearby friends", "WebSocket + REST", 8082, 7, True),
    SystemInfo("maps", 3, "Google Maps", "REST + PNG tiles", 8083, 10, False),
    SystemInfo(
        "message_queue", 4, "Distributed message queue", "Kafka wire protocol", 9092, 4, True
    ),
    SystemInfo("monitoring", 5, "Metrics monitoring and alerting", "Prometheus API", 9090, 5, True),
    SystemInfo("adclick", 6, "Ad click event aggregation", "Kafka + REST", 8084, 8, False),
    SystemInfo("hotel", 7, "Hotel reservation", "REST", 8085, 6, True),
    SystemInfo("mail", 8, "Distributed email", "SMTP, IMAP, REST, WebSocket", 8086, 9, False),
    SystemInfo("objectstore", 9, "S3-like object storage", "S3 API", 9000, 3, True),
)

CONSOLE_PORT = 8080


def lookup(name: str) -> SystemInfo:
    """Find a system by its package name, with '-' or '_'."""
    key = name.strip().lower().replace("-", "_")
    for info in SYSTEMS:
        if info.name == key:
            return info
    names = ", ".join(s.cli_name for s in SYSTEMS)
    raise LookupError(f"unknown system {name!r}; choose from {names}")
