"""Prometheus rule files: YAML in, validated group and rule specs out.

The format is Prometheus's (`groups: [{name, interval, limit, rules: [...]}]`), read as
strictly as Prometheus 2.42 reads it: unknown fields and repeated keys are errors, and every
problem is reported at once, each naming the file, the line, the group and the rule (the way
`promtool check rules` does), so a bad reload can be fixed in one pass. Alert templates are
parsed here, at load time, so a misspelt function fails the load rather than an alert.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

import promql_parser
import yaml

from scalelab.monitoring.errors import BadData
from scalelab.monitoring.model import METRIC_NAME, valid_label_name, valid_metric_name
from scalelab.monitoring.params import duration_ms as parse_duration_ms
from scalelab.monitoring.params import format_duration
from scalelab.monitoring.template import Template, TemplateError
from scalelab.monitoring.template import parse as parse_template

GROUP_FIELDS = ("name", "interval", "limit", "rules")
RULE_FIELDS = ("record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations")


class RuleFileError(BadData):
    """One or more rule files are invalid; `errors` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def display_query(expr: str) -> str:
    """The expression as Prometheus prints it (its String(), e.g. `up == 0` for `up==0`),
    which the rules API shows; the text as written when that would take several lines."""
    try:
        pretty = promql_parser.parse(expr).prettify()
    except BaseException as exc:  # the Rust binding's panics are BaseExceptions
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        return expr.strip()
    return pretty if isinstance(pretty, str) and "\n" not in pretty else expr.strip()


@dataclass(frozen=True, slots=True)
class RecordingRuleSpec:
    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    query: str = field(default="", compare=False)  # display_query(expr), set when loaded

    @property
    def name(self) -> str:
        return self.record


@dataclass(frozen=True, slots=True)
class AlertingRuleSpec:
    alert: str
    expr: str
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # Parsed once at load time; keyed like labels/annotations.
    label_templates: dict[str, Template] = field(default_factory=dict, compare=False)
    annotation_templates: dict[str, Template] = field(default_factory=dict, compare=False)
    query: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return self.alert


RuleSpec = RecordingRuleSpec | AlertingRuleSpec


@dataclass(frozen=True, slots=True)
class GroupSpec:
    file: str
    name: str
    interval_ms: int | None  # None: the manager's default evaluation interval
    limit: int
    rules: tuple[RuleSpec, ...]


# ----------------------------------------------------------------------------- YAML walk


class _Errors:
    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[str] = []

    def add(
        self, node: yaml.Node | None, msg: str, group: str | None = None, rule: str = ""
    ) -> None:
        where = f"{node.start_mark.line + 1}:{node.start_mark.column + 1}: " if node else ""
        ctx = ""
        if group is not None:
            ctx = f'group "{group}", {rule}: ' if rule else f'group "{group}": '
        self.items.append(f"{self.file}: {where}{ctx}{msg}")


