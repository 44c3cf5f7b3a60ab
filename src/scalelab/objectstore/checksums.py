"""Incremental hashers for S3's flexible checksums (`x-amz-checksum-<algorithm>`).

A PUT may carry its checksum in a header or, streamed, in an aws-chunked trailer; either way
the server hashes the body as it arrives and compares base64 strings at the end. One small
interface (`update`, `digest`, `b64digest`) over zlib, awscrt and hashlib keeps that loop
indifferent to the algorithm the client picked.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Protocol

from awscrt import checksums as _crt

from scalelab.objectstore.errors import S3Error

ALGORITHMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")

_HEADER_PREFIX = "x-amz-checksum-"

Buffer = bytes | bytearray | memoryview


class Hasher(Protocol):
    """Running checksum of one body: feed it bytes, read the S3 form at the end."""

    algorithm: str

    def update(self, data: Buffer) -> None: ...

    def digest(self) -> bytes: ...

    def b64digest(self) -> str: ...


class _Crc32:
    algorithm = "CRC32"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc32c:
    algorithm = "CRC32C"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = int(_crt.crc32c(data, self._value))

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc64Nvme:
    algorithm = "CRC64NVME"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = int(_crt.crc64nvme(data, self._value))

    def digest(self) -> bytes:
        return self._value.to_bytes(8, "big")

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Sha:
    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm.lower())

    def update(self, data: Buffer) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


def _normalize(algorithm: str) -> str:
    upper = algorithm.strip().upper()
    if upper not in ALGORITHMS:
        raise S3Error(
            "InvalidRequest",
            f"Checksum algorithm {algorithm!r} is not supported; "
            f"use one of {', '.join(ALGORITHMS)}.",
        )
    return upper


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for `algorithm` (any case, e.g. "crc32c" or "CRC32C")."""
    name = _normalize(algorithm)
    if name == "CRC32":
        return _Crc32()
    if name == "CRC32C":
        return _Crc32c()
    if name == "CRC64NVME":
        return _Crc64Nvme()
    return _Sha(name)


def header_name(algorithm: str) -> str:
    """The header (and trailer) carrying `algorithm`'s value: "x-amz-checksum-crc32"."""
    return _HEADER_PREFIX + _normalize(algorithm).lower()


def algorithm_of_header(name: str) -> str | None:
    """ "CRC32" for "x-amz-checksum-crc32" (any case); None for any other header name.

    `x-amz-checksum-type` and `x-amz-checksum-algorithm` are not checksums and give None.
    """
    lower = name.strip().lower()
    if not lower.startswith(_HEADER_PREFIX):
        return None
    candidate = lower[len(_HEADER_PREFIX) :].upper()
    return candidate if candidate in ALGORITHMS else None
