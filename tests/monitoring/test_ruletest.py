"""Our rule evaluation agrees with `promtool test rules` (Prometheus 2.42) on rules_data/.

Every test group of every file under rules_data/tests is run by our runner and, on its own
(a one-group copy of the file), by promtool; the pass/fail outcomes must match, and must match
the group's name: groups named "xfail: ..." are written to fail. promtool is a required tool
(Debian's `prometheus` package): without it these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from scalelab.monitoring import ruletest
from scalelab.monitoring.model import STALE_NAN, is_stale
from scalelab.monitoring.ruletest import expand_values, parse_metric

DATA = Path(__file__).parent / "rules_data"
TEST_FILES = sorted((DATA / "tests").glob("*.yml"))


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install -y prometheus) to check agreement with Prometheus"
        )
    return path


def _run_promtool(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _single_group_files(path: Path, tmp: Path) -> list[tuple[str, Path]]:
    """One copy of the test file per test group, rule file paths made absolute."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    rule_files = [str((path.parent / p).resolve()) for p in doc.get("rule_files") or []]
    out = []
    for i, group in enumerate(doc.get("tests") or []):
        single = dict(doc, rule_files=rule_files, tests=[group])
        target = tmp / f"{path.stem}_{i}.yml"
        target.write_text(yaml.safe_dump(single, sort_keys=False))
        out.append((str(group.get("name", "")), target))
    return out


def test_there_are_enough_cases() -> None:
    groups = [g for f in TEST_FILES for g in yaml.safe_load(f.read_text())["tests"]]
    assert len(TEST_FILES) >= 8
    assert len(groups) >= 25
    assert any(str(g.get("name", "")).startswith("xfail") for g in groups)


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.stem)
def test_agrees_with_promtool(path: Path, tmp_path: Path) -> None:
    _promtool()
    singles = _single_group_files(path, tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:  # promtool runs while ours does
        whole_run = pool.submit(_run_promtool, path)
        single_runs = [pool.submit(_run_promtool, single) for _, single in singles]
        ours = ruletest.run_file(str(path))
        theirs_whole = whole_run.result()
        theirs_singles = [f.result() for f in single_runs]
    report = ruletest.format_result(ours)
    assert ours.passed == (theirs_whole.returncode == 0), (
        report + "\n--- promtool ---\n" + theirs_whole.stdout + theirs_whole.stderr
    )
    assert len(singles) == len(ours.groups)
    for (name, _), result, theirs in zip(singles, ours.groups, theirs_singles, strict=True):
        expect_pass = not name.startswith("xfail")
        detail = (
            f"{path.name} group {result.index} ({name}): ours "
            f"{'passed' if result.passed else 'failed'}, promtool rc={theirs.returncode}\n"
            + "\n".join(result.errors)
            + "\n--- promtool ---\n"
            + theirs.stdout
            + theirs.stderr
        )
        assert result.passed == (theirs.returncode == 0), detail
        assert result.passed == expect_pass, detail


def test_runner_reports_like_promtool() -> None:
    result = ruletest.run_file(str(DATA / "tests" / "availability_test.yml"))
    text = ruletest.format_result(result)
    assert text.startswith("Unit Testing:  ")
    assert "FAILED" in text
    assert "alertname: InstanceDown, time: 6m" in text
    assert [g.passed for g in result.groups] == [True, False, False, False, True]


def test_main_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert ruletest.main([str(DATA / "tests" / "eval_order_test.yml")]) == 1
    assert "Unit Testing:" in capsys.readouterr().out
    assert ruletest.main([]) == 2


def test_a_passing_file_passes(tmp_path: Path) -> None:
    doc = yaml.safe_load((DATA / "tests" / "multi_file_test.yml").read_text())
    doc["rule_files"] = [str(DATA / "rules" / "service_*.yml")]
    doc["tests"] = doc["tests"][:1]
    path = tmp_path / "ok.yml"
    path.write_text(yaml.safe_dump(doc))
    result = ruletest.run_file(str(path))
    assert result.passed, ruletest.format_result(result)
    assert ruletest.format_result(result).endswith("SUCCESS")
    assert _run_promtool(path).returncode == 0


def test_malformed_test_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("rule_files: []\nbogus: 1\ntests: []\n")
    result = ruletest.run_file(str(path))
    assert not result.passed
    assert "bogus" in result.errors[0]
    assert _run_promtool(path).returncode != 0


def test_expand_values_notation() -> None:
    assert expand_values("-2+4x3") == [-2, 2, 6, 10]
    assert expand_values("1-2x4") == [1, -1, -3, -5, -7]
    assert expand_values("7x2") == [7, 7, 7]
    assert expand_values("1 _x3 _ 2") == [1, None, None, None, None, 2]
    values = expand_values("1 stale")
    assert values[0] == 1 and isinstance(values[1], float) and is_stale(values[1])
    assert is_stale(STALE_NAN)
    assert expand_values("0.1+0.1x2")[-1] == 0.1 + 0.1 + 0.1
    with pytest.raises(ValueError):
        expand_values("1 abc")


def test_parse_metric() -> None:
    assert parse_metric("up{job=\"a\", instance='b'}") == (
        ("__name__", "up"),
        ("instance", "b"),
        ("job", "a"),
    )
    assert parse_metric("x") == (("__name__", "x"),)
    assert parse_metric("{}") == ()
    assert parse_metric("") == ()
    assert parse_metric('{a="q\\"uote"}') == (("a", 'q"uote'),)
    for bad in ('x{job="a"', "x y", "{a=b}"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def test_promtool_is_the_expected_version() -> None:
    out = subprocess.run(
        [_promtool(), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    text = out.stdout + out.stderr
    assert "promtool, version 2." in text, text
    major_minor = text.split("version ")[1].split(".")[:2]
    assert int(major_minor[1]) >= 42, "keep_firing_for needs Prometheus 2.42 or later"
    assert os.access(_promtool(), os.X_OK)
