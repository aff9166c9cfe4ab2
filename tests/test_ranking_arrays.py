"""Ranking on arrays ranks exactly as the object-per-candidate code it replaced.

`_reference_rank_query` is that code (fusion and hybrid before arrays, on `Hit` lists), kept
here as the oracle: random plans, modes, fusions, depths, tied scores, documents on both
legs, several indexes and encoders, one table per index (keys by row) or several (keys by
id), duplicates; then the served indexes' own candidates.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from app.core.candidates import Candidates, DocumentTable
from app.core.documents import Document, Hit
from app.core.fusion import rank_query
from app.core.hybrid import QueryWeights, RankedHit, min_max
from app.core.lexical import query_terms
from app.core.planning import SearchOptions
from app.index.expert_index import ExpertIndex
from app.index.memory import MemoryIndex
from app.shortcuts import LEXICAL_POSTINGS

WEIGHTS = QueryWeights(
    2.44, {"dense_top": 4.40, "dense_spread": 3.12, "lexical_share": -5.19, "terms": -0.22}
)
RRF_K = 60

# -- the oracle: the object-based code, as it was ---------------------------------------


def _fuse(lists: list[tuple[str, list[Hit]]], k: int) -> list[RankedHit]:
    if len(lists) == 1:
        expert, hits = lists[0]
        ranked = sorted(hits, key=lambda h: -h.score)[:k]
        return [RankedHit(h, h.score, expert, dense=h.score) for h in ranked]
    fused: dict[tuple[str, str], float] = defaultdict(float)
    first_seen: dict[tuple[str, str], RankedHit] = {}
    for expert, hits in lists:
        for rank, hit in enumerate(sorted(hits, key=lambda h: -h.score)):
            key = (hit.index, hit.id)
            fused[key] += 1.0 / (RRF_K + rank + 1)
            first_seen.setdefault(key, RankedHit(hit, 0.0, expert, dense=hit.score))
    best = sorted(fused, key=lambda key: -fused[key])[:k]
    return [
        RankedHit(first_seen[key].hit, fused[key], first_seen[key].expert, first_seen[key].dense)
        for key in best
    ]


def _merge(dense: list[RankedHit], lexical: list[Hit], score, k: int) -> list[RankedHit]:
    on_dense: dict = {}
    order: list = []
    for position, item in enumerate(dense):
        key = (item.hit.index, item.hit.id)
        if key not in on_dense:
            on_dense[key] = position
            order.append(key)
    on_lexical: dict = {}
    for position, hit in enumerate(lexical):
        key = (hit.index, hit.id)
        if key not in on_lexical:
            on_lexical[key] = position
            if key not in on_dense:
                order.append(key)
    top = sorted(((score(key), key) for key in order), key=lambda pair: -pair[0])[:k]
    expert = dense[0].expert if dense else ""
    out = []
    for fused, key in top:
        lexical_score = lexical[on_lexical[key]].score if key in on_lexical else None
        if key in on_dense:
            item = dense[on_dense[key]]
            out.append(RankedHit(item.hit, float(fused), item.expert, item.dense, lexical_score))
        else:
            hit = lexical[on_lexical[key]]
            out.append(RankedHit(hit, float(fused), expert, None, lexical_score))
    return out


def _convex(dense: list[RankedHit], lexical: list[Hit], weight: float, k: int) -> list:
    keys = [(h.hit.index, h.hit.id) for h in dense]
    dense_norm = dict(zip(keys, min_max([h.score for h in dense]), strict=True))
    lexical_keys = [(h.index, h.id) for h in lexical]
    lexical_norm = dict(zip(lexical_keys, min_max([h.score for h in lexical]), strict=True))
    return _merge(
        dense,
        lexical,
        lambda key: weight * dense_norm.get(key, 0.0) + (1 - weight) * lexical_norm.get(key, 0.0),
        k,
    )


def _rrf(dense: list[RankedHit], lexical: list[Hit], k: int) -> list[RankedHit]:
    ranks: dict = {}
    for order in ([(h.hit.index, h.hit.id) for h in dense], [(h.index, h.id) for h in lexical]):
        for rank, key in enumerate(order):
            ranks[key] = ranks.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
    return _merge(dense, lexical, lambda key: ranks[key], k)


def _features(dense: list[RankedHit], lexical: list[Hit], terms: int) -> dict[str, float]:
    cosines = [h.score for h in dense[:10]]
    per_term = (lexical[0].score / terms) if (lexical and terms) else 0.0
    return {
        "dense_top": cosines[0] if cosines else 0.0,
        "dense_spread": (cosines[0] - cosines[-1]) if cosines else 0.0,
        "lexical_share": per_term / (1.0 + per_term),
        "terms": math.log1p(terms),
    }


def _reference_rank_query(query, plan, dense, lexical, options) -> list[RankedHit]:
    lead = plan[0] if plan else ""
    if options.mode == "lexical":
        ranked = sorted(lexical, key=lambda h: -h.score)[: options.k]
        return [RankedHit(h, h.score, lead, lexical=h.score) for h in ranked]
    dense_list = _fuse([(e, dense.get(e, [])) for e in plan], options.dense_depth)
    if options.mode == "dense":
        return dense_list
    lexical = sorted(lexical, key=lambda h: -h.score)[: options.lexical_depth]
    if options.fusion == "rrf":
        return _rrf(dense_list, lexical, options.k)
    features = _features(dense_list, lexical, len(query_terms(query)))
    return _convex(dense_list, lexical, WEIGHTS.weight(features), options.k)


# -- random cases ------------------------------------------------------------------------

INDEXES = ["i0", "i1", "i2"]
ENCODERS = ["e0", "e1", "e2"]
DOCS = 30


def _part(rng, table, dense: bool, duplicates: bool) -> Candidates:
    n = int(rng.integers(0, 25))
    rows = rng.choice(DOCS, size=n, replace=duplicates)
    levels = rng.integers(0, 8, size=n)  # few distinct scores: many ties
    scores = (
        (levels / 8 - 0.3).astype(np.float32).astype(np.float64)  # cosines, as FAISS's
        if dense
        else levels * 1.7
    )
    order = np.argsort(-scores, kind="stable")  # a search answers best first
    return Candidates(rows[order].astype(np.int64), scores[order], table)


def _case(rng):
    """(query, plan, dense candidates per encoder, lexical candidates, options)."""
    ids = [f"d{i}" for i in range(DOCS)]
    shared = {name: DocumentTable(name, ids, space=object()) for name in INDEXES}
    keyed_by_id = rng.random() < 0.3  # the lexical leg read another table: keys by id
    duplicates = keyed_by_id and rng.random() < 0.3

    def table(name: str, lexical: bool) -> DocumentTable:
        if lexical and keyed_by_id:
            return DocumentTable(name, ids, space=None if rng.random() < 0.5 else object())
        return shared[name]

    plan = [str(e) for e in rng.choice(ENCODERS, size=int(rng.integers(0, 4)), replace=False)]
    searched = [str(n) for n in rng.choice(INDEXES, size=int(rng.integers(1, 4)), replace=False)]
    dense = {
        encoder: [_part(rng, table(name, False), True, duplicates) for name in searched]
        for encoder in plan
    }
    lexical = [_part(rng, table(name, True), False, duplicates) for name in searched]
    options = SearchOptions(
        k=int(rng.integers(1, 13)),
        mode=str(rng.choice(["hybrid", "dense", "lexical"])),  # type: ignore[arg-type]
        fusion=str(rng.choice(["convex", "rrf"])),  # type: ignore[arg-type]
        candidates=int(rng.integers(1, 40)),
    )
    query = " ".join(rng.choice(["wing", "the", "flow", "shock", "of"], size=rng.integers(0, 5)))
    return query, plan, dense, lexical, options


def _as_hits(parts: list[Candidates]) -> list[Hit]:
    """What callers held before arrays: each index's hits, concatenated."""
    return [hit for part in parts for hit in part]


