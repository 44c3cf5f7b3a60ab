import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.policy import (
    ACTIONS,
    Policy,
    decide,
    parse_policy,
    public_read_policy,
    resource_arn,
    s3_action,
    wildcard_match,
)

ALICE, BOB = "AKIAALICE", "AKIABOB"


def doc(*statements: dict[str, Any], version: str = "2012-10-17") -> str:
    return json.dumps({"Version": version, "Statement": list(statements)})


def stmt(effect: str = "Allow", **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"Effect": effect, "Principal": "*", "Action": "s3:*"}
    out["Resource"] = "arn:aws:s3:::b/*"
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def obj(key: str) -> str:
    return resource_arn("b", key)


BUCKET = resource_arn("b")

# A policy with a bit of everything: per-key-pair grants, wildcards, a Deny.
MIXED = parse_policy(
    doc(
        stmt(Principal={"AWS": ALICE}, Action="s3:Get*", Resource="arn:aws:s3:::b/*"),
        stmt(
            Principal={"AWS": [f"arn:aws:iam::123456789012:user/{BOB}"]},
            Action=["s3:PutObject", "s3:ListBucket"],
            Resource=["arn:aws:s3:::b", "arn:aws:s3:::b/uploads/*"],
        ),
        stmt(Principal="*", Action="s3:GetObject", Resource="arn:aws:s3:::b/public/*"),
        stmt("Deny", Principal="*", Action="s3:*", Resource="arn:aws:s3:::b/secret/*"),
        stmt(Principal={"AWS": "*"}, Action="s3:GetObject", Resource="arn:aws:s3:::b/img/??.png"),
    )
)


@pytest.mark.parametrize(
    ("principal", "action", "resource", "expected"),
    [
        (ALICE, "s3:GetObject", obj("a/b.txt"), "allow"),
        (ALICE, "s3:GetObjectTagging", obj("x"), "allow"),
        (ALICE, "s3:getobject", obj("x"), "allow"),  # actions are case-insensitive
        (ALICE, "s3:PutObject", obj("x"), "none"),
        (ALICE, "s3:ListBucket", BUCKET, "none"),
        (ALICE, "s3:GetObject", resource_arn("other", "x"), "none"),
        (BOB, "s3:PutObject", obj("uploads/1"), "allow"),
        (BOB, "s3:PutObject", obj("elsewhere"), "none"),
        (BOB, "s3:ListBucket", BUCKET, "allow"),
        (BOB, "s3:GetObject", obj("x"), "none"),
        (None, "s3:GetObject", obj("public/index.html"), "allow"),
        (None, "s3:GetObject", obj("private/x"), "none"),
        (None, "s3:PutObject", obj("public/x"), "none"),
        (BOB, "s3:GetObject", obj("public/x"), "allow"),
        (ALICE, "s3:GetObject", obj("secret/x"), "deny"),  # Deny beats Alice's Allow
        (None, "s3:GetObject", obj("secret/x"), "deny"),
        (None, "s3:GetObject", obj("img/ab.png"), "allow"),  # ? is exactly one character
        (None, "s3:GetObject", obj("img/abc.png"), "none"),
        (None, "s3:GetObject", obj("img/a.png"), "none"),
        (None, "s3:GetObject", obj("Public/x"), "none"),  # resources are case-sensitive
    ],
)
def test_evaluate_table(principal: str | None, action: str, resource: str, expected: str) -> None:
    assert MIXED.evaluate(principal, action, resource) == expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("s3:Get*", "s3:GetObject", True),
        ("s3:Get*", "s3:PutObject", False),
        ("*", "", True),
        ("a*b*c", "abbbc", True),
        ("a*b*c", "acb", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a.c", "abc", False),  # regex characters are literal
        ("a[b]c", "a[b]c", True),
        ("x/*", "x/y/z", True),  # * crosses slashes
    ],
)
def test_wildcards(pattern: str, value: str, expected: bool) -> None:
    assert wildcard_match(pattern, value) is expected


def test_statement_as_object_and_versions() -> None:
    for version in ("2012-10-17", "2008-10-17"):
        p = parse_policy(json.dumps({"Version": version, "Statement": stmt()}))
        assert p.version == version and len(p.statements) == 1
    assert parse_policy(json.dumps({"Statement": [stmt()]})).version == "2008-10-17"


