"""The metadata store (the book's bucket table and object table), in SQL.

Tables:
- `buckets`: name, owner, versioning state and the bucket's configuration documents.
- `objects`: one row per object version (delete markers included): bucket, key, version id,
  the data-node manifest, size, ETag, content type, stored headers, tags, timestamps. Listing
  reads the partial index `(bucket, key) WHERE is_latest`, so a prefix listing is a range scan
  however many keys the bucket holds. Keys compare byte-wise (`COLLATE "C"` on PostgreSQL,
  SQLite's default BINARY), which is S3's UTF-8 lexicographic order.
- `uploads` and `parts`: multipart uploads in progress.

The book shards the object table by hash(bucket, key) once one database is not enough; every
query here names one bucket and either one key or one key range, which is what makes that
sharding (and a move to a distributed SQL store) possible without changing callers.

Writes are functions of a connection, run by `groupcommit.Committer` (one transaction, one
fsync, for every write waiting at that moment).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.groupcommit import Committer
from scalelab.objectstore.model import Bucket, DataRef, ObjectVersion, Part, Upload
from scalelab.storage.sql import Prepared, create_schema

KeyText = Text().with_variant(Text(collation="C"), "postgresql")

metadata = MetaData()

buckets = Table(
    "buckets",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("created", Float, nullable=False),
    Column("region", Text, nullable=False),
    Column("versioning", String(16), nullable=False, default=""),
    Column("policy", Text),
    Column("cors", LargeBinary),
    Column("lifecycle", LargeBinary),
    Column("tags", Text, nullable=False, default="{}"),
)

objects = Table(
    "objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("bucket", String(63), nullable=False),
    Column("key", KeyText, nullable=False),
    Column("version_id", Text, nullable=False),
    Column("is_latest", Boolean, nullable=False),
    Column("delete_marker", Boolean, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("noncurrent_since", Float),
    Column("size", Integer, nullable=False),
    Column("etag", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("headers", Text, nullable=False),  # JSON
    Column("data", Text, nullable=False),  # "object_id:size object_id:size ..."
    Column("tags", Text, nullable=False),  # JSON
    Column("parts_count", Integer),
    Column("owner", Text, nullable=False),
    Index("ix_objects_version", "bucket", "key", "id"),
    Index(
        "ix_objects_latest",
        "bucket",
        "key",
        unique=True,
        sqlite_where=Column("is_latest") == True,  # noqa: E712
        postgresql_where=Column("is_latest") == True,  # noqa: E712
    ),
)

uploads = Table(
    "uploads",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("bucket", String(63), nullable=False),
    Column("key", KeyText, nullable=False),
    Column("initiated", Float, nullable=False),
    Column("owner", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("checksum_algorithm", Text),
    Index("ix_uploads_key", "bucket", "key", "initiated"),
)

parts = Table(
    "parts",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("size", Integer, nullable=False),
    Column("etag", Text, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("object_id", Text, nullable=False),
    Column("checksum", Text),
)


# Hot statements, built once: constructing a select() costs more than running it on SQLite.
_B: BindParameter[str] = bindparam("b")
_K: BindParameter[str] = bindparam("k")
_V: BindParameter[str] = bindparam("v")
_BUCKET_BY_NAME = select(buckets).where(buckets.c.name == bindparam("name"))
_LATEST = (
    select(objects)
    .where(objects.c.bucket == _B, objects.c.key == _K, objects.c.is_latest == True)  # noqa: E712
    .limit(1)
)
_BY_VERSION = (
    select(objects)
    .where(objects.c.bucket == _B, objects.c.key == _K, objects.c.version_id == _V)
    .limit(1)
)
_DELETE_NULL = (
    delete(objects)
    .where(objects.c.bucket == _B, objects.c.key == _K, objects.c.version_id == "null")
    .returning(*objects.c)
)
_DEMOTE_LATEST = (
    update(objects)
    .where(objects.c.bucket == _B, objects.c.key == _K, objects.c.is_latest == True)  # noqa: E712
    .values(is_latest=False, noncurrent_since=bindparam("since"))
)
_DELETE_VERSION = (
    delete(objects)
    .where(objects.c.bucket == _B, objects.c.key == _K, objects.c.version_id == _V)
    .returning(*objects.c)
)
_NEWEST_ID = select(func.max(objects.c.id)).where(objects.c.bucket == _B, objects.c.key == _K)
_PROMOTE = (
    update(objects)
    .where(objects.c.id == bindparam("row_id"))
    .values(is_latest=True, noncurrent_since=None)
)


# Buckets read in the current group-commit transaction (set by the committer's thread only).
_TX_BUCKETS: ContextVar[dict[str, Bucket] | None] = ContextVar("tx_buckets", default=None)


@contextmanager
def transaction_memo() -> Iterator[None]:
    """Remember bucket rows for one transaction (the committer wraps each in this)."""
    token = _TX_BUCKETS.set({})
    try:
        yield
    finally:
        _TX_BUCKETS.reset(token)


def _forget_bucket(name: str) -> None:
    if (memo := _TX_BUCKETS.get()) is not None:
        memo.pop(name, None)


def encode_data(refs: tuple[DataRef, ...]) -> str:
    return " ".join(f"{r.object_id}:{r.size}" for r in refs)


def decode_data(text: str) -> tuple[DataRef, ...]:
    out = []
    for item in text.split():
        object_id, _, size = item.partition(":")
        out.append(DataRef(object_id, int(size)))
    return tuple(out)


def _bucket(row: Row[Any]) -> Bucket:
    return Bucket(
        name=row.name,
        owner=row.owner,
        created=row.created,
        region=row.region,
        versioning=row.versioning,
        policy=row.policy,
        cors=row.cors,
        lifecycle=row.lifecycle,
        tags=orjson.loads(row.tags),
    )


def _version(row: Row[Any]) -> ObjectVersion:
    return ObjectVersion(
        bucket=row.bucket,
        key=row.key,
        version_id=row.version_id,
        is_latest=bool(row.is_latest),
        delete_marker=bool(row.delete_marker),
        last_modified=row.last_modified,
        size=row.size,
        etag=row.etag,
        content_type=row.content_type,
        headers=orjson.loads(row.headers),
        data=decode_data(row.data),
        tags=orjson.loads(row.tags),
        parts_count=row.parts_count,
        owner=row.owner,
        noncurrent_since=row.noncurrent_since,
    )


# What a listing shows: no stored headers, tags or data manifest to decode per row.
_LISTED = (
    objects.c.id,
    objects.c.key,
    objects.c.version_id,
    objects.c.is_latest,
    objects.c.delete_marker,
    objects.c.last_modified,
    objects.c.size,
    objects.c.etag,
    objects.c.owner,
)


def _listed(bucket: str, row: Sequence[Any]) -> ObjectVersion:
    _id, key, version_id, is_latest, delete_marker, last_modified, size, etag, owner = row
    return ObjectVersion(
        bucket=bucket,
        key=key,
        version_id=version_id,
        is_latest=bool(is_latest),
        delete_marker=bool(delete_marker),
        last_modified=last_modified,
        size=size,
        etag=etag,
        owner=owner,
    )


def _version_values(v: ObjectVersion) -> dict[str, Any]:
    return {
        "bucket": v.bucket,
        "key": v.key,
        "version_id": v.version_id,
        "is_latest": v.is_latest,
        "delete_marker": v.delete_marker,
        "last_modified": v.last_modified,
        "noncurrent_since": v.noncurrent_since,
        "size": v.size,
        "etag": v.etag,
        "content_type": v.content_type,
        "headers": orjson.dumps(v.headers).decode(),
        "data": encode_data(v.data),
        "tags": orjson.dumps(v.tags).decode(),
        "parts_count": v.parts_count,
        "owner": v.owner,
    }


def _upload(row: Row[Any]) -> Upload:
    return Upload(
        upload_id=row.upload_id,
        bucket=row.bucket,
        key=row.key,
        initiated=row.initiated,
        owner=row.owner,
        content_type=row.content_type,
        headers=orjson.loads(row.headers),
        tags=orjson.loads(row.tags),
        checksum_algorithm=row.checksum_algorithm,
    )


def _part(row: Row[Any]) -> Part:
    return Part(
        number=row.number,
        size=row.size,
        etag=row.etag,
        last_modified=row.last_modified,
        data=DataRef(row.object_id, row.size),
        checksum=row.checksum,
    )


class MetadataStore:
    """Reads on pooled connections; writes as functions of a connection, run by the Committer."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.committer = Committer(engine, scope=transaction_memo)
        # What every PUT runs, on the DBAPI cursor (see storage.sql.Prepared).
        dialect = engine.dialect
        self._delete_null = Prepared(_DELETE_NULL, dialect)
        self._demote_latest = Prepared(_DEMOTE_LATEST, dialect)
        columns = _version_values(ObjectVersion("", "", "", True, False, 0.0))  # every column
        insert_all = insert(objects).values({name: bindparam(name) for name in columns})
        self._insert_version = Prepared(insert_all, dialect)

    def create_schema(self) -> None:
        create_schema(self.engine, metadata)

    def close(self) -> None:
        self.committer.close()

    # buckets ---------------------------------------------------------------------------

    def get_bucket(self, name: str) -> Bucket | None:
        with self.engine.connect() as conn:
            row = conn.execute(_BUCKET_BY_NAME, {"name": name}).first()
        return _bucket(row) if row else None

    @staticmethod
    def get_bucket_in(conn: Connection, name: str) -> Bucket:
        """The bucket as this transaction sees it (NoSuchBucket if it is gone).

        Within a group commit the row is read once per transaction: sixteen PUTs to one
        bucket need one SELECT, and the writes below forget what they change.
        """
        memo = _TX_BUCKETS.get()
        if memo is not None and (found := memo.get(name)) is not None:
            return found
        row = conn.execute(_BUCKET_BY_NAME, {"name": name}).first()
        if row is None:
            raise S3Error("NoSuchBucket", BucketName=name)
        bucket = _bucket(row)
        if memo is not None:
            memo[name] = bucket
        return bucket

    def list_buckets(self) -> list[Bucket]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(buckets).order_by(buckets.c.name)).all()
        return [_bucket(r) for r in rows]

    @staticmethod
    def create_bucket(conn: Connection, bucket: Bucket) -> None:
        _forget_bucket(bucket.name)
        row = conn.execute(select(buckets.c.owner).where(buckets.c.name == bucket.name)).first()
        if row is not None:
            code = "BucketAlreadyOwnedByYou" if row.owner == bucket.owner else "BucketAlreadyExists"
            raise S3Error(code, BucketName=bucket.name)
        conn.execute(
            insert(buckets).values(
                name=bucket.name,
                owner=bucket.owner,
                created=bucket.created,
                region=bucket.region,
                versioning=bucket.versioning,
                tags="{}",
            )
        )

    @staticmethod
    def delete_bucket(conn: Connection, name: str) -> None:
        _forget_bucket(name)
        if conn.execute(select(buckets.c.name).where(buckets.c.name == name)).first() is None:
            raise S3Error("NoSuchBucket", BucketName=name)
        has_objects = conn.execute(
            select(objects.c.id).where(objects.c.bucket == name).limit(1)
        ).first()
        has_uploads = conn.execute(
            select(uploads.c.upload_id).where(uploads.c.bucket == name).limit(1)
        ).first()
        if has_objects or has_uploads:
            raise S3Error("BucketNotEmpty", BucketName=name)
        conn.execute(delete(buckets).where(buckets.c.name == name))

    @staticmethod
    def update_bucket(conn: Connection, name: str, **values: Any) -> None:
        _forget_bucket(name)
        if "tags" in values:
            values["tags"] = orjson.dumps(values["tags"]).decode()
        result = conn.execute(update(buckets).where(buckets.c.name == name).values(**values))
        if result.rowcount == 0:
            raise S3Error("NoSuchBucket", BucketName=name)

    # object versions -------------------------------------------------------------------

    def get_version(
        self, bucket: str, key: str, version_id: str | None = None, conn: Connection | None = None
    ) -> ObjectVersion | None:
        """The latest version (delete marker included) or the named one."""
        if version_id is None:
            query, params = _LATEST, {"b": bucket, "k": key}
        else:
            query, params = _BY_VERSION, {"b": bucket, "k": key, "v": version_id}
        if conn is not None:
            row = conn.execute(query, params).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(query, params).first()
        return _version(row) if row else None

    def insert_version(
        self, conn: Connection, version: ObjectVersion, ever_versioned: bool = True
    ) -> list[ObjectVersion]:
        """Make `version` the latest; returns versions it replaced (their data is garbage).

        A version id of "null" replaces any existing null version (unversioned and suspended
        buckets); otherwise the previous latest stays as a noncurrent version. In a bucket
        that was never versioned every version is null, so there is nothing to demote.
        """
        replaced: list[ObjectVersion] = []
        key = {"b": version.bucket, "k": version.key}
        if version.version_id == "null":
            replaced = [_version(r) for r in self._delete_null.run(conn, key)]
        if ever_versioned or version.version_id != "null":
            self._demote_latest.run(conn, {**key, "since": version.last_modified})
        self._insert_version.run(conn, _version_values(version))
        return replaced

    @staticmethod
    def delete_version(conn: Connection, bucket: str, key: str, version_id: str) -> ObjectVersion:
        """Remove one version for good; if it was the latest, the next newest takes over."""
        key_params = {"b": bucket, "k": key}
        row = conn.execute(_DELETE_VERSION, {**key_params, "v": version_id}).first()
        if row is None:
            raise S3Error("NoSuchVersion", Key=key, VersionId=version_id)
        if row.is_latest:
            newest = conn.execute(_NEWEST_ID, key_params).scalar()
            if newest is not None:
                conn.execute(_PROMOTE, {"row_id": newest})
        return _version(row)

    @staticmethod
    def set_tags(
        conn: Connection, bucket: str, key: str, version_id: str, tags: dict[str, str]
    ) -> None:
        conn.execute(
            update(objects)
            .where(
                objects.c.bucket == bucket, objects.c.key == key, objects.c.version_id == version_id
            )
            .values(tags=orjson.dumps(tags).decode())
        )

    def scan_latest(
        self, bucket: str, after: str | None, prefix: str, limit: int, inclusive: bool = False
    ) -> list[ObjectVersion]:
        """Latest versions (delete markers included) with key > after (>= when inclusive),
        key starting with prefix; listing columns only (no headers, tags or manifest)."""
        query = select(*_LISTED).where(
            objects.c.bucket == bucket,
            objects.c.is_latest == True,  # noqa: E712
            *_key_range(objects.c.key, prefix, after, inclusive),
        )
        query = query.order_by(objects.c.key).limit(limit)
        with self.engine.connect() as conn:
            return [_listed(bucket, r) for r in conn.execute(query)]

    def scan_versions(
        self,
        bucket: str,
        prefix: str,
        after_key: str | None,
        after_id: int | None,
        limit: int,
        inclusive: bool = False,
        *,
        full: bool = False,
    ) -> list[tuple[int, ObjectVersion]]:
        """All versions by key, newest first within a key; resumes after (key, row id), or at
        `after_key` itself when inclusive."""
        query = (select(objects) if full else select(*_LISTED)).where(objects.c.bucket == bucket)
        if after_key is not None and after_id is not None and not inclusive:
            query = query.where(
                *_key_range(objects.c.key, prefix, after_key, True),  # the seek
                (objects.c.key > after_key)
                | ((objects.c.key == after_key) & (objects.c.id < after_id)),
            )
        else:
            query = query.where(*_key_range(objects.c.key, prefix, after_key, inclusive))
        query = query.order_by(objects.c.key, objects.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            if full:
                return [(r.id, _version(r)) for r in conn.execute(query)]
            return [(r[0], _listed(bucket, r)) for r in conn.execute(query)]

    def version_row_id(self, bucket: str, key: str, version_id: str) -> int | None:
        with self.engine.connect() as conn:
            return conn.execute(
                select(objects.c.id).where(
                    objects.c.bucket == bucket,
                    objects.c.key == key,
                    objects.c.version_id == version_id,
                )
            ).scalar()

    def iter_bucket_versions(self, bucket: str, batch: int = 1000) -> Iterator[ObjectVersion]:
        after: tuple[str, int] | None = None
        while True:
            rows = self.scan_versions(
                bucket,
                "",
                after[0] if after else None,
                after[1] if after else None,
                batch,
                full=True,
            )
            for row_id, version in rows:
                yield version
                after = (version.key, row_id)
            if len(rows) < batch:
                return

    def referenced_data_ids(self) -> set[str]:
        """Every data-node object id the metadata points at (the GC's mark phase)."""
        ids: set[str] = set()
        with self.engine.connect() as conn:
            for (text,) in conn.execute(select(objects.c.data)):
                ids.update(item.partition(":")[0] for item in text.split())
            for (object_id,) in conn.execute(select(parts.c.object_id)):
                ids.add(object_id)
        return ids

    # multipart -------------------------------------------------------------------------

    @staticmethod
    def create_upload(conn: Connection, upload: Upload) -> None:
        conn.execute(
            insert(uploads).values(
                upload_id=upload.upload_id,
                bucket=upload.bucket,
                key=upload.key,
                initiated=upload.initiated,
                owner=upload.owner,
                content_type=upload.content_type,
                headers=orjson.dumps(upload.headers).decode(),
                tags=orjson.dumps(upload.tags).decode(),
                checksum_algorithm=upload.checksum_algorithm,
            )
        )

    def get_upload(self, upload_id: str, conn: Connection | None = None) -> Upload | None:
        query = select(uploads).where(uploads.c.upload_id == upload_id)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(query).first()
        return _upload(row) if row else None

    @staticmethod
    def put_part(conn: Connection, upload_id: str, part: Part) -> Part | None:
        """Store a part; returns the part it replaced (same number), whose data is garbage."""
        if (
            conn.execute(
                select(uploads.c.upload_id).where(uploads.c.upload_id == upload_id)
            ).first()
            is None
        ):
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        where = and_(parts.c.upload_id == upload_id, parts.c.number == part.number)
        old = conn.execute(select(parts).where(where)).first()
        if old is not None:
            conn.execute(delete(parts).where(where))
        conn.execute(
            insert(parts).values(
                upload_id=upload_id,
                number=part.number,
                size=part.size,
                etag=part.etag,
                last_modified=part.last_modified,
                object_id=part.data.object_id,
                checksum=part.checksum,
            )
        )
        return _part(old) if old else None

    def list_parts(
        self, upload_id: str, after: int = 0, limit: int = 10000, conn: Connection | None = None
    ) -> list[Part]:
        query = (
            select(parts)
            .where(parts.c.upload_id == upload_id, parts.c.number > after)
            .order_by(parts.c.number)
            .limit(limit)
        )
        if conn is not None:
            return [_part(r) for r in conn.execute(query)]
        with self.engine.connect() as c:
            return [_part(r) for r in c.execute(query)]

    @staticmethod
    def end_upload(conn: Connection, upload_id: str) -> None:
        conn.execute(delete(parts).where(parts.c.upload_id == upload_id))
        conn.execute(delete(uploads).where(uploads.c.upload_id == upload_id))

    def list_uploads(
        self, bucket: str, prefix: str, after_key: str | None, after_id: str | None, limit: int
    ) -> list[Upload]:
        query = select(uploads).where(uploads.c.bucket == bucket)
        if after_key is not None and after_id:
            query = query.where(
                *_key_range(uploads.c.key, prefix, after_key, True),
                (uploads.c.key > after_key)
                | ((uploads.c.key == after_key) & (uploads.c.upload_id > after_id)),
            )
        else:
            query = query.where(*_key_range(uploads.c.key, prefix, after_key, False))
        query = query.order_by(uploads.c.key, uploads.c.upload_id).limit(limit)
        with self.engine.connect() as conn:
            return [_upload(r) for r in conn.execute(query)]


def _key_range(
    column: Any, prefix: str, after: str | None, inclusive: bool
) -> list[ColumnElement[bool]]:
    """Bounds for "keys under prefix, after `after`", with ONE lower bound.

    SQLite seeks an index on one lower bound only; given `key >= prefix AND key > after` it
    may seek to the prefix and filter its way to `after`, which makes each page of a long
    listing cost O(keys before it). So the larger of the two bounds is the only one sent.
    """
    bounds: list[ColumnElement[bool]] = []
    if after is not None and after >= prefix:
        bounds.append(column >= after if inclusive else column > after)
    elif prefix:
        bounds.append(column >= prefix)
    upper = prefix_end(prefix) if prefix else None
    if upper is not None:
        bounds.append(column < upper)
    return bounds


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix (None: no bound)."""
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:
                nxt = 0xE000
            chars[-1] = chr(nxt)
            return "".join(chars)
        chars.pop()
    return None
