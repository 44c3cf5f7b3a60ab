"""Bucket-level S3 operations: create/delete, configuration documents, listings, batch delete."""

from __future__ import annotations

import base64
import binascii
import functools
from urllib.parse import quote

from scalelab.objectstore import cors, lifecycle, listing, policy, s3xml
from scalelab.objectstore.api import Handler, Request, Response, int_param
from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.model import VERSIONING_STATES, ObjectVersion
from scalelab.objectstore.multipart import Multipart
from scalelab.objectstore.service import ObjectStore

XML = "application/xml"
OWNER_NAME = "scalelab"


def _owner(principal: str) -> list[s3xml.Node]:
    return [("ID", principal or OWNER_NAME), ("DisplayName", principal or OWNER_NAME)]


class BucketHandlers:
    def __init__(self, store: ObjectStore, multipart: Multipart) -> None:
        self.store = store
        self.multipart = multipart

    def dispatch(self, req: Request) -> tuple[str, Handler]:
        q, m = req.query, req.method
        configs = {
            "versioning": "Versioning",
            "policy": "Policy",
            "cors": "Cors",
            "lifecycle": "LifecycleConfiguration",
            "tagging": "Tagging",
        }
        for flag, name in configs.items():
            if flag in q:
                if m == "GET":
                    return f"GetBucket{name}", self.get_config
                if m == "PUT":
                    return f"PutBucket{name}", self.put_config
                if m == "DELETE" and flag != "versioning":
                    return f"DeleteBucket{name.removesuffix('Configuration')}", self.delete_config
        if m == "GET":
            if "location" in q:
                return "GetBucketLocation", self.get_location
            if "uploads" in q:
                return "ListMultipartUploads", self.list_uploads
            if "versions" in q:
                return "ListObjectVersions", self.list_versions
            if q.get("list-type") == "2":
                return "ListObjectsV2", self.list_objects
            return "ListObjects", self.list_objects
        if m == "HEAD":
            return "HeadBucket", self.head_bucket
        if m == "PUT":
            return "CreateBucket", self.create_bucket
        if m == "DELETE":
            return "DeleteBucket", self.delete_bucket
        if m == "POST" and "delete" in q:
            return "DeleteObjects", self.delete_objects
        if m == "OPTIONS":
            return "Preflight", self.head_bucket
        raise S3Error("MethodNotAllowed")

    # buckets -------------------------------------------------------------------------------

    async def list_buckets(self, req: Request) -> Response:
        found = self.store.list_buckets(req.principal)
        body = s3xml.render(
            "ListAllMyBucketsResult",
            [
                ("Owner", _owner(req.principal or "")),
                (
                    "Buckets",
                    [
                        (
                            "Bucket",
                            [
                                ("Name", b.name),
                                ("CreationDate", s3xml.timestamp(b.created)),
                                ("BucketRegion", b.region),
                            ],
                        )
                        for b in found
                    ],
                ),
            ],
        )
        return Response(200, body, {}, XML)

    async def create_bucket(self, req: Request) -> Response:
        assert req.bucket is not None
        location = None
        raw = await req.body.read()
        if raw.strip():
            root = s3xml.parse(raw, "CreateBucketConfiguration")
            location = s3xml.text(root, "LocationConstraint")
        await self.store.create_bucket(req.principal, req.bucket, location)
        acl = req.headers.get("x-amz-acl", "private")
        if acl in ("public-read", "public-read-write"):
            await self.store.update_bucket(
                req.principal,
                req.bucket,
                "PutBucketPolicy",
                policy=policy.public_read_policy(req.bucket, listable=True),
            )
        return Response(200, b"", {"Location": f"/{req.bucket}"})

    async def head_bucket(self, req: Request) -> Response:
        assert req.bucket is not None
        bucket = self.store.checked_bucket(req.principal, req.bucket, "HeadBucket")
        return Response(200, b"", {"x-amz-bucket-region": bucket.region})

    async def delete_bucket(self, req: Request) -> Response:
        assert req.bucket is not None
        await self.store.delete_bucket(req.principal, req.bucket)
        return Response(204)

    async def get_location(self, req: Request) -> Response:
        assert req.bucket is not None
        bucket = self.store.checked_bucket(req.principal, req.bucket, "GetBucketLocation")
        region = "" if bucket.region == "us-east-1" else bucket.region
        return Response(200, s3xml.render_text("LocationConstraint", region), {}, XML)

    # configuration documents -------------------------------------------------------------------

    async def get_config(self, req: Request) -> Response:
        assert req.bucket is not None
        operation, _ = self.dispatch(req)
        bucket = self.store.checked_bucket(req.principal, req.bucket, operation)
        q = req.query
        if "versioning" in q:
            nodes: list[s3xml.Node] = [("Status", bucket.versioning)] if bucket.versioning else []
            return Response(200, s3xml.render("VersioningConfiguration", nodes), {}, XML)
        if "policy" in q:
            if bucket.policy is None:
                raise S3Error("NoSuchBucketPolicy", BucketName=bucket.name)
            return Response(200, bucket.policy.encode(), {}, "application/json")
        if "cors" in q:
            if bucket.cors is None:
                raise S3Error("NoSuchCORSConfiguration", BucketName=bucket.name)
            return Response(200, bucket.cors, {}, XML)
        if "lifecycle" in q:
            if bucket.lifecycle is None:
                raise S3Error("NoSuchLifecycleConfiguration", BucketName=bucket.name)
            return Response(200, bucket.lifecycle, {}, XML)
        if not bucket.tags:
            raise S3Error("NoSuchTagSet", BucketName=bucket.name)
        return Response(200, s3xml.render_tagging(bucket.tags), {}, XML)

    async def put_config(self, req: Request) -> Response:
        assert req.bucket is not None
        operation, _ = self.dispatch(req)
        raw = await req.body.read()
        q = req.query
        if "versioning" in q:
            status = s3xml.text(s3xml.parse(raw, "VersioningConfiguration"), "Status", "")
            if status not in VERSIONING_STATES or not status:
                raise S3Error("MalformedXML", "Status must be Enabled or Suspended")
            await self.store.update_bucket(req.principal, req.bucket, operation, versioning=status)
        elif "policy" in q:
            text = raw.decode("utf-8", "replace")
            policy.parse_policy(text, bucket=req.bucket)
            await self.store.update_bucket(req.principal, req.bucket, operation, policy=text)
            return Response(204)
        elif "cors" in q:
            rules = cors.parse_cors(raw)
            await self.store.update_bucket(
                req.principal, req.bucket, operation, cors=cors.render_cors(rules)
            )
        elif "lifecycle" in q:
            life_rules = lifecycle.parse_lifecycle(raw)
            await self.store.update_bucket(
                req.principal,
                req.bucket,
                operation,
                lifecycle=lifecycle.render_lifecycle(life_rules),
            )
        else:
            tags = s3xml.parse_tagging(raw)
            await self.store.update_bucket(req.principal, req.bucket, operation, tags=tags)
            return Response(204)
        return Response(200)

    async def delete_config(self, req: Request) -> Response:
        assert req.bucket is not None
        operation, _ = self.dispatch(req)
        field = next(f for f in ("policy", "cors", "lifecycle", "tagging") if f in req.query)
        value: object = {} if field == "tagging" else None
        column = "tags" if field == "tagging" else field
        await self.store.update_bucket(req.principal, req.bucket, operation, **{column: value})
        return Response(204)

    # listings ---------------------------------------------------------------------------------

    async def list_objects(self, req: Request) -> Response:
        assert req.bucket is not None
        v2 = req.query.get("list-type") == "2"
        bucket = self.store.checked_bucket(
            req.principal, req.bucket, "ListObjectsV2" if v2 else "ListObjects"
        )
        q = req.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = int_param(req, "max-keys", 1000, 1000)
        encoding = q.get("encoding-type")
        if encoding not in (None, "url"):
            raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request")
        enc = (lambda s: quote(s, safe="/")) if encoding == "url" else (lambda s: s)
        if v2:
            token = q.get("continuation-token")
            after = _decode_token(token) if token is not None else q.get("start-after") or None
        else:
            after = q.get("marker") or None
        page = listing.list_latest(
            lambda start, inclusive, limit: self.store.meta.scan_latest(
                bucket.name, start, prefix, limit, inclusive
            ),
            prefix,
            delimiter,
            after,
            max_keys,
        )
        nodes: list[s3xml.Node] = [
            ("Name", bucket.name),
            ("Prefix", enc(prefix)),
            ("Delimiter", enc(delimiter) if delimiter else None),
            ("MaxKeys", max_keys),
            ("EncodingType", encoding),
            ("IsTruncated", page.truncated),
        ]
        fetch_owner = v2 and q.get("fetch-owner") == "true"
        if v2:
            nodes.append(("KeyCount", len(page.contents) + len(page.common_prefixes)))
            nodes.append(("ContinuationToken", q.get("continuation-token")))
            nodes.append(("StartAfter", enc(q["start-after"]) if "start-after" in q else None))
            if page.truncated and page.next_marker is not None:
                nodes.append(("NextContinuationToken", _encode_token(page.next_marker)))
        else:
            nodes.append(("Marker", enc(q.get("marker", ""))))
            if page.truncated and delimiter and page.next_marker is not None:
                nodes.append(("NextMarker", enc(page.next_marker)))
        for v in page.contents:
            entry: list[s3xml.Node] = [
                ("Key", enc(v.key)),
                ("LastModified", s3xml.timestamp(v.last_modified)),
                ("ETag", v.etag),
                ("Size", v.size),
                ("StorageClass", "STANDARD"),
            ]
            if fetch_owner or not v2:
                entry.append(("Owner", _owner(v.owner)))
            nodes.append(("Contents", entry))
        for common in page.common_prefixes:
            nodes.append(("CommonPrefixes", [("Prefix", enc(common))]))
        return Response(200, s3xml.render("ListBucketResult", nodes), {}, XML)

    async def list_versions(self, req: Request) -> Response:
        assert req.bucket is not None
        bucket = self.store.checked_bucket(req.principal, req.bucket, "ListObjectVersions")
        q = req.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        max_keys = int_param(req, "max-keys", 1000, 1000)
        key_marker = q.get("key-marker") or None
        version_marker = q.get("version-id-marker") or None
        after_row = None
        if version_marker is not None:
            if key_marker is None:
                raise S3Error(
                    "InvalidArgument",
                    "A version-id marker cannot be specified without a key marker.",
                )
            after_row = self.store.meta.version_row_id(bucket.name, key_marker, version_marker)
            if after_row is None:
                raise S3Error("InvalidArgument", "Invalid version id specified")
        meta = self.store.meta
        page = listing.list_versions(
            lambda key, row, inclusive, limit: meta.scan_versions(
                bucket.name, prefix, key, row, limit, inclusive
            ),
            prefix,
            delimiter,
            key_marker,
            after_row,
            max_keys,
        )
        nodes: list[s3xml.Node] = [
            ("Name", bucket.name),
            ("Prefix", prefix),
            ("KeyMarker", key_marker or ""),
            ("VersionIdMarker", version_marker or ""),
            ("Delimiter", delimiter or None),
            ("MaxKeys", max_keys),
            ("IsTruncated", page.truncated),
        ]
        if page.truncated:
            nodes.append(("NextKeyMarker", page.next_key_marker))
            nodes.append(("NextVersionIdMarker", page.next_version_id_marker))
        for v in page.versions:
            nodes.append(_version_node(v))
        for common in page.common_prefixes:
            nodes.append(("CommonPrefixes", [("Prefix", common)]))
        return Response(200, s3xml.render("ListVersionsResult", nodes), {}, XML)

    async def list_uploads(self, req: Request) -> Response:
        assert req.bucket is not None
        bucket = self.store.checked_bucket(req.principal, req.bucket, "ListMultipartUploads")
        q = req.query
        prefix = q.get("prefix", "")
        limit = int_param(req, "max-uploads", 1000, 1000)
        key_marker = q.get("key-marker") or None
        id_marker = q.get("upload-id-marker") or None
        found = self.store.meta.list_uploads(bucket.name, prefix, key_marker, id_marker, limit + 1)
        truncated = len(found) > limit
        found = found[:limit]
        nodes: list[s3xml.Node] = [
            ("Bucket", bucket.name),
            ("KeyMarker", key_marker or ""),
            ("UploadIdMarker", id_marker or ""),
            ("Prefix", prefix),
            ("MaxUploads", limit),
            ("IsTruncated", truncated),
        ]
        if truncated and found:
            nodes.append(("NextKeyMarker", found[-1].key))
            nodes.append(("NextUploadIdMarker", found[-1].upload_id))
        for u in found:
            nodes.append(
                (
                    "Upload",
                    [
                        ("Key", u.key),
                        ("UploadId", u.upload_id),
                        ("Initiator", _owner(u.owner)),
                        ("Owner", _owner(u.owner)),
                        ("StorageClass", "STANDARD"),
                        ("Initiated", s3xml.timestamp(u.initiated)),
                        ("ChecksumAlgorithm", u.checksum_algorithm),
                    ],
                )
            )
        return Response(200, s3xml.render("ListMultipartUploadsResult", nodes), {}, XML)

    # batch delete -------------------------------------------------------------------------------

    async def delete_objects(self, req: Request) -> Response:
        assert req.bucket is not None
        bucket = self.store.bucket(req.bucket)
        root = s3xml.parse(await req.body.read(), "Delete")
        quiet = (s3xml.text(root, "Quiet", "false") or "").lower() == "true"
        wanted = []
        for el in root.iterfind("Object"):
            key = s3xml.text(el, "Key")
            if not key:
                raise S3Error("MalformedXML", "each Object needs a Key")
            wanted.append((key, s3xml.text(el, "VersionId")))
        if len(wanted) > 1000:
            raise S3Error("MalformedXML", "at most 1000 keys per request")
        nodes: list[s3xml.Node] = []
        for key, version_id in wanted:
            try:
                self.store.authorize(
                    req.principal,
                    bucket,
                    "DeleteObjectVersion" if version_id else "DeleteObject",
                    key,
                )
                result = await self.store.delete_checked(bucket.name, key, version_id)
            except S3Error as exc:
                nodes.append(
                    (
                        "Error",
                        [
                            ("Key", key),
                            ("VersionId", version_id),
                            ("Code", exc.code),
                            ("Message", exc.message),
                        ],
                    )
                )
                continue
            if quiet:
                continue
            entry: list[s3xml.Node] = [("Key", key), ("VersionId", version_id)]
            if result.delete_marker:
                entry.append(("DeleteMarker", True))
                entry.append(("DeleteMarkerVersionId", result.version_id))
            nodes.append(("Deleted", entry))
        return Response(200, s3xml.render("DeleteResult", nodes), {}, XML)


def _version_node(v: ObjectVersion) -> s3xml.Node:
    common: list[s3xml.Node] = [
        ("Key", v.key),
        ("VersionId", v.version_id),
        ("IsLatest", v.is_latest),
        ("LastModified", s3xml.timestamp(v.last_modified)),
    ]
    if v.delete_marker:
        return ("DeleteMarker", [*common, ("Owner", _owner(v.owner))])
    return (
        "Version",
        [
            *common,
            ("ETag", v.etag),
            ("Size", v.size),
            ("StorageClass", "STANDARD"),
            ("Owner", _owner(v.owner)),
        ],
    )


def _encode_token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect") from None


def bucket_cors(store: ObjectStore, name: str) -> list[cors.CorsRule] | None:
    try:
        found = store.bucket(name)
    except S3Error:
        return None
    return None if found.cors is None else _parsed_cors(found.cors)


@functools.lru_cache(maxsize=256)
def _parsed_cors(document: bytes) -> list[cors.CorsRule]:
    return cors.parse_cors(document)
