"""`rr tune-fusion`: the dense weight of hybrid search, learned on TRAIN queries only.

Per domain, each train query is searched through the retrieval core (`rank_query`, as
`/v1/search` does) on its own domain's index: the dense leg embedded by the domain's expert
(for that expert's weight) and by the base model (for the fallback model), the lexical leg
by BM25, and the two fused at every weight of a grid. Then:

- each expert's weight: the grid weight with the best mean nDCG@10 on its domain;
- the fallback model (`QueryWeights`): a per-query weight from the query's own evidence
  (`app.core.hybrid.FEATURES`), fitted to the base-encoder queries of every domain, each
  domain weighing equally. Leave-one-domain-out cross-validation compares it with one
  constant weight, as a stand-in for collections no expert has seen.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.documents import Document
from app.core.fusion import fuse
from app.core.hybrid import CANDIDATES, FEATURES, QueryWeights, convex, query_features
from app.core.legs import Pool
from app.core.lexical import query_terms
from app.core.names import BASE_EXPERT
from app.core.ranking import ndcg_of_ids

if TYPE_CHECKING:
    from app.core.router import Router
    from app.data.beir import Benchmark
    from app.encoder.lora_encoder import LoraEncoder

log = logging.getLogger(__name__)
GRID = np.round(np.linspace(0.0, 1.0, 21), 2)  # dense weights tried


@dataclass
class FusionTable:
    """One domain's train queries: nDCG@10 at every grid weight, per encoder, and the
    features each query carries (per encoder)."""

    domain: str
    ndcg: dict[str, np.ndarray]  # encoder -> (n_queries, len(GRID))
    features: dict[str, np.ndarray]  # encoder -> (n_queries, len(FEATURES))


def domain_table(
    name: str,
    index: Any,
    texts: Sequence[str],
    relevant: Sequence[dict[str, int]],
    encoded: dict[str, np.ndarray],
    k: int = 10,
) -> FusionTable:
    """nDCG@k of each query at every weight of GRID, for each encoder in `encoded`."""
    lexical = index.lexical_candidates(list(texts), CANDIDATES)
    ndcg, features = {}, {}
    for encoder, vectors in encoded.items():
        dense = index.search_candidates(vectors, CANDIDATES)
        table = np.zeros((len(texts), len(GRID)))
        rows = []
        for qi, text in enumerate(texts):
            pool = Pool([dense[qi], lexical[qi]], [encoder])
            dense_list = fuse(pool, [pool.entries(0, 1)], CANDIDATES)
            lexical_list = pool.leg(pool.entries(1, 2), CANDIDATES)
            rows.append(
                [
                    query_features(dense_list, lexical_list, len(query_terms(text)))[f]
                    for f in FEATURES
                ]
            )
            for wi, weight in enumerate(GRID):
                ranked = convex(dense_list, lexical_list, float(weight), k)
                table[qi, wi] = ndcg_of_ids([h.hit.id for h in ranked], relevant[qi], k)
        ndcg[encoder] = table
        features[encoder] = np.asarray(rows, dtype=np.float64)
    return FusionTable(name, ndcg, features)


def best_weight(table: np.ndarray) -> float:
    """The grid weight with the best mean; ties go to the weight nearest 0.5."""
    means = table.mean(axis=0)
    best = np.flatnonzero(means >= means.max() - 1e-12)
    return float(GRID[best[np.argmin(np.abs(GRID[best] - 0.5))]])


def _interp(table: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each query's nDCG at its own weight, linear between grid points."""
    position = np.clip(weights, 0.0, 1.0) * (len(GRID) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(GRID) - 1)
    frac = position - low
    rows = np.arange(len(table))
    return table[rows, low] * (1 - frac) + table[rows, high] * frac


