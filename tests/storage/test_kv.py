"""One KV contract, every backend: the same tests run on MemoryKV and RedisKV.

Time: MemoryKV gets a fake clock, so expiry is instant and exact; on Redis a short real ttl is
polled with a deadline. Redis tests use a fresh random namespace and remove it afterwards.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

from scalelab.storage.kv import KV, MemoryKV, RedisKV, open_kv

TTL = 0.25  # seconds; short enough to wait for on Redis, long enough to read back first


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def kv(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[KV]:
    if request.param == "memory":
        memory = MemoryKV(max_items=10_000, clock=clock)
        yield memory
        memory.close()
        return
    # Shared fixture (tests/conftest.py): SCALELAB_TEST_REDIS_URL, skipped only if PING fails.
    url: str = request.getfixturevalue("redis_url")
    store = RedisKV(url, f"test-kv-{uuid.uuid4().hex}")
    try:
        yield store
    finally:
        store.clear_prefix("")
        store.close()


@pytest.fixture
def wait_expired(kv: KV, clock: FakeClock) -> Callable[[Sequence[str]], bool]:
    """Let the ttl pass; True once every key reads as absent (memory: advance the fake clock;
    Redis: poll real time, giving up after a deadline)."""

    def wait(keys: Sequence[str]) -> bool:
        if isinstance(kv, MemoryKV):
            clock.advance(TTL)
            return all(v is None for v in kv.get_many(keys))
        deadline = time.monotonic() + TTL + 5.0
        while time.monotonic() < deadline:
            if all(v is None for v in kv.get_many(keys)):
                return True
            time.sleep(0.02)
        return False

    return wait


# --- the contract -----------------------------------------------------------------------------


def test_get_set_overwrite(kv: KV) -> None:
    assert kv.get("missing") is None
    kv.set("a", b"1")
    assert kv.get("a") == b"1"
    kv.set("a", b"2")
    assert kv.get("a") == b"2"


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00", bytes(range(256)), b"\xff\xfe\x00invalid utf-8\x80", b"x" * 1_000_000],
    ids=["empty", "nul", "all-bytes", "not-utf8", "1MB"],
)
def test_binary_values_round_trip(kv: KV, value: bytes) -> None:
    kv.set("bin", value)
    got = kv.get("bin")
    assert type(got) is bytes and got == value
    kv.set_many({"bin2": value})
    assert kv.get_many(["bin2"]) == [value]


@pytest.mark.parametrize("key", ["cell:u4pruy", "biz:42", "ключ", "a b", "*", "a*b?[c]\\d", ""])
def test_any_string_key(kv: KV, key: str) -> None:
    kv.set(key, b"v")
    assert kv.get(key) == b"v"
    assert kv.delete(key) == 1
    assert kv.get(key) is None


def test_get_many(kv: KV) -> None:
    assert kv.get_many([]) == []
    kv.set("a", b"A")
    kv.set("c", b"C")
    assert kv.get_many(["a", "b", "c", "a"]) == [b"A", None, b"C", b"A"]
    assert kv.get_many(("missing",)) == [None]


def test_set_many(kv: KV) -> None:
    kv.set_many({})
    kv.set("b", b"old")
    kv.set_many({"a": b"1", "b": b"2", "c": b""})
    assert kv.get_many(["a", "b", "c"]) == [b"1", b"2", b""]


def test_delete_counts_removed(kv: KV) -> None:
    kv.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert kv.delete() == 0
    assert kv.delete("a", "missing") == 1
    assert kv.delete("a") == 0
    assert kv.delete("b", "c", "b") == 2
    assert kv.get_many(["a", "b", "c"]) == [None, None, None]


def test_clear_prefix(kv: KV) -> None:
    kv.set_many({"cell:u4": b"1", "cell:u4p": b"2", "cellar": b"3", "biz:1": b"4", "c*x": b"5"})
    kv.set("c*", b"6")
    kv.clear_prefix("cell:")
    assert kv.get_many(["cell:u4", "cell:u4p", "cellar", "biz:1"]) == [None, None, b"3", b"4"]
    # Glob metacharacters in a prefix are literal: "c*" must not match "cellar".
    kv.clear_prefix("c*")
    assert kv.get_many(["c*", "c*x", "cellar"]) == [None, None, b"3"]
    kv.clear_prefix("nothing-here:")
    kv.clear_prefix("")
    assert kv.get_many(["cellar", "biz:1"]) == [None, None]


def test_clear_prefix_many_keys(kv: KV) -> None:
    # More keys than one SCAN/UNLINK batch.
    kv.set_many({f"bulk:{i}": b"x" for i in range(1_200)})
    kv.set("keep", b"k")
    kv.clear_prefix("bulk:")
    assert kv.get_many([f"bulk:{i}" for i in range(0, 1_200, 7)]) == [None] * 172
    assert kv.get("keep") == b"k"


def test_ttl_expiry(kv: KV, wait_expired: Callable[[Sequence[str]], bool]) -> None:
    kv.set("short", b"s", ttl=TTL)
    kv.set_many({"batch1": b"1", "batch2": b"2"}, ttl=TTL)
    kv.set("forever", b"f")
    kv.set("made-permanent", b"old", ttl=TTL)
    kv.set("made-permanent", b"new")  # a set without ttl drops the old expiry (as Redis SET)
    assert kv.get_many(["short", "batch1", "batch2"]) == [b"s", b"1", b"2"]
    assert wait_expired(["short", "batch1", "batch2"])
    assert kv.get_many(["forever", "made-permanent"]) == [b"f", b"new"]
    assert kv.delete("short", "batch1") == 0  # expired keys are not counted as removed


def test_ttl_not_expired_early(kv: KV, clock: FakeClock) -> None:
    kv.set("k", b"v", ttl=3600.0)
    clock.advance(3599.0)  # only moves MemoryKV's clock; for Redis an hour is simply not up
    assert kv.get("k") == b"v"


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_ttl_rejected(kv: KV, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        kv.set("k", b"v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        kv.set_many({"k": b"v"}, ttl=ttl)
    assert kv.get("k") is None


def test_matches_dict_model(kv: KV) -> None:
    """A random sequence of operations gives what a plain dict would (no ttl, no eviction)."""
    rng = random.Random(20240501)
    model: dict[str, bytes] = {}
    keys = [f"k{i}" for i in range(12)] + ["p:1", "p:2", "p:3"]
    for _ in range(400):
        op = rng.choice(["get", "get_many", "set", "set_many", "delete", "clear_prefix"])
        if op == "get":
            k = rng.choice(keys)
            assert kv.get(k) == model.get(k)
        elif op == "get_many":
            ks = rng.choices(keys, k=rng.randint(0, 5))
            assert kv.get_many(ks) == [model.get(k) for k in ks]
        elif op == "set":
            k, v = rng.choice(keys), rng.randbytes(rng.randint(0, 8))
            kv.set(k, v)
            model[k] = v
        elif op == "set_many":
            items = {rng.choice(keys): rng.randbytes(3) for _ in range(rng.randint(0, 4))}
            kv.set_many(items)
            model.update(items)
        elif op == "delete":
            ks = rng.sample(keys, rng.randint(0, 3))
            assert kv.delete(*ks) == sum(k in model for k in ks)
            for k in ks:
                model.pop(k, None)
        else:
            prefix = rng.choice(["p:", "k1", "zz"])
            kv.clear_prefix(prefix)
            model = {k: v for k, v in model.items() if not k.startswith(prefix)}
    assert kv.get_many(keys) == [model.get(k) for k in keys]


# --- MemoryKV only ----------------------------------------------------------------------------


def test_memory_lru_eviction() -> None:
    kv = MemoryKV(max_items=3)
    kv.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert kv.get("a") == b"1"  # a is now most recently used; b is the oldest
    kv.set("d", b"4")
    assert len(kv) == 3
    assert kv.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]
    kv.get_many(["c"])  # get_many also counts as a use: order is now a, d, c
    kv.set("a", b"1'")  # overwriting is a use too: d, c, a
    kv.set("e", b"5")
    assert kv.get_many(["a", "b", "c", "d", "e"]) == [b"1'", None, b"3", None, b"5"]


def test_memory_set_many_over_capacity_keeps_newest() -> None:
    kv = MemoryKV(max_items=2)
    kv.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert kv.get_many(["a", "b", "c"]) == [None, b"2", b"3"]


def test_memory_expiry_is_exact(clock: FakeClock) -> None:
    kv = MemoryKV(clock=clock)
    kv.set("k", b"v", ttl=10.0)
    clock.advance(9.999)
    assert kv.get("k") == b"v"
    clock.advance(0.001)
    assert kv.get("k") is None
    assert len(kv) == 0  # dropped when noticed


@pytest.mark.parametrize("max_items", [0, -1])
def test_memory_rejects_bad_capacity(max_items: int) -> None:
    with pytest.raises(ValueError, match="max_items"):
        MemoryKV(max_items=max_items)


def test_memory_thread_safety_smoke() -> None:
    kv = MemoryKV(max_items=50)
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            rng = random.Random(n)
            start.wait()
            for i in range(3_000):
                key = f"shared:{rng.randrange(80)}"
                mine = f"own:{n}"
                kv.set(mine, str(i).encode())
                kv.set(key, b"x", ttl=rng.choice([None, 60.0]))
                kv.set_many({f"shared:{rng.randrange(80)}": b"y" for _ in range(3)})
                kv.get_many([key, f"shared:{rng.randrange(80)}"])
                kv.delete(f"shared:{rng.randrange(80)}")
                if i % 500 == 0:
                    kv.clear_prefix("shared:1")
                got = kv.get(mine)
                # Another thread may have evicted it, but never corrupted it.
                assert got is None or got == str(i).encode()
                assert len(kv) <= 50
        except Exception as exc:  # reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so unlocked code would really race
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(kv) <= 50


# --- RedisKV only -----------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_namespaces_keys(redis_url: str) -> None:
    import redis

    ns_a, ns_b = f"test-kv-{uuid.uuid4().hex}", f"test-kv-{uuid.uuid4().hex}"
    a, b = RedisKV(redis_url, ns_a), RedisKV(redis_url, ns_b)
    raw = redis.Redis.from_url(redis_url)
    try:
        a.set("k", b"from a", ttl=60.0)
        b.set("k", b"from b")
        assert raw.get(f"{ns_a}:k") == b"from a"
        assert 0 < int(raw.pttl(f"{ns_a}:k")) <= 60_000
        assert raw.pttl(f"{ns_b}:k") == -1  # no expiry
        a.clear_prefix("")
        assert a.get("k") is None and b.get("k") == b"from b"
        b.clear_prefix("")
        assert list(raw.scan_iter(match=f"{ns_a}:*")) == []
        assert list(raw.scan_iter(match=f"{ns_b}:*")) == []
    finally:
        a.clear_prefix("")
        b.clear_prefix("")
        a.close()
        b.close()
        raw.close()


def test_redis_requires_namespace() -> None:
    with pytest.raises(ValueError, match="namespace"):
        RedisKV("redis://127.0.0.1:6379/0", "")


def test_redis_missing_dependency_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` raise ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'scalelab\[redis\]'"):
        RedisKV("redis://127.0.0.1:6379/0", "ns")
    with pytest.raises(RuntimeError, match="scalelab"):
        open_kv("redis://127.0.0.1:6379/0", "ns")
    # The in-process backend does not need redis at all.
    assert isinstance(open_kv(None, "ns"), MemoryKV)


# --- open_kv ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "memory://", "MEMORY://"])
def test_open_kv_memory(url: str | None) -> None:
    kv = open_kv(url, "ns", max_items=2)
    assert isinstance(kv, MemoryKV)
    kv.set_many({"a": b"1", "b": b"2", "c": b"3"})  # max_items is passed through
    assert kv.get_many(["a", "b", "c"]) == [None, b"2", b"3"]
    kv.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@127.0.0.1:6379/1",
        "rediss://cache.example.com:6380/0",
        "unix:///var/run/redis/redis.sock",
    ],
)
def test_open_kv_redis(url: str) -> None:
    # Constructing does not connect (redis-py connects lazily), so no server is needed.
    kv = open_kv(url, "ns")
    assert isinstance(kv, RedisKV)
    kv.close()


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("http://user:hunter2@cache:80", "http"),
        ("memcached://127.0.0.1:11211", "memcached"),
        ("localhost:6379", "localhost"),
        ("", ""),
    ],
)
def test_open_kv_rejects_other_schemes(url: str, scheme: str) -> None:
    with pytest.raises(ValueError, match="scheme") as exc_info:
        open_kv(url, "ns")
    assert repr(scheme) in str(exc_info.value)
    assert "hunter2" not in str(exc_info.value)  # never echo credentials


def test_kv_protocol_is_satisfied() -> None:
    # Static check for mypy, runtime smoke for pytest: both classes are usable as KV.
    backends: list[KV] = [MemoryKV(), RedisKV("redis://127.0.0.1:6379/0", "ns")]
    for backend in backends:
        backend.close()
