from datetime import UTC, date, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.lifecycle import (
    DAY,
    Action,
    Expiration,
    Filter,
    NoncurrentVersionExpiration,
    ObjectVersionInfo,
    Rule,
    UploadInfo,
    Versioning,
    current_expired,
    due_at,
    expired_delete_marker_removable,
    noncurrent_expired,
    parse_lifecycle,
    plan,
    plan_key,
    render_lifecycle,
    upload_abandoned,
)

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def config(*rules: str, ns: bool = True) -> bytes:
    body = "".join(rules)
    return f"<LifecycleConfiguration {NS if ns else ''}>{body}</LifecycleConfiguration>".encode()


def rule(body: str, status: str = "Enabled", where: str = "<Filter/>") -> str:
    return f"<Rule>{where}<Status>{status}</Status>{body}</Rule>"


EXPIRE_1 = "<Expiration><Days>1</Days></Expiration>"


def test_parse_full_example() -> None:
    xml = config(
        """<Rule>
            <ID>logs</ID>
            <Filter><And><Prefix>logs/</Prefix><Tag><Key>k</Key><Value>v</Value></Tag>
              <ObjectSizeGreaterThan>10</ObjectSizeGreaterThan></And></Filter>
            <Status>Enabled</Status>
            <Expiration><Days> 30 </Days></Expiration>
            <NoncurrentVersionExpiration><NoncurrentDays>7</NoncurrentDays>
              <NewerNoncurrentVersions>3</NewerNoncurrentVersions></NoncurrentVersionExpiration>
          </Rule>""",
        rule(
            "<AbortIncompleteMultipartUpload><DaysAfterInitiation>2</DaysAfterInitiation>"
            "</AbortIncompleteMultipartUpload>",
            "Disabled",
            "<Prefix>tmp/</Prefix>",
        ),
        rule(
            "<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>"
        ),
        rule(
            "<Expiration><Date>2030-01-01T00:00:00.000Z</Date></Expiration>",
            where="<Filter><Tag><Key>a</Key><Value></Value></Tag></Filter>",
        ),
    )
    assert parse_lifecycle(xml) == [
        Rule(
            id="logs",
            filter=Filter(prefix="logs/", tags=(("k", "v"),), size_greater_than=10),
            expiration=Expiration(days=30),
            noncurrent_version_expiration=NoncurrentVersionExpiration(7, 3),
        ),
        Rule(
            status="Disabled",
            filter=Filter(prefix="tmp/"),
            legacy_prefix=True,
            abort_incomplete_upload_days=2,
        ),
        Rule(expiration=Expiration(expired_object_delete_marker=True)),
        Rule(filter=Filter(tags=(("a", ""),)), expiration=Expiration(date=date(2030, 1, 1))),
    ]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("<Filter/>", Filter()),
        ("<Filter></Filter>", Filter()),
        ("<Filter><Prefix></Prefix></Filter>", Filter()),
        ("<Filter><Prefix> a/</Prefix></Filter>", Filter(prefix=" a/")),  # prefixes are exact
        ("<Filter><ObjectSizeLessThan>5</ObjectSizeLessThan></Filter>", Filter(size_less_than=5)),
        ("<Filter><And><Prefix>p</Prefix></And></Filter>", Filter(prefix="p")),
        ("<Prefix></Prefix>", Filter()),
    ],
)
def test_filter_forms(where: str, expected: Filter) -> None:
    for ns in (True, False):
        (r,) = parse_lifecycle(config(rule(EXPIRE_1, where=where), ns=ns))
        assert r.filter == expected


TAG_FILTER = "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter>"
EODM = "<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>"
ABORT_1 = (
    "<AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation>"
    "</AbortIncompleteMultipartUpload>"
)
BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
    b"<LifecycleConfiguration><Rule><ID>&b;</ID></Rule></LifecycleConfiguration>"
)


def exp(inner: str) -> str:
    return f"<Expiration>{inner}</Expiration>"


def with_id(rule_id: str) -> str:
    return f"<Rule><ID>{rule_id}</ID><Filter/><Status>Enabled</Status>{EXPIRE_1}</Rule>"