def _mapping(
    node: yaml.Node, errs: _Errors, what: str, allowed: Iterable[str]
) -> dict[str, yaml.Node] | None:
    """A mapping node's entries by key; unknown and repeated keys are reported."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return {}
    if not isinstance(node, yaml.MappingNode):
        errs.add(node, f"{what} must be a mapping, got {_kind(node)}")
        return None
    out: dict[str, yaml.Node] = {}
    allowed_set = set(allowed)
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key in out:
            errs.add(key_node, f'mapping key "{key}" already defined')
            continue
        if allowed_set and key not in allowed_set:
            errs.add(key_node, f"field {key} not found in {what}")
            continue
        out[key] = value_node
    return out


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def _scalar(node: yaml.Node | None, errs: _Errors, what: str) -> str | None:
    if node is None:
        return None
    if not isinstance(node, yaml.ScalarNode):
        errs.add(node, f"{what} must be a string, got {_kind(node)}")
        return None
    if node.tag == "tag:yaml.org,2002:null":
        return ""
    return str(node.value)


def _string_map(node: yaml.Node | None, errs: _Errors, what: str) -> dict[str, str]:
    if node is None:
        return {}
    entries = _mapping(node, errs, what, ())
    out: dict[str, str] = {}
    for key, value in (entries or {}).items():
        text = _scalar(value, errs, f"{what} value of {key}")
        if text is not None:
            out[key] = text
    return out


def parse_rules(text: str, file: str) -> list[GroupSpec]:
    """Parse one rule file's text; raises RuleFileError listing every problem."""
    errs = _Errors(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise RuleFileError([f"{file}: yaml: {exc}"]) from None
    groups: list[GroupSpec] = []
    if root is None:
        return groups
    top = _mapping(root, errs, "rule file", ("groups",))
    group_nodes = (top or {}).get("groups")
    if group_nodes is not None and not (
        isinstance(group_nodes, yaml.SequenceNode)
        or (isinstance(group_nodes, yaml.ScalarNode) and group_nodes.tag.endswith("null"))
    ):
        errs.add(group_nodes, f"groups must be a list, got {_kind(group_nodes)}")
        group_nodes = None
    seen: set[str] = set()
    for gnode in group_nodes.value if isinstance(group_nodes, yaml.SequenceNode) else []:
        group = _group(gnode, file, errs, seen)
        if group is not None:
            groups.append(group)
    if errs.items:
        raise RuleFileError(errs.items)
    return groups


def _group(gnode: yaml.Node, file: str, errs: _Errors, seen: set[str]) -> GroupSpec | None:
    g = _mapping(gnode, errs, "rule group", ())
    if g is None:
        return None
    name = _scalar(g.get("name"), errs, "group name") or ""
    for key in g.keys() - set(GROUP_FIELDS):
        errs.add(g[key], f"field {key} not found in rule group", name)
    if not name:
        errs.add(gnode, "Groupname must not be empty")
    elif name in seen:
        errs.add(gnode, f'groupname: "{name}" is repeated in the same file')
    seen.add(name)
    interval_ms = None
    if "interval" in g:
        interval_ms = _duration(g["interval"], errs, name, "") or None
    limit = 0
    if "limit" in g:
        raw = _scalar(g["limit"], errs, "limit")
        if raw is not None:
            try:
                limit = int(raw)
            except ValueError:
                errs.add(g["limit"], f"limit must be an integer, got {raw!r}", name)
    rules: list[RuleSpec] = []
    rule_nodes = g.get("rules")
    if isinstance(rule_nodes, yaml.SequenceNode):
        for index, rnode in enumerate(rule_nodes.value, start=1):
            rule = _rule(rnode, index, name, errs)
            if rule is not None:
                rules.append(rule)
    elif rule_nodes is not None and not rule_nodes.tag.endswith("null"):
        errs.add(rule_nodes, f"rules must be a list, got {_kind(rule_nodes)}", name)
    return GroupSpec(file, name, interval_ms, limit, tuple(rules))


def _duration(node: yaml.Node, errs: _Errors, group: str, rule: str) -> int:
    text = _scalar(node, errs, "duration")
    if text is None:
        return 0
    try:
        return parse_duration_ms(text)
    except ValueError as exc:
        errs.add(node, str(exc), group, rule)
        return 0


def _rule(rnode: yaml.Node, index: int, group: str, errs: _Errors) -> RuleSpec | None:
    r = _mapping(rnode, errs, "rule", ())
    if r is None:
        return None
    record = _scalar(r.get("record"), errs, "record") or ""
    alert = _scalar(r.get("alert"), errs, "alert") or ""
    expr = _scalar(r.get("expr"), errs, "expr") or ""
    rule = f'rule {index}, "{alert or record}"'
    before = len(errs.items)

    def bad(msg: str, node: yaml.Node | None = rnode) -> None:
        errs.add(node, msg, group, rule)

    for key in sorted(r.keys() - set(RULE_FIELDS)):
        bad(f"field {key} not found in rule", r[key])

    if record and alert:
        bad("only one of 'record' and 'alert' must be set")
    if not record and not alert:
        bad("one of 'record' or 'alert' must be set")
    if not expr:
        bad("field 'expr' must be set in rule", r.get("expr", rnode))
    else:
        try:
            promql_parser.parse(expr)
        except BaseException as exc:  # the Rust binding's panics are BaseExceptions
            if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                raise
            bad(f"could not parse expression: {exc}", r["expr"])
    for_ms = _duration(r["for"], errs, group, rule) if "for" in r else 0
    keep_ms = _duration(r["keep_firing_for"], errs, group, rule) if "keep_firing_for" in r else 0
    labels = _string_map(r.get("labels"), errs, "labels")
    annotations = _string_map(r.get("annotations"), errs, "annotations")
    if record:
        if annotations:
            bad("invalid field 'annotations' in recording rule")
        if for_ms:
            bad("invalid field 'for' in recording rule")
        if keep_ms:
            bad("invalid field 'keep_firing_for' in recording rule")
        if not valid_metric_name(record):
            bad(f"invalid recording rule name: {record}")
    for key in labels:
        if not valid_label_name(key) or key == METRIC_NAME:
            bad(f"invalid label name: {key}")
    for key in annotations:
        if not valid_label_name(key):
            bad(f"invalid annotation name: {key}")
    label_tmpls: dict[str, Template] = {}
    annotation_tmpls: dict[str, Template] = {}
    if alert:
        for kind, source, out in (
            ("label", labels, label_tmpls),
            ("annotation", annotations, annotation_tmpls),
        ):
            for key, text in source.items():
                try:
                    out[key] = parse_template(text, f"__alert_{alert}")
                except TemplateError as exc:
                    bad(f'{kind} "{key}": {exc}', None)
    if len(errs.items) > before:
        return None
    if record:
        return RecordingRuleSpec(record, expr, labels, display_query(expr))
    return AlertingRuleSpec(
        alert,
        expr,
        for_ms,
        keep_ms,
        labels,
        annotations,
        label_tmpls,
        annotation_tmpls,
        display_query(expr),
    )


def load_file(path: str) -> list[GroupSpec]:
    """Parse one rule file from disk."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError([f"{path}: {exc}"]) from None
    return parse_rules(text, path)


def expand_globs(patterns: Iterable[str], base_dir: str | None = None) -> list[str]:
    """Files matched by the patterns, each pattern's matches sorted, duplicates dropped."""
    files: list[str] = []
    for pattern in patterns:
        if base_dir is not None and not os.path.isabs(pattern):
            pattern = os.path.join(base_dir, pattern)
        for path in sorted(glob.glob(pattern)):
            if path not in files and os.path.isfile(path):
                files.append(path)
    return files


def load_files(paths: Iterable[str]) -> list[GroupSpec]:
    """Every group of every file; all files are checked before any error is raised."""
    groups: list[GroupSpec] = []
    errors: list[str] = []
    for path in paths:
        try:
            groups.extend(load_file(path))
        except RuleFileError as exc:
            errors.extend(exc.errors)
    if errors:
        raise RuleFileError(errors)
    return groups


__all__ = [
    "AlertingRuleSpec",
    "GroupSpec",
    "RecordingRuleSpec",
    "RuleFileError",
    "RuleSpec",
    "display_query",
    "expand_globs",
    "format_duration",
    "load_file",
    "load_files",
    "parse_duration_ms",
    "parse_rules",
]
