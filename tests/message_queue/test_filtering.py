"""Tag filtering: the expression language (hypothesis), then a filtering consumer against the
real broker that delivers only matching records and commits past the others."""

from __future__ import annotations

import time
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.message_queue.filtering import (
    Clause,
    TagFilter,
    TagFilteringConsumer,
    TagSyntaxError,
)
from scalelab.message_queue.retry import Record
from tests.message_queue.conftest import RunningBroker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic

words = st.text(st.characters(exclude_categories=("Z", "C"), exclude_characters="{},="),
               min_size=1, max_size=8)  # fmt: skip
clauses = st.builds(Clause, words, st.frozensets(words, min_size=1, max_size=4))
filters = st.builds(TagFilter, st.lists(clauses, max_size=4).map(tuple))
headers = st.lists(st.tuples(st.sampled_from(["tag", "region", "x"]),
                             st.sampled_from([b"a", b"b", b"eu", b"us"])), max_size=5)  # fmt: skip


@given(filters)
def test_a_filter_reads_back_from_its_text(f: TagFilter) -> None:
    assert TagFilter.parse(str(f)) == f


@given(filters, headers)
def test_a_record_matches_when_every_clause_finds_one_of_its_values(
    f: TagFilter, pairs: list[tuple[str, bytes]]
) -> None:
    present: dict[str, set[str]] = {}
    for name, value in pairs:
        present.setdefault(name, set()).add(value.decode())
    expected = all(c.values & present.get(c.name, set()) for c in f.clauses)
    assert f.matches(pairs) == expected


def test_the_examples_parse_as_written() -> None:
    f = TagFilter.parse("tag in {urgent, billing} and region=eu")
    assert f.clauses == (
        Clause("tag", frozenset({"urgent", "billing"})),
        Clause("region", frozenset({"eu"})),
    )
    assert f.matches([("region", b"eu"), ("tag", b"x"), ("tag", b"billing")])
    assert not f.matches([("region", b"eu"), ("tag", b"x")])
    assert not f.matches([("tag", b"urgent")])
    assert not f.matches(None)
    assert TagFilter.parse("*").matches(None) and TagFilter.parse("  ").matches([])
    assert TagFilter.parse("tag=a and tag=b").matches([("tag", b"b"), ("tag", b"a")])


@pytest.mark.parametrize(
    "text",
    ["tag", "tag=", "=a", "tag in {}", "tag in {a,}", "tag in {a", "tag in a", "tag=a or b=c",
     "tag=a and", "tag=a b", "tag in {a} and {b}"],
)  # fmt: skip
def test_malformed_expressions_are_refused(text: str) -> None:
    with pytest.raises(TagSyntaxError):
        TagFilter.parse(text)


def produce_tagged(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    sent = []
    for i in range(60):
        hs = [("tag", b"abc"[i % 3 : i % 3 + 1]), ("region", [b"eu", b"us"][i % 2])]
        hs = hs if i % 5 else []  # every fifth record carries no headers at all
        producer.send(topic, key=b"%d" % i, value=b"%d" % i, headers=hs)
        sent.append((b"%d" % i, hs))
    producer.flush()
    producer.close()
    return sent


def committed_and_ends(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]]:
    check = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(2)]
    ends = check.end_offsets(tps)
    result = [check.committed(tp) or 0 for tp in tps], [ends[tp] for tp in tps]
    check.close()
    return result


def group_consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         fetch_max_wait_ms=50)  # fmt: skip


def test_only_matching_records_are_delivered_and_the_group_commits_to_the_end(
    broker: RunningBroker,
) -> None:
    sent = produce_tagged(broker.bootstrap, "events")
    view = TagFilter.parse("tag in {a, b} and region=eu")
    wanted = {value for value, hs in sent if view.matches(hs)}
    assert 0 < len(wanted) < len(sent) - 12  # the filter drops a good share
    consumer = TagFilteringConsumer(group_consumer(broker.bootstrap, "view", "events"), view)
    got: list[Record] = []
    deadline = time.monotonic() + 30
    while consumer.delivered + consumer.dropped < len(sent):
        assert time.monotonic() < deadline, f"{consumer.delivered} + {consumer.dropped}"
        consumer.process(got.append, timeout_ms=100)
    consumer.consumer.close()
    assert sorted(r.value for r in got) == sorted(wanted)  # each once, nothing else
    assert all(view.matches(r.headers) for r in got)
    committed, ends = committed_and_ends(broker.bootstrap, "view", "events")
    assert committed == ends and sum(ends) == len(sent)


def test_a_view_that_matches_nothing_still_commits_past_what_it_dropped(
    broker: RunningBroker,
) -> None:
    sent = produce_tagged(broker.bootstrap, "quiet")
    consumer = TagFilteringConsumer(group_consumer(broker.bootstrap, "none", "quiet"), "tag=zzz")
    deadline = time.monotonic() + 30
    while consumer.dropped < len(sent):
        assert time.monotonic() < deadline, f"dropped {consumer.dropped}"
        assert consumer.poll(timeout_ms=100) == []  # never calls commit() itself
    consumer.consumer.close()
    committed, ends = committed_and_ends(broker.bootstrap, "none", "quiet")
    assert committed == ends and consumer.delivered == 0
