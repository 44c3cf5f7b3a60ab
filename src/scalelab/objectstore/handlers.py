"""S3 operations: routing by method and query flags, then headers/XML <-> service calls.

`Handlers.dispatch(request)` names the operation (for metrics and authorization) and returns
its coroutine. Object-level operations are in this module; bucket configuration and listing
in `bucket_handlers.py`.
"""

from __future__ import annotations

import email.utils
from urllib.parse import parse_qsl, unquote

from scalelab.objectstore import checksums, s3xml
from scalelab.objectstore.api import Handler, Request, Response, int_param
from scalelab.objectstore.bucket_handlers import BucketHandlers
from scalelab.objectstore.errors import ObjectMissing, S3Error
from scalelab.objectstore.model import (
    MAX_PART_BYTES,
    ObjectVersion,
    Part,
    check_key,
    etag_matches,
    quote_etag,
)
from scalelab.objectstore.multipart import CompletedPart, Multipart
from scalelab.objectstore.service import INLINE_READ_BYTES, Integrity, ObjectStore

STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-language",
    "expires",
    "x-amz-website-redirect-location",
)
RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


def stored_headers(headers: dict[str, str]) -> dict[str, str]:
    """The request headers S3 keeps with an object and returns on GET/HEAD."""
    kept = {name: value for name, value in headers.items() if name.startswith("x-amz-meta-")}
    for name in STORED_HEADERS:
        if name in headers:
            kept[name] = headers[name]
    encoding = [
        e.strip()
        for e in headers.get("content-encoding", "").split(",")
        if e.strip() and e.strip() != "aws-chunked"
    ]
    if encoding:
        kept["content-encoding"] = ", ".join(encoding)
    return kept


def integrity_of(headers: dict[str, str]) -> Integrity:
    found = Integrity(content_md5=headers.get("content-md5"))
    for name, value in headers.items():
        alg = checksums.algorithm_of_header(name)
        if alg is not None:
            found.checksums[alg] = value
    trailer = headers.get("x-amz-trailer")
    if trailer:
        found.trailer_algorithm = checksums.algorithm_of_header(trailer.strip().lower())
    sdk = headers.get("x-amz-sdk-checksum-algorithm")
    if sdk:
        if sdk.upper() not in checksums.ALGORITHMS:
            raise S3Error("InvalidRequest", f"unknown checksum algorithm {sdk}")
        found.sdk_algorithm = sdk.upper()
    return found


