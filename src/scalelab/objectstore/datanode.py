"""The data store of one data node: object bytes by object id (the book's ch. 9 data store).

Objects are cut into records of at most chunk_bytes and appended to the active data file
(datafile.py); the object lookup table in SQLite (`lookup.db`) maps (object id, seq) to
(file, offset, length, crc). When the active file reaches data_file_bytes it turns read-only
and the next one opens. Deleting drops lookup rows; compaction copies the live records of
read-only files with much garbage into the active file and removes the old file.

Durability: a commit fdatasyncs the data first, then commits the lookup rows, so a row never
points at bytes that could be lost. One background thread does this for every pending commit
at once (group commit). The lookup commit itself is not fsynced (SQLite WAL with
synchronous=NORMAL): it survives a killed process, and after a power loss the data file is the
log that rebuilds it. A writer flags its object's last record when it commits, and opening
re-indexes every whole object (seq 0..n, the last flagged) without rows that it finds in the
active file after `indexed_end`, a durable mark moved to the end of the file at open and at
close, before which every record is indexed or garbage. An object committed but lost from the
index comes back that way; so does, after a crash, one never committed or deleted since the
mark, which nothing refers to and the caller's orphan sweep reclaims. Commits that the scan
could not redo (rollover, compaction, an object spanning a rollover) are fsynced.

A file's garbage is size - header - live_bytes, and live_bytes changes in the same transaction
as the rows, so aborted writers and appends cut short by a crash are counted as garbage
without any bookkeeping of their own.

Locks, always taken in this order: _maintenance (compaction, fsck, close) -> _append_lock
(writing the active file, rollover) -> _db_lock (the one write connection) -> _files.lock
(the fd table, pins and refs). No lock that appends need is held during a commit's fsync.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from scalelab.objectstore import datafile as df
from scalelab.objectstore.datafile import DataFile
from scalelab.objectstore.errors import CorruptObject, DataStoreError, ObjectMissing

__all__ = ["DataNode", "ObjectWriter", "StoredObject"]

log = logging.getLogger(__name__)

HDR = df.RECORD_HEADER_SIZE
_FILE_NAME = re.compile(r"^(\d{8,})\.dat$")
_PAGE = 1000
_MOVE_BATCH_BYTES = 64 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    file_id INTEGER PRIMARY KEY, state TEXT NOT NULL, size INTEGER NOT NULL,
    live_bytes INTEGER NOT NULL, indexed_end INTEGER);
CREATE TABLE IF NOT EXISTS records (
    object_id BLOB NOT NULL, seq INTEGER NOT NULL, start INTEGER NOT NULL,
    file_id INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    crc INTEGER NOT NULL, committed REAL NOT NULL,
    PRIMARY KEY (object_id, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_file ON records (file_id, offset);
"""
_ADD_LIVE = "UPDATE files SET live_bytes = live_bytes + ? WHERE file_id = ?"
_MARK = "UPDATE files SET indexed_end = ? WHERE file_id = ?"
_NEW_FILE = "INSERT INTO files VALUES (?, 'active', ?, 0, ?)"
_LOCATE = "SELECT file_id, offset, length, crc FROM records WHERE object_id = ? AND seq = ?"

# A written record: (seq, start within the object, file, offset in file, length, crc)
_Rec = tuple[int, int, DataFile, int, int, int]


@dataclass(frozen=True)
class StoredObject:
    object_id: str  # 32 hex chars
    size: int


def _oid(object_id: str) -> bytes:
    if len(object_id) != 32:
        raise ValueError(f"object id must be 32 hex characters, got {object_id!r}")
    return bytes.fromhex(object_id)


