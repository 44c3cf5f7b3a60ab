"""Remote-write 1.0 codec: golden bytes from the wire spec, round trips, every rejection, fuzz."""

from __future__ import annotations

import struct
from typing import Any

import cramjam
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from scalelab.monitoring import errors
from scalelab.monitoring import remote_write as rw
from scalelab.monitoring.model import (
    STALE_NAN,
    STALE_NAN_BITS,
    Labels,
    MetricMetadata,
    MetricType,
    labels_of,
)

LIMIT = 1 << 20
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def decode(body: bytes, **kwargs: Any) -> rw.WriteRequest:
    options: dict[str, Any] = {
        "content_encoding": "snappy",
        "content_type": "application/x-protobuf",
        "max_decompressed_bytes": LIMIT,
        "label_cache": rw.LabelCache(),
    }
    options.update(kwargs)
    return rw.decode_write_request(body, **options)


def literal_snappy(payload: bytes) -> bytes:
    """A snappy block written by hand: the length varint, then one literal element."""
    assert 0 < len(payload) <= 60
    return bytes([len(payload), (len(payload) - 1) << 2]) + payload


def bits(value: float) -> int:
    result: int = struct.unpack("<Q", struct.pack("<d", value))[0]
    return result


def compressed(payload: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(payload))


UP = (("__name__", "up"),)

# --- golden bytes, written from the protobuf wire-format spec -----------------------------

# Label{name: "__name__", value: "up"}: field 1 and 2, wire type 2 (length-delimited).
LABEL = b"\x0a\x08__name__" + b"\x12\x02up"
# Sample{value: 1.0, timestamp: 1000}: field 1 wire type 1 (fixed64), field 2 varint.
SAMPLE = b"\x09" + struct.pack("<d", 1.0) + b"\x10\xe8\x07"
SERIES = b"\x0a" + bytes([len(LABEL)]) + LABEL + b"\x12" + bytes([len(SAMPLE)]) + SAMPLE
GOLDEN = b"\x0a" + bytes([len(SERIES)]) + SERIES


def test_golden_bytes_decode() -> None:
    # WriteRequest.timeseries[0] (30 bytes) = labels[0] (14 bytes) + samples[0] (12 bytes)
    assert GOLDEN.hex(" ") == (
        "0a 1e 0a 0e 0a 08 5f 5f 6e 61 6d 65 5f 5f 12 02 75 70 "
        "12 0c 09 00 00 00 00 00 00 f0 3f 10 e8 07"
    )
    request = decode(literal_snappy(GOLDEN))
    assert request.series == [(UP, [1000], [1.0])]
    assert request.metadata == []


def test_encoder_writes_the_golden_bytes() -> None:
    assert rw.write_request_message([(UP, [1000], [1.0])]).SerializeToString() == GOLDEN
    body = rw.encode_write_request([(UP, [1000], [1.0])])
    assert bytes(cramjam.snappy.decompress_raw(body)) == GOLDEN


def test_golden_negative_timestamp_and_metadata() -> None:
    # int64 -1 is a ten-byte varint; MetricMetadata{type: COUNTER, family "up", help, unit}.
    sample = b"\x09" + struct.pack("<d", -0.0) + b"\x10" + b"\xff" * 9 + b"\x01"
    series = b"\x0a\x0e" + LABEL + b"\x12" + bytes([len(sample)]) + sample
    metadata = b"\x08\x01" + b"\x12\x02up" + b"\x22\x01h" + b"\x2a\x01u"
    payload = b"\x0a" + bytes([len(series)]) + series + b"\x1a" + bytes([len(metadata)]) + metadata
    request = decode(compressed(payload))
    ((labels, timestamps, values),) = request.series
    assert (labels, timestamps) == (UP, [-1])
    assert bits(values[0]) == bits(-0.0)
    assert request.metadata == [("up", MetricMetadata(MetricType.COUNTER, "h", "u"))]
    encoded = rw.write_request_message(request.series, request.metadata).SerializeToString()
    assert encoded == payload


