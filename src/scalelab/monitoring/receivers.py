"""Alert receivers: the notification they are handed, the hook they register through, and the
two built-ins (webhook and email).

A *receiver* in the configuration is a name with a list of integrations per kind
(`webhook_configs: [...]`, `email_configs: [...]`). Each kind is a factory registered with
`register_receiver(kind, factory)`; the built-ins register through the same hook, so a plugin
kind `chat` is configured as `chat_configs: [...]` with nothing else to change. A factory turns
one config mapping into an `Integration`, validating it (raising `ConfigError`) at config-load
time so a typo fails at start-up, not at 3 a.m. when the first alert fires.

Times are float seconds since the epoch everywhere in the notifier; on the wire they become
RFC 3339 in UTC, and "unknown" is Go's zero time `0001-01-01T00:00:00Z`, as Alertmanager sends.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import smtplib
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from scalelab.monitoring.errors import BadData
from scalelab.monitoring.params import ZERO_TIME, duration_ms, rfc3339

__all__ = [
    "ConfigError",
    "DeliveryError",
    "EmailIntegration",
    "GlobalConfig",
    "Integration",
    "IntegrationFactory",
    "Notification",
    "NotifiedAlert",
    "SendContext",
    "WebhookIntegration",
    "email_subject",
    "parse_duration",
    "parse_receivers",
    "parse_rfc3339",
    "receiver_kinds",
    "register_receiver",
    "rfc3339",
    "unregister_receiver",
    "webhook_payload",
]

USER_AGENT = "scalelab-alertmanager/0.1"


class ConfigError(BadData):
    """The notifier's YAML (routes, receivers, inhibit rules) is invalid; the message says where."""


class DeliveryError(Exception):
    """A send failed; `retryable=False` (an HTTP 4xx, an SMTP 5xx) stops the retries at once."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- wire formats shared by receivers, silences and the API -------------------------------


def parse_rfc3339(text: str, name: str = "time") -> float | None:
    """The inverse of `rfc3339`; the zero time (and "") mean None."""
    if not isinstance(text, str):
        raise BadData(f"{name}: expected an RFC 3339 string, got {text!r}")
    if text in ("", ZERO_TIME) or text.startswith("0001-01-01T00:00:00"):
        return None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadData(f"{name}: not an RFC 3339 time: {text!r}") from None
    if dt.tzinfo is None:
        raise BadData(f"{name}: RFC 3339 time needs a zone offset: {text!r}")
    return dt.timestamp()


def parse_duration(value: object, where: str) -> float:
    """A Prometheus duration string (`1h30m`, `30s`, `100ms`, `0`) in float seconds."""
    if not isinstance(value, str) or not value:
        raise ConfigError(_at(where, f"expected a duration string like '30s', got {value!r}"))
    try:
        return duration_ms(value) / 1000
    except ValueError:
        raise ConfigError(_at(where, f"not a valid duration string: {value!r}")) from None


# --- config field helpers, for the built-ins and for plugin factories ---------------------


def _at(where: str, message: str) -> str:
    """Prefix a config error with where it is; factories pass "" and the caller adds it."""
    return f"{where}: {message}" if where else message


def check_keys(cfg: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Unknown keys are errors: a misspelt `send_resolvd` must not silently do nothing."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(_at(where, f"expected a mapping, got {type(cfg).__name__}"))
    unknown = sorted(str(k) for k in cfg if k not in allowed)
    if unknown:
        raise ConfigError(
            _at(where, f"unknown field(s) {', '.join(unknown)} (supported: {', '.join(allowed)})")
        )


def get_str(cfg: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = cfg.get(key, default)
    if value is None:
        raise ConfigError(_at(where, f"{key} is required"))
    if not isinstance(value, str):
        raise ConfigError(_at(where, f"{key} must be a string, got {value!r}"))
    return value


def get_bool(cfg: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(_at(where, f"{key} must be true or false, got {value!r}"))
    return value


def get_int(cfg: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(_at(where, f"{key} must be a non-negative integer, got {value!r}"))
    return value


def get_str_map(cfg: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = cfg.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(_at(where, f"{key} must map strings to strings"))
    return dict(value)


@dataclass(frozen=True)
class GlobalConfig:
    """The `global:` section: defaults that integrations fall back on."""

    resolve_timeout: float = 300.0
    smtp_from: str | None = None
    smtp_smarthost: str | None = None
    smtp_hello: str = "localhost"
    smtp_auth_username: str | None = None
    smtp_auth_password: str | None = None
    smtp_require_tls: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> GlobalConfig:
        if cfg is None:
            return cls()
        where = "global"
        check_keys(cfg, list(cls.__dataclass_fields__), where)

        def optional(key: str) -> str | None:
            return None if cfg.get(key) is None else get_str(cfg, key, where)

        timeout = cfg.get("resolve_timeout")
        return cls(
            resolve_timeout=300.0
            if timeout is None
            else parse_duration(timeout, f"{where}: resolve_timeout"),
            smtp_from=optional("smtp_from"),
            smtp_smarthost=optional("smtp_smarthost"),
            smtp_hello=get_str(cfg, "smtp_hello", where, "localhost"),
            smtp_auth_username=optional("smtp_auth_username"),
            smtp_auth_password=optional("smtp_auth_password"),
            smtp_require_tls=get_bool(cfg, "smtp_require_tls", where, True),
        )


# --- what a receiver is handed ------------------------------------------------------------


@dataclass(frozen=True)
class NotifiedAlert:
    """One alert as of the flush: `ends_at` is None while it fires (the end is not exposed
    until it is reached, as in Alertmanager)."""

    status: str  # "firing" | "resolved"
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: float
    ends_at: float | None
    generator_url: str
    fingerprint: str


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {
        k: v for k, v in sorted(first.items()) if all(m.get(k) == v and k in m for m in maps[1:])
    }


@dataclass(frozen=True)
class Notification:
    """One group's alerts for one receiver, already filtered for silences and send_resolved."""

    receiver: str
    group_key: str
    group_labels: Mapping[str, str]
    alerts: tuple[NotifiedAlert, ...]
    external_url: str = ""

    @property
    def status(self) -> str:
        """Firing while any alert in it fires; resolved once all have ended."""
        return "firing" if any(a.status == "firing" for a in self.alerts) else "resolved"

    @property
    def firing(self) -> list[NotifiedAlert]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[NotifiedAlert]:
        return [a for a in self.alerts if a.status == "resolved"]

    @property
    def common_labels(self) -> dict[str, str]:
        return _common([a.labels for a in self.alerts])

    @property
    def common_annotations(self) -> dict[str, str]:
        return _common([a.annotations for a in self.alerts])

    def truncated(self, max_alerts: int) -> tuple[Notification, int]:
        """The first `max_alerts` alerts (0: all) and how many were left out."""
        if max_alerts <= 0 or len(self.alerts) <= max_alerts:
            return self, 0
        kept = Notification(
            self.receiver,
            self.group_key,
            self.group_labels,
            self.alerts[:max_alerts],
            self.external_url,
        )
        return kept, len(self.alerts) - max_alerts


