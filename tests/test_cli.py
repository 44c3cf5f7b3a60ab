"""The CLI: help everywhere (CliRunner), and `up` / `serve` as real process trees."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from click.testing import CliRunner

from scalelab.cli import main
from scalelab.systems import SYSTEMS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaProducer


@pytest.mark.parametrize("args", [[], ["serve"], ["up"], ["bench"], ["settings"], ["systems"]])
def test_help_everywhere(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_systems_table_lists_all_nine() -> None:
    result = CliRunner().invoke(main, ["systems"])
    assert result.exit_code == 0
    for s in SYSTEMS:
        assert s.cli_name in result.output


def test_settings_show_environment_names() -> None:
    result = CliRunner().invoke(main, ["settings", "proximity"], terminal_width=200)
    assert result.exit_code == 0
    assert "SCALELAB_PROXIMITY_DATABASE_URL" in result.output and "SCALELAB_DATA" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["serve", "nosuch"], "unknown system"),
        (["serve", "maps"], "not implemented"),
        (["settings", "adclick"], "not implemented"),
        (["bench", "bogus"], "unknown system"),
    ],
)
def test_clear_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output


def test_bad_setting_in_environment_is_reported() -> None:
    result = CliRunner().invoke(
        main, ["serve", "proximity"], env={"SCALELAB_PROXIMITY_INDEX_REFRESH_SECONDS": "soon"}
    )
    assert result.exit_code != 0
    assert "SCALELAB_PROXIMITY_INDEX_REFRESH_SECONDS" in result.output


def test_unknown_hotel_strategy_is_a_clear_error(tmp_path: Path) -> None:
    env = {"SCALELAB_DATA": str(tmp_path), "SCALELAB_HOTEL_CONCURRENCY": "bogus"}
    result = CliRunner().invoke(main, ["serve", "hotel", "--port", "0"], env=env)
    assert result.exit_code != 0
    assert "SCALELAB_HOTEL_CONCURRENCY" in result.output and "pessimistic" in result.output
    assert "Traceback" not in result.output


class Lines:
    """Collects a child's output lines in a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            if self._proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen in:\n{''.join(self.lines)}")

    def close(self) -> None:
        self._thread.join(10)
        assert self._proc.stdout is not None
        self._proc.stdout.close()


@contextlib.contextmanager
def running(args: list[str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """`python -m scalelab ARGS` on free ports; killed afterwards if the test did not stop it."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "SCALELAB_DATA": str(tmp_path),
        "SCALELAB_PROXIMITY_PORT": "0",
        "SCALELAB_OBJECTSTORE_PORT": "0",
        "SCALELAB_MESSAGE_QUEUE_PORT": "0",
        "SCALELAB_MESSAGE_QUEUE_HTTP_PORT": "0",
        "SCALELAB_CONSOLE_PORT": "0",
        "SCALELAB_PROXIMITY_DEMO_BUSINESSES": "500",
        "COLUMNS": "200",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalelab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Lines(proc)
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def test_up_demo_serves_search_and_console_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    with running(["up", "--demo"], tmp_path) as (proc, out):
        out.wait_for("Press Ctrl-C")
        text = "".join(out.lines)
        prox = re.search(r"proximity\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        cons = re.search(r"console\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        assert prox and cons, text
        assert "dev API key" in text
        r = httpx.get(
            f"{prox.group(1)}/v1/search/nearby",
            params={"latitude": 37.7749, "longitude": -122.4194, "radius": 20000},
        )
        assert r.status_code == 200 and r.json()["total"] > 0, r.text
        systems = httpx.get(f"{cons.group(1)}/api/systems", timeout=30).json()["systems"]
        assert {s["system"]: s["status"] for s in systems}["proximity"] == "healthy", systems
        assert prox.group(1) in httpx.get(cons.group(1)).text
        store = re.search(r"objectstore\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        access = re.search(r"dev access key: (\S+)", text)
        secret = re.search(r"dev secret key: (\S+)", text)
        assert store and access and secret, text
        s3 = boto3.client(
            "s3",
            endpoint_url=store.group(1),
            aws_access_key_id=access.group(1),
            aws_secret_access_key=secret.group(1),
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket="from-up")
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["from-up"]
        s3.close()
        mq = re.search(r"message_queue\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        kafka = re.search(r"kafka bootstrap: (127\.0\.0\.1:\d+)", text)
        assert mq and kafka, text
        producer = KafkaProducer(bootstrap_servers=kafka.group(1), acks="all")
        producer.send("from-up", b"hello").get(timeout=10)
        producer.close()
        assert (
            'scalelab_mq_log_end_offset{partition="0",topic="from-up"} 1.0'
            in httpx.get(f"{mq.group(1)}/metrics").text
        )
        mon = re.search(r"monitoring\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        assert mon, text
        deadline = time.monotonic() + 60  # file_sd refresh (5 s) + the first scrape (<= 15 s)
        up: dict[str, str] = {}
        while time.monotonic() < deadline and len(up) < 6:
            result = httpx.get(f"{mon.group(1)}/api/v1/query", params={"query": "up"}).json()
            up = {r["metric"]["system"]: r["value"][1] for r in result["data"]["result"]}
            time.sleep(0.5)
        assert up == dict.fromkeys(
            ["hotel", "message_queue", "monitoring", "nearby_friends", "objectstore", "proximity"],
            "1",
        )
        hotel = re.search(r"hotel\s*│\s*(http://127\.0\.0\.1:\d+)\s*│\s*healthy", text)
        staff = re.search(r"dev staff token: (\S+)", text)
        assert hotel and staff, text
        demo_hotel = httpx.get(f"{hotel.group(1)}/v1/hotels/1").json()
        assert [t["name"] for t in demo_hotel["roomTypes"]] == ["Single", "Double", "Suite"]
        created = httpx.post(
            f"{hotel.group(1)}/v1/hotels",
            json={"name": "From up"},
            headers={"Authorization": f"Bearer {staff.group(1)}"},
        )
        assert created.status_code == 201, created.text
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        child_pids = [int(p) for p in children.stdout.split()]
        assert child_pids
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "".join(out.lines)
    tail = "".join(out.lines)
    assert "stopped" in tail and "Traceback" not in tail, tail
    for pid in child_pids:  # the process tree is gone, not orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_serve_port_zero_prints_address_and_stops_cleanly(tmp_path: Path) -> None:
    with running(["serve", "proximity", "--port", "0"], tmp_path) as (proc, out):
        url = out.wait_for(r"proximity listening on (http://127\.0\.0\.1:(\d+))")
        assert int(url.group(2)) > 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url.group(1)}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("never healthy")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    assert "Traceback" not in "".join(out.lines)


def test_up_children_exit_when_up_is_killed(tmp_path: Path) -> None:
    with running(["up"], tmp_path) as (proc, out):
        out.wait_for("Press Ctrl-C")
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        child_pids = [int(p) for p in children.stdout.split()]
        assert child_pids
        proc.kill()  # kill -9: the parent gets no chance to stop its children
        proc.wait()
        deadline = time.monotonic() + 30
        alive = child_pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            time.sleep(0.1)
        assert alive == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead but not yet reaped by init
    with contextlib.suppress(FileNotFoundError):
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False
