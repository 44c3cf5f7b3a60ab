"""The OpenMetrics project's parser conformance suite: a parser that claims OpenMetrics must
accept exactly the cases marked shouldParse and reject all the others."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from scalelab.monitoring.errors import ParseError
from scalelab.monitoring.exposition import parse
from scalelab.monitoring.model import MetricMetadata, MetricType, is_stale, labels_of

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# A copy of ../shared/data/openmetrics/parsers kept in the repository (see its README).
CASES_DIR = Path(__file__).resolve().parent / "data" / "openmetrics" / "parsers"
if not CASES_DIR.is_dir():
    # A missing corpus must fail the run, not shrink it to nothing.
    raise FileNotFoundError(f"OpenMetrics conformance cases not found at {CASES_DIR}")
CASES = sorted(p for p in CASES_DIR.iterdir() if p.is_dir())


def _spec(case: Path) -> dict[str, object]:
    spec: dict[str, object] = json.loads((case / "test.json").read_text())
    return spec


def test_the_whole_suite_is_there() -> None:
    verdicts = [_spec(case)["shouldParse"] for case in CASES]
    assert (len(verdicts), verdicts.count(True), verdicts.count(False)) == (211, 44, 167)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case(case: Path) -> None:
    spec = _spec(case)
    assert spec["type"] == "text"
    data = (case / str(spec["file"])).read_bytes()
    if spec["shouldParse"]:
        exposition = parse(data, OPENMETRICS)
        for labels, value, timestamp in exposition.samples:
            assert labels == labels_of(labels)
            assert not (math.isnan(value) and is_stale(value))
            assert timestamp is None or isinstance(timestamp, int)
    else:
        with pytest.raises(ParseError, match=r"^line \d+: "):
            parse(data, OPENMETRICS)


def _parsed(name: str) -> list[tuple[tuple[tuple[str, str], ...], float, int | None]]:
    return parse((CASES_DIR / name / "metrics").read_bytes(), OPENMETRICS).samples


def test_timestamps_are_truncated_milliseconds() -> None:
    assert [t for _, _, t in _parsed("timestamps")] == [
        0,
        0,
        1100,  # 1.1 * 1000 == 1100.0000000000002 in float64
        2**63 - 1,  # 1.2e22 ms does not fit int64: clamped
        1_500_000,
        1_234_567_890_000,
    ]


def test_escapes_and_hashes_in_label_values() -> None:
    values = [dict(labels)["foo"] for labels, _, _ in _parsed("escaping")]
    assert values == ['b"a\nr', "b\\a\\z", 'b"a\nr # ', "b\\a\\z # "]
    assert [dict(labels)["foo"] for labels, _, _ in _parsed("hash_in_label_value")] == [
        "foo # bar",
        "} foo # bar # ",
    ]


def test_exemplars_are_dropped_and_created_kept() -> None:
    assert _parsed("counter_exemplars") == [((("__name__", "a_total"),), 0.0, 123_000)]
    names = [dict(labels)["__name__"] for labels, _, _ in _parsed("counter_unit")]
    assert names == ["cc_seconds_total", "cc_seconds_created"]


def test_le_values_take_their_openmetrics_spelling() -> None:
    les = [dict(labels)["le"] for labels, _, _ in _parsed("histogram_noncanonical")[:-2]]
    assert les == [
        "0.0",
        "1e-11",
        "1e-10",
        "0.0001",
        "0.00011",
        "0.0011",
        "0.011",
        "1.0",
        "100000.0",
        "1e+10",
        "1e+11",
        "+Inf",
    ]


def test_metadata_of_a_family() -> None:
    data = (CASES_DIR / "counter_unit" / "metrics").read_bytes()
    assert parse(data, OPENMETRICS).metadata == {
        "cc_seconds": MetricMetadata(MetricType.COUNTER, help="A counter", unit="seconds")
    }