def _per_query(model: QueryWeights, rows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each query's nDCG at the model's weight for it."""
    ndcg, feats = rows
    weights = np.array([model.weight(dict(zip(FEATURES, row, strict=True))) for row in feats])
    return _interp(ndcg, weights)


def _objective(model: QueryWeights, tables: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over domains of the mean nDCG at the model's weights."""
    return float(np.mean([_per_query(model, rows).mean() for rows in tables]))


def fit_query_weights(
    tables: Sequence[tuple[np.ndarray, np.ndarray]], l2: float = 0.001
) -> QueryWeights:
    """The sigmoid model maximising the domain-balanced mean nDCG@10.

    Features are standardised for the search (Nelder-Mead, unit initial steps, a few
    starting biases; a small L2 keeps coefficients modest), then folded back so the model
    reads raw features.
    """
    from scipy.optimize import minimize

    pooled = np.concatenate([feats for _, feats in tables])
    mean, scale = pooled.mean(axis=0), pooled.std(axis=0) + 1e-9
    data = [(ndcg, (feats - mean) / scale) for ndcg, feats in tables]

    def loss(theta: np.ndarray) -> float:
        scores = [
            _interp(ndcg, 1.0 / (1.0 + np.exp(-(theta[0] + feats @ theta[1:])))).mean()
            for ndcg, feats in data
        ]
        return -float(np.mean(scores)) + l2 * float(np.sum(theta[1:] ** 2))

    best = None
    size = len(FEATURES) + 1
    for bias in (-0.5, 0.0, 0.5, 1.0):
        x0 = np.concatenate([[bias], np.zeros(len(FEATURES))])
        simplex = np.vstack([x0, x0 + np.eye(size)])
        fitted = minimize(
            loss,
            x0,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "maxiter": 4000, "xatol": 1e-3, "fatol": 1e-6},
        )
        if best is None or fitted.fun < best.fun:
            best = fitted
    assert best is not None
    coefs = best.x[1:] / scale
    bias = float(best.x[0] - np.sum(coefs * mean))
    return QueryWeights(bias, dict(zip(FEATURES, map(float, coefs), strict=True)))


def cross_validate(tables: dict[str, FusionTable]) -> dict[str, dict[str, float]]:
    """Leave one domain out: its base-encoder queries at the constant weight and at the
    model fitted on the other domains, against dense only (weight 1) and lexical only."""
    out = {}
    for held in tables:
        rest = [
            (t.ndcg[BASE_EXPERT], t.features[BASE_EXPERT]) for n, t in tables.items() if n != held
        ]
        constant = QueryWeights.constant(best_weight(np.concatenate([t for t, _ in rest])))
        model = fit_query_weights(rest)
        mine = [(tables[held].ndcg[BASE_EXPERT], tables[held].features[BASE_EXPERT])]
        table = tables[held].ndcg[BASE_EXPERT]
        out[held] = {
            "dense": round(float(table[:, -1].mean()), 4),
            "lexical": round(float(table[:, 0].mean()), 4),
            "constant": round(_objective(constant, mine), 4),
            "model": round(_objective(model, mine), 4),
        }
    return out


def train_queries(entry: Any, max_queries: int) -> tuple[list[str], list[dict[str, int]]]:
    """Up to `max_queries` train queries with positives (a fixed hash-ordered subset)."""
    from app.data.beir import load_qrels, load_queries, positive_qrels

    qrels = positive_qrels(load_qrels(entry.train_qrels))
    queries = load_queries(entry.directory)
    ids = sorted(q for q in qrels if queries.get(q, "").strip())
    ids = sorted(ids, key=lambda q: hashlib.sha1(f"fusion:{q}".encode()).hexdigest())
    ids = ids[:max_queries]
    return [queries[q] for q in ids], [qrels[q] for q in ids]


def domain_index(entry: Any, encoder: LoraEncoder, cache_dir: Path) -> Any:
    """An in-memory index of a domain's corpus (cached base-encoder document vectors)."""
    from app.data.beir import load_corpus
    from app.data.doc_embeddings import document_embeddings
    from app.index.memory import MemoryIndex

    doc_ids, matrix = document_embeddings(entry.directory, encoder, cache_dir)
    corpus = load_corpus(entry.directory)
    documents = [Document(d["_id"], d["text"], d["title"]) for d in corpus]
    return MemoryIndex.of_vectors(entry.name, doc_ids, matrix, documents)


ROUTED = "routed"  # table key: each query embedded by the expert the router chose


