"""Bucket CORS: S3's CORSConfiguration XML, and the headers a browser needs to see.

A web page served from one origin may only call our API from JavaScript if the bucket's CORS
rules allow that origin; the browser asks first with a preflight OPTIONS request, and checks the
Access-Control-* headers on the real response too. Pure logic: the API parses the configuration
when it is put and asks `preflight` / `actual_request_headers` per request.

Like S3, the first rule that matches decides. A rule matches when the origin matches one of its
AllowedOrigins (at most one `*` each: "*", "http://*.example.com"), the method is one of its
AllowedMethods and, for a preflight, every requested header matches an AllowedHeader (at most
one `*` each: "x-amz-*"). Header names compare case-insensitively, as HTTP says; origins too
(browsers send them lower-cased anyway, and scheme and host are case-insensitive).

A rule allowing every origin ("*") answers "Access-Control-Allow-Origin: *"; a rule naming the
origin echoes it and adds "Access-Control-Allow-Credentials: true", as S3 does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from scalelab.objectstore.errors import S3Error
from scalelab.objectstore.lifecycle import S3_NS, parse_xml_root

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100
MAX_ID_LENGTH = 255
# The response depends on these request headers: caches must keep one copy per value.
VARY = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"


def _wild(pattern: str, value: str) -> bool:
    """Case-insensitive match where one `*` stands for any run of characters."""
    pattern, value = pattern.lower(), value.lower()
    if "*" not in pattern:
        return pattern == value
    head, tail = pattern.split("*", 1)
    return len(value) >= len(head) + len(tail) and value.startswith(head) and value.endswith(tail)


@dataclass(frozen=True)
class CorsRule:
    """One CORSRule; empty `allowed_headers` allows no request headers beyond the simple ones."""

    allowed_origins: tuple[str, ...]
    allowed_methods: tuple[str, ...]
    allowed_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age_seconds: int | None = None
    id: str = ""

    def origin_pattern(self, origin: str) -> str | None:
        """The first AllowedOrigin that matches `origin`, or None."""
        return next((p for p in self.allowed_origins if _wild(p, origin)), None)

    def allows_header(self, header: str) -> bool:
        return any(_wild(p, header) for p in self.allowed_headers)


# --- XML -------------------------------------------------------------------------------------


def _malformed(detail: str | None = None) -> S3Error:
    return S3Error("MalformedXML", detail)


_RULE_FIELDS = (
    "ID",
    "AllowedOrigin",
    "AllowedMethod",
    "AllowedHeader",
    "ExposeHeader",
    "MaxAgeSeconds",
)


def _texts(elem: ET.Element) -> dict[str, list[str]]:
    """The rule's leaf elements by local name, their text stripped (IDs kept exact)."""
    out: dict[str, list[str]] = {}
    for child in elem:
        name = child.tag.rsplit("}", 1)[-1]
        if name not in _RULE_FIELDS:
            raise _malformed(f"Unexpected element {name} in CORSRule.")
        if len(child):
            raise _malformed(f"{name} must hold text, not elements.")
        text = child.text or ""
        out.setdefault(name, []).append(text if name == "ID" else text.strip())
    return out


def _one_wildcard(kind: str, values: Sequence[str]) -> None:
    for v in values:
        if v.count("*") > 1:
            raise S3Error("InvalidRequest", f'{kind} "{v}" can not have more than one wildcard.')


def _rule(elem: ET.Element) -> CorsRule:
    found = _texts(elem)
    for name in ("ID", "MaxAgeSeconds"):
        if len(found.get(name, [])) > 1:
            raise _malformed(f"{name} may appear only once.")
    origins, methods = found.get("AllowedOrigin", []), found.get("AllowedMethod", [])
    if not origins or not methods:
        raise _malformed("A CORSRule needs an AllowedOrigin and an AllowedMethod.")
    if any(not v for v in (*origins, *methods)):
        raise _malformed("AllowedOrigin and AllowedMethod must not be empty.")
    for m in methods:
        if m not in METHODS:
            raise S3Error(
                "InvalidRequest",
                f"Found unsupported HTTP method in CORS config. Unsupported method is {m}",
            )
    headers = [h for h in found.get("AllowedHeader", []) if h]
    _one_wildcard("AllowedOrigin", origins)
    _one_wildcard("AllowedHeader", headers)
    rule_id = found.get("ID", [""])[0]
    if len(rule_id) > MAX_ID_LENGTH:
        raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of 255")
    max_age = None
    if "MaxAgeSeconds" in found:
        s = found["MaxAgeSeconds"][0]
        if not s.isascii() or not s.isdigit() or len(s) > 10 or int(s) > 2**31 - 1:
            raise _malformed("MaxAgeSeconds must be a non-negative integer.")
        max_age = int(s)
    return CorsRule(
        allowed_origins=tuple(origins),
        allowed_methods=tuple(dict.fromkeys(methods)),
        allowed_headers=tuple(headers),
        expose_headers=tuple(h for h in found.get("ExposeHeader", []) if h),
        max_age_seconds=max_age,
        id=rule_id,
    )


