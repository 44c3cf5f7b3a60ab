"""An in-memory `model.Querier`: the query engine's and the HTTP API's test storage.

Samples are kept per series, sorted by time (a sample at a time the series already has
replaces it, as a re-scrape would); numpy copies are made lazily for reads. An inverted index
of label pairs narrows `select` before the matchers are applied to each candidate series.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .model import Labels, Matcher, MatchType, Series, labels_of, matches_all


@dataclass(slots=True)
class _Stored:
    labels: Labels
    times: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    arrays: tuple[np.ndarray, np.ndarray] | None = None

    def add(self, t: int, v: float) -> None:
        self.arrays = None
        if not self.times or t > self.times[-1]:
            self.times.append(t)
            self.values.append(v)
            return
        i = bisect.bisect_left(self.times, t)
        if self.times[i] == t:
            self.values[i] = v
        else:
            self.times.insert(i, t)
            self.values.insert(i, v)

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        if self.arrays is None:
            self.arrays = (
                np.asarray(self.times, dtype=np.int64),
                np.asarray(self.values, dtype=np.float64),
            )
        return self.arrays


class MemoryStorage:
    """Series in a dict; implements `model.Querier`. Thread-safe."""

    def __init__(self) -> None:
        self._series: dict[Labels, _Stored] = {}
        self._postings: dict[tuple[str, str], set[Labels]] = {}
        self._lock = threading.Lock()

    def add(self, labels: Labels | Mapping[str, str], t_ms: int, v: float) -> None:
        """Store one sample; labels are canonicalised (sorted, empty values dropped)."""
        key = labels_of(labels)
        with self._lock:
            stored = self._series.get(key)
            if stored is None:
                stored = self._series[key] = _Stored(key)
                for pair in key:
                    self._postings.setdefault(pair, set()).add(key)
            stored.add(int(t_ms), float(v))

    def add_many(
        self, labels: Labels | Mapping[str, str], samples: Iterable[tuple[int, float]]
    ) -> None:
        """Store many samples of one series (fast when they come after what it holds)."""
        key = labels_of(labels)
        with self._lock:
            stored = self._series.get(key)
            if stored is None:
                stored = self._series[key] = _Stored(key)
                for pair in key:
                    self._postings.setdefault(pair, set()).add(key)
            for t, v in samples:
                stored.add(int(t), float(v))

    def __len__(self) -> int:
        return len(self._series)

    def _candidates(self, matchers: Sequence[Matcher]) -> tuple[list[_Stored], list[Matcher]]:
        """Series the postings allow, and the matchers still to check on each."""
        narrowing = [m for m in matchers if m.type is MatchType.EQUAL and m.value != ""]
        if not narrowing:
            return list(self._series.values()), list(matchers)
        sets = [self._postings.get((m.name, m.value), set()) for m in narrowing]
        smallest = min(sets, key=len)
        keys = smallest.intersection(*[s for s in sets if s is not smallest])
        rest = [m for m in matchers if m not in narrowing]
        return [self._series[k] for k in keys], rest

    def _matching(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        out: list[Series] = []
        with self._lock:
            candidates, rest = self._candidates(matchers)
            for stored in candidates:
                if rest and not matches_all(stored.labels, rest):
                    continue
                lo = bisect.bisect_left(stored.times, mint)
                hi = bisect.bisect_right(stored.times, maxt)
                if hi > lo:
                    times, values = stored.view()
                    out.append(Series(stored.labels, times[lo:hi], values[lo:hi]))
        out.sort(key=lambda s: s.labels)
        return out

    def select(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[Series]:
        return self._matching(matchers, mint, maxt)

    def label_names(self, matchers: Sequence[Matcher], mint: int, maxt: int) -> list[str]:
        names: set[str] = set()
        for series in self._matching(matchers, mint, maxt):
            names.update(k for k, _ in series.labels)
        return sorted(names)

    def label_values(
        self, name: str, matchers: Sequence[Matcher], mint: int, maxt: int
    ) -> list[str]:
        values: set[str] = set()
        for series in self._matching(matchers, mint, maxt):
            values.update(v for k, v in series.labels if k == name)
        return sorted(values)
