"""kill -9 during concurrent PUTs: every acknowledged object survives, none is torn."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from tests.objectstore.conftest import ACCESS, SECRET


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10),
    )


def _body(key: str) -> bytes:
    """Deterministic content per key, sized from 0 to ~600 KiB so records span chunks."""
    seed = hashlib.sha256(key.encode()).digest()
    size = int.from_bytes(seed[:3], "big") % (600 << 10)
    return (seed * (size // 32 + 1))[:size]


def test_acknowledged_objects_survive_kill_9(
    spawn_server: Callable[..., Any], tmp_path: Path
) -> None:
    env = {
        "SCALELAB_DATA": str(tmp_path),
        "SCALELAB_OBJECTSTORE_ACCESS_KEY": ACCESS,
        "SCALELAB_OBJECTSTORE_SECRET_KEY": SECRET,
        "SCALELAB_OBJECTSTORE_CHUNK_BYTES": str(128 << 10),
        "SCALELAB_OBJECTSTORE_DATA_FILE_BYTES": str(4 << 20),
    }
    server = spawn_server("objectstore", env)
    setup = _client(server.url)
    setup.create_bucket(Bucket="crash")
    setup.close()
    acked: list[str] = []
    attempted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(worker: int) -> None:
        s3 = _client(server.url)
        i = 0
        while not stop.is_set():
            key = f"w{worker}/obj-{i:05d}"
            with lock:
                attempted.append(key)
            try:
                s3.put_object(Bucket="crash", Key=key, Body=_body(key))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                break
            with lock:
                acked.append(key)
            i += 1
        s3.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # mid-flight: several PUTs are between data and metadata commits
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 50, "too few writes acknowledged before the kill to mean anything"

    again = spawn_server("objectstore", env)
    s3 = _client(again.url)
    try:
        for key in acked:
            got = s3.get_object(Bucket="crash", Key=key)["Body"].read()
            assert got == _body(key), f"acknowledged {key} came back different"
        listed = set()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash"):
            listed.update(o["Key"] for o in page.get("Contents", []))
        assert set(acked) <= listed
        for key in set(attempted) - set(acked):
            if key in listed:  # committed but the reply was lost: must be whole
                assert s3.get_object(Bucket="crash", Key=key)["Body"].read() == _body(key)
        assert listed <= set(attempted)
    finally:
        s3.close()
    runtime_check = again.output
    assert not any("Traceback" in line for line in runtime_check), "".join(runtime_check)
