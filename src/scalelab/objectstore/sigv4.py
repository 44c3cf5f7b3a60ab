"""Server-side verification of AWS Signature Version 4, as S3 applies it (sans-I/O).

Every authenticated S3 request carries a signature over a canonical form of itself, made with
a key derived from the caller's secret. We rebuild that canonical form from the request as it
arrived on the wire and recompute the signature; `verify` either names the caller or raises
the same error S3 would. What it returns (`Signed`) is also what `chunked` needs to check the
chained per-chunk signatures of a streaming upload.

Contract with the HTTP layer: `raw_path` and `raw_query` are the request target exactly as
received (still percent-encoded), header names are lower-cased, repeated headers are joined
with ",", and every string that came from the wire is the latin-1 decoding of its bytes (the
ASGI/h11 convention), so it can be turned back into the bytes the client signed.

Choices where S3 documents nothing precise:
- The canonical URI is the path as sent. If that does not verify and the path has a different
  canonical encoding (decoded, then RFC 3986-encoded keeping "/"), that form is tried too:
  it names the same key, and some clients sign it while sending e.g. "!" unencoded. Not for
  paths holding "%2F", whose decoded form would have other segments.
- A query "+" means a space (form encoding, as S3 and `parse_qs` read it): canonical "%20".
  Clients that mean a plus send "%2B", as every SDK does.
- Header auth without x-amz-content-sha256 is refused with InvalidRequest, as S3 does.
- Unsigned `host` or `x-amz-*` headers (other than x-amz-content-sha256) are refused with
  AccessDenied and a HeadersNotSigned element, as S3 does.
- A presigned URL normally signs "UNSIGNED-PAYLOAD"; if it lists x-amz-content-sha256 among
  its signed headers, that header's value is the payload hash instead (as the Go SDK signs).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote, unquote_to_bytes

from scalelab.objectstore.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINAL = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
PAYLOAD_TOKENS = frozenset(
    {UNSIGNED_PAYLOAD, STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER}
)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES = 604800  # one week, S3's limit for X-Amz-Expires

_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_DATE8 = re.compile(r"[0-9]{8}")
_UNRESERVED = "-_.~"  # with ALPHA / DIGIT, which quote() never encodes
_CREDENTIAL_FORM = 'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
_BAD_DATE = "AWS authentication requires a valid Date or x-amz-date header"
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_PRESIGN_REQUIRED = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)
_UNSUPPORTED_MECHANISM = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
_BAD_CONTENT_SHA256 = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
    "or a valid sha256 value."
)


@dataclass(frozen=True)
class Credentials:
    """One key pair: the public access key id and its secret."""

    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Signed:
    """A request whose signature verified: who sent it, and how to check what follows.

    `payload` is the hashed-payload value the signature covers: a sha256 hex digest (check
    the body with `check_payload`), UNSIGNED-PAYLOAD, or one of the STREAMING-* modes that
    `chunked.ChunkedDecoder` decodes. `scope`, `amz_date`, `signing_key` and
    `seed_signature` (this request's own signature) seed the chunk-signature chain.
    """

    access_key: str
    payload: str
    presigned: bool
    signing_key: bytes = field(repr=False)
    scope: str
    amz_date: str
    seed_signature: str

    @property
    def region(self) -> str:
        return self.scope.split("/")[1]


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning = HMAC chain over date, region, service and "aws4_request" (cached)."""
    key = _hmac(("AWS4" + secret).encode("utf-8"), date.encode("ascii"))
    key = _hmac(key, region.encode("utf-8"))
    key = _hmac(key, service.encode("utf-8"))
    return _hmac(key, TERMINAL.encode("ascii"))


def hmac_hex(key: bytes, message: str) -> str:
    """Lower-case hex HMAC-SHA256 of a (UTF-8) string to sign."""
    return _hmac(key, message.encode("utf-8")).hex()


def signatures_equal(expected: str, provided: str) -> bool:
    """Constant-time comparison of two hex signatures (case-insensitive, never raises)."""
    return hmac.compare_digest(
        expected.lower().encode("utf-8", "replace"), provided.lower().encode("utf-8", "replace")
    )


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: datetime,
    *,
    region: str | None = None,
    max_skew: timedelta = timedelta(minutes=15),
) -> Signed | None:
    """Verify the request's SigV4 signature; None if it carries none (anonymous).

    Raises `S3Error` with S3's code for every failure: InvalidAccessKeyId,
    SignatureDoesNotMatch, AuthorizationHeaderMalformed, AuthorizationQueryParametersError,
    RequestTimeTooSkewed, AccessDenied (expired or not-yet-valid presigned URL, unsigned
    headers, missing date), InvalidRequest / InvalidArgument (unsupported mechanisms, bad
    x-amz-content-sha256).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    params = _query_params(raw_query)
    authorization = headers.get("authorization")
    if "X-Amz-Algorithm" in params:
        if authorization is not None:
            raise S3Error(
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified",
                ArgumentName="Authorization",
            )
        return _verify_presigned(
            method, raw_path, raw_query, params, headers, secret_for, now, region, max_skew
        )
    if authorization is not None:
        return _verify_header(
            method, raw_path, raw_query, authorization, headers, secret_for, now, region, max_skew
        )
    if "X-Amz-Credential" in params or "X-Amz-Signature" in params:
        raise S3Error("AuthorizationQueryParametersError", _PRESIGN_REQUIRED)
    if "AWSAccessKeyId" in params or "Signature" in params:
        raise S3Error("InvalidRequest", _UNSUPPORTED_MECHANISM)
    return None


def check_payload(signed: Signed, computed_sha256_hex: str) -> None:
    """Raise XAmzContentSHA256Mismatch if the signed payload hash is not the body's.

    A no-op when the signature does not cover a hash (UNSIGNED-PAYLOAD, STREAMING-*).
    """
    if _HEX64.fullmatch(signed.payload) is None:
        return
    if not signatures_equal(computed_sha256_hex, signed.payload):
        raise S3Error(
            "XAmzContentSHA256Mismatch",
            ClientComputedContentSHA256=signed.payload,
            S3ComputedContentSHA256=computed_sha256_hex.lower(),
        )


verify_payload_hash = check_payload


# --- header auth ---------------------------------------------------------------------------


def _verify_header(
    method: str,
    raw_path: str,
    raw_query: str,
    authorization: str,
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: datetime,
    region: str | None,
    max_skew: timedelta,
) -> Signed:
    credential, signed_headers, signature = _parse_authorization(authorization)
    access_key, scope_date, scope_region = _parse_credential(
        credential, "AuthorizationHeaderMalformed", "The authorization header is malformed; "
    )
    when = _header_time(headers)
    amz_date = when.strftime(_AMZ_DATE)
    _check_scope(
        scope_date,
        scope_region,
        amz_date,
        region,
        "AuthorizationHeaderMalformed",
        "The authorization header is malformed;",
    )
    secret = _secret(secret_for, access_key)
    payload = headers.get("x-amz-content-sha256")
    if payload is None:
        raise S3Error(
            "InvalidRequest", "Missing required header for this request: x-amz-content-sha256"
        )
    _check_payload_value(payload)
    _check_all_signed(signed_headers, headers)
    if abs(now - when) > max_skew:
        raise S3Error(
            "RequestTimeTooSkewed",
            RequestTime=headers.get("x-amz-date") or headers.get("date", ""),
            ServerTime=_iso(now),
            MaxAllowedSkewMilliseconds=str(int(max_skew.total_seconds() * 1000)),
        )
    return _signed(
        secret,
        access_key,
        scope_date,
        scope_region,
        amz_date,
        method,
        raw_path,
        _canonical_query(raw_query, presigned=False),
        signed_headers,
        headers,
        payload,
        signature,
        presigned=False,
    )


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm == "AWS" or algorithm.startswith("AWS4-"):
            raise S3Error("InvalidRequest", _UNSUPPORTED_MECHANISM)
        raise S3Error(
            "InvalidArgument",
            "Unsupported Authorization Type",
            ArgumentName="Authorization",
            ArgumentValue=value,
        )
    parts: dict[str, str] = {}
    for component in rest.split(","):
        name, eq, item = component.strip().partition("=")
        if not eq or name in parts:
            raise S3Error(
                "AuthorizationHeaderMalformed",
                f"The authorization header is malformed; the component {component.strip()!r} "
                "is not of the form Name=Value.",
            )
        parts[name] = item.strip()
    if not {"Credential", "SignedHeaders", "Signature"} <= parts.keys():
        raise S3Error(
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; it requires the components Credential, "
            "SignedHeaders and Signature.",
        )
    names = parts["SignedHeaders"].split(";")
    if not all(names) or any(" " in n for n in names):
        raise S3Error(
            "AuthorizationHeaderMalformed",
            "The authorization header is malformed; SignedHeaders is not a ';'-separated "
            "list of header names.",
        )
    return parts["Credential"], names, parts["Signature"]


def _header_time(headers: Mapping[str, str]) -> datetime:
    amz = headers.get("x-amz-date")
    if amz is not None:
        when = _parse_amz_date(amz)
        if when is None:
            raise S3Error("AccessDenied", _BAD_DATE)
        return when
    date = headers.get("date")
    if date is None:
        raise S3Error("AccessDenied", _BAD_DATE)
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        raise S3Error("AccessDenied", _BAD_DATE) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- presigned URLs ------------------------------------------------------------------------


def _verify_presigned(
    method: str,
    raw_path: str,
    raw_query: str,
    params: dict[str, list[str]],
    headers: Mapping[str, str],
    secret_for: Callable[[str], str | None],
    now: datetime,
    region: str | None,
    max_skew: timedelta,
) -> Signed:
    if params["X-Amz-Algorithm"] != [ALGORITHM]:
        if len(params["X-Amz-Algorithm"]) == 1:
            raise S3Error(
                "AuthorizationQueryParametersError",
                'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"',
            )
        raise S3Error("AuthorizationQueryParametersError", _PRESIGN_REQUIRED)
    if any(len(params.get(name, ())) != 1 for name in _PRESIGN_PARAMS):
        raise S3Error("AuthorizationQueryParametersError", _PRESIGN_REQUIRED)
    value = {name: params[name][0] for name in _PRESIGN_PARAMS}
    access_key, scope_date, scope_region = _parse_credential(
        value["X-Amz-Credential"],
        "AuthorizationQueryParametersError",
        "Error parsing the X-Amz-Credential parameter; ",
    )
    when = _parse_amz_date(value["X-Amz-Date"])
    if when is None:
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"",
        )
    amz_date = value["X-Amz-Date"]
    expires = _parse_expires(value["X-Amz-Expires"])
    _check_scope(
        scope_date,
        scope_region,
        amz_date,
        region,
        "AuthorizationQueryParametersError",
        "Error parsing the X-Amz-Credential parameter;",
    )
    secret = _secret(secret_for, access_key)
    signed_headers = value["X-Amz-SignedHeaders"].split(";")
    if not all(signed_headers):
        raise S3Error(
            "AuthorizationQueryParametersError",
            "X-Amz-SignedHeaders is not a ';'-separated list of header names.",
        )
    _check_all_signed(signed_headers, headers)
    if when - now > max_skew:
        raise S3Error("AccessDenied", "Request is not valid yet")
    if now > when + timedelta(seconds=expires):
        expired = S3Error("AccessDenied", "Request has expired")
        expired.extra["X-Amz-Expires"] = str(expires)
        expired.extra["Expires"] = _iso(when + timedelta(seconds=expires))
        expired.extra["ServerTime"] = _iso(now)
        raise expired
    payload = UNSIGNED_PAYLOAD
    if "x-amz-content-sha256" in {n.lower() for n in signed_headers}:
        payload = headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        _check_payload_value(payload)
    return _signed(
        secret,
        access_key,
        scope_date,
        scope_region,
        amz_date,
        method,
        raw_path,
        _canonical_query(raw_query, presigned=True),
        signed_headers,
        headers,
        payload,
        value["X-Amz-Signature"],
        presigned=True,
    )


def _check_scope(
    scope_date: str, scope_region: str, amz_date: str, region: str | None, code: str, lead: str
) -> None:
    """The credential scope must name the request's own date and, if we serve one, our region."""
    if scope_date != amz_date[:8]:
        raise S3Error(
            code,
            f'Invalid credential date "{scope_date}". '
            f'This date is not the same as X-Amz-Date: "{amz_date[:8]}".',
        )
    if region is not None and scope_region != region:
        raise S3Error(
            code,
            f"{lead} the region '{scope_region}' is wrong; expecting '{region}'",
            Region=region,
        )


