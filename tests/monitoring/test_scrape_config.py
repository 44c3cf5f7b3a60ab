"""Scrape configuration parsing, relabeling and target labels: pure functions, table-driven."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from scalelab.monitoring import errors, model
from scalelab.monitoring.discovery import (
    TargetGroup,
    build_targets,
    populate_labels,
    read_target_file,
)
from scalelab.monitoring.relabel import (
    Action,
    RelabelConfig,
    expand,
    parse_relabel_config,
    relabel,
)
from scalelab.monitoring.scrape_config import (
    ScrapeConfig,
    format_duration,
    load_config,
    load_config_file,
    parse_duration,
)

L = model.labels_of


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15),
        ("1m", 60),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("1m30s500ms", 90.5),
        ("2d", 172_800),
        ("1w", 604_800),
        ("1y", 365 * 86_400),
        ("0", 0),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "f") == seconds


@pytest.mark.parametrize("text", ["", "15", "1.5s", "s", "1m1h", "-1s", "15 s", "1M", 15, None])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(errors.BadData, match=r"^a\.b: .* is not a valid duration"):
        parse_duration(text, "a.b")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (15, "15s"), (60, "1m"), (90, "1m30s"), (5400, "1h30m"), (0.5, "500ms")]
    + [(86_400 * 90, "90d"), (86_400 * 14, "2w"), (86_400 * 365, "1y")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- config ---------------------------------------------------------------------------------


def test_defaults_follow_prometheus() -> None:
    cfg = load_config("scrape_configs:\n  - job_name: a\n")
    g = cfg.global_config
    assert (g.scrape_interval, g.scrape_timeout, g.evaluation_interval) == (60, 10, 60)
    job = cfg.scrape_configs[0]
    assert job == ScrapeConfig(job_name="a")
    assert (job.metrics_path, job.scheme, job.honor_labels, job.honor_timestamps) == (
        "/metrics",
        "http",
        False,
        True,
    )


def test_empty_config_is_valid() -> None:
    assert load_config("").scrape_configs == ()


def test_job_inherits_global_and_timeout_is_capped_by_its_interval() -> None:
    cfg = load_config(
        """
global: {scrape_interval: 30s, scrape_timeout: 20s, external_labels: {region: eu}}
scrape_configs:
  - job_name: inherits
  - job_name: fast
    scrape_interval: 5s
  - job_name: own
    scrape_interval: 1m
    scrape_timeout: 45s
"""
    )
    assert cfg.global_config.external_labels == (("region", "eu"),)
    got = {j.job_name: (j.scrape_interval, j.scrape_timeout) for j in cfg.scrape_configs}
    assert got == {"inherits": (30, 20), "fast": (5, 5), "own": (60, 45)}


def test_full_job() -> None:
    cfg = load_config(
        """
