"""An exact inner-product index in numpy memory: `rr eval`'s index, and the fast tests'.

Same contract as the served `ExpertIndex` (app/index/base.py), no persistence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.core.documents import Document, Hit
from app.core.ranking import top_k


class MemoryIndex:
    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim
        self._documents: dict[str, Document] = {}  # insertion order = matrix row order
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    @classmethod
    def of_vectors(cls, name: str, ids: Sequence[str], matrix: np.ndarray) -> MemoryIndex:
        """An index over precomputed embeddings of documents known only by id."""
        index = cls(name, matrix.shape[1])
        index.upsert([Document(doc_id, "") for doc_id in ids], matrix)
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
        return len(latest) - updated, updated

    def delete(self, doc_id: str) -> bool:
        if doc_id not in self._documents:
            return False
        row = list(self._documents).index(doc_id)
        del self._documents[doc_id]
        self._matrix = np.delete(self._matrix, row, axis=0)
        return True

    def search(self, queries: np.ndarray, k: int, with_text: bool = True) -> list[list[Hit]]:
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if not self._documents:
            return [[] for _ in range(len(queries))]
        rows, scores = top_k(queries, self._matrix, k)
        docs = list(self._documents.values())
        return [
            [self._hit(docs[r], float(s), with_text) for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(rows, scores, strict=True)
        ]

    def _hit(self, doc: Document, score: float, with_text: bool) -> Hit:
        if not with_text:
            return Hit(id=doc.id, score=score, index=self.name)
        return Hit(doc.id, score, self.name, doc.title, doc.text, dict(doc.metadata))

    def get(self, doc_id: str) -> Document | None:
        return self._documents.get(doc_id)
