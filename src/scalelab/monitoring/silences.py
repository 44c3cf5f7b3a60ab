"""Silences: label matchers with a time window that mute matching alerts, as in Alertmanager.

A silence is *pending* before its start, *active* inside [start, end), *expired* after. Its
state is a function of time; what may be done to it in each state is the table `_EXPIRE` and
`_UPDATE_IN_PLACE` below (convention 4). Expired silences are kept for `retention` (default
120 h, Alertmanager's) so the API can still show them, then dropped.

On disk (`silences.json` in the monitoring data folder), written whole as temp file + fsync +
rename + fsync of the folder, so a crash leaves the old file or the new one, never a torn one
(hence no checksum):

    {"version": 1,
     "silences": [{"id": str, "matchers": [{"name", "value", "isRegex", "isEqual"}],
                   "startsAt": float, "endsAt": float, "updatedAt": float,
                   "createdBy": str, "comment": str}, ...]}

Times in the file are float seconds since the epoch (exact round trip); the API shows RFC 3339.
"""

from __future__ import annotations

import builtins
import enum
import json
import os
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scalelab.monitoring.errors import BadData, NotFound, StorageError
from scalelab.monitoring.model import Labels, Matcher, MatchType, matches_all, valid_label_name
from scalelab.monitoring.params import rfc3339
from scalelab.monitoring.receivers import parse_rfc3339

__all__ = [
    "Silence",
    "SilenceState",
    "Silences",
    "matcher_from_json",
    "matcher_to_json",
    "parse_matcher",
]

FORMAT_VERSION = 1
FILE_NAME = "silences.json"
DEFAULT_RETENTION = 120 * 3600.0

_MATCHER = re.compile(r"\s*([^\s=!~\"]+)\s*(=~|!~|!=|=)\s*(.*?)\s*\Z", re.S)
_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}


def _unquote(text: str) -> str:
    """The value of a matcher: as-is when bare, unescaped when "double-quoted"."""
    if len(text) < 2 or not (text[0] == text[-1] == '"'):
        if '"' in text:
            raise ValueError(f"unbalanced quotes in {text!r}")
        return text
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _UNESCAPE:
                raise ValueError(f"bad escape in {text!r}")
            out.append(_UNESCAPE[body[i + 1]])
            i += 2
            continue
        if ch == '"':
            raise ValueError(f"unescaped quote in {text!r}")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_matcher(text: str) -> Matcher:
    """`name="value"`, `name=~"re.*"`, `name!=value`: Alertmanager's matcher syntax."""
    if not isinstance(text, str):
        raise BadData(f"matcher must be a string, got {text!r}")
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    m = _MATCHER.match(body)
    if m is None or not valid_label_name(m.group(1)):
        raise BadData(f'bad matcher {text!r}: expected name="value" (or =~, !=, !~)')
    try:
        return Matcher(MatchType(m.group(2)), m.group(1), _unquote(m.group(3)))
    except ValueError as exc:
        raise BadData(f"bad matcher {text!r}: {exc}") from None


def matcher_from_json(obj: Any) -> Matcher:
    """API v2's `{"name", "value", "isRegex", "isEqual"}`, or the string form."""
    if isinstance(obj, str):
        return parse_matcher(obj)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str):
        raise BadData(f"bad matcher {obj!r}: expected {{name, value, isRegex, isEqual}}")
    value, is_regex, is_equal = obj.get("value"), obj.get("isRegex"), obj.get("isEqual", True)
    if not isinstance(value, str) or not isinstance(is_regex, bool):
        raise BadData(f"bad matcher {obj!r}: value (string) and isRegex (bool) are required")
    if not isinstance(is_equal, bool) or not valid_label_name(obj["name"]):
        raise BadData(f"bad matcher {obj!r}")
    kind = {
        (False, True): MatchType.EQUAL,
        (False, False): MatchType.NOT_EQUAL,
        (True, True): MatchType.REGEX,
        (True, False): MatchType.NOT_REGEX,
    }[(is_regex, is_equal)]
    try:
        return Matcher(kind, obj["name"], value)
    except ValueError as exc:
        raise BadData(f"bad matcher {obj!r}: {exc}") from None


