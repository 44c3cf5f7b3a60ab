"""Rule unit tests in `promtool test rules` format, run on our rules, engine and storage.

A test file names rule files and lists test groups; each group loads input series written in
promtool's expanding notation (`0+10x100 _ 1 stale`), evaluates every rule group from time 0
to the last `eval_time` in steps of `evaluation_interval`, checks the firing alerts named in
`alert_rule_test` at the evaluation at or before each `eval_time`, and finally runs
`promql_expr_test` queries. The semantics are promtool 2.42's, quirks included (input series
`interval` has no default; only firing alerts are compared; annotations must match in full),
so the same file passes or fails the same way under both. Run it as
`python -m scalelab.monitoring.ruletest FILE...`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from scalelab.monitoring.alert_state import AlertState
from scalelab.monitoring.errors import MonitoringError
from scalelab.monitoring.gofmt import go_float_e
from scalelab.monitoring.memory import MemoryStorage
from scalelab.monitoring.model import STALE_NAN, Labels
from scalelab.monitoring.promql import Engine
from scalelab.monitoring.rulefile import RuleFileError, format_duration, parse_duration_ms
from scalelab.monitoring.rulegroup import AlertingRule, Evaluator, engine_evaluator
from scalelab.monitoring.rules import RuleManager

FILE_FIELDS = {"rule_files", "evaluation_interval", "group_eval_order", "tests"}
GROUP_FIELDS = {"interval", "input_series", "name", "alert_rule_test", "promql_expr_test"}
GROUP_FIELDS |= {"external_labels", "external_url"}
LOOKBACK_MS = 300_000


class TestFileError(Exception):
    """The test file itself is malformed (promtool fails the whole file)."""


@dataclass
class GroupResult:
    """One test group's outcome: passed when it produced no errors."""

    index: int
    name: str
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.errors


@dataclass
class FileResult:
    path: str
    groups: list[GroupResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # file-level problems

    @property
    def passed(self) -> bool:
        return not self.errors and all(g.passed for g in self.groups)


# ------------------------------------------------------------------- series notation


_NUM = r"[+-]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)"
_ITEM = re.compile(
    rf"(?P<blank>_)(?:x(?P<bn>\d+))?|(?P<stale>stale)(?:x(?P<sn>\d+))?|"
    rf"(?P<v>{_NUM})(?:(?P<d>[+-](?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?))?x(?P<n>\d+))?",
    re.IGNORECASE,
)


def _float(text: str) -> float:
    return float(text)


def expand_values(text: str) -> list[float | None]:
    """promtool's expanding notation: `a+bxn` is a, a+b, ... a+n*b (accumulated, as Go
    does), `axn` is n+1 copies, `_` a missing sample, `_xn` n of them, `stale` a marker."""
    out: list[float | None] = []
    for item in text.split():
        m = _ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"bad series value {item!r}")
        if m["blank"]:
            out.extend([None] * (int(m["bn"]) if m["bn"] else 1))
        elif m["stale"]:
            out.extend([STALE_NAN] * (int(m["sn"]) + 1 if m["sn"] else 1))
        else:
            value = _float(m["v"])
            out.append(value)
            if m["n"] is not None:
                delta = _float(m["d"]) if m["d"] else 0.0
                for _ in range(int(m["n"])):
                    value += delta
                    out.append(value)
    return out


_LABEL = re.compile(
    r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`)\s*(,)?"
)


def parse_metric(text: str) -> Labels:
    """A series as promtool writes it: `name{a="1", b='2'}`, `name`, or `{__name__="x"}`."""
    m = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*", text)
    assert m is not None
    pairs: dict[str, str] = {}
    if m.group(1):
        pairs["__name__"] = m.group(1)
    rest = text[m.end() :]
    if rest.startswith("{"):
        pos = 1
        while True:
            close = re.compile(r"\s*}\s*\Z").match(rest, pos)
            if close:
                break
            lm = _LABEL.match(rest, pos)
            if lm is None:
                raise ValueError(f"cannot parse series {text!r}")
            pairs[lm.group(1)] = _unquote(lm.group(2))
            pos = lm.end()
            if lm.group(3) is None and not re.compile(r"\s*}").match(rest, pos):
                raise ValueError(f"cannot parse series {text!r}")
    elif rest.strip():
        raise ValueError(f"cannot parse series {text!r}")
    return tuple(sorted(pairs.items()))


def _unquote(quoted: str) -> str:
    body = quoted[1:-1]
    if quoted[0] == "`":
        return body
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), body)


# ----------------------------------------------------------------------------- running


@dataclass
class _Appender:
    """Rule output into MemoryStorage, visible at commit like a TSDB appender."""

    storage: MemoryStorage
    pending: list[tuple[Labels, int, float]] = field(default_factory=list)

    def append(self, labels: Labels, t: int, v: float) -> None:
        self.pending.append((labels, t, v))

    def commit(self) -> None:
        for labels, t, v in self.pending:
            self.storage.add(labels, t, v)
        self.pending.clear()

    def rollback(self) -> None:
        self.pending.clear()


