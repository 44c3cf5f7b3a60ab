"""Relabeling: the rules Prometheus applies to targets (`relabel_configs`) and to scraped
samples (`metric_relabel_configs`).

A rule joins the values of `source_labels` with `separator`, matches the result against an
anchored `regex`, then acts: `replace` writes `replacement` (with `$1`, `${name}` references
expanded as Go's `Regexp.Expand` does) into `target_label`; `keep`/`drop` filter the whole label
set; `labelmap`/`labeldrop`/`labelkeep` work on label *names*; `hashmod`, `lowercase`,
`uppercase`, `keepequal`, `dropequal` complete the set. Rules run in order; a set dropped by one
rule is gone (`relabel` returns None).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scalelab.monitoring import errors, model

DEFAULT_REGEX = "(.*)"
DEFAULT_SEPARATOR = ";"
DEFAULT_REPLACEMENT = "$1"

# A target_label for `replace` may itself be a template: letters, `_`, `$1`, `${name}`.
_TARGET_TEMPLATE = re.compile(r"(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+\Z")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]+")


class Action(enum.Enum):
    REPLACE = "replace"
    KEEP = "keep"
    DROP = "drop"
    KEEPEQUAL = "keepequal"
    DROPEQUAL = "dropequal"
    HASHMOD = "hashmod"
    LABELMAP = "labelmap"
    LABELDROP = "labeldrop"
    LABELKEEP = "labelkeep"
    LOWERCASE = "lowercase"
    UPPERCASE = "uppercase"


_NEEDS_TARGET = {
    Action.REPLACE,
    Action.HASHMOD,
    Action.LOWERCASE,
    Action.UPPERCASE,
    Action.KEEPEQUAL,
    Action.DROPEQUAL,
}
_PLAIN_TARGET = {
    Action.HASHMOD,
    Action.LOWERCASE,
    Action.UPPERCASE,
    Action.KEEPEQUAL,
    Action.DROPEQUAL,
}


@dataclass(frozen=True, slots=True)
class RelabelConfig:
    """One rule; equal configs compare equal, so a reload can tell what changed."""

    source_labels: tuple[str, ...] = ()
    separator: str = DEFAULT_SEPARATOR
    regex: str = DEFAULT_REGEX
    modulus: int = 0
    target_label: str = ""
    replacement: str = DEFAULT_REPLACEMENT
    action: Action = Action.REPLACE
    _compiled: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(f"(?s:{self.regex})")
        except re.error as exc:
            raise errors.BadData(f"invalid regex {self.regex!r}: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)

    @property
    def pattern(self) -> re.Pattern[str]:
        return self._compiled


def expand(template: str, match: re.Match[str]) -> str:
    """Go's `Regexp.ExpandString`: `$1`, `${1}`, `$name`, `${name}`, `$$`; unknown groups
    expand to "" and a `$` that starts no reference is kept as is."""
    out: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        if j + 1 < n and template[j + 1] == "$":
            out.append("$")
            i = j + 2
            continue
        name = ""
        end = j + 1
        if j + 1 < n and template[j + 1] == "{":
            close = template.find("}", j + 2)
            candidate = template[j + 2 : close] if close >= 0 else ""
            if close >= 0 and _NAME_CHARS.fullmatch(candidate):
                name, end = candidate, close + 1
        else:
            m = _NAME_CHARS.match(template, j + 1)
            if m:
                name, end = m.group(), m.end()
        if not name:
            out.append("$")
            i = j + 1
            continue
        out.append(_group(match, name))
        i = end
    return "".join(out)


def _group(match: re.Match[str], name: str) -> str:
    if name.isdigit():
        index = int(name)
        if index > (match.re.groups or 0):
            return ""
        return match.group(index) or ""
    if name not in match.re.groupindex:
        return ""
    return match.group(name) or ""


def _hashmod(value: str, modulus: int) -> int:
    """Prometheus folds the MD5 digest's low 8 bytes, big-endian, into a uint64."""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[8:], "big") % modulus


def relabel(labels: model.Labels, configs: Sequence[RelabelConfig]) -> model.Labels | None:
    """Apply the rules in order; None when a rule drops the set."""
    if not configs:
        return labels
    current: dict[str, str] = dict(labels)
    for cfg in configs:
        if not _apply(current, cfg):
            return None
    return model.labels_of(current)


def _apply(lb: dict[str, str], cfg: RelabelConfig) -> bool:
    """Mutate lb by one rule; False means the set is dropped."""
    action = cfg.action
    value = cfg.separator.join(lb.get(name, "") for name in cfg.source_labels)
    if action is Action.KEEP:
        return cfg.pattern.fullmatch(value) is not None
    if action is Action.DROP:
        return cfg.pattern.fullmatch(value) is None
    if action is Action.KEEPEQUAL:
        return value == lb.get(cfg.target_label, "")
    if action is Action.DROPEQUAL:
        return value != lb.get(cfg.target_label, "")
    if action is Action.REPLACE:
        m = cfg.pattern.fullmatch(value)
        if m is None:
            return True
        target = expand(cfg.target_label, m)
        if not model.valid_label_name(target):
            return True
        result = expand(cfg.replacement, m)
        if result:
            lb[target] = result
        else:
            lb.pop(target, None)
        return True
    if action is Action.LOWERCASE:
        _set(lb, cfg.target_label, value.lower())
    elif action is Action.UPPERCASE:
        _set(lb, cfg.target_label, value.upper())
    elif action is Action.HASHMOD:
        _set(lb, cfg.target_label, str(_hashmod(value, cfg.modulus)))
    elif action is Action.LABELMAP:
        for name, val in list(lb.items()):
            m = cfg.pattern.fullmatch(name)
            if m is not None:
                new = expand(cfg.replacement, m)
                if model.valid_label_name(new):
                    _set(lb, new, val)
    elif action is Action.LABELDROP:
        for name in [k for k in lb if cfg.pattern.fullmatch(k)]:
            del lb[name]
    elif action is Action.LABELKEEP:
        for name in [k for k in lb if not cfg.pattern.fullmatch(k)]:
            del lb[name]
    return True


