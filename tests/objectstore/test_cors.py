import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.objectstore.cors import (
    METHODS,
    VARY,
    CorsRule,
    actual_request_headers,
    parse_cors,
    preflight,
    render_cors,
)
from scalelab.objectstore.errors import S3Error

EXAMPLE = b"""<?xml version="1.0" encoding="UTF-8"?>
<CORSConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <CORSRule>
    <ID>writers</ID>
    <AllowedOrigin>http://www.example.com</AllowedOrigin>
    <AllowedMethod>PUT</AllowedMethod>
    <AllowedMethod>POST</AllowedMethod>
    <AllowedMethod>DELETE</AllowedMethod>
    <AllowedHeader>*</AllowedHeader>
  </CORSRule>
  <CORSRule>
    <AllowedOrigin>http://*.example.com</AllowedOrigin>
    <AllowedMethod>GET</AllowedMethod>
    <AllowedHeader>x-amz-*</AllowedHeader>
    <AllowedHeader>Content-Type</AllowedHeader>
    <ExposeHeader>ETag</ExposeHeader>
    <ExposeHeader>x-amz-request-id</ExposeHeader>
    <MaxAgeSeconds>3000</MaxAgeSeconds>
  </CORSRule>
  <CORSRule>
    <AllowedOrigin>*</AllowedOrigin>
    <AllowedMethod>GET</AllowedMethod>
    <AllowedMethod>HEAD</AllowedMethod>
  </CORSRule>
</CORSConfiguration>
"""

RULES = parse_cors(EXAMPLE)


def test_parse_example() -> None:
    assert RULES == [
        CorsRule(
            allowed_origins=("http://www.example.com",),
            allowed_methods=("PUT", "POST", "DELETE"),
            allowed_headers=("*",),
            id="writers",
        ),
        CorsRule(
            allowed_origins=("http://*.example.com",),
            allowed_methods=("GET",),
            allowed_headers=("x-amz-*", "Content-Type"),
            expose_headers=("ETag", "x-amz-request-id"),
            max_age_seconds=3000,
        ),
        CorsRule(allowed_origins=("*",), allowed_methods=("GET", "HEAD")),
    ]
    no_namespace = EXAMPLE.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b"")
    assert parse_cors(no_namespace) == RULES


WRITERS = {
    "Access-Control-Allow-Origin": "http://www.example.com",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": "PUT, POST, DELETE",
    "Vary": VARY,
}
SUBDOMAINS = {
    "Access-Control-Allow-Origin": "http://a.example.com",
    "Access-Control-Allow-Credentials": "true",
    "Access-Control-Allow-Methods": "GET",
    "Access-Control-Expose-Headers": "ETag, x-amz-request-id",
    "Access-Control-Max-Age": "3000",
    "Vary": VARY,
}
ANYONE = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, HEAD"}
ANYONE["Vary"] = VARY


@pytest.mark.parametrize(
    ("origin", "method", "headers", "expected"),
    [
        (
            "http://www.example.com",
            "PUT",
            ["Content-Type", "X-Custom"],
            WRITERS | {"Access-Control-Allow-Headers": "content-type, x-custom"},
        ),
        (
            "HTTP://WWW.EXAMPLE.COM",
            "DELETE",
            [],
            WRITERS | {"Access-Control-Allow-Origin": "HTTP://WWW.EXAMPLE.COM"},
        ),
        (
            "http://a.example.com",
            "GET",
            ["x-amz-date, Content-Type", " "],  # an unsplit header value is split
            SUBDOMAINS | {"Access-Control-Allow-Headers": "x-amz-date, content-type"},
        ),
        ("http://a.example.com", "GET", ["authorization"], None),  # no rule allows the header
        ("http://a.example.com", "GET", [], SUBDOMAINS),  # first matching rule wins
        ("http://example.com", "GET", [], ANYONE),  # *.example.com needs a dot before
        (
            "http://www.example.com",
            "GET",
            [],
            SUBDOMAINS | {"Access-Control-Allow-Origin": "http://www.example.com"},
        ),
        ("https://other.org", "HEAD", [], ANYONE),
        ("null", "GET", [], ANYONE),
        ("https://other.org", "PUT", [], None),
        ("https://other.org", "get", [], None),  # methods are case-sensitive
        ("https://other.org", "PATCH", [], None),
        ("", "GET", [], None),
    ],
)
def test_preflight(
    origin: str, method: str, headers: list[str], expected: dict[str, str] | None
) -> None:
    assert preflight(RULES, origin, method, headers) == expected


@pytest.mark.parametrize(
    ("rules", "origin", "method", "expected"),
    [
        ([], "http://a.example.com", "GET", {}),  # no CORS configuration: nothing to add
        (RULES, None, "GET", {"Vary": VARY}),
        (RULES, "http://a.example.com", "GET", SUBDOMAINS),
        (RULES, "http://www.example.com", "PUT", WRITERS),  # request headers are not checked
        (RULES, "https://other.org", "HEAD", ANYONE),
        (RULES, "https://other.org", "DELETE", {"Vary": VARY}),
    ],
)
def test_actual_request_headers(
    rules: list[CorsRule], origin: str | None, method: str, expected: dict[str, str]
) -> None:
    assert actual_request_headers(rules, origin, method) == expected


