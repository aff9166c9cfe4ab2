"""BM25 from in-memory postings: FTS5's ranking and scores, only while current."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.core.documents import Document
from app.index import lexical, lexical_postings
from app.index.expert_index import ExpertIndex
from app.index.lexical_postings import Postings
from app.shortcuts import LEXICAL_POSTINGS, Shortcuts

WORDS = [
    "wing",
    "flutter",
    "shock",
    "supersonic",
    "boundary",
    "layer",
    "heat",
    "transfer",
    "nozzle",
    "flow",
    "laminar",
    "turbulent",
    "python",
    "sort",
    "list",
    "dictionary",
    "value",
    "csv",
    "file",
    "read",
    "write",
    "string",
    "reverse",
    "vitamin",
    "cancer",
    "risk",
    "trial",
    "patients",
    "dose",
    "bone",
    "density",
    "running",
    "runner",
    "runs",
    "ran",
]
QUERIES = [
    "supersonic wing flutter",
    "the effect of heat transfer on a laminar boundary layer",  # stopwords dropped
    "python python sort",  # a repeated term counts twice, as in FTS5
    "runners running ran",  # Porter stems
    "unknownword wing",
    "of the and",  # nothing to match
    "Vitamin-D and BONE density!",
]


def _index(tmp_path: Path, n: int = 300, shortcuts: Shortcuts | None = None) -> ExpertIndex:
    rng = np.random.default_rng(3)
    docs = [
        Document(
            f"d{i}",
            " ".join(rng.choice(WORDS, size=int(rng.integers(5, 60)))),
            " ".join(rng.choice(WORDS, size=3)) if i % 3 else "",
        )
        for i in range(n)
    ]
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    index = ExpertIndex("t", tmp_path / "t", 8, shortcuts=shortcuts)
    index.upsert(docs, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    return index


def _fts5(index: ExpertIndex, k: int) -> list[list[tuple]]:
    with index._reading() as db:
        return lexical.search(db, QUERIES, k)


def _built(index: ExpertIndex) -> Postings:
    index._build_postings()
    assert index._postings is not None and index._postings.generation == index._writes
    return index._postings


@pytest.mark.parametrize("k", [5, 100])
def test_postings_rank_and_score_as_fts5(tmp_path: Path, k: int) -> None:
    index = _index(tmp_path)
    expected = _fts5(index, k)
    _built(index)
    served = index.lexical_search(QUERIES, k, with_text=False)
    assert index._from_postings(QUERIES, k)[0] is not None  # the postings answered
    for query, hits, reference in zip(QUERIES, served, expected, strict=True):
        assert len(hits) == len(reference), query
        scores = [hit.score for hit in hits]
        assert scores == pytest.approx([row[2] for row in reference], rel=1e-9), query
        # The same documents above the lowest score (a tie there may cut either way).
        low = min(scores, default=0.0) * (1 + 1e-9)
        assert {h.id for h in hits if h.score > low} == {r[1] for r in reference if r[2] > low}
    assert served[5] == []
    with_text = index.lexical_search(QUERIES, k)  # ranked by the postings, text from the store
    assert [[h.id for h in hits] for hits in with_text] == [[h.id for h in x] for x in served]
    stored = index.get(with_text[0][0].id)
    assert stored is not None and (with_text[0][0].title, with_text[0][0].text) == (
        stored.title,
        stored.text,
    )
    index.close()


def test_postings_serve_only_while_current(tmp_path: Path) -> None:
    index = _index(tmp_path, n=50)
    _built(index)
    new = Document("fresh", "zeppelin airship", "")
    index.upsert([new], np.eye(1, 8, dtype=np.float32))
    assert index._from_postings(["zeppelin"], 10) == [None]  # stale: FTS5 answers
    [[hit]] = index.lexical_search(["zeppelin"], 10, with_text=False)
    assert hit.id == "fresh"
    _built(index)
    [fresh] = index._from_postings(["zeppelin"], 10)
    assert fresh is not None and [h.id for h in fresh] == ["fresh"]
    index.delete("fresh")
    assert index.lexical_search(["zeppelin"], 10, with_text=False) == [[]]
    index.close()


def test_postings_that_disagree_with_fts5_are_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shortcuts = Shortcuts()
    index = _index(tmp_path, n=50, shortcuts=shortcuts)
    monkeypatch.setattr(lexical_postings, "K1", 1.5)  # not FTS5's bm25() any more
    index._postings = None
    index._build_postings()
    assert LEXICAL_POSTINGS in shortcuts.degraded and index._postings is None
    expected = _fts5(index, 10)
    served = index.lexical_search(QUERIES, 10, with_text=False)
    assert [[h.id for h in hits] for hits in served] == [[r[1] for r in e] for e in expected]
    index.close()


def test_postings_are_dropped_past_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.index.expert_index as expert_index

    index = _index(tmp_path, n=20)
    _built(index)
    monkeypatch.setattr(expert_index, "POSTINGS_MAX_DOCUMENTS", 20)
    index.upsert([Document("extra", "wing", "")], np.eye(1, 8, dtype=np.float32))
    index._build_postings()
    assert index._postings is None  # FTS5 alone from now on, no stale copy kept
    assert [h.id for h in index.lexical_search(["wing"], 50, with_text=False)[0]].count("extra")
    index.close()
