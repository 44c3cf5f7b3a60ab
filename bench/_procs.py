"""What every bench script does the same way: start `scalelab serve SYSTEM` and learn its
address, name package and tool versions, read a child's output line with a deadline, print
ratios, and run main() so that Ctrl-C or SIGTERM still cleans up."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

from _s3 import spawn

_READY = re.compile(r"listening on (?P<url>http://\S+)")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def launch_scalelab(
    system: str, sdir: Path, data: Path, log: IO[bytes], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Callable[[float], str], dict[str, Any]]:
    """`python -m scalelab serve SYSTEM` on a free port with data under `data`; returns the
    process, a function that waits (up to its timeout) for the URL the server prints, and
    facts for the report. stdout goes to sdir/stdout.log, drained so it never blocks."""
    full_env = {
        **os.environ,
        "SCALELAB_DATA": str(data),
        f"SCALELAB_{system.upper()}_HOST": "127.0.0.1",
        f"SCALELAB_{system.upper()}_PORT": "0",
        "SCALELAB_EXIT_WITH_PARENT": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    cmd = [sys.executable, "-m", "scalelab", "serve", system]
    proc = spawn(cmd, env=full_env, log=log, stdin_pipe=True, stdout_pipe=True)
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with (sdir / "stdout.log").open("wb") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                match = _READY.search(line.decode(errors="replace"))
                if match and not found:
                    found.append(match.group("url"))
                    ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True, name="scalelab stdout").start()

    def url(timeout: float) -> str:
        if not ready.wait(timeout) or not found:
            raise RuntimeError(f"scalelab printed no 'listening on' line (exit code {proc.poll()})")
        return found[0].rstrip("/")

    info = {"command": " ".join(cmd[1:]), "version": package_version("scalelab")}
    return proc, url, info


def run_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], tuple[dict[str, Any], bool]],
    log: Callable[[str], None],
) -> int:
    """Run the bench, print its JSON report; 130 when interrupted, 1 when a phase failed.

    SIGTERM becomes SystemExit and SIGINT KeyboardInterrupt (even when started with SIGINT
    ignored, as background jobs of a script are), so every cleanup still runs."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report, ok = run(args)
    except KeyboardInterrupt:
        log("interrupted: servers and loaders stopped, temp dirs removed")
        return 130
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


def ratio(a: float | None, b: float | None) -> float | None:
    """ours / theirs, rounded; None when either side has no figure."""
    if not a or not b:
        return None
    return round(a / b, 4)


def tool_version(cmd: Sequence[str]) -> str | None:
    """The first line a tool prints about its version, or None if it cannot be run."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def log_tail(path: Path, lines: int = 10) -> str:
    """The end of a server's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def readline(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """One stdout line, or b"" if the deadline passes (the reader thread is abandoned)."""
    stdout = proc.stdout
    assert stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.1, deadline - time.monotonic()))
    return box[0] if box else b""
