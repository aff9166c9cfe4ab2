"""Hybrid search: the lexical index kept with the documents, fusion, per-query weights."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app.core.candidates import Candidates
from app.core.documents import Hit
from app.core.hybrid import QueryWeights, convex, min_max, rrf, weights_lookup
from app.core.legs import Leg, Pool
from app.core.lexical import STOPWORDS, match_expression, query_terms
from app.errors import NotFound
from app.index import Document
from app.index.expert_index import DB_FILE, ExpertIndex
from app.index.lexical import TABLE
from app.index.memory import MemoryIndex

DIM = 4
DOCS = [
    Document("d0", "supersonic shock waves on a swept wing", "Shocks"),
    Document("d1", "python sorts a list of dictionaries by value", "Sorting"),
    Document("d2", "boundary layer transition at high reynolds numbers", "Boundary layers"),
]


def _vectors(n: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[:n]


def _ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


def test_stopwords_are_bm25s_english_list() -> None:
    from bm25s.stopwords import STOPWORDS_EN

    assert set(STOPWORDS_EN) == STOPWORDS


def test_query_terms_keep_repeats_and_quote_operators() -> None:
    assert query_terms("The wing, the WING and its_drag!") == ["wing", "wing", "its", "drag"]
    # FTS5 syntax in user text stays plain words (a bare NOT or * would be a syntax error).
    assert match_expression('NOT wing* AND "drag" NEAR(') == '"wing" OR "drag" OR "near"'
    assert match_expression("the and of") is None  # nothing left to match


@pytest.mark.parametrize("make", ["expert", "memory"])
def test_lexical_leg_follows_every_write(tmp_path: Path, make: str) -> None:
    index = (
        ExpertIndex("aero", tmp_path / "aero", DIM)
        if make == "expert"
        else MemoryIndex("aero", DIM)
    )
    index.upsert(DOCS, _vectors(3))
    # Porter stemming: "shocks"/"waves" match "shock"/"wave"; title counts too.
    [hits, none, layers] = index.lexical_search(["shocks and waves", "the of", "Boundary"], 5)
    assert _ids(hits) == ["d0"] and hits[0].score > 0 and hits[0].title == "Shocks"
    assert none == [] and _ids(layers) == ["d2"]
    # A replaced document is found by its new text only; a deleted one not at all.
    index.upsert([Document("d0", "subsonic flow", "Flow")], _vectors(1))
    assert index.lexical_search(["shock"], 5) == [[]]
    assert _ids(index.lexical_search(["subsonic"], 5)[0]) == ["d0"]
    assert index.delete("d2")
    assert index.lexical_search(["boundary"], 5) == [[]]
    assert set(index.fetch(["d0", "d1", "d2"])) == {"d0", "d1"}


def test_lexical_index_survives_restart_and_failed_writes(tmp_path: Path) -> None:
    index = ExpertIndex("aero", tmp_path / "aero", DIM)
    index.upsert(DOCS, _vectors(3))
    with pytest.raises(ValueError):  # one embedding short: the whole batch is refused
        index.upsert([Document("d9", "hypersonic"), Document("d8", "x")], _vectors(1))
    index.close()
    reopened = ExpertIndex("aero", tmp_path / "aero", DIM)
    assert _ids(reopened.lexical_search(["supersonic"], 5)[0]) == ["d0"]
    assert reopened.lexical_search(["hypersonic"], 5) == [[]]
    reopened.close()


def test_store_from_before_hybrid_gets_its_lexical_index(tmp_path: Path) -> None:
    index = ExpertIndex("aero", tmp_path / "aero", DIM)
    index.upsert(DOCS, _vectors(3))
    index.close()
    db = sqlite3.connect(tmp_path / "aero" / DB_FILE)  # as an index made before hybrid search
    db.executescript(
        f"DROP TRIGGER docs_lex_insert; DROP TRIGGER docs_lex_delete; DROP TABLE {TABLE};"
    )
    db.close()
    reopened = ExpertIndex("aero", tmp_path / "aero", DIM)
    assert _ids(reopened.lexical_search(["python dictionaries"], 5)[0]) == ["d1"]
    reopened.upsert([Document("d5", "python generators")], _vectors(1))
    assert set(_ids(reopened.lexical_search(["python"], 5)[0])) == {"d1", "d5"}
    reopened.close()


def _legs(dense: dict[str, float], lexical: list[Hit]) -> tuple[Leg, Leg]:
    """A dense and a lexical list of one query, ranked (encoder "e")."""
    found = [Candidates.of_hits([Hit(d, s, "i") for d, s in dense.items()])]
    pool = Pool([*found, Candidates.of_hits(lexical)], ["e"])
    return pool.leg(pool.entries(0, 1), 100), pool.leg(pool.entries(1, 2), 100)


def test_convex_fusion_weights_and_scores() -> None:
    dense, lexical = _legs(
        {"a": 0.9, "b": 0.8, "c": 0.1},
        [Hit("c", 12.0, "i"), Hit("d", 6.0, "i"), Hit("a", 0.0, "i")],
    )
    assert _ids([r.hit for r in convex(dense, lexical, 1.0, 4)])[:3] == ["a", "b", "c"]
    assert _ids([r.hit for r in convex(dense, lexical, 0.0, 4)])[:2] == ["c", "d"]
    fused = {r.hit.id: r for r in convex(dense, lexical, 0.5, 4)}
    # a: dense 1.0 (max), lexical 0.0 (min) -> 0.5; c: dense 0, lexical 1 -> 0.5;
    # b: dense 0.875, absent lexically -> 0.4375; d: lexical 0.5 only -> 0.25.
    assert fused["a"].score == pytest.approx(0.5) and fused["c"].score == pytest.approx(0.5)
    assert fused["b"].score == pytest.approx(0.4375) and fused["d"].score == pytest.approx(0.25)
    assert fused["b"].lexical is None and fused["d"].dense is None
    assert fused["c"].dense == pytest.approx(0.1) and fused["c"].lexical == 12.0
    assert list(min_max([3.0, 3.0])) == [1.0, 1.0]
    by_rank = rrf(dense, lexical, 2)
    assert _ids([r.hit for r in by_rank]) == ["a", "c"]  # in both lists, ranks 1+3 and 3+1


def test_query_weights() -> None:
    model = QueryWeights(0.0, {"dense_top": 10.0})
    assert model.weight({"dense_top": 0.5}) > 0.99 and model.weight({"dense_top": -0.5}) < 0.01
    assert QueryWeights.constant(0.7).weight({"dense_top": 3.0}) == pytest.approx(0.7)
    assert QueryWeights.from_json(model.to_json()) == model
    routed = QueryWeights.constant(0.3)
    lookup = weights_lookup({"cosqa": 0.9, "new": None}, model, routed)
    assert lookup("cosqa").weight({}) == pytest.approx(0.9)
    assert lookup("new") is routed and lookup("base") is model
    assert weights_lookup({}, model)("new") is model  # no routed model: the fallback one


def test_lexical_reads_from_many_threads_see_every_commit(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    index = ExpertIndex("aero", tmp_path / "aero", DIM)
    index.upsert(DOCS, _vectors(3))
    with ThreadPoolExecutor(4) as pool:  # each thread reads through its own connection
        found = list(pool.map(lambda q: _ids(index.lexical_search([q], 5)[0]), ["shock"] * 8))
        assert found == [["d0"]] * 8
        index.upsert([Document("d7", "hypersonic shock tunnel")], _vectors(1))
        again = list(pool.map(lambda q: set(_ids(index.lexical_search([q], 5)[0])), ["shock"] * 8))
        assert again == [{"d0", "d7"}] * 8
    index.close()  # closes the readers' connections too
    with pytest.raises(NotFound):
        index.lexical_search(["shock"], 5)
