"""Service discovery and target labels: from a job's static and file-based target groups to
the targets a scrape pool runs, labeled the way Prometheus labels them.

File discovery (`file_sd_configs`) reads JSON or YAML files holding a list of
`{targets: [...], labels: {...}}` groups. Instead of inotify it compares each matched file's
(mtime, size, inode) on every poll, which is cheap enough to run on each scrape tick as well as
on `refresh_interval`; a file that fails to parse keeps its previous groups (as Prometheus does)
so one bad write never drops a fleet of targets.

`populate_labels` builds a target's labels: the group's labels and the target's `__address__`,
then the job's defaults (`job`, `__scheme__`, `__metrics_path__`, `__scrape_interval__`,
`__scrape_timeout__`, `__param_<name>`) where discovery left them unset; those are the
"discovered labels". `relabel_configs` run next, `instance` defaults to `__address__`, the URL
is read off the `__` labels, and finally every label starting with `__` is removed.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml

from scalelab.monitoring import errors, model
from scalelab.monitoring.relabel import relabel
from scalelab.monitoring.scrape_config import (
    FileSDConfig,
    ScrapeConfig,
    check_target_address,
    config_items,
    format_duration,
    parse_duration,
    parse_labels,
    parse_targets,
)

log = logging.getLogger(__name__)

ADDRESS = "__address__"
SCHEME = "__scheme__"
METRICS_PATH = "__metrics_path__"
SCRAPE_INTERVAL = "__scrape_interval__"
SCRAPE_TIMEOUT = "__scrape_timeout__"
PARAM_PREFIX = "__param_"
FILEPATH = "__meta_filepath"


@dataclass(frozen=True, slots=True)
class TargetGroup:
    """Targets sharing labels, as one discovery source reports them."""

    source: str
    targets: tuple[str, ...]
    labels: model.Labels = ()


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What a scrape loop needs to know about its target; `key` is the target's identity."""

    labels: model.Labels
    discovered_labels: model.Labels
    url: str
    interval: float
    timeout: float

    @property
    def key(self) -> tuple[model.Labels, str]:
        return (self.labels, self.url)


@dataclass
class Targets:
    active: list[TargetSpec] = field(default_factory=list)
    dropped: list[model.Labels] = field(default_factory=list)  # their discovered labels
    errors: list[str] = field(default_factory=list)


def static_groups(cfg: ScrapeConfig) -> list[TargetGroup]:
    return [TargetGroup(str(i), sc.targets, sc.labels) for i, sc in enumerate(cfg.static_configs)]


def build_targets(cfg: ScrapeConfig, groups: Sequence[TargetGroup]) -> Targets:
    """Every group's targets through `populate_labels`; duplicates (same key) kept once."""
    out = Targets()
    seen: set[tuple[model.Labels, str]] = set()
    for group in groups:
        for address in group.targets:
            discovered = model.with_label(group.labels, ADDRESS, address)
            try:
                spec = populate_labels(cfg, discovered)
            except errors.BadData as exc:
                out.errors.append(f"{cfg.job_name}: target {address!r}: {exc}")
                continue
            if spec is None:
                out.dropped.append(_with_defaults(cfg, discovered))
            elif spec.key not in seen:
                seen.add(spec.key)
                out.active.append(spec)
    return out


def _with_defaults(cfg: ScrapeConfig, labels: model.Labels) -> model.Labels:
    present = dict(labels)
    defaults = [
        ("job", cfg.job_name),
        (SCHEME, cfg.scheme),
        (METRICS_PATH, cfg.metrics_path),
        (SCRAPE_INTERVAL, format_duration(cfg.scrape_interval)),
        (SCRAPE_TIMEOUT, format_duration(cfg.scrape_timeout)),
    ]
    defaults += [(PARAM_PREFIX + name, values[0]) for name, values in cfg.params if values]
    for name, value in defaults:
        if not present.get(name):
            present[name] = value
    return model.labels_of(present)


