"""`scalelab monitoring ...` over real TSDB files, through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from scalelab.cli import main
from scalelab.monitoring import chunk
from scalelab.monitoring.tsdb import TSDB

RULES = Path(__file__).parent / "rules_data" / "tests"
HOUR = 3_600_000


def fill(directory: Path) -> TSDB:
    """A TSDB whose head spans 5 hours, so maintenance persists two 2-hour blocks."""
    db = TSDB(directory, block_range_ms=2 * HOUR)
    app = db.appender()
    for i in range(0, 5 * HOUR, 60_000):
        app.append((("__name__", "temp"), ("room", "lab")), i, 20.0 + (i % 7))
    app.commit()
    return db


def test_dump_block_wal_and_chunk(tmp_path: Path) -> None:
    db = fill(tmp_path / "tsdb")
    written = db.maintain()
    raw = [m for m in written if m.resolution_ms == 0]
    assert len(raw) == 1 and raw[0].num_samples == 120  # [0, 2h) persisted; the rest in head
    db.close()
    runner = CliRunner()
    block_dir = tmp_path / "tsdb" / "blocks" / raw[0].id
    out = runner.invoke(main, ["monitoring", "dump-block", str(block_dir)])
    assert out.exit_code == 0, out.output
    assert 'room="lab"' in out.output and raw[0].id in out.output

    out = runner.invoke(main, ["monitoring", "dump-wal", str(tmp_path / "tsdb" / "head" / "wal")])
    assert out.exit_code == 0, out.output
    assert "temp" in out.output

    data = chunk.encode(np.array([1000, 2000, 3000]), np.array([1.0, 1.5, 1.5]))
    (tmp_path / "c.bin").write_bytes(data)
    out = runner.invoke(main, ["monitoring", "dump-chunk", str(tmp_path / "c.bin")])
    assert out.exit_code == 0 and "samples=3" in out.output, out.output
    (tmp_path / "bad.bin").write_bytes(data[:3])
    out = runner.invoke(main, ["monitoring", "dump-chunk", str(tmp_path / "bad.bin")])
    assert out.exit_code != 0 and "Traceback" not in out.output


def test_test_rules_passes_and_fails_like_promtool(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(
        "groups:\n  - name: g\n    rules:\n"
        "      - alert: Down\n        expr: up == 0\n        for: 2m\n"
    )
    (tmp_path / "ok_test.yml").write_text(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n"
        "  - interval: 1m\n    input_series:\n"
        "      - series: 'up{job=\"a\"}'\n        values: '0x5'\n"
        "    alert_rule_test:\n      - eval_time: 1m\n        alertname: Down\n"
        "      - eval_time: 3m\n        alertname: Down\n"
        "        exp_alerts:\n          - exp_labels: {job: a}\n"
    )
    runner = CliRunner()
    passing = runner.invoke(main, ["monitoring", "test-rules", str(tmp_path / "ok_test.yml")])
    assert passing.exit_code == 0, passing.output
    failing = runner.invoke(
        main, ["monitoring", "test-rules", str(RULES / "availability_test.yml")]
    )
    assert failing.exit_code == 1, failing.output  # the file's "xfail:" groups fail


def test_serve_reports_a_broken_config_file_without_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: sum((\n")
    env = {"SCALELAB_DATA": str(tmp_path / "data"), "SCALELAB_MONITORING_RULE_FILES": str(rules)}
    out = CliRunner().invoke(main, ["serve", "monitoring", "--port", "0"], env=env)
    assert out.exit_code == 1, out.output
    assert "unclosed left parenthesis" in out.output and "Traceback" not in out.output
    TSDB(tmp_path / "data" / "monitoring" / "tsdb").close()  # the failed start let go of it
