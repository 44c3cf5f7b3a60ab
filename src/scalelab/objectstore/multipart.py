"""Multipart upload (the book's section): parts land as data-node objects, completion is metadata.

Completing an upload writes no bytes: the new object version's manifest is the list of the
chosen parts' data objects, so a 100 MiB upload completes as fast as a small PUT. Parts that
were uploaded but not listed in the completion become garbage at once.

The upload's life as a table (the one place to read every transition). An upload that is
completed or aborted no longer exists, so every later request about it is NoSuchUpload, as in
S3; abandoned uploads are aborted by the lifecycle rule AbortIncompleteMultipartUpload.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from sqlalchemy import Connection

from scalelab.objectstore import checksums
from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.model import (
    MAX_PART_BYTES,
    MAX_PARTS,
    MIN_PART_BYTES,
    ObjectVersion,
    Part,
    Upload,
    check_key,
    multipart_etag,
    new_upload_id,
    quote_etag,
)
from scalelab.objectstore.service import Body, Integrity, ObjectStore, Written

# (state, event) -> next state. States: "open" (created, parts may arrive) and "gone"
# (completed or aborted; the row is deleted). Anything not listed is NoSuchUpload.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("open", "upload_part"): "open",
    ("open", "list_parts"): "open",
    ("open", "complete"): "gone",
    ("open", "abort"): "gone",
}


def transition(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise S3Error("NoSuchUpload") from None


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str
    checksums: dict[str, str]


class Multipart:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.meta = store.meta

    def _upload(
        self, bucket: str, key: str, upload_id: str, conn: Connection | None = None
    ) -> Upload:
        upload = self.meta.get_upload(upload_id, conn=conn)
        if upload is None or upload.bucket != bucket or upload.key != key:
            raise S3Error("NoSuchUpload", UploadId=upload_id)
        return upload

    async def create(
        self,
        principal: str | None,
        bucket: str,
        key: str,
        *,
        content_type: str | None,
        headers: dict[str, str],
        tags: dict[str, str],
        checksum_algorithm: str | None,
    ) -> Upload:
        check_key(key)
        self.store.checked_bucket(principal, bucket, "CreateMultipartUpload", key)
        if checksum_algorithm is not None:
            checksum_algorithm = checksum_algorithm.upper()
            if checksum_algorithm not in checksums.ALGORITHMS:
                raise S3Error("InvalidRequest", f"unknown checksum algorithm {checksum_algorithm}")
        upload = Upload(
            upload_id=new_upload_id(),
            bucket=bucket,
            key=key,
            initiated=self.store.clock(),
            owner=principal or "",
            content_type=content_type or "binary/octet-stream",
            headers=headers,
            tags=tags,
            checksum_algorithm=checksum_algorithm,
        )
        await self.store.commit(lambda conn: self.meta.create_upload(conn, upload))
        return upload

    async def upload_part(
        self,
        principal: str | None,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: Body,
        integrity: Integrity,
    ) -> Part:
        self.store.checked_bucket(principal, bucket, "UploadPart", key)
        if not 1 <= number <= MAX_PARTS:
            raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000")
        upload = self._upload(bucket, key, upload_id)
        transition("open", "upload_part")
        if upload.checksum_algorithm and not integrity.algorithms():
            integrity.sdk_algorithm = upload.checksum_algorithm
        written = await self.store.write_body(body, integrity, limit=MAX_PART_BYTES)
        checksum = written.checksums.get(upload.checksum_algorithm or "")
        part = Part(
            number=number,
            size=written.ref.size,
            etag=quote_etag(written.md5_hex),
            last_modified=self.store.clock(),
            data=written.ref,
            checksum=checksum,
        )
        return await self.store_part(upload_id, part, written)

    async def store_part(self, upload_id: str, part: Part, written: Written) -> Part:
        """Record a part once its data is durable; a part it replaces becomes garbage."""
        replaced = await self.store.commit(
            lambda conn: self.meta.put_part(conn, upload_id, part),
            after=written.durable,
            on_error=lambda: self.store.discard([part.data]),
        )
        if replaced is not None:
            self.store.discard([replaced.data])
        return part

    def check_open(self, principal: str | None, bucket: str, key: str, upload_id: str) -> Upload:
        self.store.checked_bucket(principal, bucket, "UploadPart", key)
        return self._upload(bucket, key, upload_id)

    async def complete(
        self,
        principal: str | None,
        bucket: str,
        key: str,
        upload_id: str,
        chosen: list[CompletedPart],
        *,
        if_none_match: str | None = None,
        if_match: str | None = None,
    ) -> ObjectVersion:
        self.store.checked_bucket(principal, bucket, "CompleteMultipartUpload", key)
        upload = self._upload(bucket, key, upload_id)
        if not chosen:
            raise S3Error("MalformedXML", "You must specify at least one part")
        numbers = [p.number for p in chosen]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise S3Error("InvalidPartOrder")
        stored = {p.number: p for p in self.meta.list_parts(upload_id)}
        used: list[Part] = []
        for i, want in enumerate(chosen):
            have = stored.get(want.number)
            if have is None or have.etag.strip('"') != want.etag.strip('"'):
                raise S3Error("InvalidPart", UploadId=upload_id, PartNumber=str(want.number))
            if i < len(chosen) - 1 and have.size < MIN_PART_BYTES:
                raise S3Error(
                    "EntityTooSmall",
                    ProposedSize=str(have.size),
                    MinSizeAllowed=str(MIN_PART_BYTES),
                    PartNumber=str(want.number),
                )
            used.append(have)
        headers = dict(upload.headers)
        alg = upload.checksum_algorithm
        if alg and all(p.checksum for p in used):
            hasher = checksums.new_hasher(alg)
            for p in used:
                hasher.update(base64.b64decode(p.checksum or ""))
            headers[checksums.header_name(alg)] = f"{hasher.b64digest()}-{len(used)}"
        used_numbers = {p.number for p in used}
        unused = [p.data for n, p in stored.items() if n not in used_numbers]
        now = self.store.clock()

        def make(version_id: str) -> ObjectVersion:
            return ObjectVersion(
                bucket=bucket,
                key=key,
                version_id=version_id,
                is_latest=True,
                delete_marker=False,
                last_modified=now,
                size=sum(p.size for p in used),
                etag=multipart_etag([p.etag for p in used]),
                content_type=upload.content_type,
                headers=headers,
                data=tuple(p.data for p in used),
                tags=upload.tags,
                parts_count=len(used),
                owner=upload.owner,
            )

        version = await self.store.put_version(
            bucket,
            make,
            if_none_match=if_none_match,
            if_match=if_match,
            end_upload=upload_id,
        )
        transition("open", "complete")
        self.store.discard(unused)
        return version

    async def abort(self, principal: str | None, bucket: str, key: str, upload_id: str) -> None:
        self.store.checked_bucket(principal, bucket, "AbortMultipartUpload", key)
        await self.abort_checked(bucket, key, upload_id)

    async def abort_checked(self, bucket: str, key: str, upload_id: str) -> None:
        def op(conn: Connection) -> list[Part]:
            self._upload(bucket, key, upload_id, conn=conn)
            found = self.meta.list_parts(upload_id, conn=conn)
            self.meta.end_upload(conn, upload_id)
            return found

        gone = await self.store.commit(op)
        transition("open", "abort")
        self.store.discard([p.data for p in gone])

    def list_parts(
        self, principal: str | None, bucket: str, key: str, upload_id: str, after: int, limit: int
    ) -> tuple[Upload, list[Part], bool]:
        self.store.checked_bucket(principal, bucket, "ListParts", key)
        upload = self._upload(bucket, key, upload_id)
        found = self.meta.list_parts(upload_id, after=after, limit=limit + 1)
        return upload, found[:limit], len(found) > limit
