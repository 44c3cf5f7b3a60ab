"""The S3 API through boto3 at its default settings, against the real server on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions
import httpx
import pytest
from boto3.s3.transfer import TransferConfig

from tests.objectstore.conftest import OTHER_ACCESS, OTHER_SECRET, S3Server


def code_of(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status_of(exc: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_bucket_lifecycle(s3: Any) -> None:
    s3.create_bucket(Bucket="alpha")
    s3.create_bucket(Bucket="beta.bucket-1")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["alpha", "beta.bucket-1"]
    s3.head_bucket(Bucket="alpha")
    assert s3.get_bucket_location(Bucket="alpha")["LocationConstraint"] is None
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.create_bucket(Bucket="alpha")
    assert code_of(exc) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket="alpha", Key="k", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.delete_bucket(Bucket="alpha")
    assert code_of(exc) == "BucketNotEmpty"
    s3.delete_object(Bucket="alpha", Key="k")
    s3.delete_bucket(Bucket="alpha")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.head_bucket(Bucket="alpha")
    assert status_of(exc) == 404
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.list_objects_v2(Bucket="alpha")
    assert code_of(exc) == "NoSuchBucket"


@pytest.mark.parametrize(
    "name", ["ab", "UPPER", "has_underscore", "-dash", "a..b", "192.168.1.1", "x" * 64, "metrics"]
)
def test_bucket_name_rules(s3: Any, name: str) -> None:
    with pytest.raises(
        (botocore.exceptions.ClientError, botocore.exceptions.ParamValidationError)
    ) as exc:
        s3.create_bucket(Bucket=name)
    if isinstance(exc.value, botocore.exceptions.ClientError):
        assert exc.value.response["Error"]["Code"] == "InvalidBucketName"


def test_put_get_head_delete(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    body = os.urandom(300_000)
    put = s3.put_object(
        Bucket="bkt",
        Key="dir/ünïcode key+=&.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"colour": "blue"},
        CacheControl="max-age=60",
        ContentDisposition="attachment",
    )
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket="bkt", Key="dir/ünïcode key+=&.bin")
    assert got["Body"].read() == body
    assert got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"colour": "blue"}
    assert got["CacheControl"] == "max-age=60"
    assert got["ContentDisposition"] == "attachment"
    assert got["ContentLength"] == len(body)
    head = s3.head_object(Bucket="bkt", Key="dir/ünïcode key+=&.bin")
    assert head["ETag"] == put["ETag"] and head["ContentLength"] == len(body)
    s3.delete_object(Bucket="bkt", Key="dir/ünïcode key+=&.bin")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="dir/ünïcode key+=&.bin")
    assert code_of(exc) == "NoSuchKey"
    s3.delete_object(Bucket="bkt", Key="never-existed")  # S3 answers 204


def test_empty_object_and_overwrite(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="e", Body=b"")
    assert s3.get_object(Bucket="bkt", Key="e")["Body"].read() == b""
    s3.put_object(Bucket="bkt", Key="e", Body=b"second")
    assert s3.get_object(Bucket="bkt", Key="e")["Body"].read() == b"second"


def test_content_md5_checked(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
    s3.put_object(Bucket="bkt", Key="ok", Body=b"data", ContentMD5=good)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket="bkt", Key="bad", Body=b"data", ContentMD5=wrong)
    assert code_of(exc) == "BadDigest"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="bad")
    assert code_of(exc) == "NoSuchKey"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"])
def test_flexible_checksums(s3: Any, algorithm: str) -> None:
    s3.create_bucket(Bucket="bkt")
    body = os.urandom(70_000)
    put = s3.put_object(Bucket="bkt", Key="k", Body=body, ChecksumAlgorithm=algorithm)
    assert put[f"Checksum{algorithm}"]
    got = s3.get_object(Bucket="bkt", Key="k", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert got[f"Checksum{algorithm}"] == put[f"Checksum{algorithm}"]


def test_wrong_checksum_header_rejected(s3server: S3Server) -> None:
    s3 = s3server.client(request_checksum_calculation="when_required")
    s3.create_bucket(Bucket="bkt")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket="bkt", Key="k", Body=b"payload", ChecksumCRC32="AAAAAA==")
    assert code_of(exc) == "BadDigest"


def test_default_boto3_put_is_not_stored_with_chunk_framing(s3: Any) -> None:
    """boto3 >= 1.36 sends aws-chunked bodies with a CRC32 trailer; we must decode them."""
    s3.create_bucket(Bucket="bkt")
    body = os.urandom(2_000_000)
    s3.upload_fileobj(io.BytesIO(body), "bkt", "streamed")
    assert s3.get_object(Bucket="bkt", Key="streamed")["Body"].read() == body


def test_range_gets(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    body = bytes(range(256)) * 40
    s3.put_object(Bucket="bkt", Key="k", Body=body)
    for spec, want in [
        ("bytes=0-9", body[:10]),
        ("bytes=100-", body[100:]),
        ("bytes=-5", body[-5:]),
        ("bytes=10000-20000", body[10000:]),
    ]:
        got = s3.get_object(Bucket="bkt", Key="k", Range=spec)
        assert got["Body"].read() == want, spec
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(body)}")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="k", Range="bytes=20000-")
    assert code_of(exc) == "InvalidRange" and status_of(exc) == 416


def test_large_gets_stream_read_ahead_and_survive_readers_that_stop(
    start_s3: Any,
) -> None:
    """Many records per object: whole and ranged GETs match, and clients that hang up after a
    few pieces (a read still in flight) leave the server serving."""
    server = start_s3(chunk_bytes=64 * 1024)
    s3 = server.client()
    s3.create_bucket(Bucket="big")
    body = os.urandom(3 * 1024 * 1024 + 17)  # 49 records
    s3.put_object(Bucket="big", Key="k", Body=body)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "big", "Key": "k"})
    for _ in range(5):
        with httpx.stream("GET", url) as resp:
            stream = resp.iter_raw(32 * 1024)
            assert len(next(stream)) > 0  # then hang up mid-body
    assert s3.get_object(Bucket="big", Key="k")["Body"].read() == body
    part = s3.get_object(Bucket="big", Key="k", Range="bytes=100000-2000000")["Body"].read()
    assert part == body[100000:2000001]
    with ThreadPoolExecutor(4) as pool:
        reads = pool.map(lambda _: s3.get_object(Bucket="big", Key="k")["Body"].read(), range(4))
        assert all(r == body for r in reads)


def test_conditional_requests(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    etag = s3.put_object(Bucket="bkt", Key="k", Body=b"v1")["ETag"]
    assert s3.get_object(Bucket="bkt", Key="k", IfMatch=etag)["Body"].read() == b"v1"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="k", IfMatch='"0000"')
    assert status_of(exc) == 412 and code_of(exc) == "PreconditionFailed"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="k", IfNoneMatch=etag)
    assert status_of(exc) == 304
    future = time.time() + 3600
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="k", IfModifiedSince=future)
    assert status_of(exc) == 304
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="bkt", Key="k", IfUnmodifiedSince=time.time() - 3600)
    assert status_of(exc) == 412
    # conditional write: create only if absent
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_object(Bucket="bkt", Key="k", Body=b"v2", IfNoneMatch="*")
    assert code_of(exc) == "PreconditionFailed"
    s3.put_object(Bucket="bkt", Key="new", Body=b"n", IfNoneMatch="*")
    assert s3.get_object(Bucket="bkt", Key="k")["Body"].read() == b"v1"


def test_response_header_overrides(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="k", Body=b"x")
    got = s3.get_object(
        Bucket="bkt", Key="k", ResponseContentType="text/plain", ResponseContentDisposition="inline"
    )
    assert got["ContentType"] == "text/plain" and got["ContentDisposition"] == "inline"


def test_copy_object(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    s3.put_object(
        Bucket="bkt", Key="src", Body=b"copy me", Metadata={"a": "1"}, ContentType="text/x"
    )
    s3.copy_object(Bucket="bkt", Key="dst", CopySource={"Bucket": "bkt", "Key": "src"})
    got = s3.get_object(Bucket="bkt", Key="dst")
    assert got["Body"].read() == b"copy me" and got["Metadata"] == {"a": "1"}
    s3.copy_object(
        Bucket="bkt",
        Key="dst2",
        CopySource="bkt/src",
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
        ContentType="text/y",
    )
    got = s3.head_object(Bucket="bkt", Key="dst2")
    assert got["Metadata"] == {"b": "2"} and got["ContentType"] == "text/y"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.copy_object(Bucket="bkt", Key="src", CopySource="bkt/src")
    assert code_of(exc) == "InvalidRequest"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.copy_object(Bucket="bkt", Key="x", CopySource="bkt/missing")
    assert code_of(exc) == "NoSuchKey"


def test_object_tagging(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    s3.put_object(Bucket="bkt", Key="k", Body=b"x", Tagging="team=core&env=dev")
    tags = s3.get_object_tagging(Bucket="bkt", Key="k")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "core", "env": "dev"}
    s3.put_object_tagging(Bucket="bkt", Key="k", Tagging={"TagSet": [{"Key": "x", "Value": "y"}]})
    assert s3.get_object_tagging(Bucket="bkt", Key="k")["TagSet"] == [{"Key": "x", "Value": "y"}]
    s3.delete_object_tagging(Bucket="bkt", Key="k")
    assert s3.get_object_tagging(Bucket="bkt", Key="k")["TagSet"] == []


def test_delete_objects_batch(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    for i in range(5):
        s3.put_object(Bucket="bkt", Key=f"k{i}", Body=b"x")
    out = s3.delete_objects(
        Bucket="bkt", Delete={"Objects": [{"Key": f"k{i}"} for i in range(3)] + [{"Key": "nope"}]}
    )
    assert sorted(d["Key"] for d in out["Deleted"]) == ["k0", "k1", "k2", "nope"]
    left = [o["Key"] for o in s3.list_objects_v2(Bucket="bkt")["Contents"]]
    assert left == ["k3", "k4"]


def _fill(s3: Any, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), keys))


def test_listing_prefix_delimiter_and_pagination(s3: Any) -> None:
    s3.create_bucket(Bucket="bkt")
    keys = [f"photos/{y}/{i:03d}.jpg" for y in (2023, 2024) for i in range(30)]
    keys += ["readme.txt", "photos/cover.jpg", "videos/a.mp4"]
    _fill(s3, "bkt", keys)
    top = s3.list_objects_v2(Bucket="bkt", Delimiter="/")
    assert [c["Prefix"] for c in top["CommonPrefixes"]] == ["photos/", "videos/"]
    assert [o["Key"] for o in top["Contents"]] == ["readme.txt"]
    assert top["KeyCount"] == 3
    mid = s3.list_objects_v2(Bucket="bkt", Prefix="photos/", Delimiter="/")
    assert [c["Prefix"] for c in mid["CommonPrefixes"]] == ["photos/2023/", "photos/2024/"]
    assert [o["Key"] for o in mid["Contents"]] == ["photos/cover.jpg"]
    # pagination, v2 and v1, must return every key exactly once, in order
    seen: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="bkt", PaginationConfig={"PageSize": 7}
    ):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == sorted(keys)
    seen = []
    for page in s3.get_paginator("list_objects").paginate(
        Bucket="bkt", PaginationConfig={"PageSize": 11}
    ):
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == sorted(keys)
    # delimiter pages that end on a common prefix continue after it
    prefixes: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="bkt", Prefix="photos/", Delimiter="/", PaginationConfig={"PageSize": 1}
    ):
        prefixes += [c["Prefix"] for c in page.get("CommonPrefixes", [])]
        prefixes += [o["Key"] for o in page.get("Contents", [])]
    assert prefixes == ["photos/2023/", "photos/2024/", "photos/cover.jpg"]
    after = s3.list_objects_v2(Bucket="bkt", StartAfter="photos/2024/029.jpg", MaxKeys=2)
    assert [o["Key"] for o in after["Contents"]] == ["photos/cover.jpg", "readme.txt"]
    owner = s3.list_objects_v2(Bucket="bkt", MaxKeys=1, FetchOwner=True)["Contents"][0]
    assert "Owner" in owner
    enc = s3.list_objects_v2(Bucket="bkt", Prefix="readme", EncodingType="url")
    assert enc["Contents"][0]["Key"] == "readme.txt"


def test_versioning_and_delete_markers(s3: Any) -> None:
    s3.create_bucket(Bucket="ver")
    s3.put_object(Bucket="ver", Key="k", Body=b"before")
    assert s3.get_bucket_versioning(Bucket="ver").get("Status") is None
    s3.put_bucket_versioning(Bucket="ver", VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket="ver")["Status"] == "Enabled"
    v1 = s3.put_object(Bucket="ver", Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket="ver", Key="k", Body=b"two")["VersionId"]
    assert v1 != v2 and "null" not in (v1, v2)
    assert s3.get_object(Bucket="ver", Key="k")["Body"].read() == b"two"
    assert s3.get_object(Bucket="ver", Key="k", VersionId=v1)["Body"].read() == b"one"
    assert s3.get_object(Bucket="ver", Key="k", VersionId="null")["Body"].read() == b"before"
    marker = s3.delete_object(Bucket="ver", Key="k")
    assert marker["DeleteMarker"] is True
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="ver", Key="k")
    assert code_of(exc) == "NoSuchKey"
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    assert "Contents" not in s3.list_objects_v2(Bucket="ver")
    listed = s3.list_object_versions(Bucket="ver")
    assert [v["VersionId"] for v in listed["Versions"]] == [v2, v1, "null"]
    assert [m["VersionId"] for m in listed["DeleteMarkers"]] == [marker["VersionId"]]
    assert listed["DeleteMarkers"][0]["IsLatest"] is True
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="ver", Key="k", VersionId=marker["VersionId"])
    assert status_of(exc) == 405
    # removing the delete marker brings the object back
    s3.delete_object(Bucket="ver", Key="k", VersionId=marker["VersionId"])
    assert s3.get_object(Bucket="ver", Key="k")["Body"].read() == b"two"
    s3.delete_object(Bucket="ver", Key="k", VersionId=v2)
    assert s3.get_object(Bucket="ver", Key="k")["Body"].read() == b"one"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="ver", Key="k", VersionId="does-not-exist")
    assert code_of(exc) == "NoSuchVersion"
    # paging through versions with key and version-id markers
    for i in range(4):
        s3.put_object(Bucket="ver", Key="p", Body=str(i).encode())
    ids: list[tuple[str, str]] = []
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket="ver", PaginationConfig={"PageSize": 2}
    ):
        ids += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    assert len(ids) == 6 and len(set(ids)) == 6


def test_suspended_versioning_uses_null_version(s3: Any) -> None:
    s3.create_bucket(Bucket="ver")
    s3.put_bucket_versioning(Bucket="ver", VersioningConfiguration={"Status": "Enabled"})
    kept = s3.put_object(Bucket="ver", Key="k", Body=b"kept")["VersionId"]
    s3.put_bucket_versioning(Bucket="ver", VersioningConfiguration={"Status": "Suspended"})
    assert s3.put_object(Bucket="ver", Key="k", Body=b"n1").get("VersionId") == "null"
    s3.put_object(Bucket="ver", Key="k", Body=b"n2")
    versions = s3.list_object_versions(Bucket="ver")["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in versions] == [("null", True), (kept, False)]
    assert s3.get_object(Bucket="ver", Key="k")["Body"].read() == b"n2"


def test_unversioned_bucket_lists_null_versions(s3: Any) -> None:
    s3.create_bucket(Bucket="unv")
    s3.put_object(Bucket="unv", Key="a", Body=b"1")
    versions = s3.list_object_versions(Bucket="unv")["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions] == [("a", "null", True)]


def test_multipart_upload_100mib(s3: Any) -> None:
    s3.create_bucket(Bucket="mpu")
    part = 5 << 20
    data = os.urandom(part) * 20  # 100 MiB without 100 MiB of entropy work
    config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)
    s3.upload_fileobj(io.BytesIO(data), "mpu", "big", Config=config)
    head = s3.head_object(Bucket="mpu", Key="big")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-20"')
    digest = hashlib.md5()
    for piece in s3.get_object(Bucket="mpu", Key="big")["Body"].iter_chunks(1 << 20):
        digest.update(piece)
    assert digest.hexdigest() == hashlib.md5(data).hexdigest()
    middle = s3.get_object(Bucket="mpu", Key="big", Range=f"bytes={part - 10}-{part + 9}")
    assert middle["Body"].read() == data[part - 10 : part + 10]


def test_multipart_api_errors_and_listing(s3: Any) -> None:
    s3.create_bucket(Bucket="mpu")
    up = s3.create_multipart_upload(Bucket="mpu", Key="obj")["UploadId"]
    e1 = s3.upload_part(Bucket="mpu", Key="obj", UploadId=up, PartNumber=1, Body=b"a" * 100)["ETag"]
    e2 = s3.upload_part(Bucket="mpu", Key="obj", UploadId=up, PartNumber=2, Body=b"b" * 100)["ETag"]
    parts = s3.list_parts(Bucket="mpu", Key="obj", UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 100), (2, 100)]
    uploads = s3.list_multipart_uploads(Bucket="mpu")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("obj", up)]

    def complete(parts: list[dict[str, Any]]) -> None:
        s3.complete_multipart_upload(
            Bucket="mpu", Key="obj", UploadId=up, MultipartUpload={"Parts": parts}
        )

    with pytest.raises(botocore.exceptions.ClientError) as exc:
        complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}])
    assert code_of(exc) == "EntityTooSmall"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])
    assert code_of(exc) == "InvalidPartOrder"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        complete([{"PartNumber": 3, "ETag": e1}])
    assert code_of(exc) == "InvalidPart"
    complete([{"PartNumber": 2, "ETag": e2}])  # a single (last) part may be small
    assert s3.get_object(Bucket="mpu", Key="obj")["Body"].read() == b"b" * 100
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.list_parts(Bucket="mpu", Key="obj", UploadId=up)
    assert code_of(exc) == "NoSuchUpload"
    up2 = s3.create_multipart_upload(Bucket="mpu", Key="gone")["UploadId"]
    s3.upload_part(Bucket="mpu", Key="gone", UploadId=up2, PartNumber=1, Body=b"z")
    s3.abort_multipart_upload(Bucket="mpu", Key="gone", UploadId=up2)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.upload_part(Bucket="mpu", Key="gone", UploadId=up2, PartNumber=2, Body=b"z")
    assert code_of(exc) == "NoSuchUpload"
    assert "Uploads" not in s3.list_multipart_uploads(Bucket="mpu")


def test_upload_part_copy(s3: Any) -> None:
    s3.create_bucket(Bucket="mpu")
    src = os.urandom(6 << 20)
    s3.put_object(Bucket="mpu", Key="src", Body=src)
    up = s3.create_multipart_upload(Bucket="mpu", Key="dst")["UploadId"]
    p1 = s3.upload_part_copy(
        Bucket="mpu",
        Key="dst",
        UploadId=up,
        PartNumber=1,
        CopySource="mpu/src",
        CopySourceRange=f"bytes=0-{(5 << 20) - 1}",
    )["CopyPartResult"]["ETag"]
    p2 = s3.upload_part_copy(
        Bucket="mpu", Key="dst", UploadId=up, PartNumber=2, CopySource="mpu/src"
    )["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(
        Bucket="mpu",
        Key="dst",
        UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]},
    )
    assert s3.get_object(Bucket="mpu", Key="dst")["Body"].read() == src[: 5 << 20] + src


def test_presigned_urls(s3server: S3Server) -> None:
    s3 = s3server.client(signature_version="s3v4")
    s3.create_bucket(Bucket="pre")
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": "pre", "Key": "via url"}, ExpiresIn=60
    )
    assert httpx.put(put_url, content=b"presigned body").status_code == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": "pre", "Key": "via url"})
    got = httpx.get(get_url)
    assert got.status_code == 200 and got.content == b"presigned body"
    tampered = get_url.replace("via%20url", "other")
    assert b"SignatureDoesNotMatch" in httpx.get(tampered).content
    expired = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "pre", "Key": "via url"}, ExpiresIn=1
    )
    time.sleep(2.1)
    reply = httpx.get(expired)
    assert reply.status_code == 403 and b"<Code>AccessDenied</Code>" in reply.content


def test_authentication_errors(s3server: S3Server) -> None:
    s3server.client().create_bucket(Bucket="auth")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3server.client(secret="wrong").list_objects_v2(Bucket="auth")
    assert code_of(exc) == "SignatureDoesNotMatch"
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3server.client(access="NOSUCHKEY").list_objects_v2(Bucket="auth")
    assert code_of(exc) == "InvalidAccessKeyId"
    anonymous = httpx.get(f"{s3server.url}/auth")
    assert anonymous.status_code == 403 and b"<Code>AccessDenied</Code>" in anonymous.content
    assert anonymous.headers["x-amz-request-id"]


def test_clock_skew(start_s3: Any) -> None:
    server = start_s3()
    server.client().create_bucket(Bucket="auth")
    server.app.clock = lambda: time.time() + 3600
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        server.client().list_objects_v2(Bucket="auth")
    assert code_of(exc) == "RequestTimeTooSkewed"


def test_public_bucket_and_per_key_policy(s3server: S3Server) -> None:
    owner = s3server.client()
    other = s3server.client(OTHER_ACCESS, OTHER_SECRET)
    owner.create_bucket(Bucket="pub")
    owner.put_object(Bucket="pub", Key="index.html", Body=b"<h1>hi</h1>")
    assert httpx.get(f"{s3server.url}/pub/index.html").status_code == 403
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        other.get_object(Bucket="pub", Key="index.html")
    assert code_of(exc) == "AccessDenied"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": "arn:aws:s3:::pub/*",
            },
            {
                "Effect": "Allow",
                "Principal": {"AWS": OTHER_ACCESS},
                "Action": "s3:PutObject",
                "Resource": "arn:aws:s3:::pub/uploads/*",
            },
        ],
    }
    import json

    owner.put_bucket_policy(Bucket="pub", Policy=json.dumps(policy))
    assert json.loads(owner.get_bucket_policy(Bucket="pub")["Policy"]) == policy
    public = httpx.get(f"{s3server.url}/pub/index.html")
    assert public.status_code == 200 and public.content == b"<h1>hi</h1>"
    other.put_object(Bucket="pub", Key="uploads/x", Body=b"ok")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        other.put_object(Bucket="pub", Key="elsewhere", Body=b"no")
    assert code_of(exc) == "AccessDenied"
    assert httpx.put(f"{s3server.url}/pub/anon", content=b"no").status_code == 403
    assert [b["Name"] for b in other.list_buckets()["Buckets"]] == []
    owner.delete_bucket_policy(Bucket="pub")
    assert httpx.get(f"{s3server.url}/pub/index.html").status_code == 403
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        owner.put_bucket_policy(Bucket="pub", Policy="{not json")
    assert code_of(exc) == "MalformedPolicy"


def test_virtual_hosted_style(s3server: S3Server) -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.objectstore.conftest import ACCESS, SECRET

    s3server.client().create_bucket(Bucket="vhost")
    port = s3server.url.rsplit(":", 1)[1]
    url = f"http://vhost.localhost:{port}/hello.txt"
    request = AWSRequest(method="PUT", url=url, data=b"virtual", headers={})
    request.headers["x-amz-content-sha256"] = hashlib.sha256(b"virtual").hexdigest()
    S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    headers["Host"] = f"vhost.localhost:{port}"
    reply = httpx.put(f"{s3server.url}/hello.txt", content=b"virtual", headers=headers)
    assert reply.status_code == 200, reply.text
    got = s3server.client().get_object(Bucket="vhost", Key="hello.txt")
    assert got["Body"].read() == b"virtual"


def test_errors_are_s3_xml_with_request_id(s3server: S3Server) -> None:
    s3 = s3server.client()
    s3.create_bucket(Bucket="err")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="err", Key="missing")
    err = exc.value.response
    assert err["Error"]["Code"] == "NoSuchKey" and err["Error"]["Key"] == "missing"
    assert err["ResponseMetadata"]["RequestId"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.put_bucket_versioning(Bucket="err", VersioningConfiguration={"Status": "Bogus"})
    assert code_of(exc) == "MalformedXML"


def test_health_and_metrics_unauthenticated(s3server: S3Server) -> None:
    assert httpx.get(f"{s3server.url}/healthz").json()["status"] == "ok"
    s3server.client().list_buckets()
    metrics = httpx.get(f"{s3server.url}/metrics").text
    assert 's3_requests_total{operation="ListBuckets",status="200"}' in metrics


def test_policy_conditions_see_the_request(s3server: S3Server) -> None:
    """aws:SourceIp and s3:prefix reach the policy: a loopback-only, prefix-scoped grant."""
    import json

    owner = s3server.client()
    other = s3server.client(OTHER_ACCESS, OTHER_SECRET)
    owner.create_bucket(Bucket="cond")
    owner.put_object(Bucket="cond", Key="public/a", Body=b"a")
    owner.put_object(Bucket="cond", Key="private/b", Body=b"b")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": OTHER_ACCESS},
                "Action": "s3:ListBucket",
                "Resource": "arn:aws:s3:::cond",
                "Condition": {
                    "StringLike": {"s3:prefix": "public/*"},
                    "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
                },
            }
        ],
    }
    owner.put_bucket_policy(Bucket="cond", Policy=json.dumps(policy))
    listed = other.list_objects_v2(Bucket="cond", Prefix="public/")
    assert [o["Key"] for o in listed["Contents"]] == ["public/a"]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        other.list_objects_v2(Bucket="cond", Prefix="private/")
    assert code_of(exc) == "AccessDenied"
    policy["Statement"][0]["Condition"]["IpAddress"]["aws:SourceIp"] = "10.0.0.0/8"  # type: ignore[index]
    owner.put_bucket_policy(Bucket="cond", Policy=json.dumps(policy))
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        other.list_objects_v2(Bucket="cond", Prefix="public/")
    assert code_of(exc) == "AccessDenied"


def test_delimiter_paging_past_keys_with_the_highest_code_point(s3: Any) -> None:
    s3.create_bucket(Bucket="edge")
    keys = ["a/x", "a/\U0010ffff\U0010ffffz", "b"]
    for key in keys:
        s3.put_object(Bucket="edge", Key=key, Body=b"1")
    seen: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="edge", Delimiter="/", PaginationConfig={"PageSize": 1}
    ):
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == ["a/", "b"]


@pytest.mark.parametrize("size", [1000, 3 << 20])
def test_payload_hash_mismatch_is_refused(s3server: S3Server, size: int) -> None:
    """x-amz-content-sha256 is checked for small (inline) and large (worker-hashed) bodies."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from tests.objectstore.conftest import ACCESS, SECRET

    s3server.client().create_bucket(Bucket="hashes")
    body = os.urandom(size)
    tampered = bytes([body[0] ^ 1]) + body[1:]
    for sent, ok in ((body, True), (tampered, False)):
        request = AWSRequest(method="PUT", url=f"{s3server.url}/hashes/k", data=body)
        S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", "us-east-1").add_auth(request)
        assert request.headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()
        reply = httpx.put(request.url, content=sent, headers=dict(request.headers.items()))
        if ok:
            assert reply.status_code == 200, reply.text
        else:
            assert reply.status_code == 400 and b"XAmzContentSHA256Mismatch" in reply.content
    got = s3server.client().get_object(Bucket="hashes", Key="k")["Body"].read()
    assert got == body


def test_reads_during_overwrites_see_whole_versions(s3server: S3Server) -> None:
    """A GET racing an overwrite returns the old or the new bytes, never an error."""
    import threading

    s3 = s3server.client()
    s3.create_bucket(Bucket="race")
    bodies = [bytes([i]) * 200_000 for i in range(2)]
    s3.put_object(Bucket="race", Key="k", Body=bodies[0])
    stop = threading.Event()
    problems: list[str] = []

    def overwrite() -> None:
        writer = s3server.client()
        i = 0
        while not stop.is_set():
            writer.put_object(Bucket="race", Key="k", Body=bodies[i % 2])
            i += 1

    thread = threading.Thread(target=overwrite)
    thread.start()
    try:
        for _ in range(150):
            got = s3.get_object(Bucket="race", Key="k")["Body"].read()
            if got not in bodies:
                problems.append(f"torn read of {len(got)} bytes")
    finally:
        stop.set()
        thread.join()
    assert not problems
