"""The sans-I/O codec: framing, requests as clients encode them, responses as clients read them."""

from __future__ import annotations

import struct
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.message_queue import codec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse, MetadataRequest
    from kafka.protocol.producer import ProduceRequest


def client_frame(request: Any, correlation_id: int = 11) -> bytes:
    """A request framed exactly as kafka-python sends it."""
    request.with_header(correlation_id=correlation_id, client_id="test-client")
    return bytes(request.encode(header=True, framed=True))


@given(st.lists(st.binary(min_size=0, max_size=40), max_size=12), st.data())
def test_frames_survive_any_chunking(bodies: list[bytes], data: st.DataObject) -> None:
    frames = [b"\x00\x12\x00\x00\x00\x00\x00\x01" + body for body in bodies]  # 8-byte prefix
    stream = b"".join(struct.pack(">i", len(f)) + f for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    buf = codec.FrameBuffer()
    got: list[bytes] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += buf.feed(stream[lo:hi])
    assert got == frames and buf.buffered == 0


@pytest.mark.parametrize("size", [-1, 3, 101])
def test_impossible_frame_sizes_end_the_stream(size: int) -> None:
    with pytest.raises(codec.FrameError):
        codec.FrameBuffer(max_frame_bytes=100).feed(struct.pack(">i", size) + b"x" * 8)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_round_trip(version: int) -> None:
    req = ApiVersionsRequest[version]()
    if version >= 3:
        req = ApiVersionsRequest[version](client_software_name="t", client_software_version="1")
    frame = client_frame(req)
    (body,) = codec.FrameBuffer().feed(frame)
    decoded = codec.decode_request(body)
    assert (decoded.api_key, decoded.api_version, decoded.correlation_id) == (18, version, 11)
    assert decoded.client_id == "test-client" and decoded.error == 0
    out = codec.encode_response(decoded, codec.api_versions_body(version))
    # The ApiVersions response header is v0 at every version (KIP-511): size, correlation id
    # and straight into the body, which the client decodes at the version it asked for.
    (size, correlation_id) = struct.unpack_from(">ii", out)
    assert size == len(out) - 4 and correlation_id == 11
    resp = ApiVersionsResponse.decode(out[8:], version=version)
    advertised = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert advertised[0] == (0, 9) and advertised[1] == (4, 12) and advertised[3] == (0, 12)


def test_produce_request_keeps_its_record_bytes() -> None:
    records = b"\x00" * 70
    req = ProduceRequest[9](
        transactional_id=None,
        acks=-1,
        timeout_ms=1000,
        topic_data=[(("t", [(0, records)], {}))],
    )
    decoded = codec.decode_request(client_frame(req)[4:])
    assert decoded.error == 0 and decoded.body.acks == -1
    topic = decoded.body.topic_data[0]
    assert topic.name == "t"
    assert bytes(topic.partition_data[0].records) == records


def test_metadata_at_oldest_and_newest_versions() -> None:
    for version, topics in ((0, [("a",)]), (12, [(None, "a", {})])):
        req = MetadataRequest[version](topics=topics)
        decoded = codec.decode_request(client_frame(req, 5)[4:])
        assert decoded.error == 0 and decoded.api_version == version
        assert [t.name for t in decoded.body.topics] == ["a"]


def test_versions_and_apis_the_broker_does_not_speak() -> None:
    too_new = struct.pack(">hhi", 0, 99, 3) + b"\x00\x00"
    decoded = codec.decode_request(too_new)
    assert decoded.error == codec.UNSUPPORTED_VERSION and decoded.body is None
    assert codec.unsupported_version_response(decoded) is None
    unknown = codec.decode_request(struct.pack(">hhi", 999, 0, 4))
    assert unknown.error == codec.UNSUPPORTED_VERSION
    future_api_versions = codec.decode_request(struct.pack(">hhi", 18, 9, 21) + b"\x00" * 4)
    out = codec.unsupported_version_response(future_api_versions)
    assert out is not None and struct.unpack_from(">ii", out) == (len(out) - 4, 21)
    resp = ApiVersionsResponse.decode(out[8:], version=0)
    assert resp.error_code == codec.UNSUPPORTED_VERSION
    assert len(resp.api_keys) == len(codec.SUPPORTED)


@given(st.sampled_from(sorted(codec.SUPPORTED)), st.integers(0, 12), st.binary(max_size=60))
def test_garbage_bodies_are_an_error_not_an_exception(key: int, version: int, junk: bytes) -> None:
    decoded = codec.decode_request(struct.pack(">hhi", key, version, 1) + junk)
    assert decoded.correlation_id == 1
    assert decoded.error in (0, codec.UNSUPPORTED_VERSION, codec.INVALID_REQUEST)
