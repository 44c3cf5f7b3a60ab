"""The index file of a persisted block: labels -> series -> chunks, the book's inverted index.

A query names series by label matchers; the index answers "which series have `job="api"`"
with one binary search and one contiguous postings list, then decodes only those series'
entries. Everything is read in place from an mmap: opening a block costs one CRC pass over
the file, not a load. All integers are little-endian; "uvarint" is LEB128 (7 bits a byte,
low bits first), "varint" is zigzag-mapped LEB128 ((n << 1) ^ (n >> 63)).

File layout:

    offset size  field
    0      4     magic b"SLTI"
    4      1     format version (1)
    5      3     zero
    8      ...   symbols section, series section, postings section, postings table section,
                 each starting at a multiple of 8 (zero padding before it)
    end-40 40    table of contents

Every section is framed the same way (8 bytes, then the payload, then zero padding to a
multiple of 8):

    0      4     payload length n (u32)
    4      4     CRC-32C of the n payload bytes
    8      n     payload

Symbols payload: every distinct label name and value, and "", sorted by their UTF-8 bytes. A
symbol's ref is its ordinal, so comparing refs compares strings and "" is always ref 0.

    0      4     symbol count s (u32)
    4      4s+4  u32 offsets[s + 1]: symbol i is strings[offsets[i]:offsets[i+1]]
    8+4s   ...   strings: the UTF-8 bytes of every symbol, back to back

Series payload: one entry per series, sorted by label set, each at a multiple of 8 within the
payload; a series' ref is (entry offset within the payload) / 8 (u32, so the section may
hold up to 32 GiB). An entry, then zero padding to the next multiple of 8:

    uvarint  label count l
    l times  uvarint name ref, uvarint value ref            (sorted by name)
    uvarint  chunk count c
    c times  a chunk meta, sorted by (kind, mint, maxt):
             1 byte   kind (0 raw, 1 count, 2 sum, 3 min, 4 max, 5 counter)
             varint   mint - previous chunk's maxt          (0 before the first chunk)
             uvarint  maxt - mint
             uvarint  samples in the chunk
             varint   chunk ref - previous chunk's ref      (0 before the first chunk)

A chunk ref is (segment number << 32) | (byte offset of the chunk record in that segment
file); segments.py owns the segment files and defines `ChunkMeta`.

Postings payload: lists back to back, each at a multiple of 4 (they are all u32):

    0      4     series count p (u32)
    4      4p    series refs (u32), ascending

Postings table payload: which list belongs to which (label name, value), sorted by key so a
lookup is one binary search and one label's values are one contiguous run:

    0      4     entry count m (u32)
    4      4     zero
    8      8m    keys (u64): (name ref << 32) | value ref, strictly ascending; key 0 (name "",
                 value "") is the list of every series
    8+8m   4m    list offsets (u32) within the postings payload, in units of 4 bytes

Table of contents (the last 40 bytes):

    0      8     symbols section offset (u64, of its framing)
    8      8     series section offset
    16     8     postings section offset
    24     8     postings table section offset
    32     4     CRC-32C of bytes 0..31
    36     4     zero

The header has no CRC: all 8 of its bytes have fixed values, so any damage shows; so must the
padding be zero, which makes every byte of the file checked on open.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import Labels, Matcher, MatchType, format_labels
from scalelab.monitoring.segments import ChunkKind as ChunkKind  # tsdb.py imports it from here
from scalelab.monitoring.segments import ChunkMeta, crc32c

MAGIC = b"SLTI"
VERSION = 1
HEADER = struct.Struct("<4sB3x")
SECTION = struct.Struct("<II")  # payload length, CRC-32C of the payload
_TOC_FIELDS = struct.Struct("<QQQQ")
TOC = struct.Struct("<QQQQI4x")
U32 = struct.Struct("<I")
TABLE_HEADER = struct.Struct("<I4x")
assert HEADER.size == 8 and SECTION.size == 8
assert _TOC_FIELDS.size == 32 and TOC.size == 40
assert U32.size == 4 and TABLE_HEADER.size == 8

SECTION_NAMES = ("symbols", "series", "postings", "postings table")
ALL_POSTINGS_KEY = 0
_U32 = np.dtype("<u4")
_U64 = np.dtype("<u8")
_MAX_U32 = (1 << 32) - 1

UInt32Array = npt.NDArray[np.uint32]
IntArray = npt.NDArray[np.int64]

_KIND_BY_CODE = {int(k): k for k in ChunkKind}


# --- encoding -------------------------------------------------------------------------------


def _put_uvarint(out: bytearray, x: int) -> None:
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _put_varint(out: bytearray, x: int) -> None:
    _put_uvarint(out, (x << 1) if x >= 0 else ((-x) << 1) - 1)


def _pad(out: bytearray, multiple: int) -> None:
    out.extend(bytes(-len(out) % multiple))


def encode_index(series: Sequence[tuple[Labels, Sequence[ChunkMeta]]]) -> bytes:
    """The index file for series already sorted by labels, each with its chunks sorted."""
    names: set[str] = {""}
    for labels, _ in series:
        for name, value in labels:
            names.add(name)
            names.add(value)
    symbols = sorted(names)
    refs = {s: i for i, s in enumerate(symbols)}
    encoded = [s.encode() for s in symbols]
    offsets = np.zeros(len(symbols) + 1, dtype=_U32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    symbols_payload = U32.pack(len(symbols)) + offsets.tobytes() + b"".join(encoded)

    entries = bytearray()
    lists: defaultdict[int, list[int]] = defaultdict(list)
    every: list[int] = []
    for labels, chunks in series:
        _pad(entries, 8)
        ref = len(entries) >> 3
        if ref > _MAX_U32:
            raise StorageError("series section exceeds 32 GiB")
        every.append(ref)
        _put_uvarint(entries, len(labels))
        for name, value in labels:
            name_ref, value_ref = refs[name], refs[value]
            _put_uvarint(entries, name_ref)
            _put_uvarint(entries, value_ref)
            lists[(name_ref << 32) | value_ref].append(ref)
        _put_uvarint(entries, len(chunks))
        prev_maxt = prev_ref = 0
        for c in chunks:
            entries.append(int(c.kind))
            _put_varint(entries, c.mint - prev_maxt)
            _put_uvarint(entries, c.maxt - c.mint)
            _put_uvarint(entries, c.samples)
            _put_varint(entries, c.ref - prev_ref)
            prev_maxt, prev_ref = c.maxt, c.ref

    keys = [ALL_POSTINGS_KEY, *sorted(lists)]
    postings = bytearray()
    list_offsets: list[int] = []
    for key in keys:
        members = every if key == ALL_POSTINGS_KEY else lists[key]
        list_offsets.append(len(postings) >> 2)
        postings += U32.pack(len(members))
        postings += np.asarray(members, dtype=_U32).tobytes()
    if len(postings) >> 2 > _MAX_U32:
        raise StorageError("postings section exceeds 16 GiB")
    table = (
        TABLE_HEADER.pack(len(keys))
        + np.asarray(keys, dtype=_U64).tobytes()
        + np.asarray(list_offsets, dtype=_U32).tobytes()
    )

    out = bytearray(HEADER.pack(MAGIC, VERSION))
    starts: list[int] = []
    for payload in (symbols_payload, entries, postings, table):
        _pad(out, 8)
        starts.append(len(out))
        if len(payload) > _MAX_U32:
            raise StorageError("index section exceeds 4 GiB")
        out += SECTION.pack(len(payload), crc32c(payload))
        out += payload
    _pad(out, 8)
    fields = _TOC_FIELDS.pack(*starts)
    out += TOC.pack(*starts, crc32c(fields))
    return bytes(out)


# --- decoding -------------------------------------------------------------------------------


def _uvarint(buf: memoryview, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    x, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = buf[pos]
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _uvarints(buf: memoryview, pos: int, count: int) -> tuple[list[int], int]:
    """count uvarints in one loop: series entries are decoded by the thousand per query."""
    out = []
    for _ in range(count):
        b = buf[pos]
        pos += 1
        if b < 0x80:
            out.append(b)
            continue
        x, shift = b & 0x7F, 7
        while True:
            b = buf[pos]
            pos += 1
            x |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("varint longer than 64 bits")
        out.append(x)
    return out, pos


_LITERAL = re.compile(r"[\w\-:/@ ]*\Z")


def _literal_prefix(pattern: str) -> str:
    """Literal characters every match of the anchored regex starts with ("" if unsure)."""
    if "|" in pattern:
        return ""
    n = 0
    while n < len(pattern) and _LITERAL.match(pattern[n]):
        n += 1
    if n < len(pattern) and pattern[n] in "*?{":
        n -= 1  # the last literal is optional or repeated
    return pattern[:n]


def _literal_alternatives(pattern: str) -> list[str] | None:
    """The strings a regex like `a|b|c` matches, so it is answered by lookups, not a scan."""
    parts = pattern.split("|")
    return parts if all(_LITERAL.match(p) for p in parts) else None


class IndexReader:
    """An index file, mmapped and verified (header, table of contents, every section's CRC)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < HEADER.size + TOC.size:
                raise self._error(f"index is {size} bytes, too short")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._mm)
        try:
            self._sections = self._verify(size)
            self._load()
        except BaseException:
            self.close()
            raise
        self._symbol_cache: dict[int, str] = {}
        self._pair_cache: dict[int, tuple[str, str]] = {}

    def _error(self, message: str) -> StorageError:
        return StorageError(f"block {self.name}: index {self.path}: {message}")

    def _verify(self, size: int) -> list[tuple[int, int]]:
        """(payload offset, payload length) of each section, once every check passed."""
        magic, version = HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC or self._mm[5:8] != b"\0\0\0":
            raise self._error(f"bad magic {bytes(magic)!r}")
        if version != VERSION:
            raise self._error(f"unsupported index version {version}")
        toc_at = size - TOC.size
        *starts, toc_crc = TOC.unpack_from(self._mm, toc_at)
        if toc_crc != crc32c(self._view[toc_at : toc_at + _TOC_FIELDS.size]):
            raise self._error("table of contents checksum mismatch")
        sections: list[tuple[int, int]] = []
        end = HEADER.size
        for section, start in zip(SECTION_NAMES, starts, strict=True):
            if start % 8 or start < end or start + SECTION.size > toc_at:
                raise self._error(f"{section} section offset {start} out of place")
            if any(self._view[end:start]):
                raise self._error(f"padding before the {section} section is not zero")
            length, crc = SECTION.unpack_from(self._mm, start)
            payload = start + SECTION.size
            end = payload + length
            if end > toc_at:
                raise self._error(f"{section} section runs past the table of contents")
            if crc32c(self._view[payload:end]) != crc:
                raise self._error(f"{section} section checksum mismatch")
            sections.append((payload, length))
        if toc_at - end >= 8 or any(self._view[end:toc_at]) or any(self._mm[toc_at + 36 : size]):
            raise self._error("bytes before or in the table of contents are not zero")
        return sections

    def _load(self) -> None:
        """Numpy views of the fixed-width parts; nothing is copied."""
        (sym_at, sym_len), (ser_at, ser_len), (post_at, post_len), (tab_at, tab_len) = (
            self._sections
        )
        (count,) = U32.unpack_from(self._mm, sym_at)
        if 4 + 4 * (count + 1) > sym_len:
            raise self._error("symbol table truncated")
        self._sym_off = np.frombuffer(self._mm, dtype=_U32, count=count + 1, offset=sym_at + 4)
        self._sym_base = sym_at + 4 + 4 * (count + 1)
        if np.any(np.diff(self._sym_off.astype(np.int64)) < 0) or (
            self._sym_base + int(self._sym_off[-1]) != sym_at + sym_len
        ):
            raise self._error("symbol offsets out of order")
        self.symbol_count = count
        self._series = self._view[ser_at : ser_at + ser_len]
        self._postings = np.frombuffer(self._mm, dtype=_U32, count=post_len // 4, offset=post_at)
        (m,) = TABLE_HEADER.unpack_from(self._mm, tab_at)
        if 8 + 12 * m > tab_len or m == 0:
            raise self._error("postings table truncated")
        self._keys = np.frombuffer(self._mm, dtype=_U64, count=m, offset=tab_at + 8)
        self._list_at = np.frombuffer(self._mm, dtype=_U32, count=m, offset=tab_at + 8 + 8 * m)
        if int(self._keys[0]) != ALL_POSTINGS_KEY or np.any(np.diff(self._keys) <= 0):
            raise self._error("postings table keys out of order")
        if np.any(self._list_at >= self._postings.size):
            raise self._error("postings table points past the postings section")

    def close(self) -> None:
        """Drop every view of the mmap first: an mmap with live exports cannot close."""
        for attr in ("_series", "_sym_off", "_postings", "_keys", "_list_at"):
            self.__dict__.pop(attr, None)
        self._view.release()
        self._mm.close()

    # symbols

    def _symbol_bytes(self, ref: int) -> bytes:
        a, b = int(self._sym_off[ref]), int(self._sym_off[ref + 1])
        return self._mm[self._sym_base + a : self._sym_base + b]

    def symbol(self, ref: int) -> str:
        s = self._symbol_cache.get(ref)
        if s is None:
            if not 0 <= ref < self.symbol_count:
                raise self._error(f"symbol ref {ref} out of range")
            try:
                s = self._symbol_bytes(ref).decode()
            except UnicodeDecodeError as exc:
                raise self._error(f"symbol {ref} is not UTF-8: {exc}") from None
            self._symbol_cache[ref] = s
        return s

    def symbol_ref(self, s: str) -> int | None:
        """Binary search of the sorted symbol table."""
        target = s.encode()
        lo, hi = 0, self.symbol_count
        while lo < hi:
            mid = (lo + hi) // 2
            if self._symbol_bytes(mid) < target:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < self.symbol_count and self._symbol_bytes(lo) == target else None

    def symbols(self) -> Iterator[str]:
        return (self.symbol(i) for i in range(self.symbol_count))

    # postings

    def _list(self, i: int) -> UInt32Array:
        at = int(self._list_at[i])
        n = int(self._postings[at])
        if at + 1 + n > self._postings.size:
            raise self._error(f"postings list {i} runs past its section")
        return self._postings[at + 1 : at + 1 + n]

    def _gather(self, lists: IntArray) -> UInt32Array:
        """The union of several postings lists, sorted and unique, in a few numpy calls."""
        if lists.size == 0:
            return np.empty(0, dtype=np.uint32)
        if lists.size == 1:
            return self._list(int(lists[0])).copy()
        starts = self._list_at[lists].astype(np.int64)
        counts = self._postings[starts].astype(np.int64)
        total = int(counts.sum())
        if int((starts + 1 + counts).max()) > self._postings.size:
            raise self._error("a postings list runs past its section")
        before = np.cumsum(counts) - counts
        idx = np.repeat(starts + 1 - before, counts) + np.arange(total, dtype=np.int64)
        refs: UInt32Array = np.unique(self._postings[idx])
        return refs

    def _key_index(self, name_ref: int, value_ref: int) -> int | None:
        key = np.uint64((name_ref << 32) | value_ref)
        i = int(np.searchsorted(self._keys, key))
        return i if i < self._keys.size and self._keys[i] == key else None

    def _name_range(self, name: str) -> tuple[int, int]:
        """The run of postings-table entries for one label name (empty if it is absent)."""
        name_ref = self.symbol_ref(name) if name else None
        if name_ref is None:
            return 0, 0
        lo = int(np.searchsorted(self._keys, np.uint64(name_ref << 32)))
        hi = int(np.searchsorted(self._keys, np.uint64((name_ref + 1) << 32)))
        return lo, hi

    def _value_of(self, i: int) -> str:
        return self.symbol(int(self._keys[i]) & _MAX_U32)

    def all_postings(self) -> UInt32Array:
        return self._list(0).copy()

    def postings(self, name: str, value: str) -> UInt32Array:
        name_ref, value_ref = self.symbol_ref(name), self.symbol_ref(value)
        if not name or name_ref is None or value_ref is None:
            return np.empty(0, dtype=np.uint32)
        i = self._key_index(name_ref, value_ref)
        return np.empty(0, dtype=np.uint32) if i is None else self._list(i).copy()

    def _lists_where(self, m: Matcher, want: bool) -> IntArray:
        """Postings-table entries of m's label whose value satisfies m (want) or fails it."""
        lo, hi = self._name_range(m.name)
        if lo == hi:
            return np.empty(0, dtype=np.int64)
        literals: list[str] | None = None
        positive = m.type in (MatchType.EQUAL, MatchType.REGEX)
        if m.type in (MatchType.EQUAL, MatchType.NOT_EQUAL):
            literals = [m.value]
        else:
            literals = _literal_alternatives(m.value)
        if literals is not None:  # lookups instead of a scan of every value
            name_ref = int(self._keys[lo]) >> 32
            hits = set()
            for lit in literals:
                ref = self.symbol_ref(lit) if lit else None
                i = None if ref is None else self._key_index(name_ref, ref)
                if i is not None:
                    hits.add(i)
            found = np.fromiter(sorted(hits), dtype=np.int64, count=len(hits))
            if positive == want:
                return found
            keep = np.ones(hi - lo, dtype=bool)
            keep[found - lo] = False
            return np.flatnonzero(keep) + lo
        plo, phi = lo, hi
        if prefix := _literal_prefix(m.value):  # only values with the prefix can match
            plo, phi = self._prefix_range(lo, hi, prefix.encode())
        sel = np.asarray(
            [i for i in range(plo, phi) if m.matches(self._value_of(i)) == want], dtype=np.int64
        )
        if (m.type is MatchType.NOT_REGEX) != want:
            return sel
        outside = (np.arange(lo, plo, dtype=np.int64), np.arange(phi, hi, dtype=np.int64))
        return np.sort(np.concatenate((outside[0], sel, outside[1])))

    def _prefix_range(self, lo: int, hi: int, prefix: bytes) -> tuple[int, int]:
        """The entries in [lo, hi) whose value starts with prefix (values sort by bytes)."""

        def first(pred: Callable[[bytes], bool], a: int, b: int) -> int:
            while a < b:
                mid = (a + b) // 2
                if pred(self._symbol_bytes(int(self._keys[mid]) & _MAX_U32)):
                    b = mid
                else:
                    a = mid + 1
            return a

        start = first(lambda v: v >= prefix, lo, hi)
        return start, first(lambda v: v[: len(prefix)] > prefix, start, hi)

    def postings_for_matchers(self, matchers: Sequence[Matcher]) -> UInt32Array:
        """Refs of the series matching every matcher; a matcher that matches "" also matches
        series without its label (Prometheus's rule), so it removes instead of selects."""
        include: list[UInt32Array] = []
        exclude: list[UInt32Array] = []
        for m in matchers:
            if m.matches_empty():
                drop = self._gather(self._lists_where(m, want=False))
                if drop.size:
                    exclude.append(drop)
            else:
                keep = self._gather(self._lists_where(m, want=True))
                if keep.size == 0:
                    return keep
                include.append(keep)
        if not include:
            result = self.all_postings()
        else:
            include.sort(key=len)
            result = include[0]
            for other in include[1:]:
                result = np.intersect1d(result, other, assume_unique=True)
        for drop in exclude:
            if result.size == 0:
                break
            result = np.setdiff1d(result, drop, assume_unique=True)
        return result.astype(np.uint32, copy=False)

    def label_names(self) -> list[str]:
        name_refs = np.unique(self._keys >> np.uint64(32))
        return [self.symbol(int(r)) for r in name_refs if r != 0]

    def label_values(self, name: str) -> list[str]:
        lo, hi = self._name_range(name)
        return [self._value_of(i) for i in range(lo, hi)]

    def postings_entries(self) -> Iterator[tuple[str, str, UInt32Array]]:
        """Every (name, value, series refs) in table order; the first is ("", "", all)."""
        for i in range(self._keys.size):
            key = int(self._keys[i])
            yield self.symbol(key >> 32), self.symbol(key & _MAX_U32), self._list(i).copy()

    # series

    def _pair(self, name_ref: int, value_ref: int) -> tuple[str, str]:
        key = (name_ref << 32) | value_ref
        pair = self._pair_cache.get(key)
        if pair is None:
            pair = self._pair_cache[key] = (self.symbol(name_ref), self.symbol(value_ref))
        return pair

    def series(self, ref: int) -> tuple[Labels, list[ChunkMeta]]:
        """Decode one series entry: its labels and chunk metas."""
        try:
            n, pos = _uvarint(self._series, ref << 3)
            refs, pos = _uvarints(self._series, pos, 2 * n)
            pair = self._pair
            labels = tuple([pair(refs[i], refs[i + 1]) for i in range(0, 2 * n, 2)])
            n, pos = _uvarint(self._series, pos)
            chunks = []
            maxt = chunk_ref = 0
            for _ in range(n):
                kind = _KIND_BY_CODE[self._series[pos]]
                (delta, span, samples, ref_delta), pos = _uvarints(self._series, pos + 1, 4)
                mint = maxt + ((delta >> 1) ^ -(delta & 1))
                maxt = mint + span
                chunk_ref += (ref_delta >> 1) ^ -(ref_delta & 1)
                chunks.append(ChunkMeta(kind, mint, maxt, samples, chunk_ref))
        except (IndexError, KeyError, ValueError) as exc:
            raise self._error(f"series {ref} is malformed ({exc!r})") from None
        return labels, chunks

    def section_info(self) -> list[tuple[str, int, int]]:
        """(name, payload offset, payload length) of each section, for dump."""
        return [(n, a, b) for n, (a, b) in zip(SECTION_NAMES, self._sections, strict=True)]


def dump_index(reader: IndexReader) -> Iterator[str]:
    """Symbols, series with their chunk metas, and postings, one line each."""
    yield f"index {reader.path}: {len(reader._mm)} bytes"
    for name, at, length in reader.section_info():
        yield f"  section {name}: payload at {at}, {length} bytes, crc ok"
    for i, s in enumerate(reader.symbols()):
        yield f"symbol {i} {s!r}"
    for ref in reader.all_postings().tolist():
        labels, chunks = reader.series(ref)
        yield f"series {ref} {format_labels(labels)}"
        for c in chunks:
            yield (
                f"  chunk {c.kind.name.lower()} [{c.mint}, {c.maxt}] samples={c.samples} "
                f"ref={c.segment}:{c.offset}"
            )
    for name, value, refs in reader.postings_entries():
        label = "(all series)" if not name else str(Matcher.equal(name, value))
        yield f"postings {label}: {refs.size} series: {' '.join(map(str, refs.tolist()))}"
