"""S3's XML documents, sans-I/O: Python values in, bytes out, and request bodies parsed safely.

A document is described as nested (tag, value) pairs; a value is text, a number, a bool, None
(omitted), or a list of pairs (a child element). Repeated elements are repeated pairs.
Request bodies are parsed with ElementTree after refusing DTDs, so no entity expansion or
external entity ever runs; S3's namespace is optional on input, as clients differ.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TypeAlias
from xml.sax.saxutils import escape

from scalelab.objectstore.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
Value: TypeAlias = "str | int | bool | None | Sequence[tuple[str, Value]]"
Node = tuple[str, Value]

_HEAD = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _emit(out: list[str], tag: str, value: Value) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        out.append(f"<{tag}>{'true' if value else 'false'}</{tag}>")
    elif isinstance(value, int | str):
        out.append(f"<{tag}>{escape(str(value))}</{tag}>")
    else:
        out.append(f"<{tag}>")
        for child_tag, child in value:
            _emit(out, child_tag, child)
        out.append(f"</{tag}>")


def render(root: str, children: Sequence[Node], *, namespace: bool = True) -> bytes:
    out: list[str] = [f'<{root} xmlns="{NS}">' if namespace else f"<{root}>"]
    for tag, value in children:
        _emit(out, tag, value)
    out.append(f"</{root}>")
    return _HEAD + "".join(out).encode()


def render_text(root: str, value: str) -> bytes:
    """A root element holding only text (GetBucketLocation's LocationConstraint)."""
    return _HEAD + f'<{root} xmlns="{NS}">{escape(value)}</{root}>'.encode()


def error_document(code: str, message: str, request_id: str, extra: dict[str, str]) -> bytes:
    nodes: list[Node] = [("Code", code), ("Message", message)]
    nodes.extend(extra.items())
    nodes.append(("RequestId", request_id))
    return render("Error", nodes, namespace=False)


def timestamp(epoch: float) -> str:
    """ISO 8601 with milliseconds, as S3 writes LastModified in XML."""
    ms = int(round(epoch * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def http_date(epoch: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(epoch))


def parse(body: bytes, root: str) -> ET.Element:
    """Parse a request document, stripping S3's namespace; MalformedXML on anything odd."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise S3Error("MalformedXML", "DTDs are not allowed")
    try:
        element = ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error("MalformedXML", f"The XML you provided was not well-formed: {exc}") from None
    for el in element.iter():
        if el.tag.startswith("{"):
            el.tag = el.tag.split("}", 1)[1]
    if element.tag != root:
        raise S3Error("MalformedXML", f"expected <{root}>, got <{element.tag}>")
    return element


def text(element: ET.Element, tag: str, default: str | None = None) -> str | None:
    child = element.find(tag)
    if child is None:
        return default
    return child.text or ""


def parse_tagging(body: bytes) -> dict[str, str]:
    """<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>, with S3's limits."""
    root = parse(body, "Tagging")
    tags: dict[str, str] = {}
    for tag in root.iterfind("TagSet/Tag"):
        key, value = text(tag, "Key"), text(tag, "Value", "")
        if not key or len(key) > 128 or value is None or len(value) > 256:
            raise S3Error("InvalidTag", "tag keys are 1-128 characters, values up to 256")
        if key in tags:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        tags[key] = value
    if len(tags) > 10:
        raise S3Error("InvalidTag", "Object tags cannot be greater than 10")
    return tags


def render_tagging(tags: dict[str, str]) -> bytes:
    return render(
        "Tagging",
        [("TagSet", [("Tag", [("Key", k), ("Value", v)]) for k, v in tags.items()])],
    )
