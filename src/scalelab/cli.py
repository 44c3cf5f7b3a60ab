"""The `scalelab` command: run one system, all of them, or a bench.

`scalelab serve SYSTEM` runs a system in the foreground and prints the address it listens on
(port 0 picks a free one). `scalelab up` starts every implemented system as a child process
(`scalelab serve`), the console in this process, prints a table, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.table import Table

from scalelab import __version__, web
from scalelab.config import DATA_ENV, DEFAULT_DATA, SettingsError
from scalelab.hotel import cli as hotel_cli
from scalelab.message_queue import cli as message_queue_cli
from scalelab.monitoring import cli as monitoring_cli
from scalelab.objectstore import cli as objectstore_cli
from scalelab.systems import CONSOLE_PORT, SYSTEMS, SystemInfo, lookup

console = Console(highlight=False)
_READY = re.compile(r"^(?P<name>[a-z_]+) listening on (?P<url>\S+)")


def _system(name: str) -> SystemInfo:
    try:
        return lookup(name)
    except LookupError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scalelab")
def main() -> None:
    """Nine large-scale systems from System Design Interview vol. 2, as real servers.

    Every setting also comes from the environment: SCALELAB_DATA (the data directory) and
    SCALELAB_<SYSTEM>_<SETTING>; see `scalelab settings SYSTEM`.
    """


@main.command()
@click.argument("system")
@click.option("--host", default=None, help="interface to listen on (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port; 0 picks a free port and prints it")
@click.option("--demo", is_flag=True, help="load demo data when the store is empty")
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help=f"data dir (${DATA_ENV})"
)
def serve(system: str, host: str | None, port: int | None, demo: bool, data: Path | None) -> None:
    """Run one SYSTEM in the foreground (proximity, message-queue, objectstore, ...)."""
    info = _system(system)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        server = info.server()
        settings = server.SETTINGS.from_env(host=host, port=port, data=data)
    except (LookupError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from None

    def announce(url: str, extra: dict[str, str]) -> None:
        # Extras first, the address last: `up` reads that line as "ready".
        for key, value in extra.items():
            click.echo(f"  {key}: {value}")
        click.echo(f"{info.name} listening on {url}")
        sys.stdout.flush()

    if os.environ.get(_WATCH_PARENT) == "1":
        threading.Thread(target=_exit_with_parent, daemon=True, name="parent watch").start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            web.run(server.serve(settings, demo=demo, announce=announce))
    except SettingsError as exc:  # a config file the system read at start-up is wrong
        raise click.ClickException(str(exc)) from None


_WATCH_PARENT = "SCALELAB_EXIT_WITH_PARENT"


def _exit_with_parent() -> None:
    """Under `up`, stdin is a pipe from the parent: EOF means it died (even by kill -9), so
    shut down cleanly rather than live on as an orphan holding a port."""
    sys.stdin.read()
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Child:
    info: SystemInfo
    proc: subprocess.Popen[str]
    url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)

    def pump(self) -> None:
        """Forward the child's output, noting its extra lines and then its address."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            match = _READY.match(line)
            if self.url is None and match:
                self.url = match.group("url")
                self.ready.set()
            elif self.url is None and line.startswith("  ") and ": " in line:
                key, _, value = line.strip().partition(": ")
                self.extra[key] = value
            else:
                console.print(f"{self.info.name} | {line}", markup=False, soft_wrap=True)
        self.ready.set()


def _wait_healthy(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):  # not listening yet: poll again
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return "healthy"
        time.sleep(0.2)
    return "not healthy"


