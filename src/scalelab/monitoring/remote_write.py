"""Prometheus remote-write 1.0: the body of `POST /api/v1/write`, decoded without I/O.

Wire format (https://prometheus.io/docs/specs/remote_write_spec/): the HTTP body is the snappy
*block* format (not the framed one) of a protobuf `prometheus.WriteRequest`:

    WriteRequest   { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
    TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2;
                     repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
    Label          { string name = 1; string value = 2; }
    Sample         { double value = 1; int64 timestamp = 2; }    // ms since the epoch
    Exemplar       { repeated Label labels = 1; double value = 2; int64 timestamp = 3; }
    MetricMetadata { MetricType type = 1; string metric_family_name = 2; string help = 4;
                     string unit = 5; }

The message classes are built at run time from a `FileDescriptorProto` (no protoc, no generated
code) and parsed by upb, protobuf's C runtime. Two schemas describe the same bytes:
`prometheus.*`, faithful to the spec, encodes requests and is what `json_format` can print; a
decode view (`scalelab.remote_write.*`) reads each label as raw bytes, so a label set seen
before is found in a `LabelCache` by those bytes instead of being rebuilt and validated label
by label. Measured against a pure-Python wire decoder, upb was as fast for one-sample series
and about twice as fast for hundred-sample ones; the cache then cuts the one-sample case by
about two thirds (a sender writes the same series again every interval).

Choices where the spec leaves room:
- Content-Type absent, or `application/x-protobuf` with no `proto=` or with
  `proto=prometheus.WriteRequest`, is remote-write 1.0. Remote-write 2.0
  (`proto=io.prometheus.write.v2.Request`) and any other type raise `UnsupportedMediaType`
  (415), the answer on which the 2.0 spec lets a sender fall back to 1.0.
- Content-Encoding absent is taken as snappy, as Prometheus does; anything but `snappy` is 415.
- The snappy header's uncompressed length is checked against `max_decompressed_bytes` before
  anything is allocated: `RequestTooLarge` (413, a `ParseError`).
- Labels must have valid, unique names and a valid `__name__`. Unsorted labels, which the spec
  forbids senders to send, are accepted and sorted: the result is unambiguous and sorting is
  what canonical `Labels` need anyway. A label with an empty value is absent (`labels_of`).
- Native histograms (field 4) and exemplars (field 3) are skipped and counted in
  `WriteRequest.histograms_dropped` / `exemplars_dropped`, so the server can log or expose
  them; a series carrying only histograms comes back with no samples. Rejecting them instead
  would make a sender drop the float samples of the whole batch.
- Sample order inside a series is not checked here: the appender rejects out-of-order samples.
- Metadata with an unknown type number is read as `MetricType.UNKNOWN`; a metadata entry
  whose family name is not a valid metric name is an error.

Response (1.0 requires no headers): answer 204 No Content with an empty body on success, 400
for a `ParseError`, 413/415 for the subclasses below, 5xx only when a retry could succeed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import cramjam
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message,
    message_factory,
)

from scalelab.monitoring import errors
from scalelab.monitoring.model import (
    METRIC_NAME,
    Labels,
    MetricMetadata,
    MetricType,
    valid_label_name,
    valid_metric_name,
)

PATH = "/api/v1/write"
CONTENT_TYPE = "application/x-protobuf"
CONTENT_ENCODING = "snappy"
VERSION_HEADER = "X-Prometheus-Remote-Write-Version"
VERSION = "0.1.0"
PROTO_V1 = "prometheus.WriteRequest"
PROTO_V2 = "io.prometheus.write.v2.Request"
#: What a sender must send with a 1.0 request (for clients we write, tests and the bench).
REQUEST_HEADERS: Mapping[str, str] = {
    "Content-Type": CONTENT_TYPE,
    "Content-Encoding": CONTENT_ENCODING,
    VERSION_HEADER: VERSION,
}
#: Remote-write 1.0 expects no response headers (2.0's X-Prometheus-Remote-Write-*-Written
#: headers are for 2.0 senders only); success is any 2xx, conventionally 204 with no body.
RESPONSE_HEADERS: Mapping[str, str] = {}
SUCCESS_STATUS = 204

# Metric types by their protobuf enum number, as in prometheus/prompb/types.proto.
METRIC_TYPES: tuple[MetricType, ...] = (
    MetricType.UNKNOWN,
    MetricType.COUNTER,
    MetricType.GAUGE,
    MetricType.HISTOGRAM,
    MetricType.GAUGE_HISTOGRAM,
    MetricType.SUMMARY,
    MetricType.INFO,
    MetricType.STATESET,
)
_TYPE_NUMBER = {t: i for i, t in enumerate(METRIC_TYPES)}
_MAX_SNAPPY_LENGTH = 0xFFFFFFFF  # the block format's length header is a 32-bit varint


class UnsupportedMediaType(errors.BadData):
    """A Content-Type or Content-Encoding we do not speak (e.g. remote-write 2.0)."""

    status = 415


class RequestTooLarge(errors.ParseError):
    """The body would decompress to more than the configured limit."""

    status = 413


# (labels, timestamps in ms, values), samples in request order.
RemoteSeries = tuple[Labels, list[int], list[float]]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One decoded remote-write body; `series` mirrors the request's `timeseries` one to one."""

    series: list[RemoteSeries]
    metadata: list[tuple[str, MetricMetadata]]  # (metric family name, metadata)
    histograms_dropped: int = 0
    exemplars_dropped: int = 0

    @property
    def sample_count(self) -> int:
        return sum(len(ts) for _, ts, _ in self.series)

    def samples(self) -> Iterator[tuple[Labels, int, float]]:
        """Every float sample flat, in request order: what an `Appender` takes."""
        for labels, timestamps, values in self.series:
            for t, v in zip(timestamps, values, strict=True):
                yield labels, t, v


