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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.core.documents import Hit
from app.core.legs import RRF_K, Leg
from app.core.names import BASE_EXPERT

Mode = Literal["hybrid", "dense", "lexical"]
Fusion = Literal["convex", "rrf"]
CANDIDATES = 100  # each leg's depth before fusion


@dataclass(frozen=True)
class RankedHit:
    hit: Hit
    score: float
    expert: str  # whose encoder embedded the query for this hit ("base" on fallback)
    dense: float | None = None  # the hit's raw score on each leg (None: not in that list)
    lexical: float | None = None


def min_max(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return values
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.ones_like(values)
    return (values - low) / (high - low)


def convex(dense: Leg, lexical: Leg, weight: float, k: int) -> list[RankedHit]:
    """`weight * dense + (1 - weight) * lexical` of min-max normalised scores, top k."""
    union = _Union.of(dense, lexical)
    dense_norm = _pick(min_max(dense.scores), union.dense_last, 0.0)
    lexical_norm = _pick(min_max(lexical.scores), union.lexical_last, 0.0)
    return _top(dense, lexical, union, weight * dense_norm + (1 - weight) * lexical_norm, k)


def rrf(dense: Leg, lexical: Leg, k: int) -> list[RankedHit]:
    """Reciprocal-rank fusion of the two lists (each already best first)."""
    union = _Union.of(dense, lexical)
    ranks = np.concatenate([np.arange(len(dense)), np.arange(len(lexical))])
    return _top(dense, lexical, union, union.sums(1.0 / (RRF_K + ranks + 1)), k)


@dataclass(frozen=True)
class _Union:
    """Both lists' documents, each once: the dense list's in its order, then the lexical
    list's others in theirs; for each, its first and last position on each list (-1: not
    on it). A document's first hit on a leg is the one kept, as before arrays."""

    dense_first: np.ndarray
    dense_last: np.ndarray
    lexical_first: np.ndarray
    lexical_last: np.ndarray
    _order: np.ndarray  # the occurrences (dense, then lexical) by document, then position
    _document: np.ndarray  # of each occurrence in that order: its document (sorted by key)
    _seen: np.ndarray  # the documents (sorted by key) in union order

    @classmethod
    def of(cls, dense: Leg, lexical: Leg) -> _Union:
        n_dense = len(dense)
        keys = np.concatenate([dense.keys, lexical.keys])
        if not len(keys):
            none = np.zeros(0, dtype=np.int64)
            return cls(none, none, none, none, none, none, none)
        order = np.argsort(keys, kind="stable")  # one document's occurrences together
        ordered = keys[order]
        new = np.empty(len(keys), dtype=bool)
        new[0], new[1:] = True, ordered[1:] != ordered[:-1]
        starts = np.flatnonzero(new)
        on_dense = order < n_dense
        past = len(keys)  # a position on neither list
        dense_first = np.minimum.reduceat(np.where(on_dense, order, past), starts)
        dense_last = np.maximum.reduceat(np.where(on_dense, order, -1), starts)
        lexical_first = np.minimum.reduceat(np.where(on_dense, past, order - n_dense), starts)
        lexical_last = np.maximum.reduceat(np.where(on_dense, -1, order - n_dense), starts)
        dense_first[dense_first == past] = -1
        lexical_first[lexical_first == past] = -1
        seen = np.argsort(np.where(dense_first >= 0, dense_first, n_dense + lexical_first))
        return cls(
            dense_first[seen],
            dense_last[seen],
            lexical_first[seen],
            lexical_last[seen],
            order,
            np.cumsum(new) - 1,
            seen,
        )

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per document, the sum of `values` (one per occurrence: dense, then lexical)
        added in that order, as a running sum would (bincount adds one at a time)."""
        if not len(values):
            return values
        totals = np.bincount(self._document, weights=values[self._order])
        return totals[self._seen]


def _pick(values: np.ndarray, at: np.ndarray, missing: float) -> np.ndarray:
    """values[at], `missing` where at is -1 (a document not on that list)."""
    if not len(values):
        return np.full(len(at), missing)
    return np.where(at >= 0, values[at], missing)


def _top(dense: Leg, lexical: Leg, union: _Union, fused: np.ndarray, k: int) -> list[RankedHit]:
    """The top k of `union` by `fused` (ties keep union order) as `RankedHit`s: the only
    objects fusion builds."""
    top = np.argsort(-fused, kind="stable")[:k]
    on_dense, on_lexical = union.dense_first[top], union.lexical_first[top]
    entries = np.where(
        on_dense >= 0, _pick(dense.entries, on_dense, 0), _pick(lexical.entries, on_lexical, 0)
    ).astype(np.int64)
    names = dense.pool.experts
    lead = dense.expert(0) if len(dense) else ""
    experts = _pick(dense.experts, on_dense, 0).astype(np.int64).tolist()
    return [
        RankedHit(
            hit,
            score,
            names[expert] if d >= 0 else lead,
            dense_score if d >= 0 else None,
            lexical_score if lx >= 0 else None,
        )
        for hit, score, d, lx, expert, dense_score, lexical_score in zip(
            dense.pool.hits(entries),
            fused[top].tolist(),
            on_dense.tolist(),
            on_lexical.tolist(),
            experts,
            # Each hit's own cosine: with several encoders the dense leg ranks by reciprocal
            # rank, and its scores are those sums, not cosines.
            _pick(dense.pool.scores[dense.entries], on_dense, 0.0).tolist(),
            _pick(lexical.scores, on_lexical, 0.0).tolist(),
            strict=True,
        )
    ]


# -- the dense weight per query ----------------------------------------------------------

FEATURES = ("dense_top", "dense_spread", "lexical_share", "terms")


def query_features(dense: Leg, lexical: Leg, terms: int) -> dict[str, float]:
    """Evidence a query carries about which leg to trust, from its two raw lists.

    - dense_top: the best dense cosine; dense_spread: best minus tenth-best cosine;
    - lexical_share: share of the query's terms that the best lexical hit's score implies
      matched, via BM25 per term (best score / terms, squashed);
    - terms: log(1 + number of query terms).
    """
    cosines = dense.scores[:10].tolist()
    per_term = (float(lexical.scores[0]) / terms) if (len(lexical) and terms) else 0.0
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
    gated: Collection[str] = (),
) -> Callable[[str], QueryWeights]:
    """Hybrid's dense weight for a query an encoder embedded: the base model's (fallback)
    queries use the `fallback` model; an expert's, its own weight if it has one, else the
    `routed` model (the fallback model when there is none). A `gated` expert's queries are
    the base encoder's (its adapter is not used): the fallback model's too."""

    def lookup(encoder: str) -> QueryWeights:
        if encoder == BASE_EXPERT or encoder in gated:
            return fallback
        weight = expert_weights.get(encoder)
        if weight is not None:
            return QueryWeights.constant(weight)
        return routed or fallback

    return lookup