def populate_labels(cfg: ScrapeConfig, labels: model.Labels) -> TargetSpec | None:
    """A discovered target -> its spec; None when relabeling drops it; BadData when the
    relabeled labels cannot name a scrapeable target."""
    discovered = _with_defaults(cfg, labels)
    relabeled = relabel(discovered, cfg.relabel_configs)
    if relabeled is None:
        return None
    lb = dict(relabeled)
    address = lb.get(ADDRESS, "")
    problem = check_target_address(address)
    if problem:
        raise errors.BadData(problem)
    interval = _duration_label(lb, SCRAPE_INTERVAL, cfg.scrape_interval)
    timeout = _duration_label(lb, SCRAPE_TIMEOUT, cfg.scrape_timeout)
    if interval <= 0:
        raise errors.BadData("scrape interval cannot be 0")
    if timeout <= 0:
        raise errors.BadData("scrape timeout cannot be 0")
    if timeout > interval:
        raise errors.BadData(
            f"scrape timeout cannot be greater than scrape interval "
            f"({format_duration(timeout)} > {format_duration(interval)})"
        )
    scheme = lb.get(SCHEME, cfg.scheme)
    if scheme not in ("http", "https"):
        raise errors.BadData(f"invalid scheme {scheme!r}")
    params: dict[str, list[str]] = {name: list(values) for name, values in cfg.params}
    for name, value in lb.items():
        if name.startswith(PARAM_PREFIX):
            key = name[len(PARAM_PREFIX) :]
            if params.get(key):
                params[key][0] = value
            else:
                params[key] = [value]
    path = lb.get(METRICS_PATH, cfg.metrics_path)
    query = urlencode(sorted(params.items()), doseq=True)
    url = f"{scheme}://{address}{path}" + (f"?{query}" if query else "")
    if not lb.get("instance"):
        lb["instance"] = address
    final = model.labels_of((k, v) for k, v in lb.items() if not k.startswith("__"))
    return TargetSpec(final, discovered, url, interval, timeout)


def _duration_label(lb: dict[str, str], name: str, default: float) -> float:
    text = lb.get(name)
    if not text:
        return default
    return parse_duration(text, name)


@dataclass
class _FileState:
    signature: tuple[int, int, int] | None  # (mtime_ns, size, inode); None: retry next poll
    groups: list[TargetGroup]
    error: str = ""


class FileDiscovery:
    """One `file_sd_configs` entry: its globs, the files they match, and their groups."""

    def __init__(self, config: FileSDConfig) -> None:
        self.config = config
        self._files: dict[str, _FileState] = {}
        self.read_errors = 0  # prometheus_sd_file_read_errors_total

    def groups(self) -> list[TargetGroup]:
        return [g for path in sorted(self._files) for g in self._files[path].groups]

    def errors(self) -> dict[str, str]:
        """The current read error per file, for the UI and logs."""
        return {p: s.error for p, s in self._files.items() if s.error}

    def poll(self) -> bool:
        """Stat every matched file; re-read the changed ones. True when the groups changed."""
        paths = sorted({p for pattern in self.config.files for p in glob.glob(pattern)})
        changed = False
        for gone in set(self._files) - set(paths):
            changed |= bool(self._files.pop(gone).groups)
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                if path in self._files:
                    changed |= bool(self._files.pop(path).groups)
                continue
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
            state = self._files.get(path)
            if state is not None and state.signature == signature:
                continue
            old_groups = state.groups if state is not None else []
            try:
                groups = read_target_file(path)
            except (OSError, errors.BadData) as exc:
                self.read_errors += 1
                message = str(exc)
                if state is None or state.error != message:
                    log.warning("file_sd: keeping the previous targets of %s: %s", path, message)
                self._files[path] = _FileState(None, old_groups, message)
                continue
            self._files[path] = _FileState(signature, groups)
            changed |= groups != old_groups
        return changed


def read_target_file(path: str) -> list[TargetGroup]:
    """Parse one file_sd file (JSON, or YAML by extension) into groups."""
    text = Path(path).read_text(encoding="utf-8")
    data: Any
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise errors.BadData(f"{path}: not valid JSON: {exc}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise errors.BadData(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, list):
        raise errors.BadData(f"{path}: expected a list of target groups")
    groups = []
    fields = {"targets", "labels"}
    for i, (where, item) in enumerate(config_items(data, path, fields, "targets and labels")):
        labels = model.with_label(
            parse_labels(item.get("labels"), f"{where}.labels"), FILEPATH, path
        )
        targets = parse_targets(item.get("targets"), f"{where}.targets")
        groups.append(TargetGroup(f"{path}:{i}", targets, labels))
    return groups