@dataclass(frozen=True)
class SendContext:
    """What the notifier lends an integration for one attempt: a shared HTTP client (one
    connection pool for all webhooks) and the seconds the attempt may take."""

    http_client: Callable[[], httpx.AsyncClient]
    timeout: float

    @property
    def http(self) -> httpx.AsyncClient:
        """Made on first use, so a notifier with only email receivers opens no pool."""
        return self.http_client()


class Integration(Protocol):
    """One configured destination. `send` raises `DeliveryError` (or anything) on failure."""

    @property
    def send_resolved(self) -> bool: ...

    async def send(self, notification: Notification, ctx: SendContext) -> None: ...


IntegrationFactory = Callable[[Mapping[str, Any], GlobalConfig], Integration]
"""Builds an integration from one `<kind>_configs` entry; raises ConfigError when invalid."""

_REGISTRY: dict[str, IntegrationFactory] = {}


def register_receiver(kind: str, factory: IntegrationFactory, *, replace: bool = False) -> None:
    """Make `<kind>_configs` valid in receivers. The built-ins register here too."""
    if not kind.isidentifier():
        raise ValueError(f"receiver kind must be an identifier, got {kind!r}")
    if kind in _REGISTRY and not replace:
        raise ValueError(f"receiver kind {kind!r} is already registered")
    _REGISTRY[kind] = factory


def unregister_receiver(kind: str) -> None:
    _REGISTRY.pop(kind, None)


def receiver_kinds() -> dict[str, IntegrationFactory]:
    """The registered kinds, for the config parser."""
    return dict(_REGISTRY)


