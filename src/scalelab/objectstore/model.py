"""The object store's data and rules, with no I/O: buckets, object versions, uploads, ETags.

An object version's bytes live on the data store as one or more data-node objects (one for a
PutObject, one per part for a completed multipart upload); `DataRef` is that manifest, so
completing a 100 MiB upload moves no bytes.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import time
from dataclasses import dataclass, field

from scalelab.objectstore.errors import S3Error

NULL_VERSION = "null"
MAX_KEY_BYTES = 1024
MAX_PARTS = 10000
MIN_PART_BYTES = 5 << 20
MAX_PART_BYTES = 5 << 30
MAX_OBJECT_BYTES = 5 << 40
MAX_PUT_BYTES = 5 << 30
VERSIONING_STATES = ("", "Enabled", "Suspended")
RESERVED_BUCKETS = frozenset({"healthz", "metrics"})  # served unauthenticated at the root

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class DataRef:
    """One data-node object holding a contiguous piece of an object version."""

    object_id: str
    size: int


@dataclass(frozen=True)
class Bucket:
    name: str
    owner: str
    created: float
    region: str
    versioning: str = ""  # "", "Enabled" or "Suspended"
    policy: str | None = None
    cors: bytes | None = None
    lifecycle: bytes | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def versioned(self) -> bool:
        return self.versioning == "Enabled"


@dataclass(frozen=True)
class ObjectVersion:
    bucket: str
    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool
    last_modified: float
    size: int = 0
    etag: str = ""
    content_type: str = "binary/octet-stream"
    # Stored response headers: x-amz-meta-*, cache-control, content-disposition,
    # content-encoding, content-language, expires, x-amz-checksum-*.
    headers: dict[str, str] = field(default_factory=dict)
    data: tuple[DataRef, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    parts_count: int | None = None
    owner: str = ""
    noncurrent_since: float | None = None


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    owner: str
    content_type: str
    headers: dict[str, str]
    tags: dict[str, str]
    checksum_algorithm: str | None = None


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str
    last_modified: float
    data: DataRef
    checksum: str | None = None


def check_bucket_name(name: str) -> None:
    """S3's naming rules for new buckets (general purpose buckets)."""

    def bad(reason: str) -> S3Error:
        return S3Error("InvalidBucketName", f"{reason}: {name!r}", BucketName=name)

    if not 3 <= len(name) <= 63:
        raise bad("bucket names are 3 to 63 characters long")
    if not _BUCKET_RE.match(name):
        raise bad("use lowercase letters, digits, dots and hyphens, starting and ending alnum")
    if ".." in name or ".-" in name or "-." in name:
        raise bad("adjacent periods or a period next to a hyphen are not allowed")
    if _is_ipv4(name):
        raise bad("bucket names must not look like an IP address")
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")) or name.endswith(
        ("-s3alias", "--ol-s3", "--x-s3", ".mrap")
    ):
        raise bad("reserved prefix or suffix")
    if name in RESERVED_BUCKETS:
        raise bad("reserved for the server's /healthz and /metrics")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def check_key(key: str) -> None:
    if not key:
        raise S3Error("InvalidArgument", "object keys must not be empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long (1024 bytes at most).")


def new_version_id() -> str:
    """Unique, URL-safe, and sorting by creation time (useful when reading a dump)."""
    stamp = time.time_ns().to_bytes(8, "big")
    return base64.urlsafe_b64encode(stamp + os.urandom(10)).decode().rstrip("=")


def new_upload_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(24)).decode()


def quote_etag(hex_digest: str) -> str:
    return f'"{hex_digest}"'


def multipart_etag(part_etags: list[str]) -> str:
    """S3's ETag for a multipart object: md5 of the concatenated part md5s, then -N."""
    digest = hashlib.md5(usedforsecurity=False)
    for etag in part_etags:
        digest.update(bytes.fromhex(etag.strip('"').split("-")[0]))
    return f'"{digest.hexdigest()}-{len(part_etags)}"'


def etag_matches(header: str, etag: str) -> bool:
    """If-Match / If-None-Match semantics: `*`, or any of a comma-separated list."""
    want = etag.strip('"')
    for item in header.split(","):
        item = item.strip()
        if item == "*":
            return True
        if item.startswith("W/"):
            item = item[2:]
        if item.strip('"') == want:
            return True
    return False
