"""The scrape configuration: Prometheus's `prometheus.yml`, the part that drives collection.

`load_config` reads the YAML shape Prometheus users already have (`global` and
`scrape_configs` with static and file-based targets, relabeling, limits, basic auth, bearer
authorization, TLS files) into frozen dataclasses, so a reload can compare old and new job by
job. Keys Prometheus knows but scraping does not use (`rule_files`, `alerting`, `remote_write`,
...) are accepted and left to their owners; a key nobody knows, or a service discovery we do
not implement, is an error that names the field, because a silently ignored setting is worse.
Durations are Prometheus's (`15s`, `1m`, `1h30m`, `500ms`, `2d`) and are held as float seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalelab.monitoring import errors, model, params
from scalelab.monitoring.relabel import RelabelConfig, parse_relabel_configs

DEFAULT_SCRAPE_INTERVAL = 60.0
DEFAULT_SCRAPE_TIMEOUT = 10.0
DEFAULT_EVALUATION_INTERVAL = 60.0
DEFAULT_FILE_SD_REFRESH = 300.0

_FILE_SD_PATH = re.compile(r"[^*]*(\*[^/]*)?\.(json|yml|yaml|JSON|YML|YAML)\Z")

# Top-level and global keys that belong to other parts of a Prometheus server.
_OTHER_TOP_LEVEL = {
    "rule_files",
    "alerting",
    "remote_write",
    "remote_read",
    "storage",
    "tracing",
    "scrape_config_files",
    "otlp",
    "runtime",
}
_GLOBAL_KEYS = {
    "scrape_interval",
    "scrape_timeout",
    "evaluation_interval",
    "external_labels",
    "sample_limit",
    "label_limit",
    "label_name_length_limit",
    "label_value_length_limit",
    "query_log_file",
    "rule_query_offset",
}
_JOB_KEYS = {
    "job_name",
    "scrape_interval",
    "scrape_timeout",
    "metrics_path",
    "scheme",
    "params",
    "honor_labels",
    "honor_timestamps",
    "sample_limit",
    "label_limit",
    "label_name_length_limit",
    "label_value_length_limit",
    "static_configs",
    "file_sd_configs",
    "basic_auth",
    "authorization",
    "tls_config",
    "follow_redirects",
    "enable_compression",
    "relabel_configs",
    "metric_relabel_configs",
}


def parse_duration(text: Any, where: str) -> float:
    """Prometheus's duration syntax -> seconds; BadData naming `where` when it is not one."""
    try:
        if not isinstance(text, str):
            raise ValueError
        return params.duration_ms(text) / 1000
    except ValueError:
        raise errors.BadData(
            f"{where}: {text!r} is not a valid duration (e.g. 15s, 1m, 1h30m)"
        ) from None


def format_duration(seconds: float) -> str:
    """Seconds -> Prometheus's canonical spelling (`90` -> `1m30s`, `0` -> `0s`)."""
    return params.format_duration(round(seconds * 1000))


@dataclass(frozen=True, slots=True)
class StaticConfig:
    targets: tuple[str, ...]
    labels: model.Labels = ()


@dataclass(frozen=True, slots=True)
class FileSDConfig:
    files: tuple[str, ...]  # glob patterns, made absolute against the config's directory
    refresh_interval: float = DEFAULT_FILE_SD_REFRESH


@dataclass(frozen=True, slots=True)
class BasicAuth:
    username: str
    password: str = ""
    password_file: str = ""


