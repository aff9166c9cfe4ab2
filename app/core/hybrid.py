"""Hybrid ranking: a dense list and a lexical (BM25) list fused by a convex combination.

Each leg's scores are min-max normalised over that leg's own candidate list for the query
(the best candidate 1, the worst 0; a lone candidate 1), and a document missing from a leg
scores 0 on it. The fused score is `w * dense + (1 - w) * lexical` over the union of the two
lists (Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval", TOIS 2023: a
convex combination tuned on a few labelled queries beats reciprocal-rank fusion, which stays
available as `fusion="rrf"`).

The dense weight `w` of a query comes from `QueryWeights` models over evidence the query
carries (one for base-encoder, i.e. fallback, queries; one for routed queries), or from the
routed expert's own constant weight where that won on its train queries; all learned on
train queries only (`rr tune-fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.core.documents import Hit
from app.core.names import BASE_EXPERT

Mode = Literal["hybrid", "dense", "lexical"]
Fusion = Literal["convex", "rrf"]
CANDIDATES = 100  # each leg's depth before fusion
RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al., 2009)
DocKey = tuple[str, str]  # (index, document id)


@dataclass(frozen=True)
class RankedHit:
    hit: Hit
    score: float
    expert: str  # whose encoder embedded the query for this hit ("base" on fallback)
    dense: float | None = None  # the hit's raw score on each leg (None: not in that list)
    lexical: float | None = None


def min_max(scores: Sequence[float]) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.ones_like(values)
    return (values - low) / (high - low)


def convex(
    dense: Sequence[RankedHit], lexical: Sequence[Hit], weight: float, k: int
) -> list[RankedHit]:
    """`weight * dense + (1 - weight) * lexical` of min-max normalised scores, top k."""
    dense_norm = dict(
        zip(_keys(h.hit for h in dense), min_max([h.score for h in dense]), strict=True)
    )
    lexical_norm = dict(zip(_keys(lexical), min_max([h.score for h in lexical]), strict=True))
    return _merge(
        dense,
        lexical,
        lambda key: weight * dense_norm.get(key, 0.0) + (1 - weight) * lexical_norm.get(key, 0.0),
        k,
    )


def rrf(dense: Sequence[RankedHit], lexical: Sequence[Hit], k: int) -> list[RankedHit]:
    """Reciprocal-rank fusion of the two lists (each already best first)."""
    ranks: dict[DocKey, float] = {}
    for order in (list(_keys(h.hit for h in dense)), list(_keys(lexical))):
        for rank, key in enumerate(order):
            ranks[key] = ranks.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
    return _merge(dense, lexical, lambda key: ranks[key], k)


def _keys(hits: Any) -> list[DocKey]:
    return [(h.index, h.id) for h in hits]


def _merge(dense: Sequence[RankedHit], lexical: Sequence[Hit], score: Any, k: int) -> list:
    """Union of both lists, each document once (its first hit on each leg), ranked by
    `score(key)`; ties keep dense order, then lexical order. Only the top k become
    `RankedHit`s: this runs for every hybrid query, over up to 200 candidates."""
    on_dense: dict[DocKey, int] = {}
    order: list[DocKey] = []
    for position, item in enumerate(dense):
        key = (item.hit.index, item.hit.id)
        if key not in on_dense:
            on_dense[key] = position
            order.append(key)
    on_lexical: dict[DocKey, int] = {}
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
            out.append(RankedHit(item.hit, float(fused), item.expert, item.score, lexical_score))
        else:
            hit = lexical[on_lexical[key]]
            out.append(RankedHit(hit, float(fused), expert, None, lexical_score))
    return out


# -- the dense weight per query ----------------------------------------------------------

FEATURES = ("dense_top", "dense_spread", "lexical_share", "terms")


def query_features(
    dense: Sequence[RankedHit], lexical: Sequence[Hit], terms: int
) -> dict[str, float]:
    """Evidence a query carries about which leg to trust, from its two raw lists.

    - dense_top: the best dense cosine; dense_spread: best minus tenth-best cosine;
    - lexical_share: share of the query's terms that the best lexical hit's score implies
      matched, via BM25 per term (best score / terms, squashed);
    - terms: log(1 + number of query terms).
    """
    cosines = [h.score for h in dense[:10]]
    per_term = (lexical[0].score / terms) if (lexical and terms) else 0.0
    return {
        "dense_top": cosines[0] if cosines else 0.0,
        "dense_spread": (cosines[0] - cosines[-1]) if cosines else 0.0,
        "lexical_share": per_term / (1.0 + per_term),
        "terms": math.log1p(terms),
    }


@dataclass(frozen=True)
class QueryWeights:
    """The dense weight of one query: `sigmoid(bias + coef . features)`, clipped to [0, 1].

    Learned on train queries (`rr tune-fusion`); with no coefficients, a constant weight.
    """

    bias: float
    coefs: Mapping[str, float]

    @classmethod
    def constant(cls, weight: float) -> QueryWeights:
        weight = min(max(weight, 1e-6), 1 - 1e-6)
        return cls(math.log(weight / (1 - weight)), {})

    def weight(self, features: Mapping[str, float]) -> float:
        z = self.bias + sum(c * features.get(name, 0.0) for name, c in self.coefs.items())
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    def to_json(self) -> dict[str, Any]:
        return {"bias": self.bias, "coefs": dict(self.coefs)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> QueryWeights:
        return cls(float(raw["bias"]), {str(k): float(v) for k, v in raw["coefs"].items()})


def weights_lookup(
    expert_weights: Mapping[str, float | None],
    fallback: QueryWeights,
    routed: QueryWeights | None = None,
) -> Callable[[str], QueryWeights]:
    """Hybrid's dense weight for a query an encoder embedded: the base model's (fallback)
    queries use the `fallback` model; an expert's, its own weight if it has one, else the
    `routed` model (the fallback model when there is none)."""

    def lookup(encoder: str) -> QueryWeights:
        if encoder == BASE_EXPERT:
            return fallback
        weight = expert_weights.get(encoder)
        if weight is not None:
            return QueryWeights.constant(weight)
        return routed or fallback

    return lookup
