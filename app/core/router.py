"""Pure numpy router: routing features -> expert, from each expert's pilot set.

Each expert owns a pilot set: the routing features (the pooled states entering the routing
layer) of sample training queries of its domain. Rules:
- `learned` (the default): one pilot vector and bias per expert fitted on all the sets
  (`router_fit`, a softmax regression); the scores are the softmax probabilities.
- `centroid`: the mean of the cosines to a set's pilots (the paper's rule; with the
  paper's one centroid pilot per expert, the cosine to it); with aggregation `max`, to the
  nearest pilot of the set (the released code's rule).
The best expert wins unless the query is less similar to that expert's centroid than its
fallback threshold; then the decision is a fallback to the base encoder (the query belongs
to no known domain). Thresholds come from the expert (an operator's override), else from a
low percentile of its own pilots' similarity to its centroid, else the global setting.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.core.names import BASE_EXPERT

Aggregation = Literal["mean", "max"]
Rule = Literal["learned", "centroid"]


@dataclass(frozen=True)
class RoutingDecision:
    expert: str  # the chosen expert, or "base" on fallback
    scores: dict[str, float]  # every expert's score, best first
    fallback: bool
    threshold: float | None = None  # the best expert's fallback threshold (on its centroid)
    # Better-scoring experts not chosen because their index holds no documents, best first.
    passed_over: tuple[str, ...] = ()
    unavailable: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def top(self, n: int) -> list[str]:
        """The n best experts that can answer (fallback decisions have none)."""
        if self.fallback:
            return []
        return [name for name in self.scores if name not in self.unavailable][:n]


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


class Router:
    """Immutable: build a new Router when the expert set changes (lock-free reads)."""

    def __init__(
        self,
        pilots: Mapping[str, np.ndarray],
        aggregation: Aggregation = "mean",
        threshold: float = 0.0,
        thresholds: Mapping[str, float | None] | None = None,
        rule: Rule = "centroid",
        fallback_percentile: float | None = None,
    ) -> None:
        """`pilots`: each expert's pilot set `(n, dim)`; `thresholds`: per-expert overrides;
        `fallback_percentile`: experts without one fall back below this percentile of their
        own pilots' cosine to their centroid (None: `threshold`)."""
        self.names = sorted(pilots)
        self.aggregation = aggregation
        self.rule: Rule = rule if len(self.names) > 1 else "centroid"
        dim = _dim(pilots)
        sets = [np.asarray(pilots[n], dtype=np.float32).reshape(-1, dim) for n in self.names]
        self.centroids = (
            _unit(np.stack([s.mean(axis=0) for s in sets])) if sets else np.zeros((0, dim))
        )
        self.counts = np.array([len(s) for s in sets], dtype=np.int64)
        self.matrix = np.concatenate(sets) if sets else np.zeros((0, dim), np.float32)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.weights: np.ndarray | None = None
        self.biases: np.ndarray | None = None
        if self.rule == "learned":
            from app.core.router_fit import fit_linear_router

            self.weights, self.biases = fit_linear_router(dict(zip(self.names, sets, strict=True)))
        limits = thresholds or {}
        self.thresholds = np.zeros(len(self.names), dtype=np.float32)
        for column, (name, own) in enumerate(zip(self.names, sets, strict=True)):
            override = limits.get(name)
            if override is not None:
                self.thresholds[column] = override
            elif fallback_percentile is None or len(own) < 2:
                self.thresholds[column] = threshold
            else:  # what `route` compares, for the expert's own pilots
                own_scores = self._fallback_similarity(own)[:, column]
                self.thresholds[column] = np.percentile(own_scores, fallback_percentile)

    def __len__(self) -> int:
        return len(self.names)

    def score(self, queries: np.ndarray) -> np.ndarray:
        """`(n_queries, n_experts)` scores, columns in `self.names` order."""
        queries = np.asarray(queries, dtype=np.float32)
        if not self.names:
            return np.zeros((len(queries), 0), dtype=np.float32)
        if self.weights is not None and self.biases is not None:
            logits = queries @ self.weights.T + self.biases
            logits -= logits.max(axis=1, keepdims=True)
            probabilities = np.exp(logits)
            return probabilities / probabilities.sum(axis=1, keepdims=True)
        sims = queries @ self.matrix.T
        if self.aggregation == "max":
            return np.maximum.reduceat(sims, self.starts, axis=1)
        return np.add.reduceat(sims, self.starts, axis=1) / self.counts

    def _fallback_similarity(
        self, queries: np.ndarray, scores: np.ndarray | None = None
    ) -> np.ndarray:
        """What fallback compares with the thresholds: the aggregated score (centroid
        rule) or, beside the learned rule's probabilities, the cosine to each centroid."""
        if self.weights is not None:
            return _unit(np.asarray(queries, dtype=np.float32)) @ self.centroids.T
        return self.score(queries) if scores is None else scores

    def route(
        self, queries: np.ndarray, available: Collection[str] | None = None
    ) -> list[RoutingDecision]:
        """Each query's decision; `available`: the experts that may be chosen (those whose
        index can answer: an empty index would answer nothing). The best available expert
        then wins, under its own fallback threshold; the better ones passed over are named."""
        scores = self.score(queries)
        if not self.names:
            return [RoutingDecision(BASE_EXPERT, {}, True) for _ in range(len(queries))]
        similarity = self._fallback_similarity(queries, scores)
        allowed = np.ones(len(self.names), dtype=bool)
        if available is not None:
            allowed = np.array([name in available for name in self.names], dtype=bool)
        unavailable = frozenset(n for n, ok in zip(self.names, allowed, strict=True) if not ok)
        decisions = []
        for row, near in zip(scores, similarity, strict=True):
            order = np.argsort(-row, kind="stable")
            ranked = {self.names[i]: round(float(row[i]), 6) for i in order}
            usable = [int(i) for i in order if allowed[i]]
            best = usable[0] if usable else int(order[0])
            above = order if not usable else order[: int(np.flatnonzero(order == best)[0])]
            passed = tuple(self.names[i] for i in above if not allowed[i])
            limit = float(self.thresholds[best])
            fallback = not usable or bool(near[best] < limit)
            expert = BASE_EXPERT if fallback else self.names[best]
            decisions.append(
                RoutingDecision(expert, ranked, fallback, round(limit, 6), passed, unavailable)
            )
        return decisions


def _dim(pilots: Mapping[str, np.ndarray]) -> int:
    first = next(iter(pilots.values()), None)
    return 1 if first is None else int(np.asarray(first).shape[-1])


def build_router(
    pilots: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float | None],
    rule: Rule = "learned",
    aggregation: Aggregation = "mean",
    threshold: float = 0.0,
    fallback_percentile: float | None = None,
) -> Router:
    """The router the gateway serves, from its experts' pilot sets: the registry and
    `rr eval` both build it here, so the eval measures what ships."""
    return Router(pilots, aggregation, threshold, thresholds, rule, fallback_percentile)
