"""The data file format: golden bytes, checksums, torn tails, and the file table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scalelab.objectstore import datafile as df
from scalelab.objectstore.errors import CorruptObject

OID = bytes(range(16))


def crc32c_reference(data: bytes) -> int:
    """Bit-by-bit CRC-32C (reflected polynomial 0x82F63B78), to check awscrt against."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    fd = df.create(tmp_path / "00000007.dat", 7)
    yield fd
    os.close(fd)


def append(fd: int, oid: bytes, seq: int, data: bytes) -> tuple[int, int]:
    """Append at end of file; returns (offset, crc)."""
    header, crc = df.encode_record_header(oid, seq, data)
    offset = os.fstat(fd).st_size
    df.append_record(fd, offset, header, data)
    return offset, crc


def test_crc32c_is_castagnoli() -> None:
    assert df.crc32c(b"123456789") == 0xE3069283  # the standard check value
    for data in (b"", b"a", b"hello", bytes(range(256)) * 3):
        assert df.crc32c(data) == crc32c_reference(data)
    assert df.crc32c(b"world", df.crc32c(b"hello ")) == df.crc32c(b"hello world")


def test_struct_sizes() -> None:
    assert df.FILE_HEADER_SIZE == df.FILE_HEADER.size == 24
    assert df.RECORD_HEADER_SIZE == df.RECORD_HEADER.size == 40


def test_golden_file_header() -> None:
    assert (
        df.encode_file_header(7)
        == bytes.fromhex(
            "534c4446"  # magic "SLDF"
            "01" + "000000"  # version 1, reserved
            "0700000000000000"  # file id 7
            "b7ea735c"  # CRC-32C of the 16 bytes above
            "00000000"  # reserved
        )
    )
    assert crc32c_reference(df.encode_file_header(7)[:16]) == 0x5C73EAB7
    assert df.decode_file_header(df.encode_file_header(7)) == 7


def test_golden_record() -> None:
    header, crc = df.encode_record_header(OID, 2, b"hello")
    assert crc == 0x9A71BB4C == crc32c_reference(b"hello")
    assert header + b"hello" == bytes.fromhex(
        "534c5243"  # magic "SLRC"
        "01" "01" "0000"  # version 1, kind 1 (data), reserved
        "000102030405060708090a0b0c0d0e0f"  # object id
        "02000000"  # seq 2
        "05000000"  # length 5
        "4cbb719a"  # CRC-32C of the data
        "33945d3b"  # CRC-32C of the 36 header bytes above
        "68656c6c6f"  # b"hello"
    )  # fmt: skip
    assert crc32c_reference(header[:36]) == 0x3B5D9433
    parsed = df.decode_record_header(header)
    assert parsed == df.RecordHeader(df.KIND_DATA, OID, 2, 5, crc) and parsed.size == 45


def test_every_flipped_header_byte_is_rejected() -> None:
    header, _ = df.encode_record_header(OID, 0, b"data")
    for i in range(len(header)):
        for bit in (0x01, 0x80):
            bad = bytearray(header)
            bad[i] ^= bit
            with pytest.raises(df.BadRecord):
                df.decode_record_header(bytes(bad))
    with pytest.raises(df.BadRecord, match="truncated"):
        df.decode_record_header(header[:-1])


def test_file_header_rejects_garbage() -> None:
    good = df.encode_file_header(3)
    for i in range(20):
        bad = bytearray(good)
        bad[i] ^= 0x10
        with pytest.raises(df.BadRecord):
            df.decode_file_header(bytes(bad))


def test_create_writes_header(tmp_path: Path, fd: int) -> None:
    assert os.fstat(fd).st_size == df.FILE_HEADER_SIZE
    assert (tmp_path / "00000007.dat").read_bytes() == df.encode_file_header(7)
    with pytest.raises(FileExistsError):
        df.create(tmp_path / "00000007.dat", 7)


def test_read_record_verifies(fd: int) -> None:
    small_off, small_crc = append(fd, OID, 0, b"x" * 100)
    big = os.urandom(70_000)  # read with two preads
    big_off, big_crc = append(fd, OID, 1, big)
    assert df.read_record(fd, small_off, OID, 0, 100, small_crc) == b"x" * 100
    assert df.read_record(fd, big_off, OID, 1, len(big), big_crc) == big
    with pytest.raises(CorruptObject, match="seq 0"):  # the row's seq does not match
        df.read_record(fd, small_off, OID, 1, 100, small_crc)
    with pytest.raises(CorruptObject):  # an offset that is not a record
        df.read_record(fd, small_off + 1, OID, 0, 100, small_crc)
    for offset, n in ((small_off, 100), (big_off, len(big))):
        pos = offset + df.RECORD_HEADER_SIZE + n // 2
        os.pwrite(fd, bytes([os.pread(fd, 1, pos)[0] ^ 0x04]), pos)
    with pytest.raises(CorruptObject, match="data checksum"):
        df.read_record(fd, small_off, OID, 0, 100, small_crc)
    with pytest.raises(CorruptObject, match="data checksum") as exc:
        df.read_record(fd, big_off, OID, 1, len(big), big_crc)
    assert exc.value.object_id == OID.hex()


