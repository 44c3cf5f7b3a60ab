"""bench/message_queue.py and its load generator: the pure parts (percentiles, aggregation,
ratios, the NATS frame parser), so a broken bench shows before the lead's long run does."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mq = _load("message_queue")
load = _load("_mq_load")


# -- percentiles -----------------------------------------------------------------------------


def test_percentiles_of_one_to_a_hundred() -> None:
    out = load.percentiles([float(i) for i in range(100, 0, -1)])
    assert out["count"] == 100
    assert (out["p50_ms"], out["p99_ms"], out["p99.9_ms"], out["max_ms"]) == (50, 99, 100, 100)
    assert out["mean_ms"] == 50.5


def test_percentiles_of_nothing() -> None:
    assert load.percentiles([]) == {"count": 0}


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300))
def test_percentiles_are_nearest_rank(values: list[float]) -> None:
    out = load.percentiles(values)
    for p, key in ((50, "p50_ms"), (99, "p99_ms")):
        v = out[key]
        need = max(1, math.ceil(len(values) * p / 100))
        rounded = sorted(round(x, 3) for x in values)
        assert v in rounded
        assert sum(x <= v for x in rounded) >= need  # at least p% at or below
        assert sum(x < v for x in rounded) < need  # and it is the smallest such value
    assert out["max_ms"] == round(max(values), 3)


# -- aggregation, figures, ratios ------------------------------------------------------------


def _proc(start: float, end: float, messages: int, size: int, cpu: float) -> dict[str, Any]:
    return {
        "start": start,
        "end": end,
        "messages": messages,
        "bytes": messages * size,
        "cpu_seconds": cpu,
        "errors": 0,
    }


def test_aggregate_spans_first_start_to_last_end() -> None:
    out = mq.aggregate([_proc(10.0, 12.0, 1000, 100, 0.5), _proc(11.0, 14.0, 3000, 100, 1.0)])
    assert out["seconds"] == 4.0
    assert out["messages"] == 4000 and out["msgs_per_s"] == 1000.0
    assert out["MB_per_s"] == 0.1
    assert out["client_cpu_seconds"] == 1.5
    assert out["errors"] == 0 and out["incomplete"] is False


def test_aggregate_flags_a_timed_out_consumer() -> None:
    short = {**_proc(0.0, 1.0, 5, 100, 0.1), "timed_out": True}
    assert mq.aggregate([short, _proc(0.0, 1.0, 10, 100, 0.1)])["incomplete"] is True


def _result(produce_mb: float, *, errors: int = 0, incomplete: bool = False) -> dict[str, Any]:
    phase = {
        "msgs_per_s": produce_mb * 10_000,
        "MB_per_s": produce_mb,
        "errors": errors,
        "incomplete": incomplete,
    }
    return {
        "sizes": {"100B": {"produce": phase, "consume": {**phase, "errors": 0}}},
        "latency": {"linger_ms_0": {"p50_ms": 2.0, "p99_ms": 8.0}, "linger_ms_5": {"error": "x"}},
    }


def test_figures_leave_out_failed_phases() -> None:
    assert "produce_100B_MB_per_s" in mq.figures(_result(50.0))
    bad = mq.figures(_result(50.0, errors=3))
    assert "produce_100B_MB_per_s" not in bad and "consume_100B_MB_per_s" in bad
    assert "produce_100B_msgs_per_s" not in mq.figures(_result(50.0, incomplete=True))
    assert mq.figures({"latency": {"linger_ms_0": {"error": "x"}}}) == {}
    assert mq.figures(_result(1.0))["latency_linger_ms_0_p99_ms"] == 8.0
    assert "latency_linger_ms_5_p50_ms" not in mq.figures(_result(1.0))


def test_ratios_are_ours_over_each_peer() -> None:
    figs = {
        name: mq.figures(_result(mb))
        for name, mb in (
            ("scalelab", 40.0),
            ("scalelab-nofsync", 80.0),
            ("tansu", 100.0),
            ("nats", 20.0),
        )
    }
    out = mq.ratios(figs)
    assert out["scalelab/tansu"]["produce_100B_MB_per_s"] == 0.4
    assert out["scalelab/nats"]["produce_100B_MB_per_s"] == 2.0
    assert out["scalelab/scalelab-nofsync"]["produce_100B_MB_per_s"] == 0.5
    assert out["scalelab-nofsync/tansu"]["latency_linger_ms_0_p99_ms"] == 1.0
    assert "scalelab-nofsync/scalelab-nofsync" not in out
    assert mq.ratios({"tansu": figs["tansu"]}).keys() == {"how_to_read"}


def test_ratio_of_missing_figures_is_none() -> None:
    assert mq.ratio(None, 2.0) is None and mq.ratio(1.0, 0.0) is None
    assert mq.ratio(1.0, 3.0) == 0.3333


def test_disk_fractions_use_produce_only() -> None:
    figs = {"scalelab": mq.figures(_result(400.0))}
    out = mq.disk_fractions(figs, {"write_MB_per_s": 500.0})
    assert out["scalelab"] == {"produce_100B_MB_per_s/raw_write": 0.8}
    assert "skipped" in mq.disk_fractions(figs, {"error": "disk full"})


def test_raw_disk_writes_and_reads_back(tmp_path: Path) -> None:
    out = mq.raw_disk(tmp_path, 3 * mq.MiB + 5)
    assert out["bytes"] == 3 * mq.MiB + 5
    assert out["write_MB_per_s"] > 0 and out["read_cold_MB_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # the file is removed


def _args(**kw: Any) -> argparse.Namespace:
    base = {
        "quick": True,
        "servers": "scalelab,tansu",
        "processes": 2,
        "scale": None,
        "latency_linger_ms": "0,5",
    }
    return argparse.Namespace(**{**base, **kw})


def test_plan_counts_and_servers() -> None:
    plan = mq.Plan.from_args(_args(scale=0.5))
    assert plan.servers == ("scalelab", "tansu")
    assert plan.counts == {100: 75_000, 1024: 15_000}
    assert plan.latency_lingers == (0, 5)
    assert mq.Plan.from_args(_args(quick=False)).counts[1024] == 1_000_000
    with pytest.raises(SystemExit):
        mq.Plan.from_args(_args(servers="scalelab,kafka"))


def test_every_server_states_its_durability() -> None:
    assert set(mq.DURABILITY) == set(mq.SERVERS)


# -- the NATS frame parser -------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.sent = bytearray()

    def write(self, data: bytes) -> None:
        self.sent += data


ACK = b'{"stream":"S","seq":1}\r\n'  # a payload holding CRLF: framing is by length
STATUS = b"NATS/1.0 408 Request Timeout\r\n\r\n"
STREAM = b"".join(
    [
        b"INFO {}\r\n",
        b"MSG _INBOX.a 1 %d\r\n%s\r\n" % (len(ACK), ACK),
        b"PING\r\n",
        b"MSG deliver.x 2 $JS.ACK.S.c.1.1.1.0.0 3\r\nabc\r\n",
        b"HMSG _INBOX.b 1 %d %d\r\n%s\r\n" % (len(STATUS), len(STATUS), STATUS),
        b"-ERR 'Slow Consumer'\r\n",
    ]
)


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_nats_parser_survives_any_split(cuts: list[int]) -> None:
    got: list[tuple[bytes, bytes, bytes, bool]] = []

    async def feed() -> Any:
        conn = load.NatsConn(lambda *m: got.append(m))
        transport = _Transport()
        conn.transport = transport
        bounds = [0, *sorted(cuts), len(STREAM)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            conn.data_received(STREAM[a:b])
        return conn, transport

    conn, transport = asyncio.run(feed())
    assert got == [
        (b"_INBOX.a", b"", ACK, False),
        (b"deliver.x", b"$JS.ACK.S.c.1.1.1.0.0", b"abc", False),
        (b"_INBOX.b", b"", STATUS, True),
    ]
    assert bytes(transport.sent) == b"PONG\r\n"
    assert conn.error == "-ERR 'Slow Consumer'"
    assert conn.buf == bytearray()


def test_paired_fractions_take_the_raw_write_measured_just_before() -> None:
    phase = {"MB_per_s": 300.0, "raw_disk_just_before": {"write_MB_per_s": 250.0},
             "fraction_of_raw_write_just_before": 1.2}  # fmt: skip
    results = {
        "scalelab": {"sizes": {"1KiB": {"produce_batched": phase}, "100B": {"error": "x"}}},
        "nats": {"sizes": {"1KiB": {"produce": {"MB_per_s": 50.0}}}},
    }
    assert mq.paired_fractions(results) == {
        "scalelab": {
            "produce_batched_1KiB": {
                "MB_per_s": 300.0,
                "raw_write_MB_per_s": 250.0,
                "fraction": 1.2,
            }  # fmt: skip
        }
    }
