"""Shared fixtures: databases for the one-contract-every-backend tests, and real servers.

PostgreSQL and Redis come from SCALELAB_TEST_POSTGRES_URL / SCALELAB_TEST_REDIS_URL (defaults:
the loopback services). A test that needs one is skipped, with the reason, only when the
service cannot be reached.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import Engine, text

from scalelab.storage import sql

# Deadlines are timing assertions: on a loaded 2-core machine they fail for no reason.
settings.register_profile("scalelab", deadline=None)
settings.load_profile("scalelab")

POSTGRES_URL = os.environ.get(
    "SCALELAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("SCALELAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _postgres_admin() -> Engine:
    engine = sql.create_engine(POSTGRES_URL, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}")
    return engine


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A new PostgreSQL schema, dropped on exit (skips the test if PostgreSQL is down)."""
    admin = _postgres_admin()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield schema
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; yields a URL-ready schema name."""
    with fresh_postgres_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same tests against SQLite and PostgreSQL: one contract, every backend."""
    if request.param == "sqlite":
        engine = sql.create_engine(sql.sqlite_url(tmp_path / "test.db"))
    else:
        schema = request.getfixturevalue("postgres_schema")
        engine = sql.create_engine(POSTGRES_URL, schema=schema)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_url() -> str:
    try:
        import redis
    except ImportError:
        pytest.skip("redis-py not installed (pip install 'scalelab[redis]')")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {type(exc).__name__}")
    finally:
        client.close()
    return REDIS_URL


class SpawnedServer:
    """`scalelab serve SYSTEM --port 0` as a real child process, for crash and CLI tests."""

    def __init__(
        self, proc: subprocess.Popen[str], url: str, output: list[str], pump: threading.Thread
    ) -> None:
        self.proc = proc
        self.url = url
        self.output = output
        self._pump = pump

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no flushing; what was acknowledged must survive."""
        self.proc.kill()
        self._reap()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        self.proc.wait(10)
        self._pump.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def spawn_server() -> Iterator[Callable[..., SpawnedServer]]:
    started: list[SpawnedServer] = []

    def spawn(system: str, env: dict[str, str], *args: str, timeout: float = 60) -> SpawnedServer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "scalelab", "serve", system, "--port", "0", *args],
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output: list[str] = []
        found = threading.Event()
        url: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                m = re.search(r"listening on (\S+)", line)
                if m and not url:
                    url.append(m.group(1))
                    found.set()
            found.set()

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        if not found.wait(timeout) or not url:
            SpawnedServer(proc, "", output, thread).kill()
            raise RuntimeError(f"{system} did not start: {''.join(output)}")
        server = SpawnedServer(proc, url[0], output, thread)
        started.append(server)
        return server

    yield spawn
    for server in started:
        server.stop()
