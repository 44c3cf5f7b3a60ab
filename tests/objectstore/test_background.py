"""Lifecycle rules, garbage collection, fsck, corruption and CORS, through the real server."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import pytest
from click.testing import CliRunner

from scalelab.cli import main
from tests.objectstore.conftest import S3Server


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_lifecycle_expires_objects_versions_and_uploads(start_s3: Callable[..., S3Server]) -> None:
    server = start_s3(lifecycle_day_seconds=1.0, lifecycle_interval_seconds=0.2)
    s3 = server.client()
    s3.create_bucket(Bucket="life")
    s3.put_object(Bucket="life", Key="tmp/a", Body=b"a")
    s3.put_object(Bucket="life", Key="keep/b", Body=b"b")
    up = s3.create_multipart_upload(Bucket="life", Key="tmp/abandoned")["UploadId"]
    s3.upload_part(Bucket="life", Key="tmp/abandoned", UploadId=up, PartNumber=1, Body=b"p")
    s3.put_bucket_lifecycle_configuration(
        Bucket="life",
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "tmp",
                    "Status": "Enabled",
                    "Filter": {"Prefix": "tmp/"},
                    "Expiration": {"Days": 2},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2},
                }
            ]
        },
    )
    rules = s3.get_bucket_lifecycle_configuration(Bucket="life")["Rules"]
    assert rules[0]["ID"] == "tmp" and rules[0]["Expiration"]["Days"] == 2
    assert keys(s3, "life") == ["keep/b", "tmp/a"]
    wait_for(lambda: keys(s3, "life") == ["keep/b"])
    wait_for(lambda: "Uploads" not in s3.list_multipart_uploads(Bucket="life"))

    s3.create_bucket(Bucket="life-ver")
    s3.put_bucket_versioning(Bucket="life-ver", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="life-ver", Key="k", Body=b"old")
    s3.put_object(Bucket="life-ver", Key="k", Body=b"new")
    s3.put_bucket_lifecycle_configuration(
        Bucket="life-ver",
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": "noncurrent",
                    "Status": "Enabled",
                    "Filter": {},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                }
            ]
        },
    )

    def versions() -> list[bytes] | None:
        found = s3.list_object_versions(Bucket="life-ver").get("Versions", [])
        try:
            return [
                s3.get_object(Bucket="life-ver", Key="k", VersionId=v["VersionId"])["Body"].read()
                for v in found
            ]
        except botocore.exceptions.ClientError:  # expired between the listing and the GET
            return None

    wait_for(lambda: versions() == [b"new"])
    s3.delete_bucket_lifecycle(Bucket="life")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_bucket_lifecycle_configuration(Bucket="life")
    assert exc.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"


def test_garbage_collection_shrinks_disk(start_s3: Callable[..., S3Server], tmp_path: Path) -> None:
    server = start_s3(chunk_bytes=64 << 10, data_file_bytes=1 << 20)
    s3 = server.client()
    s3.create_bucket(Bucket="gcb")
    payloads = {f"obj{i:03d}": os.urandom(50_000) for i in range(120)}
    for key, body in payloads.items():
        s3.put_object(Bucket="gcb", Key=key, Body=body)
    for key in list(payloads)[:100]:
        s3.delete_object(Bucket="gcb", Key=key)
        del payloads[key]
    node_dir = tmp_path / "data" / "objectstore" / "node0"

    def disk() -> int:
        return sum(p.stat().st_size for p in node_dir.glob("*.dat"))

    server.runtime.store.reclaimer.flush()
    before = disk()
    report = server.runtime.node.compact(0.5)
    assert report["files_compacted"] >= 1
    after = disk()
    assert after < before / 2, (before, after)
    for key, body in payloads.items():
        assert s3.get_object(Bucket="gcb", Key=key)["Body"].read() == body


def test_fsck_and_corruption(start_s3: Callable[..., S3Server], tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_s3(data)
    s3 = server.client()
    s3.create_bucket(Bucket="fsk")
    s3.put_object(Bucket="fsk", Key="a", Body=b"A" * 10_000)
    s3.put_object(Bucket="fsk", Key="b", Body=b"B" * 10_000)
    runner = CliRunner()
    busy = runner.invoke(main, ["objectstore", "fsck", "--data", str(data)])
    assert busy.exit_code != 0 and "in use" in busy.output
    # flip one byte of b's data on disk, behind the server's back
    files = sorted((data / "objectstore" / "node0").glob("*.dat"))
    raw = bytearray(files[-1].read_bytes())
    at = raw.rfind(b"B" * 100)
    raw[at] ^= 0xFF
    files[-1].write_bytes(bytes(raw))
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="fsk", Key="b")["Body"].read()
    assert exc.value.response["Error"]["Code"] == "InternalError"
    assert s3.get_object(Bucket="fsk", Key="a")["Body"].read() == b"A" * 10_000
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 's3_internal_errors_total{kind="CorruptObject"}' in metrics
    assert server.runtime.node.corruptions >= 1
    server.stop()
    result = runner.invoke(main, ["objectstore", "fsck", "--data", str(data)])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False and report["problems"]
    dump = runner.invoke(main, ["objectstore", "dump-datafile", str(files[0])])
    assert dump.exit_code == 0 and dump.output.strip()


def test_fsck_clean_store(start_s3: Callable[..., S3Server], tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_s3(data)
    s3 = server.client()
    s3.create_bucket(Bucket="fsk")
    s3.put_object(Bucket="fsk", Key="a", Body=os.urandom(300_000))
    server.stop()
    result = CliRunner().invoke(main, ["objectstore", "fsck", "--data", str(data)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] is True and report["object_versions"] == 1


def test_cors(s3server: S3Server) -> None:
    s3 = s3server.client()
    s3.create_bucket(Bucket="web")
    s3.put_object(Bucket="web", Key="x", Body=b"x")
    s3.put_bucket_cors(
        Bucket="web",
        CORSConfiguration={
            "CORSRules": [
                {
                    "AllowedOrigins": ["https://app.example.com"],
                    "AllowedMethods": ["GET", "PUT"],
                    "AllowedHeaders": ["*"],
                    "ExposeHeaders": ["ETag"],
                    "MaxAgeSeconds": 600,
                }
            ]
        },
    )
    assert s3.get_bucket_cors(Bucket="web")["CORSRules"][0]["MaxAgeSeconds"] == 600
    ok = httpx.options(
        f"{s3server.url}/web/x",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "PUT" in ok.headers["access-control-allow-methods"]
    refused = httpx.options(
        f"{s3server.url}/web/x",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status_code == 403
    s3.put_bucket_policy(
        Bucket="web",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": "arn:aws:s3:::web/*",
                    }
                ],
            }
        ),
    )
    actual = httpx.get(f"{s3server.url}/web/x", headers={"Origin": "https://app.example.com"})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "ETag" in actual.headers["access-control-expose-headers"]


def test_orphaned_data_is_reclaimed_at_start(
    start_s3: Callable[..., S3Server], tmp_path: Path
) -> None:
    """Data made durable whose metadata never committed (a crash in between) is reclaimed."""
    data = tmp_path / "data"
    server = start_s3(data)
    s3 = server.client()
    s3.create_bucket(Bucket="orph")
    s3.put_object(Bucket="orph", Key="kept", Body=b"kept")
    orphan = server.runtime.node.put(b"no metadata points at me")
    server.stop()
    again = start_s3(data)
    assert not again.runtime.node.exists(orphan.object_id)
    assert again.client().get_object(Bucket="orph", Key="kept")["Body"].read() == b"kept"