def matcher_to_json(m: Matcher) -> dict[str, Any]:
    return {
        "name": m.name,
        "value": m.value,
        "isRegex": m.type in (MatchType.REGEX, MatchType.NOT_REGEX),
        "isEqual": m.type in (MatchType.EQUAL, MatchType.REGEX),
    }


class SilenceState(enum.Enum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str
    updated_at: float

    def state(self, now: float) -> SilenceState:
        if now < self.starts_at:
            return SilenceState.PENDING
        if now < self.ends_at:
            return SilenceState.ACTIVE
        return SilenceState.EXPIRED

    def mutes(self, labels: Labels, now: float) -> bool:
        return self.state(now) is SilenceState.ACTIVE and matches_all(labels, self.matchers)

    def to_json(self, now: float) -> dict[str, Any]:
        """Alertmanager's GettableSilence."""
        return {
            "id": self.id,
            "status": {"state": self.state(now).value},
            "updatedAt": rfc3339(self.updated_at),
            "comment": self.comment,
            "createdBy": self.created_by,
            "endsAt": rfc3339(self.ends_at),
            "matchers": [matcher_to_json(m) for m in self.matchers],
            "startsAt": rfc3339(self.starts_at),
        }

    def _to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [matcher_to_json(m) for m in self.matchers],
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "updatedAt": self.updated_at,
            "createdBy": self.created_by,
            "comment": self.comment,
        }

    @classmethod
    def _from_record(cls, rec: Mapping[str, Any]) -> Silence:
        return cls(
            id=str(rec["id"]),
            matchers=tuple(matcher_from_json(m) for m in rec["matchers"]),
            starts_at=float(rec["startsAt"]),
            ends_at=float(rec["endsAt"]),
            created_by=str(rec["createdBy"]),
            comment=str(rec["comment"]),
            updated_at=float(rec["updatedAt"]),
        )


# What expiring does in each state: a pending silence never starts (start = end = now), an
# active one ends now, an expired one cannot be expired again.
def _expire_pending(s: Silence, now: float) -> Silence:
    return replace(s, starts_at=now, ends_at=now, updated_at=now)


def _expire_active(s: Silence, now: float) -> Silence:
    return replace(s, ends_at=now, updated_at=now)


_EXPIRE: dict[SilenceState, Callable[[Silence, float], Silence] | None] = {
    SilenceState.PENDING: _expire_pending,
    SilenceState.ACTIVE: _expire_active,
    SilenceState.EXPIRED: None,
}


# Whether an update with the same matchers may change the silence in place (keeping its id);
# otherwise the old one is expired and the update becomes a new silence.
def _active_in_place(old: Silence, new: Silence, now: float) -> bool:
    return new.starts_at == old.starts_at and new.ends_at >= now


def _pending_in_place(old: Silence, new: Silence, now: float) -> bool:
    return new.starts_at >= now


def _never(old: Silence, new: Silence, now: float) -> bool:
    return False


_UPDATE_IN_PLACE: dict[SilenceState, Callable[[Silence, Silence, float], bool]] = {
    SilenceState.ACTIVE: _active_in_place,
    SilenceState.PENDING: _pending_in_place,
    SilenceState.EXPIRED: _never,
}