def parse_tag_header(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    return dict(parse_qsl(value, keep_blank_values=True))


def parse_http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def check_read_conditions(
    version: ObjectVersion, headers: dict[str, str], prefix: str = ""
) -> None:
    """RFC 7232 as S3 applies it: If-Match beats If-Unmodified-Since, If-None-Match beats
    If-Modified-Since. `prefix` is "x-amz-copy-source-" for CopyObject's source."""
    if_match = headers.get(prefix + "if-match")
    if_none_match = headers.get(prefix + "if-none-match")
    modified = int(version.last_modified)
    if if_match is not None:
        if not etag_matches(if_match, version.etag):
            raise S3Error("PreconditionFailed", Condition="If-Match")
    else:
        since = parse_http_date(headers.get(prefix + "if-unmodified-since", ""))
        if since is not None and modified > since:
            raise S3Error("PreconditionFailed", Condition="If-Unmodified-Since")
    not_modified = "PreconditionFailed" if prefix else "NotModified"
    if if_none_match is not None:
        if etag_matches(if_none_match, version.etag):
            raise S3Error(not_modified, headers=_validators(version))
    else:
        since = parse_http_date(headers.get(prefix + "if-modified-since", ""))
        if since is not None and modified <= since:
            raise S3Error(not_modified, headers=_validators(version))


def _validators(version: ObjectVersion) -> dict[str, str]:
    return {"ETag": version.etag, "Last-Modified": s3xml.http_date(version.last_modified)}


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n` -> [start, end); None means the whole object."""
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    first, sep, last = value[6:].strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=value)
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        raise S3Error("InvalidRange", ActualObjectSize=str(size), RangeRequested=value)
    return start, min(end, size)


class Handlers:
    def __init__(self, store: ObjectStore, multipart: Multipart) -> None:
        self.store = store
        self.multipart = multipart
        self.buckets = BucketHandlers(store, multipart)

    def dispatch(self, req: Request) -> tuple[str, Handler]:
        if req.bucket is None:
            if req.method == "GET":
                return "ListBuckets", self.buckets.list_buckets
            raise S3Error("MethodNotAllowed")
        if req.key is None:
            return self.buckets.dispatch(req)
        q, m = req.query, req.method
        if m == "OPTIONS":
            return "Preflight", self.buckets.list_buckets
        if m == "PUT":
            if "partNumber" in q and "uploadId" in q:
                if "x-amz-copy-source" in req.headers:
                    return "UploadPartCopy", self.upload_part_copy
                return "UploadPart", self.upload_part
            if "tagging" in q:
                return "PutObjectTagging", self.put_tagging
            if "x-amz-copy-source" in req.headers:
                return "CopyObject", self.copy_object
            return "PutObject", self.put_object
        if m in ("GET", "HEAD"):
            if "uploadId" in q and m == "GET":
                return "ListParts", self.list_parts
            if "tagging" in q and m == "GET":
                return "GetObjectTagging", self.get_tagging
            return ("GetObject" if m == "GET" else "HeadObject"), self.get_object
        if m == "DELETE":
            if "uploadId" in q:
                return "AbortMultipartUpload", self.abort_upload
            if "tagging" in q:
                return "DeleteObjectTagging", self.delete_tagging
            return "DeleteObject", self.delete_object
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload", self.create_upload
            if "uploadId" in q:
                return "CompleteMultipartUpload", self.complete_upload
        raise S3Error("MethodNotAllowed")

    def _version_header(self, version: ObjectVersion, headers: dict[str, str]) -> None:
        if version.version_id != "null" or self.store.bucket(version.bucket).versioning:
            headers["x-amz-version-id"] = version.version_id

    # objects -------------------------------------------------------------------------------

    async def put_object(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        h = req.headers
        version = await self.store.put_object(
            req.principal,
            req.bucket,
            req.key,
            req.body,
            integrity_of(h),
            content_type=h.get("content-type"),
            headers=stored_headers(h),
            tags=parse_tag_header(h.get("x-amz-tagging")),
            if_none_match=h.get("if-none-match"),
            if_match=h.get("if-match"),
        )
        out = {"ETag": version.etag}
        for name, value in version.headers.items():
            if name.startswith("x-amz-checksum-"):
                out[name] = value
        self._version_header(version, out)
        return Response(200, headers=out)

    def _object_headers(self, version: ObjectVersion, req: Request) -> dict[str, str]:
        out = {
            "ETag": version.etag,
            "Last-Modified": s3xml.http_date(version.last_modified),
            "Accept-Ranges": "bytes",
            "Content-Type": version.content_type,
        }
        checksum_mode = req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED"
        for name, value in version.headers.items():
            if name.startswith("x-amz-checksum-"):
                if checksum_mode and "range" not in req.headers:
                    out[name] = value
            else:
                out[name] = value
        if version.tags:
            out["x-amz-tagging-count"] = str(len(version.tags))
        if version.parts_count:
            out["x-amz-mp-parts-count"] = str(version.parts_count)
        self._version_header(version, out)
        for param, header in RESPONSE_OVERRIDES.items():
            if param in req.query:
                out[header] = req.query[param]
        return out

    async def get_object(self, req: Request) -> Response:
        try:
            return self._get_object(req)
        except ObjectMissing:
            # The version we looked up was overwritten or deleted between reading its
            # metadata and its bytes; S3 then serves what is current, so look again.
            return self._get_object(req)

    def _get_object(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        version = self.store.get_version(
            req.principal, req.bucket, req.key, req.query.get("versionId")
        )
        check_read_conditions(version, req.headers)
        headers = self._object_headers(version, req)
        span = parse_range(req.headers.get("range"), version.size)
        status = 200
        start, end = 0, version.size
        if span is not None:
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{version.size}"
        headers["Content-Length"] = str(end - start)
        if req.method == "HEAD" or end == start:
            return Response(status, b"", headers)
        if end - start <= INLINE_READ_BYTES:
            return Response(status, self.store.read_bytes(version, start, end), headers)
        self.store.check_readable(version)
        return Response(status, self.store.read(version, start, end), headers)

    async def delete_object(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        result = await self.store.delete_object(
            req.principal, req.bucket, req.key, req.query.get("versionId")
        )
        headers = {}
        if result.version_id is not None:
            headers["x-amz-version-id"] = result.version_id
        if result.delete_marker:
            headers["x-amz-delete-marker"] = "true"
        return Response(204, b"", headers)

    def _copy_source(self, req: Request) -> tuple[str, str, str | None]:
        raw = req.headers["x-amz-copy-source"]
        path, _, query = raw.partition("?")
        path = unquote(path).lstrip("/")
        bucket, _, key = path.partition("/")
        if not bucket or not key:
            raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key")
        version_id = dict(parse_qsl(query)).get("versionId")
        return bucket, key, version_id

    async def copy_object(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        check_key(req.key)
        src_bucket, src_key, src_version = self._copy_source(req)
        source = self.store.get_version(req.principal, src_bucket, src_key, src_version)
        check_read_conditions(source, req.headers, "x-amz-copy-source-")
        self.store.checked_bucket(req.principal, req.bucket, "PutObject", req.key)
        h = req.headers
        directive = h.get("x-amz-metadata-directive", "COPY").upper()
        tag_directive = h.get("x-amz-tagging-directive", "COPY").upper()
        if directive not in ("COPY", "REPLACE") or tag_directive not in ("COPY", "REPLACE"):
            raise S3Error("InvalidArgument", "Unknown metadata or tagging directive")
        same = (src_bucket, src_key) == (req.bucket, req.key) and src_version is None
        if same and directive == "COPY" and "x-amz-storage-class" not in h:
            raise S3Error(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata, storage class, website redirect "
                "location or encryption attributes.",
            )
        integrity = Integrity(sdk_algorithm=_checksum_alg(h))
        written = await self.store.copy_data(source, 0, source.size, integrity)
        if directive == "REPLACE":
            headers = stored_headers(h)
            content_type = h.get("content-type", "binary/octet-stream")
        else:
            headers = {
                k: v for k, v in source.headers.items() if not k.startswith("x-amz-checksum-")
            }
            content_type = source.content_type
        tags = (
            parse_tag_header(h.get("x-amz-tagging")) if tag_directive == "REPLACE" else source.tags
        )
        version = await self.store.commit_written(
            req.bucket,
            req.key,
            written,
            content_type=content_type,
            headers=headers,
            tags=tags,
            owner=req.principal or "",
            if_none_match=h.get("if-none-match"),
            if_match=h.get("if-match"),
        )
        out: dict[str, str] = {}
        self._version_header(version, out)
        if source.version_id != "null":
            out["x-amz-copy-source-version-id"] = source.version_id
        nodes: list[s3xml.Node] = [
            ("ETag", version.etag),
            ("LastModified", s3xml.timestamp(version.last_modified)),
        ]
        for alg, value in written.checksums.items():
            nodes.append((f"Checksum{alg}", value))
        return Response(
            200, s3xml.render("CopyObjectResult", nodes), out, content_type="application/xml"
        )

    # tagging ------------------------------------------------------------------------------

    async def get_tagging(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        version = self.store.get_version(
            req.principal, req.bucket, req.key, req.query.get("versionId")
        )
        out: dict[str, str] = {}
        self._version_header(version, out)
        return Response(200, s3xml.render_tagging(version.tags), out, "application/xml")

    async def put_tagging(self, req: Request) -> Response:
        tags = s3xml.parse_tagging(await req.body.read())
        return await self._set_tags(req, tags)

    async def delete_tagging(self, req: Request) -> Response:
        response = await self._set_tags(req, {})
        response.status = 204
        return response

    async def _set_tags(self, req: Request, tags: dict[str, str]) -> Response:
        assert req.bucket is not None and req.key is not None
        version = self.store.get_version(
            req.principal, req.bucket, req.key, req.query.get("versionId")
        )
        await self.store.set_tags(version, tags)
        out: dict[str, str] = {}
        self._version_header(version, out)
        return Response(200, b"", out)

    # multipart ----------------------------------------------------------------------------

    async def create_upload(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        h = req.headers
        upload = await self.multipart.create(
            req.principal,
            req.bucket,
            req.key,
            content_type=h.get("content-type"),
            headers=stored_headers(h),
            tags=parse_tag_header(h.get("x-amz-tagging")),
            checksum_algorithm=h.get("x-amz-checksum-algorithm"),
        )
        out: dict[str, str] = {}
        if upload.checksum_algorithm:
            out["x-amz-checksum-algorithm"] = upload.checksum_algorithm
            out["x-amz-checksum-type"] = "COMPOSITE"
        body = s3xml.render(
            "InitiateMultipartUploadResult",
            [("Bucket", req.bucket), ("Key", req.key), ("UploadId", upload.upload_id)],
        )
        return Response(200, body, out, "application/xml")

    def _part_number(self, req: Request) -> int:
        try:
            return int(req.query["partNumber"])
        except ValueError:
            raise S3Error("InvalidArgument", "Part number must be an integer") from None

    async def upload_part(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        part = await self.multipart.upload_part(
            req.principal,
            req.bucket,
            req.key,
            req.query["uploadId"],
            self._part_number(req),
            req.body,
            integrity_of(req.headers),
        )
        out = {"ETag": part.etag}
        upload = self.multipart.meta.get_upload(req.query["uploadId"])
        if part.checksum and upload and upload.checksum_algorithm:
            out[checksums.header_name(upload.checksum_algorithm)] = part.checksum
        return Response(200, b"", out)

    async def upload_part_copy(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        number = self._part_number(req)
        upload = self.multipart.check_open(
            req.principal, req.bucket, req.key, req.query["uploadId"]
        )
        src_bucket, src_key, src_version = self._copy_source(req)
        source = self.store.get_version(req.principal, src_bucket, src_key, src_version)
        check_read_conditions(source, req.headers, "x-amz-copy-source-")
        span = req.headers.get("x-amz-copy-source-range")
        start, end = 0, source.size
        if span:
            parsed = parse_range(span, source.size)
            if parsed is None:
                raise S3Error(
                    "InvalidArgument", "The x-amz-copy-source-range value must be bytes=first-last"
                )
            start, end = parsed
        if end - start > MAX_PART_BYTES:
            raise S3Error("EntityTooLarge")
        written = await self.store.copy_data(
            source, start, end, Integrity(sdk_algorithm=upload.checksum_algorithm)
        )
        part = Part(
            number=number,
            size=written.ref.size,
            etag=quote_etag(written.md5_hex),
            last_modified=self.store.clock(),
            data=written.ref,
            checksum=written.checksums.get(upload.checksum_algorithm or ""),
        )
        await self.multipart.store_part(upload.upload_id, part, written)
        body = s3xml.render(
            "CopyPartResult",
            [("ETag", part.etag), ("LastModified", s3xml.timestamp(part.last_modified))],
        )
        return Response(200, body, {}, "application/xml")

    async def complete_upload(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        root = s3xml.parse(await req.body.read(), "CompleteMultipartUpload")
        chosen = []
        for el in root.iterfind("Part"):
            number = s3xml.text(el, "PartNumber")
            etag = s3xml.text(el, "ETag")
            if not number or not number.isdigit() or etag is None:
                raise S3Error("MalformedXML", "each Part needs PartNumber and ETag")
            sums = {
                alg: value
                for alg in checksums.ALGORITHMS
                if (value := s3xml.text(el, f"Checksum{alg}"))
            }
            chosen.append(CompletedPart(int(number), etag, sums))
        version = await self.multipart.complete(
            req.principal,
            req.bucket,
            req.key,
            req.query["uploadId"],
            chosen,
            if_none_match=req.headers.get("if-none-match"),
            if_match=req.headers.get("if-match"),
        )
        out: dict[str, str] = {}
        self._version_header(version, out)
        nodes: list[s3xml.Node] = [
            ("Location", f"/{req.bucket}/{req.key}"),
            ("Bucket", req.bucket),
            ("Key", req.key),
            ("ETag", version.etag),
        ]
        for name, value in version.headers.items():
            alg = checksums.algorithm_of_header(name)
            if alg:
                nodes.append((f"Checksum{alg}", value))
                nodes.append(("ChecksumType", "COMPOSITE"))
        body = s3xml.render("CompleteMultipartUploadResult", nodes)
        return Response(200, body, out, "application/xml")

    async def abort_upload(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        await self.multipart.abort(req.principal, req.bucket, req.key, req.query["uploadId"])
        return Response(204)

    async def list_parts(self, req: Request) -> Response:
        assert req.bucket is not None and req.key is not None
        after = int_param(req, "part-number-marker", 0)
        limit = min(int_param(req, "max-parts", 1000), 1000)
        upload, found, truncated = self.multipart.list_parts(
            req.principal, req.bucket, req.key, req.query["uploadId"], after, limit
        )
        nodes: list[s3xml.Node] = [
            ("Bucket", req.bucket),
            ("Key", req.key),
            ("UploadId", upload.upload_id),
            ("PartNumberMarker", after),
            ("NextPartNumberMarker", found[-1].number if found else after),
            ("MaxParts", limit),
            ("IsTruncated", truncated),
            ("StorageClass", "STANDARD"),
        ]
        if upload.checksum_algorithm:
            nodes.append(("ChecksumAlgorithm", upload.checksum_algorithm))
        for part in found:
            entry: list[s3xml.Node] = [
                ("PartNumber", part.number),
                ("LastModified", s3xml.timestamp(part.last_modified)),
                ("ETag", part.etag),
                ("Size", part.size),
            ]
            if part.checksum and upload.checksum_algorithm:
                entry.append((f"Checksum{upload.checksum_algorithm}", part.checksum))
            nodes.append(("Part", entry))
        return Response(200, s3xml.render("ListPartsResult", nodes), {}, "application/xml")


def _checksum_alg(headers: dict[str, str]) -> str | None:
    alg = headers.get("x-amz-checksum-algorithm") or headers.get("x-amz-sdk-checksum-algorithm")
    return alg.upper() if alg else None