def parse_receivers(items: Any, g: GlobalConfig) -> dict[str, tuple[Integration, ...]]:
    """The `receivers:` list: each entry's `<kind>_configs` built by that kind's factory."""
    if not isinstance(items, list):
        raise ConfigError("receivers must be a list")
    kinds = dict(_REGISTRY)
    out: dict[str, tuple[Integration, ...]] = {}
    for i, rc in enumerate(items):
        where = f"receivers[{i}]"
        name = get_str(rc if isinstance(rc, Mapping) else {}, "name", where)
        where = f"{where} ({name})"
        check_keys(rc, ["name", *(f"{k}_configs" for k in kinds)], where)
        if name in out:
            raise ConfigError(_at(where, "duplicate receiver name"))
        integrations: list[Integration] = []
        for kind, factory in kinds.items():
            entries = rc.get(f"{kind}_configs") or []
            if not isinstance(entries, list):
                raise ConfigError(_at(where, f"{kind}_configs must be a list"))
            for j, entry in enumerate(entries):
                at = f"{where}.{kind}_configs[{j}]"
                try:
                    integrations.append(factory(entry, g))
                except ConfigError as exc:
                    raise ConfigError(f"{at}: {exc}") from None
                except (ValueError, TypeError) as exc:  # a plugin's own validation
                    raise ConfigError(f"{at}: {exc}") from None
        out[name] = tuple(integrations)
    return out


# --- webhook --------------------------------------------------------------------------------


def webhook_payload(notification: Notification, max_alerts: int = 0) -> dict[str, Any]:
    """Alertmanager's webhook body, version "4", field for field."""
    kept, truncated = notification.truncated(max_alerts)
    return {
        "version": "4",
        "groupKey": kept.group_key,
        "truncatedAlerts": truncated,
        "status": kept.status,
        "receiver": kept.receiver,
        "groupLabels": dict(sorted(kept.group_labels.items())),
        "commonLabels": kept.common_labels,
        "commonAnnotations": kept.common_annotations,
        "externalURL": kept.external_url,
        "alerts": [
            {
                "status": a.status,
                "labels": dict(sorted(a.labels.items())),
                "annotations": dict(sorted(a.annotations.items())),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": rfc3339(a.ends_at),
                "generatorURL": a.generator_url,
                "fingerprint": a.fingerprint,
            }
            for a in kept.alerts
        ],
    }