global: {sample_limit: 100}
rule_files: [rules.yml]
alerting: {alertmanagers: []}
scrape_configs:
  - job_name: node
    scrape_interval: 15s
    scrape_timeout: 5s
    metrics_path: /probe
    scheme: https
    params: {module: [http_2xx], x: [a, b]}
    honor_labels: true
    honor_timestamps: false
    label_limit: 30
    static_configs:
      - targets: ['a:9100', 'b:9100']
        labels: {env: prod, port: 9100}
    file_sd_configs:
      - files: [targets/*.json]
        refresh_interval: 1m
    basic_auth: {username: u, password: p}
    tls_config: {insecure_skip_verify: true}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
    metric_relabel_configs:
      - action: drop
        source_labels: [__name__]
        regex: go_.*
""",
        base_dir="/etc/prom",
    )
    job = cfg.scrape_configs[0]
    assert (job.scrape_interval, job.scrape_timeout, job.metrics_path, job.scheme) == (
        15,
        5,
        "/probe",
        "https",
    )
    assert job.params == (("module", ("http_2xx",)), ("x", ("a", "b")))
    assert job.honor_labels and not job.honor_timestamps
    assert (job.sample_limit, job.label_limit) == (100, 30)
    assert job.static_configs[0].targets == ("a:9100", "b:9100")
    assert job.static_configs[0].labels == (("env", "prod"), ("port", "9100"))
    assert job.file_sd_configs[0].files == ("/etc/prom/targets/*.json",)
    assert job.file_sd_configs[0].refresh_interval == 60
    assert job.basic_auth is not None and job.basic_auth.username == "u"
    assert job.tls_config.insecure_skip_verify
    assert job.relabel_configs[0].target_label == "__param_target"
    assert job.metric_relabel_configs[0].action is Action.DROP


def test_load_config_file_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(
        "scrape_configs:\n  - job_name: a\n    file_sd_configs: [{files: [sd/x.yml]}]\n"
    )
    job = load_config_file(path).scrape_configs[0]
    assert job.file_sd_configs[0].files == (str(tmp_path / "sd/x.yml"),)
    assert job.file_sd_configs[0].refresh_interval == 300


def _job(body: str) -> str:
    return "scrape_configs:\n  - job_name: j\n" + "".join(
        f"    {line}\n" for line in body.split("\n")
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("scrape_configs: [{}]", r"scrape_configs\[0\]\.job_name: required"),
        (
            "scrape_configs: [{job_name: a}, {job_name: a}]",
            r"scrape_configs\[1\]\.job_name: found multiple scrape configs with job name 'a'",
        ),
        ("foo: 1", r"config: unknown field\(s\) foo"),
        ("global: {scrape_interval: 1x}", r"global\.scrape_interval: '1x' is not a valid"),
        ("global: {scrape_interval: 5s, scrape_timeout: 10s}", r"global\.scrape_timeout: "),
        ("global: {bogus: 1}", r"global: unknown field\(s\) bogus"),
        ("scrape_configs: {}", r"scrape_configs: expected a list"),
        ("[1, 2]", r"config: expected a mapping"),
        ("a: [", r"config is not valid YAML"),
        (_job("scrape_interval: 10s\nscrape_timeout: 20s"), r'job "j"\)\.scrape_timeout: scrape'),
        (_job("scrape_interval: 0s"), r'job "j"\)\.scrape_interval: must be greater'),
        (_job("scheme: ftp"), r"\.scheme: must be http or https"),
        (_job("honor_labels: 'yes'"), r"\.honor_labels: expected true or false"),
        (_job("sample_limit: -1"), r"\.sample_limit: expected a non-negative integer"),
        (_job("foo: bar"), r'\(job "j"\): unknown field\(s\) foo'),
        (_job("kubernetes_sd_configs: []"), r"\.kubernetes_sd_configs: service discovery not"),
        (_job("static_configs: [{targets: ['a/b:1']}]"), r"static_configs\[0\]\.targets: 'a/b:1'"),
        (_job("static_configs: [{targets: [1]}]"), r"static_configs\[0\]\.targets: 1 is not"),
        (_job("static_configs: [{targets: [a], labels: {1x: y}}]"), r"\.labels: '1x' is not"),
        (_job("static_configs: [{targets: [a], foo: 1}]"), r"static_configs\[0\]: unknown"),
        (_job("file_sd_configs: [{files: [x.txt]}]"), r"file_sd_configs\[0\]\.files: 'x\.txt'"),
        (_job("file_sd_configs: [{files: []}]"), r"file_sd_configs\[0\]\.files: expected"),
        (_job("file_sd_configs: [{files: [a.json], refresh_interval: 0s}]"), r"refresh_interval"),
        (_job("basic_auth: {username: u, password: p, password_file: f}"), r"basic_auth: at most"),
        (
            _job("basic_auth: {username: u}\nauthorization: {credentials: t}"),
            r"at most one of basic_auth and authorization",
        ),
        (_job("tls_config: {cert_file: c}"), r"tls_config: cert_file and key_file"),
        (_job("params: {a: b}"), r"\.params\.a: expected a list of strings"),
        (_job("relabel_configs: [{action: nope}]"), r"relabel_configs\[0\]\.action: unknown"),
        (_job("relabel_configs: [{action: ''}]"), r"relabel_configs\[0\]\.action: .*cannot be"),
        (_job("relabel_configs: [{regex: '('}]"), r"relabel_configs\[0\]\.regex: invalid regex"),
        (_job("relabel_configs: [{action: hashmod, target_label: x}]"), r"\.modulus: hashmod"),
        (_job("relabel_configs: [{action: replace}]"), r"\.target_label: required for the repl"),
        (_job("relabel_configs: [{target_label: 1bad}]"), r"\.target_label: '1bad' is invalid"),
        (
            _job("relabel_configs: [{action: uppercase, target_label: x, replacement: y}]"),
            r"\.replacement: cannot be set for the uppercase",
        ),
        (
            _job("relabel_configs: [{action: keepequal, target_label: x, regex: a}]"),
            r"'regex' and 'replacement' cannot be set for keepequal",
        ),
        (
            _job("relabel_configs: [{action: labeldrop, source_labels: [a]}]"),
            r"labeldrop action takes only 'regex'",
        ),
        (_job("relabel_configs: [{source_labels: [1a], target_label: x}]"), r"source_labels: '1a'"),
        (_job("relabel_configs: [{foo: 1}]"), r"relabel_configs\[0\]: unknown field\(s\) foo"),
        (_job("metric_relabel_configs: {}"), r"metric_relabel_configs: expected a list"),
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(errors.BadData, match=message):
        load_config(text)


# --- relabeling -----------------------------------------------------------------------------


def _rule(**kw: object) -> RelabelConfig:
    return parse_relabel_config(kw, "r")


def _md5mod(value: str, modulus: int) -> int:
    digest = hashlib.md5(value.encode()).digest()
    return int.from_bytes(digest[-8:], "big") % modulus


BASE = L({"__name__": "m", "a": "x", "b": "y", "__meta_zone": "z1", "__meta_rack": "r7"})


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # replace: defaults join source labels with ';' and copy them whole
        ({"source_labels": ["a", "b"], "target_label": "c"}, {**dict(BASE), "c": "x;y"}),
        (
            {"source_labels": ["a", "b"], "separator": "-", "target_label": "c"},
            {**dict(BASE), "c": "x-y"},
        ),
        (
            {
                "source_labels": ["a"],
                "regex": "(x)",
                "replacement": "${1}1-$1",
                "target_label": "c",
            },
            {**dict(BASE), "c": "x1-x"},
        ),
        # $1x names a group "1x" (Go's rule): it expands to "", so c is not set
        ({"source_labels": ["a"], "replacement": "$1x", "target_label": "c"}, dict(BASE)),
        (
            {"source_labels": ["a"], "replacement": "$$1", "target_label": "c"},
            {**dict(BASE), "c": "$1"},
        ),
        (
            {
                "source_labels": ["a"],
                "regex": "(?P<v>.)",
                "replacement": "<$v>",
                "target_label": "c",
            },
            {**dict(BASE), "c": "<x>"},
        ),
        # the regex is anchored: "x" does not match "xx", and a miss changes nothing
        ({"source_labels": ["a"], "regex": "", "target_label": "c"}, dict(BASE)),
        # an empty replacement result deletes the target label
        ({"source_labels": ["nope"], "target_label": "a"}, {k: v for k, v in BASE if k != "a"}),
        # target_label may be a template
        (
            {"source_labels": ["b"], "regex": "(.*)", "target_label": "t_$1", "replacement": "1"},
            {**dict(BASE), "t_y": "1"},
        ),
        ({"source_labels": ["a"], "regex": "x|q", "action": "keep"}, dict(BASE)),
        ({"source_labels": ["a"], "regex": "q", "action": "keep"}, None),
        ({"source_labels": ["a"], "regex": "x", "action": "drop"}, None),
        ({"source_labels": ["a"], "regex": "xx", "action": "drop"}, dict(BASE)),
        ({"source_labels": ["missing"], "regex": "", "action": "drop"}, None),
        ({"source_labels": ["a", "b"], "regex": "x;y", "action": "Drop"}, None),
        (
            {"regex": "__meta_(.+)", "action": "labelmap"},
            {**dict(BASE), "zone": "z1", "rack": "r7"},
        ),
        (
            {"regex": "__meta_(z.*)", "replacement": "m_$1", "action": "labelmap"},
            {**dict(BASE), "m_zone": "z1"},
        ),
        ({"regex": "__meta_.*|b", "action": "labeldrop"}, {"__name__": "m", "a": "x"}),
        ({"regex": "__name__|a", "action": "labelkeep"}, {"__name__": "m", "a": "x"}),
        (
            {"source_labels": ["a"], "target_label": "u", "action": "uppercase"},
            {**dict(BASE), "u": "X"},
        ),
        (
            {"source_labels": ["__meta_rack"], "target_label": "l", "action": "lowercase"},
            {**dict(BASE), "l": "r7"},
        ),
        (
            {"source_labels": ["a"], "target_label": "s", "modulus": 7, "action": "hashmod"},
            {**dict(BASE), "s": str(_md5mod("x", 7))},
        ),
        ({"source_labels": ["a"], "target_label": "a", "action": "keepequal"}, dict(BASE)),
        ({"source_labels": ["a"], "target_label": "b", "action": "keepequal"}, None),
        ({"source_labels": ["a"], "target_label": "b", "action": "dropequal"}, dict(BASE)),
        ({"source_labels": ["a"], "target_label": "a", "action": "dropequal"}, None),
    ],
)
def test_relabel(rule: dict[str, object], expected: dict[str, str] | None) -> None:
    got = relabel(BASE, [_rule(**rule)])
    assert got == (None if expected is None else L(expected))


def test_rules_run_in_order_and_stop_at_a_drop() -> None:
    rules = [
        _rule(source_labels=["a"], target_label="c", replacement="from-a"),
        _rule(source_labels=["c"], regex="from-a", action="drop"),
        _rule(source_labels=["a"], target_label="never", replacement="set"),
    ]
    assert relabel(BASE, rules) is None
    assert relabel(BASE, rules[:1]) == L({**dict(BASE), "c": "from-a"})


def test_relabel_without_rules_is_identity() -> None:
    assert relabel(BASE, []) is BASE


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$1", "ab"),
        ("${1}", "ab"),
        ("${1}x", "abx"),
        ("$1x", ""),
        ("$2", "c"),
        ("$9", ""),
        ("$name", "c"),
        ("${name}-", "c-"),
        ("$nope", ""),
        ("$$", "$"),
        ("a$", "a$"),
        ("$-", "$-"),
        ("${", "${"),
        ("${1", "${1"),
        ("plain", "plain"),
    ],
)
def test_expand_follows_go(template: str, expected: str) -> None:
    m = re.fullmatch(r"(ab)(?P<name>c)", "abc")
    assert m is not None
    assert expand(template, m) == expected


# --- target labels --------------------------------------------------------------------------


def _cfg(extra: str = "") -> ScrapeConfig:
    text = "scrape_configs:\n  - job_name: node\n    scrape_interval: 15s\n" + "".join(
        f"    {line}\n" for line in extra.split("\n") if line
    )
    return load_config(text).scrape_configs[0]


def test_target_labels_as_prometheus_builds_them() -> None:
    spec = populate_labels(_cfg(), L({"__address__": "h:9100", "env": "prod"}))
    assert spec is not None
    assert spec.labels == L({"job": "node", "instance": "h:9100", "env": "prod"})
    assert dict(spec.discovered_labels) == {
        "__address__": "h:9100",
        "__metrics_path__": "/metrics",
        "__scheme__": "http",
        "__scrape_interval__": "15s",
        "__scrape_timeout__": "10s",
        "env": "prod",
        "job": "node",
    }
    assert spec.url == "http://h:9100/metrics"
    assert (spec.interval, spec.timeout) == (15, 10)


def test_params_and_param_labels_build_the_url() -> None:
    cfg = _cfg(
        "metrics_path: /probe\nparams: {module: [http_2xx], x: [a, b]}\nrelabel_configs:\n"
        "  - {source_labels: [__address__], target_label: __param_target}\n"
        "  - {source_labels: [__param_target], target_label: instance}\n"
        "  - {target_label: __address__, replacement: 'blackbox:9115'}"
    )
    spec = populate_labels(cfg, L({"__address__": "example.com"}))
    assert spec is not None
    assert spec.url == ("http://blackbox:9115/probe?module=http_2xx&target=example.com&x=a&x=b")
    assert spec.labels == L({"job": "node", "instance": "example.com"})
    assert ("__param_module", "http_2xx") in spec.discovered_labels


def test_relabeling_can_set_scheme_path_interval_and_job() -> None:
    cfg = _cfg(
        "relabel_configs:\n"
        "  - {target_label: __scheme__, replacement: https}\n"
        "  - {target_label: __metrics_path__, replacement: /m}\n"
        "  - {target_label: __scrape_interval__, replacement: 1m}\n"
        "  - {target_label: __scrape_timeout__, replacement: 30s}\n"
        "  - {source_labels: [team], target_label: job}\n"
        "  - {action: labelmap, regex: __meta_(.*)}"
    )
    spec = populate_labels(cfg, L({"__address__": "h:1", "team": "db", "__meta_az": "a"}))
    assert spec is not None
    assert spec.url == "https://h:1/m"
    assert (spec.interval, spec.timeout) == (60, 30)
    assert spec.labels == L({"job": "db", "instance": "h:1", "team": "db", "az": "a"})


def test_discovered_job_label_wins_over_the_job_name() -> None:
    spec = populate_labels(_cfg(), L({"__address__": "h:1", "job": "custom"}))
    assert spec is not None and model.get(spec.labels, "job") == "custom"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("  - {target_label: __address__, replacement: 'a/b'}", "not a valid hostname"),
        ("  - {action: labeldrop, regex: __address__}", "no address"),
        ("  - {target_label: __scrape_interval__, replacement: 5s}", "greater than scrape"),
        ("  - {target_label: __scrape_interval__, replacement: 5x}", "not a valid duration"),
        ("  - {target_label: __scheme__, replacement: ftp}", "invalid scheme"),
    ],
)
def test_unscrapeable_targets_are_errors(rules: str, message: str) -> None:
    cfg = _cfg("relabel_configs:\n" + rules)
    with pytest.raises(errors.BadData, match=message):
        populate_labels(cfg, L({"__address__": "h:1"}))
    result = build_targets(cfg, [TargetGroup("0", ("h:1",))])
    assert not result.active and not result.dropped
    assert message in result.errors[0]


def test_build_targets_drops_and_deduplicates() -> None:
    cfg = _cfg("relabel_configs:\n  - {source_labels: [env], regex: dev, action: drop}")
    groups = [
        TargetGroup("0", ("a:1", "b:1"), L({"env": "prod"})),
        TargetGroup("1", ("a:1",), L({"env": "prod"})),
        TargetGroup("2", ("c:1",), L({"env": "dev"})),
    ]
    result = build_targets(cfg, groups)
    assert [s.url for s in result.active] == ["http://a:1/metrics", "http://b:1/metrics"]
    assert len(result.dropped) == 1
    assert ("__address__", "c:1") in result.dropped[0]
    assert ("job", "node") in result.dropped[0]


def test_read_target_file_json_and_yaml(tmp_path: Path) -> None:
    js = tmp_path / "t.json"
    js.write_text('[{"targets": ["a:1", "b:1"], "labels": {"env": "prod"}}, {"targets": []}]')
    groups = read_target_file(str(js))
    assert groups[0].targets == ("a:1", "b:1")
    assert groups[0].labels == L({"env": "prod", "__meta_filepath": str(js)})
    assert groups[1].targets == ()
    yml = tmp_path / "t.yml"
    yml.write_text("- targets: ['c:1']\n")
    assert read_target_file(str(yml))[0].targets == ("c:1",)
    yml.write_text("")
    assert read_target_file(str(yml)) == []


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.json", "{", "not valid JSON"),
        ("t.yml", "a: [", "not valid YAML"),
        ("t.json", '{"targets": []}', "expected a list of target groups"),
        ("t.json", '[{"targets": ["a/b"]}]', "not a valid hostname"),
        ("t.json", '[{"targets": ["a"], "labels": {"0": "x"}}]', "not a valid label name"),
        ("t.json", '[{"targets": ["a"], "extra": 1}]', "unknown field"),
        ("t.json", "[1]", "expected a mapping"),
    ],
)
def test_read_target_file_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(errors.BadData, match=message):
        read_target_file(str(path))