def test_json_format_agrees_with_our_message() -> None:
    """protobuf's own JSON mapping is a second, independent reading of our schema."""
    meta = [("http_requests_total", MetricMetadata(MetricType.COUNTER, "Requests.", "1"))]
    series = [((("__name__", "http_requests_total"), ("code", "200")), [5, -7], [1.5, 2.0])]
    as_json = json_format.MessageToDict(rw.write_request_message(series, meta))
    assert as_json == {
        "timeseries": [
            {
                "labels": [
                    {"name": "__name__", "value": "http_requests_total"},
                    {"name": "code", "value": "200"},
                ],
                "samples": [{"value": 1.5, "timestamp": "5"}, {"value": 2.0, "timestamp": "-7"}],
            }
        ],
        "metadata": [
            {
                "type": "COUNTER",
                "metricFamilyName": "http_requests_total",
                "help": "Requests.",
                "unit": "1",
            }
        ],
    }
    # ...and the other way: JSON -> protobuf (json_format's parser) -> our decoder.
    message = json_format.ParseDict(as_json, rw.message_class("prometheus.WriteRequest")())
    request = decode(compressed(message.SerializeToString()))
    assert request.series == series
    assert request.metadata == meta


def test_constants() -> None:
    assert rw.PATH == "/api/v1/write"
    assert rw.REQUEST_HEADERS == {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    assert rw.RESPONSE_HEADERS == {}
    assert rw.SUCCESS_STATUS == 204


# --- round trips ---------------------------------------------------------------------------

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True).filter(
    lambda name: name != "__name__"
)
metric_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
label_values = st.text(max_size=12)
# Every bit pattern, so NaN payloads (the staleness marker among them) are covered.
any_float = st.one_of(
    st.floats(),
    st.integers(0, (1 << 64) - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
    st.sampled_from([STALE_NAN, -0.0, 0.0, float("inf"), float("-inf")]),
)
timestamps = st.one_of(
    st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])
)


@st.composite
def series_strategy(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[int], list[float]]:
    """Labels in any order (the decoder sorts), possibly with empty values, and samples."""
    extra = draw(st.dictionaries(label_names, label_values, max_size=5))
    pairs = [("__name__", draw(metric_names)), *extra.items()]
    pairs = draw(st.permutations(pairs))
    samples = draw(st.lists(st.tuples(timestamps, any_float), max_size=4))
    return pairs, [t for t, _ in samples], [v for _, v in samples]


metadata_strategy = st.lists(
    st.tuples(
        metric_names,
        st.builds(MetricMetadata, st.sampled_from(list(MetricType)), label_values, label_values),
    ),
    max_size=3,
)


@given(st.lists(series_strategy(), max_size=6), metadata_strategy, st.booleans())
def test_round_trip(
    series: list[tuple[list[tuple[str, str]], list[int], list[float]]],
    metadata: list[tuple[str, MetricMetadata]],
    shared_cache: bool,
) -> None:
    body = rw.encode_write_request([(tuple(p), t, v) for p, t, v in series], metadata)
    cache = None if shared_cache else rw.LabelCache(max_entries=2)
    request = decode(body, label_cache=cache)
    assert len(request.series) == len(series)
    for (labels, got_t, got_v), (pairs, want_t, want_v) in zip(request.series, series, strict=True):
        assert labels == labels_of(pairs)
        assert got_t == want_t
        assert [bits(v) for v in got_v] == [bits(v) for v in want_v]
    assert request.metadata == metadata
    assert request.sample_count == sum(len(t) for _, t, _ in series)


def test_staleness_marker_is_kept_bit_exact() -> None:
    body = rw.encode_write_request([(UP, [1, 2], [STALE_NAN, float("nan")])])
    ((_, _, values),) = decode(body).series
    assert bits(values[0]) == STALE_NAN_BITS
    assert bits(values[1]) != STALE_NAN_BITS


def test_samples_flattened_for_an_appender() -> None:
    a = (("__name__", "a"),)
    body = rw.encode_write_request([(a, [1, 2], [1.0, 2.0]), (UP, [3], [3.0])])
    request = decode(body)
    assert list(request.samples()) == [(a, 1, 1.0), (a, 2, 2.0), (UP, 3, 3.0)]
    assert request.sample_count == 3


