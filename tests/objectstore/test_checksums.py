"""The flexible-checksum hashers agree with botocore's, however the body is split."""

from __future__ import annotations

import pytest
from botocore import httpchecksum
from hypothesis import given
from hypothesis import strategies as st

from scalelab.objectstore import checksums
from scalelab.objectstore.errors import S3Error

ORACLES = {
    "CRC32": httpchecksum.Crc32Checksum,
    "CRC32C": httpchecksum.CrtCrc32cChecksum,
    "CRC64NVME": httpchecksum.CrtCrc64NvmeChecksum,
    "SHA1": httpchecksum.Sha1Checksum,
    "SHA256": httpchecksum.Sha256Checksum,
}


def test_every_algorithm_has_an_oracle() -> None:
    assert set(ORACLES) == set(checksums.ALGORITHMS)


@given(
    algorithm=st.sampled_from(checksums.ALGORITHMS),
    data=st.binary(max_size=4096),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=6),
)
def test_matches_botocore_over_any_split(algorithm: str, data: bytes, cuts: list[int]) -> None:
    oracle = ORACLES[algorithm]()
    oracle.update(data)
    hasher = checksums.new_hasher(algorithm)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in zip(points, points[1:], strict=False):
        hasher.update(memoryview(data)[start:end])
    assert hasher.digest() == oracle.digest()
    assert hasher.b64digest() == oracle.b64digest()


@pytest.mark.parametrize(
    ("algorithm", "empty"),
    [
        ("CRC32", "AAAAAA=="),
        ("CRC32C", "AAAAAA=="),
        ("CRC64NVME", "AAAAAAAAAAA="),
        ("SHA1", "2jmj7l5rSw0yVb/vlWAYkK/YBwk="),
        ("SHA256", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    ],
)
def test_empty_body(algorithm: str, empty: str) -> None:
    assert checksums.new_hasher(algorithm).b64digest() == empty


def test_known_values() -> None:
    # "123456789" is the CRC catalogue's check input.
    crc32 = checksums.new_hasher("crc32")
    crc32.update(b"123456789")
    assert crc32.digest().hex() == "cbf43926"
    crc32c = checksums.new_hasher("CRC32C")
    crc32c.update(bytearray(b"123456789"))
    assert crc32c.digest().hex() == "e3069283"
    crc64 = checksums.new_hasher("CRC64NVME")
    crc64.update(b"123456789")
    assert crc64.digest().hex() == "ae8b14860a799888"


def test_header_names() -> None:
    for algorithm in checksums.ALGORITHMS:
        name = checksums.header_name(algorithm)
        assert name == "x-amz-checksum-" + algorithm.lower()
        assert checksums.algorithm_of_header(name) == algorithm
        assert checksums.algorithm_of_header(name.upper()) == algorithm
    assert checksums.header_name("crc64nvme") == "x-amz-checksum-crc64nvme"
    for other in ("x-amz-checksum-type", "x-amz-checksum-algorithm", "x-amz-checksum-md5"):
        assert checksums.algorithm_of_header(other) is None
    assert checksums.algorithm_of_header("content-md5") is None


@pytest.mark.parametrize("algorithm", ["MD5", "CRC16", "", "XXHASH64"])
def test_unknown_algorithm(algorithm: str) -> None:
    with pytest.raises(S3Error) as raised:
        checksums.new_hasher(algorithm)
    assert raised.value.code == "InvalidRequest"
    with pytest.raises(S3Error):
        checksums.header_name(algorithm)
