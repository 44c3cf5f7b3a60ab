"""Gorilla chunks: exact round trips, the pinned format, and size against Prometheus's encoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.monitoring import chunk
from scalelab.monitoring.model import STALE_NAN

I64 = np.iinfo(np.int64)
INTERVAL = 15_000


def bits(values: np.ndarray) -> list[int]:
    return np.asarray(values, np.float64).view(np.uint64).tolist()  # type: ignore[no-any-return]


def roundtrip(ts: list[int] | np.ndarray, vs: list[float] | np.ndarray) -> bytes:
    t = np.asarray(ts, np.int64)
    v = np.asarray(vs, np.float64)
    data = chunk.encode(t, v)
    t2, v2 = chunk.decode(data)
    assert t2.dtype == np.int64 and v2.dtype == np.float64
    assert t2.tolist() == t.tolist()
    assert bits(v2) == bits(v)
    assert chunk.num_samples(data) == len(t)
    return data


any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(0, 2**64 - 1).map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
    st.sampled_from([STALE_NAN, -0.0, 0.0, float("inf"), float("-inf"), 5e-324]),
)


@st.composite
def samples(draw: st.DrawFn, max_size: int = 300) -> tuple[list[int], list[float]]:
    ts = sorted(draw(st.lists(st.integers(int(I64.min), int(I64.max)), max_size=max_size)))
    vs = draw(st.lists(any_float, min_size=len(ts), max_size=len(ts)))
    return ts, vs


@st.composite
def scrapes(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    """Regular timestamps with jitter and gaps, values that repeat, count up or wander."""
    n = draw(st.integers(0, 150))
    t = draw(st.integers(-(10**13), 10**13))
    ts: list[int] = []
    for _ in range(n):
        ts.append(t)
        t += draw(st.sampled_from([INTERVAL, INTERVAL, 2 * INTERVAL, 1, 10**9]))
        t += draw(st.integers(-5, 5)) if ts[-1] < t - 5 else 0
    v = draw(st.floats(-1e9, 1e9))
    vs: list[float] = []
    for _ in range(n):
        vs.append(v)
        v = draw(st.sampled_from([v, v + 1, v * 1.0001, -v, STALE_NAN, round(v, 1) + 0.1]))
    return ts, vs


@given(samples())
def test_any_samples_round_trip(data: tuple[list[int], list[float]]) -> None:
    roundtrip(*data)


@settings(max_examples=50)  # each example draws a few hundred values
@given(scrapes())
def test_scrape_shaped_samples_round_trip(data: tuple[list[int], list[float]]) -> None:
    roundtrip(*data)


def test_extremes_round_trip() -> None:
    lo, hi = int(I64.min), int(I64.max)
    for ts in ([lo, hi], [lo, 0, hi], [lo, lo + 1, hi - 1, hi], [hi], [lo], [0, 1, 2], []):
        vs = [STALE_NAN, -0.0, float("-inf"), float("nan")][: len(ts)]
        roundtrip(ts, vs)
    n = chunk.MAX_ENCODABLE
    roundtrip(np.arange(n, dtype=np.int64) * 7, np.arange(n, dtype=np.float64))


def test_every_code_kind_round_trips() -> None:
    # dods of 0, +-7, +-31, +-127, +-65535, a huge jump; values equal, in window, new window
    ts = [0, 15000, 30000, 45007, 60000, 75031, 90000, 105127, 120000, 185535, 200000, 10**15]
    vs = [1.0, 1.0, 2.0, 3.0, 3.5, -3.5, 1e300, 1e-300, STALE_NAN, 0.0, -0.0, 7.0]
    roundtrip(ts, vs)


def test_golden_bytes_small() -> None:
    data = chunk.encode(np.array([1, 2, 3], np.int64), np.array([1.0, 1.0, 1.0]))
    # 1003 (encoding 1, 3 samples) | zigzag(1) = 02 | delta 01 |
    # bits: "0" (dod 0), 3ff0000000000000 (v0), "0", "0" (same values), padding
    assert data.hex() == "100302011ff800000000000000"


def test_golden_bytes_every_code() -> None:
    ts = [1_700_000_000_000 + i * INTERVAL for i in range(6)]
    ts[2] += 3  # dod +3, then -6 ("10" bucket)
    ts[4] += 40  # dod +40 -> "1110", then -80 -> "1110"
    vs = [0.0, 1.0, 1.0, 2.0, STALE_NAN, 3.0]
    data = roundtrip(ts, vs)
    assert data.hex() == (
        "1006"  # encoding 1 (top 4 bits), 6 samples
        "80a0abfef962"  # t0 = 1700000000000 as a zigzag varint
        "9875"  # t1 - t0 = 15000 as a varint; then the bit stream, MSB first:
        "8eae2beb0"  # dods 3, -6 ("10" + 4 bits), 43, -80 ("1110" + 8 bits): 36 bits
        "0000000000000000"  # v0 = 0.0, 64 raw bits
        "c457f"  # v1: "11", L=2, W=10, 10 bits: a new window
        "ec25ff"  # (its last 3 bits) v2: "0" (same value), v3: "11" L=1 W=11 (new window)
        "fc5effe0000000000006"  # v4 (the stale marker): "11" L=2 W=61, a new window
        "ffe0000000000008"  # v5: "10" + 61 bits in v4's window, padded with zeros
    )


def test_dump_describes_every_sample() -> None:
    data = chunk.encode(np.array([10, 20, 31]), np.array([1.0, 2.0, STALE_NAN]))
    lines = list(chunk.dump(data))
    assert lines[0].startswith("chunk encoding=1 samples=3")
    assert "t0=10" in lines[1] and "delta=10" in lines[2] and "dod=1" in lines[3]
    assert "bits=7ff0000000000002" in lines[3]


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        chunk.encode(np.array([2, 1]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="must not decrease"):
        chunk.encode(np.array([1, 3, 2]), np.array([0.0, 0.0, 0.0]))


def test_equal_neighbouring_timestamps_round_trip() -> None:
    """The downsampled counter aggregate repeats its last timestamp (downsample.py)."""
    ts = np.array([0, 60_000, 60_000, 120_000, 120_000], dtype=np.int64)
    vs = np.array([1.0, 5.0, 2.0, 9.0, 9.0])
    t, v = chunk.decode(chunk.encode(ts, vs))
    assert np.array_equal(t, ts) and np.array_equal(v, vs)
    with pytest.raises(ValueError, match="timestamps but"):
        chunk.encode(np.array([1, 2]), np.array([0.0]))
    with pytest.raises(ValueError, match="integer"):
        chunk.encode(np.array([1.5]), np.array([0.0]))
    with pytest.raises(ValueError, match="at most"):
        n = chunk.MAX_ENCODABLE + 1
        chunk.encode(np.arange(n), np.zeros(n))


def test_truncated_or_foreign_bytes_are_refused() -> None:
    rng = np.random.default_rng(1)
    ts = np.cumsum(rng.integers(14990, 15010, 120)).astype(np.int64)
    vs = np.round(np.cumsum(rng.normal(0, 1, 120)), 2).astype(np.float64)
    data = chunk.encode(ts, vs)
    for cut in range(len(data)):
        with pytest.raises(chunk.CorruptChunk):
            chunk.decode(data[:cut])
    with pytest.raises(chunk.CorruptChunk, match="not an XOR chunk"):
        chunk.decode(b"\x20" + data[1:])


# -- compression against Prometheus's XOR chunk, on the same data ------------------------------


def _uvarint_len(x: int) -> int:
    return max(1, (x.bit_length() + 6) // 7)


def prometheus_xor_size(ts: np.ndarray, vs: np.ndarray) -> int:
    """Bytes of Prometheus's XOR chunk (tsdb/chunkenc/xor.go) for these samples: a 2-byte count,
    t0 as varint, v0 raw, the first delta as uvarint, dod buckets 0/14/17/20/64 bits, and XOR
    windows reused whenever the value fits (leading zeros capped at 31)."""
    t = ts.tolist()
    b = bits(vs)
    nbits = 16 + 8 * _uvarint_len(((t[0] << 1) ^ (t[0] >> 63)) & (2**64 - 1)) + 64
    lead = trail = -1
    for i in range(1, len(t)):
        if i == 1:
            nbits += 8 * _uvarint_len(t[1] - t[0])
        else:
            dod = (t[i] - t[i - 1]) - (t[i - 1] - t[i - 2])
            if dod == 0:
                nbits += 1
            else:
                for prefix, width in ((2, 14), (3, 17), (4, 20)):
                    if -(1 << (width - 1)) + 1 <= dod <= 1 << (width - 1):
                        nbits += prefix + width
                        break
                else:
                    nbits += 4 + 64
        x = b[i] ^ b[i - 1]
        if x == 0:
            nbits += 1
            continue
        lz = min(64 - x.bit_length(), 31)
        tz = (x & -x).bit_length() - 1
        if lead >= 0 and lz >= lead and tz >= trail:
            nbits += 2 + 64 - lead - trail
        else:
            lead, trail = lz, tz
            nbits += 2 + 5 + 6 + 64 - lz - tz
    return (nbits + 7) // 8


def scrape_timestamps(rng: np.random.Generator, n: int, jitter_ms: float) -> np.ndarray:
    t0 = 1_700_000_000_000 + int(rng.integers(0, INTERVAL))
    ts = t0 + np.arange(n, dtype=np.int64) * INTERVAL
    if jitter_ms:
        ts += np.rint(rng.normal(0, jitter_ms, n)).astype(np.int64)
    return ts


def series_values(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Value shapes of a typical scrape: constants, counters of several rates, gauges."""
    if kind == "constant":  # up, *_info, config gauges
        return np.full(n, float(rng.choice([0, 1, 2, 4, 1024, 16777216])))
    if kind == "rare_counter":  # error counters
        return np.cumsum(rng.random(n) < 0.05).astype(float) + float(rng.integers(0, 50))
    if kind == "histogram":  # bucket counters, most of them slow
        rate = float(rng.choice([0.0, 0.5, 5, 50]))
        return float(rng.integers(0, 1000)) + np.cumsum(rng.poisson(rate, n)).astype(float)
    if kind == "busy_counter":  # requests_total
        return float(rng.integers(10**5, 10**7)) + np.cumsum(rng.poisson(150, n)).astype(float)
    if kind == "seconds_counter":  # cpu_seconds_total
        steps = np.abs(rng.normal(1.5, 0.3, n))
        return np.round(float(rng.integers(1000, 100000)) + np.cumsum(steps), 2)
    if kind == "bytes_gauge":  # memory in pages
        return 4096.0 * (float(rng.integers(10**4, 10**6)) + np.cumsum(rng.integers(-20, 21, n)))
    assert kind == "float_gauge"  # temperatures, load averages
    return np.round(40 + np.cumsum(rng.normal(0, 0.2, n)), 1)