def test_unsorted_labels_are_sorted_and_empty_values_dropped() -> None:
    labels = (("zone", "b"), ("__name__", "up"), ("empty", ""), ("az", "a"))
    ((got, _, _),) = decode(rw.encode_write_request([(labels, [1], [1.0])])).series
    assert got == (("__name__", "up"), ("az", "a"), ("zone", "b"))


def test_label_cache_returns_the_same_validated_labels() -> None:
    cache = rw.LabelCache()
    body = rw.encode_write_request([(UP + (("job", "x"),), [1], [1.0])])
    first = decode(body, label_cache=cache).series[0][0]
    second = decode(body, label_cache=cache).series[0][0]
    assert first is second
    assert len(cache) == 1


def test_label_cache_evicts_oldest_half() -> None:
    cache = rw.LabelCache(max_entries=4)
    names = [f"m{i}" for i in range(6)]
    for name in names:
        decode(rw.encode_write_request([((("__name__", name),), [1], [1.0])]), label_cache=cache)
    assert 0 < len(cache) <= 4
    with pytest.raises(ValueError):
        rw.LabelCache(max_entries=0)


def test_long_labels_take_the_general_path() -> None:
    value = "v" * 300  # a two-byte length varint
    labels = (("__name__", "n" * 200), ("k", value))
    ((got, _, _),) = decode(rw.encode_write_request([(labels, [1], [1.0])])).series
    assert got == labels


def test_label_fields_in_unusual_order_or_repeated() -> None:
    """Protobuf allows fields in any order and the last of a repeated scalar wins."""
    label = b"\x12\x02up" + b"\x0a\x08__name__"
    twice = b"\x0a\x03job\x12\x01a" + b"\x0a\x03job\x12\x01b"
    series = b"\x0a" + bytes([len(label)]) + label + b"\x0a" + bytes([len(twice)]) + twice
    payload = b"\x0a" + bytes([len(series)]) + series
    assert decode(compressed(payload)).series == [(UP + (("job", "b"),), [], [])]


# --- histograms and exemplars --------------------------------------------------------------


def test_native_histograms_and_exemplars_are_dropped_and_counted() -> None:
    message = rw.write_request_message([(UP, [1], [1.0]), ((("__name__", "latency"),), [], [])])
    exemplar = message.timeseries[0].exemplars.add(value=0.5, timestamp=1)
    exemplar.labels.add(name="trace_id", value="abc")
    message.timeseries[1].histograms.append(b"\x08\x01")  # Histogram{count_int: 1}
    message.timeseries[1].histograms.append(b"\x08\x02")
    request = decode(compressed(message.SerializeToString()))
    assert request.series == [(UP, [1], [1.0]), ((("__name__", "latency"),), [], [])]
    assert request.histograms_dropped == 2
    assert request.exemplars_dropped == 1


def test_plain_requests_drop_nothing() -> None:
    request = decode(rw.encode_write_request([(UP, [1], [1.0])]))
    assert (request.histograms_dropped, request.exemplars_dropped) == (0, 0)


# --- metadata ------------------------------------------------------------------------------


def test_unknown_metric_type_number_reads_as_unknown() -> None:
    metadata = b"\x08\x2a" + b"\x12\x02up"  # type 42
    request = decode(compressed(b"\x1a" + bytes([len(metadata)]) + metadata))
    assert request.metadata == [("up", MetricMetadata(MetricType.UNKNOWN))]


@pytest.mark.parametrize("name", ["", "1up", "a.b", "a-b"])
def test_invalid_metadata_family_name(name: str) -> None:
    body = rw.encode_write_request([], [(name, MetricMetadata(MetricType.GAUGE))])
    with pytest.raises(errors.ParseError, match=r"metadata\[0\]: invalid metric family name"):
        decode(body)


# --- headers -------------------------------------------------------------------------------

