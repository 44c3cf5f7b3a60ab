"""SigV4 verification against botocore as the signing client, plus AWS's published examples."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from botocore.utils import percent_encode
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.objectstore import sigv4
from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.sigv4 import Credentials, Signed

ALICE = Credentials("AKIAALICE", "alice+secret/with=odd~chars")
BOB = Credentials("AKIABOB", "bob's secret")
KEYS = {c.access_key: c.secret_key for c in (ALICE, BOB)}
REGION = "us-east-1"
AWS_KEY = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
AWS_NOW = datetime(2013, 5, 24, tzinfo=UTC)
EMPTY = hashlib.sha256(b"").hexdigest()


def secret_for(access_key: str) -> str | None:
    return KEYS.get(access_key) or (
        AWS_KEY.secret_key if access_key == AWS_KEY.access_key else None
    )


# --- requests as they reach the server -----------------------------------------------------


class Wire:
    """A signed request as the HTTP layer would hand it to `verify`.

    Header values go on the wire as the UTF-8 bytes that were signed (what most SDKs send;
    botocore itself sends latin-1, so it cannot sign non-ASCII values for S3 either).
    """

    def __init__(self, method: str, url: str, headers: dict[str, str | bytes]) -> None:
        parts = urlsplit(url)
        self.method = method
        self.path = parts.path or "/"
        self.query = parts.query
        self.headers = {"host": parts.netloc}
        for name, value in headers.items():
            # Header values travel as bytes; the server decodes them as latin-1.
            raw = value if isinstance(value, bytes) else value.encode("utf-8")
            self.headers[name.lower()] = raw.decode("latin-1")

    @classmethod
    def of(cls, request: AWSPreparedRequest) -> Wire:
        return cls(request.method, request.url, dict(request.headers.items()))

    @property
    def time(self) -> datetime:
        stamp = self.headers.get("x-amz-date") or _query(self.query).get("X-Amz-Date")
        assert stamp is not None
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)

    def verify(self, now: datetime | None = None, **kwargs: Any) -> Signed | None:
        return sigv4.verify(
            self.method,
            self.path,
            self.query,
            self.headers,
            secret_for,
            self.time if now is None else now,
            **kwargs,
        )

    def with_headers(self, **headers: str) -> Wire:
        copy = Wire(self.method, "https://x" + self.path + "?" + self.query, {})
        copy.headers = self.headers | {k.replace("_", "-"): v for k, v in headers.items()}
        return copy


def _query(raw: str) -> dict[str, str]:
    from urllib.parse import unquote

    return {unquote(k): unquote(v) for k, _, v in (p.partition("=") for p in raw.split("&") if p)}


def _url(host: str, path: str) -> str:
    return f"https://{host}{percent_encode(path, safe='/~')}"


def header_signed(
    method: str,
    host: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    creds: Credentials = ALICE,
    region: str = REGION,
) -> Wire:
    request = AWSRequest(method, _url(host, path), headers=headers, data=body, params=params)
    boto = BotoCredentials(creds.access_key, creds.secret_key)
    S3SigV4Auth(boto, "s3", region).add_auth(request)
    return Wire.of(request.prepare())


def presigned(
    method: str,
    host: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    expires: int = 3600,
    creds: Credentials = ALICE,
    region: str = REGION,
) -> Wire:
    request = AWSRequest(method, _url(host, path), headers=headers, params=params)
    boto = BotoCredentials(creds.access_key, creds.secret_key)
    S3SigV4QueryAuth(boto, "s3", region, expires=expires).add_auth(request)
    return Wire.of(request.prepare())


def error(code: str, call: Any, *args: Any, **kwargs: Any) -> S3Error:
    with pytest.raises(S3Error) as raised:
        call(*args, **kwargs)
    assert raised.value.code == code, raised.value.message
    return raised.value


# --- AWS's published examples --------------------------------------------------------------

AWS_HOST = "examplebucket.s3.amazonaws.com"
AWS_SCOPE = "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"


def _aws(method: str, path: str, query: str, headers: dict[str, str]) -> Signed | None:
    return sigv4.verify(method, path, query, headers, secret_for, AWS_NOW, region="us-east-1")


def test_aws_example_get_object() -> None:
    headers = {
        "host": AWS_HOST,
        "range": "bytes=0-9",
        "x-amz-content-sha256": EMPTY,
        "x-amz-date": "20130524T000000Z",
        "authorization": f"AWS4-HMAC-SHA256 {AWS_SCOPE},"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    }
    signed = _aws("GET", "/test.txt", "", headers)
    assert signed is not None
    assert signed.access_key == "AKIAIOSFODNN7EXAMPLE"
    assert signed.payload == EMPTY
    assert signed.scope == "20130524/us-east-1/s3/aws4_request"
    assert signed.amz_date == "20130524T000000Z"
    assert signed.region == "us-east-1"
    assert not signed.presigned
    assert signed.seed_signature.startswith("f0e8bdb8")
    sigv4.check_payload(signed, EMPTY)
    error("XAmzContentSHA256Mismatch", sigv4.check_payload, signed, "0" * 64)
    error("SignatureDoesNotMatch", _aws, "GET", "/test.txt", "", headers | {"range": "bytes=0-8"})


def test_aws_example_put_object_with_date_header() -> None:
    body_hash = hashlib.sha256(b"Welcome to Amazon S3.").hexdigest()
    headers = {
        "host": AWS_HOST,
        "date": "Fri, 24 May 2013 00:00:00 GMT",
        "x-amz-content-sha256": body_hash,
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "authorization": f"AWS4-HMAC-SHA256 {AWS_SCOPE}, "
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, "
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    }
    signed = _aws("PUT", "/test%24file.text", "", headers)
    assert signed is not None and signed.payload == body_hash
    sigv4.verify_payload_hash(signed, body_hash)


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ("lifecycle", "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        ("max-keys=2&prefix=J", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ("prefix=J&max-keys=2", "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
    ],
)
def test_aws_example_bucket_gets(query: str, signature: str) -> None:
    headers = {
        "host": AWS_HOST,
        "x-amz-content-sha256": EMPTY,
        "x-amz-date": "20130524T000000Z",
        "authorization": f"AWS4-HMAC-SHA256 {AWS_SCOPE},"
        f"SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature={signature}",
    }
    assert _aws("GET", "/", query, headers) is not None


AWS_PRESIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
)


def test_aws_example_presigned_get() -> None:
    headers = {"host": AWS_HOST}
    signed = _aws("GET", "/test.txt", AWS_PRESIGNED_QUERY, headers)
    assert signed is not None
    assert signed.presigned and signed.payload == "UNSIGNED-PAYLOAD"
    sigv4.check_payload(signed, "0" * 64)  # nothing to check against
    late = AWS_NOW + timedelta(seconds=86401)
    expired = error(
        "AccessDenied",
        sigv4.verify,
        "GET",
        "/test.txt",
        AWS_PRESIGNED_QUERY,
        headers,
        secret_for,
        late,
    )
    assert expired.message == "Request has expired"
    assert expired.extra["X-Amz-Expires"] == "86400"
    assert expired.extra["Expires"] == "2013-05-25T00:00:00Z"
    just_in_time = AWS_NOW + timedelta(seconds=86400)
    assert sigv4.verify("GET", "/test.txt", AWS_PRESIGNED_QUERY, headers, secret_for, just_in_time)
    tampered = AWS_PRESIGNED_QUERY.replace("Signature=aeee", "Signature=beee")
    error("SignatureDoesNotMatch", _aws, "GET", "/test.txt", tampered, headers)
    error("SignatureDoesNotMatch", _aws, "GET", "/test.txt", AWS_PRESIGNED_QUERY + "&a=b", headers)


# --- botocore as the client ----------------------------------------------------------------

HOSTS = ["s3.us-east-1.amazonaws.com", "localhost:9000", "127.0.0.1:9000"]
ODD_KEYS = [
    "plain.txt",
    "with space.txt",
    "unicodé/ключ/キー/🦆.bin",
    "plus+sign",
    "equals=sign&amp",
    "tilde~file",
    "percent%41literal",
    "a%2Fb",
    "dots/./and/../segments",
    "//double//slashes",
    "!$'()*,;:@[]",
    "trailing/",
    "question?mark#hash",
]


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest.mark.parametrize("style", ["path", "virtual"])
def test_header_auth_round_trip(key: str, style: str) -> None:
    host, path = (
        ("bucket.localhost:9000", "/" + key) if style == "virtual" else (HOSTS[1], "/b/" + key)
    )
    wire = header_signed("PUT", host, path, body=b"hello", headers={"x-amz-meta-who": "me"})
    signed = wire.verify(region=REGION)
    assert signed is not None
    assert signed.access_key == ALICE.access_key
    assert signed.payload == hashlib.sha256(b"hello").hexdigest()
    sigv4.check_payload(signed, hashlib.sha256(b"hello").hexdigest())
    error("XAmzContentSHA256Mismatch", sigv4.check_payload, signed, EMPTY)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_presigned_round_trip(key: str) -> None:
    wire = presigned("GET", "localhost:9000", "/b/" + key, params={"versionId": "v 1+2"})
    signed = wire.verify(region=REGION)
    assert signed is not None
    assert signed.presigned and signed.payload == sigv4.UNSIGNED_PAYLOAD
    assert signed.access_key == ALICE.access_key


def test_query_params_with_empty_values_and_odd_characters() -> None:
    params = {
        "uploads": "",
        "prefix": "a b+c/é~*",
        "delimiter": "/",
        "marker": "",
        "list-type": "2",
        "x": "=&?%",
    }
    assert header_signed("GET", "localhost:9000", "/b", params=params).verify()
    assert presigned("GET", "localhost:9000", "/b", params=params).verify()


def test_unicode_header_values_are_signed_as_their_bytes() -> None:
    wire = header_signed("PUT", "localhost:9000", "/b/k", headers={"x-amz-meta-name": "Zoë à"})
    assert wire.headers["x-amz-meta-name"] == "Zoë à".encode().decode("latin-1")
    assert wire.verify() is not None


def test_header_values_are_trimmed_and_collapsed() -> None:
    wire = header_signed("PUT", "localhost:9000", "/b/k", headers={"x-amz-meta-a": "  a   b  "})
    assert wire.with_headers(x_amz_meta_a="a \t b").verify() is not None
    error("SignatureDoesNotMatch", wire.with_headers(x_amz_meta_a="ab").verify)


def test_date_header_instead_of_x_amz_date() -> None:
    request = AWSRequest("GET", _url("localhost:9000", "/b/k"), headers={"Date": "x"})
    S3SigV4Auth(BotoCredentials(BOB.access_key, BOB.secret_key), "s3", REGION).add_auth(request)
    wire = Wire.of(request.prepare())
    assert "x-amz-date" not in wire.headers
    now = parsedate_to_datetime(wire.headers["date"]).replace(tzinfo=UTC)
    signed = wire.verify(now)
    assert signed is not None and signed.access_key == BOB.access_key
    assert signed.amz_date == now.strftime("%Y%m%dT%H%M%SZ")


def test_path_sent_unencoded_but_signed_encoded() -> None:
    # Some clients send "!" or "'" raw but sign their percent-encoded form.
    wire = header_signed("GET", "localhost:9000", "/b/it's!")
    assert wire.path == "/b/it%27s%21"
    wire.path = "/b/it's!"
    assert wire.verify() is not None
    wire.path = "/b/it%27s%21x"
    error("SignatureDoesNotMatch", wire.verify)
    # An encoded "/" would change the segments: never taken for the plain one.
    wire = header_signed("GET", "localhost:9000", "/b/a/b!")
    wire.path = "/b%2Fa/b!"
    error("SignatureDoesNotMatch", wire.verify)


SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20
)


@settings(max_examples=60, deadline=None)
@given(
    key=st.lists(SEGMENT, min_size=1, max_size=4).map("/".join),
    params=st.dictionaries(
        # (Names that are themselves auth parameters make another kind of request.)
        SEGMENT.filter(
            lambda n: not n.startswith("X-Amz-") and n not in ("Signature", "AWSAccessKeyId")
        ),
        st.text(max_size=10),
        max_size=4,
    ),
    # Whitespace other than spaces is where signers disagree (str.split vs. byte trimming).
    header=st.text(
        st.characters(codec="latin-1", exclude_categories=("Cc", "Zs")) | st.just(" "),
        max_size=20,
    ),
    virtual=st.booleans(),
    use_query_auth=st.booleans(),
)
def test_any_key_and_query_verifies(
    key: str, params: dict[str, str], header: str, virtual: bool, use_query_auth: bool
) -> None:
    host, path = ("bkt.localhost", "/" + key) if virtual else ("localhost", "/bkt/" + key)
    headers = {"x-amz-meta-h": header}
    if use_query_auth:
        wire = presigned("GET", host, path, params=params, headers=headers)
    else:
        wire = header_signed("GET", host, path, params=params, headers=headers)
    signed = wire.verify(region=REGION)
    assert signed is not None and signed.presigned == use_query_auth
    other = Wire(wire.method, "https://" + host + wire.path + "x?" + wire.query, {})
    other.headers = wire.headers
    error("SignatureDoesNotMatch", other.verify)


# --- boto3 itself, requests captured before they are sent ----------------------------------


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def captured_client(style: str) -> tuple[Any, list[AWSPreparedRequest]]:
    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url="https://s3.example.test",
        aws_access_key_id=BOB.access_key,
        aws_secret_access_key=BOB.secret_key,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 1}),
    )
    sent: list[AWSPreparedRequest] = []

    def before_send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send.s3", before_send)
    return client, sent


@pytest.mark.parametrize("style", ["path", "virtual"])
def test_boto3_client_requests_verify(style: str) -> None:
    client, sent = captured_client(style)
    for key in ODD_KEYS:
        client.head_object(Bucket="bucket", Key=key)
        client.get_object(Bucket="bucket", Key=key, Range="bytes=0-1", VersionId="v/1")
        client.delete_object(Bucket="bucket", Key=key)
    client.list_objects_v2(Bucket="bucket", Prefix="a b+é/", Delimiter="/", StartAfter="")
    client.list_multipart_uploads(Bucket="bucket")
    for request in sent:
        signed = Wire.of(request).verify(region=REGION)
        assert signed is not None and signed.access_key == BOB.access_key
        assert signed.payload in (EMPTY, sigv4.UNSIGNED_PAYLOAD)
    params = {"Bucket": "bucket", "Key": "ünï code+key"}
    # With a custom endpoint and no signature_version, boto3 presigns with SigV2: refused.
    url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=60)
    assert "AWSAccessKeyId=" in url
    error("InvalidRequest", Wire("GET", url, {}).verify, datetime.now(UTC))
    client = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url="https://s3.example.test",
        aws_access_key_id=BOB.access_key,
        aws_secret_access_key=BOB.secret_key,
        config=Config(s3={"addressing_style": style}, signature_version="s3v4"),
    )
    for method in ("get_object", "put_object", "delete_object"):
        url = client.generate_presigned_url(method, Params=params, ExpiresIn=60)
        wire = Wire(method.split("_")[0].upper(), url, {})
        signed = wire.verify(region=REGION)
        assert signed is not None and signed.presigned
        error("AccessDenied", wire.verify, wire.time + timedelta(seconds=61))


# --- every error -----------------------------------------------------------------------------


def simple() -> Wire:
    return header_signed("GET", "localhost:9000", "/b/k", params={"acl": ""})


def test_anonymous_is_none() -> None:
    assert sigv4.verify("GET", "/b/k", "", {"host": "h"}, secret_for, AWS_NOW) is None
    assert sigv4.verify("GET", "/b/k", "acl&x=1", {"host": "h"}, secret_for, AWS_NOW) is None


def test_unknown_access_key() -> None:
    wire = header_signed("GET", "localhost:9000", "/b/k", creds=Credentials("NOBODY", "x"))
    assert error("InvalidAccessKeyId", wire.verify).extra == {"AWSAccessKeyId": "NOBODY"}
    wire = presigned("GET", "localhost:9000", "/b/k", creds=Credentials("NOBODY", "x"))
    error("InvalidAccessKeyId", wire.verify)


def test_wrong_secret_and_tampering() -> None:
    wire = header_signed("GET", "localhost:9000", "/b/k", creds=Credentials(ALICE.access_key, "no"))
    raised = error("SignatureDoesNotMatch", wire.verify)
    assert raised.extra["AWSAccessKeyId"] == ALICE.access_key
    assert raised.extra["StringToSign"].startswith("AWS4-HMAC-SHA256\n")
    assert "CanonicalRequest" in raised.extra
    good = simple()
    assert good.verify() is not None
    for change in ("path", "query", "method", "host"):
        bad = good.with_headers()
        if change == "path":
            bad.path = "/b/K"
        elif change == "query":
            bad.query = "acl=&x=1"
        elif change == "method":
            bad.method = "PUT"
        else:
            bad.headers["host"] = "other:9000"
        error("SignatureDoesNotMatch", bad.verify)
    auth = good.headers["authorization"]
    error("SignatureDoesNotMatch", good.with_headers(authorization=auth[:-1] + "Z").verify)
    error("SignatureDoesNotMatch", good.with_headers(authorization=auth[:-4] + "é").verify)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda a: a.replace("Credential=", "Credentials="),
        lambda a: a.replace(", SignedHeaders=", ", Foo=bar, SignedHeaders=").replace(", Foo", ""),
        lambda a: a.split(", Signature=")[0],
        lambda a: a.replace("/aws4_request", ""),
        lambda a: a.replace("/s3/", "/ec2/"),
        lambda a: a.replace("/aws4_request", "/aws5_request"),
        lambda a: a.replace("SignedHeaders=", "SignedHeaders=;"),
        lambda a: a + ", Signature=again",
        lambda a: a.replace("Credential=AKIAALICE/2", "Credential=AKIAALICE/1"),
    ],
)
def test_malformed_authorization(mangle: Any) -> None:
    wire = simple()
    bad = wire.with_headers(authorization=mangle(wire.headers["authorization"]))
    error("AuthorizationHeaderMalformed", bad.verify)


def test_region_mismatch() -> None:
    wire = header_signed("GET", "localhost:9000", "/b/k", region="eu-west-1")
    assert wire.verify() is not None
    raised = error("AuthorizationHeaderMalformed", wire.verify, region="us-east-1")
    assert raised.extra["Region"] == "us-east-1"
    wire = presigned("GET", "localhost:9000", "/b/k", region="eu-west-1")
    assert wire.verify(region="eu-west-1") is not None
    error("AuthorizationQueryParametersError", wire.verify, region="us-east-1")


def test_other_mechanisms() -> None:
    wire = simple()
    error("InvalidRequest", wire.with_headers(authorization="AWS AKIAALICE:c2lnbmF0dXJl").verify)
    raised = error("InvalidArgument", wire.with_headers(authorization="Bearer token").verify)
    assert raised.message == "Unsupported Authorization Type"
    error("InvalidRequest", sigv4.verify, "GET", "/b/k", "AWSAccessKeyId=A&Signature=s&Expires=1",
          {"host": "h"}, secret_for, AWS_NOW)  # fmt: skip
    query = presigned("GET", "localhost:9000", "/b/k")
    both = query.with_headers(authorization=wire.headers["authorization"])
    error("InvalidArgument", both.verify)
    stray = Wire("GET", "https://h/b/k?X-Amz-Credential=a%2Fb", {})
    error("AuthorizationQueryParametersError", stray.verify, AWS_NOW)


def test_time_skew() -> None:
    wire = simple()
    assert wire.verify(wire.time + timedelta(minutes=14)) is not None
    assert wire.verify(wire.time - timedelta(minutes=14)) is not None
    raised = error("RequestTimeTooSkewed", wire.verify, wire.time + timedelta(minutes=16))
    assert raised.extra["MaxAllowedSkewMilliseconds"] == "900000"
    error("RequestTimeTooSkewed", wire.verify, wire.time - timedelta(minutes=16))
    error(
        "RequestTimeTooSkewed",
        wire.verify,
        wire.time + timedelta(seconds=6),
        max_skew=timedelta(seconds=5),
    )
    assert wire.verify(wire.time.replace(tzinfo=None)) is not None  # naive means UTC


def test_missing_or_bad_date() -> None:
    wire = simple()
    no_date = wire.with_headers()
    del no_date.headers["x-amz-date"]
    assert error("AccessDenied", no_date.verify, wire.time).message.startswith("AWS authentication")
    error("AccessDenied", wire.with_headers(x_amz_date="2013-05-24T00:00:00Z").verify, wire.time)
    error("AccessDenied", no_date.with_headers(date="yesterday").verify, wire.time)


def test_payload_header() -> None:
    wire = simple()
    missing = wire.with_headers()
    del missing.headers["x-amz-content-sha256"]
    assert "x-amz-content-sha256" in error("InvalidRequest", missing.verify).message
    error("InvalidArgument", wire.with_headers(x_amz_content_sha256="abc").verify)
    for token in sorted(sigv4.PAYLOAD_TOKENS):
        # Accepted as a value, but it is signed, so changing it breaks the signature.
        error("SignatureDoesNotMatch", wire.with_headers(x_amz_content_sha256=token).verify)


def test_unsigned_headers_are_refused() -> None:
    wire = simple()
    raised = error("AccessDenied", wire.with_headers(x_amz_acl="public-read").verify)
    assert raised.extra["HeadersNotSigned"] == "x-amz-acl"
    # Other headers may be added unsigned (proxies do); x-amz-content-sha256 too.
    assert wire.with_headers(user_agent="x", x_amzn_trace_id="t").verify() is not None
    query = presigned("GET", "localhost:9000", "/b/k")
    assert query.with_headers(x_amz_content_sha256="UNSIGNED-PAYLOAD").verify() is not None
    raised = error("AccessDenied", query.with_headers(x_amz_meta_a="1", x_amz_acl="x").verify)
    assert raised.extra["HeadersNotSigned"] == "x-amz-acl, x-amz-meta-a"
    no_host = presigned("GET", "localhost:9000", "/b/k")
    no_host.query = no_host.query.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x")
    assert error("AccessDenied", no_host.verify).extra["HeadersNotSigned"] == "host"


def test_presigned_with_signed_content_sha256() -> None:
    body = hashlib.sha256(b"data").hexdigest()
    wire = presigned("PUT", "localhost:9000", "/b/k", headers={"x-amz-content-sha256": body})
    signed = wire.verify()
    assert signed is not None and signed.payload == body
    error("XAmzContentSHA256Mismatch", sigv4.check_payload, signed, EMPTY)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=soon"),
        ("X-Amz-Expires=3600&", ""),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA512"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Algorithm=x"),
        ("X-Amz-Date=", "X-Amz-Date=2013"),
        ("X-Amz-Credential=AKIAALICE%2F", "X-Amz-Credential=AKIAALICE%2F1"),
        ("%2Fs3%2F", "%2Fsqs%2F"),
        ("%2Faws4_request", "%2Faws4"),
        ("X-Amz-Credential=AKIAALICE%2F", "X-Amz-Credential="),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host%3B"),
    ],
)
def test_malformed_presign(old: str, new: str) -> None:
    wire = presigned("GET", "localhost:9000", "/b/k")
    assert old in wire.query
    wire.query = wire.query.replace(old, new, 1)
    error("AuthorizationQueryParametersError", wire.verify, datetime.now(UTC))


def test_presign_expiry_and_future() -> None:
    wire = presigned("GET", "localhost:9000", "/b/k", expires=604800)
    assert wire.verify(wire.time + timedelta(days=7)) is not None
    assert error("AccessDenied", wire.verify, wire.time + timedelta(days=7, seconds=1)).message == (
        "Request has expired"
    )
    assert wire.verify(wire.time - timedelta(minutes=10)) is not None
    raised = error("AccessDenied", wire.verify, wire.time - timedelta(minutes=16))
    assert raised.message == "Request is not valid yet"
    zero = presigned("GET", "localhost:9000", "/b/k", expires=0)
    assert zero.verify() is not None
    error("AccessDenied", zero.verify, zero.time + timedelta(seconds=1))


def test_signing_key_is_cached() -> None:
    sigv4.signing_key.cache_clear()
    wire = simple()
    for _ in range(3):
        assert wire.verify() is not None
    info = sigv4.signing_key.cache_info()
    assert info.misses == 1 and info.hits == 2
