"""The network side: bad clients lose their own connection, everyone else carries on."""

from __future__ import annotations

import socket
import struct
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab.message_queue import batch as b
from scalelab.message_queue.server import BrokerServer, DataDirInUse
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.protocol.metadata import ApiVersionsResponse
    from kafka.protocol.producer import ProduceRequest, ProduceResponse


def exchange(broker: RunningBroker, payload: bytes) -> bytes:
    """Send raw bytes, return whatever comes back before the broker closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", broker.server.port), timeout=2) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def still_serves(broker: RunningBroker) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send("alive", b"yes").get(timeout=10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition("alive", 0)])
    consumer.seek_to_beginning()
    assert next(iter(consumer)).value == b"yes"
    consumer.close()


def test_unsupported_api_versions_request_gets_the_v0_answer(broker: RunningBroker) -> None:
    frame = struct.pack(">hhi", 18, 77, 5) + struct.pack(">h", -1)
    out = exchange(broker, struct.pack(">i", len(frame)) + frame)
    assert struct.unpack_from(">i", out, 4)[0] == 5
    resp = ApiVersionsResponse.decode(out[8:], version=0)
    assert resp.error_code == 35 and {k.api_key for k in resp.api_keys} >= {0, 1, 3, 18}


def test_impossible_frames_close_only_that_connection(broker: RunningBroker) -> None:
    assert exchange(broker, struct.pack(">i", -5) + b"xxxx") == b""
    assert exchange(broker, struct.pack(">i", 1 << 30)) == b""
    assert (
        exchange(broker, struct.pack(">i", 12) + struct.pack(">hhi", 0, 9, 1) + b"\xff" * 4) == b""
    )
    still_serves(broker)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from([0, 1, 2, 3, 8, 11, 18, 19, 22, 24, 25, 26, 28]),
    st.integers(0, 12),
    st.binary(max_size=80),
)
def test_fuzzed_requests_never_take_the_broker_down(
    broker: RunningBroker, key: int, version: int, body: bytes
) -> None:
    frame = struct.pack(">hhi", key, version, 9) + body
    exchange(broker, struct.pack(">i", len(frame)) + frame)
    assert broker.thread.is_alive()


def test_serves_after_the_fuzzing(broker: RunningBroker) -> None:
    for junk in (b"\x00\x00\x00\x0a" + b"\x00" * 10, b"GET / HTTP/1.1\r\n\r\n"):
        exchange(broker, junk)
    still_serves(broker)


def test_a_second_broker_on_the_same_data_dir_is_refused(broker: RunningBroker) -> None:
    with pytest.raises(DataDirInUse, match="in use"):
        BrokerServer(broker.server.settings)


GOOD_BATCH = b.make_batch(b"\x00" * 12, 1, producer_id=-1)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD_BATCH) - 1), st.integers(0, 255)), max_size=4),
    st.integers(0, len(GOOD_BATCH)),
)
def test_malformed_batches_get_error_codes_and_never_corrupt_the_log(
    broker: RunningBroker, flips: list[tuple[int, int]], cut: int
) -> None:
    """Produce requests that decode but carry damaged batches: each gets an answer (an error
    code unless the damage left a valid batch), and the log holds only whole, valid batches."""
    raw = bytearray(GOOD_BATCH)
    for pos, value in flips:
        raw[pos] = value
    records = bytes(raw[: max(cut, 1)] if cut < len(raw) else raw)
    request = ProduceRequest[7](
        transactional_id=None, acks=-1, timeout_ms=5000,
        topic_data=[ProduceRequest[7].TopicProduceData(
            name="fuzzed",
            partition_data=[ProduceRequest[7].TopicProduceData.PartitionProduceData(
                index=0, records=records)])],
    )  # fmt: skip
    request.with_header(correlation_id=3, client_id="fuzz")
    out = exchange(broker, bytes(request.encode(header=True, framed=True)))
    response = ProduceResponse[7].decode(out[8:])
    code = response.responses[0].partition_responses[0].error_code
    valid = True
    try:
        list(b.split(records))
    except b.BatchError:
        valid = False
    assert (code == 0) == valid, code
    part = broker.server.broker.topics.partition("fuzzed", 0)
    data = part.read(part.log_start_offset, 1 << 24) if part.log_end_offset else b""
    offsets = [h.base_offset for h, _ in b.split(data)]
    assert offsets == list(range(part.log_start_offset, part.log_end_offset))