def _stop(children: list[_Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


@main.command()
@click.option("--demo", is_flag=True, help="load demo data into systems whose store is empty")
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help=f"data dir (${DATA_ENV})"
)
@click.option(
    "--console-port",
    type=int,
    default=lambda: int(os.environ.get("SCALELAB_CONSOLE_PORT", CONSOLE_PORT)),
    help="console port (env SCALELAB_CONSOLE_PORT; 0 picks a free port)",
)
@click.option("--timeout", type=float, default=120.0, help="seconds to wait for each system")
def up(demo: bool, data: Path | None, console_port: int, timeout: float) -> None:
    """Start every implemented system and the console; Ctrl-C stops them all."""
    from scalelab.console import create_app as create_console
    from scalelab.web import HTTPServer

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{_WATCH_PARENT: "1"})
    if data is not None:
        env[DATA_ENV] = str(data)
    children: list[_Child] = []
    try:
        for info in SYSTEMS:
            if not info.implemented:
                continue
            cmd = [sys.executable, "-m", "scalelab", "serve", info.name]
            if demo:
                cmd.append("--demo")
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            child = _Child(info, proc)
            threading.Thread(target=child.pump, daemon=True, name=f"pump {info.name}").start()
            children.append(child)
        table = Table(title="scalelab")
        for col in ("system", "URL", "status"):
            table.add_column(col)
        urls: dict[str, str] = {}
        for child in children:
            child.ready.wait(timeout)
            if child.url is None:
                table.add_row(child.info.name, "-", "failed to start")
                continue
            urls[child.info.name] = child.url
            status = _wait_healthy(child.url, timeout)
            table.add_row(child.info.name, child.url, status)
            for key, value in child.extra.items():
                table.add_row("", f"{key}: {value}", "")
        _write_scrape_targets(data, urls)
        server = HTTPServer(create_console(urls), "127.0.0.1", console_port)
        table.add_row("console", server.url, "healthy")
        for info in SYSTEMS:
            if not info.implemented:
                table.add_row(info.name, "-", f"planned (issue {info.issue})")
        console.print(table)
        console.print("Press Ctrl-C to stop.")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            web.run(server.serve())
    finally:
        _stop(children)
        console.print("stopped")


def _write_scrape_targets(data: Path | None, urls: dict[str, str]) -> None:
    """List every system's /metrics for the monitoring system's default scrape job (file_sd:
    it notices the file appear). Written whole and renamed, so it is never read half done."""
    from scalelab.monitoring.settings import SCALELAB_TARGETS

    root = data if data is not None else Path(os.environ.get(DATA_ENV, str(DEFAULT_DATA)))
    path = root / "monitoring" / SCALELAB_TARGETS
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = [
        {"targets": [url.split("://", 1)[1]], "labels": {"system": name}}
        for name, url in sorted(urls.items())
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    tmp.replace(path)


@main.command()
@click.argument("system")
@click.option("--quick", is_flag=True, help="a small run that finishes in under a minute")
def bench(system: str, quick: bool) -> None:
    """Run bench/SYSTEM.py from the source checkout; it prints JSON figures."""
    info = _system(system)
    candidates = [
        Path.cwd() / "bench" / f"{info.name}.py",
        Path(__file__).resolve().parents[2] / "bench" / f"{info.name}.py",
    ]
    script = next((p for p in candidates if p.exists()), None)
    if script is None:
        raise click.ClickException(
            f"no bench/{info.name}.py here; run from a scalelab source checkout"
        )
    args = [sys.executable, str(script), *(["--quick"] if quick else [])]
    raise SystemExit(subprocess.call(args))


@main.command()
@click.argument("system")
def settings(system: str) -> None:
    """Show SYSTEM's settings: environment variable, default, meaning."""
    info = _system(system)
    try:
        cls = info.server().SETTINGS
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"{info.name} settings")
    table.add_column("environment variable", no_wrap=True)
    table.add_column("default")
    table.add_column("meaning")
    for row in cls.describe():
        table.add_row(*row)
    console.print(table)


@main.command(name="systems")
def list_systems() -> None:
    """List the nine systems with their protocol, default port and status."""
    table = Table()
    for col in ("ch.", "system", "protocol", "port", "status"):
        table.add_column(col)
    for s in SYSTEMS:
        status = "implemented" if s.implemented else f"planned (issue {s.issue})"
        table.add_row(str(s.chapter), s.cli_name, s.protocol, str(s.port), status)
    console.print(table)


main.add_command(objectstore_cli.objectstore)
main.add_command(message_queue_cli.message_queue)
main.add_command(monitoring_cli.monitoring)
main.add_command(hotel_cli.hotel)
