"""Work the object store does on its own: lifecycle rules, garbage collection, and fsck.

Lifecycle: `lifecycle.plan_key` decides, per key, what the bucket's rules say is due; this
module only reads versions and carries the actions out through the same service calls a
client's DELETE would use, so versioning semantics (delete markers) stay in one place.

Fsck checks both halves of the book's design and their agreement: every data record's
checksum (the data node's own check), every object version's data objects present with the
right sizes, and data objects nobody references (orphans, reclaimed by the GC).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal

import anyio

from scalelab.objectstore import lifecycle
from scalelab.objectstore.multipart import Multipart
from scalelab.objectstore.service import ObjectStore

log = logging.getLogger("scalelab.objectstore.background")


def plan_bucket(store: ObjectStore, bucket_name: str, day_seconds: float) -> list[lifecycle.Action]:
    bucket = store.meta.get_bucket(bucket_name)
    if bucket is None or not bucket.lifecycle:
        return []
    rules = lifecycle.parse_lifecycle(bucket.lifecycle)
    versioning: Literal["Enabled", "Suspended"] | None = None
    if bucket.versioning == "Enabled":
        versioning = "Enabled"
    elif bucket.versioning == "Suspended":
        versioning = "Suspended"
    now = store.clock()
    actions: list[lifecycle.Action] = []
    versions = store.meta.iter_bucket_versions(bucket_name)
    for _key, group in itertools.groupby(versions, key=lambda v: v.key):
        infos = [
            lifecycle.ObjectVersionInfo(
                key=v.key,
                version_id=v.version_id,
                is_latest=v.is_latest,
                is_delete_marker=v.delete_marker,
                last_modified=v.last_modified,
                noncurrent_since=v.noncurrent_since,
                tags=v.tags,
                size=v.size,
            )
            for v in group
        ]
        actions += lifecycle.plan_key(
            rules, infos, versioning=versioning, now=now, day_seconds=day_seconds
        )
    uploads = [
        lifecycle.UploadInfo(u.key, u.upload_id, u.initiated)
        for u in store.meta.list_uploads(bucket_name, "", None, None, 1_000_000)
    ]
    actions += lifecycle.plan_uploads(rules, uploads, now=now, day_seconds=day_seconds)
    return actions


async def apply_lifecycle(store: ObjectStore, multipart: Multipart, day_seconds: float) -> int:
    """One pass over every bucket with rules; returns the number of actions carried out."""
    done = 0
    for bucket in store.meta.list_buckets():
        if not bucket.lifecycle:
            continue
        actions = await anyio.to_thread.run_sync(plan_bucket, store, bucket.name, day_seconds)
        for action in actions:
            if action.kind in ("add_delete_marker", "delete_object"):
                await store.delete_checked(bucket.name, action.key, None)
            elif action.kind in ("delete_version", "remove_delete_marker"):
                await store.delete_checked(bucket.name, action.key, action.version_id)
            elif action.kind == "abort_upload" and action.upload_id:
                await multipart.abort_checked(bucket.name, action.key, action.upload_id)
            else:
                log.warning("unknown lifecycle action %r", action)
                continue
            done += 1
        if actions:
            log.info("lifecycle: %d actions in bucket %s", len(actions), bucket.name)
    return done


def fsck(store: ObjectStore) -> dict[str, Any]:
    """The data node's own check plus metadata/data agreement; `problems` lists each fault."""
    store.reclaimer.flush()
    report = store.node.fsck()
    problems: list[str] = list(report.get("problems", []))
    referenced = store.meta.referenced_data_ids()
    versions = 0
    for bucket in store.meta.list_buckets():
        for version in store.meta.iter_bucket_versions(bucket.name):
            versions += 1
            for ref in version.data:
                if not store.node.exists(ref.object_id):
                    problems.append(
                        f"{bucket.name}/{version.key} version {version.version_id}: "
                        f"data object {ref.object_id} is missing"
                    )
                elif store.node.size(ref.object_id) != ref.size:
                    problems.append(
                        f"{bucket.name}/{version.key} version {version.version_id}: "
                        f"data object {ref.object_id} has the wrong size"
                    )
    orphans = [oid for oid, _created in store.node.ids() if oid not in referenced]
    report["object_versions"] = versions
    report["orphaned_data_objects"] = len(orphans)
    report["problems"] = problems
    report["ok"] = not problems
    return report