def test_array_ranking_equals_the_object_code_on_random_cases() -> None:
    rng = np.random.default_rng(21)
    paths = defaultdict(int)
    for _ in range(3000):
        query, plan, dense, lexical, options = _case(rng)
        expected = _reference_rank_query(
            query, plan, {e: _as_hits(p) for e, p in dense.items()}, _as_hits(lexical), options
        )
        got = rank_query(query, plan, dense, lexical, options, lambda _e: WEIGHTS)
        assert got == expected, (query, plan, options)
        # Plain hits (tests, older callers) rank the same way.
        assert (
            rank_query(
                query,
                plan,
                {e: _as_hits(p) for e, p in dense.items()},
                _as_hits(lexical),
                options,
                lambda _e: WEIGHTS,
            )
            == expected
        )
        paths[(options.mode, len(plan) > 1, any(r.dense and r.lexical for r in got))] += 1
    # The cases reach every mode, several encoders, and documents found by both legs.
    assert paths[("hybrid", False, True)] and paths[("hybrid", True, True)]
    assert paths[("dense", True, False)] and sum(v for k, v in paths.items() if k[0] == "lexical")


def _docs(n: int, rng) -> list[Document]:
    words = ["wing", "flow", "shock", "heat", "layer", "nozzle", "python", "sort", "bone"]
    return [
        Document(f"d{i}", " ".join(rng.choice(words, size=int(rng.integers(3, 12)))), f"t{i}")
        for i in range(n)
    ]


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("make", ["expert", "memory"])
def test_served_candidates_rank_as_their_hits(tmp_path: Path, make: str, exact: bool) -> None:
    """The indexes' candidates (postings or the store naming the rows) rank as their
    materialized hits do through the old code: hybrid, both fusions, with text."""
    rng = np.random.default_rng(5)
    docs = _docs(200, rng)
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index: ExpertIndex | MemoryIndex
    if make == "expert":
        index = ExpertIndex("aero", tmp_path / "aero", 8)
        index.upsert(docs, vectors)
        index._build_postings_now()
        if exact:  # the store and FTS5 answer: rows keyed by document id
            index.shortcuts.switch_off(LEXICAL_POSTINGS, "test: the exact path")
    else:
        index = MemoryIndex("aero", 8)
        index.upsert(docs, vectors)
    queries = ["wing flow", "python sort bone", "heat heat layer", "the of"]
    query_vectors = vectors[[3, 50, 120, 7]] + 0.1
    for with_text in (False, True):
        dense = index.search_candidates(query_vectors, 100, with_text)
        lexical = index.lexical_candidates(queries, 100, with_text)
        if make == "expert" and not exact and not with_text:
            assert dense[0].source.space is lexical[0].source.space  # keys by row
        for fusion in ("convex", "rrf"):
            options = SearchOptions(k=10, expert="aero", fusion=fusion)  # type: ignore[arg-type]
            for qi, query in enumerate(queries):
                expected = _reference_rank_query(
                    query, ["aero"], {"aero": list(dense[qi])}, list(lexical[qi]), options
                )
                got = rank_query(
                    query,
                    ["aero"],
                    {"aero": [dense[qi]]},
                    [lexical[qi]],
                    options,
                    lambda _: WEIGHTS,
                )
                assert got == expected and len(got) == 10
                assert all(bool(r.hit.title) == with_text for r in got)
    if isinstance(index, ExpertIndex):
        index.close()