GOOD_BODY = rw.encode_write_request([(UP, [1], [1.0])])


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/x-protobuf",
        "Application/X-Protobuf",
        "application/x-protobuf;proto=prometheus.WriteRequest",
        'application/x-protobuf; charset=utf-8; proto="prometheus.WriteRequest"',
    ],
)
@pytest.mark.parametrize("encoding", [None, "", "snappy", "SNAPPY", " snappy "])
def test_accepted_headers(content_type: str | None, encoding: str | None) -> None:
    request = decode(GOOD_BODY, content_type=content_type, content_encoding=encoding)
    assert request.series == [(UP, [1], [1.0])]


def test_remote_write_2_is_refused_with_415() -> None:
    with pytest.raises(rw.UnsupportedMediaType, match="remote-write 2.0") as info:
        decode(
            GOOD_BODY, content_type="application/x-protobuf;proto=io.prometheus.write.v2.Request"
        )
    assert info.value.status == 415
    assert isinstance(info.value, errors.BadData)
    assert not isinstance(info.value, errors.ParseError)


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "text/plain", "application/x-protobuf;proto=something.Else"],
)
def test_other_content_types_are_415(content_type: str) -> None:
    with pytest.raises(rw.UnsupportedMediaType, match="Content-Type|protobuf message"):
        decode(GOOD_BODY, content_type=content_type)


@pytest.mark.parametrize("encoding", ["gzip", "identity", "zstd", "snappy-framed"])
def test_other_content_encodings_are_415(encoding: str) -> None:
    with pytest.raises(rw.UnsupportedMediaType, match="Content-Encoding"):
        decode(GOOD_BODY, content_encoding=encoding)


# --- size limit ----------------------------------------------------------------------------


def test_too_large_is_refused_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decompressed a body over the limit")

    monkeypatch.setattr(cramjam.snappy, "decompress_raw", explode)
    claims_4_gib = b"\xff\xff\xff\xff\x0f" + b"\x00" * 10
    with pytest.raises(rw.RequestTooLarge, match="more than the limit") as info:
        decode(claims_4_gib)
    assert info.value.status == 413
    assert isinstance(info.value, errors.ParseError)
    body = rw.encode_write_request([(UP, [1], [1.0])])
    with pytest.raises(rw.RequestTooLarge):
        decode(body, max_decompressed_bytes=rw.snappy_length(body) - 1)


def test_body_exactly_at_the_limit_is_accepted() -> None:
    body = rw.encode_write_request([(UP, [1], [1.0])])
    assert decode(body, max_decompressed_bytes=rw.snappy_length(body)).series


# --- bad snappy and bad protobuf -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no header at all
        b"\x80",  # a varint that never ends
        b"\xff\xff\xff\xff\xff\x01",  # more than five header bytes
        b"\xff\xff\xff\xff\x7f",  # a length over 2**32 - 1
    ],
)
def test_bad_snappy_header(body: bytes) -> None:
    with pytest.raises(errors.ParseError, match="bad snappy block"):
        decode(body)


@pytest.mark.parametrize(
    "body",
    [
        b"\x05abc",  # a copy element pointing before the start
        b"\x0a\x00",  # promises 10 bytes, delivers none
        b"\x02\x08abc",  # 2 bytes claimed, a 3-byte literal given
        b"\x04\x08abc",  # 4 bytes claimed, 3 given
        bytes(GOOD_BODY[:-2]),  # truncated
    ],
)
def test_corrupt_snappy(body: bytes) -> None:
    with pytest.raises(errors.ParseError, match="bad snappy block"):
        decode(body)


def test_framed_snappy_is_not_the_block_format() -> None:
    framed = bytes(cramjam.snappy.compress(GOLDEN))
    with pytest.raises(errors.ParseError):
        decode(framed)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x05\x01",  # a length running past the end
        b"\x0f",  # wire type 7 does not exist
        b"\x0a\x02\x0a\x05",  # a label running past its series
        b"\x0b",  # a group start that never ends
    ],
)
def test_bad_protobuf(payload: bytes) -> None:
    with pytest.raises(errors.ParseError, match="bad protobuf"):
        decode(compressed(payload))


def test_plain_protobuf_without_snappy_is_rejected() -> None:
    with pytest.raises(errors.ParseError):
        decode(GOLDEN)