class ObjectWriter:
    """Streams one object into the node in bounded memory; one thread at a time.

    Use as a context manager: leaving it uncommitted aborts, so no records stay pinned.
    """

    def __init__(self, node: DataNode, oid: bytes) -> None:
        self.object_id = oid.hex()
        self._node, self._oid = node, oid
        self._pieces: list[bytes] = []
        self._buffered = self._written = 0
        self._records: list[_Rec] = []
        self._files: set[DataFile] = set()  # files this writer pinned
        self._done = False

    @property
    def size(self) -> int:
        return self._written + self._buffered

    def write(self, data: bytes) -> None:
        """Buffer data; full chunks become records in the active file, except the last one,
        held back so that commit can flag it as the object's last record."""
        if self._done:
            raise DataStoreError(f"writer for {self.object_id} is finished")
        if data:
            self._pieces.append(data if type(data) is bytes else bytes(data))
            self._buffered += len(data)
            if self._buffered > self._node.chunk_bytes:
                self._flush(final=False)

    def _flush(self, final: bool) -> None:
        try:
            chunk, pieces = self._node.chunk_bytes, self._pieces
            joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            view, pos = memoryview(joined), 0
            while len(joined) - pos > chunk or final and (pos < len(joined) or not self._records):
                piece = view[pos : pos + chunk]
                seq, last = len(self._records), final and pos + chunk >= len(joined)
                flags = df.FLAG_LAST if last else 0
                f, offset, crc = self._node._append(self._oid, seq, piece, self._files, flags)
                self._records.append((seq, self._written, f, offset, len(piece), crc))
                self._written += len(piece)
                pos += len(piece)
            rest = joined[pos:] if pos else joined
            self._pieces, self._buffered = ([rest] if rest else []), len(rest)
        except BaseException:
            self.abort()
            raise

    def commit_future(self) -> Future[StoredObject]:
        """Append what is buffered; resolves once the data and its lookup rows are durable."""
        if self._done:
            raise DataStoreError(f"writer for {self.object_id} is finished")
        self._flush(final=True)
        self._done = True
        return self._node._enqueue(self)

    def commit(self) -> StoredObject:
        return self.commit_future().result()

    def abort(self) -> None:
        """Drop the object: its records stay in their files as garbage. Idempotent."""
        if not self._done:
            self._done = True
            self._pieces = []
            self._node._files.unpin(self._files)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class DataNode:
    """One data node's store: thread-safe, durable, checksummed, compactable."""

    def __init__(
        self, directory: Path, *, chunk_bytes: int = 4 << 20, data_file_bytes: int = 1 << 30
    ) -> None:
        if not 1 <= chunk_bytes <= df.MAX_RECORD_DATA:
            raise ValueError(f"chunk_bytes must be in 1..{df.MAX_RECORD_DATA}")
        if data_file_bytes <= df.FILE_HEADER_SIZE:
            raise ValueError("data_file_bytes must exceed the file header")
        self.directory = Path(directory)
        self.chunk_bytes, self.data_file_bytes = chunk_bytes, data_file_bytes
        self.corruptions = 0  # checksum failures met by reads and compaction
        self.recovery: dict[str, int] = {}  # what opening found at the active file's tail
        self._maintenance, self._append_lock = threading.Lock(), threading.Lock()
        self._db_lock = threading.Lock()
        self._commit_cv = threading.Condition()
        self._files = df.FileTable()
        self._pending: list[tuple[ObjectWriter, Future[StoredObject]]] = []
        self._conns: list[sqlite3.Connection] = []
        self._pool: list[sqlite3.Connection] = []
        self._failed: BaseException | None = None  # after a failed fsync nothing is trusted
        self._closing = self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        try:
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(files)")}
            if "indexed_end" not in columns:  # a lookup table from before the mark
                self._db.execute("ALTER TABLE files ADD COLUMN indexed_end INTEGER")
            self._open_files()
        except BaseException:
            self._release_handles()
            raise
        self._committer = threading.Thread(target=self._commit_loop, name="datanode-commit")
        self._committer.daemon = True
        self._committer.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- opening and recovery ----

    def _connect(self, register: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.directory / "lookup.db", isolation_level=None, check_same_thread=False, timeout=30
        )
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
        if register:
            self._conns.append(conn)
        return conn

    def _path(self, file_id: int) -> Path:
        return self.directory / f"{file_id:08d}.dat"

    def _open_files(self) -> None:
        """Open every data file in the lookup table; recover the active one's tail."""
        on_disk = {int(m[1]) for n in os.listdir(self.directory) if (m := _FILE_NAME.match(n))}
        rows = self._db.execute("SELECT file_id, size, live_bytes FROM files").fetchall()
        if not rows:
            if on_disk:
                raise DataStoreError(f"{self.directory} has data files but no lookup table")
            with self._writing() as db:
                db.execute(_NEW_FILE, (1, df.FILE_HEADER_SIZE, df.FILE_HEADER_SIZE))
            self._indexed_active = 1
            self._active = self._files.add(DataFile.create(self._path(1), 1))
            return
        for file_id in on_disk - {r[0] for r in rows}:
            log.warning("removing data file %d: not in the lookup table (compacted)", file_id)
            self._path(file_id).unlink()
        active_id = self._indexed_active = max(r[0] for r in rows)
        for file_id, size, live in rows:
            path, readonly = self._path(file_id), file_id != active_id
            if path.exists():
                f = self._files.add(DataFile.open(path, file_id, readonly))
                if readonly and f.size != size:
                    log.error("data file %s is %d bytes, expected %d", path, f.size, size)
            else:
                log.error("data file %s is missing: %d live bytes lost", path, live)
                if readonly:
                    continue
                f = self._files.add(DataFile.create(path, file_id))
            if not readonly:
                self._active = f
        if not self._recover_tail(self._active) or self._active.size >= self.data_file_bytes:
            self._rollover()

    def _recover_tail(self, f: DataFile) -> bool:
        """Re-index the active file past its mark, cut a torn append off; False if committed
        bytes are gone."""
        row = self._db.execute(
            "SELECT offset, length FROM records WHERE file_id = ? ORDER BY offset DESC LIMIT 1",
            (f.file_id,),
        ).fetchone()
        committed_end = row[0] + HDR + row[1] if row else df.FILE_HEADER_SIZE
        if f.size < committed_end:
            log.error("data file %s ends at %d, before committed data ending at %d",
                      f.path, f.size, committed_end)  # fmt: skip
            return False
        (mark,) = self._db.execute(
            "SELECT indexed_end FROM files WHERE file_id = ?", (f.file_id,)
        ).fetchone()
        if mark is None or mark > f.size:  # no mark yet, or bytes past it lost: rows decide
            mark = committed_end
        found, torn = f.recover(mark)
        objects, indexed = self._reindex(f, found)
        garbage = len(found) - indexed
        self.recovery = {"file_id": f.file_id, "truncated_bytes": torn,
                         "reindexed_objects": objects, "garbage_records": garbage}  # fmt: skip
        if objects:
            log.warning("data file %s: re-indexed %d whole objects missing from the index",
                        f.path, objects)  # fmt: skip
        if garbage:
            log.info("data file %s: %d uncommitted records are garbage", f.path, garbage)
        return True

    def _reindex(self, f: DataFile, found: list[tuple[int, df.RecordHeader]]) -> tuple[int, int]:
        """Index the whole objects without rows among found; move the mark to the file's end.

        Returns (objects re-indexed, records that are not garbage). A record of an object that
        has rows already is indexed, or a compaction copy never committed (garbage).
        """
        runs: dict[bytes, list[tuple[int, df.RecordHeader]]] = {}
        for offset, header in found:
            if header.kind == df.KIND_DATA:
                runs.setdefault(header.object_id, []).append((offset, header))
        rows, now, live, known = [], time.time(), 0, 0
        for oid, run in runs.items():
            sql = "SELECT offset FROM records WHERE object_id = ? AND file_id = ?"
            if have := {r[0] for r in self._db.execute(sql, (oid, f.file_id))}:
                known += sum(offset in have for offset, _ in run)
                continue
            run.sort(key=lambda r: r[1].seq)
            whole = [h.seq for _, h in run] == list(range(len(run)))
            if not whole or not run[-1][1].flags & df.FLAG_LAST:
                continue
            start = 0
            for offset, h in run:
                rows.append((oid, h.seq, start, f.file_id, offset, h.length, h.crc, now))
                start += h.length
                live += HDR + h.length
        with self._writing() as db:
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(_ADD_LIVE, (live, f.file_id))
            db.execute(_MARK, (f.size, f.file_id))
        return len({r[0] for r in rows}), len(rows) + known

    # ---- writing ----

    def writer(self) -> ObjectWriter:
        """A writer for a new object (a fresh uuid4: ids are never reused)."""
        return ObjectWriter(self, uuid.uuid4().bytes)

    def put(self, data: bytes) -> StoredObject:
        """Store a whole object; durable on return."""
        with self.writer() as w:
            w.write(data)
            return w.commit()

    def _append(
        self,
        oid: bytes,
        seq: int,
        data: bytes | memoryview,
        pins: set[DataFile] | None,
        flags: int = 0,
    ) -> tuple[DataFile, int, int]:
        header, crc = df.encode_record_header(oid, seq, data, flags=flags)  # CRC outside the lock
        with self._append_lock:
            if self._closed or self._failed is not None:
                raise DataStoreError(f"data node {self.directory} is closed or failed")
            f = self._active
            try:
                offset = f.append(header, data)
            except OSError as exc:  # could not even cut the half record off
                self._failed = exc
                raise DataStoreError(f"append to {f.path} failed: {exc}") from exc
            if pins is not None and f not in pins:
                self._files.pin(f)
                pins.add(f)
            if f.size >= self.data_file_bytes:
                try:
                    self._rollover()
                except (OSError, DataStoreError, sqlite3.Error) as exc:
                    log.error("rollover of %s failed (will retry): %s", f.path, exc)
        return f, offset, crc

    def _rollover(self) -> None:
        """Make the active file read-only and start the next one (append lock held)."""
        old, new_id = self._active, self._active.file_id + 1
        try:
            old.sync(old.size)  # the read-only file's size is final and durable
        except OSError as exc:  # as in _sync: after a failed fsync no write is trusted
            self._failed = exc
            raise
        new = DataFile.create(self._path(new_id), new_id)
        try:
            with self._writing() as db:
                db.execute(
                    "UPDATE files SET state = 'readonly', size = ? WHERE file_id = ?",
                    (old.size, old.file_id),
                )
                db.execute(_NEW_FILE, (new_id, df.FILE_HEADER_SIZE, df.FILE_HEADER_SIZE))
                self._indexed_active = new_id
        except BaseException:
            self._indexed_active = old.file_id
            new.close()
            new.path.unlink()
            raise
        with self._files.lock:
            old.readonly = True
        self._active = self._files.add(new)

    def _enqueue(self, w: ObjectWriter) -> Future[StoredObject]:
        fut: Future[StoredObject] = Future()
        with self._commit_cv:
            if self._closing:
                self._files.unpin(w._files)
                raise DataStoreError(f"data node {self.directory} is closed")
            self._pending.append((w, fut))
            self._commit_cv.notify()
        return fut

    def _commit_loop(self) -> None:
        while True:
            with self._commit_cv:
                while not self._pending and not self._closing:
                    self._commit_cv.wait()
                batch, self._pending = self._pending, []
            if not batch:
                return
            self._commit_batch(batch)

    def _commit_batch(self, batch: list[tuple[ObjectWriter, Future[StoredObject]]]) -> None:
        """One fdatasync per touched file, then one transaction, for every pending commit."""
        error: DataStoreError | None = None
        for w, fut in batch:  # a future cancelled before now (asyncio task gone) is an abort
            if not fut.set_running_or_notify_cancel():
                self._files.unpin(w._files)
        if not (batch := [(w, fut) for w, fut in batch if not fut.cancelled()]):
            return
        try:
            self._sync(r for w, _ in batch for r in w._records)
            now, live = time.time(), dict[int, int]()
            rows = []
            for w, _ in batch:
                for seq, start, f, offset, n, crc in w._records:
                    rows.append((w._oid, seq, start, f.file_id, offset, n, crc, now))
                    live[f.file_id] = live.get(f.file_id, 0) + HDR + n
            files = live.keys()  # the tail scan only rebuilds rows of the indexed active file
            with self._writing(lambda: any(i != self._indexed_active for i in files)) as db:
                db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany(_ADD_LIVE, [(n, file_id) for file_id, n in live.items()])
        except Exception as exc:
            log.error("group commit of %d objects failed: %s", len(batch), exc)
            error = exc if isinstance(exc, DataStoreError) else DataStoreError(f"commit: {exc}")
        for w, _ in batch:
            self._files.unpin(w._files)
        for w, fut in batch:
            if error is None:
                fut.set_result(StoredObject(w.object_id, w._written))
            else:
                fut.set_exception(error)

    def _sync(self, records: Iterable[_Rec]) -> None:
        """Make every given record durable: at most one fdatasync per file."""
        need: dict[DataFile, int] = {}
        for _, _, f, offset, n, _ in records:
            need[f] = max(need.get(f, 0), offset + HDR + n)
        for f, end in need.items():
            try:
                f.sync(end)
            except OSError as exc:  # the page cache can no longer be trusted: stop writing
                self._failed = exc
                raise DataStoreError(f"fdatasync of {f.path} failed: {exc}") from exc

    @contextmanager
    def _writing(self, durable: bool | Callable[[], bool] = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; fsynced when durable (a predicate is asked under the lock)."""
        with self._db_lock:
            if self._closed:
                raise DataStoreError(f"data node {self.directory} is closed")
            sync = durable() if callable(durable) else durable
            if sync:  # FULL syncs the WAL at commit, and with it every earlier commit
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            finally:
                if sync:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    # ---- reading ----

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run a read on a pooled connection (WAL: readers never wait for the writer)."""
        if self._closed:
            raise DataStoreError(f"data node {self.directory} is closed")
        try:
            conn = self._pool.pop()
        except IndexError:
            conn = self._connect()
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            self._pool.append(conn)

    def read(self, object_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Verified pieces of bytes [start, end); reads only the records the range overlaps.

        The lookup happens now (ObjectMissing before any byte); data is read as iterated.
        """
        oid = _oid(object_id)
        stop = 1 << 62 if end is None else end
        if start < 0 or stop < start:
            raise ValueError(f"bad range {start}..{end}")
        rows = self._query(
            "SELECT seq, start, file_id, offset, length, crc FROM records"
            " WHERE object_id = ? AND start < ? AND start + length > ? ORDER BY seq",
            (oid, stop, start),
        )
        if not rows and not self.exists(object_id):
            raise ObjectMissing(object_id)
        return self._pieces(oid, rows, start, stop)

    def _pieces(self, oid: bytes, rows: list[Any], start: int, stop: int) -> Iterator[bytes]:
        chunk = self.chunk_bytes
        for seq, rstart, file_id, offset, n, crc in rows:
            data = self._read_record(oid, seq, (file_id, offset, n, crc))
            lo, hi = max(start - rstart, 0), min(stop - rstart, n)
            if lo == 0 and hi == n <= chunk:
                yield data
            else:
                view = memoryview(data)
                for i in range(lo, hi, chunk):
                    yield bytes(view[i : min(i + chunk, hi)])

    def _read_record(self, oid: bytes, seq: int, where: tuple[int, int, int, int]) -> bytes:
        """Read one record; on failure look it up again in case compaction moved it."""
        for _ in range(5):
            file_id, offset, n, crc = where
            if (f := self._files.acquire(file_id)) is None:
                error = CorruptObject(oid.hex(), f"data file {file_id} is missing")
            else:
                try:
                    return df.read_record(f.fd, offset, oid, seq, n, crc)
                except CorruptObject as exc:
                    error = exc
                except OSError as exc:
                    error = CorruptObject(oid.hex(), f"reading data file {file_id}: {exc}")
                finally:
                    self._files.release(f)
            if not (rows := self._query(_LOCATE, (oid, seq))):
                raise ObjectMissing(oid.hex())
            if (where := tuple(rows[0])) == (file_id, offset, n, crc):
                break  # still there: the bytes really are bad
        with self._files.lock:
            self.corruptions += 1
        log.error("%s", error)
        raise error

    def size(self, object_id: str) -> int:
        sql = "SELECT start + length FROM records WHERE object_id = ? ORDER BY seq DESC LIMIT 1"
        if not (rows := self._query(sql, (_oid(object_id),))):
            raise ObjectMissing(object_id)
        return int(rows[0][0])

    def exists(self, object_id: str) -> bool:
        sql = "SELECT 1 FROM records WHERE object_id = ? LIMIT 1"
        return bool(self._query(sql, (_oid(object_id),)))

    def ids(self) -> Iterator[tuple[str, float]]:
        """Every object with its commit time, page by page (no long read transaction)."""
        after = b""
        while True:
            rows = self._query(
                "SELECT object_id, committed FROM records WHERE object_id > ? AND seq = 0"
                f" ORDER BY object_id LIMIT {_PAGE}",
                (after,),
            )
            yield from ((oid.hex(), committed) for oid, committed in rows)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    # ---- deleting and compaction ----

    def delete(self, object_id: str) -> None:
        self.delete_many([object_id])

    def delete_many(self, object_ids: Iterable[str]) -> int:
        """Drop objects in one transaction (idempotent); returns how many existed."""
        oids = [_oid(x) for x in object_ids]
        freed: dict[int, int] = {}
        deleted = 0
        with self._writing(durable=False) as db:  # if lost, the objects come back as orphans
            for oid in oids:
                rows = db.execute(
                    "DELETE FROM records WHERE object_id = ? RETURNING file_id, length", (oid,)
                ).fetchall()
                deleted += bool(rows)
                for file_id, n in rows:
                    freed[file_id] = freed.get(file_id, 0) + HDR + n
            db.executemany(_ADD_LIVE, [(-n, file_id) for file_id, n in freed.items()])
        return deleted

    def compact(self, min_garbage_ratio: float = 0.5) -> dict[str, Any]:
        """Rewrite the read-only files whose garbage share is at least min_garbage_ratio."""
        report: dict[str, Any] = {"files_compacted": 0, "bytes_reclaimed": 0,
                                  "records_moved": 0, "problems": []}  # fmt: skip
        with self._maintenance:
            sql = "SELECT file_id, live_bytes FROM files WHERE state = 'readonly' ORDER BY file_id"
            for file_id, live in self._query(sql):
                f = self._files.get(file_id)
                if f is None or f.pins or not f.readonly:  # pins of read-only files only drop
                    continue
                payload = f.size - df.FILE_HEADER_SIZE
                if live and payload - live < max(min_garbage_ratio * payload, 1):
                    continue
                try:
                    moved, moved_bytes = self._compact_file(f)
                except (DataStoreError, OSError, sqlite3.Error) as exc:
                    with self._files.lock:
                        self.corruptions += isinstance(exc, CorruptObject)
                    report["problems"].append(f"compacting data file {file_id}: {exc}")
                    log.error("compacting data file %d: %s", file_id, exc)
                    continue
                report["files_compacted"] += 1
                report["records_moved"] += moved
                report["bytes_reclaimed"] += f.size - moved_bytes
        return report

    def _compact_file(self, f: DataFile) -> tuple[int, int]:
        """Copy f's live records to the active file, repoint their rows, then delete f."""
        moves: list[tuple[bytes, int, _Rec]] = []  # (object id, old offset, new record)
        moved = moved_bytes = pending = 0
        after = -1
        while True:
            rows = self._query(
                "SELECT offset, object_id, seq, length, crc FROM records"
                f" WHERE file_id = ? AND offset > ? ORDER BY offset LIMIT {_PAGE}",
                (f.file_id, after),
            )
            for offset, oid, seq, n, crc in rows:
                data = df.read_record(f.fd, offset, oid, seq, n, crc)
                nf, noffset, _ = self._append(oid, seq, data, None)
                moves.append((oid, offset, (seq, 0, nf, noffset, n, crc)))
                pending += HDR + n
            last = len(rows) < _PAGE
            if last or pending >= _MOVE_BATCH_BYTES:  # bounded batches: progress survives
                self._commit_moves(f, moves, last)
                moved, moved_bytes = moved + len(moves), moved_bytes + pending
                moves, pending = [], 0
            if last:
                break
            after = rows[-1][0]
        self._files.retire(f)
        f.path.unlink()
        return moved, moved_bytes

    def _commit_moves(self, f: DataFile, moves: list[tuple[bytes, int, _Rec]], last: bool) -> None:
        self._sync(rec for _, _, rec in moves)  # copies durable before rows point at them
        gained: dict[int, int] = {}
        with self._writing() as db:
            for oid, offset, (seq, _, nf, noffset, n, _) in moves:
                cur = db.execute(
                    "UPDATE records SET file_id = ?, offset = ?"
                    " WHERE object_id = ? AND seq = ? AND file_id = ? AND offset = ?",
                    (nf.file_id, noffset, oid, seq, f.file_id, offset),
                )
                if cur.rowcount:  # else deleted meanwhile, and the copy is garbage
                    gained[nf.file_id] = gained.get(nf.file_id, 0) + HDR + n
                    gained[f.file_id] = gained.get(f.file_id, 0) - HDR - n
            db.executemany(_ADD_LIVE, [(n, file_id) for file_id, n in gained.items()])
            if last:
                sql = "SELECT COUNT(*) FROM records WHERE file_id = ?"
                if left := db.execute(sql, (f.file_id,)).fetchone()[0]:
                    raise DataStoreError(f"data file {f.file_id} still has {left} records")
                db.execute("DELETE FROM files WHERE file_id = ?", (f.file_id,))

    # ---- checking and reporting ----

    def usage(self) -> dict[str, Any]:
        """Files, bytes on disk, live bytes and garbage bytes, in total and per file."""
        rows = self._query("SELECT file_id, state, live_bytes FROM files ORDER BY file_id")
        sizes = {file_id: size for file_id, (_, size) in self._files.snapshot().items()}
        per_file = [
            {"file_id": i, "state": state, "size": sizes.get(i, 0), "live_bytes": live,
             "garbage_bytes": max(sizes.get(i, 0) - df.FILE_HEADER_SIZE - live, 0)}
            for i, state, live in rows
        ]  # fmt: skip
        total = {k: sum(p[k] for p in per_file) for k in ("size", "live_bytes", "garbage_bytes")}
        return {"files": len(per_file), "bytes_on_disk": total.pop("size"), **total,
                "per_file": per_file}  # fmt: skip

    def fsck(self) -> dict[str, Any]:
        """Verify every record of every file and every lookup row, from one DB snapshot."""
        problems: list[str] = []
        report = dict.fromkeys(
            ("files", "records", "unreferenced_records", "unreferenced_bytes"), 0
        )
        sql = "SELECT object_id, seq, offset, length, crc FROM records WHERE file_id = ?"
        with self._maintenance:  # no compaction meanwhile: files stay put
            conn = self._connect(register=False)
            try:
                conn.execute("BEGIN")
                files = conn.execute(
                    "SELECT file_id, state, size, live_bytes FROM files"
                ).fetchall()
                snapshot = self._files.snapshot()  # taken after the DB's: every row lies below
                for file_id, state, size, live in files:
                    report["files"] += 1
                    if file_id not in snapshot:
                        problems.append(f"data file {file_id} is missing")
                        continue
                    fd, stop = snapshot[file_id]
                    if state == "readonly" and os.fstat(fd).st_size != size:
                        problems.append(f"data file {file_id} is not {size} bytes long")
                    rows = conn.execute(sql, (file_id,)).fetchall()
                    if (rows_live := sum(HDR + row[3] for row in rows)) != live:
                        problems.append(f"data file {file_id}: live_bytes {live} != {rows_live}")
                    result = df.check(fd, file_id, stop, rows)
                    problems += result.problems
                    report["records"] += result.records
                    report["unreferenced_records"] += result.unreferenced
                    report["unreferenced_bytes"] += result.unreferenced_bytes
                report["objects"] = self._check_objects(conn, problems)
            finally:
                conn.close()
        return {**report, "problems": problems, "ok": not problems}

    @staticmethod
    def _check_objects(conn: sqlite3.Connection, problems: list[str]) -> int:
        """Every row is in a known file; each object's records are seq 0, 1... back to back."""
        sql = "SELECT COUNT(*) FROM records WHERE file_id NOT IN (SELECT file_id FROM files)"
        if stray := conn.execute(sql).fetchone()[0]:
            problems.append(f"{stray} lookup rows point at data files not in the files table")
        gaps = conn.execute(
            "SELECT object_id, seq, start FROM (SELECT object_id, seq, start,"
            " LAG(seq, 1, -1) OVER w AS prev_seq, LAG(start + length, 1, 0) OVER w AS prev_end"
            " FROM records WINDOW w AS (PARTITION BY object_id ORDER BY seq))"
            " WHERE seq != prev_seq + 1 OR start != prev_end LIMIT 100"
        ).fetchall()
        problems += [
            f"object {o.hex()}: record {seq} does not follow on at {at}" for o, seq, at in gaps
        ]
        return int(conn.execute("SELECT COUNT(*) FROM records WHERE seq = 0").fetchone()[0])

    # ---- closing ----

    def close(self) -> None:
        """Finish pending commits, then release every fd and connection. Idempotent."""
        with self._commit_cv:
            if self._closing:
                return
            self._closing = True
            self._commit_cv.notify_all()
        self._committer.join()
        with self._maintenance, self._append_lock:
            if self._failed is None:  # every record is indexed or garbage now
                try:
                    with self._writing() as db:
                        db.execute(_MARK, (self._active.size, self._active.file_id))
                except (sqlite3.Error, DataStoreError) as exc:
                    log.error("closing %s: could not store the index mark: %s", self.directory, exc)
            self._closed = True
            self._release_handles()

    def _release_handles(self) -> None:
        self._files.close()
        for conn in self._conns:
            conn.close()
        self._conns.clear()
        self._pool.clear()