@dataclass(frozen=True, slots=True)
class Authorization:
    type: str = "Bearer"
    credentials: str = ""
    credentials_file: str = ""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class ScrapeConfig:
    """One job, with the global defaults already filled in."""

    job_name: str
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL
    scrape_timeout: float = DEFAULT_SCRAPE_TIMEOUT
    metrics_path: str = "/metrics"
    scheme: str = "http"
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()
    honor_labels: bool = False
    honor_timestamps: bool = True
    sample_limit: int = 0  # 0 = no limit, as in Prometheus
    label_limit: int = 0
    label_name_length_limit: int = 0
    label_value_length_limit: int = 0
    static_configs: tuple[StaticConfig, ...] = ()
    file_sd_configs: tuple[FileSDConfig, ...] = ()
    basic_auth: BasicAuth | None = None
    authorization: Authorization | None = None
    tls_config: TLSConfig = field(default_factory=TLSConfig)
    follow_redirects: bool = True
    enable_compression: bool = True
    relabel_configs: tuple[RelabelConfig, ...] = ()
    metric_relabel_configs: tuple[RelabelConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    scrape_interval: float = DEFAULT_SCRAPE_INTERVAL
    scrape_timeout: float = DEFAULT_SCRAPE_TIMEOUT
    evaluation_interval: float = DEFAULT_EVALUATION_INTERVAL
    external_labels: model.Labels = ()


@dataclass(frozen=True, slots=True)
class Config:
    global_config: GlobalConfig = field(default_factory=GlobalConfig)
    scrape_configs: tuple[ScrapeConfig, ...] = ()


def load_config_file(path: str | Path) -> Config:
    """Read a prometheus.yml; relative file_sd paths resolve against its directory."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.BadData(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
    return load_config(text, base_dir=p.resolve().parent)


def load_config(text: str, *, base_dir: str | Path | None = None) -> Config:
    """Parse and validate; errors.BadData says which field is wrong and why."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.BadData(f"config is not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise errors.BadData("config: expected a mapping at the top level")
    unknown = set(data) - _OTHER_TOP_LEVEL - {"global", "scrape_configs"}
    if unknown:
        raise errors.BadData(f"config: unknown field(s) {_names(unknown)}")
    glob = _parse_global(data.get("global") or {})
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    raw_jobs = data.get("scrape_configs")
    if raw_jobs is None:
        raw_jobs = []
    if not isinstance(raw_jobs, list):
        raise errors.BadData("scrape_configs: expected a list")
    jobs: list[ScrapeConfig] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_jobs):
        job = _parse_job(raw, f"scrape_configs[{i}]", glob, data.get("global") or {}, base)
        if job.job_name in seen:
            raise errors.BadData(
                f"scrape_configs[{i}].job_name: found multiple scrape configs with job name "
                f"{job.job_name!r}"
            )
        seen.add(job.job_name)
        jobs.append(job)
    return Config(global_config=glob, scrape_configs=tuple(jobs))


def _parse_global(raw: Any) -> GlobalConfig:
    if not isinstance(raw, Mapping):
        raise errors.BadData("global: expected a mapping")
    unknown = set(raw) - _GLOBAL_KEYS
    if unknown:
        raise errors.BadData(f"global: unknown field(s) {_names(unknown)}")
    interval = _duration(raw, "scrape_interval", "global", DEFAULT_SCRAPE_INTERVAL)
    if interval <= 0:
        raise errors.BadData("global.scrape_interval: must be greater than zero")
    timeout_default = min(DEFAULT_SCRAPE_TIMEOUT, interval)
    timeout = _duration(raw, "scrape_timeout", "global", timeout_default)
    if timeout <= 0:
        raise errors.BadData("global.scrape_timeout: must be greater than zero")
    if timeout > interval:
        raise errors.BadData(
            "global.scrape_timeout: global scrape timeout greater than scrape interval"
        )
    evaluation = _duration(raw, "evaluation_interval", "global", DEFAULT_EVALUATION_INTERVAL)
    external = parse_labels(raw.get("external_labels"), "global.external_labels")
    return GlobalConfig(interval, timeout, evaluation, external)


