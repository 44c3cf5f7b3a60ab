"""The head block: the most recent samples of every series, in memory, behind a WAL.

As in Prometheus, a series is found by its label set and named by a ref (an int); an inverted
index (postings: label name -> value -> refs) answers matchers; each series keeps its newest
samples raw in an open chunk and cuts it into a Gorilla chunk (chunk.py) at MAX_SAMPLES samples
or at a chunk-range boundary, so a chunk never straddles two future blocks.

Writes go through an appender: samples are checked as they are appended, then `commit` checks
them again against everything committed meanwhile, logs new series and the samples to the WAL,
waits for the shared fdatasync and only then makes them visible, in WAL order. So a query
never sees a sample a crash could take back, and replaying the WAL rebuilds the same head.

Locks: `_commit_lock` orders validation and WAL writes; `_lock` guards series, postings and
sample buffers (held briefly; queries copy what they need and decode outside it);
`_applied` hands visibility over in WAL order. Chunks are encoded outside every lock.

Memory, measured with 6-label series: ~2 KB per series (labels, postings sets, the series
object), 16 bytes per sample in the open chunk and ~2.3 bytes per sample in cut chunks.
The head reads no clock: every time it deals with is a sample's timestamp.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scalelab.monitoring import chunk, wal
from scalelab.monitoring.errors import BadData, LimitExceeded, OutOfOrderSample
from scalelab.monitoring.model import (
    Labels,
    Matcher,
    MatchType,
    Series,
    TimestampArray,
    ValueArray,
    format_labels,
    valid_label_name,
)

log = logging.getLogger(__name__)

DEFAULT_CHUNK_RANGE_MS = 2 * 3600 * 1000  # Prometheus's block range: chunks never cross it
_BITS = struct.Struct("<d")
_MIN_INT64 = -(1 << 63)
_EMPTY: frozenset[int] = frozenset()


def _same(a: float, b: float) -> bool:
    """Bit-for-bit equality: two NaNs with one payload are duplicates, 0.0 and -0.0 are not."""
    return _BITS.pack(a) == _BITS.pack(b)


class _Chunk:
    """A cut chunk; `data` is raw (ts, values) arrays until encoded outside the lock."""

    __slots__ = ("data", "maxt", "mint")

    def __init__(self, mint: int, maxt: int, data: bytes | tuple[array[int], array[float]]):
        self.mint, self.maxt, self.data = mint, maxt, data

    def arrays(self) -> tuple[TimestampArray, ValueArray]:
        data = self.data  # read once: another thread may swap in the encoded bytes
        if isinstance(data, bytes):
            return chunk.decode_cached(data)
        return np.frombuffer(data[0], np.int64), np.frombuffer(data[1], np.float64)

    def encoded(self) -> bytes:
        data = self.data
        if isinstance(data, bytes):
            return data
        return chunk.encode(*self.arrays())


class _Series:
    __slots__ = tuple(
        "chunk_end chunks first_t labels last_t pending ref ts vs wal_t wal_v".split()
    )

    def __init__(self, ref: int, labels: Labels) -> None:
        self.ref, self.labels = ref, labels
        self.chunks: list[_Chunk] = []
        self.ts: array[int] = array("q")  # the open chunk, raw
        self.vs: array[float] = array("d")
        self.chunk_end = _MIN_INT64  # the open chunk is cut before a sample at this time
        self.first_t: int | None = None  # oldest and newest visible sample
        self.last_t = _MIN_INT64
        self.wal_t: int | None = None  # newest sample logged to the WAL (None: the series
        self.wal_v = 0.0  # record is not logged yet either), and its value
        self.pending = 0  # open appenders holding samples for it: not collectable


class HeadAppender:
    """A write transaction on the head (model.Appender); one thread uses it at a time."""

    def __init__(self, head: Head) -> None:
        self._head = head
        self._touched: dict[int, _Series] = {}
        # newest sample per series in this transaction; two dicts, not one of (t, v) tuples:
        # a tuple per sample lives until commit and keeps the cyclic GC busy
        self._last_t: dict[int, int] = {}
        self._last_v: dict[int, float] = {}
        self._refs: list[int] = []
        self._ts: list[int] = []
        self._vs: list[float] = []

    def append(self, labels: Labels, t: int, v: float) -> None:
        self._append(self._head._by_labels.get(labels), labels, t, v)

    def append_ref(self, ref: object, labels: Labels, t: int, v: float) -> object:
        """`append`, for a caller that kept the ref an earlier append_ref of these labels
        returned (or passes None): the series is not looked up by its labels, which is most
        of an append's cost. A ref whose series was collected (or from another head) is
        looked up again; the ref to keep is returned. As Prometheus's Append(ref, ...)."""
        return self._append(ref if isinstance(ref, _Series) else None, labels, t, v)

    def hold(self, refs: Iterable[object]) -> None:
        """Pin, under one lock, the live series among refs (from append_ref) for this
        transaction: a caller about to append to many known series (a scrape) spares
        append_ref taking the head's lock once per series."""
        touched = self._touched
        wanted = [r for r in refs if isinstance(r, _Series) and touched.get(r.ref) is not r]
        if wanted:
            self._head._hold_many(wanted, touched)

    def _append(self, s: _Series | None, labels: Labels, t: int, v: float) -> _Series:
        head = self._head
        if t < head._min_valid:
            head._count("out_of_bounds_samples")
            raise OutOfOrderSample(
                f"out of bounds: {format_labels(labels)} at {t} is older "
                f"than the head's lower bound {head._min_valid}"
            )
        if s is None or self._touched.get(s.ref) is not s:
            s = head._hold(labels, s)
            self._touched[s.ref] = s
        ref = s.ref
        last_t = self._last_t.get(ref)
        if last_t is None:
            last_t, last_v = s.wal_t, s.wal_v
        else:
            last_v = self._last_v[ref]
        if last_t is not None and t <= last_t:
            if t == last_t and _same(v, last_v):
                return s  # a duplicate of the newest sample: nothing to do, as in Prometheus
            head._count("out_of_order_samples")
            if t == last_t:
                raise OutOfOrderSample(
                    f"duplicate sample for timestamp: {format_labels(labels)}"
                    f" at {t} already has value {last_v!r}, not {v!r}"
                )
            raise OutOfOrderSample(
                f"out of order sample: {format_labels(labels)} at {t} is "
                f"older than its newest sample at {last_t}"
            )
        self._last_t[ref] = t
        self._last_v[ref] = v
        self._refs.append(ref)
        self._ts.append(t)
        self._vs.append(v)
        return s

    def commit(self) -> None:
        try:
            if self._refs:
                self._head._commit(self._touched, self._refs, self._ts, self._vs)
        finally:
            self._reset()

    def rollback(self) -> None:
        self._reset()

    def _reset(self) -> None:
        touched = self._touched
        self._touched, self._refs, self._ts, self._vs = {}, [], [], []
        self._last_t, self._last_v = {}, {}
        self._head._release(touched.values())