def _signed(
    secret: str,
    access_key: str,
    scope_date: str,
    scope_region: str,
    amz_date: str,
    method: str,
    raw_path: str,
    canonical_query: str,
    signed_headers: list[str],
    headers: Mapping[str, str],
    payload: str,
    signature: str,
    *,
    presigned: bool,
) -> Signed:
    """Check the signature (header or query auth alike) and describe the signed request."""
    key = signing_key(secret, scope_date, scope_region)
    scope = f"{scope_date}/{scope_region}/{SERVICE}/{TERMINAL}"
    _check_signature(
        key,
        access_key,
        amz_date,
        scope,
        method,
        raw_path,
        canonical_query,
        signed_headers,
        headers,
        payload,
        signature,
    )
    return Signed(access_key, payload, presigned, key, scope, amz_date, signature.lower())


def _parse_expires(text: str) -> int:
    if re.fullmatch(r"-?[0-9]{1,12}", text) is None:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires should be a number")
    expires = int(text)
    if expires < 0:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Expires must be non-negative")
    if expires > MAX_PRESIGN_EXPIRES:
        raise S3Error(
            "AuthorizationQueryParametersError",
            f"X-Amz-Expires must be less than a week (in seconds) that is; {MAX_PRESIGN_EXPIRES}",
        )
    return expires


