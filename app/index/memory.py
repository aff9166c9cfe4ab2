"""An exact inner-product index in numpy memory: `rr eval`'s index, and the fast tests'.

Same contract as the served `ExpertIndex` (app/index/base.py), no persistence: its lexical
leg is the same SQLite FTS5 index (`app.index.lexical`), in an in-memory database.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.core.candidates import Candidates, DocumentTable
from app.core.documents import Document, Hit
from app.core.filters import MetadataFilter
from app.core.ranking import top_k
from app.index import lexical
from app.index.base import HitsFromCandidates


class MemoryIndex(HitsFromCandidates):
    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim
        self._documents: dict[str, Document] = {}  # insertion order = matrix row order
        self._matrix = np.zeros((0, dim), dtype=np.float32)
        self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute(
            "CREATE TABLE docs (rowid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL "
            "UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL)"
        )
        lexical.attach(self._db)
        self._tables: _Tables | None = None  # of the documents as they are now

    @classmethod
    def of_vectors(
        cls,
        name: str,
        ids: Sequence[str],
        matrix: np.ndarray,
        documents: Sequence[Document] | None = None,
    ) -> MemoryIndex:
        """An index over precomputed embeddings (of `documents`, or of documents known only
        by id: then the lexical leg finds nothing)."""
        index = cls(name, matrix.shape[1])
        index.upsert(documents or [Document(doc_id, "") for doc_id in ids], matrix)
        return index

    def __len__(self) -> int:
        return len(self._documents)

    def upsert(self, documents: Sequence[Document], embeddings: np.ndarray) -> tuple[int, int]:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(documents), self.dim):
            raise ValueError("one embedding row per document")
        latest = {doc.id: i for i, doc in enumerate(documents)}
        updated = sum(doc_id in self._documents for doc_id in latest)
        rows = {doc_id: row for row, doc_id in enumerate(self._documents)}
        keep = [row for doc_id, row in rows.items() if doc_id not in latest]
        kept_ids = [doc_id for doc_id in rows if doc_id not in latest]
        self._documents = {doc_id: self._documents[doc_id] for doc_id in kept_ids}
        self._documents.update({doc_id: documents[i] for doc_id, i in latest.items()})
        self._matrix = np.concatenate([self._matrix[keep], embeddings[list(latest.values())]])
        self._tables = None
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM docs WHERE id=?", [(d,) for d in latest])
            self._db.executemany(
                "INSERT INTO docs (id, title, text) VALUES (?,?,?)",
                [(d, documents[i].title, documents[i].text) for d, i in latest.items()],
            )
        return len(latest) - updated, updated

    def delete(self, doc_id: str) -> bool:
        if doc_id not in self._documents:
            return False
        row = list(self._documents).index(doc_id)
        del self._documents[doc_id]
        self._matrix = np.delete(self._matrix, row, axis=0)
        self._tables = None
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM docs WHERE id=?", (doc_id,))
        return True

    def search_candidates(
        self,
        queries: np.ndarray,
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
    ) -> list[Candidates]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        tables = self._current_tables()
        table = tables.with_text if with_text else tables.ids_only
        allowed = self._allowed(where)
        if not self._documents or (allowed is not None and not len(allowed)):
            return [Candidates.none(table) for _ in range(len(queries))]
        if allowed is None:
            rows, scores = top_k(queries, self._matrix, k)
        else:
            rows, scores = top_k(queries, self._matrix[allowed], k)
            rows = allowed[rows]
        rows, widened = rows.astype(np.int64), scores.astype(np.float64)
        return [Candidates(r, s, table) for r, s in zip(rows, widened, strict=True)]

    def lexical_candidates(
        self,
        queries: Sequence[str],
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
    ) -> list[Candidates]:
        tables = self._current_tables()
        table = tables.with_text if with_text else tables.ids_only
        rowids = None
        if (allowed := self._allowed(where)) is not None:
            keys = list(self._documents)
            ids = json.dumps([keys[row] for row in allowed.tolist()])
            found = "SELECT rowid FROM docs WHERE id IN (SELECT value FROM json_each(?))"
            rowids = [row[0] for row in self._db.execute(found, (ids,))]
        return [
            Candidates(
                np.array([tables.position[doc_id] for doc_id, _ in hits], dtype=np.int64),
                np.array([score for _, score in hits], dtype=np.float64),
                table,
            )
            for hits in lexical.search(self._db, queries, k, columns="d.id", allowed=rowids)
        ]

    def _allowed(self, where: MetadataFilter | None) -> np.ndarray | None:
        """Matrix rows of the documents `where` allows (None: no filter)."""
        if where is None:
            return None
        return np.array(
            [
                row
                for row, doc in enumerate(self._documents.values())
                if where.matches(doc.metadata)
            ],
            dtype=np.int64,
        )

    def _current_tables(self) -> _Tables:
        if self._tables is None:
            docs = list(self._documents.values())
            ids = list(self._documents)
            space = object()  # these rows, until the next write

            def with_text(row: int, score: float) -> Hit:
                return self._hit(docs[row], score, True)

            self._tables = _Tables(
                {doc_id: row for row, doc_id in enumerate(ids)},
                DocumentTable(self.name, ids, space),
                DocumentTable(self.name, ids, space, with_text),
            )
        return self._tables

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, Hit]:
        return {
            d: self._hit(self._documents[d], 0.0, True) for d in doc_ids if d in self._documents
        }

    def _hit(self, doc: Document, score: float, with_text: bool) -> Hit:
        if not with_text:
            return Hit(id=doc.id, score=score, index=self.name)
        return Hit(doc.id, score, self.name, doc.title, doc.text, dict(doc.metadata))

    def get(self, doc_id: str) -> Document | None:
        return self._documents.get(doc_id)


@dataclass(frozen=True)
class _Tables:
    """The documents as rows (matrix order): one numbering for both legs."""

    position: dict[str, int]  # document id -> row
    ids_only: DocumentTable
    with_text: DocumentTable
