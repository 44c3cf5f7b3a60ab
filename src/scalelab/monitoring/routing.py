"""Alertmanager's configuration, the part that decides where an alert goes: the routing tree
(first matching child wins unless it says `continue`), inhibit rules, and the receivers list,
validated with errors that name the place (`route.routes[1].group_wait: ...`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from scalelab.monitoring.errors import BadData
from scalelab.monitoring.model import (
    Labels,
    Matcher,
    MatchType,
    matches_all,
    valid_label_name,
)
from scalelab.monitoring.receivers import (
    ConfigError,
    GlobalConfig,
    Integration,
    check_keys,
    get_bool,
    get_str,
    parse_duration,
    parse_receivers,
)
from scalelab.monitoring.silences import parse_matcher

# --- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A node of the routing tree, its options already inherited from its parents."""

    receiver: str
    matchers: tuple[Matcher, ...] = ()
    group_by: tuple[str, ...] = ()
    group_by_all: bool = False
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    continue_: bool = False
    routes: tuple[Route, ...] = ()
    key: str = "{}"
    index: int = 0

    def match(self, labels: Labels) -> list[Route]:
        """The routes an alert lands in: the deepest matching ones, first match wins unless
        that child has `continue: true`."""
        if not matches_all(labels, self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            hit = child.match(labels)
            found.extend(hit)
            if hit and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.group_by_all:
            return dict(labels)
        return {name: labels[name] for name in self.group_by if name in labels}

    def walk(self) -> Iterator[Route]:
        yield self
        for child in self.routes:
            yield from child.walk()


@dataclass(frozen=True)
class InhibitRule:
    """Firing alerts matching `source` mute alerts matching `target` with equal `equal` labels."""

    source_matchers: tuple[Matcher, ...]
    target_matchers: tuple[Matcher, ...]
    equal: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotifyConfig:
    route: Route
    receivers: Mapping[str, tuple[Integration, ...]]
    inhibit_rules: tuple[InhibitRule, ...] = ()
    globals: GlobalConfig = field(default_factory=GlobalConfig)


_ROUTE_KEYS = ["receiver", "group_by", "group_wait", "group_interval", "repeat_interval"]
_ROUTE_KEYS += ["matchers", "match", "match_re", "continue", "routes"]
_INHIBIT_KEYS = ["source_matchers", "target_matchers", "source_match", "source_match_re"]
_INHIBIT_KEYS += ["target_match", "target_match_re", "equal"]


def _matchers(cfg: Mapping[str, Any], where: str, prefix: str = "") -> tuple[Matcher, ...]:
    """`matchers: ['a="b"']`, and the older `match: {a: b}` / `match_re: {a: b.*}` forms."""
    out: list[Matcher] = []
    texts = cfg.get(f"{prefix}matchers") or []
    if not isinstance(texts, list):
        raise ConfigError(f"{where}: {prefix}matchers must be a list of strings")
    for i, text in enumerate(texts):
        try:
            out.append(parse_matcher(text))
        except BadData as exc:
            raise ConfigError(f"{where}: {prefix}matchers[{i}]: {exc}") from None
    for key, kind in (("match", MatchType.EQUAL), ("match_re", MatchType.REGEX)):
        pairs = cfg.get(f"{prefix}{key}") or {}
        if not isinstance(pairs, Mapping):
            raise ConfigError(f"{where}: {prefix}{key} must be a mapping")
        for name, value in pairs.items():
            if not isinstance(name, str) or not valid_label_name(name):
                raise ConfigError(f"{where}: {prefix}{key}: invalid label name {name!r}")
            try:
                out.append(Matcher(kind, name, str(value)))
            except ValueError as exc:
                raise ConfigError(f"{where}: {prefix}{key}: {exc}") from None
    return tuple(sorted(out, key=lambda m: (m.name, m.type.value, m.value)))


def _label_names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of label names")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} has duplicate names: {value}")
    return list(value)


def _route(cfg: Any, parent: Route | None, where: str, counter: list[int]) -> Route:
    check_keys(cfg, _ROUTE_KEYS, where)
    matchers = _matchers(cfg, where)
    if parent is None and matchers:
        raise ConfigError(f"{where}: the root route must not have matchers")
    if parent is None and cfg.get("continue"):
        raise ConfigError(f"{where}: the root route cannot have continue: true")
    base = parent or Route(receiver="")
    receiver = get_str(cfg, "receiver", where, base.receiver or None)
    group_by, group_by_all = base.group_by, base.group_by_all
    if "group_by" in cfg:
        names = _label_names(cfg["group_by"], f"{where}: group_by")
        group_by_all = "..." in names
        if group_by_all and len(names) > 1:
            raise ConfigError(f"{where}: group_by '...' cannot be combined with other labels")
        bad = [n for n in names if n != "..." and not valid_label_name(n)]
        if bad:
            raise ConfigError(f"{where}: group_by has invalid label names {bad}")
        group_by = () if group_by_all else tuple(names)
    timings: dict[str, float] = {}
    for name in ("group_wait", "group_interval", "repeat_interval"):
        value = getattr(base, name)
        if name in cfg:
            value = parse_duration(cfg[name], f"{where}: {name}")
        if value == 0 and name != "group_wait":
            raise ConfigError(f"{where}: {name} cannot be zero")
        timings[name] = value
    key = "{}"
    if parent is not None:
        key = f"{parent.key}/{{{','.join(str(m) for m in matchers)}}}"
    node = Route(
        receiver=receiver,
        matchers=matchers,
        group_by=group_by,
        group_by_all=group_by_all,
        continue_=get_bool(cfg, "continue", where, False),
        group_wait=timings["group_wait"],
        group_interval=timings["group_interval"],
        repeat_interval=timings["repeat_interval"],
        key=key,
        index=counter[0],
    )
    counter[0] += 1
    children = cfg.get("routes") or []
    if not isinstance(children, list):
        raise ConfigError(f"{where}: routes must be a list")
    subs = tuple(_route(c, node, f"{where}.routes[{i}]", counter) for i, c in enumerate(children))
    return replace(node, routes=subs)


def parse_config(source: str | Mapping[str, Any]) -> NotifyConfig:
    """Alertmanager's YAML (or the mapping it loads to): global, route, receivers,
    inhibit_rules. Every error names where it is."""
    if isinstance(source, str):
        try:
            source = yaml.safe_load(source)
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}") from None
    if not isinstance(source, Mapping):
        raise ConfigError("the notifier config must be a mapping")
    check_keys(source, ["global", "route", "receivers", "inhibit_rules"], "config")
    g = GlobalConfig.from_config(source.get("global"))
    receivers = parse_receivers(source.get("receivers") or [], g)
    if "route" not in source:
        raise ConfigError("config: route is required")
    root = _route(source["route"], None, "route", [0])
    for r in root.walk():
        if r.receiver not in receivers:
            raise ConfigError(f"route {r.key}: undefined receiver {r.receiver!r}")
    rules = []
    raw_rules = source.get("inhibit_rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError("inhibit_rules must be a list")
    for i, rc in enumerate(raw_rules):
        where = f"inhibit_rules[{i}]"
        check_keys(rc, _INHIBIT_KEYS, where)
        equal = _label_names(rc.get("equal", []), f"{where}: equal")
        rule = InhibitRule(_matchers(rc, where, "source_"), _matchers(rc, where, "target_"))
        rules.append(replace(rule, equal=tuple(equal)))
    return NotifyConfig(root, receivers, tuple(rules), g)


def load_config(path: str | Path) -> NotifyConfig:
    return parse_config(Path(path).read_text(encoding="utf-8"))