def _set(lb: dict[str, str], name: str, value: str) -> None:
    if value:
        lb[name] = value
    else:
        lb.pop(name, None)


# --- parsing from YAML ---------------------------------------------------------------------

_FIELDS = {
    "source_labels",
    "separator",
    "regex",
    "modulus",
    "target_label",
    "replacement",
    "action",
}


def parse_relabel_configs(data: Any, where: str) -> tuple[RelabelConfig, ...]:
    """A YAML list of rules -> configs; errors.BadData names the offending field."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise errors.BadData(f"{where}: expected a list of relabel rules")
    return tuple(parse_relabel_config(item, f"{where}[{i}]") for i, item in enumerate(data))


def parse_relabel_config(data: Any, where: str) -> RelabelConfig:
    if not isinstance(data, Mapping):
        raise errors.BadData(f"{where}: expected a mapping")
    unknown = set(data) - _FIELDS
    if unknown:
        raise errors.BadData(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    action_text = _string(data.get("action", "replace"), f"{where}.action").lower()
    if not action_text:
        raise errors.BadData(f"{where}.action: relabel action cannot be empty")
    try:
        action = Action(action_text)
    except ValueError:
        raise errors.BadData(f"{where}.action: unknown relabel action {action_text!r}") from None
    sources = data.get("source_labels") or []
    if not isinstance(sources, list):
        raise errors.BadData(f"{where}.source_labels: expected a list of label names")
    source_labels = tuple(_string(s, f"{where}.source_labels") for s in sources)
    for name in source_labels:
        if not model.valid_label_name(name):
            raise errors.BadData(f"{where}.source_labels: {name!r} is not a valid label name")
    separator = _string(data.get("separator", DEFAULT_SEPARATOR), f"{where}.separator")
    regex = _string(data.get("regex", DEFAULT_REGEX), f"{where}.regex")
    target = _string(data.get("target_label", ""), f"{where}.target_label")
    replacement = _string(data.get("replacement", DEFAULT_REPLACEMENT), f"{where}.replacement")
    modulus = data.get("modulus", 0)
    if isinstance(modulus, bool) or not isinstance(modulus, int) or modulus < 0:
        raise errors.BadData(f"{where}.modulus: expected a non-negative integer")
    try:
        re.compile(regex)
    except re.error as exc:
        raise errors.BadData(f"{where}.regex: invalid regex {regex!r}: {exc}") from None
    _validate(action, where, source_labels, separator, regex, target, replacement, modulus)
    return RelabelConfig(
        source_labels=source_labels,
        separator=separator,
        regex=regex,
        modulus=modulus,
        target_label=target,
        replacement=replacement,
        action=action,
    )


def _validate(
    action: Action,
    where: str,
    source_labels: tuple[str, ...],
    separator: str,
    regex: str,
    target: str,
    replacement: str,
    modulus: int,
) -> None:
    """The combinations Prometheus refuses at load time rather than silently ignoring."""
    name = action.value
    if action is Action.HASHMOD and modulus == 0:
        raise errors.BadData(f"{where}.modulus: hashmod requires a non-zero modulus")
    if action in _NEEDS_TARGET and not target:
        raise errors.BadData(f"{where}.target_label: required for the {name} action")
    if action is Action.REPLACE and not _TARGET_TEMPLATE.match(target):
        raise errors.BadData(f"{where}.target_label: {target!r} is invalid for the replace action")
    if action in _PLAIN_TARGET and not model.valid_label_name(target):
        raise errors.BadData(f"{where}.target_label: {target!r} is invalid for the {name} action")
    if action in (Action.LOWERCASE, Action.UPPERCASE) and replacement != DEFAULT_REPLACEMENT:
        raise errors.BadData(f"{where}.replacement: cannot be set for the {name} action")
    if action in (Action.KEEPEQUAL, Action.DROPEQUAL) and (
        regex != DEFAULT_REGEX or replacement != DEFAULT_REPLACEMENT
    ):
        raise errors.BadData(f"{where}: 'regex' and 'replacement' cannot be set for {name}")
    if action is Action.LABELMAP and not _TARGET_TEMPLATE.match(replacement):
        raise errors.BadData(
            f"{where}.replacement: {replacement!r} is invalid for the labelmap action"
        )
    if action in (Action.LABELDROP, Action.LABELKEEP) and (
        source_labels
        or target
        or modulus
        or separator != DEFAULT_SEPARATOR
        or replacement != DEFAULT_REPLACEMENT
    ):
        raise errors.BadData(f"{where}: the {name} action takes only 'regex', no other fields")


def _string(value: Any, where: str) -> str:
    """YAML scalars as Go's yaml decoder gives them to a string field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise errors.BadData(f"{where}: expected a string, got {type(value).__name__}")