def _parse_job(
    raw: Any, where: str, glob: GlobalConfig, raw_global: Mapping[str, Any], base: Path
) -> ScrapeConfig:
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping")
    name = raw.get("job_name")
    if not isinstance(name, str) or not name:
        raise errors.BadData(f"{where}.job_name: required, a non-empty string")
    where = f'{where} (job "{name}")'
    unknown = set(raw) - _JOB_KEYS
    if unknown:
        sd = sorted(k for k in map(str, unknown) if k.endswith("_sd_configs"))
        if sd:
            raise errors.BadData(f"{where}.{sd[0]}: service discovery not supported here")
        raise errors.BadData(f"{where}: unknown field(s) {_names(unknown)}")
    interval = _duration(raw, "scrape_interval", where, glob.scrape_interval)
    if interval <= 0:
        raise errors.BadData(f"{where}.scrape_interval: must be greater than zero")
    if "scrape_timeout" in raw:
        timeout = _duration(raw, "scrape_timeout", where, 0.0)
        if timeout <= 0:
            raise errors.BadData(f"{where}.scrape_timeout: must be greater than zero")
        if timeout > interval:
            raise errors.BadData(
                f"{where}.scrape_timeout: scrape timeout greater than scrape interval"
            )
    else:
        timeout = min(glob.scrape_timeout, interval)
    scheme = raw.get("scheme", "http")
    if scheme not in ("http", "https"):
        raise errors.BadData(f"{where}.scheme: must be http or https, not {scheme!r}")
    metrics_path = raw.get("metrics_path", "/metrics")
    if not isinstance(metrics_path, str) or not metrics_path:
        raise errors.BadData(f"{where}.metrics_path: expected a non-empty string")
    basic_auth = _basic_auth(raw.get("basic_auth"), f"{where}.basic_auth")
    authorization = _authorization(raw.get("authorization"), f"{where}.authorization")
    if basic_auth is not None and authorization is not None:
        raise errors.BadData(f"{where}: at most one of basic_auth and authorization may be set")

    def limit(key: str) -> int:
        return _uint(raw.get(key, raw_global.get(key, 0)), f"{where}.{key}")

    return ScrapeConfig(
        job_name=name,
        scrape_interval=interval,
        scrape_timeout=timeout,
        metrics_path=metrics_path,
        scheme=scheme,
        params=_params(raw.get("params"), f"{where}.params"),
        honor_labels=_bool(raw, "honor_labels", where, False),
        honor_timestamps=_bool(raw, "honor_timestamps", where, True),
        sample_limit=limit("sample_limit"),
        label_limit=limit("label_limit"),
        label_name_length_limit=limit("label_name_length_limit"),
        label_value_length_limit=limit("label_value_length_limit"),
        static_configs=_static_configs(raw.get("static_configs"), f"{where}.static_configs"),
        file_sd_configs=_file_sd_configs(
            raw.get("file_sd_configs"), f"{where}.file_sd_configs", base
        ),
        basic_auth=basic_auth,
        authorization=authorization,
        tls_config=_tls_config(raw.get("tls_config"), f"{where}.tls_config", base),
        follow_redirects=_bool(raw, "follow_redirects", where, True),
        enable_compression=_bool(raw, "enable_compression", where, True),
        relabel_configs=parse_relabel_configs(
            raw.get("relabel_configs"), f"{where}.relabel_configs"
        ),
        metric_relabel_configs=parse_relabel_configs(
            raw.get("metric_relabel_configs"), f"{where}.metric_relabel_configs"
        ),
    )


def check_target_address(address: str) -> str | None:
    """Why an `__address__` cannot be scraped, or None when it can (host[:port], no path)."""
    if not address:
        return "no address"
    if "/" in address:
        return f"{address!r} is not a valid hostname"
    return None