# --- shared pieces -------------------------------------------------------------------------


def _parse_credential(credential: str, code: str, prefix: str) -> tuple[str, str, str]:
    """(access key, YYYYMMDD, region) of "AKID/YYYYMMDD/REGION/s3/aws4_request"."""
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not parts[0] or not parts[2] or _DATE8.fullmatch(parts[1]) is None:
        raise S3Error(code, f"{prefix}the Credential is mal-formed; {_CREDENTIAL_FORM}")
    access_key, date, scope_region, service, terminal = parts
    if service != SERVICE:
        raise S3Error(
            code, f'{prefix}incorrect service "{service}". This endpoint belongs to "{SERVICE}".'
        )
    if terminal != TERMINAL:
        raise S3Error(
            code, f'{prefix}incorrect terminal "{terminal}". This endpoint uses "{TERMINAL}".'
        )
    return access_key, date, scope_region


def _secret(secret_for: Callable[[str], str | None], access_key: str) -> str:
    secret = secret_for(access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", AWSAccessKeyId=access_key)
    return secret


def _check_payload_value(payload: str) -> None:
    if payload not in PAYLOAD_TOKENS and _HEX64.fullmatch(payload) is None:
        raise S3Error(
            "InvalidArgument",
            _BAD_CONTENT_SHA256,
            ArgumentName="x-amz-content-sha256",
            ArgumentValue=payload,
        )


def _check_all_signed(signed_headers: list[str], headers: Mapping[str, str]) -> None:
    signed = {name.lower() for name in signed_headers}
    unsigned = sorted(
        name
        for name in headers
        if (name == "host" or name.startswith("x-amz-"))
        and name != "x-amz-content-sha256"
        and name not in signed
    )
    if "host" not in signed and "host" not in unsigned:
        unsigned.insert(0, "host")
    if unsigned:
        raise S3Error(
            "AccessDenied",
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )


def _check_signature(
    key: bytes,
    access_key: str,
    amz_date: str,
    scope: str,
    method: str,
    raw_path: str,
    canonical_query: str,
    signed_headers: list[str],
    headers: Mapping[str, str],
    payload: str,
    provided: str,
) -> None:
    rest = b"".join(
        [
            b"\n",
            canonical_query.encode("ascii"),
            b"\n",
            _canonical_headers(signed_headers, headers),
            b"\n",
            ";".join(signed_headers).encode("utf-8"),
            b"\n",
            payload.encode("utf-8"),
        ]
    )
    head = method.encode("utf-8") + b"\n"
    uris = [raw_path or "/"]
    alternative = quote(unquote_to_bytes(_wire(uris[0])), safe="/~")
    if alternative != uris[0] and "%2f" not in uris[0].lower():
        uris.append(alternative)  # same segments, so the same bucket and key
    first: tuple[bytes, str] | None = None
    for uri in uris:
        canonical = head + _wire(uri) + rest
        string_to_sign = "\n".join(
            [ALGORITHM, amz_date, scope, hashlib.sha256(canonical).hexdigest()]
        )
        if signatures_equal(hmac_hex(key, string_to_sign), provided):
            return
        if first is None:
            first = canonical, string_to_sign
    assert first is not None
    raise S3Error(
        "SignatureDoesNotMatch",
        AWSAccessKeyId=access_key,
        StringToSign=first[1],
        SignatureProvided=provided,
        CanonicalRequest=first[0].decode("utf-8", "replace"),
    )


def _canonical_headers(signed_headers: list[str], headers: Mapping[str, str]) -> bytes:
    lines = []
    for name in signed_headers:
        value = b" ".join(_wire(headers.get(name.lower(), "")).split())
        lines.append(name.encode("utf-8") + b":" + value + b"\n")
    return b"".join(lines)


def _canonical_query(raw_query: str, *, presigned: bool) -> str:
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = _unquote(raw_name)
        if presigned and name == b"X-Amz-Signature":
            continue
        value = _unquote(raw_value)
        pairs.append((quote(name, safe=_UNRESERVED), quote(value, safe=_UNRESERVED)))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _query_params(raw_query: str) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition("=")
        name = _unquote(raw_name).decode("utf-8", "replace")
        value = _unquote(raw_value).decode("utf-8", "replace")
        params.setdefault(name, []).append(value)
    return params


def _unquote(text: str) -> bytes:
    """Percent-decode one query name or value ("+" is a space)."""
    return unquote_to_bytes(_wire(text).replace(b"+", b" "))


def _parse_amz_date(text: str) -> datetime | None:
    """YYYYMMDD'T'HHMMSS'Z', parsed by hand: strptime costs more than the whole HMAC chain."""
    if len(text) != 16 or text[8] != "T" or text[15] != "Z":
        return None
    digits = text[:8] + text[9:15]
    if not digits.isascii() or not digits.isdigit():
        return None
    try:
        return datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wire(text: str) -> bytes:
    """The bytes a wire string came from (latin-1), or UTF-8 if it was decoded that way."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")
