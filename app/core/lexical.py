"""The lexical leg's query language: a query's terms as an SQLite FTS5 match expression.

Documents are tokenized by FTS5 itself (`unicode61`, then Porter stemming); a query is
split the same way here, English stopwords dropped (they match nearly every document and
only cost time), and its terms OR-ed. Repeated terms stay repeated: FTS5's `bm25()` sums
over the query's phrases, so a term said twice weighs twice, as query term frequency does
in BM25 (with one-character tokens dropped too, it lifted nDCG@10 on the long CISI and
CACM queries from 0.338 to 0.412 and from 0.370 to 0.446).
"""

from __future__ import annotations

import re

# unicode61's token characters: letters and digits; everything else (underscore included)
# separates tokens.
_TOKEN = re.compile(r"[^\W_]+")
# Lucene's English stop set, the one `bm25s` uses (a test keeps the two equal).
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
})  # fmt: skip
MAX_TERMS = 256  # FTS5 expressions have a depth limit; longer queries keep their first terms


def query_terms(query: str) -> list[str]:
    """Lower-cased terms of two or more characters, stopwords dropped, repeats kept."""
    terms = [t for t in _TOKEN.findall(query.lower()) if len(t) > 1 and t not in STOPWORDS]
    return terms[:MAX_TERMS]


def match_expression(query: str) -> str | None:
    """An FTS5 MATCH string OR-ing the query's terms (None: nothing to match)."""
    terms = query_terms(query)
    # Each term quoted: FTS5 operators (AND, NOT, NEAR, ^, *) in user text stay plain words.
    return " OR ".join(f'"{t}"' for t in terms) or None
