"""Listing pages against a brute-force model of S3's prefix/delimiter/pagination semantics."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from scalelab.objectstore.listing import list_latest, list_versions
from scalelab.objectstore.model import ObjectVersion

ALPHABET = st.sampled_from(["a", "b", "/", "-", "é", "\U0001f600", "z", "\U0010ffff"])
KEYS = st.lists(st.text(ALPHABET, min_size=1, max_size=6), max_size=40, unique=True)


def _version(key: str, deleted: bool = False, version_id: str = "null") -> ObjectVersion:
    return ObjectVersion(
        bucket="b",
        key=key,
        version_id=version_id,
        is_latest=True,
        delete_marker=deleted,
        last_modified=0.0,
    )


def _scan(rows: list[ObjectVersion], prefix: str):  # type: ignore[no-untyped-def]
    keys = [r.key for r in rows]

    def scan(after: str | None, inclusive: bool, limit: int) -> list[ObjectVersion]:
        if after is None:
            start = 0
        elif inclusive:
            start = bisect.bisect_left(keys, after)
        else:
            start = bisect.bisect_right(keys, after)
        out = [r for r in rows[start:] if r.key.startswith(prefix)]
        return out[:limit]

    return scan


def _model(keys: list[str], deleted: set[str], prefix: str, delimiter: str) -> list[str]:
    # S3 hides delete markers, and a common prefix exists only if a live key is under it.
    """Every entry of the listing, in order: keys, and common prefixes marked with a '>'."""
    out: list[str] = []
    for key in sorted(keys):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if delimiter and delimiter in rest:
            common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if not out or out[-1] != ">" + common:
                out.append(">" + common)
        elif key not in deleted:
            out.append(key)
    return out


@given(
    keys=KEYS,
    deleted_bits=st.lists(st.booleans(), max_size=40),
    prefix=st.sampled_from(["", "a", "a/", "b/", "/"]),
    delimiter=st.sampled_from(["", "/", "-", "ab"]),
    page_size=st.integers(1, 7),
)
def test_pages_concatenate_to_the_model(
    keys: list[str], deleted_bits: list[bool], prefix: str, delimiter: str, page_size: int
) -> None:
    keys = sorted(keys)
    deleted = {k for k, bit in zip(keys, deleted_bits, strict=False) if bit}
    rows = [_version(k, k in deleted) for k in keys]
    scan = _scan(rows, prefix)
    seen: list[str] = []
    marker: str | None = None
    for _ in range(200):
        page = list_latest(scan, prefix, delimiter, marker, page_size)
        entries = [v.key for v in page.contents] + [">" + p for p in page.common_prefixes]
        entries.sort(key=lambda e: e.lstrip(">"))
        assert len(entries) <= page_size
        seen += entries
        if not page.truncated:
            break
        assert page.next_marker is not None
        marker = page.next_marker
    else:
        raise AssertionError("listing did not terminate")
    live = [k for k in keys if k not in deleted]
    assert seen == _model(live, set(), prefix, delimiter)


@given(keys=KEYS, versions=st.integers(1, 3), page_size=st.integers(1, 5))
def test_version_pages_cover_every_version_once(
    keys: list[str], versions: int, page_size: int
) -> None:
    keys = sorted(keys)
    rows: list[tuple[int, ObjectVersion]] = []
    row_id = 0
    for key in keys:
        for v in range(versions):
            row_id += 1
            rows.append((row_id, _version(key, version_id=f"{key}#{v}")))
    # newest first within a key: higher row id first
    ordered = sorted(rows, key=lambda r: (r[1].key, -r[0]))

    def scan(after_key: str | None, after_row: int | None, inclusive: bool, limit: int):  # type: ignore[no-untyped-def]
        out = []
        for rid, v in ordered:
            if after_key is not None:
                if v.key < after_key:
                    continue
                if not inclusive and v.key == after_key and (after_row is None or rid >= after_row):
                    continue
            out.append((rid, v))
        return out[:limit]

    seen: list[str] = []
    key_marker: str | None = None
    row: int | None = None
    for _ in range(500):
        page = list_versions(scan, "", "", key_marker, row, page_size)
        seen += [v.version_id for v in page.versions]
        if not page.truncated:
            break
        key_marker, row = page.next_key_marker, page.next_row_id
    assert seen == [v.version_id for _, v in ordered]


@given(
    prefix=st.sampled_from(["", "a", "list/"]),
    after=st.one_of(st.none(), st.text(ALPHABET, max_size=5)),
    inclusive=st.booleans(),
)
def test_key_range_sends_one_lower_bound(prefix: str, after: str | None, inclusive: bool) -> None:
    """SQLite seeks on one lower bound only: two would make a page cost O(keys before it)."""
    from sqlalchemy.dialects import sqlite

    from scalelab.objectstore.metadata import _key_range, objects

    bounds = [
        str(b.compile(dialect=sqlite.dialect()))
        for b in _key_range(objects.c.key, prefix, after, inclusive)
    ]
    lower = [b for b in bounds if ">" in b]
    assert len(lower) == (1 if prefix or after is not None else 0)