def tune(
    benchmark: Benchmark,
    experts: list[str],
    encoder: LoraEncoder,
    cache_dir: Path,
    router: Router,
    max_queries: int = 400,
    margin: float = 0.005,
) -> dict[str, Any]:
    """Learn hybrid's dense weights from every expert domain's train queries.

    Three tables per domain: the queries embedded by the base model (fallback), by the
    domain's own expert (its constant weight), and by whichever expert the router picks
    (what serving does: wrong routes included). Two per-query models: `fallback` (base
    rows) and `routed` (rows routed to an expert). Per expert, the constant weight is
    adopted only when, on the train queries routed to it, it beats the routed model
    (fitted without that expert's domain) by more than `margin` and by more than two
    standard errors of the paired per-query difference (small train sets decide nothing);
    else the expert uses the routed model.
    """
    tables: dict[str, FusionTable] = {}
    routed_to: dict[str, list[str]] = {}
    for entry in benchmark.experts:
        if entry.name not in experts or entry.train_qrels is None:
            continue
        texts, relevant = train_queries(entry, max_queries)
        if not texts:
            continue
        index = domain_index(entry, encoder, cache_dir)
        base = encoder.encode(texts)
        chosen = [d.expert for d in router.route(base)]
        routed = base.copy()
        moved = [i for i, name in enumerate(chosen) if name != BASE_EXPERT]
        if moved:
            routed[moved] = encoder.encode([texts[i] for i in moved], [chosen[i] for i in moved])
        encoded = {
            BASE_EXPERT: base,
            entry.name: encoder.encode(texts, [entry.name] * len(texts)),
            ROUTED: routed,
        }
        tables[entry.name] = domain_table(entry.name, index, texts, relevant, encoded)
        routed_to[entry.name] = chosen
        log.info("fusion table for %s: %d train queries", entry.name, len(texts))

    fallback = fit_query_weights(
        [(t.ndcg[BASE_EXPERT], t.features[BASE_EXPERT]) for t in tables.values()]
    )
    routed_rows = _routed_rows(tables, routed_to)
    routed_model = fit_query_weights(list(routed_rows.values()))
    learned = {n: best_weight(t.ndcg[n]) for n, t in tables.items()}
    choice: dict[str, dict[str, Any]] = {}
    for name, weight in learned.items():
        rows = _rows_routed_to(tables, routed_to, name)
        if rows is None:
            continue
        held_out = fit_query_weights([r for d, r in routed_rows.items() if d != name])
        constant = _per_query(QueryWeights.constant(weight), rows)
        model = _per_query(held_out, rows)
        gain = constant - model  # paired, per query
        noise = 2 * float(gain.std(ddof=1)) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
        choice[name] = {
            "constant_weight": weight,
            "queries_routed_here": int(len(gain)),
            "ndcg@10_constant": round(float(constant.mean()), 4),
            "ndcg@10_routed_model": round(float(model.mean()), 4),
            "two_standard_errors": round(float(noise), 4),
            "adopted": "constant" if float(gain.mean()) > max(margin, noise) else "routed_model",
        }
    weights = {
        n: (c["constant_weight"] if c["adopted"] == "constant" else None) for n, c in choice.items()
    }
    return {
        "weights": weights,
        "fallback": fallback,
        "routed": routed_model,
        "choice": choice,
        "cross_validation": cross_validate(tables),
        "train_ndcg": {
            n: {
                "dense": round(float(t.ndcg[n][:, -1].mean()), 4),
                "lexical": round(float(t.ndcg[n][:, 0].mean()), 4),
                "hybrid_constant": round(
                    float(t.ndcg[n][:, list(GRID).index(learned[n])].mean()), 4
                ),
            }
            for n, t in tables.items()
        },
    }


def _routed_rows(
    tables: dict[str, FusionTable], routed_to: dict[str, list[str]]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per domain, its train queries the router sent to an expert (right or wrong)."""
    out = {}
    for name, table in tables.items():
        mask = np.array([c != BASE_EXPERT for c in routed_to[name]])
        if mask.any():
            out[name] = (table.ndcg[ROUTED][mask], table.features[ROUTED][mask])
    return out


def _rows_routed_to(
    tables: dict[str, FusionTable], routed_to: dict[str, list[str]], expert: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Every domain's train queries the router sent to `expert`."""
    ndcg, feats = [], []
    for name, table in tables.items():
        mask = np.array([c == expert for c in routed_to[name]])
        if mask.any():
            ndcg.append(table.ndcg[ROUTED][mask])
            feats.append(table.features[ROUTED][mask])
    return (np.concatenate(ndcg), np.concatenate(feats)) if ndcg else None