MIX = {"constant": 30, "rare_counter": 20, "histogram": 20, "busy_counter": 10,
       "seconds_counter": 10, "bytes_gauge": 5, "float_gauge": 5}  # fmt: skip


def measure(jitter_ms: float, kinds: dict[str, int] = MIX) -> tuple[float, float]:
    """(ours, Prometheus's) bytes per sample over full chunks of a series mix."""
    rng = np.random.default_rng(42)
    ours = prom = samples = 0
    for kind, weight in kinds.items():
        for _ in range(weight * 2):
            ts = scrape_timestamps(rng, chunk.MAX_SAMPLES, jitter_ms)
            vs = series_values(rng, kind, chunk.MAX_SAMPLES)
            ours += len(roundtrip(ts, vs))
            prom += prometheus_xor_size(ts, vs)
            samples += len(ts)
    return ours / samples, prom / samples


@pytest.mark.parametrize("jitter_ms", [0.0, 1.0, 2.0, 5.0])
def test_at_most_prometheus_bytes_per_sample(jitter_ms: float) -> None:
    ours, prom = measure(jitter_ms)
    assert ours <= prom
    if jitter_ms:  # narrow delta-of-delta buckets pay off once timestamps jitter
        assert ours < 0.8 * prom


@pytest.mark.parametrize("kind", sorted(MIX))
def test_each_value_shape_at_most_prometheus(kind: str) -> None:
    ours, prom = measure(0.0, {kind: 10})
    assert ours <= prom


def test_decoded_cache_serves_repeats_read_only_and_stays_within_its_budget() -> None:
    cache = chunk.DecodedCache(max_samples=5)
    a = chunk.encode(np.array([1, 2, 3]), np.array([1.0, 2.0, 3.0]))
    b = chunk.encode(np.array([4, 5, 6]), np.array([4.0, 5.0, 6.0]))
    first = cache.decode(a)
    assert cache.decode(bytes(a)) is first  # same bytes, another object: a hit
    assert (cache.hits, cache.misses) == (1, 1)
    with pytest.raises(ValueError, match="read-only"):
        first[1][0] = 9.0
    cache.decode(b)  # 6 samples > 5: the least recently used chunk (a) goes
    assert cache.decode(a) is not first and cache.misses == 3
    off = chunk.DecodedCache(max_samples=0)
    t, v = off.decode(a)
    assert off.decode(a)[0] is not t and list(v) == [1.0, 2.0, 3.0]
