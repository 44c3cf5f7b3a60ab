"""The object store's errors, each mapped once to S3's `Code` and HTTP status.

Raise `S3Error("NoSuchKey", key=...)` anywhere below the API; `api.py` turns it into S3's XML
error document. The table below is the one place that knows which status each code carries.
Failures of our own storage (a checksum that does not match) are `DataStoreError`s and leave
the server as `InternalError`, after being counted.
"""

from __future__ import annotations

# code -> (HTTP status, default message), as S3 documents them.
CODES: dict[str, tuple[int, str]] = {
    "AccessDenied": (403, "Access Denied"),
    "AuthorizationHeaderMalformed": (400, "The authorization header is malformed."),
    "AuthorizationQueryParametersError": (400, "The presigned URL's parameters are malformed."),
    "BadDigest": (400, "The Content-MD5 you specified did not match what we received."),
    "BucketAlreadyExists": (409, "The requested bucket name is not available."),
    "BucketAlreadyOwnedByYou": (409, "Your previous request to create the named bucket succeeded."),
    "BucketNotEmpty": (409, "The bucket you tried to delete is not empty."),
    "EntityTooLarge": (400, "Your proposed upload exceeds the maximum allowed size."),
    "EntityTooSmall": (400, "Your proposed upload is smaller than the minimum allowed size."),
    "IllegalLocationConstraintException": (400, "The location constraint is not valid here."),
    "IncompleteBody": (400, "You did not provide the number of bytes in Content-Length."),
    "InternalError": (500, "We encountered an internal error. Please try again."),
    "InvalidAccessKeyId": (403, "The AWS access key Id you provided does not exist."),
    "InvalidArgument": (400, "Invalid Argument"),
    "InvalidBucketName": (400, "The specified bucket is not valid."),
    "InvalidDigest": (400, "The Content-MD5 you specified is not valid."),
    "InvalidObjectState": (403, "The operation is not valid for the object's state."),
    "InvalidPart": (400, "One or more of the specified parts could not be found."),
    "InvalidPartOrder": (400, "The list of parts was not in ascending order."),
    "InvalidRange": (416, "The requested range is not satisfiable."),
    "InvalidRequest": (400, "Invalid Request"),
    "InvalidTag": (400, "The tag provided was not a valid tag."),
    "KeyTooLongError": (400, "Your key is too long."),
    "MalformedPolicy": (400, "Policies must be valid JSON."),
    "MalformedXML": (400, "The XML you provided was not well-formed."),
    "MethodNotAllowed": (405, "The specified method is not allowed against this resource."),
    "MissingContentLength": (411, "You must provide the Content-Length HTTP header."),
    "MissingSecurityHeader": (400, "Your request is missing a required header."),
    "NoSuchBucket": (404, "The specified bucket does not exist."),
    "NoSuchBucketPolicy": (404, "The bucket policy does not exist."),
    "NoSuchCORSConfiguration": (404, "The CORS configuration does not exist."),
    "NoSuchKey": (404, "The specified key does not exist."),
    "NoSuchLifecycleConfiguration": (404, "The lifecycle configuration does not exist."),
    "NoSuchTagSet": (404, "The TagSet does not exist."),
    "NoSuchUpload": (404, "The specified multipart upload does not exist."),
    "NoSuchVersion": (404, "The specified version does not exist."),
    "NotImplemented": (501, "A header you provided implies functionality that is not implemented."),
    "NotModified": (304, "Not Modified"),
    "PreconditionFailed": (412, "At least one of the preconditions you specified did not hold."),
    "RequestTimeTooSkewed": (
        403,
        "The difference between the request time and the current time is too large.",
    ),
    "SignatureDoesNotMatch": (
        403,
        "The request signature we calculated does not match the signature you provided.",
    ),
    "XAmzContentSHA256Mismatch": (
        400,
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
    ),
    "ConditionalRequestConflict": (409, "A conflicting operation occurred; please retry."),
}


class S3Error(Exception):
    """A failure the client sees as an S3 error document.

    `extra` becomes additional elements of the document (`Key`, `BucketName`, `VersionId`...),
    as S3 adds them; `headers` are extra response headers (e.g. `x-amz-delete-marker`).
    """

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: str,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown S3 error code {code!r}")
        status, default = CODES[code]
        super().__init__(message or default)
        self.code = code
        self.status = status
        self.message = message or default
        self.extra = extra
        self.headers = headers or {}


class DataStoreError(Exception):
    """Our storage failed us: the client gets InternalError, the operator a log line."""


class CorruptObject(DataStoreError):
    """Bytes read back do not match the checksum written with them."""

    def __init__(self, object_id: str, detail: str) -> None:
        super().__init__(f"object {object_id}: {detail}")
        self.object_id = object_id


class ObjectMissing(DataStoreError):
    """The data node has no object with this id (metadata points at nothing)."""

    def __init__(self, object_id: str) -> None:
        super().__init__(f"object {object_id} is not on this data node")
        self.object_id = object_id
