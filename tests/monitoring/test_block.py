"""Persisted blocks: golden bytes, queries against a dict model, corruption, crashes, compaction."""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring import block as blk
from scalelab.monitoring import downsample as ds
from scalelab.monitoring import index as ix
from scalelab.monitoring import segments
from scalelab.monitoring.block import Block, ChunkKind, ChunkMeta
from scalelab.monitoring.compact import compact
from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import (
    Labels,
    Matcher,
    MatchType,
    Querier,
    Series,
    TimestampArray,
    ValueArray,
    format_labels,
    labels_of,
    matches_all,
)

# --- a trivial codec, so these tests do not depend on chunk.py ----------------------------------


def enc(t: TimestampArray, v: ValueArray) -> bytes:
    return (
        struct.pack("<I", len(t)) + np.asarray(t, "<i8").tobytes() + np.asarray(v, "<f8").tobytes()
    )


def dec(data: bytes) -> tuple[TimestampArray, ValueArray]:
    (n,) = struct.unpack_from("<I", data)
    return np.frombuffer(data, "<i8", n, 4), np.frombuffer(data, "<f8", n, 4 + 8 * n)


def count(data: bytes) -> int:
    return int(struct.unpack_from("<I", data)[0])


def crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


Samples = tuple[list[int], list[float]]


def chunked(t: list[int], v: list[float], size: int) -> list[tuple[int, int, bytes]]:
    return [
        (
            t[i],
            t[min(i + size, len(t)) - 1],
            enc(np.array(t[i : i + size]), np.array(v[i : i + size])),
        )
        for i in range(0, len(t), size)
    ]


def write(
    directory: Path, data: dict[Labels, Samples], block_id: str, size: int = 3, **kw: object
) -> Block:
    items = [(labels, chunked(t, v, size)) for labels, (t, v) in data.items()]
    random.Random(0).shuffle(items)  # the writer sorts
    blk.write_block(directory, items, block_id=block_id, count_samples=count, **kw)  # type: ignore[arg-type]
    return Block.open(directory / block_id, decode=dec)


def as_dict(series: list[Series]) -> dict[Labels, Samples]:
    return {s.labels: (s.timestamps.tolist(), s.values.tolist()) for s in series}


UP_A = labels_of({"__name__": "up", "job": "a"})
UP_B = labels_of({"__name__": "up", "job": "b"})


# --- the format ---------------------------------------------------------------------------------


def test_struct_sizes() -> None:
    assert ix.HEADER.size == 8 and ix.SECTION.size == 8 and ix.TOC.size == 40
    assert ix.TABLE_HEADER.size == 8 and segments.SEGMENT_HEADER.size == 8


def test_crc32c_is_castagnoli() -> None:
    assert segments.crc32c(b"123456789") == 0xE3069283 == crc32c_reference(b"123456789")


TINY = [
    (UP_A, [ChunkMeta(ChunkKind.RAW, 1000, 2000, 2, (1 << 32) | 8)]),
    (
        UP_B,
        [
            ChunkMeta(ChunkKind.RAW, 1000, 3000, 3, (1 << 32) | 30),
            ChunkMeta(ChunkKind.RAW, 3500, 4000, 1, (1 << 32) | 60),
        ],
    ),
]
SYMBOLS = b"\x06\0\0\0" + bytes.fromhex(
    "00000000" "00000000" "08000000" "09000000" "0a000000" "0d000000" "0f000000"
) + b"__name__abjobup"  # fmt: skip
SERIES = bytes.fromhex(
    # series ref 0 (payload offset 0): up{job="a"}
    "02" "0105" "0402"  # 2 labels: (1 "__name__", 5 "up"), (4 "job", 2 "a")
    "01"  # 1 chunk
    "00" "d00f" "e807" "02"  # raw, mint 1000 (zigzag 2000), maxt - mint 1000, 2 samples
    "9080808020"  # ref (1 << 32 | 8) as zigzag: 2**33 + 16
    "00000000000000"  # padding to 24
    # series ref 3 (payload offset 24): up{job="b"}
    "02" "0105" "0403" "02"  # labels (__name__ up, job b), 2 chunks
    "00" "d00f" "d00f" "03" "bc80808020"  # raw, 1000, +2000, 3 samples, ref 1<<32 | 30
    "00" "e807" "f403" "01" "3c"  # raw, mint = 3000 + 500, +500, 1 sample, ref + 30
)  # fmt: skip
POSTINGS = bytes.fromhex(
    "02000000" "00000000" "03000000"  # list 0 (all series): refs 0, 3
    "02000000" "00000000" "03000000"  # list 1 at 3 (__name__="up"): 0, 3
    "01000000" "00000000"  # list 2 at 6 (job="a"): 0
    "01000000" "03000000"  # list 3 at 8 (job="b"): 3
)  # fmt: skip
TABLE = bytes.fromhex(
    "04000000" "00000000"  # 4 entries, zero
    "0000000000000000" "0500000001000000" "0200000004000000" "0300000004000000"  # keys
    "00000000" "03000000" "06000000" "08000000"  # list offsets in 4-byte units
)  # fmt: skip