# --- schemas -----------------------------------------------------------------------------

_F = descriptor_pb2.FieldDescriptorProto
# A field: (name, number, type, repeated, message or enum type name).
_Field = tuple[str, int, int, bool, str | None]


def _scalar(name: str, number: int, kind: int, repeated: bool = False) -> _Field:
    return (name, number, kind, repeated, None)


def _nested(name: str, number: int, type_name: str, kind: int = _F.TYPE_MESSAGE) -> _Field:
    return (name, number, kind, kind == _F.TYPE_MESSAGE, type_name)


_STRING, _DOUBLE, _INT64, _BYTES = _F.TYPE_STRING, _F.TYPE_DOUBLE, _F.TYPE_INT64, _F.TYPE_BYTES

# Remote-write 1.0, field for field. Native histograms are never looked into, so their large
# message stays opaque bytes.
_SPEC: dict[str, list[_Field]] = {
    "Label": [_scalar("name", 1, _STRING), _scalar("value", 2, _STRING)],
    "Sample": [_scalar("value", 1, _DOUBLE), _scalar("timestamp", 2, _INT64)],
    "Exemplar": [
        _nested("labels", 1, ".prometheus.Label"),
        _scalar("value", 2, _DOUBLE),
        _scalar("timestamp", 3, _INT64),
    ],
    "TimeSeries": [
        _nested("labels", 1, ".prometheus.Label"),
        _nested("samples", 2, ".prometheus.Sample"),
        _nested("exemplars", 3, ".prometheus.Exemplar"),
        _scalar("histograms", 4, _BYTES, repeated=True),
    ],
    "MetricMetadata": [
        _nested("type", 1, ".prometheus.MetricType", kind=_F.TYPE_ENUM),
        _scalar("metric_family_name", 2, _STRING),
        _scalar("help", 4, _STRING),
        _scalar("unit", 5, _STRING),
    ],
    "WriteRequest": [
        _nested("timeseries", 1, ".prometheus.TimeSeries"),
        _nested("metadata", 3, ".prometheus.MetricMetadata"),
    ],
}
# The decode view: the same field numbers, but each label stays raw bytes (the label cache's
# key), and exemplars and histograms are only counted, never parsed.
_VIEW: dict[str, list[_Field]] = {
    "TimeSeries": [
        _scalar("labels", 1, _BYTES, repeated=True),
        _nested("samples", 2, ".prometheus.Sample"),
        _scalar("exemplars", 3, _BYTES, repeated=True),
        _scalar("histograms", 4, _BYTES, repeated=True),
    ],
    "WriteRequest": [
        _nested("timeseries", 1, ".scalelab.remote_write.TimeSeries"),
        _nested("metadata", 3, ".prometheus.MetricMetadata"),
    ],
}