def test_not_action_not_resource_not_principal() -> None:
    p = parse_policy(
        doc(
            stmt("Deny", Action=None, NotAction="s3:Get*"),
            stmt(Principal={"AWS": ALICE}, Resource=None, NotResource="arn:aws:s3:::b/tmp/*"),
            stmt("Deny", Principal=None, NotPrincipal={"AWS": ALICE}, Resource=BUCKET),
        )
    )
    assert p.evaluate(ALICE, "s3:GetObject", obj("x")) == "allow"
    assert p.evaluate(ALICE, "s3:GetObject", obj("tmp/x")) == "none"
    assert p.evaluate(ALICE, "s3:PutObject", obj("x")) == "deny"  # NotAction Deny
    assert p.evaluate(BOB, "s3:ListBucket", BUCKET) == "deny"  # everyone but Alice
    assert p.evaluate(None, "s3:ListBucket", BUCKET) == "deny"
    assert p.evaluate(ALICE, "s3:ListBucket", BUCKET) == "allow"  # NotResource: all but tmp/*


@pytest.mark.parametrize(
    ("principal", "action", "has_policy", "expected"),
    [
        (ALICE, "s3:PutObject", False, True),  # the owner needs no policy
        (ALICE, "s3:DeleteObject", True, False),  # ...unless explicitly denied
        (ALICE, "s3:PutBucketPolicy", True, True),  # but can never lock itself out
        (ALICE, "s3:GetBucketPolicy", True, True),
        (ALICE, "s3:DeleteBucketPolicy", True, True),
        (BOB, "s3:PutObject", False, False),  # others need an Allow
        (BOB, "s3:GetObject", True, True),
        (BOB, "s3:PutObject", True, False),
        (BOB, "s3:PutBucketPolicy", True, False),
        (None, "s3:GetObject", True, True),
        (None, "s3:GetObject", False, False),
        (None, "s3:DeleteObject", True, False),
    ],
)
def test_decide(principal: str | None, action: str, has_policy: bool, expected: bool) -> None:
    p = parse_policy(
        doc(
            stmt(Action="s3:GetObject"),
            stmt("Deny", Action=["s3:DeleteObject", "s3:*BucketPolicy"], Resource="*"),
        )
    )
    resource = BUCKET if "Bucket" in action else obj("k")
    got = decide(
        principal=principal,
        owner=ALICE,
        action=action,
        resource=resource,
        policy=p if has_policy else None,
    )
    assert got is expected


def test_public_read_policy() -> None:
    p = parse_policy(public_read_policy("site"), bucket="site")
    assert p.evaluate(None, "s3:GetObject", resource_arn("site", "index.html")) == "allow"
    assert p.evaluate(None, "s3:ListBucket", resource_arn("site")) == "none"
    assert p.evaluate(None, "s3:PutObject", resource_arn("site", "x")) == "none"
    assert p.evaluate(None, "s3:GetObject", resource_arn("other", "x")) == "none"
    listable = parse_policy(public_read_policy("site", listable=True), bucket="site")
    assert listable.evaluate(None, "s3:ListBucket", resource_arn("site")) == "allow"


def test_actions_mapping() -> None:
    assert ACTIONS["HeadObject"] == ACTIONS["GetObject"] == "s3:GetObject"
    assert ACTIONS["ListObjectsV2"] == "s3:ListBucket"
    assert ACTIONS["ListObjectVersions"] == "s3:ListBucketVersions"
    for op in ("PutObject", "CopyObject", "UploadPart", "CreateMultipartUpload"):
        assert ACTIONS[op] == "s3:PutObject"
    assert ACTIONS["CompleteMultipartUpload"] == "s3:PutObject"
    assert ACTIONS["DeleteObjects"] == "s3:DeleteObject"
    assert s3_action("GetObject", versioned=True) == "s3:GetObjectVersion"
    assert s3_action("DeleteObject", versioned=True) == "s3:DeleteObjectVersion"
    assert s3_action("PutObject", versioned=True) == "s3:PutObject"
    # every action we check can be granted by a policy naming it
    for action in ACTIONS.values():
        parse_policy(doc(stmt(Action=action)))
    with pytest.raises(KeyError):
        s3_action("NoSuchOperation")