def section(payload: bytes, crc: str) -> bytes:
    assert crc32c_reference(payload) == int.from_bytes(bytes.fromhex(crc), "little")
    framed = len(payload).to_bytes(4, "little") + bytes.fromhex(crc) + payload
    return framed + bytes(-len(framed) % 8)


def test_golden_index() -> None:
    toc = bytes.fromhex(
        "0800000000000000" "4000000000000000"  # symbols at 8, series at 64
        "7800000000000000" "a800000000000000"  # postings at 120, postings table at 168
    )  # fmt: skip
    expected = (
        b"SLTI\x01\0\0\0"
        + section(SYMBOLS, "33a1df53")  # at 8
        + section(SERIES, "ec275106")  # at 64
        + section(POSTINGS, "991bc960")  # at 120
        + section(TABLE, "12d9cf08")  # at 168
        + toc  # at 232
        + bytes.fromhex("303912ef00000000")  # CRC-32C of the 32 bytes above, zero
    )
    assert crc32c_reference(toc) == 0xEF123930
    assert ix.encode_index(TINY) == expected


def test_golden_block_files(tmp_path: Path) -> None:
    meta = blk.write_block(tmp_path, [(UP_A, [(5, 6, b"abc")])], block_id="B1", count_samples=len)
    root = tmp_path / "B1"
    assert (root / "chunks" / "000001").read_bytes() == bytes.fromhex(
        "534c4353" "01" "000000"  # magic "SLCS", version 1, zero
        "03000000" "616263"  # length 3, b"abc"
        "f8831455"  # CRC-32C of the length and the data
    )  # fmt: skip
    assert crc32c_reference(bytes.fromhex("03000000616263")) == 0x551483F8
    assert (root / "index").read_bytes() == ix.encode_index(
        [(UP_A, [ChunkMeta(ChunkKind.RAW, 5, 6, 3, (1 << 32) | 8)])]
    )
    assert meta == blk.BlockMeta("B1", 5, 6, 1, 1, 3, sources=("B1",))
    assert (
        blk.BlockMeta.from_json(__import__("json").loads((root / "meta.json").read_text())) == meta
    )
    assert sorted(p.name for p in root.iterdir()) == ["chunks", "index", "meta.json"]


def test_index_reader_reads_the_golden_index(tmp_path: Path) -> None:
    (tmp_path / "index").write_bytes(ix.encode_index(TINY))
    r = ix.IndexReader(tmp_path / "index", "tiny")
    try:
        assert list(r.symbols()) == ["", "__name__", "a", "b", "job", "up"]
        assert r.series(0) == (UP_A, TINY[0][1]) and r.series(3) == (UP_B, TINY[1][1])
        assert r.postings("job", "b").tolist() == [3] and r.all_postings().tolist() == [0, 3]
        assert r.postings("job", "zzz").size == 0 and r.postings("nope", "a").size == 0
        assert r.label_names() == ["__name__", "job"] and r.label_values("job") == ["a", "b"]
    finally:
        r.close()


