"""Bucket policies: the authorization half of the book's IAM (ch. 9), in S3's own JSON language.

Authentication (SigV4) tells us *who* sent a request; this module decides whether that principal
may perform an action on a resource. Pure logic: the API parses the policy once when it is put,
and asks `decide` on every request.

Principals are access key ids. Each key pair is its own principal (there are no accounts or IAM
users), so a policy names one as the bare key id ("AKIAEXAMPLE") or as an IAM user ARN whose user
name is the key id ("arn:aws:iam::<anything>:user/AKIAEXAMPLE"; the account part is ignored).
"*" (or {"AWS": "*"}) is everyone, anonymous requests included. Other principal kinds (account
roots, {"Service": ...}, {"CanonicalUser": ...}) cannot name one of our key pairs and are refused.

Resources are S3 ARNs: "arn:aws:s3:::bucket" for bucket operations, "arn:aws:s3:::bucket/key"
for object operations (`resource_arn`). Actions and resources take `*` (any run of characters,
"/" included) and `?` (one character); actions match case-insensitively, resources exactly, as
in IAM. Policy variables ("${aws:username}") are not expanded and match literally.

Conditions: a small, useful set is supported (string, numeric, Bool, IP address and Null
operators, with the `...IfExists` suffix); anything else is MalformedPolicy rather than being
silently ignored. Condition values come from the `context` the caller passes to `evaluate`
(e.g. {"aws:SecureTransport": "false", "aws:SourceIp": "10.0.0.7", "s3:prefix": "logs/"}); a key
the caller does not supply is absent, with IAM's rules for absent keys.

A missing Version means "2008-10-17", as in IAM.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from scalelab.objectstore.errors import S3Error

Effect = Literal["Allow", "Deny"]
Decision = Literal["allow", "deny", "none"]

VERSIONS = ("2012-10-17", "2008-10-17")
MAX_POLICY_BYTES = 20 * 1024  # S3's limit on a bucket policy
ARN_PREFIX = "arn:aws:s3:::"

# Our operation names (S3 API operation names) -> the S3 action a policy grants or denies.
ACTIONS: dict[str, str] = {
    # objects
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "GetObjectVersion": "s3:GetObjectVersion",
    "GetObjectAttributes": "s3:GetObjectAttributes",
    "PutObject": "s3:PutObject",
    "PostObject": "s3:PutObject",
    "CopyObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "UploadPartCopy": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
    "DeleteObjectVersion": "s3:DeleteObjectVersion",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "GetObjectAcl": "s3:GetObjectAcl",
    "PutObjectAcl": "s3:PutObjectAcl",
    # buckets
    "ListBuckets": "s3:ListAllMyBuckets",
    "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "PutBucketPolicy": "s3:PutBucketPolicy",
    "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
    "GetBucketPolicyStatus": "s3:GetBucketPolicyStatus",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetBucketCors": "s3:GetBucketCORS",
    "PutBucketCors": "s3:PutBucketCORS",
    "DeleteBucketCors": "s3:PutBucketCORS",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetBucketLifecycle": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycle": "s3:PutLifecycleConfiguration",
    "GetLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "GetBucketTagging": "s3:GetBucketTagging",
    "PutBucketTagging": "s3:PutBucketTagging",
    "DeleteBucketTagging": "s3:PutBucketTagging",
    "GetBucketAcl": "s3:GetBucketAcl",
    "PutBucketAcl": "s3:PutBucketAcl",
}

# S3 checks a different action when the request names a version (?versionId=...).
_VERSIONED_ACTIONS: dict[str, str] = {
    "GetObject": "s3:GetObjectVersion",
    "HeadObject": "s3:GetObjectVersion",
    "DeleteObject": "s3:DeleteObjectVersion",
    "DeleteObjects": "s3:DeleteObjectVersion",
    "GetObjectTagging": "s3:GetObjectVersionTagging",
    "PutObjectTagging": "s3:PutObjectVersionTagging",
    "DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "GetObjectAcl": "s3:GetObjectVersionAcl",
    "PutObjectAcl": "s3:PutObjectVersionAcl",
    "GetObjectAttributes": "s3:GetObjectVersionAttributes",
}

# The bucket owner may always manage the policy itself, so a Deny cannot lock it out (as in S3).
_OWNER_ALWAYS = frozenset({"s3:getbucketpolicy", "s3:putbucketpolicy", "s3:deletebucketpolicy"})


def s3_action(operation: str, *, versioned: bool = False) -> str:
    """The S3 action to authorize for an operation; `versioned` when the request has a versionId.

    Raises KeyError for an operation we do not know: a missing mapping is a bug, not a denial.
    """
    if versioned and operation in _VERSIONED_ACTIONS:
        return _VERSIONED_ACTIONS[operation]
    return ACTIONS[operation]


def resource_arn(bucket: str, key: str | None = None) -> str:
    """The ARN a policy names: the bucket's for bucket operations, the object's for object ones."""
    return f"{ARN_PREFIX}{bucket}" if key is None else f"{ARN_PREFIX}{bucket}/{key}"


def public_read_policy(bucket: str, *, listable: bool = False) -> str:
    """The policy "make this bucket public" writes: anyone may read objects (and list, if asked)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "PublicReadGetObject",
            "Effect": "Allow",
            "Principal": "*",
            "Action": ["s3:GetObject"],
            "Resource": [resource_arn(bucket, "*")],
        }
    ]
    if listable:
        statements.append(
            {
                "Sid": "PublicListBucket",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
                "Resource": [resource_arn(bucket)],
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, indent=2)


# --- wildcards -------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcard match: `*` is any run of characters (including none), `?` exactly one."""
    return _glob(pattern, ignore_case).fullmatch(value) is not None


def _can_match_with_prefix(pattern: str, prefix: str) -> bool:
    """Whether some string starting with `prefix` matches `pattern` (an NFA run over prefix)."""

    def close(states: set[int]) -> set[int]:
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < len(pattern) and pattern[i] == "*" and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    states = close({0})
    for c in prefix:
        nxt: set[int] = set()
        for i in states:
            if i < len(pattern):
                if pattern[i] == "*":
                    nxt.add(i)
                elif pattern[i] == "?" or pattern[i] == c:
                    nxt.add(i + 1)
        states = close(nxt)
        if not states:
            return False
    return True


# --- the document ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Principals:
    """Who a statement is about: everyone (`anyone`) or a set of access key ids."""

    anyone: bool
    keys: frozenset[str] = frozenset()

    def matches(self, principal: str | None) -> bool:
        if self.anyone:
            return True
        return principal is not None and principal in self.keys


_NEGATED_OPS = frozenset(
    {
        "StringNotEquals",
        "StringNotEqualsIgnoreCase",
        "StringNotLike",
        "NumericNotEquals",
        "NotIpAddress",
    }
)


def _num(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _ip_in(value: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(value.strip()) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def _numeric(cmp: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def test(actual: str, wanted: str) -> bool:
        a, w = _num(actual), _num(wanted)
        return a is not None and w is not None and cmp(a, w)

    return test


# Positive form of each operator: does the request value match one policy value?
_OPERATORS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda a, w: a == w,
    "StringNotEquals": lambda a, w: a == w,
    "StringEqualsIgnoreCase": lambda a, w: a.casefold() == w.casefold(),
    "StringNotEqualsIgnoreCase": lambda a, w: a.casefold() == w.casefold(),
    "StringLike": lambda a, w: wildcard_match(w, a),
    "StringNotLike": lambda a, w: wildcard_match(w, a),
    "NumericEquals": _numeric(lambda a, w: a == w),
    "NumericNotEquals": _numeric(lambda a, w: a == w),
    "NumericLessThan": _numeric(lambda a, w: a < w),
    "NumericLessThanEquals": _numeric(lambda a, w: a <= w),
    "NumericGreaterThan": _numeric(lambda a, w: a > w),
    "NumericGreaterThanEquals": _numeric(lambda a, w: a >= w),
    "Bool": lambda a, w: a.lower() == w.lower(),
    "IpAddress": _ip_in,
    "NotIpAddress": _ip_in,
}


@dataclass(frozen=True)
class Condition:
    """One `"Operator": {"key": [values]}` test; the statement applies only if all hold."""

    operator: str  # base operator, without IfExists
    if_exists: bool
    key: str  # lower-cased: condition keys are case-insensitive
    values: tuple[str, ...]

    def holds(self, context: Mapping[str, str]) -> bool:
        actual = context.get(self.key)
        if self.operator == "Null":
            return any((actual is None) == (v.lower() == "true") for v in self.values)
        if actual is None:
            return self.if_exists or self.operator in _NEGATED_OPS
        test = _OPERATORS[self.operator]
        hit = any(test(actual, v) for v in self.values)
        return not hit if self.operator in _NEGATED_OPS else hit


@dataclass(frozen=True)
class Statement:
    """One Allow or Deny: who (principal), what (action), on what (resource), when (condition)."""

    effect: Effect
    principals: Principals
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    sid: str = ""
    not_principal: bool = False
    not_action: bool = False
    not_resource: bool = False
    conditions: tuple[Condition, ...] = ()

    def applies(
        self, principal: str | None, action: str, resource: str, context: Mapping[str, str]
    ) -> bool:
        if self.principals.matches(principal) == self.not_principal:
            return False
        hit = any(wildcard_match(a, action, ignore_case=True) for a in self.actions)
        if hit == self.not_action:
            return False
        hit = any(wildcard_match(r, resource) for r in self.resources)
        if hit == self.not_resource:
            return False
        return all(c.holds(context) for c in self.conditions)


@dataclass(frozen=True)
class Policy:
    """A parsed bucket policy; immutable, so the API can cache it per bucket."""

    statements: tuple[Statement, ...]
    version: str = "2012-10-17"
    id: str = ""

    def evaluate(
        self,
        principal: str | None,
        action: str,
        resource: str,
        context: Mapping[str, str] | None = None,
    ) -> Decision:
        """Explicit Deny wins over any Allow; "none" means the policy says nothing."""
        ctx = {k.lower(): v for k, v in (context or {}).items()}
        allowed = False
        for st in self.statements:
            if st.applies(principal, action, resource, ctx):
                if st.effect == "Deny":
                    return "deny"
                allowed = True
        return "allow" if allowed else "none"


def decide(
    *,
    principal: str | None,
    owner: str,
    action: str,
    resource: str,
    policy: Policy | None,
    context: Mapping[str, str] | None = None,
) -> bool:
    """S3's answer for one request on a bucket owned by `owner` (an access key id).

    The owner may do anything the policy does not explicitly deny (and may always manage the
    policy itself); anyone else, anonymous included, needs an explicit Allow and no Deny.
    """
    is_owner = principal is not None and principal == owner
    if is_owner and action.lower() in _OWNER_ALWAYS:
        return True
    decision = policy.evaluate(principal, action, resource, context) if policy else "none"
    if decision == "deny":
        return False
    return is_owner or decision == "allow"


# --- parsing ---------------------------------------------------------------------------------


def _bad(reason: str) -> S3Error:
    return S3Error("MalformedPolicy", reason)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _bad(f"Duplicate field {k}")
        out[k] = v
    return out


def _strings(value: object, field: str) -> tuple[str, ...]:
    """A string or a non-empty list of strings, as IAM allows for most fields."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _bad(f"{field} must not be empty")
    if not all(isinstance(i, str) and i for i in items):
        raise _bad(f"{field} must be a non-empty string or a list of them")
    return tuple(items)


_ACTION = re.compile(r"^s3:[A-Za-z*?]+$", re.IGNORECASE)
_USER_ARN = re.compile(r"^arn:aws:iam::[^:]*:user/(?:.*/)?([^/]+)$")


def _principal_key(p: str) -> str:
    m = _USER_ARN.match(p)
    key = m.group(1) if m else p
    if ":" in key or "*" in key or "?" in key or "/" in key:
        raise _bad(f"Invalid principal in policy: {p}")
    return key


def _principals(value: object) -> Principals:
    if value == "*":
        return Principals(anyone=True)
    if not isinstance(value, dict) or not value:
        raise _bad('Principal must be "*" or {"AWS": ...}')
    for k in value:
        if k != "AWS":
            raise _bad(f"Unsupported principal type {k}: our principals are access keys")
    names = _strings(value["AWS"], "Principal")
    if "*" in names:
        return Principals(anyone=True)
    return Principals(anyone=False, keys=frozenset(_principal_key(p) for p in names))


def _resource_ok(pattern: str, bucket: str | None) -> bool:
    if pattern == "*":
        return True
    if not pattern.startswith(ARN_PREFIX) or len(pattern) == len(ARN_PREFIX):
        return False
    if bucket is None:
        return True
    return wildcard_match(pattern, resource_arn(bucket)) or _can_match_with_prefix(
        pattern, resource_arn(bucket) + "/"
    )


def _condition_values(value: object, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _bad(f"Condition {where} has no values")
    out: list[str] = []
    for v in items:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, int | float):
            out.append(str(v))
        else:
            raise _bad(f"Condition {where} values must be strings, numbers or booleans")
    return tuple(out)


def _conditions(value: object) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise _bad("Condition must be an object")
    out: list[Condition] = []
    for op, block in value.items():
        if ":" in op:
            raise _bad(f"Condition set operators are not supported: {op}")
        base, if_exists = (op[: -len("IfExists")], True) if op.endswith("IfExists") else (op, False)
        if base not in _OPERATORS and (base != "Null" or if_exists):
            raise _bad(f"Invalid Condition type : {op} (not supported)")
        if not isinstance(block, dict) or not block:
            raise _bad(f"Condition {op} must map condition keys to values")
        for key, raw in block.items():
            if not key:
                raise _bad(f"Condition {op} has an empty key")
            values = _condition_values(raw, f"{op}/{key}")
            for v in values:
                if base.startswith("Numeric") and _num(v) is None:
                    raise _bad(f"Condition {op}/{key}: {v!r} is not a number")
                if base in ("Bool", "Null") and v.lower() not in ("true", "false"):
                    raise _bad(f"Condition {op}/{key}: {v!r} is not true or false")
                if base in ("IpAddress", "NotIpAddress"):
                    try:
                        ipaddress.ip_network(v, strict=False)
                    except ValueError:
                        raise _bad(f"Condition {op}/{key}: {v!r} is not an IP range") from None
            out.append(Condition(base, if_exists, key.lower(), values))
    return tuple(out)


_STATEMENT_FIELDS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)


def _one_of(raw: dict[str, Any], field: str) -> tuple[object, bool]:
    """The value of `field` or `Not<field>` (exactly one must be present), and which it was."""
    has, has_not = field in raw, f"Not{field}" in raw
    if has == has_not:
        raise _bad(f"Statement needs exactly one of {field} and Not{field}")
    return (raw[f"Not{field}"], True) if has_not else (raw[field], False)


def _statement(raw: object, bucket: str | None) -> Statement:
    if not isinstance(raw, dict):
        raise _bad("Statement must be an object")
    for k in raw:
        if k not in _STATEMENT_FIELDS:
            raise _bad(f"Unknown field {k}")
    sid = raw.get("Sid", "")
    if not isinstance(sid, str):
        raise _bad("Sid must be a string")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _bad("Invalid effect: Effect must be Allow or Deny")
    principal_raw, not_principal = _one_of(raw, "Principal")
    action_raw, not_action = _one_of(raw, "Action")
    resource_raw, not_resource = _one_of(raw, "Resource")
    actions = _strings(action_raw, "Action")
    for a in actions:
        if a != "*" and not _ACTION.match(a):
            raise _bad(f"Policy has invalid action: {a}")
    resources = _strings(resource_raw, "Resource")
    for r in resources:
        if not _resource_ok(r, bucket):
            raise _bad(f"Policy has invalid resource: {r}")
    return Statement(
        effect="Allow" if effect == "Allow" else "Deny",
        principals=_principals(principal_raw),
        actions=actions,
        resources=resources,
        sid=sid,
        not_principal=not_principal,
        not_action=not_action,
        not_resource=not_resource,
        conditions=_conditions(raw["Condition"]) if "Condition" in raw else (),
    )


def parse_policy(text: str, *, bucket: str | None = None) -> Policy:
    """Parse and validate a bucket policy; any problem is S3Error("MalformedPolicy", why).

    With `bucket`, every Resource must be able to name that bucket or an object in it, as S3
    requires of the policy attached to a bucket.
    """
    if len(text.encode("utf-8", "replace")) > MAX_POLICY_BYTES:
        raise _bad("Policies must be no larger than 20 KB")
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except S3Error:
        raise
    except (ValueError, RecursionError):
        raise _bad("Policies must be valid JSON") from None
    if not isinstance(doc, dict):
        raise _bad("Policies must be a JSON object")
    for k in doc:
        if k not in ("Version", "Id", "Statement"):
            raise _bad(f"Unknown field {k}")
    version = doc.get("Version", "2008-10-17")
    if version not in VERSIONS:
        raise _bad(f"Invalid policy version; use one of {', '.join(VERSIONS)}")
    pid = doc.get("Id", "")
    if not isinstance(pid, str):
        raise _bad("Id must be a string")
    if "Statement" not in doc:
        raise _bad("Missing required field Statement")
    raw = doc["Statement"]
    raws = raw if isinstance(raw, list) else [raw]
    if not raws:
        raise _bad("Statement must not be empty")
    statements = tuple(_statement(r, bucket) for r in raws)
    sids = [s.sid for s in statements if s.sid]
    if len(sids) != len(set(sids)):
        raise _bad("Statement IDs (SID) in a single policy must be unique")
    return Policy(statements=statements, version=version, id=pid)