class Head:
    """The in-memory head block over a WAL in `directory/wal`; a model.Querier."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_series: int | None = None,
        segment_bytes: int = wal.DEFAULT_SEGMENT_BYTES,
        chunk_range_ms: int = DEFAULT_CHUNK_RANGE_MS,
        min_valid_ms: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_series = max_series
        self.chunk_range_ms = chunk_range_ms
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._truncate_lock = threading.Lock()
        self._applied = threading.Condition()
        self._next_seq = self._applied_seq = 0
        self._by_labels: dict[Labels, _Series] = {}
        self._by_ref: dict[int, _Series] = {}
        self._postings: dict[str, dict[str, set[int]]] = {}
        self._all: set[int] = set()  # refs of series with visible samples
        self._next_ref = 1
        self._min_valid = _MIN_INT64 if min_valid_ms is None else min_valid_ms
        self._mint: int | None = None
        self._maxt: int | None = None
        # counters, for the /metrics page
        self.series_limit_hits = 0  # new series refused by max_series
        self.out_of_order_samples = 0  # refused at append, or dropped at commit after a race
        self.out_of_bounds_samples = 0  # older than the head's lower bound
        self.unknown_refs_replayed = 0
        self.samples_replayed = 0
        self._wal = wal.WAL(self.directory / "wal", segment_bytes=segment_bytes)
        self._replay()

    @classmethod
    def open(cls, directory: Path | str, **options: Any) -> Head:
        """Open (creating it if needed) a head, replaying its WAL; options as for Head()."""
        return cls(directory, **options)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def close(self) -> None:
        self._wal.close()

    def __enter__(self) -> Head:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------

    def appender(self) -> HeadAppender:
        return HeadAppender(self)

    def _hold(self, labels: Labels, seen: _Series | None) -> _Series:
        """The series for labels, created if needed, pinned against collection."""
        with self._lock:
            alive = seen is not None and self._by_ref.get(seen.ref) is seen
            s = seen if alive else self._by_labels.get(labels)
            if s is None:
                s = self._create(labels, check_limit=True)
            s.pending += 1
            return s

    def _hold_many(self, series: list[_Series], touched: dict[int, _Series]) -> None:
        """Pin those of `series` that are still alive into an appender's `touched`."""
        with self._lock:
            by_ref = self._by_ref
            for s in series:
                if by_ref.get(s.ref) is s and s.ref not in touched:
                    s.pending += 1
                    touched[s.ref] = s

    def _create(self, labels: Labels, *, check_limit: bool, ref: int | None = None) -> _Series:
        if check_limit:
            _validate(labels)
            if self.max_series is not None and len(self._by_ref) >= self.max_series:
                self.series_limit_hits += 1
                raise LimitExceeded(
                    f"the head already holds max_series={self.max_series} "
                    f"series; refusing new series {format_labels(labels)}"
                )
        labels = tuple((sys.intern(k), sys.intern(v)) for k, v in labels)
        if ref is None:
            ref = self._next_ref
        self._next_ref = max(self._next_ref, ref + 1)
        s = _Series(ref, labels)
        self._by_labels[labels] = s
        self._by_ref[ref] = s
        return s

    def _release(self, series: Iterable[_Series]) -> None:
        with self._lock:
            for s in series:
                s.pending -= 1

    def _commit(
        self, touched: dict[int, _Series], refs: list[int], ts: list[int], vs: list[float]
    ) -> None:
        with self._commit_lock:
            keep: list[int] = []
            new_series: list[tuple[int, Labels]] = []
            for i, (ref, t, v) in enumerate(zip(refs, ts, vs, strict=True)):
                s = touched[ref]
                if t < self._min_valid:  # truncated meanwhile
                    self._count("out_of_bounds_samples")
                    continue
                if s.wal_t is not None and t <= s.wal_t:  # another commit got there first
                    if not (t == s.wal_t and _same(v, s.wal_v)):
                        self._count("out_of_order_samples")
                    continue
                if s.wal_t is None:
                    new_series.append((ref, s.labels))
                s.wal_t, s.wal_v = t, v
                keep.append(i)
            if not keep:
                return
            r = np.array(refs, np.int64)
            t_arr = np.array(ts, np.int64)
            v_arr = np.array(vs, np.float64)
            if len(keep) < len(refs):
                r, t_arr, v_arr = r[keep], t_arr[keep], v_arr[keep]
            token = self._wal.log(new_series, (r, t_arr, v_arr))
            self._next_seq += 1
            seq = self._next_seq
        synced = False
        try:
            self._wal.sync(token)
            synced = True
        finally:
            frozen: list[_Chunk] = []
            with self._applied:
                while self._applied_seq != seq - 1:
                    self._applied.wait()
                try:
                    if synced:
                        with self._lock:
                            self._apply(touched, r.tolist(), t_arr.tolist(), v_arr.tolist(), frozen)
                finally:
                    self._applied_seq = seq
                    self._applied.notify_all()
            for c in frozen:
                c.data = c.encoded()

    def _apply(
        self,
        series: dict[int, _Series],
        refs: list[int],
        ts: list[int],
        vs: list[float],
        frozen: list[_Chunk],
    ) -> None:
        """Make logged samples visible (head lock held); cut chunks into `frozen`."""
        if not refs:
            return
        span, most = self.chunk_range_ms, chunk.MAX_SAMPLES
        for ref, t, v in zip(refs, ts, vs, strict=True):
            s = series[ref]
            if t >= s.chunk_end or len(s.ts) >= most:
                if s.ts:
                    c = _Chunk(s.ts[0], s.ts[-1], (s.ts, s.vs))
                    s.chunks.append(c)
                    frozen.append(c)
                    s.ts, s.vs = array("q"), array("d")
                s.chunk_end = (t // span + 1) * span
            s.ts.append(t)
            s.vs.append(v)
            s.last_t = t
            if s.first_t is None:
                s.first_t = t
                self._index(s)
        lo, hi = min(ts), max(ts)
        self._mint = lo if self._mint is None else min(self._mint, lo)
        self._maxt = hi if self._maxt is None else max(self._maxt, hi)

    def _index(self, s: _Series) -> None:
        for name, value in s.labels:
            self._postings.setdefault(name, {}).setdefault(value, set()).add(s.ref)
        self._all.add(s.ref)

    def _unindex(self, s: _Series) -> None:
        for name, value in s.labels:
            values = self._postings[name]
            refs = values[value]
            refs.discard(s.ref)
            if not refs:
                del values[value]
                if not values:
                    del self._postings[name]
        self._all.discard(s.ref)

    # -- replay and truncation --------------------------------------------------------------

    def _replay(self) -> None:
        """Rebuild from the WAL. A label set collected and created again has several refs in
        it; refs only grow, so the highest is the one later records (and checkpoints) use."""
        alias: dict[int, _Series] = {}
        frozen: list[_Chunk] = []
        for record in self._wal.replay():
            if isinstance(record, wal.SeriesRecord):
                for ref, labels in record.entries:
                    s = self._by_labels.get(labels)
                    if s is None:  # (a ref seen with other labels cannot happen; keep both)
                        s = self._create(
                            labels, check_limit=False, ref=None if ref in self._by_ref else ref
                        )
                    elif ref > s.ref and ref not in self._by_ref:
                        self._rekey(s, ref)
                    self._next_ref = max(self._next_ref, ref + 1)
                    alias[ref] = s
            elif isinstance(record, wal.SamplesRecord):
                self._replay_samples(record, alias, frozen)
                for c in frozen:  # encode as we go: raw samples take ten times the memory
                    c.data = c.encoded()
                frozen.clear()
            else:
                self._min_valid = max(self._min_valid, record.before)
        self._drop_before(self._min_valid)
        if self.unknown_refs_replayed:
            log.warning(
                "WAL replay: %d samples of unknown series skipped", self.unknown_refs_replayed
            )
        if self.max_series is not None and len(self._by_ref) > self.max_series:
            log.warning(
                "WAL replay restored %d series, above max_series=%d",
                len(self._by_ref),
                self.max_series,
            )

    def _rekey(self, s: _Series, ref: int) -> None:
        visible = s.ref in self._all
        if visible:
            self._unindex(s)
        del self._by_ref[s.ref]
        s.ref = ref
        self._by_ref[ref] = s
        if visible:
            self._index(s)

    def _replay_samples(
        self, record: wal.SamplesRecord, alias: dict[int, _Series], frozen: list[_Chunk]
    ) -> None:
        keep: dict[int, _Series] = {}
        refs, ts, vs = [], [], []
        floor = self._min_valid
        for ref, t, v in zip(
            record.refs.tolist(), record.timestamps.tolist(), record.values.tolist(), strict=True
        ):
            s = alias.get(ref)
            if t < floor or s is None:
                self.unknown_refs_replayed += s is None and t >= floor
                continue
            if s.wal_t is not None and t <= s.wal_t:
                continue
            s.wal_t, s.wal_v = t, v
            keep[s.ref] = s
            refs.append(s.ref)
            ts.append(t)
            vs.append(v)
        self.samples_replayed += len(refs)
        self._apply(keep, refs, ts, vs, frozen)

    def truncate(self, before_ms: int) -> None:
        """Forget samples older than before_ms (the caller has persisted them in a block),
        collect series left empty, and truncate the WAL to match."""
        with self._truncate_lock:
            with self._commit_lock:
                self._min_valid = bound = max(self._min_valid, before_ms)
                seq = self._next_seq
            with self._applied:  # commits validated under the old bound become visible first
                while self._applied_seq < seq:
                    self._applied.wait()
            self._drop_before(bound)
            self._wal.truncate(bound, self._live_series)

    def _live_series(self) -> list[tuple[int, Labels]]:
        with self._lock:
            return [(s.ref, s.labels) for s in self._by_ref.values() if s.wal_t is not None]

    def _drop_before(self, before: int) -> None:
        with self._lock:
            for s in list(self._by_ref.values()):
                if s.first_t is not None and s.first_t < before:
                    self._cut_front(s, before)
                if s.first_t is None and s.pending == 0:
                    if s.ref in self._all:
                        self._unindex(s)
                    del self._by_ref[s.ref]
                    del self._by_labels[s.labels]
            firsts = [s.first_t for s in self._by_ref.values() if s.first_t is not None]
            self._mint = min(firsts) if firsts else None
            if self._mint is None:
                self._maxt = None

    def _cut_front(self, s: _Series, before: int) -> None:
        kept: list[_Chunk] = []
        for c in s.chunks:
            if c.maxt < before:
                continue
            if c.mint < before:
                t, v = c.arrays()
                k = int(np.searchsorted(t, before))
                c = _Chunk(int(t[k]), c.maxt, chunk.encode(t[k:], v[k:]))
            kept.append(c)
        s.chunks = kept
        if s.ts and s.ts[0] < before:
            k = int(np.searchsorted(np.frombuffer(s.ts, np.int64), before))
            s.ts, s.vs = s.ts[k:], s.vs[k:]  # new arrays: a snapshot may still hold the old
        if s.chunks:
            s.first_t = s.chunks[0].mint
        elif s.ts:
            s.first_t = s.ts[0]
        else:
            s.first_t = None
            s.last_t = _MIN_INT64

    # -- reading --------------------------------------------------------------------------

    @property
    def mint(self) -> int | None:
        """Oldest sample in the head (None when empty)."""
        return self._mint

    @property
    def maxt(self) -> int | None:
        """Newest sample in the head (None when empty)."""
        return self._maxt

    @property
    def num_series(self) -> int:
        """Series held in memory (counted against max_series), visible or not yet."""
        return len(self._by_ref)

    @property
    def min_valid_ms(self) -> int:
        """Samples older than this are refused: they belong to a persisted block."""
        return self._min_valid

    def _matching(self, matchers: Sequence[Matcher]) -> list[_Series]:
        """Series with visible samples that match all matchers, sorted by labels."""
        with self._lock:
            result: set[int] | None = None
            drop: list[set[int]] = []
            for m in matchers:
                values = self._postings.get(m.name, {})
                if m.matches_empty():  # series without the label match: subtract the others
                    drop.extend(refs for value, refs in values.items() if not m.matches(value))
                    continue
                if m.type is MatchType.EQUAL:
                    hit: set[int] | frozenset[int] = values.get(m.value, _EMPTY)
                else:
                    hit = set[int]().union(
                        *(refs for value, refs in values.items() if m.matches(value))
                    )
                result = set(hit) if result is None else result & hit
                if not result:
                    return []
            if result is None:
                result = set(self._all)
            for refs in drop:
                result -= refs
            found = [self._by_ref[ref] for ref in result]
        found.sort(key=lambda s: s.labels)
        return found

    def _snapshot(
        self, s: _Series, mint: int, maxt: int
    ) -> tuple[list[_Chunk], array[int], array[float]] | None:
        with self._lock:
            if s.first_t is None or s.first_t > maxt or s.last_t < mint:
                return None
            chunks = [c for c in s.chunks if c.maxt >= mint and c.mint <= maxt]
            if s.ts and s.ts[-1] >= mint and s.ts[0] <= maxt:
                return chunks, s.ts[:], s.vs[:]
            return chunks, array("q"), array("d")

    def _samples(self, s: _Series, mint: int, maxt: int) -> tuple[TimestampArray, ValueArray]:
        snap = self._snapshot(s, mint, maxt)
        if snap is None:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        chunks, open_ts, open_vs = snap
        parts = [c.arrays() for c in chunks]
        parts.append((np.frombuffer(open_ts, np.int64), np.frombuffer(open_vs, np.float64)))
        ts = np.concatenate([p[0] for p in parts])
        vs = np.concatenate([p[1] for p in parts])
        lo, hi = np.searchsorted(ts, mint), np.searchsorted(ts, maxt, side="right")
        return ts[lo:hi], vs[lo:hi]

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        out = []
        for s in self._matching(matchers):
            ts, vs = self._samples(s, mint, maxt)
            if len(ts):
                out.append(Series(s.labels, ts, vs))
        return out

    def _in_range(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[_Series]:
        return [
            s
            for s in self._matching(matchers)
            if s.first_t is not None and s.first_t <= maxt and s.last_t >= mint
        ]

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        names = {name for s in self._in_range(matchers, mint, maxt) for name, _ in s.labels}
        return sorted(names)

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        values = {v for s in self._in_range(matchers, mint, maxt) for k, v in s.labels if k == name}
        return sorted(values)

    def chunks_in(
        self, mint: int, maxt: int
    ) -> Iterator[tuple[Labels, list[tuple[int, int, bytes]]]]:
        """Every series' committed samples in [mint, maxt] as encoded chunks, series sorted by
        labels: what a block writer persists before calling `truncate`."""
        for s in self._matching(()):
            snap = self._snapshot(s, mint, maxt)
            if snap is None:
                continue
            chunks, open_ts, open_vs = snap
            out: list[tuple[int, int, bytes]] = []
            for c in chunks:
                if mint <= c.mint and c.maxt <= maxt:
                    out.append((c.mint, c.maxt, c.encoded()))
                else:
                    out.extend(_encode_range(*c.arrays(), mint, maxt))
            ts, vs = np.frombuffer(open_ts, np.int64), np.frombuffer(open_vs, np.float64)
            out.extend(_encode_range(ts, vs, mint, maxt))
            if out:
                yield s.labels, out


def _encode_range(
    ts: TimestampArray, vs: ValueArray, mint: int, maxt: int
) -> list[tuple[int, int, bytes]]:
    lo, hi = int(np.searchsorted(ts, mint)), int(np.searchsorted(ts, maxt, side="right"))
    if lo >= hi:
        return []
    return [(int(ts[lo]), int(ts[hi - 1]), chunk.encode(ts[lo:hi], vs[lo:hi]))]


def _validate(labels: Labels) -> None:
    """Refuse label sets a query could not address: unsorted, duplicate, empty or bad names."""
    if not labels:
        raise BadData("a series needs at least one label")
    previous = ""
    for i, (name, value) in enumerate(labels):
        if i and name <= previous:
            raise BadData(f"labels {labels!r} are not sorted by name or repeat a name")
        if not value:
            raise BadData(f"label {name!r} has an empty value")
        if not valid_label_name(name):
            raise BadData(f"invalid label name {name!r}")
        previous = name