def test_new_block_id_sorts_by_time() -> None:
    rng = random.Random(7)
    ids = [blk.new_block_id(ms, rng) for ms in (0, 1, 1_700_000_000_000, 1_700_000_000_001)]
    assert ids == sorted(ids) and all(len(i) == 26 for i in ids)
    assert blk.new_block_id(5, random.Random(1)) == blk.new_block_id(5, random.Random(1))


# --- queries against a dict model ----------------------------------------------------------------

NAMES = ["__name__", "a", "b"]
VALUES = ["x", "y", "xy", "x.y", "z"]
PATTERNS = ["", "x", ".*", ".+", "x.*", "xy?", "x\\.y", "x|y", "y|", "[xz]", "x+", ".*y", "(x|z)"]

label_sets = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES), min_size=1).map(
    labels_of
)
samples = st.lists(st.integers(0, 1000), min_size=1, max_size=12, unique=True).map(sorted)
matchers = st.builds(
    Matcher,
    st.sampled_from(list(MatchType)),
    st.sampled_from([*NAMES, "c"]),
    st.sampled_from(VALUES + PATTERNS),
)
queries = st.tuples(st.lists(matchers, max_size=3), st.integers(-10, 1010), st.integers(-10, 1010))


@settings(max_examples=60)
@given(
    st.dictionaries(label_sets, samples, min_size=1, max_size=12),
    st.integers(1, 4),
    st.lists(queries, min_size=1, max_size=6),
)
def test_select_matches_a_dict_model(
    data: dict[Labels, list[int]], size: int, qs: list[tuple[list[Matcher], int, int]]
) -> None:
    model = {labels: (t, [float(x) / 4 for x in t]) for labels, t in data.items()}
    spans = {
        labels: [(c[0], c[1]) for c in chunked(t, v, size)] for labels, (t, v) in model.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        with write(Path(tmp), model, "B", size) as b:
            lo = min(t[0] for t, _ in model.values())
            hi = max(t[-1] for t, _ in model.values())
            assert (b.meta.min_time, b.meta.max_time, b.meta.num_series) == (lo, hi, len(model))
            for ms, mint, maxt in qs:
                want: dict[Labels, Samples] = {}
                chunk_hit: list[Labels] = []
                for labels, (t, v) in sorted(model.items()):
                    if not matches_all(labels, ms):
                        continue
                    keep = [i for i, x in enumerate(t) if mint <= x <= maxt]
                    if keep:
                        want[labels] = ([t[i] for i in keep], [v[i] for i in keep])
                    if mint <= maxt and any(a <= maxt and b_ >= mint for a, b_ in spans[labels]):
                        chunk_hit.append(labels)
                got = b.select(ms, mint, maxt)
                assert [s.labels for s in got] == list(want)  # sorted by labels
                assert as_dict(got) == want
                in_block = mint <= maxt and mint <= hi and maxt >= lo
                if ms:
                    names = sorted({k for labels in chunk_hit for k, _ in labels})
                    assert b.label_names(ms, mint, maxt) == names
                    for name in [*NAMES, "c"]:
                        vals = sorted({v for labels in chunk_hit for k, v in labels if k == name})
                        assert b.label_values(name, ms, mint, maxt) == vals
                else:
                    every = sorted({k for labels in model for k, _ in labels})
                    assert b.label_names([], mint, maxt) == (every if in_block else [])


def test_prometheus_empty_value_semantics(tmp_path: Path) -> None:
    data = {
        labels_of({"__name__": "m", "env": "prod"}): ([1], [1.0]),
        labels_of({"__name__": "m", "env": "dev"}): ([1], [2.0]),
        labels_of({"__name__": "m"}): ([1], [3.0]),
    }
    with write(tmp_path, data, "B") as b:
        querier: Querier = b  # a block is a model.Querier
        assert querier.label_values("env", [], 0, 10) == ["dev", "prod"]

        def envs(m: Matcher) -> list[str]:
            return [dict(s.labels).get("env", "-") for s in b.select([m], 0, 10)]

        assert envs(Matcher.equal("env", "")) == ["-"]
        assert envs(Matcher(MatchType.NOT_EQUAL, "env", "")) == ["dev", "prod"]
        assert envs(Matcher(MatchType.NOT_EQUAL, "env", "prod")) == ["-", "dev"]
        assert envs(Matcher(MatchType.REGEX, "env", "prod|")) == ["-", "prod"]
        assert envs(Matcher(MatchType.REGEX, "env", ".*")) == ["-", "dev", "prod"]
        assert envs(Matcher(MatchType.REGEX, "env", ".+")) == ["dev", "prod"]
        assert envs(Matcher(MatchType.NOT_REGEX, "env", "p.*")) == ["-", "dev"]
        assert envs(Matcher.equal("nolabel", "")) == ["-", "dev", "prod"]
        assert envs(Matcher.equal("nolabel", "x")) == []


def test_equal_and_regex_matchers_decode_only_matching_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = {
        labels_of({"__name__": "m", "job": f"j{i % 10}", "instance": f"host-{i}"}): ([i], [1.0])
        for i in range(2000)
    }
    with write(tmp_path, data, "B") as b:
        decoded: list[int] = []
        real = ix.IndexReader.series

        def spy(self: ix.IndexReader, ref: int) -> tuple[Labels, list[ChunkMeta]]:
            decoded.append(ref)
            return real(self, ref)

        monkeypatch.setattr(ix.IndexReader, "series", spy)
        assert len(b.select([Matcher.equal("job", "j3")], 0, 10_000)) == 200
        assert len(decoded) == 200
        decoded.clear()
        got = b.select([Matcher(MatchType.REGEX, "instance", "host-1.*")], 0, 10_000)
        assert len(got) == len(decoded) == 1 + 10 + 100 + 1000
        decoded.clear()
        got = b.select(
            [Matcher(MatchType.REGEX, "job", "j1|j2"), Matcher.equal("instance", "host-1")],
            0,
            10_000,
        )
        assert [s.labels for s in got] == [
            labels_of({"__name__": "m", "job": "j1", "instance": "host-1"})
        ]
        assert len(decoded) == 1


def test_overlapping_chunks_merge_first_copy_wins(tmp_path: Path) -> None:
    series = [
        (UP_A, [(0, 20, enc(np.array([0, 10, 20]), np.array([1.0, 2.0, 3.0])))]),
        (UP_A, [(10, 30, enc(np.array([10, 30]), np.array([9.0, 4.0])))]),
    ]
    blk.write_block(tmp_path, series, block_id="B", count_samples=count)
    with Block.open(tmp_path / "B", decode=dec) as b:
        (s,) = b.select([Matcher.equal("job", "a")], 0, 100)
        assert s.timestamps.tolist() == [0, 10, 20, 30] and s.values.tolist() == [1, 2, 3, 4]
        assert b.meta.num_chunks == 2 and b.meta.num_samples == 5


def test_open_loads_no_chunks_and_segments_are_cut(tmp_path: Path) -> None:
    data = {
        labels_of({"__name__": "m", "i": str(i)}): (list(range(10)), [1.0] * 10) for i in range(20)
    }
    with write(tmp_path, data, "B", size=2, segment_size=200) as b:
        assert b._segments == {}
        segments = sorted(p.name for p in (tmp_path / "B" / "chunks").iterdir())
        assert len(segments) > 10 and segments[0] == "000001"
        assert as_dict(b.select([Matcher.equal("i", "7")], 0, 100)) == {
            labels_of({"__name__": "m", "i": "7"}): (list(range(10)), [1.0] * 10)
        }
        assert as_dict(b.select([], 3, 4)) == {k: ([3, 4], [1.0, 1.0]) for k in data}


def test_default_codec_is_chunk_py_imported_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = types.ModuleType("scalelab.monitoring.chunk")
    fake.decode = dec  # type: ignore[attr-defined]
    fake.decode_cached = dec  # type: ignore[attr-defined]  # what a Block reads with
    fake.encode = enc  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "scalelab.monitoring.chunk", fake)
    chunk = enc(np.array([1, 2]), np.array([5.0, 6.0]))
    meta = blk.write_block(tmp_path, [(UP_A, [(1, 2, chunk)])], block_id="B")  # counts by decoding
    assert meta.num_samples == 2
    with Block.open(tmp_path / "B") as b:
        assert as_dict(b.select([], 0, 9)) == {UP_A: ([1, 2], [5.0, 6.0])}


