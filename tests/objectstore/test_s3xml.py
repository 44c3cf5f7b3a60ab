"""The XML codec: round trips, and hostile or broken input only ever yields S3 errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.objectstore import s3xml
from scalelab.objectstore.errors import S3Error

TAG_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


@given(
    st.dictionaries(
        TAG_TEXT,
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30),
        max_size=10,
    )
)
def test_tagging_round_trip(tags: dict[str, str]) -> None:
    assert s3xml.parse_tagging(s3xml.render_tagging(tags)) == tags


@given(st.binary(max_size=300))
def test_garbage_is_malformed_xml(raw: bytes) -> None:
    try:
        s3xml.parse(raw, "Delete")
    except S3Error as exc:
        assert exc.code == "MalformedXML"


def test_entity_expansion_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;">]><Tagging><TagSet><Tag><Key>&lol2;</Key>'
        b"<Value>v</Value></Tag></TagSet></Tagging>"
    )
    with pytest.raises(S3Error) as exc:
        s3xml.parse_tagging(bomb)
    assert exc.value.code == "MalformedXML"


def test_namespace_optional_and_escaping() -> None:
    doc = s3xml.render("R", [("Key", "a<b&c>\"'"), ("N", 3), ("B", True), ("Skip", None)])
    root = s3xml.parse(doc, "R")
    assert s3xml.text(root, "Key") == "a<b&c>\"'"
    assert s3xml.text(root, "N") == "3" and s3xml.text(root, "B") == "true"
    assert root.find("Skip") is None
    assert s3xml.parse(b"<R><Key>x</Key></R>", "R").find("Key") is not None
    with pytest.raises(S3Error):
        s3xml.parse(b"<Other/>", "R")
