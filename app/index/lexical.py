"""BM25 over a collection's own SQLite store (FTS5), for the lexical leg of hybrid search.

The FTS5 table is an external-content index over the `docs` table, kept by triggers: a
document enters or leaves it in the same transaction that writes the document, so it is in
both the document store and the lexical index or in neither, through crashes and restarts,
with no second store to reconcile. Chosen by measurement (`reports/eval.md`): Porter-stemmed
FTS5 with query term frequency is within 0.01 nDCG@10 of `bm25s` with Snowball stemming on
the staged sets, and is transactional with our document store, which bm25s (a static index)
and tantivy (a second store with its own commits) are not.

Scores are BM25 (k1=1.2, b=0.75, title and text as one field), higher is better. Served
searches usually score from this index's postings held in memory (`lexical_postings.py`,
the same scores); `search` here is the exact path and the reference they are checked against.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from app.core.lexical import match_expression

TABLE = "docs_lex"
TOKENIZER = "porter unicode61 remove_diacritics 2"

_SCHEMA = f"""
CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(
    title, text, content='docs', content_rowid='rowid', tokenize='{TOKENIZER}'
);
CREATE TRIGGER IF NOT EXISTS docs_lex_insert AFTER INSERT ON docs BEGIN
    INSERT INTO {TABLE}(rowid, title, text) VALUES (new.rowid, new.title, new.text);
END;
CREATE TRIGGER IF NOT EXISTS docs_lex_delete AFTER DELETE ON docs BEGIN
    INSERT INTO {TABLE}({TABLE}, rowid, title, text)
    VALUES ('delete', old.rowid, old.title, old.text);
END;
"""
# Updates never happen: an upsert deletes the old row and inserts a new one.


def attach(db: sqlite3.Connection) -> None:
    """Create the lexical index over `db`'s `docs` table (rowid, title, text), filling it
    from the documents already stored when it is new (stores made before hybrid search)."""
    existed = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (TABLE,)
    ).fetchone()
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(_SCHEMA):
            db.execute(statement)
        if not existed:
            db.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('rebuild')")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """`script` split into complete statements (triggers hold inner semicolons)."""
    out, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    return out


def search(
    db: sqlite3.Connection,
    queries: Sequence[str],
    k: int,
    columns: str = "d.rowid, d.id",
    allowed: Iterable[int] | None = None,
) -> list[list[tuple]]:
    """Per query, up to k rows of `columns` (of `docs d`) with the BM25 score appended,
    best first (a query with no terms has no hits); with `allowed`, of those rowids only
    (before the limit: k rows when k of them match)."""
    out: list[list[tuple]] = []
    among = ""
    parameters: tuple[str, ...] = ()
    if allowed is not None:
        # `rowid + 0`: the MATCH drives the scan, the allowed set (materialised once) only
        # filters it; on plain `rowid IN` SQLite runs one full-text match per allowed row
        # (167 s instead of 0.3 s at 10% of 100k documents).
        among = "AND rowid + 0 IN (SELECT value FROM json_each(?)) "
        parameters = (json.dumps([int(rowid) for rowid in allowed]),)
    for query in queries:
        expression = match_expression(query)
        if expression is None:
            out.append([])
            continue
        rows = db.execute(
            f"SELECT {columns}, s.score FROM ("
            f"SELECT rowid, -bm25({TABLE}) AS score FROM {TABLE} WHERE {TABLE} MATCH ? "
            f"{among}ORDER BY rank LIMIT ?) s JOIN docs d ON d.rowid = s.rowid "
            "ORDER BY s.score DESC",
            (expression, *parameters, k),
        ).fetchall()
        out.append(rows)
    return out