def test_write_block_validates(tmp_path: Path) -> None:
    ok = (1, 2, enc(np.array([1, 2]), np.array([1.0, 2.0])))
    bad_inputs: list[tuple[Labels, object]] = [
        ((("job", "a"), ("__name__", "up")), [ok]),  # not sorted
        ((("job", ""),), [ok]),  # empty value
        ((), [ok]),  # no labels
        (UP_A, [(3, 2, ok[2])]),  # ends before it starts
        (UP_A, [(*ok, ChunkKind.SUM)]),  # an aggregate in a raw block
    ]
    for labels, chunks in bad_inputs:
        with pytest.raises(ValueError):
            blk.write_block(tmp_path, [(labels, chunks)], block_id="B", count_samples=count)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        blk.write_block(
            tmp_path, [(UP_A, [ok])], block_id="B", count_samples=count, time_range=(0, 1)
        )
    with pytest.raises(ValueError, match="time_range"):
        blk.write_block(tmp_path, [], block_id="B")
    assert list(tmp_path.iterdir()) == []
    meta = blk.write_block(tmp_path, [], block_id="E", time_range=(0, 7_199_999))
    assert (meta.num_series, meta.min_time, meta.max_time) == (0, 0, 7_199_999)
    with Block.open(tmp_path / "E", decode=dec) as b:
        assert b.select([], 0, 10) == [] and b.label_names([], 0, 10) == []
    with pytest.raises(FileExistsError):
        blk.write_block(tmp_path, [], block_id="E", time_range=(0, 1))
    for bad_id in ("../x", "a/b", "", "E" + blk.TMP_SUFFIX):
        with pytest.raises(ValueError, match="block id"):
            blk.write_block(tmp_path, [], block_id=bad_id, time_range=(0, 1))