def and_filter(*predicates: str) -> str:
    return f"<Filter><And>{''.join(predicates)}</And></Filter>"


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"", "MalformedXML"),
        (b"<LifecycleConfiguration>", "MalformedXML"),
        (b"<Other/>", "MalformedXML"),
        (config(), "MalformedXML"),
        ("<LifecycleConfiguration>\xe9</LifecycleConfiguration>".encode("latin-1"), "MalformedXML"),
        (BOMB, "MalformedXML"),
        (config(rule(EXPIRE_1, status="On")), "MalformedXML"),
        (config(rule(EXPIRE_1, status="")), "MalformedXML"),
        (config(rule(EXPIRE_1, where="")), "MalformedXML"),
        (config(rule(EXPIRE_1, where="<Filter/><Prefix/>")), "MalformedXML"),
        (config(rule(EXPIRE_1, where="<Filter/><Filter/>")), "MalformedXML"),
        (config(rule(EXPIRE_1 + "<Bogus/>")), "MalformedXML"),
        (config(rule(EXPIRE_1 + EXPIRE_1)), "MalformedXML"),
        (config(rule(EXPIRE_1, where="<Filter><Prefix/><Tag/></Filter>")), "MalformedXML"),
        (
            config(rule(EXPIRE_1, where="<Filter><Tag><Value>v</Value></Tag></Filter>")),
            "MalformedXML",
        ),
        (config(rule("")), "InvalidRequest"),
        (config(rule("<Expiration/>")), "MalformedXML"),
        (config(rule(exp("<Days>0</Days>"))), "InvalidArgument"),
        (config(rule(exp("<Days>-3</Days>"))), "InvalidArgument"),
        (config(rule(exp("<Days>1.5</Days>"))), "MalformedXML"),
        (config(rule(exp("<Days>99999999999</Days>"))), "MalformedXML"),
        (config(rule(exp("<Days><x/></Days>"))), "MalformedXML"),
        (config(rule(exp("<Date>2030-01-01T10:00:00Z</Date>"))), "InvalidArgument"),
        (config(rule(exp("<Date>soon</Date>"))), "InvalidArgument"),
        (config(rule(exp("<Days>1</Days><Date>2030-01-01</Date>"))), "InvalidArgument"),
        (
            config(
                rule(
                    exp("<Days>1</Days><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker>")
                )
            ),
            "InvalidArgument",
        ),
        (
            config(rule(exp("<ExpiredObjectDeleteMarker>yes</ExpiredObjectDeleteMarker>"))),
            "MalformedXML",
        ),
        (config(rule("<NoncurrentVersionExpiration/>")), "InvalidArgument"),
        (
            config(
                rule(
                    "<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays>"
                    "<NewerNoncurrentVersions>101</NewerNoncurrentVersions>"
                    "</NoncurrentVersionExpiration>"
                )
            ),
            "InvalidArgument",
        ),
        (config(rule("<AbortIncompleteMultipartUpload/>")), "MalformedXML"),
        (config(rule(ABORT_1, where=TAG_FILTER)), "InvalidRequest"),
        (
            config(rule(ABORT_1, where=and_filter("<ObjectSizeLessThan>9</ObjectSizeLessThan>"))),
            "InvalidRequest",
        ),
        (config(rule(EODM, where=TAG_FILTER)), "InvalidRequest"),
        (
            config(
                rule(
                    EXPIRE_1,
                    where=and_filter(
                        "<Tag><Key>k</Key><Value>1</Value></Tag>",
                        "<Tag><Key>k</Key><Value>2</Value></Tag>",
                    ),
                )
            ),
            "InvalidRequest",
        ),
        (
            config(
                rule(
                    EXPIRE_1,
                    where=and_filter(
                        "<ObjectSizeGreaterThan>5</ObjectSizeGreaterThan>",
                        "<ObjectSizeLessThan>5</ObjectSizeLessThan>",
                    ),
                )
            ),
            "InvalidRequest",
        ),
        (
            config(rule(EXPIRE_1, where=f"<Filter><Tag><Key>{'k' * 129}</Key></Tag></Filter>")),
            "InvalidTag",
        ),
        (
            config(
                rule("<Transition><Days>1</Days><StorageClass>GLACIER</StorageClass></Transition>")
            ),
            "InvalidArgument",
        ),
        (config(with_id("x") * 2), "InvalidArgument"),
        (config(with_id("x" * 256)), "InvalidArgument"),
        (config(rule(EXPIRE_1) * 1001), "MalformedXML"),
    ],
)
def test_rejected(xml: bytes, code: str) -> None:
    with pytest.raises(S3Error) as e:
        parse_lifecycle(xml)
    assert e.value.code == code