def _file(name: str, package: str, messages: dict[str, list[_Field]]) -> Any:
    file = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    for message_name, fields in messages.items():
        msg = file.message_type.add(name=message_name)
        for field_name, number, kind, repeated, type_name in fields:
            label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name is not None:
                field.type_name = type_name
    return file


def _build_pool() -> Any:
    """Describe remote-write's messages to a private pool (never the process-wide default)."""
    spec = _file("scalelab/prometheus_remote.proto", "prometheus", _SPEC)
    enum = spec.enum_type.add(name="MetricType")
    for number, kind in enumerate(METRIC_TYPES):
        enum.value.add(name=kind.name, number=number)
    view = _file("scalelab/remote_write_view.proto", "scalelab.remote_write", _VIEW)
    view.dependency.append(spec.name)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(spec)
    pool.Add(view)
    return pool


_POOL = _build_pool()


def message_class(full_name: str) -> Any:
    """A runtime protobuf class, e.g. `prometheus.WriteRequest` (for interop tests)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


_PbWriteRequest = message_class("prometheus.WriteRequest")
_PbLabel = message_class("prometheus.Label")
_ViewWriteRequest = message_class("scalelab.remote_write.WriteRequest")


# --- label cache ---------------------------------------------------------------------------


class LabelCache:
    """Validated label sets keyed by their raw protobuf bytes, oldest evicted first.

    A sender writes the same series every scrape interval, so most label sets of a request were
    decoded and validated before; the cache turns that work into one dict lookup. Single labels
    (`job="node"`) are cached too, so a new series mostly reuses known pairs, and the cached
    label sets share their pair tuples and strings: an entry costs a few hundred bytes. Reads
    take no lock; inserts do, since eviction iterates the dict.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self._entries: dict[tuple[bytes, ...], Labels] = {}
        self._pairs: dict[bytes, tuple[str, str]] = {}  # raw Label -> pair with a valid name
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[bytes, ...]) -> Labels | None:
        return self._entries.get(key)

    def put(self, key: tuple[bytes, ...], labels: Labels) -> None:
        with self._lock:
            entries = self._entries
            if len(entries) >= self.max_entries:
                for old in list(islice(entries, max(1, self.max_entries // 2))):
                    del entries[old]
            entries[key] = labels

    def pair(self, raw: bytes) -> tuple[str, str]:
        """One Label's (name, value), its name checked; raises `_InvalidLabels`."""
        pair = self._pairs.get(raw)
        if pair is None:
            pair = _label_pair(raw)
            if not pair[0]:
                raise _InvalidLabels("empty label name")
            if not valid_label_name(pair[0]):
                raise _InvalidLabels(f"invalid label name {pair[0]!r}")
            if len(self._pairs) >= self.max_entries:
                self._pairs = {}  # a swap, not clear(): safe for a concurrent reader
            self._pairs[raw] = pair
        return pair


_DEFAULT_CACHE = LabelCache()


# --- decoding ------------------------------------------------------------------------------


def check_headers(content_encoding: str | None, content_type: str | None) -> None:
    """Raise `UnsupportedMediaType` unless the headers describe a remote-write 1.0 body."""
    encoding = (content_encoding or "").strip().lower()
    if encoding not in ("", CONTENT_ENCODING):
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {content_encoding!r}: remote write bodies must be "
            "snappy block-compressed (Content-Encoding: snappy)"
        )
    if content_type is None or not content_type.strip():
        return
    media, *params = content_type.split(";")
    if media.strip().lower() != CONTENT_TYPE:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {content_type!r}: expected {CONTENT_TYPE}"
        )
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "proto":
            continue
        proto = value.strip().strip('"')
        if proto == PROTO_V2:
            raise UnsupportedMediaType(
                "remote-write 2.0 (proto=io.prometheus.write.v2.Request) is not supported; "
                "send remote-write 1.0 (Prometheus: protobuf_message: prometheus.WriteRequest)"
            )
        if proto != PROTO_V1:
            raise UnsupportedMediaType(
                f"unsupported protobuf message {proto!r} in Content-Type: expected {PROTO_V1}"
            )


def snappy_length(body: bytes) -> int:
    """The uncompressed length a snappy block claims in its varint header."""
    result = shift = 0
    for byte in body[:5]:
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result > _MAX_SNAPPY_LENGTH:
                break
            return result
        shift += 7
    raise errors.ParseError("bad snappy block: missing or invalid length header")


def decode_write_request(
    body: bytes,
    *,
    content_encoding: str | None,
    content_type: str | None,
    max_decompressed_bytes: int,
    label_cache: LabelCache | None = None,
) -> WriteRequest:
    """Check the headers, decompress, parse and validate one remote-write 1.0 body.

    `label_cache` defaults to a process-wide cache; a server may pass its own.
    """
    check_headers(content_encoding, content_type)
    length = snappy_length(body)
    if length > max_decompressed_bytes:
        raise RequestTooLarge(
            f"remote write body decompresses to {length} bytes, more than the limit of "
            f"{max_decompressed_bytes}"
        )
    try:
        raw = cramjam.snappy.decompress_raw(body)
    except cramjam.DecompressionError as exc:
        raise errors.ParseError(f"bad snappy block: {exc}") from None
    view = _ViewWriteRequest()
    try:
        view.ParseFromString(memoryview(raw))
    except message.DecodeError as exc:
        raise errors.ParseError(f"bad protobuf WriteRequest: {exc}") from None
    cache = _DEFAULT_CACHE if label_cache is None else label_cache
    series, histograms, exemplars = _series(view, cache)
    return WriteRequest(series, _metadata(view.metadata), histograms, exemplars)


def _series(view: Any, cache: LabelCache) -> tuple[list[RemoteSeries], int, int]:
    """The hot loop: one cache lookup and one or two list builds per series."""
    series: list[RemoteSeries] = []
    append = series.append
    lookup = cache._entries.get  # the bound dict method: no Python frame per series
    histograms = exemplars = 0
    for ts in view.timeseries:
        key = tuple(ts.labels)
        labels = lookup(key)
        if labels is None:
            labels = _miss(view, key, cache)
        samples = ts.samples
        if len(samples) == 1:
            sample = samples[0]
            append((labels, [sample.timestamp], [sample.value]))
        else:
            timestamps: list[int] = []
            values: list[float] = []
            for sample in samples:
                timestamps.append(sample.timestamp)
                values.append(sample.value)
            append((labels, timestamps, values))
        if ts.histograms:
            histograms += len(ts.histograms)
        if ts.exemplars:
            exemplars += len(ts.exemplars)
    return series, histograms, exemplars


class _InvalidLabels(Exception):
    """A label set failed validation; `_miss` adds which series it was."""


def _miss(view: Any, key: tuple[bytes, ...], cache: LabelCache) -> Labels:
    try:
        labels = _validated_labels(key, cache)
    except _InvalidLabels as exc:
        index = next(i for i, ts in enumerate(view.timeseries) if tuple(ts.labels) == key)
        raise errors.ParseError(f"timeseries[{index}]: {exc}") from None
    cache.put(key, labels)
    return labels


def _validated_labels(raw_labels: tuple[bytes, ...], cache: LabelCache) -> Labels:
    """Parse and check one series' labels: the work a cache hit saves."""
    pairs = sorted(map(cache.pair, raw_labels))
    labels: list[tuple[str, str]] = []
    previous = None
    metric = ""
    for pair in pairs:
        name = pair[0]
        if name == previous:
            raise _InvalidLabels(f"duplicate label name {name!r} in {_describe(pairs)}")
        if name == METRIC_NAME:
            metric = pair[1]
        if pair[1]:
            labels.append(pair)
        previous = name
    if not metric:
        raise _InvalidLabels(f"missing metric name (label {METRIC_NAME}) in {_describe(pairs)}")
    if not valid_metric_name(metric):
        raise _InvalidLabels(f"invalid metric name {metric!r}")
    return tuple(labels)


def _label_pair(raw: bytes) -> tuple[str, str]:
    """(name, value) of one Label message: by hand for the usual short shape, else by upb."""
    size = len(raw)
    if size >= 2 and raw[0] == 0x0A and raw[1] < 0x80:
        end = 2 + raw[1]
        try:
            if end == size:
                return raw[2:end].decode(), ""
            if end + 2 <= size and raw[end] == 0x12 and raw[end + 1] == size - end - 2 < 0x80:
                return raw[2:end].decode(), raw[end + 2 :].decode()
        except UnicodeDecodeError:
            raise _InvalidLabels("label is not valid UTF-8") from None
    label = _PbLabel()
    try:
        label.ParseFromString(raw)
    except message.DecodeError as exc:
        raise _InvalidLabels(f"bad Label: {exc}") from None
    return label.name, label.value


def _describe(pairs: Iterable[tuple[str, str]]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in pairs)
    return "{" + (text if len(text) <= 200 else text[:200] + "...") + "}"


def _metadata(entries: Iterable[Any]) -> list[tuple[str, MetricMetadata]]:
    result: list[tuple[str, MetricMetadata]] = []
    for index, entry in enumerate(entries):
        name = entry.metric_family_name
        if not valid_metric_name(name):
            raise errors.ParseError(f"metadata[{index}]: invalid metric family name {name!r}")
        number = entry.type
        kind = METRIC_TYPES[number] if 0 <= number < len(METRIC_TYPES) else MetricType.UNKNOWN
        result.append((name, MetricMetadata(kind, entry.help, entry.unit)))
    return result


# --- encoding ------------------------------------------------------------------------------


def encode_write_request(
    series: Iterable[tuple[Labels, Sequence[int], Sequence[float]]],
    metadata: Iterable[tuple[str, MetricMetadata]] = (),
) -> bytes:
    """A snappy-compressed WriteRequest, labels written in the order given and not validated
    (so tests can build invalid requests too)."""
    payload = write_request_message(series, metadata).SerializeToString()
    return bytes(cramjam.snappy.compress_raw(payload))


def write_request_message(
    series: Iterable[tuple[Labels, Sequence[int], Sequence[float]]],
    metadata: Iterable[tuple[str, MetricMetadata]] = (),
) -> Any:
    """The `prometheus.WriteRequest` protobuf message, before serialisation and compression."""
    request = _PbWriteRequest()
    for labels, timestamps, values in series:
        if len(timestamps) != len(values):
            raise ValueError("a series needs as many timestamps as values")
        ts = request.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for t, v in zip(timestamps, values, strict=True):
            ts.samples.add(value=v, timestamp=t)
    for name, meta in metadata:
        request.metadata.add(
            type=_TYPE_NUMBER[meta.type], metric_family_name=name, help=meta.help, unit=meta.unit
        )
    return request
