"""Record batch headers: checked against batches built by kafka-python, and fuzzed."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from scalelab.message_queue import batch as b

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def built(
    values: list[bytes], codec: str = "none", *, producer: tuple[int, int, int] = (-1, -1, -1)
) -> bytes:
    """A batch as kafka-python's producer builds it."""
    pid, epoch, seq = producer
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=False,
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"k%d" % i, value=value, headers=[])
    return bytes(builder.build())


@pytest.mark.parametrize("codec", list(CODECS))
def test_header_of_a_real_batch(codec: str) -> None:
    raw = built([b"hello", b"world" * 50, b"!"], codec, producer=(7, 1, 40))
    (header, view), *rest = list(b.split(raw))
    assert not rest and bytes(view) == raw
    assert header.magic == 2 and header.record_count == 3 and header.last_offset_delta == 2
    assert header.compression == codec and not header.transactional and not header.control
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 1, 40)
    assert header.base_timestamp == 1_700_000_000_000 and header.max_timestamp >= 1_700_000_000_002
    assert header.size == len(raw)


def test_base_offset_rewrite_keeps_the_crc_and_the_records() -> None:
    raw = built([b"a", b"b"], "gzip")
    moved = b.rewrite_base_offset(raw, 1234)
    header = b.BatchHeader.parse(moved)
    header.check(moved)
    assert header.base_offset == 1234 and header.last_offset == 1235
    decoded = DefaultRecordBatch(bytes(moved))
    assert [(r.offset, r.value) for r in decoded] == [(1234, b"a"), (1235, b"b")]


def test_several_batches_in_one_record_set() -> None:
    sets = [built([b"x"] * n) for n in (1, 5, 2)]
    found = list(b.split(b"".join(sets)))
    assert [h.record_count for h, _ in found] == [1, 5, 2]
    assert [bytes(v) for _, v in found] == sets


def test_every_flipped_byte_after_the_offset_is_caught() -> None:
    raw = built([b"payload" * 3])
    for i in [*range(b.LENGTH_OFFSET, 12), *range(16, len(raw))]:  # 12-15: the leader epoch
        bad = bytearray(raw)
        bad[i] ^= 0x41
        with pytest.raises(b.BatchError):
            list(b.split(bytes(bad)))


def test_old_magic_and_truncation_get_their_kafka_codes() -> None:
    raw = bytearray(built([b"v"]))
    raw[16] = 1
    with pytest.raises(b.BatchError) as exc:
        list(b.split(bytes(raw)))
    assert exc.value.code == b.UNSUPPORTED_FOR_MESSAGE_FORMAT
    good = built([b"v"])
    with pytest.raises(b.BatchError) as exc:
        list(b.split(good[:-1]))
    assert exc.value.code == b.CORRUPT_MESSAGE
    with pytest.raises(b.BatchError):
        list(b.split(good + good[:30]))


def test_make_batch_round_trips_through_kafka_python() -> None:
    records = bytes(built([b"one", b"two"]))[b.HEADER_SIZE :]
    raw = b.make_batch(records, 2, base_offset=10, base_timestamp=5, max_timestamp=6)
    ((header, _),) = b.split(raw)
    assert header.base_offset == 10 and header.record_count == 2
    assert [r.value for r in DefaultRecordBatch(raw)] == [b"one", b"two"]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_batch_or_a_batch_error(data: bytes) -> None:
    try:
        for header, view in b.split(data):
            assert len(view) == header.size
    except b.BatchError as exc:
        assert exc.code in (b.CORRUPT_MESSAGE, b.UNSUPPORTED_FOR_MESSAGE_FORMAT, b.INVALID_RECORD)


@given(st.integers(0, 60), st.binary(min_size=1, max_size=8))
def test_damaged_headers_never_pass(pos: int, junk: bytes) -> None:
    raw = bytearray(built([b"abc", b"def"]))
    original = bytes(raw)
    raw[pos : pos + len(junk)] = junk
    if bytes(raw) == original or pos < b.LENGTH_OFFSET and bytes(raw[8:]) == original[8:]:
        return  # unchanged, or only the base offset changed (the CRC does not cover it)
    try:
        found = list(b.split(bytes(raw)))
    except b.BatchError:
        return
    # Only a change the CRC cannot see may pass: the leader epoch (bytes 12-15).
    assert bytes(raw[:12]) == original[:12] and bytes(raw[16:]) == original[16:]
    assert len(found) == 1
    struct.unpack_from(">i", raw, 12)