def parse_cors(xml_bytes: bytes) -> list[CorsRule]:
    """PutBucketCors's body -> rules (1 to 100), or the S3Error S3 would answer."""
    root = parse_xml_root(xml_bytes, "CORSConfiguration")
    rule_els = []
    for child in root:
        if child.tag.rsplit("}", 1)[-1] != "CORSRule":
            raise _malformed("CORSConfiguration holds only CORSRule elements.")
        rule_els.append(child)
    if not rule_els:
        raise _malformed("A CORS configuration needs at least one CORSRule.")
    if len(rule_els) > MAX_RULES:
        raise _malformed(f"A CORS configuration holds at most {MAX_RULES} rules.")
    return [_rule(el) for el in rule_els]


def render_cors(rules: Sequence[CorsRule]) -> bytes:
    """GetBucketCors's body; `parse_cors` reads it back to equal rules."""
    root = ET.Element("CORSConfiguration", {"xmlns": S3_NS})
    for r in rules:
        el = ET.SubElement(root, "CORSRule")
        fields: list[tuple[str, Sequence[str]]] = [
            ("ID", [r.id] if r.id else []),
            ("AllowedOrigin", r.allowed_origins),
            ("AllowedMethod", r.allowed_methods),
            ("AllowedHeader", r.allowed_headers),
            ("ExposeHeader", r.expose_headers),
            ("MaxAgeSeconds", [] if r.max_age_seconds is None else [str(r.max_age_seconds)]),
        ]
        for name, values in fields:
            for v in values:
                ET.SubElement(el, name).text = v
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()


# --- matching --------------------------------------------------------------------------------


def _response(rule: CorsRule, origin: str, pattern: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if pattern == "*":
        headers["Access-Control-Allow-Origin"] = "*"
    else:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
    headers["Access-Control-Allow-Methods"] = ", ".join(rule.allowed_methods)
    if rule.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(rule.expose_headers)
    if rule.max_age_seconds is not None:
        headers["Access-Control-Max-Age"] = str(rule.max_age_seconds)
    headers["Vary"] = VARY
    return headers


def preflight(
    rules: Sequence[CorsRule], origin: str, method: str, request_headers: Sequence[str]
) -> dict[str, str] | None:
    """The answer to OPTIONS with Origin, Access-Control-Request-Method and -Headers.

    `request_headers` are header names (an unsplit "a, b" value is split too). None refuses
    the preflight: the API answers 403 and the browser blocks the real request.
    """
    if not origin or method not in METHODS:
        return None
    wanted = [h.strip().lower() for item in request_headers for h in item.split(",")]
    wanted = [h for h in wanted if h]
    for rule in rules:
        pattern = rule.origin_pattern(origin)
        if pattern is None or method not in rule.allowed_methods:
            continue
        if not all(rule.allows_header(h) for h in wanted):
            continue
        headers = _response(rule, origin, pattern)
        if wanted:
            headers["Access-Control-Allow-Headers"] = ", ".join(dict.fromkeys(wanted))
        return headers
    return None


def actual_request_headers(
    rules: Sequence[CorsRule], origin: str | None, method: str
) -> dict[str, str]:
    """CORS headers to add to a normal response (request headers are not checked here).

    With a CORS configuration the response always carries Vary, even when no rule matches or
    there is no Origin, so a shared cache never serves one origin's answer to another.
    """
    if not rules:
        return {}
    if origin:
        for rule in rules:
            pattern = rule.origin_pattern(origin)
            if pattern is not None and method in rule.allowed_methods:
                return _response(rule, origin, pattern)
    return {"Vary": VARY}
