"""The search-index contract (vector and lexical search over one collection): what
serving, evaluation and the tests rely on.

Implementations: `ExpertIndex` (FAISS over a durable SQLite store, what the gateway serves)
and `MemoryIndex` (numpy, in memory: `rr eval` and fast tests). `tests/test_index_contract.py`
runs the same checks on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from app.core.candidates import Candidates
from app.core.documents import Document, Hit
from app.core.filters import MetadataFilter


class VectorIndex(Protocol):
    name: str
    dim: int

    def __len__(self) -> int: ...

    def upsert(self, documents: Sequence[Document], embeddings: np.ndarray) -> tuple[int, int]:
        """Insert or replace documents by id (the last of a repeated id wins); returns
        (inserted, updated)."""
        ...

    def delete(self, doc_id: str) -> bool: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        with_text: bool = True,
        where: MetadataFilter | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits per query row by inner product, best first; with `where`, the top k of
        the documents it allows (filtered before the top k, exactly)."""
        ...

    def lexical_search(
        self,
        queries: Sequence[str],
        k: int,
        with_text: bool = True,
        where: MetadataFilter | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits per query text by BM25 (`app.index.lexical`), best first; the same
        documents as the vector search: each is in both or in neither. `where` as in
        `search`."""
        ...

    def search_candidates(
        self,
        queries: np.ndarray,
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
    ) -> list[Candidates]:
        """`search` as rows and scores per query (hits built only when read): what ranking
        and fusion work on."""
        ...

    def lexical_candidates(
        self,
        queries: Sequence[str],
        k: int,
        with_text: bool = False,
        where: MetadataFilter | None = None,
    ) -> list[Candidates]:
        """`lexical_search` as rows and scores per query (`HitSource.space` says when both
        legs' rows name the same documents)."""
        ...

    def fetch(self, doc_ids: Sequence[str]) -> dict[str, Hit]:
        """Stored documents by id as score-less hits with text (unknown ids left out)."""
        ...

    def get(self, doc_id: str) -> Document | None: ...


class HitsFromCandidates:
    """`search` and `lexical_search` of the contract, built from the `*_candidates` calls
    every backend implements."""

    def search(
        self,
        queries: np.ndarray,
        k: int,
        with_text: bool = True,
        where: MetadataFilter | None = None,
    ) -> list[list[Hit]]:
        found = self.search_candidates(queries, k, with_text, where)  # type: ignore[attr-defined]
        return [candidates.hits() for candidates in found]

    def lexical_search(
        self,
        queries: Sequence[str],
        k: int,
        with_text: bool = True,
        where: MetadataFilter | None = None,
    ) -> list[list[Hit]]:
        found = self.lexical_candidates(queries, k, with_text, where)  # type: ignore[attr-defined]
        return [candidates.hits() for candidates in found]
