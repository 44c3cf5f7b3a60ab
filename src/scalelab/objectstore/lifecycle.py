"""Lifecycle rules: S3's configuration XML, and the decisions a background sweeper acts on.

Versioning (ch. 9) keeps every version of an object, so a bucket only ever grows; lifecycle rules
are how it shrinks again: expire current objects after N days (or on a date), permanently delete
versions that have been noncurrent for N days (keeping the newest K), remove delete markers that
no longer hide anything, and abort multipart uploads abandoned half way.

Everything here is pure and takes its clock as arguments (`now`, epoch seconds) so tests run on
virtual time. `day_seconds` is the length of a lifecycle day: with the real 86400, S3's rounding
applies (an action `days` after time t is due at the first midnight UTC at or after t + days);
with any other length (a debug setting that shortens days to seconds) an action is simply due at
t + days * day_seconds, because "midnight" means nothing on a shortened clock. `Date`
expirations are absolute instants and do not scale.

The sweeper needs no rule logic of its own: it hands `plan` the versions of some keys and the
open uploads, and performs the `Action`s it gets back.

Choices where S3 is loose or we differ:
- a rule without ID keeps ID "" (S3 would invent one); IDs, when given, must be unique;
- Transition and NoncurrentVersionTransition are refused (InvalidArgument): there is one storage
  class;
- a delete marker counts as size 0 and has no tags when matching filters, and noncurrent delete
  markers are noncurrent versions (they expire, and count towards NewerNoncurrentVersions);
- a rule with an object-size filter never matches an object whose size the caller did not give.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Literal
from xml.etree import ElementTree as ET

from scalelab.objectstore.errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
DAY = 86400.0
MAX_RULES = 1000
MAX_ID_LENGTH = 255
MAX_NEWER_NONCURRENT = 100
_MAX_INT = 2**31 - 1  # xsd:int, what S3's schema allows for Days
_MAX_LONG = 2**63 - 1  # xsd:long, for object sizes

Status = Literal["Enabled", "Disabled"]
Versioning = Literal["Enabled", "Suspended"] | None


# --- the configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """Which objects a rule applies to: all predicates must hold (S3's `And`)."""

    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    size_greater_than: int | None = None
    size_less_than: int | None = None

    @property
    def has_size(self) -> bool:
        return self.size_greater_than is not None or self.size_less_than is not None

    def matches(self, key: str, tags: Mapping[str, str], size: int) -> bool:
        if not key.startswith(self.prefix):
            return False
        if any(tags.get(k) != v for k, v in self.tags):
            return False
        if self.size_greater_than is not None and not size > self.size_greater_than:
            return False
        return self.size_less_than is None or size < self.size_less_than


@dataclass(frozen=True)
class Expiration:
    """Expire the current version after `days`, or from `date`; or clean up delete markers."""

    days: int | None = None
    date: date | None = None
    expired_object_delete_marker: bool | None = None


@dataclass(frozen=True)
class NoncurrentVersionExpiration:
    """Delete versions noncurrent for `noncurrent_days`, keeping the newest `newer_...` of them."""

    noncurrent_days: int
    newer_noncurrent_versions: int | None = None


@dataclass(frozen=True)
class Rule:
    """One lifecycle rule. `legacy_prefix`: it was written with a top-level <Prefix> (kept so
    GetBucketLifecycleConfiguration returns the form that was put); its filter is prefix-only."""

    id: str = ""
    status: Status = "Enabled"
    filter: Filter = Filter()
    legacy_prefix: bool = False
    expiration: Expiration | None = None
    noncurrent_version_expiration: NoncurrentVersionExpiration | None = None
    abort_incomplete_upload_days: int | None = None

    @property
    def enabled(self) -> bool:
        return self.status == "Enabled"


# --- XML -------------------------------------------------------------------------------------

_DTD = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _malformed(detail: str = "") -> S3Error:
    return S3Error("MalformedXML", detail or None)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml_root(xml_bytes: bytes, root: str) -> ET.Element:
    """Parse a small S3 configuration document safely: no DTDs (so no entity expansion bombs),
    UTF-8 only, any or no namespace; the root element must be `root`."""
    try:
        text = xml_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _malformed("The XML must be UTF-8.") from None
    if _DTD.search(text):
        raise _malformed("DTDs and entities are not allowed.")
    try:
        elem = ET.fromstring(xml_bytes)
    except ET.ParseError:
        raise _malformed() from None
    if _local(elem.tag) != root:
        raise _malformed(f"The root element must be {root}.")
    return elem


def _children(elem: ET.Element, allowed: Iterable[str]) -> dict[str, list[ET.Element]]:
    """Children by local name; an element S3's schema does not allow there is MalformedXML."""
    ok = set(allowed)
    out: dict[str, list[ET.Element]] = {}
    for child in elem:
        name = _local(child.tag)
        if name not in ok:
            raise _malformed(f"Unexpected element {name} in {_local(elem.tag)}.")
        out.setdefault(name, []).append(child)
    return out


def _single(found: dict[str, list[ET.Element]], name: str) -> ET.Element | None:
    items = found.get(name, [])
    if len(items) > 1:
        raise _malformed(f"{name} may appear only once.")
    return items[0] if items else None


def _text(elem: ET.Element) -> str:
    if len(elem):
        raise _malformed(f"{_local(elem.tag)} must hold text, not elements.")
    return elem.text or ""


def _int(elem: ET.Element, limit: int = _MAX_INT) -> int:
    s = _text(elem).strip()
    if not re.fullmatch(r"[+-]?\d{1,20}", s) or abs(int(s)) > limit:
        raise _malformed(f"{_local(elem.tag)} must be an integer.")
    return int(s)


def _bool(elem: ET.Element) -> bool:
    s = _text(elem).strip()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise _malformed(f"{_local(elem.tag)} must be true or false.")


def _positive(elem: ET.Element, what: str) -> int:
    n = _int(elem)
    if n <= 0:
        raise S3Error("InvalidArgument", f"'{what}' must be a positive integer")
    return n


def _date(elem: ET.Element) -> date:
    s = _text(elem).strip()
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise S3Error("InvalidArgument", "'Date' must be an ISO 8601 date") from None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    if dt.time() != time(0):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
    return dt.date()


def _tag(elem: ET.Element) -> tuple[str, str]:
    found = _children(elem, ("Key", "Value"))
    k, v = _single(found, "Key"), _single(found, "Value")
    if k is None:
        raise _malformed("Tag needs a Key.")
    key, value = _text(k), _text(v) if v is not None else ""
    if not 1 <= len(key) <= 128 or len(value) > 256:
        raise S3Error("InvalidTag", "Tag keys are 1-128 characters, values up to 256.")
    return key, value


def _filter_predicates(found: dict[str, list[ET.Element]], many: bool) -> Filter:
    prefix = _single(found, "Prefix")
    gt, lt = _single(found, "ObjectSizeGreaterThan"), _single(found, "ObjectSizeLessThan")
    tags = [_tag(t) for t in found.get("Tag", [])]
    if not many and len(tags) > 1:
        raise _malformed("Filter may hold one Tag; use And for more.")
    if len({k for k, _ in tags}) != len(tags):
        raise S3Error("InvalidRequest", "Duplicate Tag Keys are not allowed.")
    size_gt = _int(gt, _MAX_LONG) if gt is not None else None
    size_lt = _int(lt, _MAX_LONG) if lt is not None else None
    if (size_gt is not None and size_gt < 0) or (size_lt is not None and size_lt < 0):
        raise S3Error("InvalidArgument", "Object size filters must not be negative")
    if size_gt is not None and size_lt is not None and size_gt >= size_lt:
        raise S3Error(
            "InvalidRequest", "ObjectSizeGreaterThan must be less than ObjectSizeLessThan"
        )
    return Filter(
        prefix=_text(prefix) if prefix is not None else "",
        tags=tuple(tags),
        size_greater_than=size_gt,
        size_less_than=size_lt,
    )


_PREDICATES = ("Prefix", "Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan")


def _filter(elem: ET.Element) -> Filter:
    found = _children(elem, (*_PREDICATES, "And"))
    if sum(len(v) for v in found.values()) > 1:
        raise _malformed("Filter holds at most one predicate; use And to combine them.")
    and_ = _single(found, "And")
    if and_ is not None:
        return _filter_predicates(_children(and_, _PREDICATES), many=True)
    return _filter_predicates(found, many=False)


def _expiration(elem: ET.Element) -> Expiration:
    found = _children(elem, ("Days", "Date", "ExpiredObjectDeleteMarker"))
    days, dt = _single(found, "Days"), _single(found, "Date")
    eodm = _single(found, "ExpiredObjectDeleteMarker")
    if days is None and dt is None and eodm is None:
        raise _malformed("Expiration needs Days, Date or ExpiredObjectDeleteMarker.")
    if days is not None and dt is not None:
        raise S3Error("InvalidArgument", "Expiration takes Days or Date, not both")
    if eodm is not None and (days is not None or dt is not None):
        raise S3Error(
            "InvalidArgument",
            "ExpiredObjectDeleteMarker cannot be specified with Days or Date in a Lifecycle "
            "Expiration Policy",
        )
    return Expiration(
        days=_positive(days, "Days") if days is not None else None,
        date=_date(dt) if dt is not None else None,
        expired_object_delete_marker=_bool(eodm) if eodm is not None else None,
    )


def _noncurrent(elem: ET.Element) -> NoncurrentVersionExpiration:
    found = _children(elem, ("NoncurrentDays", "NewerNoncurrentVersions"))
    days, newer = _single(found, "NoncurrentDays"), _single(found, "NewerNoncurrentVersions")
    if days is None:
        raise S3Error("InvalidArgument", "NoncurrentVersionExpiration needs NoncurrentDays")
    k = _positive(newer, "NewerNoncurrentVersions") if newer is not None else None
    if k is not None and k > MAX_NEWER_NONCURRENT:
        raise S3Error(
            "InvalidArgument", f"NewerNoncurrentVersions may be at most {MAX_NEWER_NONCURRENT}"
        )
    return NoncurrentVersionExpiration(_positive(days, "NoncurrentDays"), k)


_RULE_FIELDS = (
    "ID",
    "Status",
    "Filter",
    "Prefix",
    "Expiration",
    "NoncurrentVersionExpiration",
    "AbortIncompleteMultipartUpload",
    "Transition",
    "NoncurrentVersionTransition",
)


def _rule(elem: ET.Element) -> Rule:
    found = _children(elem, _RULE_FIELDS)
    if "Transition" in found or "NoncurrentVersionTransition" in found:
        raise S3Error(
            "InvalidArgument", "Transitions are not supported: this store has one storage class"
        )
    id_el, status_el = _single(found, "ID"), _single(found, "Status")
    status = _text(status_el).strip() if status_el is not None else ""
    if status not in ("Enabled", "Disabled"):
        raise _malformed("Status must be Enabled or Disabled.")
    filter_el, prefix_el = _single(found, "Filter"), _single(found, "Prefix")
    if (filter_el is None) == (prefix_el is None):
        raise _malformed("A rule needs exactly one of Filter and Prefix.")
    if filter_el is not None:
        flt = _filter(filter_el)
    else:
        assert prefix_el is not None
        flt = Filter(prefix=_text(prefix_el))
    exp_el = _single(found, "Expiration")
    nc_el = _single(found, "NoncurrentVersionExpiration")
    abort_el = _single(found, "AbortIncompleteMultipartUpload")
    abort_days = None
    if abort_el is not None:
        days_el = _single(_children(abort_el, ("DaysAfterInitiation",)), "DaysAfterInitiation")
        if days_el is None:
            raise _malformed("AbortIncompleteMultipartUpload needs DaysAfterInitiation.")
        abort_days = _positive(days_el, "DaysAfterInitiation")
    return Rule(
        id=_text(id_el) if id_el is not None else "",
        status="Enabled" if status == "Enabled" else "Disabled",
        filter=flt,
        legacy_prefix=prefix_el is not None,
        expiration=_expiration(exp_el) if exp_el is not None else None,
        noncurrent_version_expiration=_noncurrent(nc_el) if nc_el is not None else None,
        abort_incomplete_upload_days=abort_days,
    )


def validate_rules(rules: Sequence[Rule]) -> None:
    """The cross-field checks S3 makes on a whole configuration (parse runs them)."""
    if not rules:
        raise _malformed("A lifecycle configuration needs at least one Rule.")
    if len(rules) > MAX_RULES:
        raise _malformed(f"A lifecycle configuration holds at most {MAX_RULES} rules.")
    ids = [r.id for r in rules if r.id]
    if len(ids) != len(set(ids)):
        raise S3Error(
            "InvalidArgument", "Rule ID must be unique. Found same ID for more than one rule"
        )
    for r in rules:
        if len(r.id) > MAX_ID_LENGTH:
            raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of 255")
        if (
            r.expiration is None
            and r.noncurrent_version_expiration is None
            and r.abort_incomplete_upload_days is None
        ):
            raise S3Error("InvalidRequest", "At least one action needs to be specified in a rule")
        narrowed = r.filter.tags or r.filter.has_size
        if narrowed and r.abort_incomplete_upload_days is not None:
            raise S3Error(
                "InvalidRequest",
                "AbortIncompleteMultipartUpload cannot be specified with Tags or object size",
            )
        if r.filter.tags and r.expiration and r.expiration.expired_object_delete_marker:
            raise S3Error(
                "InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with Tags"
            )


def parse_lifecycle(xml_bytes: bytes) -> list[Rule]:
    """PutBucketLifecycleConfiguration's body -> rules, or the S3Error S3 would answer."""
    root = parse_xml_root(xml_bytes, "LifecycleConfiguration")
    found = _children(root, ("Rule",))
    rule_els = found.get("Rule", [])
    if len(rule_els) > MAX_RULES:  # before parsing a huge document's rules one by one
        raise _malformed(f"A lifecycle configuration holds at most {MAX_RULES} rules.")
    rules = [_rule(el) for el in rule_els]
    validate_rules(rules)
    return rules


def _sub(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, name)
    if text is not None:
        el.text = text
    return el


def _render_filter(parent: ET.Element, f: Filter) -> None:
    el = _sub(parent, "Filter")
    count = (
        bool(f.prefix)
        + len(f.tags)
        + (f.size_greater_than is not None)
        + (f.size_less_than is not None)
    )
    target = _sub(el, "And") if count > 1 else el
    if f.prefix or count > 1:
        _sub(target, "Prefix", f.prefix)
    for k, v in f.tags:
        tag = _sub(target, "Tag")
        _sub(tag, "Key", k)
        _sub(tag, "Value", v)
    if f.size_greater_than is not None:
        _sub(target, "ObjectSizeGreaterThan", str(f.size_greater_than))
    if f.size_less_than is not None:
        _sub(target, "ObjectSizeLessThan", str(f.size_less_than))


def render_lifecycle(rules: Sequence[Rule]) -> bytes:
    """GetBucketLifecycleConfiguration's body; `parse_lifecycle` reads it back to equal rules."""
    root = ET.Element("LifecycleConfiguration", {"xmlns": S3_NS})
    for r in rules:
        el = _sub(root, "Rule")
        if r.id:
            _sub(el, "ID", r.id)
        if r.legacy_prefix:
            _sub(el, "Prefix", r.filter.prefix)
        else:
            _render_filter(el, r.filter)
        _sub(el, "Status", r.status)
        if r.expiration is not None:
            exp = _sub(el, "Expiration")
            e = r.expiration
            if e.days is not None:
                _sub(exp, "Days", str(e.days))
            if e.date is not None:
                _sub(exp, "Date", f"{e.date.isoformat()}T00:00:00.000Z")
            if e.expired_object_delete_marker is not None:
                _sub(exp, "ExpiredObjectDeleteMarker", str(e.expired_object_delete_marker).lower())
        if r.noncurrent_version_expiration is not None:
            nc = _sub(el, "NoncurrentVersionExpiration")
            n = r.noncurrent_version_expiration
            _sub(nc, "NoncurrentDays", str(n.noncurrent_days))
            if n.newer_noncurrent_versions is not None:
                _sub(nc, "NewerNoncurrentVersions", str(n.newer_noncurrent_versions))
        if r.abort_incomplete_upload_days is not None:
            ab = _sub(el, "AbortIncompleteMultipartUpload")
            _sub(ab, "DaysAfterInitiation", str(r.abort_incomplete_upload_days))
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()


# --- evaluation ------------------------------------------------------------------------------


def due_at(start: float, days: int, day_seconds: float = DAY) -> float:
    """When an action `days` lifecycle days after `start` becomes due (see module docstring)."""
    t = start + days * day_seconds
    if day_seconds == DAY:
        return math.ceil(t / DAY) * DAY  # next midnight UTC; POSIX days are exactly 86400 s
    return t


def date_epoch(d: date) -> float:
    """Midnight UTC at the start of `d`, in epoch seconds."""
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def current_expired(
    rule: Rule,
    key: str,
    tags: Mapping[str, str],
    last_modified: float,
    *,
    now: float,
    day_seconds: float = DAY,
    size: int | None = None,
) -> bool:
    """Whether `rule` expires the current (latest, not delete marker) version of `key`."""
    e = rule.expiration
    if not rule.enabled or e is None:
        return False
    if size is None and rule.filter.has_size:
        return False
    if not rule.filter.matches(key, tags, size or 0):
        return False
    if e.days is not None:
        return now >= due_at(last_modified, e.days, day_seconds)
    if e.date is not None:
        return now >= date_epoch(e.date)
    return False


def noncurrent_expired(
    rule: Rule,
    key: str,
    became_noncurrent_at: float,
    newer_noncurrent_count: int,
    *,
    now: float,
    day_seconds: float = DAY,
    tags: Mapping[str, str] | None = None,
    size: int | None = None,
) -> bool:
    """Whether `rule` permanently deletes a noncurrent version of `key`.

    `newer_noncurrent_count`: how many noncurrent versions of the key are newer than this one;
    with NewerNoncurrentVersions = k the newest k noncurrent versions are kept however old.
    """
    n = rule.noncurrent_version_expiration
    if not rule.enabled or n is None:
        return False
    if size is None and rule.filter.has_size:
        return False
    if not rule.filter.matches(key, tags or {}, size or 0):
        return False
    if n.newer_noncurrent_versions is not None and (
        newer_noncurrent_count < n.newer_noncurrent_versions
    ):
        return False
    return now >= due_at(became_noncurrent_at, n.noncurrent_days, day_seconds)


def upload_abandoned(
    rule: Rule, key: str, initiated: float, *, now: float, day_seconds: float = DAY
) -> bool:
    """Whether `rule` aborts a multipart upload of `key` started at `initiated`."""
    days = rule.abort_incomplete_upload_days
    if not rule.enabled or days is None or not rule.filter.matches(key, {}, 0):
        return False
    return now >= due_at(initiated, days, day_seconds)


def expired_delete_marker_removable(
    rule: Rule,
    key: str,
    is_only_version: bool,
    *,
    now: float,
    day_seconds: float = DAY,
    last_modified: float | None = None,
) -> bool:
    """Whether `rule` removes a delete marker that is the key's latest and only version.

    ExpiredObjectDeleteMarker removes it at once; an Expiration with Days also removes it once
    the marker itself is that old (S3 does this cleanup implicitly), which needs `last_modified`.
    """
    e = rule.expiration
    if not rule.enabled or e is None or not is_only_version:
        return False
    if not rule.filter.matches(key, {}, 0):
        return False
    if e.expired_object_delete_marker:
        return True
    if e.days is not None and last_modified is not None:
        return now >= due_at(last_modified, e.days, day_seconds)
    return False


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectVersionInfo:
    """What the sweeper knows about one version. `noncurrent_since`: when a newer version
    replaced it (None: taken from the next newer version's last_modified)."""

    key: str
    version_id: str | None
    is_latest: bool
    is_delete_marker: bool
    last_modified: float
    noncurrent_since: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    size: int | None = None


@dataclass(frozen=True)
class UploadInfo:
    """An open multipart upload."""

    key: str
    upload_id: str
    initiated: float


ActionKind = Literal[
    "add_delete_marker",  # versioned/suspended bucket: a plain DELETE of the key
    "delete_object",  # unversioned bucket: delete the object
    "delete_version",  # permanently delete a noncurrent version (or noncurrent delete marker)
    "remove_delete_marker",  # permanently delete an expired delete marker (the key's only version)
    "abort_upload",  # abort a multipart upload and free its parts
]


@dataclass(frozen=True)
class Action:
    """One thing the sweeper should do, and the rule that asked for it (for logs and metrics)."""

    kind: ActionKind
    key: str
    rule_id: str
    version_id: str | None = None
    upload_id: str | None = None


def plan_key(
    rules: Sequence[Rule],
    versions: Iterable[ObjectVersionInfo],
    *,
    versioning: Versioning,
    now: float,
    day_seconds: float = DAY,
) -> list[Action]:
    """The actions due for one key, given all its versions (any order; newest first on ties).

    One pass does not cascade: a delete marker whose last noncurrent version is deleted now is
    removed on a later pass, as in S3.
    """
    all_versions = list(versions)
    latest = [v for v in all_versions if v.is_latest]
    if len(latest) > 1:
        raise ValueError("a key has at most one latest version")
    older = sorted((v for v in all_versions if not v.is_latest), key=lambda v: -v.last_modified)
    ordered = latest + older
    actions: list[Action] = []
    enabled = [r for r in rules if r.enabled]

    if latest:
        cur = latest[0]
        if cur.is_delete_marker:
            only = not older
            for r in enabled:
                if expired_delete_marker_removable(
                    r,
                    cur.key,
                    only,
                    now=now,
                    day_seconds=day_seconds,
                    last_modified=cur.last_modified,
                ):
                    actions.append(
                        Action("remove_delete_marker", cur.key, r.id, version_id=cur.version_id)
                    )
                    break
        else:
            for r in enabled:
                if current_expired(
                    r,
                    cur.key,
                    cur.tags,
                    cur.last_modified,
                    now=now,
                    day_seconds=day_seconds,
                    size=cur.size,
                ):
                    if versioning is None:
                        actions.append(
                            Action("delete_object", cur.key, r.id, version_id=cur.version_id)
                        )
                    else:
                        actions.append(Action("add_delete_marker", cur.key, r.id))
                    break

    for i, v in enumerate(older):
        position = i + len(latest)
        since = v.noncurrent_since
        if since is None:
            since = ordered[position - 1].last_modified if position > 0 else v.last_modified
        tags: Mapping[str, str] = {} if v.is_delete_marker else v.tags
        size = 0 if v.is_delete_marker else v.size
        for r in enabled:
            if noncurrent_expired(
                r, v.key, since, i, now=now, day_seconds=day_seconds, tags=tags, size=size
            ):
                actions.append(Action("delete_version", v.key, r.id, version_id=v.version_id))
                break
    return actions


def plan_uploads(
    rules: Sequence[Rule], uploads: Iterable[UploadInfo], *, now: float, day_seconds: float = DAY
) -> list[Action]:
    """The multipart uploads to abort."""
    actions: list[Action] = []
    enabled = [r for r in rules if r.enabled]
    for u in uploads:
        for r in enabled:
            if upload_abandoned(r, u.key, u.initiated, now=now, day_seconds=day_seconds):
                actions.append(Action("abort_upload", u.key, r.id, upload_id=u.upload_id))
                break
    return actions


def plan(
    rules: Sequence[Rule],
    versions: Iterable[ObjectVersionInfo],
    uploads: Iterable[UploadInfo] = (),
    *,
    versioning: Versioning,
    now: float,
    day_seconds: float = DAY,
) -> list[Action]:
    """Everything due in a bucket: versions of any keys in any order, plus open uploads.

    Groups versions by key in memory; for a huge bucket call `plan_key` per key while listing.
    """
    by_key: dict[str, list[ObjectVersionInfo]] = {}
    for v in versions:
        by_key.setdefault(v.key, []).append(v)
    actions: list[Action] = []
    for vs in by_key.values():
        actions += plan_key(rules, vs, versioning=versioning, now=now, day_seconds=day_seconds)
    actions += plan_uploads(rules, uploads, now=now, day_seconds=day_seconds)
    return actions
