"""The same S3 server with its metadata store on PostgreSQL instead of SQLite."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from tests.conftest import POSTGRES_URL
from tests.objectstore.conftest import S3Server

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_s3(start_s3: Callable[..., S3Server], postgres_schema: str) -> Any:
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{postgres_schema}"
    server = start_s3(database_url=url)
    assert server.runtime.engine.dialect.name == "postgresql"
    return server.client()


def test_objects_versions_listing_multipart_on_postgres(pg_s3: Any) -> None:
    s3 = pg_s3
    s3.create_bucket(Bucket="pgb")
    keys = ["a/1", "a/2", "b/ä", "b/z", "c", "Z-upper"]
    for key in keys:
        s3.put_object(Bucket="pgb", Key=key, Body=key.encode())
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="pgb")["Contents"]]
    assert listed == sorted(keys)  # byte order: "Z-upper" first, "b/z" before "b/ä"
    top = s3.list_objects_v2(Bucket="pgb", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    s3.put_bucket_versioning(Bucket="pgb", VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket="pgb", Key="c", Body=b"v1")["VersionId"]
    s3.delete_object(Bucket="pgb", Key="c")
    versions = s3.list_object_versions(Bucket="pgb", Prefix="c")
    assert [v["VersionId"] for v in versions["Versions"]] == [v1, "null"]
    assert len(versions["DeleteMarkers"]) == 1
    part = 5 << 20
    data = os.urandom(part) * 2 + b"tail"
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part)
    s3.upload_fileobj(io.BytesIO(data), "pgb", "big", Config=config)
    assert s3.get_object(Bucket="pgb", Key="big")["Body"].read() == data
