"""Gorilla compression of one series' samples: the head cuts a chunk every ~120 samples.

Timestamps are stored as delta-of-delta codes and values as the XOR of consecutive float64
bit patterns with a leading/trailing-zero window, as in the book, the Gorilla paper and
Prometheus's XOR chunk. Our delta-of-delta buckets differ from Prometheus's (14/17/20 bits):
scrape timestamps carry a few ms of jitter, so most deltas-of-deltas are small but not zero,
and narrow buckets make those cost ~6 bits instead of ~16 (measured in tests/monitoring/
test_chunk.py against Prometheus's buckets on the same data). Values round-trip bit for bit:
NaN payloads (the staleness marker among them), -0.0 and infinities. Timestamps may be any
int64 that do not decrease: the head appends strictly increasing ones, and downsampled counter
chunks (downsample.py) repeat their last timestamp.

A chunk is self-delimiting (it holds its sample count), so block files store it opaquely next
to a checksum of their own. Format (integers big-endian unless said otherwise):

    offset size  field
    0      2     u16: encoding in the top 4 bits (1 = this XOR encoding, version 1),
                 sample count n in the low 12 bits (so a chunk holds at most 4095 samples)
    2      var   (n >= 1) t0, the first timestamp: zigzag varint (LEB128, 1..10 bytes)
           var   (n >= 2) t1 - t0 (mod 2**64): unsigned varint (LEB128, 1..10 bytes)
           bits  a bit stream, most significant bit first, zero-padded to a whole byte:
                 (n >= 3) n-2 delta-of-delta codes, for t2 .. t(n-1)
                 (n >= 1) 64 bits: v0's IEEE-754 bit pattern
                 (n >= 2) n-1 XOR codes, for v1 .. v(n-1)

Delta-of-delta code, dod = (t_i - t_(i-1)) - (t_(i-1) - t_(i-2)) modulo 2**64; payloads are
two's complement:

    "0"                      dod == 0
    "10"    + 4 bits         -8 <= dod < 8
    "110"   + 6 bits         -32 <= dod < 32
    "1110"  + 8 bits         -128 <= dod < 128
    "11110" + 17 bits        -65536 <= dod < 65536  (missed scrapes)
    "11111" + 64 bits        anything else

XOR code, x = bits(v_i) ^ bits(v_(i-1)); the window (leading zeros L, width W) is the one
the last "11" code opened, trailing zeros T = 64 - L - W:

    "0"                            x == 0 (same value)
    "10" + W bits                  x >> T, when x fits the window
    "11" + 5 bits L + 6 bits W + W bits    a new window: L = leading zeros capped at 31,
                                   W = significant bits (64 written as 0), then x >> T

The encoder opens a new window also when the current one fits but is more than 11 bits wider
than needed (Prometheus never does): on the data we measured that saves ~1-2%.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from scalelab.monitoring.errors import StorageError
from scalelab.monitoring.model import TimestampArray, ValueArray

ENCODING_XOR = 0x1
MAX_SAMPLES = 120  # the head cuts a chunk at this many samples (Prometheus's target too)
MAX_ENCODABLE = 0xFFF  # what the 12-bit count can hold

HEADER = struct.Struct(">H")  # as big as Prometheus's bare count: we pay no byte for the tag
assert HEADER.size == 2

_M64 = (1 << 64) - 1
# delta-of-delta buckets after "0": (prefix, prefix length, payload bits); the last is raw.
_DOD_BUCKETS = ((0b10, 2, 4), (0b110, 3, 6), (0b1110, 4, 8), (0b11110, 5, 17), (0b11111, 5, 64))
_W1, _W2, _W3, _W4 = (b for _, _, b in _DOD_BUCKETS[:4])
_H1, _H2, _H3, _H4 = (1 << (w - 1) for w in (_W1, _W2, _W3, _W4))
_P1, _P2, _P3, _P4, _P5 = (p << b for p, _, b in _DOD_BUCKETS)
_WINDOW_SLACK = 11  # a new window's header costs 11 bits more than reusing the old one
_PAD = 8  # zero bytes appended while decoding, so a 64-bit peek never runs off the end


class CorruptChunk(StorageError):
    """Bytes that are not a chunk this module wrote (truncated, garbled, unknown encoding)."""


def _uvarint(x: int, out: bytearray) -> None:
    while x >= 0x80:
        out.append((x & 0x7F) | 0x80)
        x >>= 7
    out.append(x)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptChunk("chunk header: varint runs off the end")
        b = data[pos]
        pos += 1
        x |= (b & 0x7F) << shift
        if b < 0x80:
            return x, pos
        shift += 7


def _check(timestamps: TimestampArray, values: ValueArray) -> tuple[TimestampArray, ValueArray]:
    ts = np.asarray(timestamps)
    vs = np.asarray(values)
    if ts.ndim != 1 or ts.dtype.kind not in "iu" or vs.ndim != 1:
        raise ValueError("timestamps must be a 1-d integer array, values a 1-d array")
    if ts.dtype == np.uint64 and len(ts) and int(ts.max()) >= 1 << 63:
        raise ValueError("timestamps must fit in int64")
    ts = ts.astype(np.int64, copy=False)
    vs = vs.astype(np.float64, copy=False)
    if len(ts) != len(vs):
        raise ValueError(f"{len(ts)} timestamps but {len(vs)} values")
    if len(ts) > MAX_ENCODABLE:
        raise ValueError(f"a chunk holds at most {MAX_ENCODABLE} samples, got {len(ts)}")
    # Equal neighbours are allowed: a downsampled counter chunk repeats its last timestamp to
    # carry the raw value (downsample.py); the head itself only ever appends increasing times.
    if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
        raise ValueError("timestamps must not decrease")
    return ts, vs


def encode(timestamps: TimestampArray, values: ValueArray) -> bytes:
    """Compress samples (timestamps non-decreasing) into one self-delimiting chunk."""
    ts, vs = _check(timestamps, values)
    n = len(ts)
    out = bytearray(HEADER.pack(ENCODING_XOR << 12 | n))
    if n == 0:
        return bytes(out)
    t0 = int(ts[0])
    _uvarint(((t0 << 1) ^ (t0 >> 63)) & _M64, out)
    acc = nbits = 0
    if n >= 2:
        deltas = np.diff(ts)  # int64 arithmetic wraps; the decoder wraps the same way
        _uvarint(int(deltas[0]) & _M64, out)
        if n >= 3:
            dods = np.diff(deltas)
            if dods.any():
                acc, nbits = _encode_dods(dods.tolist())
            else:  # perfectly regular timestamps: one "0" bit each
                nbits = n - 2
    bits = vs.view(np.uint64)
    acc = (acc << 64) | int(bits[0])
    nbits += 64
    if n >= 2:
        xors = bits[1:] ^ bits[:-1]
        if xors.any():
            acc, nbits = _encode_xors(xors.tolist(), acc, nbits)
        else:  # a constant series: one "0" bit each
            acc <<= n - 1
            nbits += n - 1
    pad = -nbits % 8
    out += (acc << pad).to_bytes((nbits + pad) // 8, "big")
    return bytes(out)


def _encode_dods(dods: list[int]) -> tuple[int, int]:
    acc = nbits = 0
    for d in dods:
        if d == 0:
            acc <<= 1
            nbits += 1
        elif -_H1 <= d < _H1:
            acc = (acc << 6) | _P1 | (d & 0xF)
            nbits += 6
        elif -_H2 <= d < _H2:
            acc = (acc << 9) | _P2 | (d & 0x3F)
            nbits += 9
        elif -_H3 <= d < _H3:
            acc = (acc << 12) | _P3 | (d & 0xFF)
            nbits += 12
        elif -_H4 <= d < _H4:
            acc = (acc << 22) | _P4 | (d & 0x1FFFF)
            nbits += 22
        else:
            acc = (acc << 69) | _P5 | (d & _M64)
            nbits += 69
    return acc, nbits


def _encode_xors(xors: list[int], acc: int, nbits: int) -> tuple[int, int]:
    lead, trail, width = 99, 99, 0  # no window yet: the first non-zero XOR opens one
    for x in xors:
        if not x:
            acc <<= 1
            nbits += 1
            continue
        size = x.bit_length()  # 64 - leading zeros
        tz = (x & -x).bit_length() - 1
        need = size - tz if size > 32 else 33 - tz  # a new window's width (leading capped at 31)
        if 64 - size >= lead and tz >= trail and width <= need + _WINDOW_SLACK:
            acc = (acc << (2 + width)) | (0b10 << width) | (x >> trail)
            nbits += 2 + width
        else:
            lead, trail, width = 64 - tz - need, tz, need
            acc = (acc << (13 + need)) | (((0x1800 | (lead << 6) | (need & 63)) << need) | x >> tz)
            nbits += 13 + need
    return acc, nbits


def num_samples(data: bytes) -> int:
    """The sample count from a chunk's header, without decoding it."""
    if len(data) < HEADER.size or data[0] >> 4 != ENCODING_XOR:
        raise CorruptChunk(f"not an XOR chunk ({bytes(data[:2]).hex()})")
    return int(HEADER.unpack_from(data)[0]) & MAX_ENCODABLE


