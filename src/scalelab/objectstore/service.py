"""The API service's use cases: buckets, objects, versions, with S3's semantics.

Write order (the design notes' Q&A): an object's bytes are made durable on the data store
first, then its metadata row is committed; only then does the client get 200. A crash in
between leaves unreferenced data, which `reclaim_orphans` finds and deletes; it never leaves
metadata that points at missing bytes. Removing a version goes the other way round: metadata
first, then the data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection

from scalelab.objectstore import checksums, policy
from scalelab.objectstore.datanode import DataNode, StoredObject
from scalelab.objectstore.errors import ObjectMissing, S3Error
from scalelab.objectstore.groupcommit import Reclaimer
from scalelab.objectstore.metadata import MetadataStore
from scalelab.objectstore.model import (
    MAX_PUT_BYTES,
    NULL_VERSION,
    Bucket,
    DataRef,
    ObjectVersion,
    check_bucket_name,
    check_key,
    etag_matches,
    new_version_id,
    quote_etag,
)

log = logging.getLogger("scalelab.objectstore")

T = TypeVar("T")

# Condition keys of the request being served (aws:SourceIp, aws:SecureTransport, s3:prefix...),
# set by the HTTP adapter so bucket policies with conditions can be evaluated here.
request_context: ContextVar[Mapping[str, str] | None] = ContextVar("request_context", default=None)
INLINE_READ_BYTES = 1 << 20  # ranges up to this size are read without a thread hop
OFFLOAD_BYTES = 1 << 20  # body bytes hashed and written per worker-thread hop


class Body(Protocol):
    """A request body already stripped of any aws-chunked framing."""

    trailers: dict[str, str]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def take_payload_hash(self) -> Any:
        """The payload hash (hashlib object) the consumer must update, or None."""

    def verify_payload(self) -> None:
        """After the consumer has fed every byte to the payload hash: raise on mismatch."""


@dataclass
class Integrity:
    """What the client asked us to verify about a body: Content-MD5 and flexible checksums."""

    content_md5: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> expected base64
    trailer_algorithm: str | None = None  # checksum that arrives in the trailer
    sdk_algorithm: str | None = None  # x-amz-sdk-checksum-algorithm: compute and store

    def algorithms(self) -> set[str]:
        algs = set(self.checksums)
        for extra in (self.trailer_algorithm, self.sdk_algorithm):
            if extra:
                algs.add(extra)
        return algs


@dataclass(frozen=True)
class Written:
    """Data handed to the data node: `durable` resolves once its bytes are on disk."""

    ref: DataRef
    md5_hex: str
    checksums: dict[str, str]  # algorithm -> base64, as computed
    durable: Future[StoredObject]


@dataclass(frozen=True)
class DeleteResult:
    version_id: str | None
    delete_marker: bool


class ObjectStore:
    """Buckets and objects over a metadata store and one data node."""

    def __init__(
        self,
        meta: MetadataStore,
        node: DataNode,
        *,
        region: str,
        admins: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.meta = meta
        self.node = node
        self.region = region
        self.admins = admins
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}
        self.reclaimer = Reclaimer(node)

    # authorization (the book's IAM) --------------------------------------------------------

    def authorize(
        self, principal: str | None, bucket: Bucket | None, operation: str, key: str | None = None
    ) -> None:
        """Owner and admins may do anything not explicitly denied; others need an Allow."""
        action = policy.s3_action(operation)
        if bucket is None:
            if principal is None:
                raise S3Error("AccessDenied")
            return
        parsed = _parsed_policy(bucket.policy, bucket.name) if bucket.policy else None
        owner = principal if principal in self.admins else bucket.owner
        if not policy.decide(
            principal=principal,
            owner=owner,
            action=action,
            resource=policy.resource_arn(bucket.name, key),
            policy=parsed,
            context=request_context.get() or {},
        ):
            raise S3Error("AccessDenied")

    def bucket(self, name: str) -> Bucket:
        """The bucket, from a process-local cache: every request needs it, few change it.

        This process is the only writer of its metadata (the data dir is locked), and every
        bucket change below drops the entry after committing, so the cache cannot go stale.
        """
        found = self._buckets.get(name)
        if found is None:
            found = self.meta.get_bucket(name)
            if found is None:
                raise S3Error("NoSuchBucket", BucketName=name)
            self._buckets[name] = found
        return found

    async def _bucket_change(self, name: str, op: Callable[[Connection], None]) -> None:
        try:
            await self.commit(op)
        finally:
            self._buckets.pop(name, None)

    def checked_bucket(
        self, principal: str | None, name: str, operation: str, key: str | None = None
    ) -> Bucket:
        """The bucket, if `principal` may do `operation` on it (or on `key` within it)."""
        found = self.bucket(name)
        self.authorize(principal, found, operation, key)
        return found

    async def commit(
        self,
        op: Callable[[Connection], T],
        *,
        after: Future[Any] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> T:
        """Run op in the next group commit, once `after` (a data write) is durable; on_error
        runs if it does not commit (see groupcommit)."""
        return await asyncio.wrap_future(
            self.meta.committer.submit(op, after=after, on_error=on_error)
        )

    # buckets -----------------------------------------------------------------------------

    def list_buckets(self, principal: str | None) -> list[Bucket]:
        if principal is None:
            raise S3Error("AccessDenied")
        everything = self.meta.list_buckets()
        if principal in self.admins:
            return everything
        return [b for b in everything if b.owner == principal]

    async def create_bucket(self, principal: str | None, name: str, location: str | None) -> None:
        if principal is None:
            raise S3Error("AccessDenied")
        check_bucket_name(name)
        if location not in (None, "", self.region):
            raise S3Error(
                "IllegalLocationConstraintException",
                f"this endpoint serves region {self.region}, not {location}",
            )
        bucket = Bucket(name=name, owner=principal, created=self.clock(), region=self.region)
        await self._bucket_change(name, lambda conn: self.meta.create_bucket(conn, bucket))

    async def delete_bucket(self, principal: str | None, name: str) -> None:
        self.checked_bucket(principal, name, "DeleteBucket")
        await self._bucket_change(name, lambda conn: self.meta.delete_bucket(conn, name))

    async def update_bucket(
        self, principal: str | None, name: str, operation: str, **values: object
    ) -> None:
        self.checked_bucket(principal, name, operation)
        await self._bucket_change(name, lambda conn: self.meta.update_bucket(conn, name, **values))

    # writing data -----------------------------------------------------------------------

    async def write_body(
        self, body: Body, integrity: Integrity, *, limit: int = MAX_PUT_BYTES
    ) -> Written:
        """Stream a body to the data store, verifying what the client asked.

        Returns once the body is verified and appended; the data node's group commit makes it
        durable, and the metadata op that refers to it chains onto `Written.durable`, so a
        small PUT pays no event-loop round trip between the two commits.
        """
        writer = self.node.writer()
        md5 = hashlib.md5(usedforsecurity=False)
        hashers = [checksums.new_hasher(alg) for alg in integrity.algorithms()]
        payload_hash = body.take_payload_hash()

        def consume(piece: bytes) -> None:
            md5.update(piece)
            for hasher in hashers:
                hasher.update(piece)
            if payload_hash is not None:
                payload_hash.update(piece)
            writer.write(piece)

        # Bodies arrive in socket-sized chunks; hashing and writing go to a worker thread a
        # MiB at a time (hashlib, CRC and pwrite release the GIL), one piece in flight while
        # the event loop receives the next: large uploads use both cores, small ones stay
        # inline.
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        buf = bytearray()
        size = 0
        try:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    raise S3Error("EntityTooLarge", MaxSizeAllowed=str(limit))
                buf += chunk
                if len(buf) >= OFFLOAD_BYTES:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, consume, bytes(buf))
                    buf.clear()
            if pending is not None:
                await pending
            if buf or size == 0:
                consume(bytes(buf))
            body.verify_payload()
            computed = {h.algorithm: h.b64digest() for h in hashers}
            _verify(integrity, md5.digest(), computed, body.trailers)
            durable = writer.commit_future()
        except BaseException:
            if pending is not None and not pending.done():
                with contextlib.suppress(BaseException):
                    await pending
            writer.abort()
            raise
        return Written(DataRef(writer.object_id, size), md5.hexdigest(), computed, durable)

    def discard(self, refs: Iterator[DataRef] | tuple[DataRef, ...] | list[DataRef]) -> None:
        """Delete data no metadata points at any more (after the metadata commit).

        Off the request path: the metadata commit already made the bytes unreachable, so the
        client need not wait for the data node's transaction; a crash before it runs leaves
        orphans, which the sweep reclaims.
        """
        ids = [ref.object_id for ref in refs]
        if ids:
            self.reclaimer.submit(ids)

    async def put_version(
        self,
        bucket_name: str,
        make: Callable[[str], ObjectVersion],
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
        written: Written | None = None,
        end_upload: str | None = None,
    ) -> ObjectVersion:
        """Commit a new latest version built by `make(version_id)`, checking write conditions.

        With `end_upload`, the multipart upload is removed in the same transaction, so a
        concurrent abort and complete cannot both succeed.
        """

        def op(conn: Connection) -> tuple[ObjectVersion, list[ObjectVersion]]:
            bucket = self.meta.get_bucket_in(conn, bucket_name)
            if end_upload is not None:
                if self.meta.get_upload(end_upload, conn=conn) is None:
                    raise S3Error("NoSuchUpload", UploadId=end_upload)
                self.meta.end_upload(conn, end_upload)
            version_id = new_version_id() if bucket.versioned else NULL_VERSION
            version = make(version_id)
            if if_none_match is not None or if_match is not None:
                current = self.meta.get_version(bucket_name, version.key, conn=conn)
                live = current if current is not None and not current.delete_marker else None
                if if_none_match is not None and live is not None:
                    if etag_matches(if_none_match, live.etag):
                        raise S3Error("PreconditionFailed", Condition="If-None-Match")
                if if_match is not None:
                    if live is None:
                        raise S3Error("NoSuchKey", Key=version.key)
                    if not etag_matches(if_match, live.etag):
                        raise S3Error("PreconditionFailed", Condition="If-Match")
            replaced = self.meta.insert_version(conn, version, bucket.versioning != "")
            return version, replaced

        if written is None:
            version, replaced = await self.commit(op)
        else:
            ref = written.ref
            version, replaced = await self.commit(
                op, after=written.durable, on_error=lambda: self.discard([ref])
            )
        self.discard([ref for old in replaced for ref in old.data])
        return version

    async def put_object(
        self,
        principal: str | None,
        bucket_name: str,
        key: str,
        body: Body,
        integrity: Integrity,
        *,
        content_type: str | None,
        headers: dict[str, str],
        tags: dict[str, str] | None = None,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> ObjectVersion:
        check_key(key)
        self.checked_bucket(principal, bucket_name, "PutObject", key)
        written = await self.write_body(body, integrity)
        return await self.commit_written(
            bucket_name,
            key,
            written,
            content_type=content_type or "binary/octet-stream",
            headers=headers,
            tags=tags or {},
            owner=principal or "",
            if_none_match=if_none_match,
            if_match=if_match,
        )

    async def commit_written(
        self,
        bucket_name: str,
        key: str,
        written: Written,
        *,
        content_type: str,
        headers: dict[str, str],
        tags: dict[str, str],
        owner: str,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> ObjectVersion:
        """Make freshly written data the key's latest version (PutObject, CopyObject)."""
        stored_headers = dict(headers)
        for alg, value in written.checksums.items():
            stored_headers[checksums.header_name(alg)] = value
        now = self.clock()

        def make(version_id: str) -> ObjectVersion:
            return ObjectVersion(
                bucket=bucket_name,
                key=key,
                version_id=version_id,
                is_latest=True,
                delete_marker=False,
                last_modified=now,
                size=written.ref.size,
                etag=quote_etag(written.md5_hex),
                content_type=content_type,
                headers=stored_headers,
                data=(written.ref,),
                tags=tags,
                owner=owner,
            )

        return await self.put_version(
            bucket_name,
            make,
            if_none_match=if_none_match,
            if_match=if_match,
            written=written,
        )

    async def copy_data(
        self, source: ObjectVersion, start: int, end: int, integrity: Integrity
    ) -> Written:
        """Copy bytes of a version into a new data object (CopyObject, UploadPartCopy)."""
        return await self.write_body(_StreamBody(self.read(source, start, end)), integrity)

    async def set_tags(self, version: ObjectVersion, tags: dict[str, str]) -> None:
        await self.commit(
            lambda conn: self.meta.set_tags(
                conn, version.bucket, version.key, version.version_id, tags
            )
        )

    # reading ------------------------------------------------------------------------------

    def get_version(
        self, principal: str | None, bucket_name: str, key: str, version_id: str | None
    ) -> ObjectVersion:
        """The version a GET/HEAD serves, or S3's error for a missing key or delete marker."""
        bucket = self.bucket(bucket_name)
        operation = "GetObjectVersion" if version_id else "GetObject"
        self.authorize(principal, bucket, operation, key)
        version = self.meta.get_version(bucket_name, key, version_id)
        if version is None:
            if version_id is not None:
                raise S3Error("NoSuchVersion", Key=key, VersionId=version_id)
            raise S3Error("NoSuchKey", Key=key)
        if version.delete_marker:
            marker_headers = {"x-amz-delete-marker": "true"}
            if version_id is not None:
                marker_headers["x-amz-version-id"] = version.version_id
                raise S3Error("MethodNotAllowed", headers=marker_headers)
            if bucket.versioning:
                marker_headers["x-amz-version-id"] = version.version_id
            raise S3Error("NoSuchKey", headers=marker_headers, Key=key)
        return version

    def check_readable(self, version: ObjectVersion) -> None:
        """ObjectMissing now, before a streamed reply starts, if the data is already gone."""
        for ref in version.data:
            if not self.node.exists(ref.object_id):
                raise ObjectMissing(ref.object_id)

    def read_bytes(self, version: ObjectVersion, start: int, end: int) -> bytes:
        """A small range at once: read before the reply starts, so a fault is a clean 500."""
        return b"".join(self._pieces(version.data, start, end))

    async def read(self, version: ObjectVersion, start: int, end: int) -> AsyncIterator[bytes]:
        """The bytes [start, end) of a version, verified by the data store as they are read."""
        if end - start <= INLINE_READ_BYTES:
            yield self.read_bytes(version, start, end)
            return
        # One piece read ahead: the next record is read and verified on a worker thread while
        # the current one goes out on the socket.
        pieces = self._pieces(version.data, start, end)
        loop = asyncio.get_running_loop()
        ahead = loop.run_in_executor(None, next, pieces, None)
        try:
            while (piece := await ahead) is not None:
                ahead = loop.run_in_executor(None, next, pieces, None)
                yield piece
        finally:  # the reader stopped early: let the read in flight finish before closing
            if not ahead.done():
                await asyncio.wait([ahead])
            pieces.close()

    def _pieces(self, refs: tuple[DataRef, ...], start: int, end: int) -> Generator[bytes]:
        offset = 0
        for ref in refs:
            lo, hi = max(start, offset), min(end, offset + ref.size)
            if lo < hi:
                yield from self.node.read(ref.object_id, lo - offset, hi - offset)
            offset += ref.size
            if offset >= end:
                return

    # deleting -----------------------------------------------------------------------------

    async def delete_object(
        self, principal: str | None, bucket_name: str, key: str, version_id: str | None
    ) -> DeleteResult:
        bucket = self.bucket(bucket_name)
        self.authorize(
            principal, bucket, "DeleteObjectVersion" if version_id else "DeleteObject", key
        )
        return await self.delete_checked(bucket_name, key, version_id)

    async def delete_checked(
        self, bucket_name: str, key: str, version_id: str | None
    ) -> DeleteResult:
        now = self.clock()

        def op(conn: Connection) -> tuple[DeleteResult, list[ObjectVersion]]:
            bucket = self.meta.get_bucket_in(conn, bucket_name)
            if version_id is not None:
                try:
                    gone = self.meta.delete_version(conn, bucket_name, key, version_id)
                except S3Error:
                    # S3 answers 204 for a version that is not there.
                    return DeleteResult(version_id, False), []
                return DeleteResult(gone.version_id, gone.delete_marker), [gone]
            if not bucket.versioning:
                current = self.meta.get_version(bucket_name, key, conn=conn)
                if current is None:
                    return DeleteResult(None, False), []
                gone = self.meta.delete_version(conn, bucket_name, key, current.version_id)
                return DeleteResult(None, False), [gone]
            marker_id = new_version_id() if bucket.versioned else NULL_VERSION
            marker = ObjectVersion(
                bucket=bucket_name,
                key=key,
                version_id=marker_id,
                is_latest=True,
                delete_marker=True,
                last_modified=now,
                content_type="",
            )
            replaced = self.meta.insert_version(conn, marker)
            return DeleteResult(marker_id, True), replaced

        result, gone = await self.commit(op)
        self.discard([ref for old in gone for ref in old.data])
        return result

    # garbage collection (the book's section) ------------------------------------------------

    def close(self) -> None:
        self.reclaimer.close()

    def reclaim_orphans(self, cutoff: float) -> int:
        """Delete data objects committed before `cutoff` that no metadata references.

        At start-up the cutoff is the start time (no write can be in flight yet); while
        serving it lags by a grace period so a PUT between its data and metadata commits is
        left alone.
        """
        self.reclaimer.flush()
        candidates = [oid for oid, created in self.node.ids() if created < cutoff]
        if not candidates:
            return 0
        referenced = self.meta.referenced_data_ids()
        orphans = [oid for oid in candidates if oid not in referenced]
        for oid in orphans:
            self.node.delete(oid)
        if orphans:
            log.info("reclaimed %d orphaned data objects", len(orphans))
        return len(orphans)