def test_limits_accepted() -> None:
    assert len(parse_lifecycle(config(rule(EXPIRE_1) * 1000))) == 1000
    assert parse_lifecycle(config(with_id("x" * 255)))[0].id == "x" * 255


# --- round trip ------------------------------------------------------------------------------

xml_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn")), max_size=12)
days = st.integers(1, 100_000)
sizes = st.none() | st.integers(0, 2**63 - 1)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    legacy = draw(st.booleans())
    prefix = draw(xml_text)
    if legacy:
        flt = Filter(prefix=prefix)
    else:
        tag_keys = draw(st.lists(xml_text.filter(bool), max_size=3, unique=True))
        tags = tuple((k, draw(xml_text)) for k in tag_keys)
        gt, lt = draw(sizes), draw(sizes)
        if gt is not None and lt is not None and gt >= lt:
            lt = None
        flt = Filter(prefix, tags, gt, lt)
    narrowed = bool(flt.tags) or flt.has_size
    expiration = draw(
        st.none()
        | st.builds(Expiration, days=days)
        | st.builds(Expiration, date=st.dates(date(1970, 1, 2), date(9999, 12, 31)))
        | (
            st.none()
            if flt.tags
            else st.builds(Expiration, expired_object_delete_marker=st.booleans())
        )
    )
    noncurrent = draw(
        st.none() | st.builds(NoncurrentVersionExpiration, days, st.none() | st.integers(1, 100))
    )
    abort = None if narrowed else draw(st.none() | days)
    if expiration is None and noncurrent is None and abort is None:
        expiration = Expiration(days=1)
    return Rule(
        id=draw(xml_text),
        status=draw(st.sampled_from(["Enabled", "Disabled"])),
        filter=flt,
        legacy_prefix=legacy,
        expiration=expiration,
        noncurrent_version_expiration=noncurrent,
        abort_incomplete_upload_days=abort,
    )


@settings(max_examples=100, deadline=None)
@given(st.lists(rules(), min_size=1, max_size=5, unique_by=lambda r: r.id or object()))
def test_render_parse_round_trip(rs: list[Rule]) -> None:
    assert parse_lifecycle(render_lifecycle(rs)) == rs


# --- evaluation on virtual time --------------------------------------------------------------


def ts(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return datetime(y, m, d, hh, mm, tzinfo=UTC).timestamp()


def test_real_days_round_to_next_midnight() -> None:
    # S3's own example: created 2014-01-15 10:30 UTC, expires after 3 days -> 2014-01-19 00:00.
    assert due_at(ts(2014, 1, 15, 10, 30), 3) == ts(2014, 1, 19)
    assert due_at(ts(2014, 1, 15), 3) == ts(2014, 1, 18)  # already midnight: no rounding
    r = Rule(expiration=Expiration(days=3))
    created = ts(2014, 1, 15, 10, 30)
    assert not current_expired(r, "k", {}, created, now=ts(2014, 1, 18, 23, 59))
    assert current_expired(r, "k", {}, created, now=ts(2014, 1, 19))


def test_short_days_do_not_round() -> None:
    assert due_at(100.5, 3, day_seconds=2.0) == 106.5
    r = Rule(expiration=Expiration(days=3))
    assert not current_expired(r, "k", {}, 100.5, now=106.4, day_seconds=2.0)
    assert current_expired(r, "k", {}, 100.5, now=106.5, day_seconds=2.0)


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(0, 4e9),
    n=st.integers(1, 10_000),
    day_seconds=st.sampled_from([DAY, 1.0, 0.01, 3600.0]),
    later=st.floats(0, 1e9),
)
def test_expiry_is_monotonic(start: float, n: int, day_seconds: float, later: float) -> None:
    due = due_at(start, n, day_seconds)
    assert due >= start + n * day_seconds
    if day_seconds == DAY:
        assert due < start + n * DAY + DAY and due % DAY == 0
    else:
        assert due == start + n * day_seconds
    r = Rule(expiration=Expiration(days=n))
    for now in (due, due + later):
        assert current_expired(r, "k", {}, start, now=now, day_seconds=day_seconds)
    if due > start:
        before = due - min(1e-3, (due - start) / 2)
        assert not current_expired(r, "k", {}, start, now=before, day_seconds=day_seconds)