def _header(data: bytes) -> tuple[int, int, int, int]:
    """(n, t0, first delta, offset of the bit stream)."""
    n = num_samples(data)
    pos, t0, d1 = HEADER.size, 0, 0
    if n >= 1:
        z, pos = _read_uvarint(data, pos)
        t0 = (z >> 1) ^ -(z & 1)
    if n >= 2:
        d1, pos = _read_uvarint(data, pos)
        d1 = d1 - (1 << 64) if d1 >= 1 << 63 else d1
    if not -(1 << 63) <= t0 < 1 << 63:
        raise CorruptChunk("chunk header: first timestamp out of range")
    return n, t0, d1, pos


def decode(data: bytes) -> tuple[TimestampArray, ValueArray]:
    """The samples of a chunk as (int64 timestamps, float64 values); CorruptChunk if damaged."""
    n, t0, d1, start = _header(data)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    stream = bytes(data[start:]) + bytes(_PAD)
    big = int.from_bytes(stream, "big")
    end = len(stream) * 8  # bit positions count from the stream's start
    try:
        dods, pos = _decode_dods(big, end, n - 2) if n >= 3 else ([], 0)
        first = (big >> (end - pos - 64)) & _M64
        xors, pos = _decode_xors(big, end, pos + 64, first, n - 1)
    except ValueError:  # a negative shift: the codes ran past the padding
        raise CorruptChunk(f"chunk of {n} samples is truncated") from None
    if pos > end - _PAD * 8:
        raise CorruptChunk(f"chunk of {n} samples is truncated")
    ts = np.empty(n, np.int64)
    ts[0] = t0
    if n >= 2:
        deltas = np.full(n - 1, d1, np.int64)
        if n >= 3:
            deltas[1:] += np.cumsum(np.array(dods, np.int64))  # wraps like the encoder did
        ts[1:] = np.cumsum(deltas)
        ts[1:] += ts[0]
    vs = np.bitwise_xor.accumulate(np.array(xors, np.uint64)).view(np.float64)
    return ts, vs


