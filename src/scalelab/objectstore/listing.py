"""Listing with prefix and delimiter over a sorted key scan (ListObjects v1/v2, versions).

The metadata store offers "keys after K with prefix P, in order, N at a time"; this module
turns that into S3's pages. When a key rolls up into a common prefix (`photos/2024/`), the
scan jumps past every key under it instead of reading them, so listing the top level of a
bucket with millions of keys costs one query per prefix returned, not per key stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from scalelab.objectstore.metadata import prefix_end
from scalelab.objectstore.model import ObjectVersion

# scan(after_key, limit) -> latest versions with key > after_key (or all when None)
Scan = Callable[[str | None, int], list[ObjectVersion]]
# scan(after_key, after_row_id, limit) -> [(row_id, version)] newest first within a key
VersionScan = Callable[[str | None, int | None, int], list[tuple[int, ObjectVersion]]]


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


def list_latest(scan: Scan, prefix: str, delimiter: str, after: str | None, max_keys: int) -> Page:
    """One page of current objects (delete markers hidden), S3's ListObjects semantics."""
    page = Page()
    if max_keys <= 0:
        return page
    cursor = _resume(after, prefix, delimiter)
    batch = min(max(max_keys + 1, 100), 1000)
    count = 0
    while True:
        rows = scan(cursor, batch)
        if not rows:
            return page
        for version in rows:
            cursor = version.key
            if version.delete_marker:
                continue  # hidden, and a prefix made only of delete markers is hidden too
            common = _rollup(version.key, prefix, delimiter)
            if common is not None:
                if page.common_prefixes and page.common_prefixes[-1] == common:
                    continue
                if count == max_keys:
                    page.truncated = True
                    return page
                page.common_prefixes.append(common)
                page.next_marker = common
                count += 1
                end = prefix_end(common)
                if end is None:
                    return page
                # Jump past everything under the common prefix.
                cursor = _before(end)
                break
            if count == max_keys:
                page.truncated = True
                return page
            page.contents.append(version)
            page.next_marker = version.key
            count += 1
        else:
            if len(rows) < batch:
                return page


def _resume(marker: str | None, prefix: str, delimiter: str) -> str | None:
    """Where to continue after `marker`; a marker that is a common prefix skips all under it."""
    if marker is None or not delimiter or _rollup(marker, prefix, delimiter) != marker:
        return marker
    end = prefix_end(marker)
    return marker if end is None else _before(end)


def _before(upper: str) -> str:
    """A string just below `upper`: every key under the rolled-up prefix is <= it."""
    return upper[:-1] + chr(ord(upper[-1]) - 1) + "\U0010ffff"


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
    cursor_key, cursor_row = key_marker, after_row
    if after_row is None:
        cursor_key = _resume(key_marker, prefix, delimiter)
    batch = min(max(max_keys + 1, 100), 1000)
    count = 0
    while True:
        rows = scan(cursor_key, cursor_row, batch)
        if not rows:
            return page
        for row_id, version in rows:
            cursor_key, cursor_row = version.key, row_id
            common = _rollup(version.key, prefix, delimiter)
            if common is not None:
                if page.common_prefixes and page.common_prefixes[-1] == common:
                    continue
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
                cursor_key, cursor_row = _before(end), None
                break
            if count == max_keys:
                page.truncated = True
                return page
            page.versions.append(version)
            page.next_key_marker = version.key
            page.next_version_id_marker = version.version_id
            page.next_row_id = row_id
            count += 1
        else:
            if len(rows) < batch:
                return page
