"""BM25 reference (bm25s defaults; lowercase, English stopwords, Snowball stemming via
PyStemmer): the yardstick the served lexical index (SQLite FTS5) is measured against."""

from __future__ import annotations

import numpy as np


def bm25_search(doc_texts: list[str], queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, scores)` per query, best first; rows index `doc_texts`."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(doc_texts, lower=True, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    # Query tokens as strings: ids from a second tokenize call would use another vocabulary.
    tokens = bm25s.tokenize(
        queries,
        lower=True,
        stopwords="en",
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    k = min(k, len(doc_texts))
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return np.asarray(rows), np.asarray(scores, dtype=np.float32)
