"""The Kafka wire protocol, sans I/O: bytes in, requests out; responses in, bytes out.

Every Kafka message is a frame: a big-endian int32 size, then the request (or response)
header and body. The bodies are kafka-python's `kafka.protocol` classes, generated from
Kafka's own JSON schemas, which decode requests and encode responses as well as the other way
round; this module adds the framing, the table of what the broker supports, and the cases a
server must handle that a client never meets (a version it does not speak, a frame that is too
big or not a request at all). No sockets here: the server feeds bytes and writes what comes
back, which keeps the codec easy to fuzz.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():  # kafka-python 3.0 loads its schemas with a deprecated API
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.protocol import admin, consumer, metadata, producer
    from kafka.protocol.admin import (
        CreateTopicsRequest,
        DeleteTopicsRequest,
        DescribeConfigsRequest,
        DescribeGroupsRequest,
        ListGroupsRequest,
    )
    from kafka.protocol.consumer import (
        FetchRequest,
        HeartbeatRequest,
        JoinGroupRequest,
        LeaveGroupRequest,
        ListOffsetsRequest,
        OffsetCommitRequest,
        OffsetFetchRequest,
        SyncGroupRequest,
    )
    from kafka.protocol.metadata import (
        ApiVersionsRequest,
        ApiVersionsResponse,
        FindCoordinatorRequest,
        MetadataRequest,
    )
    from kafka.protocol.producer import (
        AddOffsetsToTxnRequest,
        AddPartitionsToTxnRequest,
        EndTxnRequest,
        InitProducerIdRequest,
        ProduceRequest,
        TxnOffsetCommitRequest,
    )

__all__ = [
    "SUPPORTED",
    "FrameBuffer",
    "FrameError",
    "Request",
    "decode_request",
    "encode_response",
    "unsupported_version_response",
]

MAX_FRAME_BYTES = 100 * 1024 * 1024  # Kafka's socket.request.max.bytes
_PREFIX = struct.Struct(">hhi")  # api key, api version, correlation id: every header starts so
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42

# What the broker advertises in ApiVersions, per API key: (request class, min, max). The
# ranges are what kafka-python, aiokafka and librdkafka ask for (see the issue); Produce starts
# at 0 because librdkafka turns compression off against a broker whose Produce minimum is
# higher.
SUPPORTED: dict[int, tuple[Any, int, int]] = {
    cls.API_KEY: (cls, lo, hi)
    for cls, lo, hi in (
        (ProduceRequest, 0, 9),
        (FetchRequest, 4, 12),
        (ListOffsetsRequest, 1, 7),
        (MetadataRequest, 0, 12),
        (OffsetCommitRequest, 2, 8),
        (OffsetFetchRequest, 1, 7),
        (FindCoordinatorRequest, 0, 3),
        (JoinGroupRequest, 0, 7),
        (HeartbeatRequest, 0, 4),
        (LeaveGroupRequest, 0, 4),
        (SyncGroupRequest, 0, 5),
        (DescribeGroupsRequest, 0, 5),
        (ListGroupsRequest, 0, 4),
        (ApiVersionsRequest, 0, 3),
        (CreateTopicsRequest, 2, 5),
        (DeleteTopicsRequest, 0, 4),
        (InitProducerIdRequest, 0, 4),
        (AddPartitionsToTxnRequest, 0, 3),
        (AddOffsetsToTxnRequest, 0, 3),
        (EndTxnRequest, 0, 3),
        (TxnOffsetCommitRequest, 0, 3),
        (DescribeConfigsRequest, 0, 4),
    )
}


def _response_class(request_class: Any) -> Any:
    """FooRequest's FooResponse, from the module that defines both."""
    name = request_class.__name__.removesuffix("Request") + "Response"
    for module in (admin, consumer, metadata, producer):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(name)


RESPONSES: dict[int, Any] = {key: _response_class(cls) for key, (cls, _, _) in SUPPORTED.items()}


class FrameError(Exception):
    """The byte stream cannot be a Kafka request stream any more: close the connection."""


class FrameBuffer:
    """Cuts a byte stream into frames (without their size prefix)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        pos = 0
        while len(self._buf) - pos >= 4:
            (size,) = struct.unpack_from(">i", self._buf, pos)
            if size < _PREFIX.size or size > self.max_frame_bytes:
                raise FrameError(f"frame of {size} bytes (limit {self.max_frame_bytes})")
            if len(self._buf) - pos - 4 < size:
                break
            frames.append(bytes(memoryview(self._buf)[pos + 4 : pos + 4 + size]))  # one copy
            pos += 4 + size
        del self._buf[:pos]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class Request:
    """One decoded request; `body` is None when the broker cannot decode it (`error` says why:
    an API or version it does not support, or bytes that do not parse)."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any
    error: int = 0


PRODUCE = ProduceRequest.API_KEY


def api_key_of(frame: bytes) -> int:
    """The API key of a framed request, without decoding it (-1 if the frame is too short)."""
    return int.from_bytes(frame[:2], "big", signed=True) if len(frame) >= 2 else -1


def decode_request(frame: bytes) -> Request:
    """A request from one frame. Never raises for bad content: the error goes in `error`, so
    the server can answer it and keep the connection."""
    if len(frame) < _PREFIX.size:
        raise FrameError(f"frame of {len(frame)} bytes is too short for a request header")
    api_key, api_version, correlation_id = _PREFIX.unpack_from(frame)
    supported = SUPPORTED.get(api_key)
    if supported is None or not supported[1] <= api_version <= supported[2]:
        return Request(api_key, api_version, correlation_id, None, None, UNSUPPORTED_VERSION)
    cls = supported[0]
    try:
        body = cls.decode(frame, version=api_version, header=True)
    except Exception:  # noqa: BLE001 - any malformed body is the client's error, not ours
        return Request(api_key, api_version, correlation_id, None, None, INVALID_REQUEST)
    return Request(api_key, api_version, correlation_id, body.header.client_id, body)


def encode_response(request: Request, response: Any) -> bytes:
    """The framed response to `request` (its version and correlation id)."""
    if response.API_VERSION != request.api_version:
        response.API_VERSION = request.api_version  # before the header: it has no version
    response.with_header(correlation_id=request.correlation_id)
    return bytes(response.encode(header=True, framed=True))


def api_versions_body(version: int, error_code: int = 0) -> Any:
    """ApiVersions' answer: every supported API and its range."""
    keys = [(key, lo, hi) for key, (_, lo, hi) in sorted(SUPPORTED.items())]
    return ApiVersionsResponse[version](error_code=error_code, api_keys=keys, throttle_time_ms=0)


def unsupported_version_response(request: Request) -> bytes | None:
    """What Kafka answers a version it does not speak: for ApiVersions, a v0 response with
    UNSUPPORTED_VERSION and the supported ranges (so the client can pick one). For other APIs,
    None: a client only sends versions ApiVersions offered, so a stray one gets that API's
    error response from the broker if kafka-python knows the version, else the connection
    closes, as Kafka closes it."""
    if request.api_key != ApiVersionsRequest.API_KEY:
        return None
    v0 = Request(request.api_key, 0, request.correlation_id, None, None)
    return encode_response(v0, api_versions_body(0, UNSUPPORTED_VERSION))