class DecodedCache:
    """Decoded chunks, least recently used dropped beyond `max_samples`: a dashboard asks for
    the same hours again and again, and decoding (pure Python bit work, ~1 us a sample) is
    most of a query's time. Keyed by the chunk's bytes (their hash is cached by the bytes
    object), so head and block chunks share it and a changed chunk can never hit. The arrays
    handed out are read-only: one caller cannot change another's samples."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples = max_samples
        self._entries: OrderedDict[bytes, tuple[TimestampArray, ValueArray]] = OrderedDict()
        self._samples = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def decode(self, data: bytes) -> tuple[TimestampArray, ValueArray]:
        if self.max_samples <= 0:
            return decode(data)
        with self._lock:
            found = self._entries.get(data)
            if found is not None:
                self._entries.move_to_end(data)
                self.hits += 1
                return found
        entry = decode(data)
        for array in entry:
            array.flags.writeable = False
        with self._lock:
            self.misses += 1
            if data not in self._entries:
                self._entries[data] = entry
                self._samples += len(entry[0])
                while self._samples > self.max_samples and self._entries:
                    _, (old, _v) = self._entries.popitem(last=False)
                    self._samples -= len(old)
        return entry


DECODED = DecodedCache(4_000_000)  # ~64 MB of arrays; the server sizes it from its settings


def decode_cached(data: bytes) -> tuple[TimestampArray, ValueArray]:
    """`decode` through the process-wide `DECODED` cache: the query path's reader."""
    return DECODED.decode(data)


