"""BM25 from FTS5's own postings, held in memory: the fast path of the lexical leg.

FTS5 answers an OR of a query's terms by walking every term's posting list row by row, in C
but one matching row at a time: 4-10 ms per query on the staged corpora, as much as a routed
query's model work at bf16. This scores the same index with numpy instead:

- postings (term -> documents and term frequencies) read once from FTS5 (`fts5vocab`), so
  they hold exactly the tokens FTS5 indexed;
- query terms tokenized by an FTS5 table with the same tokenizer;
- FTS5's bm25(): k1 = 1.2, b = 0.75, IDF log((N - n + 0.5) / (n + 0.5)) floored at 1e-6,
  title and text counted as one field, each query phrase scored on its own (repeats count).

A `Postings` reflects one write generation of its index and answers only while the index is
at that generation (the index rebuilds it in the background after writes); a query term that
is not exactly one token, or any error, goes to FTS5, the exact path. `matches_fts5` is the
self-check run on every build.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.core.lexical import query_terms
from app.index.lexical import TABLE, TOKENIZER

K1, B = 1.2, 0.75
IDF_FLOOR = 1e-6  # FTS5's floor for terms in more than half of the rows

_local = threading.local()
_stems: dict[str, str | None] = {}  # query term -> its one FTS5 token (None: not one token)


@dataclass
class Postings:
    generation: int
    rowids: np.ndarray  # (n_docs,) int64, ascending
    ids: list[str]  # document id per position
    norm: np.ndarray  # (n_docs,) float64: k1 * (1 - b + b * length / average length)
    terms: dict[str, tuple[np.ndarray, np.ndarray]]  # token -> (positions int64, tf float64)
    rows: int  # N: rows in the index

    @property
    def nbytes(self) -> int:
        arrays = sum(p.nbytes + f.nbytes for p, f in self.terms.values())
        return int(arrays + self.rowids.nbytes + self.norm.nbytes)

    def search(self, query: str, k: int) -> list[tuple[int, str, float]] | None:
        """FTS5's top k for `query` as (rowid, id, score), best first; None when a term is
        not a single token (FTS5 would match it as a phrase: it answers instead)."""
        ranked = self.rank(query, k)
        if ranked is None:
            return None
        positions, scores = ranked
        return [
            (int(self.rowids[p]), self.ids[p], score)
            for p, score in zip(positions.tolist(), scores.tolist(), strict=True)
        ]

    def rank(
        self, query: str, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """`search` as arrays: (positions in this table, float64 scores), best first; with
        `among` (a bool per position), of those positions only."""
        phrases = [_stem(term) for term in query_terms(query)]
        if any(p is None for p in phrases):
            return None
        scores: np.ndarray | None = None
        for token in phrases:
            found = self.terms.get(token)  # type: ignore[arg-type]
            if found is None:
                continue  # FTS5: a phrase that matches nothing adds nothing
            positions, tf = found
            idf = math.log((self.rows - len(positions) + 0.5) / (len(positions) + 0.5))
            idf = idf if idf > 0 else IDF_FLOOR
            if scores is None:
                scores = np.zeros(len(self.rowids))
            scores[positions] += idf * (tf * (K1 + 1)) / (tf + self.norm[positions])
        if scores is None:
            return _NOTHING
        matched = np.flatnonzero(scores)
        if among is not None:
            matched = matched[among[matched]]
        if len(matched) > k:
            # Keep every document tied with the k-th score, then order exactly.
            kth = np.partition(scores[matched], len(matched) - k)[len(matched) - k]
            matched = matched[scores[matched] >= kth]
        best = matched[np.lexsort((self.rowids[matched], -scores[matched]))[:k]]
        return best.astype(np.int64), scores[best]


_NOTHING = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))


def build(db: sqlite3.Connection, generation: int) -> Postings:
    """Read the postings of `db`'s FTS5 index (call on a connection that sees one snapshot:
    inside a read transaction)."""
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.lex_instances "
        f"USING fts5vocab(main, {TABLE}, instance)"
    )
    docs = db.execute("SELECT rowid, id FROM docs ORDER BY rowid").fetchall()
    rowids = np.array([row[0] for row in docs], dtype=np.int64)
    counts = db.execute(
        "SELECT term, doc, count(*) FROM temp.lex_instances GROUP BY term, doc"
    ).fetchall()
    lengths = np.zeros(len(rowids))
    by_term: dict[str, tuple[list[int], list[int]]] = {}
    where = np.searchsorted(rowids, np.array([c[1] for c in counts], dtype=np.int64))
    for (term, _, tf), position in zip(counts, where.tolist(), strict=True):
        entry = by_term.setdefault(term, ([], []))
        entry[0].append(position)
        entry[1].append(tf)
        lengths[position] += tf
    rows = len(rowids)
    average = lengths.sum() / rows if rows else 1.0
    norm = K1 * (1 - B + B * lengths / (average or 1.0))
    terms = {
        term: (np.array(positions, dtype=np.int64), np.array(tfs, dtype=np.float64))
        for term, (positions, tfs) in by_term.items()
    }
    return Postings(generation, rowids, [row[1] for row in docs], norm, terms, rows)


def matches_fts5(
    postings: Postings, db: sqlite3.Connection, queries: Sequence[str], k: int = 100
) -> str | None:
    """None if `postings` ranks `queries` as FTS5 does on `db` (same documents in the same
    order up to ties, scores within 1e-9 relative), else what differs."""
    from app.index.lexical import search as fts5_search

    for query, expected in zip(queries, fts5_search(db, queries, k), strict=True):
        got = postings.search(query, k)
        if got is None:
            continue
        if len(got) != len(expected):
            return f"{query!r}: {len(got)} hits against FTS5's {len(expected)}"
        for (rowid, _, score), (fts_rowid, _, fts_score) in zip(got, expected, strict=True):
            if not math.isclose(score, fts_score, rel_tol=1e-9, abs_tol=1e-12):
                return f"{query!r}: score {score!r} against FTS5's {fts_score!r}"
            if rowid != fts_rowid and not _tied(got, score):
                return f"{query!r}: row {rowid} where FTS5 has {fts_rowid}"
    return None


def _tied(hits: list[tuple[int, str, float]], score: float) -> bool:
    return sum(1 for hit in hits if math.isclose(hit[2], score, rel_tol=1e-12)) > 1


def _stem(term: str) -> str | None:
    """The one token FTS5's tokenizer makes of `term` (None if it makes none or several)."""
    if term in _stems:
        return _stems[term]
    db = getattr(_local, "tokenizer", None)
    if db is None:
        db = sqlite3.connect(":memory:")
        db.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZER}')")
        db.execute("CREATE VIRTUAL TABLE tv USING fts5vocab(t, instance)")
        _local.tokenizer = db
    db.execute("INSERT INTO t(rowid, x) VALUES (1, ?)", (term,))
    tokens = [row[0] for row in db.execute("SELECT term FROM tv ORDER BY offset")]
    db.execute("DELETE FROM t")
    stem = tokens[0] if len(tokens) == 1 else None
    if len(_stems) < 1_000_000:  # bounded: query terms, not documents
        _stems[term] = stem
    return stem
