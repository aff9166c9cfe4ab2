"""One leg's candidates for one query from one index: row numbers and scores, as arrays.

Hybrid search ranks 100 candidates per leg and keeps 10: building a `Hit` for every
candidate cost more than the searches themselves (reports/hybrid.md). A search answers with
rows of a table and their scores; the table names the documents behind the rows, and only
the hits a caller reads (the fused top k) become objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np

from app.core.documents import Hit

DocKey = tuple[str, str]  # (index, document id)


class HitSource(Protocol):
    """The documents one search's rows name."""

    @property
    def index(self) -> str: ...

    @property
    def space(self) -> object | None:
        """Rows of two sources with the same (not None) space are the same documents; a
        space belongs to one index. None: compare documents by id."""
        ...

    def doc_keys(self, rows: Sequence[int]) -> list[DocKey]: ...

    def hit(self, row: int, score: float) -> Hit: ...


@dataclass(frozen=True, eq=False)
class DocumentTable:
    """Row r is document `ids[r]` of `index`; `make_hit` builds its hit (with text, say),
    else an id-only hit."""

    index: str
    ids: Sequence[str]
    space: object | None = None
    make_hit: Callable[[int, float], Hit] | None = None

    def doc_keys(self, rows: Sequence[int]) -> list[DocKey]:
        ids, index = self.ids, self.index
        return [(index, ids[row]) for row in rows]

    def hit(self, row: int, score: float) -> Hit:
        if self.make_hit is not None:
            return self.make_hit(row, score)
        return Hit(self.ids[row], score, self.index)


@dataclass(frozen=True, eq=False)
class HitList:
    """Hits already built (callers that hold `Hit`s): row r is `hits[r]`, with its own score."""

    hits: Sequence[Hit]
    index: str = ""
    space: object | None = None

    def doc_keys(self, rows: Sequence[int]) -> list[DocKey]:
        return [(self.hits[row].index, self.hits[row].id) for row in rows]

    def hit(self, row: int, score: float) -> Hit:
        return self.hits[row]


_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Candidates(Sequence[Hit]):
    """Rows of `source` with their scores, best first. Read as a sequence it gives `Hit`s,
    each built when read."""

    rows: np.ndarray  # int64
    scores: np.ndarray  # float64 (a float32 cosine widened exactly)
    source: HitSource

    @classmethod
    def of_hits(cls, hits: Sequence[Hit]) -> Candidates:
        scores = np.array([h.score for h in hits], dtype=np.float64)
        return cls(np.arange(len(hits), dtype=np.int64), scores, HitList(list(hits)))

    @classmethod
    def none(cls, source: HitSource) -> Candidates:
        return cls(_NO_ROWS, _NO_SCORES, source)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, at: int) -> Hit: ...

    @overload
    def __getitem__(self, at: slice) -> Candidates: ...

    def __getitem__(self, at: int | slice) -> Hit | Candidates:
        if isinstance(at, slice):
            return Candidates(self.rows[at], self.scores[at], self.source)
        return self.source.hit(int(self.rows[at]), float(self.scores[at]))

    def __iter__(self) -> Iterator[Hit]:
        hit = self.source.hit
        for row, score in zip(self.rows.tolist(), self.scores.tolist(), strict=True):
            yield hit(row, score)

    def hits(self) -> list[Hit]:
        hit = self.source.hit
        return [
            hit(row, score)
            for row, score in zip(self.rows.tolist(), self.scores.tolist(), strict=True)
        ]
