"""The query-result cache the book suggests for dashboards (Cortex's results cache, in small).

A dashboard repeats the same range queries every few seconds with a window that slides
forward. A range query's value at each step depends only on the data and that step's time,
not on the rest of the range, so the results are cached as *extents*: per (query, step, step
phase) the already computed stretches of the step grid, each with its series' points. A new
request runs only the stretches no extent covers (typically the newest few minutes) and
stitches the rest from the cache.

Only results older than `freshness_ms` are stored: samples can still arrive for the last few
minutes (scrape lag, remote-write batching), and a cached point must never miss them. Queries
whose steps do depend on the range (`@ start()`, `@ end()`) bypass the cache. Data written
later with old timestamps (a backfill) is not seen by cached stretches until they are evicted;
the cache is in memory, so a restart clears it.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SeriesKey = tuple[tuple[str, str], ...]
Points = list[list[Any]]  # [[seconds, "value"], ...] as the API returns them
RunRange = Callable[[int, int], dict[str, Any]]

DEFAULT_FRESHNESS_MS = 10 * 60_000
MAX_POINTS_PER_KEY = 2_000_000  # a key's extents beyond this drop their oldest stretches
_RANGE_DEPENDENT = re.compile(r"@\s*(start|end)\s*\(")


@dataclass
class _Extent:
    lo: int  # first step (ms), on the key's grid
    hi: int  # last step (ms), on the grid
    series: dict[SeriesKey, tuple[dict[str, str], Points]] = field(default_factory=dict)

    def points(self) -> int:
        return sum(len(p) for _, p in self.series.values())


def _key(metric: dict[str, str]) -> SeriesKey:
    return tuple(sorted(metric.items()))


def _ms(point: list[Any]) -> int:
    return round(float(point[0]) * 1000)


def _slice(extent: _Extent, lo: int, hi: int) -> dict[SeriesKey, tuple[dict[str, str], Points]]:
    if lo <= extent.lo and extent.hi <= hi:
        return extent.series
    out = {}
    for key, (metric, points) in extent.series.items():
        kept = [p for p in points if lo <= _ms(p) <= hi]
        if kept:
            out[key] = (metric, kept)
    return out


def _from_json(data: dict[str, Any]) -> dict[SeriesKey, tuple[dict[str, str], Points]]:
    return {_key(s["metric"]): (s["metric"], s["values"]) for s in data["result"]}


class ResultsCache:
    """Extents of range-query results, least recently used keys dropped beyond `entries`."""

    def __init__(self, entries: int, *, freshness_ms: int = DEFAULT_FRESHNESS_MS) -> None:
        self.entries = entries
        self.freshness_ms = freshness_ms
        self._keys: OrderedDict[tuple[str, int, int], list[_Extent]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # steps answered from the cache
        self.misses = 0  # steps computed

    def range_query(
        self, query: str, start: int, end: int, step: int, now_ms: int, run: RunRange
    ) -> dict[str, Any]:
        """run(lo, hi) evaluates the query over [lo, hi] at `step`; it is called only for
        the stretches the cache does not hold."""
        if self.entries <= 0 or _RANGE_DEPENDENT.search(query):
            return run(start, end)
        key = (query, step, start % step)
        with self._lock:
            extents = list(self._keys.get(key, []))
        parts: list[dict[SeriesKey, tuple[dict[str, str], Points]]] = []
        computed: list[_Extent] = []
        cursor = start
        for ext in extents:
            if ext.hi < cursor or ext.lo > end:
                continue
            if ext.lo > cursor:
                computed.append(self._run(run, cursor, min(ext.lo - step, end), step))
                parts.append(computed[-1].series)
            hi = min(ext.hi, end)
            parts.append(_slice(ext, cursor, hi))
            self.hits += (hi - max(ext.lo, cursor)) // step + 1
            cursor = hi + step
            if cursor > end:
                break
        if cursor <= end:
            computed.append(self._run(run, cursor, end, step))
            parts.append(computed[-1].series)
        self._store(key, computed, now_ms, step)
        return {"resultType": "matrix", "result": _merge(parts)}

    def _run(self, run: RunRange, lo: int, hi: int, step: int) -> _Extent:
        self.misses += (hi - lo) // step + 1
        data = run(lo, hi)
        if data.get("resultType") != "matrix":
            raise ValueError(f"a range query returned {data.get('resultType')!r}")
        return _Extent(lo, hi, _from_json(data))

    def _store(self, key: tuple[str, int, int], new: list[_Extent], now_ms: int, step: int) -> None:
        limit = now_ms - self.freshness_ms
        keep = []
        for ext in new:
            hi = ext.hi if ext.hi <= limit else ext.lo + (limit - ext.lo) // step * step
            if hi >= ext.lo:
                keep.append(_Extent(ext.lo, hi, _slice(ext, ext.lo, hi)))
        if not keep:
            with self._lock:
                if key in self._keys:
                    self._keys.move_to_end(key)
            return
        with self._lock:
            merged = _coalesce(sorted([*self._keys.get(key, []), *keep], key=lambda e: e.lo), step)
            while len(merged) > 1 and sum(e.points() for e in merged) > MAX_POINTS_PER_KEY:
                merged.pop(0)
            self._keys[key] = merged
            self._keys.move_to_end(key)
            while len(self._keys) > self.entries:
                self._keys.popitem(last=False)


def _coalesce(extents: list[_Extent], step: int) -> list[_Extent]:
    """Join extents that touch (one's last step + step is the next's first) or overlap."""
    out: list[_Extent] = []
    for ext in extents:
        if out and ext.lo <= out[-1].hi + step:
            prev = out[-1]
            if ext.hi <= prev.hi:
                continue
            tail = _slice(ext, prev.hi + step, ext.hi)
            out[-1] = _Extent(prev.lo, ext.hi, _merge_maps([prev.series, tail]))
        else:
            out.append(ext)
    return out


def _merge_maps(
    parts: list[dict[SeriesKey, tuple[dict[str, str], Points]]],
) -> dict[SeriesKey, tuple[dict[str, str], Points]]:
    out: dict[SeriesKey, tuple[dict[str, str], Points]] = {}
    for part in parts:
        for key, (metric, points) in part.items():
            if key in out:
                out[key] = (out[key][0], out[key][1] + points)
            else:
                out[key] = (metric, list(points))
    return out


def _merge(parts: list[dict[SeriesKey, tuple[dict[str, str], Points]]]) -> list[dict[str, Any]]:
    """Stretches in time order -> the API's matrix, series sorted by labels as Prometheus's."""
    merged = _merge_maps(parts)
    return [{"metric": merged[k][0], "values": merged[k][1]} for k in sorted(merged)]