def config_items(
    raw: Any, where: str, fields: set[str], what: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(place, item) for a YAML list of mappings whose keys must be among `fields`: the check
    every list of config blocks (static_configs, file_sd_configs, a file_sd file) needs."""
    if raw is None:
        return
    if not isinstance(raw, list):
        raise errors.BadData(f"{where}: expected a list")
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise errors.BadData(f"{w}: expected a mapping with {what}")
        unknown = set(item) - fields
        if unknown:
            raise errors.BadData(f"{w}: unknown field(s) {_names(unknown)}")
        yield w, item


def _static_configs(raw: Any, where: str) -> tuple[StaticConfig, ...]:
    return tuple(
        StaticConfig(
            targets=parse_targets(item.get("targets"), f"{w}.targets"),
            labels=parse_labels(item.get("labels"), f"{w}.labels"),
        )
        for w, item in config_items(raw, where, {"targets", "labels"}, "targets and labels")
    )


def parse_targets(raw: Any, where: str) -> tuple[str, ...]:
    """A target group's `targets`: host:port strings (shared with file discovery)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise errors.BadData(f"{where}: expected a list of host:port strings")
    out = []
    for t in raw:
        if not isinstance(t, str) or not t:
            raise errors.BadData(f"{where}: {t!r} is not a host:port string")
        problem = check_target_address(t)
        if problem:
            raise errors.BadData(f"{where}: {problem}")
        out.append(t)
    return tuple(out)


def _file_sd_configs(raw: Any, where: str, base: Path) -> tuple[FileSDConfig, ...]:
    out = []
    fields = {"files", "refresh_interval"}
    for w, item in config_items(raw, where, fields, "files and refresh_interval"):
        files = item.get("files")
        if not isinstance(files, list) or not files:
            raise errors.BadData(f"{w}.files: expected a non-empty list of paths")
        resolved = []
        for f in files:
            if not isinstance(f, str) or not _FILE_SD_PATH.match(f):
                raise errors.BadData(
                    f"{w}.files: {f!r} is not valid for file discovery (a .json/.yml/.yaml "
                    "path, with at most one * in its last element)"
                )
            resolved.append(str(base / f))
        refresh = _duration(item, "refresh_interval", w, DEFAULT_FILE_SD_REFRESH)
        if refresh <= 0:
            raise errors.BadData(f"{w}.refresh_interval: must be greater than zero")
        out.append(FileSDConfig(tuple(resolved), refresh))
    return tuple(out)


def _basic_auth(raw: Any, where: str) -> BasicAuth | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping")
    unknown = set(raw) - {"username", "password", "password_file"}
    if unknown:
        raise errors.BadData(f"{where}: unknown field(s) {_names(unknown)}")
    username = _str(raw, "username", where)
    password = _str(raw, "password", where)
    password_file = _str(raw, "password_file", where)
    if password and password_file:
        raise errors.BadData(f"{where}: at most one of password and password_file may be set")
    return BasicAuth(username, password, password_file)


def _authorization(raw: Any, where: str) -> Authorization | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping")
    unknown = set(raw) - {"type", "credentials", "credentials_file"}
    if unknown:
        raise errors.BadData(f"{where}: unknown field(s) {_names(unknown)}")
    kind = _str(raw, "type", where) or "Bearer"
    if kind.lower() == "basic":
        raise errors.BadData(f"{where}.type: use basic_auth for Basic authorization")
    credentials = _str(raw, "credentials", where)
    credentials_file = _str(raw, "credentials_file", where)
    if credentials and credentials_file:
        raise errors.BadData(f"{where}: at most one of credentials and credentials_file may be set")
    return Authorization(kind, credentials, credentials_file)


def _tls_config(raw: Any, where: str, base: Path) -> TLSConfig:
    if raw is None:
        return TLSConfig()
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping")
    unknown = set(raw) - {"ca_file", "cert_file", "key_file", "insecure_skip_verify"}
    if unknown:
        raise errors.BadData(f"{where}: unknown field(s) {_names(unknown)}")

    def path(key: str) -> str:
        value = _str(raw, key, where)
        return str(base / value) if value else ""

    cert, key = path("cert_file"), path("key_file")
    if bool(cert) != bool(key):
        raise errors.BadData(f"{where}: cert_file and key_file must be set together")
    return TLSConfig(path("ca_file"), cert, key, _bool(raw, "insecure_skip_verify", where, False))


def _params(raw: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping of name to a list of values")
    out = []
    for name, values in raw.items():
        if not isinstance(name, str):
            raise errors.BadData(f"{where}: parameter names must be strings")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise errors.BadData(f"{where}.{name}: expected a list of strings")
        out.append((name, tuple(values)))
    return tuple(sorted(out))


def parse_labels(raw: Any, where: str) -> model.Labels:
    """A `labels:` mapping, validated (shared with file discovery)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise errors.BadData(f"{where}: expected a mapping of label name to value")
    pairs = []
    for name, value in raw.items():
        if not isinstance(name, str) or not model.valid_label_name(name):
            raise errors.BadData(f"{where}: {name!r} is not a valid label name")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, int | float):
            value = str(value)
        elif value is None:
            value = ""
        if not isinstance(value, str):
            raise errors.BadData(f"{where}.{name}: expected a string value")
        pairs.append((name, value))
    return model.labels_of(pairs)


def _duration(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    if key not in raw:
        return default
    return parse_duration(raw[key], f"{where}.{key}")


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise errors.BadData(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise errors.BadData(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.BadData(f"{where}.{key}: expected a string")
    return value


def _names(keys: set[Any]) -> str:
    return ", ".join(sorted(map(str, keys)))
