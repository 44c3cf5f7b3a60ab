"""Listing with prefix and delimiter over a sorted key scan (ListObjects v1/v2, versions).

The metadata store offers "keys after K with prefix P, in order, N at a time"; this module
turns that into S3's pages. When a key rolls up into a common prefix (`photos/2024/`), the
scan jumps past every key under it instead of reading them (it resumes at the smallest string
above the prefix, inclusively), so listing the top level of a bucket with millions of keys
costs one small query per prefix returned, not a read of every key stored. Batches start small
after a jump and grow while rows are plain keys, so a page of many prefixes reads few rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scalelab.objectstore.metadata import prefix_end
from scalelab.objectstore.model import ObjectVersion

# scan(start_key, inclusive, limit) -> latest versions with key > start_key (>= if inclusive)
Scan = Callable[[str | None, bool, int], list[ObjectVersion]]
# scan(start_key, after_row_id, inclusive, limit) -> [(row_id, version)], newest first per key
VersionScan = Callable[[str | None, int | None, bool, int], list[tuple[int, ObjectVersion]]]

FIRST_BATCH = 16
MAX_BATCH = 1000


@dataclass
class Page:
    contents: list[ObjectVersion] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_marker: str | None = None  # last key or prefix returned (v1 NextMarker / v2 token)


@dataclass
class VersionPage:
    versions: list[ObjectVersion] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_key_marker: str | None = None
    next_version_id_marker: str | None = None
    next_row_id: int | None = None


def _rollup(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    at = key.find(delimiter, len(prefix))
    return key[: at + len(delimiter)] if at >= 0 else None


def _resume(marker: str | None, prefix: str, delimiter: str) -> tuple[str | None, bool]:
    """Where to continue after `marker`: a marker that is a common prefix skips all under it."""
    if marker is None or not delimiter or _rollup(marker, prefix, delimiter) != marker:
        return marker, False
    end = prefix_end(marker)
    return (marker, False) if end is None else (end, True)


def _first_batch(max_keys: int, delimiter: str) -> int:
    return min(max_keys + 1, FIRST_BATCH if delimiter else MAX_BATCH)


def list_latest(scan: Scan, prefix: str, delimiter: str, after: str | None, max_keys: int) -> Page:
    """One page of current objects (delete markers hidden), S3's ListObjects semantics."""
    page = Page()
    if max_keys <= 0:
        return page
    cursor, inclusive = _resume(after, prefix, delimiter)
    batch = _first_batch(max_keys, delimiter)
    count = 0
    while True:
        batch = min(batch, max_keys - count + 1)  # never read past what the page can hold
        rows = scan(cursor, inclusive, batch)
        if not rows:
            return page
        jumped = False
        for version in rows:
            cursor, inclusive = version.key, False
            if version.delete_marker:
                continue  # hidden, and a prefix made only of delete markers is hidden too
            common = _rollup(version.key, prefix, delimiter)
            if common is not None:
                if count == max_keys:
                    page.truncated = True
                    return page
                page.common_prefixes.append(common)
                page.next_marker = common
                count += 1
                end = prefix_end(common)
                if end is None:
                    return page
                cursor, inclusive, jumped = end, True, True
                break
            if count == max_keys:
                page.truncated = True
                return page
            page.contents.append(version)
            page.next_marker = version.key
            count += 1
        if not jumped and len(rows) < batch:
            return page
        batch = _first_batch(max_keys, delimiter) if jumped else min(batch * 2, MAX_BATCH)


def list_versions(
    scan: VersionScan,
    prefix: str,
    delimiter: str,
    key_marker: str | None,
    after_row: int | None,
    max_keys: int,
) -> VersionPage:
    """One page of ListObjectVersions: keys ascending, versions newest first."""
    page = VersionPage()
    if max_keys <= 0:
        return page
    cursor_key, cursor_row, inclusive = key_marker, after_row, False
    if after_row is None:
        cursor_key, inclusive = _resume(key_marker, prefix, delimiter)
    batch = _first_batch(max_keys, delimiter)
    count = 0
    while True:
        batch = min(batch, max_keys - count + 1)
        rows = scan(cursor_key, cursor_row, inclusive, batch)
        if not rows:
            return page
        jumped = False
        for row_id, version in rows:
            cursor_key, cursor_row, inclusive = version.key, row_id, False
            common = _rollup(version.key, prefix, delimiter)
            if common is not None:
                if count == max_keys:
                    page.truncated = True
                    return page
                page.common_prefixes.append(common)
                page.next_key_marker, page.next_version_id_marker = common, None
                page.next_row_id = None
                count += 1
                end = prefix_end(common)
                if end is None:
                    return page
                cursor_key, cursor_row, inclusive, jumped = end, None, True, True
                break
            if count == max_keys:
                page.truncated = True
                return page
            page.versions.append(version)
            page.next_key_marker = version.key
            page.next_version_id_marker = version.version_id
            page.next_row_id = row_id
            count += 1
        if not jumped and len(rows) < batch:
            return page
        batch = _first_batch(max_keys, delimiter) if jumped else min(batch * 2, MAX_BATCH)