def cors(*rules: str) -> bytes:
    return f"<CORSConfiguration>{''.join(rules)}</CORSConfiguration>".encode()


def cors_rule(body: str, origin: str = "*", method: str = "GET") -> str:
    o = f"<AllowedOrigin>{origin}</AllowedOrigin>" if origin else ""
    m = f"<AllowedMethod>{method}</AllowedMethod>" if method else ""
    return f"<CORSRule>{o}{m}{body}</CORSRule>"


@pytest.mark.parametrize(
    ("xml", "code"),
    [
        (b"", "MalformedXML"),
        (b"<CORSConfiguration", "MalformedXML"),
        (b"<LifecycleConfiguration/>", "MalformedXML"),
        (cors(), "MalformedXML"),
        (cors("<Other/>"), "MalformedXML"),
        (b'<!DOCTYPE x [<!ENTITY e "e">]><CORSConfiguration/>', "MalformedXML"),
        (cors(cors_rule("", origin="")), "MalformedXML"),
        (cors(cors_rule("", method="")), "MalformedXML"),
        (cors(cors_rule("", origin=" ")), "MalformedXML"),
        (cors(cors_rule("", method="PATCH")), "InvalidRequest"),
        (cors(cors_rule("", method="get")), "InvalidRequest"),
        (cors(cors_rule("", origin="http://*.*.com")), "InvalidRequest"),
        (cors(cors_rule("<AllowedHeader>x-*-*</AllowedHeader>")), "InvalidRequest"),
        (cors(cors_rule("<MaxAgeSeconds>soon</MaxAgeSeconds>")), "MalformedXML"),
        (cors(cors_rule("<MaxAgeSeconds>-1</MaxAgeSeconds>")), "MalformedXML"),
        (
            cors(cors_rule("<MaxAgeSeconds>1</MaxAgeSeconds><MaxAgeSeconds>2</MaxAgeSeconds>")),
            "MalformedXML",
        ),
        (cors(cors_rule("<ID>a</ID><ID>b</ID>")), "MalformedXML"),
        (cors(cors_rule(f"<ID>{'i' * 256}</ID>")), "InvalidArgument"),
        (cors(cors_rule("<Bogus/>")), "MalformedXML"),
        (cors(cors_rule("<AllowedHeader><x/></AllowedHeader>")), "MalformedXML"),
        (cors(cors_rule("") * 101), "MalformedXML"),
    ],
)
def test_rejected(xml: bytes, code: str) -> None:
    with pytest.raises(S3Error) as e:
        parse_cors(xml)
    assert e.value.code == code


def test_limits_accepted() -> None:
    assert len(parse_cors(cors(cors_rule("") * 100))) == 100
    (r,) = parse_cors(cors(cors_rule(f"<ID>{'i' * 255}</ID><MaxAgeSeconds>0</MaxAgeSeconds>")))
    assert r.id == "i" * 255 and r.max_age_seconds == 0


_chars = st.sampled_from("abcXYZ019.:/_-&<>'\"")
plain = st.text(_chars, min_size=1, max_size=12)
with_wildcard = st.just("*") | st.builds(
    lambda head, tail: head if tail is None else f"{head}*{tail}",
    plain,
    st.none() | st.text(_chars, max_size=6),
)

cors_rules = st.builds(
    CorsRule,
    allowed_origins=st.lists(with_wildcard, min_size=1, max_size=3).map(tuple),
    allowed_methods=st.lists(st.sampled_from(METHODS), min_size=1, unique=True).map(tuple),
    allowed_headers=st.lists(with_wildcard, max_size=3).map(tuple),
    expose_headers=st.lists(plain, max_size=3).map(tuple),
    max_age_seconds=st.none() | st.integers(0, 2**31 - 1),
    id=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn")), max_size=20),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(cors_rules, min_size=1, max_size=5))
def test_render_parse_round_trip(rules: list[CorsRule]) -> None:
    assert parse_cors(render_cors(rules)) == rules


@settings(max_examples=100, deadline=None)
@given(
    rules=st.lists(cors_rules, min_size=1, max_size=4),
    origin=with_wildcard,
    method=st.sampled_from(METHODS),
)
def test_preflight_agrees_with_actual_request(
    rules: list[CorsRule], origin: str, method: str
) -> None:
    """Without request headers, a preflight and the real request pick the same rule."""
    answer = preflight(rules, origin, method, [])
    actual = actual_request_headers(rules, origin, method)
    if answer is None:
        assert actual == {"Vary": VARY}
    else:
        assert answer == actual
        assert method in answer["Access-Control-Allow-Methods"].split(", ")
