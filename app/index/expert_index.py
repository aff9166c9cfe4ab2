"""One expert's searchable collection: SQLite is the durable truth, FAISS a derived copy.

Each write is one SQLite transaction (documents, their base-encoder embeddings and a
generation counter), then the same change applied to FAISS in memory: a write costs
O(batch) on disk. The FAISS file on disk is a snapshot, written in the background once
writes pause (built from a SQLite read snapshot, so searches and writes never wait for it).
Opening an index loads the snapshot and reconciles it with SQLite by row id: rows stored
since are added, rows deleted since are removed (rows are never changed in place; an upsert
is a new row). A missing or unreadable snapshot is rebuilt from SQLite. So a crash at any
point leaves the last committed state readable, never a mix.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from app.core.candidates import Candidates, DocumentTable
from app.core.documents import Document, Hit
from app.core.filters import MetadataFilter
from app.core.text import not_utf8, repaired
from app.errors import NotFound, StorageFull
from app.index import lexical, lexical_postings, metadata_columns
from app.index.base import HitsFromCandidates
from app.index.faiss_backend import (
    faiss_module,
    member_mask,
    new_index,
    search_among,
    search_copy,
)
from app.shortcuts import LEXICAL_POSTINGS, METADATA_COLUMNS, Shortcuts

log = logging.getLogger(__name__)
DB_FILE = "docs.sqlite"
INDEX_FILE = "index.faiss"
SNAPSHOT_META = "index.json"
# In-memory postings: rebuilt this long after the last write; none past this many documents
# (measured 0.5-1.9 KB per document on the bench's 10,000-document indexes: ~1 GB here).
POSTINGS_DEBOUNCE_S = 1.0
POSTINGS_MAX_DOCUMENTS = 500_000
# The FAISS snapshot: written this long after the last write (at least ten times the last
# snapshot's time, so a bulk load spends at most ~10% on snapshots).
SNAPSHOT_DEBOUNCE_S = 5.0
# Rows read from SQLite per FAISS add when an index is built (~75 MB of vectors).
BUILD_CHUNK = 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ExpertIndex(HitsFromCandidates):
    """Thread-safe. `_write_lock` orders writers (the SQLite write connection); `_lock`
    guards the FAISS index, held only while it is searched or changed in memory. Reads of
    rows go through per-thread WAL read connections, so no read waits for a commit."""

    def __init__(
        self,
        name: str,
        path: Path,
        dim: int,
        kind: str = "flat",
        hnsw_m: int = 32,
        shortcuts: Shortcuts | None = None,
    ):
        self.name = name
        self.path = path
        self.dim = dim
        self.kind = kind
        self.hnsw_m = hnsw_m
        self._lock = threading.RLock()
        self._write_lock = threading.RLock()
        self._closed = False
        # Lexical searches read through one connection per thread (see lexical_search).
        self._local = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        self._active_readers = 0
        self._readers_idle = threading.Condition()
        path.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path / DB_FILE, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        lexical.attach(self._db)  # BM25 over the same rows, in the same transactions
        # Rowids are unique within one store only: a snapshot names the store it came from.
        self._db.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store', ?)", (uuid.uuid4().hex,)
        )
        self._store_id = self._db.execute("SELECT value FROM meta WHERE key='store'").fetchone()[0]
        for leftover in (f".{INDEX_FILE}.tmp", f".{SNAPSHOT_META}.tmp"):
            (path / leftover).unlink(missing_ok=True)  # a snapshot killed mid-write
        self._snapshot_due = _Debounced(self._snapshot_in_background)
        self._snapshot_s = 0.0  # how long the last snapshot took
        self._snapshotting = threading.Lock()  # one snapshot at a time
        self._snapshot_generation = -1  # the generation the snapshot on disk reflects
        self._index = self._open_faiss()
        self._searchable = search_copy(self._index)
        # Documents in SQLite, kept with every write: readiness probes never run SQL.
        self._rows = int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])
        self._writing = False  # between a commit and FAISS holding it (readable() knows)
        self._write_epoch = 0
        # BM25 from in-memory postings (app/index/lexical_postings.py): valid while no write
        # has committed since they were read; rebuilt in the background once writes pause.
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self._writes = 0  # writes committed by this process (after each COMMIT)
        self._postings: lexical_postings.Postings | None = None
        # Metadata filters from in-memory columns, built with the postings (same rule).
        self._columns: metadata_columns.MetadataColumns | None = None
        self._postings_due = _Debounced(self._build_postings)
        self._postings_build_s = 0.0  # how long the last build took
        self._building = threading.Lock()  # one build at a time
        self._schedule_postings(delay=0.0)

    # -- state ---------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Committed writes so far (the store's counter, read like any other read)."""
        with self._reading() as db:
            return _generation(db)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def readable(self) -> bool:
        """Open, and FAISS holds every stored document (live counters: no SQL, no lock)."""
        if self._closed:
            return False
        started = self._write_epoch
        if self._writing:
            return True  # mid-write the two counters differ for a moment: not a fault
        if self._rows == int(self._index.ntotal):
            return True
        return self._writing or self._write_epoch != started  # a write began meanwhile

    def _open_faiss(self) -> Any:
        """The snapshot on disk reconciled with SQLite, or (none usable) built from it."""
        snapshot = self._read_snapshot()
        index = None
        if snapshot is not None:
            try:
                index = self._reconcile(snapshot)
            except Exception as exc:  # a snapshot FAISS reads but cannot use: rebuild
                log.warning("index %r: snapshot unusable (%s), rebuilding it", self.name, exc)
        if index is None:
            index = self._build_from_store(self._db)
            self._snapshot_generation = -1
        if self._snapshot_generation != _generation(self._db):
            self._schedule_snapshot(delay=0.0)
        return index

    def _read_snapshot(self) -> Any | None:
        meta_path, file = self.path / SNAPSHOT_META, self.path / INDEX_FILE
        if not (meta_path.exists() and file.exists()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("kind") != self.kind or meta.get("store") != self._store_id:
                return None  # another kind, or another store's (a restored backup's) rows
            index = faiss_module().read_index(str(file))
        except (ValueError, RuntimeError, OSError):
            log.warning("index %r: unreadable FAISS snapshot, rebuilding it", self.name)
            return None
        if index.d != self.dim:
            return None
        self._snapshot_generation = int(meta.get("generation", -1))
        return index

    def _reconcile(self, index: Any) -> Any:
        """Rows stored after the snapshot are added, rows deleted after it removed."""
        faiss = faiss_module()
        snapshot_ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        stored = np.fromiter(
            (r[0] for r in self._db.execute("SELECT rowid FROM docs")), dtype=np.int64
        )
        gone = np.setdiff1d(snapshot_ids, stored, assume_unique=True)
        new = np.setdiff1d(stored, snapshot_ids, assume_unique=True)
        if len(gone) and self.kind == "hnsw":
            return self._build_from_store(self._db)  # HNSW cannot delete vectors
        if len(gone):
            index.remove_ids(gone)
        if len(new):
            wanted = set(new.tolist())
            rows = [
                row
                for row in self._db.execute(
                    "SELECT rowid, embedding FROM docs WHERE rowid >= ?", (int(new.min()),)
                )
                if row[0] in wanted
            ]
            self._add_rows(index, rows)
        if len(gone) or len(new):
            log.info(
                "index %r: snapshot reconciled (%d added, %d removed)",
                self.name,
                len(new),
                len(gone),
            )
            self._snapshot_generation = -1  # out of date: write a new one
        return index

    def _build_from_store(self, db: sqlite3.Connection) -> Any:
        index = new_index(self.dim, self.kind, self.hnsw_m)
        cursor = db.execute("SELECT rowid, embedding FROM docs")
        while rows := cursor.fetchmany(BUILD_CHUNK):  # memory: the index and one chunk
            self._add_rows(index, rows)
        return index

    def _add_rows(self, index: Any, rows: list[tuple[int, bytes]]) -> None:
        if rows:
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            index.add_with_ids(vectors.reshape(len(rows), self.dim), ids)

    # -- snapshot ------------------------------------------------------------------------

    def _schedule_snapshot(self, delay: float | None = None) -> None:
        if delay is None:
            delay = max(SNAPSHOT_DEBOUNCE_S, 10 * self._snapshot_s)
        self._snapshot_due.schedule(delay)

    def _snapshot_in_background(self) -> None:
        try:
            self.snapshot(wait=False)
        except Exception as exc:  # the store stays the truth; the next write retries
            if not self._closed:
                log.warning("index %r: FAISS snapshot failed: %s", self.name, exc)

    def snapshot(self, wait: bool = True) -> bool:
        """Write the FAISS snapshot if it is behind the store; True if one was written.
        Without `wait`, a snapshot already running means: try again later.

        Flat: built from a SQLite read snapshot, off every lock. HNSW (a graph too costly
        to rebuild): a copy of the live index, taken under the FAISS lock.
        """
        if self._closed:
            return False
        if not self._snapshotting.acquire(blocking=wait):
            self._schedule_snapshot()  # one is running: snapshot again after it
            return False
        try:
            if self._closed:
                return False
            started = time.perf_counter()
            if self.kind == "hnsw":
                with self._write_lock, self._lock:  # no write between the two reads
                    generation = _generation(self._db)
                    if generation == self._snapshot_generation:
                        return False
                    index = faiss_module().clone_index(self._index)
            else:
                with self._reading(own=True) as db:
                    db.execute("BEGIN")  # one snapshot: the rows and their generation
                    try:
                        generation = _generation(db)
                        if generation == self._snapshot_generation:
                            return False
                        index = self._build_from_store(db)
                    finally:
                        db.execute("COMMIT")
            self._write_snapshot(index, generation)
            self._snapshot_generation = generation
            self._snapshot_s = time.perf_counter() - started
            return True
        finally:
            self._snapshotting.release()

    def _write_snapshot(self, index: Any, generation: int) -> None:
        temp = self.path / f".{INDEX_FILE}.tmp"
        try:
            faiss_module().write_index(index, str(temp))
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)  # a full disk keeps no half-written file
            raise
        os.replace(temp, self.path / INDEX_FILE)
        meta_temp = self.path / f".{SNAPSHOT_META}.tmp"
        meta = {"generation": generation, "kind": self.kind, "store": self._store_id}
        try:
            meta_temp.write_text(json.dumps(meta))
        except BaseException:
            meta_temp.unlink(missing_ok=True)
            raise
        os.replace(meta_temp, self.path / SNAPSHOT_META)

    def _check_open(self) -> None:
        if self._closed:
            raise NotFound(f"index {self.name!r} not found")

    # -- writes --------------------------------------------------------------------------

    def upsert(self, documents: Sequence[Document], embeddings: np.ndarray) -> tuple[int, int]:
        """Insert or replace documents by id. Returns (inserted, updated)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(documents), self.dim):
            raise ValueError("one embedding row per document")
        latest = {doc.id: i for i, doc in enumerate(documents)}  # last one wins
        with self._write_lock, _storage_full_is_507(self.name):
            self._check_open()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                old_rows, new_rows = [], []
                for doc_id, i in latest.items():
                    doc = documents[i]
                    previous = db.execute("SELECT rowid FROM docs WHERE id=?", (doc_id,)).fetchone()
                    if previous:
                        old_rows.append(previous[0])
                        db.execute("DELETE FROM docs WHERE rowid=?", (previous[0],))
                    cursor = db.execute(
                        "INSERT INTO docs (id, title, text, metadata, embedding) "
                        "VALUES (?,?,?,?,?)",
                        (
                            doc.id,
                            doc.title,
                            doc.text,
                            json.dumps(doc.metadata),
                            embeddings[i].tobytes(),
                        ),
                    )
                    new_rows.append((cursor.lastrowid, i))
                self._bump_generation()
                db.execute("COMMIT")
            except BaseException:
                _roll_back(db)
                raise
            self._committed()
            with self._lock, self._applying():
                self._rows += len(latest) - len(old_rows)
                self._apply(
                    remove=old_rows,
                    add_ids=np.array([r for r, _ in new_rows], dtype=np.int64),
                    add_vectors=embeddings[[i for _, i in new_rows]],
                )
        return len(latest) - len(old_rows), len(old_rows)

    def delete(self, doc_id: str) -> bool:
        with self._write_lock, _storage_full_is_507(self.name):
            self._check_open()
            row = self._db.execute("SELECT rowid FROM docs WHERE id=?", (doc_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM docs WHERE rowid=?", (row[0],))
                self._bump_generation()
                self._db.execute("COMMIT")
            except BaseException:
                _roll_back(self._db)
                raise
            self._committed()
            with self._lock, self._applying():
                self._rows -= 1
                self._apply(remove=[row[0]], add_ids=None, add_vectors=None)
            return True

    @contextmanager
    def _applying(self) -> Iterator[None]:
        """Marks the moment the row count and FAISS disagree because a write is landing."""
        self._write_epoch += 1
        self._writing = True
        try:
            yield
        finally:
            self._writing = False

    def _committed(self) -> None:
        """After every COMMIT: the postings in memory and the FAISS snapshot on disk no
        longer reflect the store."""
        self._writes += 1
        try:
            self._schedule_postings()
            self._schedule_snapshot()
        except Exception as exc:  # the write is stored; a later one schedules them again
            log.warning("index %r: background work not scheduled: %s", self.name, exc)

    def _schedule_postings(self, delay: float | None = None) -> None:
        """Rebuild the postings and metadata columns once writes have paused for a while: at
        least a second, and ten times the last build's time, so a bulk load spends at most
        ~10% on rebuilds; FTS5 and each row's JSON answer meanwhile."""
        if not self.shortcuts.enabled(LEXICAL_POSTINGS):
            self._postings = None  # never used again: free it
        if not self.shortcuts.enabled(METADATA_COLUMNS):
            self._columns = None
        if not self._shadows_wanted():
            return
        if delay is None:
            delay = max(POSTINGS_DEBOUNCE_S, 10 * self._postings_build_s)
        self._postings_due.schedule(delay)

    def _shadows_wanted(self) -> bool:
        return self.shortcuts.enabled(LEXICAL_POSTINGS) or self.shortcuts.enabled(METADATA_COLUMNS)

    def _build_postings(self) -> None:
        if self._closed:
            return
        if not self._building.acquire(blocking=False):
            self._schedule_postings()  # one is running: build again after it
            return
        try:
            self._build_postings_now()
        finally:
            self._building.release()

    def _build_postings_now(self) -> None:
        writes = self._writes  # read before the snapshot: a later write makes it stale
        started = time.perf_counter()
        if self.shortcuts.enabled(METADATA_COLUMNS):  # ~13 bytes per document and field
            self._build_columns(writes)
        if not self.shortcuts.enabled(LEXICAL_POSTINGS) or self._rows > POSTINGS_MAX_DOCUMENTS:
            self._postings = None  # never current again: free it
            self._postings_build_s = time.perf_counter() - started
            return
        try:
            with self._reading(own=True) as db:
                db.execute("BEGIN")  # one snapshot for the postings and their self-check
                try:
                    postings = lexical_postings.build(db, writes)
                    probes = [
                        f"{row[0]} {row[1]}"[:200]
                        for row in db.execute(
                            "SELECT title, text FROM docs ORDER BY rowid DESC LIMIT 3"
                        )
                    ]
                    differs = lexical_postings.matches_fts5(postings, db, probes)
                finally:
                    db.execute("COMMIT")
        except Exception as exc:  # FTS5 keeps answering; the next write retries
            if not self._closed:  # (a closed index simply stops)
                self.shortcuts.failed(LEXICAL_POSTINGS, exc, switch_off=False)
            return
        self._postings_build_s = time.perf_counter() - started
        if differs is not None:
            self.shortcuts.switch_off(LEXICAL_POSTINGS, f"index {self.name!r}: {differs}")
            self._postings = None
            return
        self._postings = postings

    def _build_columns(self, writes: int) -> None:
        try:
            with self._reading(own=True) as db:
                db.execute("BEGIN")
                try:
                    columns = metadata_columns.build(db, writes)
                finally:
                    db.execute("COMMIT")
        except ValueError as exc:  # the self-check: these columns would answer wrongly
            self.shortcuts.switch_off(METADATA_COLUMNS, f"index {self.name!r}: {exc}")
            self._columns = None
            return
        except Exception as exc:  # the exact path keeps answering; the next write retries
            if not self._closed:
                self.shortcuts.failed(METADATA_COLUMNS, exc, switch_off=False)
            return
        self._columns = columns

    def _bump_generation(self) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('generation', ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(_generation(self._db) + 1),),
        )

    def _apply(self, remove: list[int], add_ids: np.ndarray | None, add_vectors: Any) -> None:
        """The committed change, in memory: adds cost O(batch); a removal scans the ids
        (~0.1 s at a million flat vectors), except on HNSW, which cannot delete vectors and
        is rebuilt from the store."""
        if remove and self.kind == "hnsw":
            self._index = self._build_from_store(self._db)
        else:
            if remove:
                self._index.remove_ids(np.array(remove, dtype=np.int64))
            if add_ids is not None and len(add_ids):
                self._index.add_with_ids(add_vectors, add_ids)
        self._searchable = search_copy(self._index)

    # -- reads ---------------------------------------------------------------------------

    def search_candidates(
        self,
        queries: np.ndarray,
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
        retry: bool = True,
    ) -> list[Candidates]:
        """`search` as rows and scores; hits are built when read."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        allowed = None if where is None else self._allowed(where)
        with self._lock:
            self._check_open()
            if self._index.ntotal == 0 or (allowed is not None and not len(allowed)):
                return [Candidates.none(DocumentTable(self.name, ())) for _ in queries]
            if allowed is None:
                scores, ids = self._searchable.search(queries, min(k, int(self._index.ntotal)))
            else:  # only the allowed vectors, before the top k: k hits when k match
                scores, ids = search_among(self._index, queries, k, allowed)
            # Read with the FAISS answer: postings current now know every row FAISS holds.
            postings = None if with_text else self._current_postings()
        widened = scores.astype(np.float64)  # float32 cosines, exactly
        found = ids >= 0
        if postings is not None and (positions := self._postings_rows(postings, ids)) is not None:
            table = DocumentTable(self.name, postings.ids, space=postings)
            return [
                Candidates(row[ok], score[ok], table)
                for row, score, ok in zip(positions, widened, found, strict=True)
            ]
        wanted = set(ids[found].tolist())
        with self._reading() as db:
            records = self._fetch(db, wanted, with_text)
        if retry and len(records) < len(wanted):
            # A write committed between the FAISS search and this read (a re-upserted
            # document has a new row): once it has landed in FAISS too, search again.
            with self._write_lock:
                pass
            return self.search_candidates(queries, k, with_text, where, retry=False)
        table = self._table_of(list(records.values()), with_text)
        rows, kept = _positions(np.fromiter(records, dtype=np.int64, count=len(records)), ids)
        return [
            Candidates(row[ok], score[ok], table)
            for row, score, ok in zip(rows, widened, kept, strict=True)
        ]

    def _table_of(self, records: list[tuple], with_text: bool) -> DocumentTable:
        """Stored rows (rowid, id[, title, text, metadata]) as a table: row r is records[r],
        its hit made when read."""
        ids = [record[1] for record in records]
        if not with_text:
            return DocumentTable(self.name, ids)
        return DocumentTable(
            self.name, ids, make_hit=lambda row, score: self._hit(records[row], score, True)
        )

    @staticmethod
    def _postings_rows(postings: lexical_postings.Postings, ids: np.ndarray) -> np.ndarray | None:
        """FAISS's row ids as positions in the postings' id table, without SQL (hybrid's
        dense leg asks 100 per query); None when a row is missing there (a delete landing
        now): SQL answers instead, exactly as without the shortcut."""
        flat = ids.ravel()
        found = flat >= 0
        if not len(postings.rowids):
            return None
        positions = np.minimum(np.searchsorted(postings.rowids, flat), len(postings.rowids) - 1)
        if not np.array_equal(postings.rowids[positions[found]], flat[found]):
            return None
        return positions.reshape(ids.shape)

    def _current_postings(self) -> lexical_postings.Postings | None:
        postings = self._postings
        if (
            postings is None
            or postings.generation != self._writes
            or not self.shortcuts.enabled(LEXICAL_POSTINGS)
        ):
            return None
        return postings

    def lexical_candidates(
        self,
        queries: Sequence[str],
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
    ) -> list[Candidates]:
        """BM25 from the in-memory postings where current, else FTS5; on this thread's own
        read connection: WAL readers see the last committed state and never wait for the
        writer or for other searches (SQLite runs FTS5 without the GIL), so lexical searches
        run in parallel with everything else."""
        columns = "d.rowid, d.id, d.title, d.text, d.metadata" if with_text else "d.rowid, d.id"
        allowed = None if where is None else self._allowed(where)
        fast = self._from_postings(queries, k, allowed)
        with self._reading() as db:
            if with_text:  # the postings ranked them: their text from the store
                fast = self._with_rows(db, fast)
            rest = [q for q, found in zip(queries, fast, strict=True) if found is None]
            exact = lexical.search(db, rest, k, columns, allowed) if rest else []
        records = [row[:-1] for rows in exact for row in rows]
        table = self._table_of(records, with_text)
        answered = iter(exact)
        start = 0
        out = []
        for found in fast:
            if found is None:
                rows = next(answered)
                found = Candidates(
                    np.arange(start, start + len(rows), dtype=np.int64),
                    np.array([row[-1] for row in rows], dtype=np.float64),
                    table,
                )
                start += len(rows)
            out.append(found)
        return out

    def _with_rows(
        self, db: sqlite3.Connection, ranked: list[Candidates | None]
    ) -> list[Candidates | None]:
        """Postings-ranked candidates as rows of the store (their text read); None for a
        query whose rows a write replaced meanwhile (FTS5 answers it instead)."""
        postings = next((c.source.space for c in ranked if c is not None), None)
        if not isinstance(postings, lexical_postings.Postings):
            return ranked
        wanted = sorted({int(postings.rowids[row]) for c in ranked if c for row in c.rows})
        stored: dict[int, tuple] = {}
        for start in range(0, len(wanted), 500):  # SQLite's bound-parameter limit
            part = wanted[start : start + 500]
            marks = ",".join("?" * len(part))
            for row in db.execute(
                f"SELECT rowid, id, title, text, metadata FROM docs WHERE rowid IN ({marks})",
                part,
            ):
                stored[row[0]] = row
        table = self._table_of(list(stored.values()), with_text=True)
        position = {rowid: at for at, rowid in enumerate(stored)}
        out: list[Candidates | None] = []
        for found in ranked:
            rowids = [] if found is None else postings.rowids[found.rows].tolist()
            if found is None or any(rowid not in position for rowid in rowids):
                out.append(None)
                continue
            rows = np.array([position[rowid] for rowid in rowids], dtype=np.int64)
            out.append(Candidates(rows, found.scores, table))
        return out

    def _from_postings(
        self, queries: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> list[Candidates | None]:
        """Each query's candidates from the in-memory postings (of the `allowed` rowids
        only, when given), or None where FTS5 must answer (no current postings, a term that
        is not one token, an error)."""
        postings = self._current_postings()
        if postings is None:
            return [None] * len(queries)
        table = DocumentTable(self.name, postings.ids, space=postings)
        try:
            among = None if allowed is None else member_mask(postings.rowids, allowed)
            ranked = [postings.rank(query, k, among) for query in queries]
        except Exception as exc:  # the exact path answers; this shortcut is off from now on
            self.shortcuts.failed(LEXICAL_POSTINGS, exc)
            return [None] * len(queries)
        return [None if found is None else Candidates(*found, table) for found in ranked]

    def _allowed(self, where: MetadataFilter) -> np.ndarray:
        """Rowids (ascending) of the stored documents `where` allows: from the metadata
        columns where current, else each row's JSON read and matched (the exact path)."""
        columns = self._columns
        if (
            columns is not None
            and columns.generation == self._writes
            and self.shortcuts.enabled(METADATA_COLUMNS)
        ):
            try:
                mask = columns.mask(where)
            except Exception as exc:  # the exact path answers; this shortcut is off from now
                self.shortcuts.failed(METADATA_COLUMNS, exc)
                mask = None
            if mask is not None:
                return columns.rowids[mask]
        with self._reading() as db:
            rows = db.execute("SELECT rowid, metadata FROM docs ORDER BY rowid").fetchall()
        return np.array(
            [rowid for rowid, text in rows if where.matches(json.loads(text))], dtype=np.int64
        )

    @contextmanager
    def _reading(self, own: bool = False) -> Iterator[sqlite3.Connection]:
        """A read-only connection: this thread's (kept), or with `own` a fresh one closed
        after use (for short-lived threads such as the postings builder's)."""
        with self._readers_idle:
            self._check_open()
            self._active_readers += 1
        try:
            if own:
                fresh = sqlite3.connect(f"file:{self.path / DB_FILE}?mode=ro", uri=True)
                try:
                    yield fresh
                finally:
                    fresh.close()
                return
            db = getattr(self._local, "db", None)
            if db is None:
                db = sqlite3.connect(
                    f"file:{self.path / DB_FILE}?mode=ro", uri=True, check_same_thread=False
                )
                self._local.db = db
                with self._readers_idle:
                    self._reader_connections.append(db)
            yield db
        finally:
            with self._readers_idle:
                self._active_readers -= 1
                self._readers_idle.notify_all()

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, Hit]:
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        with self._reading() as db:
            rows = db.execute(
                f"SELECT rowid, id, title, text, metadata FROM docs WHERE id IN ({marks})",
                list(doc_ids),
            ).fetchall()
        return {row[1]: self._hit(row, 0.0, True) for row in rows}

    @staticmethod
    def _fetch(db: sqlite3.Connection, rowids: set[int], with_text: bool) -> dict[int, tuple]:
        if not rowids:
            return {}
        columns = "rowid, id, title, text, metadata" if with_text else "rowid, id"
        marks = ",".join("?" * len(rowids))
        rows = db.execute(f"SELECT {columns} FROM docs WHERE rowid IN ({marks})", list(rowids))
        return {row[0]: row for row in rows}

    def _hit(self, row: tuple, score: float, with_text: bool) -> Hit:
        if not with_text:
            return Hit(id=row[1], score=score, index=self.name)
        fields = (row[2], row[3], json.loads(row[4]))
        if not_utf8(fields) is not None:
            # Stored before the API refused such text: answer with it repaired, never fail.
            log.warning("index %r: document %r holds text that is not UTF-8", self.name, row[1])
            fields = tuple(repaired(list(fields)))
        return Hit(row[1], score, self.name, *fields)

    def get(self, doc_id: str) -> Document | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT id, text, title, metadata FROM docs WHERE id=?", (doc_id,)
            ).fetchone()
        return None if row is None else Document(row[0], row[1], row[2], json.loads(row[3]))

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stops background work (a snapshot not yet written is reconciled at the next
        open) and closes the store once running reads end."""
        self._postings_due.cancel()
        self._snapshot_due.cancel()
        with self._write_lock, self._lock:
            was_open, self._closed = not self._closed, True
        with self._snapshotting:  # a snapshot being written finishes first
            if was_open:
                self._db.close()
        with self._readers_idle:  # let running lexical searches finish, then close theirs
            self._readers_idle.wait_for(lambda: self._active_readers == 0, timeout=30)
            for db in self._reader_connections:
                db.close()
            self._reader_connections.clear()


class _Debounced:
    """Runs `action` on a timer thread once `schedule` calls pause for the delay given (each
    call restarts the wait); `cancel` drops a pending run."""

    def __init__(self, action: Any) -> None:
        self._action = action
        self._timer: threading.Timer | None = None
        self._guard = threading.Lock()

    def schedule(self, delay: float) -> None:
        with self._guard:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(delay, self._action)
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        with self._guard:
            if self._timer is not None:
                self._timer.cancel()


def _positions(stored: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `ids` is in `stored` (row ids, any order), and whether it is there
    (FAISS's -1, or a row deleted since the search, is not)."""
    if not len(stored):
        return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
    order = np.argsort(stored)
    at = order[np.minimum(np.searchsorted(stored, ids, sorter=order), len(stored) - 1)]
    return at, stored[at] == ids


def _roll_back(db: sqlite3.Connection) -> None:
    if db.in_transaction:  # SQLite may have rolled back itself (e.g. on a full disk)
        db.execute("ROLLBACK")


def _generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
    return int(row[0]) if row else 0


@contextmanager
def _storage_full_is_507(name: str) -> Iterator[None]:
    """SQLite's 'database or disk is full' (the write rolled back: nothing changed) as a
    domain error the API answers with 507; writes resume once space is freed."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StorageFull(f"index {name!r}: no space left for this write") from exc
        raise
