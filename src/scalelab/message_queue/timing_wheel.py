"""A hierarchical timing wheel: the scheduler behind delayed delivery (Varghese & Lauck, 1987;
the shape of Kafka's purgatory timer).

Level 0 is a ring of `wheel_size` buckets, each `tick_ms` wide; level L is a ring of buckets
`tick_ms * wheel_size**L` wide, created the first time a deadline lies beyond the levels below
(the overflow wheel). Adding an item is O(1): compute its level and slot, append it to that
bucket. A bucket enters a heap (keyed by when it fires) only when it goes from empty to
non-empty, so advancing across a long quiet stretch costs one heap pop per non-empty bucket,
never one step per tick. When a level-L bucket fires, its items are re-added and fall into the
finer levels below (cascading); when a level-0 bucket fires, its items are due.

Two promises, which the model test checks: an item never comes out before its deadline, and it
comes out by the first `advance(now)` with `now >= due + tick_ms`. A level-0 bucket covering
`[b, b + tick)` therefore fires at `b + tick` (every item in it is then due), and a coarser
bucket fires at its start `b` (to cascade in time). Pure: no clock, no threads; the caller
passes the time in, as milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["TimingWheel"]

T = TypeVar("T")


@dataclass
class _Bucket(Generic[T]):
    start: int | None = None  # the deadline range's start; None while empty
    items: list[tuple[int, int, T]] = field(default_factory=list)  # (due, seq, item)


class TimingWheel(Generic[T]):
    """Items with deadlines in ms; `advance(now)` hands back those due, in deadline order."""

    def __init__(self, tick_ms: int = 10, wheel_size: int = 64, start_ms: int = 0) -> None:
        if tick_ms < 1 or wheel_size < 2:
            raise ValueError("tick_ms must be >= 1 and wheel_size >= 2")
        self.tick_ms = tick_ms
        self.wheel_size = wheel_size
        self._now = start_ms  # the latest time passed in
        self._current = start_ms - start_ms % tick_ms  # _now rounded down to a tick
        self._levels: list[list[_Bucket[T]]] = []
        self._heap: list[tuple[int, int, int, _Bucket[T]]] = []  # (fires, level, seq, bucket)
        self._ready: list[tuple[int, int, T]] = []  # due already: out at the next advance
        self._seq = itertools.count()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def levels(self) -> int:
        """How many wheels exist so far (1 + the overflow wheels created)."""
        return len(self._levels)

    def add(self, item: T, due_ms: int) -> None:
        """Schedule item for due_ms (ms, the caller's clock): O(1)."""
        self._count += 1
        self._place((due_ms, next(self._seq), item))

    def _place(self, entry: tuple[int, int, T]) -> None:
        due = entry[0]
        if due <= self._now:
            self._ready.append(entry)
            return
        width = self.tick_ms
        level = 0
        while True:
            start = self._current - self._current % width  # this level's current bucket
            span = width * self.wheel_size
            if due < start + span:
                break
            width, level = span, level + 1
        while len(self._levels) <= level:
            self._levels.append([_Bucket() for _ in range(self.wheel_size)])
        bucket_start = due - due % width
        bucket = self._levels[level][(due // width) % self.wheel_size]
        if bucket.start is None:
            bucket.start = bucket_start
            fires = bucket_start + width if level == 0 else bucket_start
            heapq.heappush(self._heap, (fires, level, next(self._seq), bucket))
        assert bucket.start == bucket_start, "a slot holds two rounds of the wheel"
        bucket.items.append(entry)

    def advance(self, now_ms: int) -> list[T]:
        """Move time to now_ms (earlier times are ignored) and return every item now due,
        ordered by deadline, ties in the order they were added."""
        if now_ms > self._now:
            # Buckets fire in time order; at one instant the finest level first, so a bucket
            # refilled by a cascade is never one still waiting to fire.
            while self._heap and self._heap[0][0] <= now_ms:
                fires, _level, _seq, bucket = heapq.heappop(self._heap)
                self._now = max(self._now, fires)
                self._current = self._now - self._now % self.tick_ms
                entries, bucket.items, bucket.start = bucket.items, [], None
                for entry in entries:
                    self._place(entry)
            self._now = now_ms
            self._current = now_ms - now_ms % self.tick_ms
        out, self._ready = self._ready, []
        out.sort(key=lambda e: (e[0], e[1]))
        self._count -= len(out)
        return [item for _, _, item in out]

    def next_deadline(self) -> int | None:
        """The earliest time at which advance could return something (a hint to sleep by)."""
        if self._ready:
            return self._now
        return self._heap[0][0] if self._heap else None