@pytest.mark.parametrize(
    ("flt", "key", "tags", "size", "expected"),
    [
        (Filter(), "a", {}, None, True),
        (Filter(prefix="logs/"), "logs/x", {}, 1, True),
        (Filter(prefix="logs/"), "log", {}, 1, False),
        (Filter(tags=(("t", "1"),)), "a", {"t": "1", "u": "2"}, None, True),
        (Filter(tags=(("t", "1"),)), "a", {"t": "2"}, None, False),
        (Filter(tags=(("t", "1"), ("u", "2"))), "a", {"t": "1"}, None, False),
        (Filter(size_greater_than=10), "a", {}, 11, True),
        (Filter(size_greater_than=10), "a", {}, 10, False),
        (Filter(size_less_than=10), "a", {}, 9, True),
        (Filter(size_less_than=10), "a", {}, None, False),  # unknown size: no size filter matches
    ],
)
def test_filters(
    flt: Filter, key: str, tags: dict[str, str], size: int | None, expected: bool
) -> None:
    r = Rule(filter=flt, expiration=Expiration(days=1))
    assert current_expired(r, key, tags, 0.0, now=2.5 * DAY, size=size) is expected


@pytest.mark.parametrize(
    ("rule_", "expected"),
    [
        (Rule(expiration=Expiration(days=2)), True),
        (Rule(expiration=Expiration(days=3)), False),
        (Rule(status="Disabled", expiration=Expiration(days=1)), False),
        (Rule(expiration=Expiration(date=date(1970, 1, 3))), True),  # a date is absolute
        (Rule(expiration=Expiration(date=date(1970, 1, 4))), False),
        (Rule(expiration=Expiration(expired_object_delete_marker=True)), False),
        (Rule(noncurrent_version_expiration=NoncurrentVersionExpiration(1)), False),
    ],
)
def test_current_expired(rule_: Rule, expected: bool) -> None:
    # written at the epoch; now is midday of day 2
    assert current_expired(rule_, "k", {}, 0.0, now=2.5 * DAY) is expected


def test_noncurrent_expired_keeps_newest() -> None:
    r = Rule(noncurrent_version_expiration=NoncurrentVersionExpiration(2, 3))

    def expired(rule_: Rule, since: float, newer: int, tags: dict[str, str] | None = None) -> bool:
        return noncurrent_expired(rule_, "k", since, newer, now=5.0, day_seconds=1.0, tags=tags)

    assert not expired(r, 0.0, 2)  # one of the 3 newest noncurrent versions
    assert expired(r, 0.0, 3)
    assert not expired(r, 3.5, 3)  # noncurrent too recently
    plain = Rule(noncurrent_version_expiration=NoncurrentVersionExpiration(2))
    assert expired(plain, 3.0, 0)
    tagged = Rule(
        filter=Filter(tags=(("a", "b"),)),
        noncurrent_version_expiration=plain.noncurrent_version_expiration,
    )
    assert not expired(tagged, 0.0, 0)
    assert expired(tagged, 0.0, 0, {"a": "b"})


def test_upload_abandoned() -> None:
    r = Rule(filter=Filter(prefix="up/"), abort_incomplete_upload_days=2)
    assert upload_abandoned(r, "up/x", 10.0, now=12.0, day_seconds=1.0)
    assert not upload_abandoned(r, "up/x", 10.0, now=11.9, day_seconds=1.0)
    assert not upload_abandoned(r, "other", 10.0, now=99.0, day_seconds=1.0)
    assert not upload_abandoned(Rule(expiration=Expiration(days=1)), "up/x", 0.0, now=1e9)


