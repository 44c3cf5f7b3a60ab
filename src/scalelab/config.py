"""Settings: one frozen dataclass per system, filled from the environment.

Each system subclasses `SystemSettings` and declares its fields with `setting(...)`. That one
table (name, default, help) is read three ways: `from_env` builds the object from
`SCALELAB_<SYSTEM>_<NAME>` variables (and `SCALELAB_DATA` for the data directory), the CLI prints
it in `--help`, and `describe` feeds the docs. Nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

DATA_ENV = "SCALELAB_DATA"
DEFAULT_DATA = Path(".scalelab-data")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting from the environment or the command line could not be parsed."""


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """Declare a setting: its default and the one line of help the CLI and docs show."""
    return field(default=default, metadata={"help": help, "secret": secret})


def env_name(system: str, name: str) -> str:
    if name == "data":
        return DATA_ENV
    return f"SCALELAB_{system.upper()}_{name.upper()}"


def _parse(raw: str, kind: Any, name: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw == "":
            return None
        return _parse(raw, args[0], name)
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
        if kind is str:
            return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None
    raise SettingsError(f"{name}: unsupported setting type {kind!r}")


@dataclass(frozen=True)
class SystemSettings:
    """What every system has: where its data lives and where it listens."""

    system: ClassVar[str] = ""

    data: Path = setting(DEFAULT_DATA, "data directory shared by all systems (one folder each)")
    host: str = setting("127.0.0.1", "interface to listen on")
    port: int = setting(0, "port to listen on (0 picks a free port)")

    @property
    def data_dir(self) -> Path:
        """This system's own folder under the data directory, created on first use."""
        path = self.data / self.system
        path.mkdir(parents=True, exist_ok=True)
        return path

    def dev_secret(self, configured: str | None, filename: str, prefix: str) -> str:
        """The configured secret, or a dev one generated once and kept (0600) in the data dir,
        so a laptop run needs no set-up and a restart keeps the same key."""
        if configured:
            return configured
        path = self.data_dir / filename
        if not path.exists():
            path.write_text(f"{prefix}-{secrets.token_urlsafe(18)}\n")
            path.chmod(0o600)
        return path.read_text().strip()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Defaults, then the environment, then explicit overrides (CLI flags, tests)."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = env_name(cls.system, f.name)
            if f.name in overrides and overrides[f.name] is not None:
                value = overrides[f.name]
                # strings (CLI flags, scripts) are parsed like the environment's
                if isinstance(value, str) and hints[f.name] is not str:
                    value = _parse(value, hints[f.name], f"--{f.name}")
                values[f.name] = value
            elif name in env:
                values[f.name] = _parse(env[name], hints[f.name], name)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown settings for {cls.system}: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, help) for every setting."""
        rows = []
        for f in dataclasses.fields(cls):
            default = "" if f.default is None else str(f.default)
            rows.append((env_name(cls.system, f.name), default, str(f.metadata.get("help", ""))))
        return rows

    def public(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and the console."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = "***" if f.metadata.get("secret") and value else value
        return out
