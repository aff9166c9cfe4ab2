"""One query's candidates, every leg and index, numbered once; its legs ranked on arrays.

A `Pool` holds the `Candidates` one query's searches found (each encoder's dense lists,
then the lexical lists) as one flat numbering of entries; a `Leg` is one ranked list of
entries. Documents get integer keys, so the two legs fuse with numpy: while each index's
candidates come from one table (one postings generation), a key is the table's row; else
keys come from (index, document id), as before arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate

import numpy as np

from app.core.candidates import Candidates, DocKey
from app.core.documents import Hit

RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al., 2009)
_ROW_BITS = 40  # a table's rows below 2**40: room for 2**23 tables in an int64 key


class Pool:
    """`parts` numbered as one run of entries (part after part); `experts`: the plan."""

    def __init__(self, parts: Sequence[Candidates], experts: Sequence[str] = ("",)) -> None:
        self.parts = list(parts)
        self.experts = list(experts)  # the encoders a leg's `experts` numbers name
        self.starts = list(accumulate((len(part) for part in self.parts), initial=0))
        if len(self.parts) == 1:  # most legs: one index (no copies)
            self.rows, self.scores = self.parts[0].rows, self.parts[0].scores
        elif self.parts:
            self.rows = np.concatenate([part.rows for part in self.parts])
            self.scores = np.concatenate([part.scores for part in self.parts])
        else:
            self.rows = np.zeros(0, dtype=np.int64)
            self.scores = np.zeros(0, dtype=np.float64)  # each entry's own (its Hit's) score

    def entries(self, first_part: int, end_part: int) -> np.ndarray:
        return np.arange(self.starts[first_part], self.starts[end_part], dtype=np.int64)

    def leg(self, entries: np.ndarray, depth: int, expert: int = 0) -> Leg:
        """`entries` ranked by their own scores (stable: ties keep their order), top depth."""
        order = np.argsort(-self.scores[entries], kind="stable")[:depth]
        ranked = entries[order]
        return Leg(self, ranked, self.scores[ranked], np.full(len(ranked), expert))

    @cached_property
    def keys(self) -> np.ndarray:
        """One int64 key per document (per entry)."""
        if not self.parts:
            return np.zeros(0, dtype=np.int64)
        if _one_table_per_index(self.parts):
            tables: dict[int, int] = {}
            keyed = [
                part.rows + (tables.setdefault(id(part.source.space), len(tables)) << _ROW_BITS)
                for part in self.parts
            ]
        else:
            names: dict[DocKey, int] = {}
            keyed = []
            for part in self.parts:
                found = part.source.doc_keys(part.rows.tolist())
                keyed.append(
                    np.array([names.setdefault(key, len(names)) for key in found], dtype=np.int64)
                )
        return np.concatenate(keyed)

    def hits(self, entries: np.ndarray) -> list[Hit]:
        sources = [part.source for part in self.parts]
        if len(sources) == 1:
            parts = [0] * len(entries)
        else:
            parts = (np.searchsorted(self.starts, entries, side="right") - 1).tolist()
        return [
            sources[part].hit(row, score)
            for part, row, score in zip(
                parts, self.rows[entries].tolist(), self.scores[entries].tolist(), strict=True
            )
        ]


def _one_table_per_index(parts: Sequence[Candidates]) -> bool:
    spaces: dict[str, object] = {}
    for part in parts:
        space = part.source.space
        if space is None or spaces.setdefault(part.source.index, space) is not space:
            return False
    return True


@dataclass(frozen=True)
class Leg:
    """A ranked list, best first: `entries` of `pool`, `scores` what it ranks by (cosine,
    BM25, or several encoders' RRF), `experts` the encoder (plan position) behind each."""

    pool: Pool
    entries: np.ndarray
    scores: np.ndarray
    experts: np.ndarray

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def keys(self) -> np.ndarray:
        return self.pool.keys[self.entries]

    def expert(self, at: int) -> str:
        return self.pool.experts[int(self.experts[at])]


def reciprocal_rank(pool: Pool, lists: Sequence[np.ndarray], depth: int) -> Leg:
    """Several encoders' lists (entries, in plan order) fused by reciprocal rank: each
    document once, as its first list found it, ranked by its summed 1 / (RRF_K + rank);
    ties keep first-seen order."""
    sorted_lists = [pool.leg(entries, len(entries), expert) for expert, entries in enumerate(lists)]
    entries = np.concatenate([leg.entries for leg in sorted_lists])
    experts = np.concatenate([leg.experts for leg in sorted_lists])
    ranks = np.concatenate([np.arange(len(leg)) for leg in sorted_lists])
    _, first, inverse = np.unique(pool.keys[entries], return_index=True, return_inverse=True)
    # bincount adds each document's terms in list order, as a running sum would.
    fused = np.bincount(inverse, weights=1.0 / (RRF_K + ranks + 1), minlength=len(first))
    seen = np.argsort(first, kind="stable")
    top = seen[np.argsort(-fused[seen], kind="stable")][:depth]
    return Leg(pool, entries[first[top]], fused[top], experts[first[top]])
