"""The object store's settings (env: SCALELAB_OBJECTSTORE_<NAME>)."""

from __future__ import annotations

from dataclasses import dataclass

from scalelab.config import SystemSettings, setting


@dataclass(frozen=True)
class ObjectStoreSettings(SystemSettings):
    system = "objectstore"

    port: int = setting(9000, "port of the S3 API (0 picks a free port)")
    access_key: str | None = setting(
        None, "access key of the first key pair (default: a dev pair kept in the data dir)"
    )
    secret_key: str | None = setting(None, "secret key of the first key pair", secret=True)
    extra_credentials: str | None = setting(
        None,
        "more key pairs, comma-separated ACCESS:SECRET (each is its own principal)",
        secret=True,
    )
    region: str = setting("us-east-1", "region reported and accepted in SigV4 scopes")
    domain: str = setting(
        "localhost", "base domain for virtual-hosted-style addressing (bucket.DOMAIN)"
    )
    database_url: str | None = setting(
        None, "metadata store (default: SQLite under the data dir; or postgresql://...)"
    )
    max_clock_skew_seconds: int = setting(900, "largest accepted difference from our clock")
    chunk_bytes: int = setting(
        4 << 20, "largest record a data file holds; bigger objects span several"
    )
    data_file_bytes: int = setting(1 << 30, "size at which a data file turns read-only")
    gc_interval_seconds: float = setting(300.0, "how often read-only data files are compacted")
    gc_garbage_ratio: float = setting(0.5, "garbage share above which a data file is compacted")
    lifecycle_interval_seconds: float = setting(60.0, "how often lifecycle rules are applied")
    lifecycle_day_seconds: float = setting(
        86400.0, "length of a lifecycle 'day' (debug: shorten to test expiration)"
    )
    orphan_grace_seconds: float = setting(
        3600.0, "age after which data with no metadata is reclaimed"
    )