# --- corruption ----------------------------------------------------------------------------------


def test_every_corrupted_index_byte_fails_open(tmp_path: Path) -> None:
    data = {UP_A: ([1, 2, 3], [1.0, 2.0, 3.0]), UP_B: ([2], [5.0])}
    write(tmp_path, data, "B").close()
    path = tmp_path / "B" / "index"
    good = path.read_bytes()
    for i in range(len(good)):
        for bit in (0x01, 0x80):
            bad = bytearray(good)
            bad[i] ^= bit
            path.write_bytes(bad)
            with pytest.raises(StorageError, match="block B: index"):
                Block.open(tmp_path / "B", decode=dec)
    path.write_bytes(good[:30])
    with pytest.raises(StorageError, match="too short"):
        Block.open(tmp_path / "B", decode=dec)
    path.write_bytes(good)
    Block.open(tmp_path / "B", decode=dec).close()


def test_corrupted_chunk_fails_the_read_naming_the_series(tmp_path: Path) -> None:
    data = {UP_A: ([1, 2, 3], [1.0, 2.0, 3.0]), UP_B: ([2], [5.0])}
    with write(tmp_path, data, "B") as b:
        (_, chunks) = next(s for s in b.iter_series() if s[0] == UP_B)
        offset = chunks[0].offset
    segment = tmp_path / "B" / "chunks" / "000001"
    good = segment.read_bytes()
    for pos, what in ((offset + 10, "checksum mismatch"), (offset + 1, "runs past")):
        bad = bytearray(good)
        bad[pos] ^= 0x40
        segment.write_bytes(bad)
        with Block.open(tmp_path / "B", decode=dec) as b:
            assert as_dict(b.select([Matcher.equal("job", "a")], 0, 9)) == {UP_A: data[UP_A]}
            with pytest.raises(StorageError, match=what) as exc:
                b.select([Matcher.equal("__name__", "up")], 0, 9)
            assert "block B" in str(exc.value) and format_labels(UP_B) in str(exc.value)
    segment.write_bytes(b"XXXX" + good[4:])
    with Block.open(tmp_path / "B", decode=dec) as b, pytest.raises(StorageError, match="up"):
        b.select([], 0, 9)