def test_resource_arn() -> None:
    assert resource_arn("b") == "arn:aws:s3:::b"
    assert resource_arn("b", "a/b c") == "arn:aws:s3:::b/a/b c"
    assert resource_arn("b", "") == "arn:aws:s3:::b/"


def test_bucket_bound_resources() -> None:
    for ok in ("*", "arn:aws:s3:::b", "arn:aws:s3:::b/*", "arn:aws:s3:::*", "arn:aws:s3:::b*/x"):
        parse_policy(doc(stmt(Resource=ok)), bucket="b")
    for bad in ("arn:aws:s3:::other/*", "arn:aws:s3:::bb", "arn:aws:s3:::bx?/*"):
        with pytest.raises(S3Error) as e:
            parse_policy(doc(stmt(Resource=bad)), bucket="b")
        assert e.value.code == "MalformedPolicy"
    parse_policy(doc(stmt(Resource="arn:aws:s3:::other/*")))  # no bucket given: any S3 ARN


def _cond(condition: dict[str, Any]) -> Policy:
    return parse_policy(doc(stmt(Condition=condition)))


@pytest.mark.parametrize(
    ("condition", "context", "expected"),
    [
        ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "true"}, "allow"),
        ({"Bool": {"aws:SecureTransport": True}}, {"aws:securetransport": "TRUE"}, "allow"),
        ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": "false"}, "none"),
        ({"Bool": {"aws:SecureTransport": "true"}}, {}, "none"),  # absent: false
        ({"BoolIfExists": {"aws:SecureTransport": "true"}}, {}, "allow"),
        ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "10.1.2.3"}, "allow"),
        (
            {"IpAddress": {"aws:SourceIp": ["192.0.2.0/24", "::1"]}},
            {"aws:SOURCEIP": "::1"},
            "allow",
        ),
        ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "11.0.0.1"}, "none"),
        ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {"aws:SourceIp": "11.0.0.1"}, "allow"),
        ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, "allow"),  # negated, absent: true
        ({"StringLike": {"s3:prefix": ["home/*", "pub"]}}, {"s3:prefix": "home/x"}, "allow"),
        ({"StringLike": {"s3:prefix": "home/*"}}, {"s3:prefix": "etc"}, "none"),
        ({"StringNotLike": {"s3:prefix": "home/*"}}, {"s3:prefix": "etc"}, "allow"),
        ({"StringEquals": {"s3:prefix": "A"}}, {"s3:prefix": "a"}, "none"),
        ({"StringEqualsIgnoreCase": {"s3:prefix": "A"}}, {"s3:prefix": "a"}, "allow"),
        ({"StringNotEquals": {"s3:prefix": ["a", "b"]}}, {"s3:prefix": "b"}, "none"),
        ({"NumericLessThanEquals": {"s3:max-keys": "10"}}, {"s3:max-keys": "10"}, "allow"),
        ({"NumericLessThan": {"s3:max-keys": 10}}, {"s3:max-keys": "10"}, "none"),
        ({"NumericGreaterThan": {"s3:max-keys": 10}}, {"s3:max-keys": "x"}, "none"),
        ({"Null": {"aws:Referer": "true"}}, {}, "allow"),
        ({"Null": {"aws:Referer": "false"}}, {}, "none"),
        (  # all operators and keys must hold
            {"Bool": {"aws:SecureTransport": "true"}, "StringLike": {"aws:Referer": "https://*"}},
            {"aws:SecureTransport": "true", "aws:Referer": "http://x"},
            "none",
        ),
    ],
)
def test_conditions(condition: dict[str, Any], context: dict[str, str], expected: str) -> None:
    assert _cond(condition).evaluate(ALICE, "s3:GetObject", obj("k"), context) == expected


def test_deny_insecure_transport() -> None:
    """The most common real-world condition: refuse plain HTTP even to the owner."""
    p = parse_policy(
        doc(stmt("Deny", Resource="*", Condition={"Bool": {"aws:SecureTransport": "false"}}))
    )
    common: dict[str, Any] = dict(principal=ALICE, owner=ALICE, action="s3:GetObject", policy=p)
    assert not decide(resource=obj("k"), context={"aws:SecureTransport": "false"}, **common)
    assert decide(resource=obj("k"), context={"aws:SecureTransport": "true"}, **common)