class Silences:
    """The silence store: validated writes, persisted before they return."""

    def __init__(
        self,
        data_dir: Path | None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self._path = None if data_dir is None else Path(data_dir) / FILE_NAME
        self._clock = clock
        self._rng = rng or random.Random()
        self._retention = retention
        self._by_id: dict[str, Silence] = {}
        if self._path is not None and self._path.exists():
            self._load(self._path)

    # -- reads --

    def get(self, silence_id: str) -> Silence:
        try:
            return self._by_id[silence_id]
        except KeyError:
            raise NotFound(f"silence {silence_id} not found") from None

    def list(self, matchers: Sequence[Matcher] = ()) -> list[Silence]:
        """Silences whose own matchers include each filter (as Alertmanager's ?filter=)."""
        wanted = set(matchers)
        hits = [s for s in self._by_id.values() if wanted <= set(s.matchers)]
        return sorted(hits, key=lambda s: (s.starts_at, s.id))

    def silenced_by(self, labels: Labels, now: float) -> builtins.list[str]:
        """Ids of the active silences that mute a label set."""
        return sorted(s.id for s in self._by_id.values() if s.mutes(labels, now))

    def to_json(
        self, now: float | None = None, matchers: Sequence[Matcher] = ()
    ) -> builtins.list[dict[str, Any]]:
        """Active first, then pending, then expired (as Alertmanager's UI lists them)."""
        t = self._clock() if now is None else now
        order = {SilenceState.ACTIVE: 0, SilenceState.PENDING: 1, SilenceState.EXPIRED: 2}
        items = sorted(self.list(matchers), key=lambda s: (order[s.state(t)], s.ends_at, s.id))
        return [s.to_json(t) for s in items]

    # -- writes --

    def create(
        self,
        matchers: Iterable[Matcher | str],
        starts_at: float,
        ends_at: float,
        created_by: str,
        comment: str,
        *,
        silence_id: str | None = None,
    ) -> str:
        """Create a silence, or update `silence_id`; returns the id now in force."""
        now = self._clock()
        ms = tuple(m if isinstance(m, Matcher) else parse_matcher(m) for m in matchers)
        if not ms:
            raise BadData("silence needs at least one matcher")
        if all(m.matches_empty() for m in ms):
            raise BadData("at least one matcher of a silence must not match the empty string")
        if ends_at <= starts_at:
            raise BadData("silence: start time must be before end time")
        if ends_at < now:
            raise BadData("silence: end time can't be in the past")
        if not created_by:
            raise BadData("silence: createdBy is required")
        requested = Silence("", ms, starts_at, ends_at, created_by, comment, now)
        if silence_id is not None:
            old = self.get(silence_id)
            state = old.state(now)
            if old.matchers == ms and _UPDATE_IN_PLACE[state](old, requested, now):
                self._by_id[old.id] = replace(requested, id=old.id)
                self._save()
                return old.id
            expire = _EXPIRE[state]
            if expire is not None:
                self._by_id[old.id] = expire(old, now)
        new_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        # A new silence cannot start in the past: it starts when it is made.
        self._by_id[new_id] = replace(requested, id=new_id, starts_at=max(starts_at, now))
        self._save()
        return new_id

    def create_json(self, body: Mapping[str, Any]) -> str:
        """API v2's PostableSilence: {id?, matchers, startsAt, endsAt, createdBy, comment}."""
        if not isinstance(body, Mapping):
            raise BadData("silence must be a JSON object")
        raw = body.get("matchers")
        if not isinstance(raw, list):
            raise BadData("silence: matchers must be a list")
        starts = parse_rfc3339(body.get("startsAt", ""), "startsAt")
        ends = parse_rfc3339(body.get("endsAt", ""), "endsAt")
        if starts is None or ends is None:
            raise BadData("silence: startsAt and endsAt are required")
        sid = body.get("id") or None
        if sid is not None and not isinstance(sid, str):
            raise BadData("silence: id must be a string")
        by, comment = body.get("createdBy", ""), body.get("comment", "")
        if not isinstance(by, str) or not isinstance(comment, str):
            raise BadData("silence: createdBy and comment must be strings")
        ms = [matcher_from_json(m) for m in raw]
        return self.create(ms, starts, ends, by, comment, silence_id=sid)

    def expire(self, silence_id: str) -> None:
        now = self._clock()
        old = self.get(silence_id)
        action = _EXPIRE[old.state(now)]
        if action is None:
            raise BadData(f"silence {silence_id} is already expired")
        self._by_id[silence_id] = action(old, now)
        self._save()

    def gc(self, now: float) -> int:
        """Drop silences expired longer than the retention; returns how many."""
        old = [s.id for s in self._by_id.values() if s.ends_at + self._retention <= now]
        for sid in old:
            del self._by_id[sid]
        if old:
            self._save()
        return len(old)

    # -- persistence --

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown version {doc.get('version')!r}")
            for rec in doc["silences"]:
                s = Silence._from_record(rec)
                self._by_id[s.id] = s
        except (OSError, ValueError, KeyError, TypeError, BadData) as exc:
            raise StorageError(f"cannot read silences from {path}: {exc}") from exc

    def _save(self) -> None:
        if self._path is None:
            return
        records = [s._to_record() for s in sorted(self._by_id.values(), key=lambda s: s.id)]
        data = json.dumps({"version": FORMAT_VERSION, "silences": records}, indent=1)
        folder = self._path.parent
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot write silences to {self._path}: {exc}") from exc