@functools.lru_cache(maxsize=1024)
def _parsed_policy(text: str, bucket: str) -> policy.Policy:
    return policy.parse_policy(text, bucket=bucket)


class _StreamBody:
    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self.trailers: dict[str, str] = {}
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream

    def take_payload_hash(self) -> Any:
        return None

    def verify_payload(self) -> None:
        return None


def _verify(
    integrity: Integrity, md5: bytes, computed: dict[str, str], trailers: dict[str, str]
) -> None:
    if integrity.content_md5 is not None:
        try:
            expected = base64.b64decode(integrity.content_md5, validate=True)
        except (binascii.Error, ValueError):
            raise S3Error("InvalidDigest") from None
        if len(expected) != 16:
            raise S3Error("InvalidDigest")
        if expected != md5:
            raise S3Error("BadDigest")
    wanted = dict(integrity.checksums)
    if integrity.trailer_algorithm:
        name = checksums.header_name(integrity.trailer_algorithm)
        if name not in trailers:
            raise S3Error("InvalidRequest", f"the trailer {name} was announced but not sent")
        wanted[integrity.trailer_algorithm] = trailers[name]
    for alg, value in wanted.items():
        if computed.get(alg) != value:
            raise S3Error(
                "BadDigest", f"The {alg} you specified did not match the calculated checksum."
            )