def test_expired_delete_marker() -> None:
    eodm = Rule(expiration=Expiration(expired_object_delete_marker=True))
    assert expired_delete_marker_removable(eodm, "k", True, now=0.0)
    assert not expired_delete_marker_removable(eodm, "k", False, now=0.0)
    off = Rule(expiration=Expiration(expired_object_delete_marker=False))
    assert not expired_delete_marker_removable(off, "k", True, now=1e9)
    # Days cleans up markers too, once the marker is that old
    by_days = Rule(expiration=Expiration(days=2))
    kw = {"day_seconds": 1.0, "last_modified": 10.0}
    assert not expired_delete_marker_removable(by_days, "k", True, now=11.0, **kw)
    assert expired_delete_marker_removable(by_days, "k", True, now=12.0, **kw)
    assert not expired_delete_marker_removable(by_days, "k", True, now=12.0, day_seconds=1.0)


# --- planning --------------------------------------------------------------------------------


class Bucket:
    """A toy versioned bucket that applies a plan's actions the way the service would."""

    def __init__(self, versioning: Versioning) -> None:
        self.versioning = versioning
        self.versions: dict[str, list[ObjectVersionInfo]] = {}  # newest first
        self.uploads: list[UploadInfo] = []
        self.serial = 0

    def put(self, key: str, now: float, *, marker: bool = False) -> None:
        old = self.versions.get(key, [])
        if self.versioning is None:
            old = []
        elif old:
            old = [
                ObjectVersionInfo(v.key, v.version_id, False, v.is_delete_marker, v.last_modified)
                if v.is_latest
                else v
                for v in old
            ]
        self.serial += 1
        vid = None if self.versioning is None else f"v{self.serial}"
        self.versions[key] = [ObjectVersionInfo(key, vid, True, marker, now, size=5), *old]

    def remove(self, key: str, version_id: str | None) -> None:
        self.versions[key] = [v for v in self.versions[key] if v.version_id != version_id]
        if not self.versions[key]:
            del self.versions[key]

    def sweep(self, rules: list[Rule], now: float) -> list[Action]:
        everything = [v for vs in self.versions.values() for v in vs]
        actions = plan(
            rules, everything, self.uploads, versioning=self.versioning, now=now, day_seconds=10.0
        )
        for a in actions:
            if a.kind == "add_delete_marker":
                self.put(a.key, now, marker=True)
            elif a.kind in ("delete_object", "delete_version", "remove_delete_marker"):
                self.remove(a.key, a.version_id)
            elif a.kind == "abort_upload":
                self.uploads = [u for u in self.uploads if u.upload_id != a.upload_id]
        return actions

    def kinds(self, key: str) -> list[tuple[bool, bool]]:
        return [(v.is_latest, v.is_delete_marker) for v in self.versions.get(key, [])]


RULES = [
    Rule(
        id="expire",
        expiration=Expiration(days=2),
        noncurrent_version_expiration=NoncurrentVersionExpiration(1),
        abort_incomplete_upload_days=1,
    ),
    Rule(id="markers", expiration=Expiration(expired_object_delete_marker=True)),
]


def test_versioned_bucket_empties_itself_over_virtual_days() -> None:
    b = Bucket("Enabled")
    b.put("k", 0.0)
    b.uploads.append(UploadInfo("k", "u1", 5.0))
    assert b.sweep(RULES, 14.0) == []
    assert b.sweep(RULES, 15.0) == [Action("abort_upload", "k", "expire", upload_id="u1")]
    assert b.sweep(RULES, 20.0) == [Action("add_delete_marker", "k", "expire")]
    assert b.kinds("k") == [(True, True), (False, False)]
    assert b.sweep(RULES, 29.0) == []  # noncurrent since 20, one 10 s day to go
    assert b.sweep(RULES, 30.0) == [Action("delete_version", "k", "expire", version_id="v1")]
    assert b.kinds("k") == [(True, True)]  # an expired delete marker, removed next pass
    assert b.sweep(RULES, 31.0) == [Action("remove_delete_marker", "k", "markers", version_id="v2")]
    assert b.versions == {}