def test_bad_meta_is_a_storage_error(tmp_path: Path) -> None:
    write(tmp_path, {UP_A: ([1], [1.0])}, "B").close()
    (tmp_path / "B" / "meta.json").write_text("{")
    with pytest.raises(StorageError, match="meta.json"):
        Block.open(tmp_path / "B")


# --- crashes -------------------------------------------------------------------------------------


def failing_series(n: int) -> Iterator[tuple[Labels, list[tuple[int, int, bytes]]]]:
    for i in range(n):
        yield labels_of({"__name__": "m", "i": str(i)}), [(0, 1, enc(np.array([0, 1]), np.ones(2)))]
    raise OSError("disk on fire")


def test_a_writer_failing_midway_leaves_no_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OSError, match="disk on fire"):
        blk.write_block(tmp_path, failing_series(5), block_id="B", count_samples=count)
    assert list(tmp_path.iterdir()) == []

    def broken_index(series: object) -> bytes:
        raise OSError("index write failed")

    monkeypatch.setattr(blk, "encode_index", broken_index)
    with pytest.raises(OSError, match="index write failed"):
        blk.write_block(
            tmp_path,
            [(UP_A, [(0, 1, enc(np.array([0, 1]), np.ones(2)))])],
            block_id="B",
            count_samples=count,
        )
    assert list(tmp_path.iterdir()) == [] and blk.list_blocks(tmp_path) == []


def test_a_crash_leaves_only_a_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a process killed mid-write cannot clean up: simulate it by making the cleanup a no-op
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(OSError):
        blk.write_block(tmp_path, failing_series(3), block_id="B", count_samples=count)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["B" + blk.TMP_SUFFIX]
    assert blk.list_blocks(tmp_path) == []
    assert blk.remove_incomplete(tmp_path) == [tmp_path / ("B" + blk.TMP_SUFFIX)]
    blk.write_block(
        tmp_path,
        [(UP_A, [(0, 1, enc(np.array([0, 1]), np.ones(2)))])],
        block_id="B",
        count_samples=count,
    )
    assert blk.list_blocks(tmp_path) == [tmp_path / "B"]


def test_every_file_and_directory_is_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def rename(a: Path, b: Path) -> None:
        synced.append("rename")
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    blk.write_block(
        tmp_path,
        [(UP_A, [(0, 1, enc(np.array([0, 1]), np.ones(2)))])],
        block_id="B",
        count_samples=count,
    )
    tmp = str(tmp_path / ("B" + blk.TMP_SUFFIX))
    before = set(synced[: synced.index("rename")])
    assert before == {
        f"{tmp}/chunks/000001",
        f"{tmp}/index",
        f"{tmp}/meta.json",
        f"{tmp}/chunks",
        tmp,
    }
    assert synced[synced.index("rename") + 1 :] == [str(tmp_path)]


# --- compaction ----------------------------------------------------------------------------------


def series_data(names: list[str], start: int) -> dict[Labels, Samples]:
    return {
        labels_of({"__name__": "m", "s": n}): (
            list(range(start, start + 50, 5)),
            [float(i) for i in range(10)],
        )
        for n in names
    }


