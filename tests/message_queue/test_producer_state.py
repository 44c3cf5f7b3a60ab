"""Idempotent producer sequence checks: retries deduplicated, gaps and zombies refused."""

from __future__ import annotations

import pytest

from scalelab.message_queue import batch as b
from scalelab.message_queue.producer_state import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_PRODUCER_ID,
    Duplicate,
    ProducerStateError,
    ProducerStates,
)


def header(seq: int, count: int = 2, *, pid: int = 7, epoch: int = 0) -> b.BatchHeader:
    raw = b.make_batch(b"r" * count, count, producer_id=pid, producer_epoch=epoch,
                       base_sequence=seq)  # fmt: skip
    return b.BatchHeader.parse(raw)


def test_in_order_batches_pass_and_a_retry_gets_its_original_offsets() -> None:
    s = ProducerStates()
    offset = 0
    for seq in (0, 2, 4):
        s.check(header(seq))
        s.record(header(seq), offset)
        offset += 2
    with pytest.raises(Duplicate) as dup:
        s.check(header(2))  # the response to the second batch was lost; the producer retries
    assert (dup.value.base_offset, dup.value.last_offset) == (2, 3)


def test_gaps_unknown_producers_and_old_epochs_are_refused() -> None:
    s = ProducerStates()
    with pytest.raises(ProducerStateError) as exc:
        s.check(header(5))
    assert exc.value.code == UNKNOWN_PRODUCER_ID
    s.record(header(0, epoch=3), 0)
    with pytest.raises(ProducerStateError) as exc:
        s.check(header(4, epoch=3))
    assert exc.value.code == OUT_OF_ORDER_SEQUENCE_NUMBER
    with pytest.raises(ProducerStateError) as exc:
        s.check(header(2, epoch=2))
    assert exc.value.code == INVALID_PRODUCER_EPOCH
    s.check(header(0, epoch=4))  # a new epoch starts over at 0
    with pytest.raises(ProducerStateError):
        s.check(header(2, epoch=4))


def test_only_the_last_five_batches_are_remembered_and_non_idempotent_pass() -> None:
    s = ProducerStates()
    for i in range(7):
        s.record(header(2 * i), 2 * i)
    with pytest.raises(Duplicate):
        s.check(header(12))
    with pytest.raises(ProducerStateError):  # too old to recognise: out of order
        s.check(header(0))
    s.check(header(5, pid=-1))  # no producer id: no checks


def test_state_rebuilt_from_the_log_matches() -> None:
    s = ProducerStates()
    raw = b.make_batch(b"rr", 2, base_offset=40, producer_id=9, producer_epoch=1, base_sequence=0)
    s.observe(b.BatchHeader.parse(raw))
    assert s.epoch_of(9) == 1
    with pytest.raises(Duplicate) as dup:
        s.check(header(0, pid=9, epoch=1))
    assert dup.value.base_offset == 40
