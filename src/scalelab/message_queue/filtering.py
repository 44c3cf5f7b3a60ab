"""Tag filtering: a consumer that sees only the records whose headers match a tag expression.

Why tags and not more topics (the book's argument, ch. 4 "message filtering"): a consumer that
wants a subset of a stream could get its own topic, but a topic per view duplicates the data,
multiplies partitions with every new view, and couples producers to their consumers, since a
producer must know every topic some consumer wants. With tags the producer writes once, to one
topic, and labels each record; every consumer group is one view of it. The filter reads
headers, the record's metadata, never its payload: no deserializing, no decrypting, and the
payload's format can change without touching the filter.

The trade-off: the filter runs here, in the consumer, so records it drops still crossed the
network. The book's other option, filtering in the broker, saves that bandwidth; RocketMQ does
it, matching each message's tag hash in its consume queue before sending. A Kafka broker cannot,
by design: it serves whole record batches as the producer wrote them, compressed, without
decoding a record (nor does the Fetch API carry a filter), and our broker keeps that property
so that any Kafka client, and Kafka itself, stays interchangeable with it.

Expressions: clauses joined by `and`; a clause is `NAME=VALUE` or `NAME in {V1, V2, ...}` and
holds when the record has a header NAME with one of those values (a record may repeat a header,
e.g. several `tag` headers). `*` or an empty expression matches everything. Names and values
are runs of characters other than whitespace, `{`, `}`, `,` and `=`. Example:
`tag in {urgent, billing} and region=eu`.

Offsets: a dropped record is handled, as far as the group is concerned; the consumer commits
past it, so lag measures the records this view still has to read, not the ones it never wants.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scalelab.message_queue.retry import Record

with warnings.catch_warnings():  # kafka-python 3.0 loads its schemas with a deprecated API
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka.structs import OffsetAndMetadata

__all__ = ["Clause", "TagFilter", "TagFilteringConsumer", "TagSyntaxError"]

_TOKEN = re.compile(r"[{},=]|[^\s{},=]+")
_WORD = re.compile(r"[^\s{},=]+")


class TagSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Clause:
    """Holds when the header `name` has one of `values`."""

    name: str
    values: frozenset[str]

    def holds(self, headers: Iterable[tuple[str, bytes]]) -> bool:
        wanted = {v.encode() for v in self.values}
        return any(k == self.name and v in wanted for k, v in headers)

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.name}={next(iter(self.values))}"
        return f"{self.name} in {{{', '.join(sorted(self.values))}}}"


@dataclass(frozen=True)
class TagFilter:
    """All clauses must hold; no clauses matches every record."""

    clauses: tuple[Clause, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TagFilter:
        if text.strip() in ("", "*"):
            return cls()
        tokens = _TOKEN.findall(text)  # every character but whitespace is in some token
        clauses, i = [], 0
        while True:
            clause, i = _clause(tokens, i, text)
            clauses.append(clause)
            if i == len(tokens):
                return cls(tuple(clauses))
            if tokens[i] != "and":
                raise TagSyntaxError(f"expected 'and' at {tokens[i]!r} in {text!r}")
            i += 1

    def matches(self, headers: Iterable[tuple[str, bytes]] | None) -> bool:
        pairs = list(headers or ())
        return all(c.holds(pairs) for c in self.clauses)

    def __str__(self) -> str:
        return " and ".join(str(c) for c in self.clauses) or "*"


def _clause(tokens: list[str], i: int, text: str) -> tuple[Clause, int]:
    def word(j: int) -> str:
        if j >= len(tokens) or not _WORD.fullmatch(tokens[j]):
            found = tokens[j] if j < len(tokens) else "the end"
            raise TagSyntaxError(f"expected a name or value at {found!r} in {text!r}")
        return tokens[j]

    name = word(i)
    op = tokens[i + 1] if i + 1 < len(tokens) else ""
    if op == "=":
        return Clause(name, frozenset([word(i + 2)])), i + 3
    if op != "in" or i + 2 >= len(tokens) or tokens[i + 2] != "{":
        raise TagSyntaxError(f"expected '=' or 'in {{' after {name!r} in {text!r}")
    values, j = [word(i + 3)], i + 4
    while j < len(tokens) and tokens[j] == ",":
        values.append(word(j + 1))
        j += 2
    if j >= len(tokens) or tokens[j] != "}":
        raise TagSyntaxError(f"expected ',' or '}}' in {text!r}")
    return Clause(name, frozenset(values)), j + 1


class TagFilteringConsumer:
    """Wraps a kafka-python `KafkaConsumer` (group, auto-commit off): `poll` returns only the
    matching records, `commit` commits past everything polled, dropped records included.

    Use it as poll, handle, commit (or `process`, which does the three). When a poll drops
    every record and nothing delivered awaits its commit, the poll commits by itself, so a
    view that matches little does not build lag.
    """

    def __init__(self, consumer: Any, tag_filter: TagFilter | str) -> None:
        self.consumer = consumer
        self.filter = TagFilter.parse(tag_filter) if isinstance(tag_filter, str) else tag_filter
        self.delivered = 0
        self.dropped = 0
        self._next: dict[Any, Any] = {}  # TopicPartition -> OffsetAndMetadata to commit
        self._delivered_uncommitted = False

    def poll(self, timeout_ms: int = 100) -> list[Record]:
        batches: dict[Any, Sequence[Record]] = self.consumer.poll(timeout_ms=timeout_ms)
        out: list[Record] = []
        for tp, records in batches.items():
            for record in records:
                if self.filter.matches(record.headers):
                    out.append(record)
                else:
                    self.dropped += 1
            if records:
                self._next[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        self.delivered += len(out)
        if out:
            self._delivered_uncommitted = True
        elif self._next and not self._delivered_uncommitted:
            self.commit()
        return out

    def commit(self) -> None:
        """Commit past every record polled so far; call it once the delivered ones are handled."""
        if self._next:
            self.consumer.commit(dict(self._next))
            self._next.clear()
        self._delivered_uncommitted = False

    def process(self, handler: Callable[[Record], object], timeout_ms: int = 100) -> int:
        """Poll, hand each matching record to `handler`, commit; returns how many it handled."""
        records = self.poll(timeout_ms)
        for record in records:
            handler(record)
        self.commit()
        return len(records)