def _small_codes() -> tuple[list[int], list[int]]:
    """For every 12-bit pattern that starts with a whole code of at most 12 bits (the three
    narrow buckets), its length and dod; length 0 marks the wide buckets."""
    lengths, dods = [0] * 4096, [0] * 4096
    for prefix, plen, width in _DOD_BUCKETS[:3]:
        for payload in range(1 << width):
            code = (prefix << width) | payload
            size = plen + width
            value = payload - (1 << width) if payload >> (width - 1) else payload
            for rest in range(1 << (12 - size)):
                lengths[(code << (12 - size)) | rest] = size
                dods[(code << (12 - size)) | rest] = value
    return lengths, dods


_SMALL_LEN, _SMALL_DOD = _small_codes()
_TOP_BIT = 1 << 63
_REUSE = 0b11 << 62  # a peek at or above this starts with "11"


def _decode_dods(big: int, end: int, count: int) -> tuple[list[int], int]:
    """Each step peeks at the next 64 bits, which hold any code but the raw one whole."""
    dods = [0] * count
    pos = i = 0
    small_len, small_dod = _SMALL_LEN, _SMALL_DOD
    while i < count:
        peek = (big >> (end - pos - 64)) & _M64
        if peek < _TOP_BIT:  # a run of "0" codes: every zero bit is one dod == 0
            run = 64 - peek.bit_length()
            i += run
            pos += run
            continue
        size = small_len[peek >> 52]
        if size:
            dods[i] = small_dod[peek >> 52]
            pos += size
        elif peek >> 59 == 0b11110:  # "11110" + 17 bits
            d = (peek >> 42) & 0x1FFFF
            dods[i] = d - 0x20000 if d >> 16 else d
            pos += 22
        else:  # "11111" + 64 bits
            d = (big >> (end - pos - 69)) & _M64
            dods[i] = d - (1 << 64) if d >> 63 else d
            pos += 69
        i += 1
    return dods, pos - (i - count)  # a final zero run may overshoot count


def _decode_xors(big: int, end: int, pos: int, first: int, count: int) -> tuple[list[int], int]:
    xors = [0] * (count + 1)
    xors[0] = first
    i, trail, width, mask = 1, 0, 0, 0
    last = count + 1
    while i < last:
        peek = (big >> (end - pos - 64)) & _M64
        if peek < _TOP_BIT:  # a run of "0" codes: repeated values
            run = 64 - peek.bit_length()
            i += run
            pos += run
            continue
        if peek < _REUSE:  # "10": reuse the window
            if width == 0:
                raise CorruptChunk("XOR code reuses a window before one was opened")
            if width <= 62:
                xors[i] = ((peek >> (62 - width)) & mask) << trail
            else:
                xors[i] = ((big >> (end - pos - 2 - width)) & mask) << trail
            pos += 2 + width
        else:  # "11": a new window
            width = ((peek >> 51) & 63) or 64
            trail = 64 - ((peek >> 57) & 31) - width
            if trail < 0:
                raise CorruptChunk("XOR window wider than 64 bits")
            mask = (1 << width) - 1
            if width <= 51:
                xors[i] = ((peek >> (51 - width)) & mask) << trail
            else:
                xors[i] = ((big >> (end - pos - 13 - width)) & mask) << trail
            pos += 13 + width
        i += 1
    return xors, pos - (i - last)


def dump(data: bytes) -> Iterator[str]:
    """Describe a chunk: its header, then one line per sample with its delta-of-delta and XOR."""
    n, t0, d1, start = _header(data)
    yield f"chunk encoding={data[0] >> 4} samples={n} bytes={len(data)} stream_offset={start}"
    ts, vs = decode(data)
    times = ts.tolist()
    bits = vs.view(np.uint64).tolist()
    for i, (t, v) in enumerate(zip(times, vs.tolist(), strict=True)):
        if i == 0:
            how = f"t0={t0}"
        elif i == 1:
            how = f"delta={d1}"
        else:
            how = f"dod={(t - times[i - 1]) - (times[i - 1] - times[i - 2])}"
        x = bits[i] ^ bits[i - 1] if i else bits[0]
        yield f"{i:5d} t={t} {how} v={v!r} bits={bits[i]:016x} xor={x:016x}"