def _map(value: Any, what: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise TestFileError(f"{what} must be a mapping")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise TestFileError(f"{what} must be a list")
    return value


def _duration(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    try:
        return parse_duration_ms(str(value))
    except ValueError as exc:
        raise TestFileError(str(exc)) from None


def _check_fields(obj: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise TestFileError(f"field {unknown[0]} not found in {what}")


def run_file(
    path: str, make_evaluator: Callable[[MemoryStorage, int], Evaluator] | None = None
) -> FileResult:
    """Run every test group of one test file."""
    result = FileResult(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=yaml.BaseLoader)  # every scalar a string, as Go reads it
        doc = _map(doc, "test file")
        _check_fields(doc, FILE_FIELDS, "test file")
        eval_interval = _duration(doc.get("evaluation_interval"), 60_000)
        order = [str(n) for n in _list(doc.get("group_eval_order"), "group_eval_order")]
        if len(set(order)) != len(order):
            dup = next(n for n in order if order.count(n) > 1)
            raise TestFileError(f"group name repeated in evaluation order: {dup}")
        base = os.path.dirname(os.path.abspath(path))
        rule_files = [
            p if os.path.isabs(p) else os.path.join(base, p)
            for p in map(str, _list(doc.get("rule_files"), "rule_files"))
        ]
        tests = _list(doc.get("tests"), "tests")
    except (OSError, yaml.YAMLError, TestFileError) as exc:
        result.errors.append(str(exc))
        return result
    for index, test in enumerate(tests):
        name = str(test.get("name", "")) if isinstance(test, dict) else ""
        group = GroupResult(index, name)
        try:
            group.errors = _run_group(
                _map(test, "test group"), rule_files, eval_interval, order, make_evaluator
            )
        except TestFileError as exc:
            group.errors = [str(exc)]
        result.groups.append(group)
    return result


def _default_evaluator(storage: MemoryStorage, eval_interval_ms: int) -> Evaluator:
    engine = Engine(storage, lookback_delta_ms=LOOKBACK_MS, subquery_step_ms=eval_interval_ms)
    return engine_evaluator(engine)


def _run_group(
    tg: dict[str, Any],
    rule_files: list[str],
    eval_interval: int,
    order: list[str],
    make_evaluator: Callable[[MemoryStorage, int], Evaluator] | None,
) -> list[str]:
    _check_fields(tg, GROUP_FIELDS, "test group")
    interval = _duration(tg.get("interval"))
    test_name = str(tg.get("name", ""))
    raw_alerts = _list(tg.get("alert_rule_test"), "alert_rule_test")
    raw_exprs = _list(tg.get("promql_expr_test"), "promql_expr_test")
    alert_tests = [_map(a, "alert_rule_test item") for a in raw_alerts]
    expr_tests = [_map(p, "promql_expr_test item") for p in raw_exprs]
    for a in alert_tests:
        if not a.get("alertname"):
            where = f" (in TestGroup {test_name})" if test_name else ""
            raise TestFileError(
                "an item under alert_rule_test misses required attribute alertname at "
                f"eval_time {format_duration(_duration(a.get('eval_time')))}{where}"
            )
    times = [_duration(a.get("eval_time")) for a in alert_tests]
    times += [_duration(p.get("eval_time")) for p in expr_tests]
    maxt = max(times, default=0)

    storage = MemoryStorage()
    for item in _list(tg.get("input_series"), "input_series"):
        item = _map(item, "input_series item")
        try:
            labels = parse_metric(str(item.get("series", "")))
            values = expand_values(str(item.get("values", "")))
        except ValueError as exc:
            raise TestFileError(str(exc)) from None
        seen: set[int] = set()
        for i, v in enumerate(values):
            t = i * interval
            if v is not None and t <= maxt and t not in seen:  # first sample at a time wins
                seen.add(t)
                storage.add(labels, t, v)

    evaluator = (make_evaluator or _default_evaluator)(storage, eval_interval)
    manager = RuleManager(
        rule_files,
        evaluator,
        lambda: _Appender(storage),
        clock=lambda: 0.0,
        external_labels={
            str(k): str(v) for k, v in _map(tg.get("external_labels"), "external_labels").items()
        },
        external_url=str(tg.get("external_url", "")),
        default_interval_s=(interval or eval_interval) / 1000,
    )
    try:
        manager.load()
    except RuleFileError as exc:
        return exc.errors
    rank = {n: i for i, n in enumerate(order)}
    groups = sorted(manager.groups, key=lambda g: rank.get(g.name, 0))

    errors: list[str] = []
    pending = sorted(set(_duration(a.get("eval_time")) for a in alert_tests))
    ts = 0
    while ts <= maxt:
        eval_errors = []
        for g in groups:
            manager.evaluate_group_at(g, ts)
            for r in g.rules:
                if r.status.last_error:
                    when = format_duration(ts)
                    eval_errors.append(
                        f"    rule: {r.name}, time: {when}, err: {r.status.last_error}"
                    )
        if eval_errors:
            return errors + eval_errors
        while pending and ts <= pending[0] < ts + eval_interval:
            t = pending.pop(0)
            errors += _check_alerts(groups, [a for a in alert_tests if _dur(a) == t], test_name)
        ts += eval_interval
        if eval_interval <= 0:
            break
    errors += _check_exprs(expr_tests, evaluator)
    return errors


def _dur(a: dict[str, Any]) -> int:
    return _duration(a.get("eval_time"))


_Got = list[tuple[Labels, Labels]]


def _check_alerts(groups: Sequence[Any], cases: list[dict[str, Any]], test_name: str) -> list[str]:
    errors = []
    for case in cases:
        alertname = str(case["alertname"])
        got: _Got = sorted(
            (a.labels, a.annotations)
            for g in groups
            for r in g.rules
            if isinstance(r, AlertingRule) and r.name == alertname
            for a in r.active_alerts()
            if a.state is AlertState.FIRING
        )
        exp: _Got = []
        for e in _list(case.get("exp_alerts"), "exp_alerts"):
            e = _map(e, "exp_alerts item")
            lbls = {str(k): str(v) for k, v in _map(e.get("exp_labels"), "exp_labels").items()}
            lbls["alertname"] = alertname
            anns = _map(e.get("exp_annotations"), "exp_annotations")
            exp.append((tuple(sorted(lbls.items())), tuple(sorted(anns.items()))))
        exp.sort()
        if exp != got:
            prefix = f"    name: {test_name},\n" if test_name else ""
            errors.append(
                f"{prefix}    alertname: {alertname}, time: {format_duration(_dur(case))}, \n"
                f"        exp:{_alerts_text(exp)}, \n        got:{_alerts_text(got)}"
            )
    return errors


def _alerts_text(alerts: _Got) -> str:
    lines = ["["]
    for i, (labels, annots) in enumerate(alerts):
        lines += [f"    {i}:", f"      Labels:{_labels_text(labels)}"]
        lines.append(f"      Annotations:{_labels_text(annots)}")
    lines.append("    ]")
    return "\n            ".join(lines) if alerts else "[]"


def _go_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _check_exprs(cases: list[dict[str, Any]], evaluator: Evaluator) -> list[str]:
    errors = []
    for case in cases:
        expr = str(case.get("expr", ""))
        t = _dur(case)
        where = f'    expr: "{expr}", time: {format_duration(t)}'
        try:
            got = sorted(evaluator(expr, t))
        except MonitoringError as exc:
            errors.append(f"{where}, err: {exc}")
            continue
        exp: list[tuple[Labels, float]] = []
        try:
            for s in _list(case.get("exp_samples"), "exp_samples"):
                s = _map(s, "exp_samples item")
                label_text = str(s.get("labels", ""))
                try:
                    labels = parse_metric(label_text)
                except ValueError as exc:
                    raise ValueError(f'labels "{label_text}": {exc}') from None
                exp.append((labels, _float(str(s.get("value", "0")))))
        except ValueError as exc:
            errors.append(f"{where}, err: {exc}")
            continue
        exp.sort()
        same = len(exp) == len(got) and all(
            a[0] == b[0] and a[1] == b[1] and not math.isnan(a[1])
            for a, b in zip(exp, got, strict=False)
        )
        if not same:
            errors.append(
                f"{where},\n        exp: {_samples_text(exp)}\n        got: {_samples_text(got)}"
            )
    return errors


def _samples_text(samples: list[tuple[Labels, float]]) -> str:
    if not samples:
        return "nil"
    return ", ".join(f"{_labels_text(lb)} {go_float_e(v).upper()}" for lb, v in samples)


def _labels_text(labels: Labels) -> str:
    """Go's labels.String(): `{__name__="up", job="x"}`."""
    return "{" + ", ".join(f"{k}={_go_quote(v)}" for k, v in labels) + "}"


def format_result(result: FileResult) -> str:
    """promtool's report: `Unit Testing:  FILE`, then SUCCESS or FAILED and every error."""
    lines = [f"Unit Testing:  {result.path}"]
    if result.passed:
        lines.append("  SUCCESS")
        return "\n".join(lines)
    lines.append("  FAILED:")
    lines += result.errors
    for g in result.groups:
        label = f"test group {g.index}" + (f" ({g.name})" if g.name else "")
        lines.append(f"  {label}: {'ok' if g.passed else 'FAILED'}")
        lines += [e + "\n" for e in g.errors]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`promtool test rules` over our implementation: exit 1 when any file fails."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m scalelab.monitoring.ruletest TEST_FILE...", file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        result = run_file(path)
        print(format_result(result))
        print()
        failed |= not result.passed
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