@dataclass(frozen=True)
class WebhookIntegration:
    """POSTs the version-4 JSON body; 2xx is success, 5xx/429/network errors are retried."""

    url: str
    send_resolved: bool = True
    max_alerts: int = 0
    timeout: float = 10.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], globals_: GlobalConfig) -> WebhookIntegration:
        where = ""
        check_keys(cfg, ["url", "send_resolved", "max_alerts", "timeout"], where)
        url = get_str(cfg, "url", where)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(_at(where, f"url must be http:// or https://, got {url!r}"))
        timeout = parse_duration(cfg["timeout"], "timeout") if "timeout" in cfg else 10.0
        return cls(
            url=url,
            send_resolved=get_bool(cfg, "send_resolved", where, True),
            max_alerts=get_int(cfg, "max_alerts", where, 0),
            timeout=timeout or 10.0,
        )

    async def send(self, notification: Notification, ctx: SendContext) -> None:
        body = json.dumps(webhook_payload(notification, self.max_alerts)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        try:
            resp = await ctx.http.post(
                self.url, content=body, headers=headers, timeout=min(self.timeout, ctx.timeout)
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"POST {self.url}: {type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return
        retryable = resp.status_code >= 500 or resp.status_code == 429
        raise DeliveryError(f"POST {self.url}: HTTP {resp.status_code}", retryable=retryable)


# --- email ----------------------------------------------------------------------------------


def email_subject(n: Notification) -> str:
    """Alertmanager's default subject: `[FIRING:2] <group label values> (<other common
    label values>)`, values in label-name order."""
    head = f"[FIRING:{len(n.firing)}]" if n.status == "firing" else "[RESOLVED]"
    group = [v for _, v in sorted(n.group_labels.items())]
    extra = [v for k, v in sorted(n.common_labels.items()) if k not in n.group_labels]
    text = " ".join([head, *group])
    return f"{text} ({' '.join(extra)})" if extra else text


def email_body(n: Notification) -> str:
    """A plain-text listing: every alert's labels, annotations, times and source."""
    lines = [email_subject(n), ""]
    for title, alerts in (("Firing", n.firing), ("Resolved", n.resolved)):
        if not alerts:
            continue
        lines.append(f"{title} alerts ({len(alerts)}):")
        for a in alerts:
            labels = " ".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
            lines.append(f"- {labels}")
            for k, v in sorted(a.annotations.items()):
                lines.append(f"    {k}: {v}")
            lines.append(f"    started: {rfc3339(a.starts_at)}")
            if a.ends_at is not None:
                lines.append(f"    ended: {rfc3339(a.ends_at)}")
            if a.generator_url:
                lines.append(f"    source: {a.generator_url}")
        lines.append("")
    lines.append(f"Group: {n.group_key}")
    if n.external_url:
        lines.append(f"Sent by {n.external_url}")
    return "\n".join(lines) + "\n"


def _optional_str(cfg: Mapping[str, Any], key: str, where: str, default: str | None) -> str | None:
    value = cfg.get(key, default)
    return None if value is None else get_str({key: value}, key, where)


def _split_host(smarthost: str, where: str) -> tuple[str, int]:
    host, sep, port = smarthost.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(_at(where, f"smarthost must be host:port, got {smarthost!r}"))
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class EmailIntegration:
    """Sends a plain-text mail through any SMTP server with smtplib in a worker thread (no
    async SMTP client is installed). STARTTLS when require_tls; port 465 is implicit TLS."""

    to: str
    sender: str
    host: str
    port: int
    hello: str = "localhost"
    auth_username: str | None = None
    auth_password: str | None = None
    require_tls: bool = True
    send_resolved: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    ca_file: str | None = None
    insecure_skip_verify: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], g: GlobalConfig) -> EmailIntegration:
        where = ""
        keys = ["to", "from", "smarthost", "hello", "auth_username", "auth_password"]
        keys += ["require_tls", "send_resolved", "headers", "tls_config"]
        check_keys(cfg, keys, where)
        to = get_str(cfg, "to", where)
        if not [addr for _, addr in email.utils.getaddresses([to]) if addr]:
            raise ConfigError(_at(where, f"to has no address: {to!r}"))
        sender = cfg.get("from", g.smtp_from)
        if sender is None:
            raise ConfigError(_at(where, "no sender (set from, or global.smtp_from)"))
        smarthost = cfg.get("smarthost", g.smtp_smarthost)
        if smarthost is None:
            raise ConfigError(_at(where, "no smarthost (set smarthost, or global.smtp_smarthost)"))
        host, port = _split_host(get_str({"smarthost": smarthost}, "smarthost", where), where)
        tls = cfg.get("tls_config", {})
        check_keys(tls, ["ca_file", "insecure_skip_verify"], "tls_config")
        return cls(
            to=to,
            sender=get_str({"from": sender}, "from", where),
            host=host,
            port=port,
            hello=get_str(cfg, "hello", where, g.smtp_hello),
            auth_username=_optional_str(cfg, "auth_username", where, g.smtp_auth_username),
            auth_password=_optional_str(cfg, "auth_password", where, g.smtp_auth_password),
            require_tls=get_bool(cfg, "require_tls", where, g.smtp_require_tls),
            send_resolved=get_bool(cfg, "send_resolved", where, False),
            headers=get_str_map(cfg, "headers", where),
            ca_file=None if "ca_file" not in tls else get_str(tls, "ca_file", where),
            insecure_skip_verify=get_bool(tls, "insecure_skip_verify", where, False),
        )

    def message(self, n: Notification) -> EmailMessage:
        msg = EmailMessage()
        fields = {
            "From": self.sender,
            "To": self.to,
            "Subject": email_subject(n),
            "Date": email.utils.formatdate(localtime=False),
            "Message-Id": email.utils.make_msgid(domain=self.hello),
        }
        fields.update(self.headers)  # configured headers win, Subject included
        for name, value in fields.items():
            msg[name] = value
        msg.set_content(email_body(n))
        return msg

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _deliver(self, msg: EmailMessage, timeout: float) -> None:
        """Blocking: runs in a worker thread."""
        sender = email.utils.parseaddr(self.sender)[1]
        rcpts = [addr for _, addr in email.utils.getaddresses([self.to]) if addr]
        smtp: smtplib.SMTP
        if self.port == 465:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, self.hello, timeout=timeout, context=self._tls_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, self.hello, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if self.require_tls and self.port != 465:
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"{self.host}:{self.port} does not offer STARTTLS")
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            if self.auth_username and smtp.has_extn("auth"):
                smtp.login(self.auth_username, self.auth_password or "")
            smtp.send_message(msg, sender, rcpts)

    async def send(self, notification: Notification, ctx: SendContext) -> None:
        msg = self.message(notification)
        try:
            await asyncio.to_thread(self._deliver, msg, ctx.timeout)
        except DeliveryError:
            raise
        except smtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.smtp_code < 600
            raise DeliveryError(
                f"SMTP {self.host}:{self.port}: {exc.smtp_code} {exc.smtp_error!r}",
                retryable=not permanent,
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {exc}") from exc


register_receiver("webhook", WebhookIntegration.from_config)
register_receiver("email", EmailIntegration.from_config)