# --- bad labels ----------------------------------------------------------------------------


def labels_body(*series: Labels) -> bytes:
    return rw.encode_write_request([(labels, [1], [1.0]) for labels in series])


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ((("job", "x"),), "missing metric name"),
        ((("__name__", ""), ("job", "x")), "missing metric name"),
        ((), "missing metric name"),
        ((("__name__", "1up"),), "invalid metric name '1up'"),
        ((("__name__", "cpu.load"),), "invalid metric name 'cpu.load'"),
        ((("__name__", "up"), ("", "x")), "empty label name"),
        ((("__name__", "up"), ("1job", "x")), "invalid label name '1job'"),
        ((("__name__", "up"), ("a-b", "x")), "invalid label name 'a-b'"),
        ((("__name__", "up"), ("ünï", "x")), "invalid label name"),
        ((("__name__", "up"), ("job", "x"), ("job", "y")), "duplicate label name 'job'"),
        ((("__name__", "up"), ("job", "x"), ("job", "x")), "duplicate label name 'job'"),
        ((("__name__", "up"), ("__name__", "down")), "duplicate label name '__name__'"),
        ((("__name__", "up"), ("job", ""), ("job", "x")), "duplicate label name 'job'"),
    ],
)
def test_bad_labels(labels: Labels, message: str) -> None:
    body = labels_body(UP, labels)
    with pytest.raises(errors.ParseError, match=r"timeseries\[1\]: .*" + message):
        decode(body)


def test_bad_labels_are_not_cached() -> None:
    cache = rw.LabelCache()
    body = labels_body((("job", "x"),))
    for _ in range(2):
        with pytest.raises(errors.ParseError):
            decode(body, label_cache=cache)
    assert len(cache) == 0


def test_label_that_is_not_utf8() -> None:
    label = b"\x0a\x08__name__\x12\x02up"
    bad = b"\x0a\x03job\x12\x02\xff\xfe"
    series = b"\x0a" + bytes([len(label)]) + label + b"\x0a" + bytes([len(bad)]) + bad
    with pytest.raises(errors.ParseError, match=r"timeseries\[0\]: label is not valid UTF-8"):
        decode(compressed(b"\x0a" + bytes([len(series)]) + series))
    # The same bytes in an unusual field order take upb's path, which also refuses them.
    swapped = b"\x12\x02\xff\xfe\x0a\x03job"
    series = b"\x0a" + bytes([len(label)]) + label + b"\x0a" + bytes([len(swapped)]) + swapped
    with pytest.raises(errors.ParseError, match=r"timeseries\[0\]: bad Label"):
        decode(compressed(b"\x0a" + bytes([len(series)]) + series))


# --- fuzz ----------------------------------------------------------------------------------


def decode_or_parse_error(body: bytes, limit: int = 1 << 16) -> None:
    try:
        decode(body, max_decompressed_bytes=limit)
    except errors.ParseError:
        pass


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bodies(body: bytes) -> None:
    decode_or_parse_error(body)


@given(st.binary(max_size=300))
def test_fuzz_arbitrary_protobuf_payloads(payload: bytes) -> None:
    decode_or_parse_error(compressed(payload))


@given(
    st.lists(series_strategy(), min_size=1, max_size=3),
    st.data(),
)
def test_fuzz_mutated_requests(
    series: list[tuple[list[tuple[str, str]], list[int], list[float]]], data: st.DataObject
) -> None:
    """Flip, drop and insert bytes in a valid payload: deep parser and validation paths."""
    message = rw.write_request_message([(tuple(p), t, v) for p, t, v in series])
    payload = bytearray(message.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "insert" or not payload:
            index = data.draw(st.integers(0, len(payload)))
            payload[index:index] = data.draw(st.binary(min_size=1, max_size=3))
        else:
            index = data.draw(st.integers(0, len(payload) - 1))
            if action == "flip":
                payload[index] ^= 1 << data.draw(st.integers(0, 7))
            else:
                del payload[index]
    decode_or_parse_error(compressed(bytes(payload)))