def test_compaction_merges_blocks(tmp_path: Path) -> None:
    parts = [
        series_data(["a", "b"], 0),
        series_data(["b", "c"], 1000),
        series_data(["a", "c", "d"], 2000),
    ]
    blocks = [
        write(tmp_path, d, f"B{i}", time_range=(i * 1000, i * 1000 + 999))
        for i, d in enumerate(parts)
    ]
    meta = compact(blocks, tmp_path, block_id="C")
    assert (meta.min_time, meta.max_time, meta.level) == (0, 2999, 2)
    assert meta.sources == ("B0", "B1", "B2") and meta.parents == ("B0", "B1", "B2")
    assert meta.num_series == 4
    assert meta.num_chunks == sum(b.meta.num_chunks for b in blocks)
    assert meta.num_samples == sum(b.meta.num_samples for b in blocks) == 70
    want: dict[Labels, Samples] = {}
    for d in parts:
        for labels, (t, v) in d.items():
            old = want.get(labels, ([], []))
            want[labels] = (old[0] + t, old[1] + v)
    with Block.open(tmp_path / "C", decode=dec) as c:
        assert as_dict(c.select([], 0, 3000)) == want
        assert as_dict(c.select([Matcher.equal("s", "b")], 1000, 1020)) == {
            labels_of({"__name__": "m", "s": "b"}): (
                [1000, 1005, 1010, 1015, 1020],
                [0.0, 1.0, 2.0, 3.0, 4.0],
            )
        }
        assert c.label_values("s", [], 0, 3000) == ["a", "b", "c", "d"]
        later = write(tmp_path, series_data(["e"], 3000), "B3")
        meta2 = compact([c, later], tmp_path, block_id="C2")
        later.close()
    assert meta2.level == 3 and meta2.sources == ("B0", "B1", "B2", "B3")
    assert meta2.parents == ("C", "B3") and meta2.num_series == 5
    for b in blocks:
        b.close()


def test_compaction_keeps_a_chunk_found_twice_once(tmp_path: Path) -> None:
    data = series_data(["a", "b"], 0)
    one, two = write(tmp_path, data, "B1"), write(tmp_path, data, "B2")
    meta = compact([one, two], tmp_path, block_id="C")
    assert meta.num_chunks == one.meta.num_chunks and meta.num_samples == 20
    with Block.open(tmp_path / "C", decode=dec) as c:
        assert as_dict(c.select([], 0, 100)) == data
    one.close()
    two.close()


def test_compaction_refuses_mixed_resolutions(tmp_path: Path) -> None:
    raw = write(tmp_path, series_data(["a"], 0), "R")
    ds.downsample_block(raw, tmp_path, 60_000, encode=enc, block_id="D")
    with Block.open(tmp_path / "D", decode=dec) as d, pytest.raises(ValueError, match="resolution"):
        compact([raw, d], tmp_path)
    raw.close()


# --- downsampled blocks --------------------------------------------------------------------------