MALFORMED = [
    "",
    "not json",
    "[]",
    '"Statement"',
    "{}",
    '{"Version": "2012-10-17"}',
    doc(version="2020-01-01"),
    doc(),
    json.dumps({"Version": "2012-10-17", "Statement": [], "Extra": 1}),
    json.dumps({"Version": "2012-10-17", "Statement": "x"}),
    '{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}',
    doc(stmt(Effect="Permit")),
    doc(stmt(Effect=None)),
    doc(stmt(Principal=None)),
    doc(stmt(Principal="AKIA")),
    doc(stmt(Principal={"AWS": []})),
    doc(stmt(Principal={"Service": "s3.amazonaws.com"})),
    doc(stmt(Principal={"AWS": "arn:aws:iam::123456789012:root"})),
    doc(stmt(Principal={"AWS": "AKIA*"})),
    doc(stmt(Principal={"AWS": 7})),
    doc(stmt(Principal={"AWS": "*"}, NotPrincipal={"AWS": "x"})),
    doc(stmt(Action=None)),
    doc(stmt(Action=[])),
    doc(stmt(Action="iam:CreateUser")),
    doc(stmt(Action="s3:Get Object")),
    doc(stmt(NotAction="s3:GetObject")),
    doc(stmt(Resource=None)),
    doc(stmt(Resource="arn:aws:s3:::")),
    doc(stmt(Resource="arn:aws:iam::1:user/x")),
    doc(stmt(Resource=[1])),
    doc(stmt(Sid=3)),
    doc(stmt(Sid="a"), stmt(Sid="a")),
    doc(stmt(Unknown="x")),
    doc("statement"),  # type: ignore[arg-type]
    doc(stmt(Condition="x")),
    doc(stmt(Condition={"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}})),
    doc(stmt(Condition={"ForAnyValue:StringLike": {"s3:prefix": "a"}})),
    doc(stmt(Condition={"NullIfExists": {"k": "true"}})),
    doc(stmt(Condition={"StringLike": {}})),
    doc(stmt(Condition={"StringLike": {"k": []}})),
    doc(stmt(Condition={"StringLike": {"k": {"a": 1}}})),
    doc(stmt(Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}})),
    doc(stmt(Condition={"NumericEquals": {"k": "ten"}})),
    doc(stmt(Condition={"Bool": {"k": "yes"}})),
    "[" * 20_000,  # deeper than the JSON parser recurses
    json.dumps({"Version": "2012-10-17", "Statement": [stmt()] * 500}),  # over 20 KB
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed(text: str) -> None:
    with pytest.raises(S3Error) as e:
        parse_policy(text)
    assert e.value.code == "MalformedPolicy" and e.value.status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["Version", "Statement", "Sid", "Effect", "Principal", "NotPrincipal", "AWS", "Action"]
    + ["NotAction", "Resource", "NotResource", "Condition", "StringLike", "Bool", "*"]
)
near_values = st.recursive(
    st.sampled_from(
        ["2012-10-17", "Allow", "Deny", "*", "s3:*", "s3:Get*", "arn:aws:s3:::b/*", "true"]
        + ["arn:aws:iam::1:user/K", "10.0.0.0/8", "", "arn:aws:s3:::"]
    )
    | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_names, inner, max_size=6),
    max_leaves=25,
)


def _parse_or_malformed(text: str) -> None:
    try:
        p = parse_policy(text, bucket="b")
    except S3Error as e:
        assert e.code == "MalformedPolicy"
    else:
        for principal in (None, "K"):
            assert p.evaluate(principal, "s3:GetObject", obj("x"), {"k": "v"}) in (
                "allow",
                "deny",
                "none",
            )


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_random_json_never_crashes(value: object) -> None:
    _parse_or_malformed(json.dumps(value))


@settings(max_examples=150, deadline=None)
@given(near_values)
def test_near_policies_never_crash(value: object) -> None:
    _parse_or_malformed(json.dumps(value))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=50))
def test_random_text_never_crashes(text: str) -> None:
    _parse_or_malformed(text)
