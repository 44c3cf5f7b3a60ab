"""The aws-chunked decoder: AWS's published vectors, botocore's encoder, and any split."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore import httpchecksum
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.objectstore import checksums, sigv4
from scalelab.objectstore.chunked import (
    NEED_DATA,
    ChunkedDecoder,
    Data,
    EndOfMessage,
    Trailers,
)
from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.sigv4 import (
    EMPTY_SHA256,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    Signed,
)

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_NOW = datetime(2013, 5, 24, tzinfo=UTC)


def signed_context(seed: str = "ab" * 32, secret: str = SECRET) -> Signed:
    return Signed(
        access_key="AKIAIOSFODNN7EXAMPLE",
        payload=STREAMING_SIGNED,
        presigned=False,
        signing_key=sigv4.signing_key(secret, "20130524", "us-east-1"),
        scope="20130524/us-east-1/s3/aws4_request",
        amz_date="20130524T000000Z",
        seed_signature=seed,
    )


# --- a test-only encoder (the signed variants have no Python client) ------------------------


def encode(
    payload: bytes,
    sizes: list[int],
    *,
    mode: str,
    signed: Signed | None = None,
    trailers: dict[str, str] | None = None,
    eol: bytes = b"\r\n",
    blank_before_trailers: bool = False,
    minio_style: bool = False,
) -> bytes:
    """Frame `payload` in chunks of `sizes` (cycled) the way the SDKs do."""
    pieces = []
    position = 0
    for index in range(len(payload)):
        if position >= len(payload):
            break
        size = max(1, sizes[index % len(sizes)])
        pieces.append(payload[position : position + size])
        position += size
    pieces.append(b"")
    out = bytearray()
    previous = signed.seed_signature if signed is not None else ""
    for piece in pieces:
        if mode == STREAMING_UNSIGNED_TRAILER:
            out += b"%x" % len(piece) + eol
        else:
            assert signed is not None
            previous = chunk_signature(signed, previous, piece)
            out += b"%x;chunk-signature=%s" % (len(piece), previous.encode()) + eol
        if piece:
            out += piece + eol
    if mode == STREAMING_SIGNED:
        return bytes(out + eol)
    if blank_before_trailers:
        out += eol
    trailers = trailers or {}
    for name, value in trailers.items():
        out += f"{name}:{value}".encode("latin-1") + (b"\n" if minio_style else eol)
    if mode == STREAMING_SIGNED_TRAILER:
        assert signed is not None
        block = "".join(f"{n}:{v}\n" for n, v in sorted(trailers.items()))
        signature = trailer_signature(signed, previous, block)
        if minio_style:
            out += b"\r\n"
        out += f"x-amz-trailer-signature:{signature}".encode() + eol
    return bytes(out + eol)


def chunk_signature(signed: Signed, previous: str, piece: bytes) -> str:
    text = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            signed.amz_date,
            signed.scope,
            previous,
            EMPTY_SHA256,
            hashlib.sha256(piece).hexdigest(),
        ]
    )
    return sigv4.hmac_hex(signed.signing_key, text)


def trailer_signature(signed: Signed, previous: str, block: str) -> str:
    text = "\n".join(
        [
            "AWS4-HMAC-SHA256-TRAILER",
            signed.amz_date,
            signed.scope,
            previous,
            hashlib.sha256(block.encode("latin-1")).hexdigest(),
        ]
    )
    return sigv4.hmac_hex(signed.signing_key, text)


# --- driving the decoder ---------------------------------------------------------------------


def decode(
    decoder: ChunkedDecoder, body: bytes, cuts: list[int] | None = None, *, eof: bool = True
) -> tuple[bytes, dict[str, str] | None]:
    """Feed `body` split at `cuts`; return the payload and trailers, checking event order."""
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in (cuts or []))})
    pieces = [body[a:b] for a, b in zip(points, points[1:], strict=False)]
    data = bytearray()
    trailers: dict[str, str] | None = None
    ended = False
    for piece in [*pieces, b""] if eof else pieces:
        decoder.receive_data(piece)
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                break
            assert not ended
            if isinstance(event, Data):
                assert event.data and trailers is None
                data += event.data
            elif isinstance(event, Trailers):
                assert trailers is None
                trailers = event.headers
            else:
                assert isinstance(event, EndOfMessage)
                ended = True
                break
        if ended:
            break
    assert ended, "no EndOfMessage"
    assert isinstance(decoder.next_event(), EndOfMessage)
    return bytes(data), trailers


def decode_prefix(decoder: ChunkedDecoder, body: bytes, cuts: list[int]) -> tuple[bytes, S3Error]:
    """Feed a body that must fail; return what was released before the error, and the error."""
    data = bytearray()
    with pytest.raises(S3Error) as raised:
        points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
        for a, b in [*zip(points, points[1:], strict=False), (len(body), len(body))]:
            decoder.receive_data(body[a:b])
            while (event := decoder.next_event()) is not NEED_DATA:
                if isinstance(event, Data):
                    data += event.data
                elif isinstance(event, EndOfMessage):
                    raise AssertionError("a broken body decoded to the end")
    # Errors are sticky.
    with pytest.raises(S3Error):
        decoder.next_event()
    return bytes(data), raised.value


# --- AWS's published examples ----------------------------------------------------------------

A = b"a" * 66560
DOC_PAYLOAD_HEADERS = {
    "host": "s3.amazonaws.com",
    "x-amz-date": "20130524T000000Z",
    "x-amz-storage-class": "REDUCED_REDUNDANCY",
    "content-encoding": "aws-chunked",
    "x-amz-decoded-content-length": "66560",
}


def _doc_body(signatures: list[str], tail: bytes) -> bytes:
    body = b""
    for size, signature in zip([65536, 1024, 0], signatures, strict=True):
        body += b"%x;chunk-signature=%s\r\n" % (size, signature.encode())
        if size:
            body += A[:size] + b"\r\n"
    return body + tail


def _doc_verify(content_sha256: str, signed_headers: str, seed: str, **extra: str) -> Signed:
    headers = DOC_PAYLOAD_HEADERS | extra | {"x-amz-content-sha256": content_sha256}
    headers["authorization"] = (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed_headers},Signature={seed}"
    )
    signed = sigv4.verify(
        "PUT",
        "/examplebucket/chunkObject.txt",
        "",
        headers,
        lambda key: SECRET if key == "AKIAIOSFODNN7EXAMPLE" else None,
        AWS_NOW,
    )
    assert signed is not None and signed.payload == content_sha256
    return signed


def test_aws_example_signed_chunks() -> None:
    signed = _doc_verify(
        STREAMING_SIGNED,
        "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        "x-amz-decoded-content-length;x-amz-storage-class",
        "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
        **{"content-length": "66824"},
    )
    body = _doc_body(
        [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ],
        b"\r\n",
    )
    assert len(body) == 66824

    def decoder() -> ChunkedDecoder:
        return ChunkedDecoder(STREAMING_SIGNED, signed, trailer_names=None, decoded_length=66560)

    assert decode(decoder(), body) == (A, None)
    assert decode(decoder(), body, list(range(0, len(body), 777))) == (A, None)
    assert decode(decoder(), body[:-2]) == (A, None)  # final blank line missing at the end
    assert decode(decoder(), body.replace(b"\r\n", b"\n")) == (A, None)
    released, raised = decode_prefix(decoder(), body.replace(b"aaaa", b"aaab", 1), [100])
    assert raised.code == "SignatureDoesNotMatch" and released == b""
    released, raised = decode_prefix(decoder(), body.replace(b"0055", b"0056"), [])
    assert raised.code == "SignatureDoesNotMatch" and released == A[:65536]


@pytest.mark.parametrize("blank", [False, True])
def test_aws_example_signed_trailer(blank: bool) -> None:
    signed = _doc_verify(
        STREAMING_SIGNED_TRAILER,
        "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
        "x-amz-storage-class;x-amz-trailer",
        "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
        **{"x-amz-trailer": "x-amz-checksum-crc32c"},
    )
    crc32c = checksums.new_hasher("CRC32C")
    crc32c.update(A)
    assert crc32c.b64digest() == "sOO8/Q=="
    tail = (
        b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
        b"x-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
        b"\r\n\r\n"
    )
    body = _doc_body(
        [
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ],
        (b"\r\n" if blank else b"") + tail,
    )

    def decoder() -> ChunkedDecoder:
        return ChunkedDecoder(
            STREAMING_SIGNED_TRAILER,
            signed,
            trailer_names=["x-amz-checksum-crc32c"],
            decoded_length=66560,
        )

    expected = (A, {"x-amz-checksum-crc32c": "sOO8/Q=="})
    assert decode(decoder(), body) == expected
    assert decode(decoder(), body, list(range(3, len(body), 1000))) == expected
    assert decode(decoder(), body[:-4]) == expected  # ends right after the signature
    _, raised = decode_prefix(decoder(), body.replace(b"sOO8/Q==", b"sOO8/A=="), [])
    assert raised.code == "SignatureDoesNotMatch"
    _, raised = decode_prefix(decoder(), body.replace(b"x-amz-trailer-signature", b"x-y"), [])
    assert raised.code == "InvalidRequest"


# --- botocore's own encoder and boto3's requests ---------------------------------------------

ORACLES = {
    "CRC32": httpchecksum.Crc32Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}


@settings(max_examples=40, deadline=None)
@given(
    payload=st.binary(max_size=3000),
    chunk_size=st.integers(min_value=1, max_value=1200),
    algorithm=st.sampled_from(checksums.ALGORITHMS),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_botocore_aws_chunked_wrapper(
    payload: bytes, chunk_size: int, algorithm: str, cuts: list[int]
) -> None:
    name = checksums.header_name(algorithm)
    wrapper = httpchecksum.AwsChunkedWrapper(
        io.BytesIO(payload), ORACLES[algorithm], name, chunk_size=chunk_size
    )
    body = wrapper.read()
    decoder = ChunkedDecoder(
        STREAMING_UNSIGNED_TRAILER, None, trailer_names=[name], decoded_length=len(payload)
    )
    data, trailers = decode(decoder, body, cuts)
    assert data == payload
    hasher = checksums.new_hasher(algorithm)
    hasher.update(data)
    assert trailers == {name: hasher.b64digest()}


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def test_boto3_put_object_and_upload_part() -> None:
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="https://s3.example.test",
        aws_access_key_id="AKIDBOTO",
        aws_secret_access_key="boto secret",
    )
    sent: list[AWSPreparedRequest] = []

    def before_send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        return AWSResponse(request.url, 200, {}, _Raw())

    client.meta.events.register("before-send.s3", before_send)
    payload = bytes(range(256)) * 12289  # a bit over 3 MiB: several 1 MiB chunks
    client.put_object(Bucket="b", Key="big", Body=io.BytesIO(payload))
    client.put_object(Bucket="b", Key="small", Body=b"hello", ChecksumAlgorithm="SHA256")
    client.upload_part(
        Bucket="b", Key="k", UploadId="u", PartNumber=1, Body=b"", ChecksumAlgorithm="CRC64NVME"
    )
    for request, expected in zip(sent, [payload, b"hello", b""], strict=True):
        headers = {
            k.lower(): v.decode("latin-1") if isinstance(v, bytes) else v
            for k, v in request.headers.items()
        }
        path, _, query = request.url.partition("://")[2].partition("/")[2].partition("?")
        stamp = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        signed = sigv4.verify(
            "PUT",
            "/" + path,
            query,
            headers,
            lambda key: "boto secret" if key == "AKIDBOTO" else None,
            stamp,
            region="us-east-1",
        )
        assert signed is not None and signed.payload == STREAMING_UNSIGNED_TRAILER
        assert headers["content-encoding"] == "aws-chunked"
        trailer = headers["x-amz-trailer"]
        decoder = ChunkedDecoder(
            signed.payload,
            signed,
            trailer_names=[trailer],
            decoded_length=int(headers["x-amz-decoded-content-length"]),
        )
        data, trailers = decode(decoder, request.body.read(), [7, 1 << 20, (1 << 20) + 9])
        assert data == expected
        algorithm = checksums.algorithm_of_header(trailer)
        assert algorithm is not None
        hasher = checksums.new_hasher(algorithm)
        hasher.update(data)
        assert trailers == {trailer: hasher.b64digest()}


# --- any payload, any chunking, any split ------------------------------------------------------

MODES = [STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER]
SIGNED = signed_context()
Case = tuple[str, bytes, bytes, dict[str, str], dict[str, Any]]


@st.composite
def bodies(draw: st.DrawFn, modes: list[str] = MODES) -> Case:
    mode = draw(st.sampled_from(modes))
    payload = draw(st.binary(max_size=2000))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=5))
    trailers: dict[str, str] = {}
    if mode != STREAMING_SIGNED:
        trailers = draw(
            st.dictionaries(
                st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-meta-t"]),
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
                max_size=3,
            )
        )
    style: dict[str, Any] = {
        "eol": draw(st.sampled_from([b"\r\n", b"\n"])),
        "blank_before_trailers": mode != STREAMING_SIGNED
        and bool(trailers)
        and draw(st.booleans()),
        "minio_style": mode == STREAMING_SIGNED_TRAILER and draw(st.booleans()),
    }
    body = encode(payload, sizes, mode=mode, signed=SIGNED, trailers=trailers, **style)
    return mode, payload, body, trailers, style


def _decoder(mode: str, payload: bytes, trailers: dict[str, str]) -> ChunkedDecoder:
    return ChunkedDecoder(
        mode,
        SIGNED if mode != STREAMING_UNSIGNED_TRAILER else None,
        trailer_names=list(trailers) if mode != STREAMING_SIGNED else None,
        decoded_length=len(payload),
    )


@settings(max_examples=300, deadline=None)
@given(case=bodies(), cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12))
def test_any_split_yields_the_payload(case: Case, cuts: list[int]) -> None:
    mode, payload, body, trailers, _ = case
    data, got = decode(_decoder(mode, payload, trailers), body, cuts)
    assert data == payload
    assert got == (None if mode == STREAMING_SIGNED else trailers)


@settings(max_examples=300, deadline=None)
@given(
    case=bodies([STREAMING_SIGNED, STREAMING_SIGNED_TRAILER]),
    position=st.integers(min_value=0, max_value=1 << 16),
    flip=st.integers(min_value=1, max_value=255),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6),
)
def test_signed_corruption_never_yields_wrong_data(
    case: Case, position: int, flip: int, cuts: list[int]
) -> None:
    # (Unsigned bodies have nothing to detect a changed byte with: the trailer checksum,
    # which the caller compares, is what catches that.)
    mode, payload, encoded, trailers, _ = case
    body = bytearray(encoded)
    body[position % len(body)] ^= flip
    decoder = _decoder(mode, payload, trailers)
    try:
        data, got = decode(decoder, bytes(body), cuts)
    except S3Error:
        return
    # A flip that survives can only be one that means the same (hex case, name case...).
    assert data == payload
    assert got == (None if mode == STREAMING_SIGNED else trailers)


@settings(max_examples=300, deadline=None)
@given(
    case=bodies(),
    keep=st.integers(min_value=0, max_value=1 << 16),
    cuts=st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=6),
)
def test_truncation_raises_and_releases_only_a_prefix(
    case: Case, keep: int, cuts: list[int]
) -> None:
    mode, payload, body, trailers, style = case
    # Cut before the last line that matters: the final blank line may be missing.
    essential = len(body) - 2 * len(style["eol"])
    cut = keep % max(1, essential)
    released, raised = decode_prefix(_decoder(mode, payload, trailers), body[:cut], cuts)
    assert payload.startswith(released)
    assert raised.code in ("IncompleteBody", "InvalidRequest", "SignatureDoesNotMatch")


# --- errors ---------------------------------------------------------------------------------


def unsigned(
    trailer_names: list[str] | None = None, decoded_length: int | None = None
) -> ChunkedDecoder:
    return ChunkedDecoder(
        STREAMING_UNSIGNED_TRAILER,
        None,
        trailer_names=trailer_names,
        decoded_length=decoded_length,
    )


def test_decoded_length_mismatch() -> None:
    body = encode(b"hello", [2], mode=STREAMING_UNSIGNED_TRAILER)
    assert decode(unsigned(decoded_length=5), body) == (b"hello", {})
    released, raised = decode_prefix(unsigned(decoded_length=4), body, [])
    assert raised.code == "IncompleteBody" and released == b"hell"
    released, raised = decode_prefix(unsigned(decoded_length=6), body, [])
    assert raised.code == "IncompleteBody" and released == b"hello"


def test_trailer_declarations() -> None:
    body = encode(
        b"x", [1], mode=STREAMING_UNSIGNED_TRAILER, trailers={"x-amz-checksum-crc32": "A"}
    )
    assert decode(unsigned(["x-amz-checksum-crc32"]), body)[1] == {"x-amz-checksum-crc32": "A"}
    assert decode(unsigned(None), body)[1] == {"x-amz-checksum-crc32": "A"}
    for names in (["x-amz-checksum-crc32c"], []):
        assert decode_prefix(unsigned(names), body, [])[1].code == "InvalidRequest"
    missing = encode(b"x", [1], mode=STREAMING_UNSIGNED_TRAILER)
    raised = decode_prefix(unsigned(["x-amz-checksum-crc32"]), missing, [])[1]
    assert raised.code == "InvalidRequest" and "x-amz-checksum-crc32" in raised.message
    twice = body.replace(b"A\r\n", b"A\r\nx-amz-checksum-crc32:B\r\n")
    assert decode_prefix(unsigned(None), twice, [])[1].code == "InvalidRequest"
    bad_line = body.replace(b"x-amz-checksum-crc32:A", b"no colon here")
    assert decode_prefix(unsigned(None), bad_line, [])[1].code == "InvalidRequest"
    unsigned_sig = body.replace(
        b"\r\n\r\n", b"\r\nx-amz-trailer-signature:" + b"0" * 64 + b"\r\n\r\n"
    )
    assert decode_prefix(unsigned(None), unsigned_sig, [])[1].code == "InvalidRequest"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\rX0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"12345678901234567\r\n",
        b"5\r\nhello\r\n0\r\n\r\nextra",
        b"5" * 5000,
        b"",
        b"5\r\nhel",
    ],
)
def test_bad_framing(body: bytes) -> None:
    raised = decode_prefix(unsigned(), body, [1, 3])[1]
    assert raised.code == "IncompleteBody"


def test_signed_chunk_errors() -> None:
    signed = signed_context()
    good = encode(b"hello world", [4], mode=STREAMING_SIGNED, signed=signed)

    def decoder() -> ChunkedDecoder:
        return ChunkedDecoder(STREAMING_SIGNED, signed, trailer_names=None, decoded_length=None)

    assert decode(decoder(), good) == (b"hello world", None)
    unsigned_chunk = b"4\r\nhell\r\n" + good.split(b"\r\n", 2)[2]
    assert decode_prefix(decoder(), unsigned_chunk, [])[1].code == "SignatureDoesNotMatch"
    wrong_key = ChunkedDecoder(
        STREAMING_SIGNED, signed_context(secret="other"), trailer_names=None, decoded_length=None
    )
    assert decode_prefix(wrong_key, good, [])[1].code == "SignatureDoesNotMatch"
    # Chunks are verified in order: a swapped pair fails even though each was signed.
    lines = good.split(b"\r\n")  # size, data, size, data, ...
    swapped = b"\r\n".join(lines[2:4] + lines[0:2] + lines[4:])
    assert swapped != good and len(swapped) == len(good)
    assert decode_prefix(decoder(), swapped, [])[1].code == "SignatureDoesNotMatch"
    small = ChunkedDecoder(
        STREAMING_SIGNED, signed, trailer_names=None, decoded_length=None, max_signed_chunk=3
    )
    assert decode_prefix(small, good, [])[1].code == "InvalidRequest"


def test_signed_trailer_errors() -> None:
    signed = signed_context()
    trailers = {"x-amz-checksum-crc32": "AAAAAA=="}
    good = encode(b"data", [3], mode=STREAMING_SIGNED_TRAILER, signed=signed, trailers=trailers)

    def decoder() -> ChunkedDecoder:
        return ChunkedDecoder(
            STREAMING_SIGNED_TRAILER, signed, trailer_names=list(trailers), decoded_length=4
        )

    assert decode(decoder(), good) == (b"data", trailers)
    no_signature = good.split(b"x-amz-trailer-signature")[0] + b"\r\n"
    assert decode_prefix(decoder(), no_signature, [])[1].code == "IncompleteBody"
    after = good.replace(b"\r\n\r\n", b"\r\nx-amz-meta-late:1\r\n\r\n")
    assert decode_prefix(decoder(), after, [])[1].code == "InvalidRequest"


def test_multiple_trailers_sorted_or_as_sent() -> None:
    signed = signed_context()
    trailers = {"x-amz-meta-b": "2", "x-amz-checksum-crc32": "AAAAAA=="}
    body = encode(b"data", [3], mode=STREAMING_SIGNED_TRAILER, signed=signed, trailers=trailers)
    decoder = ChunkedDecoder(STREAMING_SIGNED_TRAILER, signed, trailer_names=None, decoded_length=4)
    assert decode(decoder, body) == (b"data", trailers)


def test_construction_errors() -> None:
    with pytest.raises(S3Error) as raised:
        ChunkedDecoder(STREAMING_SIGNED, None, trailer_names=None, decoded_length=None)
    assert raised.value.code == "InvalidRequest"
    with pytest.raises(S3Error) as raised:
        ChunkedDecoder("UNSIGNED-PAYLOAD", None, trailer_names=None, decoded_length=None)
    assert raised.value.code == "InvalidArgument"
    with pytest.raises(S3Error) as raised:
        ChunkedDecoder(
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD", None, trailer_names=None, decoded_length=1
        )
    assert raised.value.code == "NotImplemented"
    decoder = unsigned()
    decoder.receive_data(b"")
    with pytest.raises(RuntimeError):
        decoder.receive_data(b"more")


def test_data_is_released_as_it_arrives_when_unsigned() -> None:
    decoder = unsigned(decoded_length=10)
    decoder.receive_data(b"a\r\n0123")
    assert decoder.next_event() == Data(b"0123")
    assert decoder.next_event() is NEED_DATA
    decoder.receive_data(b"456789\r\n0\r\n\r\n")
    assert decoder.next_event() == Data(b"456789")
    assert decoder.next_event() == Trailers({})
    assert decoder.next_event() == EndOfMessage()
    assert decoder.bytes_decoded == 10


# --- speed: no quadratic copying or rescanning ------------------------------------------------


@pytest.mark.parametrize("mode", [STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED])
def test_large_chunks_fed_in_small_pieces(mode: str) -> None:
    """16 MiB chunks arriving 16 KiB at a time (a quadratic buffer would hit the test timeout)."""
    payload = bytes(range(256)) * (64 << 12)  # 64 MiB
    signed = signed_context()
    body = encode(payload, [16 << 20], mode=mode, signed=signed, trailers={})
    decoder = ChunkedDecoder(
        mode,
        signed,
        trailer_names=[] if mode != STREAMING_SIGNED else None,
        decoded_length=len(payload),
    )
    received = 0
    view = memoryview(body)
    for start in range(0, len(body), 16 << 10):
        decoder.receive_data(bytes(view[start : start + (16 << 10)]))
        while isinstance(event := decoder.next_event(), Data):
            received += len(event.data)
    decoder.receive_data(b"")
    while not isinstance(decoder.next_event(), EndOfMessage):
        pass
    assert received == len(payload)