def test_downsampled_blocks_hold_every_aggregate(tmp_path: Path) -> None:
    t = np.arange(0, 7_200_000, 15_000, dtype=np.int64)
    gauge = np.sin(t / 1e6) * 10
    counter = np.cumsum(np.ones(t.size))
    counter[300:] -= counter[299]  # a reset
    data = {
        labels_of({"__name__": "g"}): (t.tolist(), gauge.tolist()),
        labels_of({"__name__": "c"}): (t.tolist(), counter.tolist()),
    }
    raw = write(tmp_path, data, "R", size=120, time_range=(0, 7_199_999))
    meta = ds.downsample_block(raw, tmp_path, ds.RESOLUTION_1M, encode=enc, block_id="M")
    assert (meta.resolution_ms, meta.level, meta.parents, meta.sources) == (
        60_000,
        1,
        ("R",),
        ("R",),
    )
    assert (meta.min_time, meta.max_time) == (0, 7_199_999)
    with Block.open(tmp_path / "M", decode=dec) as m:
        for labels, (ts, vs) in data.items():
            want = ds.downsample(np.array(ts), np.array(vs), 60_000)
            sel = [Matcher.equal("__name__", labels[0][1])]
            for kind, wt, wv in (
                ("count", want.timestamps, want.count),
                ("sum", want.timestamps, want.sum),
                (ChunkKind.MIN, want.timestamps, want.min),
                (ChunkKind.MAX, want.timestamps, want.max),
                ("counter", want.counter_timestamps, want.counter_values),
            ):
                (s,) = m.select_aggregate(sel, 0, 7_199_999, kind)
                assert s.labels == labels
                np.testing.assert_array_equal(s.timestamps, wt)
                np.testing.assert_array_equal(s.values, wv)
            (avg,) = m.select(sel, 0, 7_199_999)
            np.testing.assert_array_equal(avg.values, want.sum / want.count)
            (part,) = m.select_aggregate(sel, 60_000, 180_000, "count")
            assert part.timestamps.tolist() == [119_999, 179_999]
        (c,) = m.select_aggregate([Matcher.equal("__name__", "c")], 0, 7_199_999, "counter")
        mono_t, mono_v, _ = ds.apply_counter_resets(c.timestamps, c.values)
        assert mono_v[-1] - mono_v[0] == 479.0  # 479 steps of 1, the reset included
        with pytest.raises(ValueError, match="no raw chunks"):
            m.select_aggregate(sel, 0, 1, ChunkKind.RAW)
        hour = ds.downsample_block(m, tmp_path, ds.RESOLUTION_1H, encode=enc, block_id="H")
        assert hour.resolution_ms == 3_600_000 and hour.parents == ("M",)
    with Block.open(tmp_path / "H", decode=dec) as h:
        for labels, (ts, vs) in data.items():
            want = ds.downsample(np.array(ts), np.array(vs), 3_600_000)
            sel = [Matcher.equal("__name__", labels[0][1])]
            (s,) = h.select_aggregate(sel, 0, 7_199_999, "sum")
            np.testing.assert_allclose(s.values, want.sum)
            (s,) = h.select_aggregate(sel, 0, 7_199_999, "max")
            np.testing.assert_array_equal(s.values, want.max)
            if labels[0][1] == "c":  # the counter aggregate only means something for counters
                (s,) = h.select_aggregate(sel, 0, 7_199_999, "counter")
                np.testing.assert_array_equal(s.timestamps, want.counter_timestamps)
                np.testing.assert_allclose(s.values, want.counter_values)
    with pytest.raises(ValueError, match="no count chunks"):
        raw.select_aggregate([], 0, 1, "count")
    with pytest.raises(ValueError, match="cannot downsample"):
        ds.downsample_block(raw, tmp_path, 0, encode=enc)
    raw.close()


# --- dump ----------------------------------------------------------------------------------------


def test_dump_describes_the_block_and_reports_bad_chunks(tmp_path: Path) -> None:
    write(tmp_path, {UP_A: ([1, 2], [1.0, 2.0]), UP_B: ([3], [3.0])}, "B").close()
    lines = list(blk.dump(tmp_path / "B"))
    text = "\n".join(lines)
    assert lines[0] == f"block {tmp_path / 'B'}" and '"numSeries": 2' in text
    for expected in (
        "symbol 5 'up'",
        'series 0 up{job="a"}',
        "chunk raw [1, 2] samples=2 ref=1:8",
        'postings job="b": 1 series: 2',
        "postings (all series): 2 series: 0 2",
        "segment 000001:",
        "chunks: 2 total, 0 failing",
    ):
        assert expected in text
    segment = tmp_path / "B" / "chunks" / "000001"
    data = bytearray(segment.read_bytes())
    data[14] ^= 1
    segment.write_bytes(data)
    text = "\n".join(blk.dump(tmp_path / "B"))
    assert "checksum mismatch" in text and "chunks: 2 total, 1 failing" in text
    index = tmp_path / "B" / "index"
    index.write_bytes(b"garbage" * 10)
    assert "error: block B: index" in "\n".join(blk.dump(tmp_path / "B"))
    shutil.rmtree(tmp_path / "B")
    assert list(blk.dump(tmp_path / "B"))[1].startswith("error:")