def test_scan_stops_at_every_torn_tail(tmp_path: Path, fd: int) -> None:
    offsets = [append(fd, OID, i, bytes([i]) * (10 * i))[0] for i in range(4)]
    full = os.fstat(fd).st_size
    records = df.scan(fd)
    assert [o for o, _ in records] == offsets and records.end == full and records.error is None
    last = offsets[-1]
    for cut in range(last + 1, full):
        os.ftruncate(fd, cut)
        for verify in (False, True):
            records = df.scan(fd, verify_data=verify)
            assert [o for o, _ in records] == offsets[:-1]
            assert records.end == last and records.error is not None
            assert f"offset {last}" in records.error


def test_scan_with_data_verification_stops_at_bad_data(fd: int) -> None:
    first, _ = append(fd, OID, 0, b"a" * 50)
    second, _ = append(fd, OID, 1, b"b" * 50)
    os.pwrite(fd, b"B", second + df.RECORD_HEADER_SIZE + 3)
    assert [o for o, _ in df.scan(fd)] == [first, second]  # headers alone are fine
    records = df.scan(fd, verify_data=True)
    assert [o for o, _ in records] == [first] and records.end == second
    assert "data checksum" in (records.error or "")


def test_check_reports_bad_data_and_keeps_going(fd: int) -> None:
    offsets = [append(fd, OID, i, b"z" * 30)[0] for i in range(3)]
    os.pwrite(fd, b"Z", offsets[1] + df.RECORD_HEADER_SIZE)
    size = os.fstat(fd).st_size
    os.pwrite(fd, b"junk", size)
    crc = df.crc32c(b"z" * 30)
    expected = [(OID, 0, offsets[0], 30, crc), (OID, 2, offsets[1], 30, crc)]  # 2nd is wrong
    result = df.check(fd, 7, size + 4, expected)
    assert (result.records, result.unreferenced) == (3, 1)
    assert result.unreferenced_bytes == df.RECORD_HEADER_SIZE + 30
    assert len(result.problems) == 3
    assert "record 1 fails its data checksum" in result.problems[0]
    assert "(4 bytes)" in result.problems[1]
    assert f"record 2: not at offset {offsets[1]}" in result.problems[2]
    assert df.check(fd, 8, size, []).problems[0] == "data file 8: header says file 7"


def test_dump(tmp_path: Path, fd: int) -> None:
    append(fd, OID, 0, b"hello")
    os.pwrite(fd, b"torn", os.fstat(fd).st_size)
    out = list(df.dump(tmp_path / "00000007.dat"))
    assert out[0] == {"type": "file", "path": str(tmp_path / "00000007.dat"), "file_id": 7,
                      "size": 24 + 45 + 4}  # fmt: skip
    assert out[1] == {"type": "record", "offset": 24, "kind": 1, "object_id": OID.hex(),
                      "seq": 0, "last": False, "length": 5,
                      "crc32c": "0x9a71bb4c"}  # fmt: skip
    assert out[2]["type"] == "invalid" and out[2]["offset"] == 69 and out[2]["bytes"] == 4
    assert len(out) == 3
    (tmp_path / "bad.dat").write_bytes(b"not a data file")
    assert [d["type"] for d in df.dump(tmp_path / "bad.dat")] == ["file", "invalid"]


def test_data_file_append_sync_recover(tmp_path: Path) -> None:
    f = df.DataFile.create(tmp_path / "00000001.dat", 1)
    try:
        header, _ = df.encode_record_header(OID, 0, b"abc")
        assert f.append(header, b"abc") == df.FILE_HEADER_SIZE
        end = f.size
        assert end == df.FILE_HEADER_SIZE + df.RECORD_HEADER_SIZE + 3
        f.sync(end)
        assert f.synced == end
        os.pwrite(f.fd, header[:10], end)  # a torn append
        f.size += 10
        found, cut = f.recover(df.FILE_HEADER_SIZE)
        assert [(offset, h.seq) for offset, h in found] == [(df.FILE_HEADER_SIZE, 0)]
        assert cut == 10
        assert f.size == end == os.fstat(f.fd).st_size
    finally:
        f.close()
    g = df.DataFile.open(tmp_path / "00000001.dat", 1, readonly=True)
    assert g.size == end and g.readonly
    g.close()


def test_file_table_keeps_retired_fd_until_released(tmp_path: Path) -> None:
    table = df.FileTable()
    f = table.add(df.DataFile.create(tmp_path / "00000001.dat", 1))
    held = table.acquire(1)
    assert held is f and f.refs == 1
    table.retire(f)
    assert table.acquire(1) is None and table.get(1) is None
    assert os.pread(f.fd, 4, 0) == b"SLDF"  # still open for the reader that holds it
    table.release(f)
    with pytest.raises(OSError):
        os.fstat(f.fd)
    g = table.add(df.DataFile.create(tmp_path / "00000002.dat", 2))
    pins = {g}
    table.pin(g)
    assert g.pins == 1
    table.unpin(pins)
    assert g.pins == 0 and not pins
    assert table.snapshot() == {2: (g.fd, df.FILE_HEADER_SIZE)}
    table.close()