def test_unversioned_and_suspended_expiry() -> None:
    b = Bucket(None)
    b.put("k", 0.0)
    assert b.sweep(RULES, 20.0) == [Action("delete_object", "k", "expire", version_id=None)]
    assert b.versions == {}
    s = Bucket("Suspended")
    s.put("k", 0.0)
    assert [a.kind for a in s.sweep(RULES, 20.0)] == ["add_delete_marker"]


def test_disabled_rules_do_nothing() -> None:
    b = Bucket("Enabled")
    b.put("k", 0.0)
    b.put("k", 1.0, marker=True)
    off = [
        Rule(
            status="Disabled",
            expiration=r.expiration,
            noncurrent_version_expiration=r.noncurrent_version_expiration,
        )
        for r in RULES
    ]
    assert b.sweep(off, 1e9) == []


def test_noncurrent_since_defaults_to_next_newer_version() -> None:
    r = [Rule(noncurrent_version_expiration=NoncurrentVersionExpiration(1))]
    vs = [
        ObjectVersionInfo("k", "v3", True, False, 30.0),
        ObjectVersionInfo("k", "v1", False, False, 0.0),
        ObjectVersionInfo("k", "v2", False, False, 20.0),  # any order
    ]
    got = plan_key(r, vs, versioning="Enabled", now=30.0, day_seconds=10.0)
    assert got == [Action("delete_version", "k", "", version_id="v1")]  # v2 noncurrent at 30
    got = plan_key(r, vs, versioning="Enabled", now=40.0, day_seconds=10.0)
    assert [a.version_id for a in got] == ["v2", "v1"]
    with pytest.raises(ValueError):
        plan_key(r, [vs[0], vs[0]], versioning="Enabled", now=0.0)


@st.composite
def histories(draw: st.DrawFn) -> list[ObjectVersionInfo]:
    n = draw(st.integers(1, 12))
    stamps = sorted(draw(st.lists(st.floats(0, 1000), min_size=n, max_size=n)), reverse=True)
    has_latest = draw(st.booleans())
    return [
        ObjectVersionInfo(
            "k",
            f"v{i}",
            i == 0 and has_latest,
            draw(st.booleans()),
            t,
            tags={"t": draw(st.sampled_from(["a", "b"]))},
            size=draw(st.integers(0, 20)),
        )
        for i, t in enumerate(stamps)
    ]


@settings(max_examples=150, deadline=None)
@given(
    vs=histories(),
    keep=st.none() | st.integers(1, 4),
    now=st.floats(0, 2000),
    prefix=st.sampled_from(["", "k", "x"]),
)
def test_plan_key_properties(
    vs: list[ObjectVersionInfo], keep: int | None, now: float, prefix: str
) -> None:
    rules_ = [
        Rule(
            filter=Filter(prefix=prefix),
            expiration=Expiration(days=3),
            noncurrent_version_expiration=NoncurrentVersionExpiration(2, keep),
        ),
        Rule(expiration=Expiration(expired_object_delete_marker=True)),
    ]
    actions = plan_key(rules_, vs, versioning="Enabled", now=now, day_seconds=100.0)
    ids = [a.version_id for a in actions if a.version_id is not None]
    assert len(ids) == len(set(ids))  # at most one action per version
    by_id = {v.version_id: v for v in vs}
    noncurrent = [v for v in vs if not v.is_latest]
    for a in actions:
        assert a.key == "k"
        if a.kind == "delete_version":
            v = by_id[a.version_id]
            assert not v.is_latest
            assert prefix != "x"
            if keep is not None:  # the newest `keep` noncurrent versions survive
                assert noncurrent.index(v) >= keep
        elif a.kind == "remove_delete_marker":
            assert by_id[a.version_id].is_latest and by_id[a.version_id].is_delete_marker
            assert len(vs) == 1
        else:
            assert a.kind == "add_delete_marker"
            assert vs[0].is_latest and not vs[0].is_delete_marker
            assert now >= vs[0].last_modified + 300.0
