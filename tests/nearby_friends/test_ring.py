"""The consistent-hash ring that places pub/sub channels on Redis servers.

Every bound below is checked on fixed node names and keys with a stable hash, so a test gives
the same answer on every run; the bounds are loose enough that they hold for any sane hash.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.nearby_friends.ring import HashRing

KEYS = [f"loc:{user_id}" for user_id in range(10_000)]


def nodes(n: int) -> list[str]:
    return [f"redis://10.0.0.{i}:6379" for i in range(1, n + 1)]


def placement(ring: HashRing) -> dict[str, str]:
    return {key: ring.node_for(key) for key in KEYS}


def test_same_key_same_node_across_instances_and_node_order() -> None:
    names = nodes(4)
    shuffled = names[:]
    random.Random(7).shuffle(shuffled)
    assert placement(HashRing(names)) == placement(HashRing(shuffled))


def test_known_placement_is_stable_across_processes() -> None:
    # Golden values: a change of hash function or vnode naming would silently re-shard every
    # deployment (publishers and subscribers on different versions would miss each other).
    ring = HashRing(nodes(3))
    got = [ring.node_for(f"loc:{i}") for i in range(8)]
    assert got == GOLDEN


GOLDEN = [
    "redis://10.0.0.1:6379",
    "redis://10.0.0.3:6379",
    "redis://10.0.0.1:6379",
    "redis://10.0.0.1:6379",
    "redis://10.0.0.2:6379",
    "redis://10.0.0.3:6379",
    "redis://10.0.0.3:6379",
    "redis://10.0.0.3:6379",
]


@pytest.mark.parametrize("n", [3, 4, 5])
def test_keys_spread_roughly_evenly(n: int) -> None:
    counts = Counter(placement(HashRing(nodes(n))).values())
    assert set(counts) == set(nodes(n))
    fair = len(KEYS) / n
    for node, count in counts.items():
        # 160 vnodes: each share is within ~10% of fair; 0.6x..1.4x can only fail on a bug.
        assert 0.6 * fair <= count <= 1.4 * fair, (node, count)


def test_adding_a_node_moves_about_its_share_and_only_to_it() -> None:
    ring = HashRing(nodes(4))
    before = placement(ring)
    new = "redis://10.0.0.5:6379"
    ring.add(new)
    after = placement(ring)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert 0.10 * len(KEYS) <= len(moved) <= 0.35 * len(KEYS)
    assert all(after[key] == new for key in moved)
    assert ring.nodes == (*nodes(4), new)


def test_removing_a_node_moves_only_its_keys() -> None:
    ring = HashRing(nodes(5))
    before = placement(ring)
    gone = "redis://10.0.0.3:6379"
    ring.remove(gone)
    after = placement(ring)
    for key in KEYS:
        if before[key] == gone:
            assert after[key] != gone
        else:
            assert after[key] == before[key]
    assert gone not in ring.nodes


def test_add_then_remove_restores_placement() -> None:
    ring = HashRing(nodes(3))
    before = placement(ring)
    ring.add("redis://10.0.0.9:6379")
    ring.remove("redis://10.0.0.9:6379")
    assert placement(ring) == before


def test_bad_use_is_refused() -> None:
    with pytest.raises(LookupError):
        HashRing([]).node_for("loc:1")
    with pytest.raises(ValueError):
        HashRing(["a", "a"])
    with pytest.raises(ValueError):
        HashRing([""])
    with pytest.raises(ValueError):
        HashRing(["a"], vnodes=0)
    ring = HashRing(["a"])
    with pytest.raises(ValueError):
        ring.add("a")
    with pytest.raises(KeyError):
        ring.remove("b")


def test_single_node_owns_everything() -> None:
    ring = HashRing(["only"], vnodes=1)
    assert {ring.node_for(key) for key in KEYS[:500]} == {"only"}


node_names = st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=6, unique=True)


@given(node_names, st.text(max_size=40), st.randoms(use_true_random=False))
def test_node_for_is_deterministic_and_a_member(
    names: list[str], key: str, rnd: random.Random
) -> None:
    ring = HashRing(names, vnodes=8)
    node = ring.node_for(key)
    assert node in names
    assert ring.node_for(key) == node
    shuffled = names[:]
    rnd.shuffle(shuffled)
    assert HashRing(shuffled, vnodes=8).node_for(key) == node


@given(node_names, st.text(min_size=1, max_size=20), st.lists(st.text(max_size=20), max_size=30))
def test_add_moves_keys_only_to_the_new_node(names: list[str], new: str, keys: list[str]) -> None:
    if new in names:
        return
    ring = HashRing(names, vnodes=8)
    before = {key: ring.node_for(key) for key in keys}
    ring.add(new)
    for key in keys:
        assert ring.node_for(key) in (before[key], new)
