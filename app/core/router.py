"""Pure numpy router: query (base-encoder space) -> expert, by similarity to pilots.

Each expert owns one or more pilot vectors. A query's score for an expert is the mean
(paper) or max (released code) of its cosine similarities to that expert's pilots. The best
expert wins unless its score is below its fallback threshold; then the decision is a
fallback to the base encoder (the query belongs to no known domain).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from app.core.names import BASE_EXPERT

Aggregation = Literal["mean", "max"]


@dataclass(frozen=True)
class RoutingDecision:
    expert: str  # the chosen expert, or "base" on fallback
    scores: dict[str, float]  # every expert's aggregated score, best first
    fallback: bool
    threshold: float | None = None  # the best expert's fallback threshold (below: fallback)

    def top(self, n: int) -> list[str]:
        """The n best experts (fallback decisions have none)."""
        return [] if self.fallback else list(self.scores)[:n]


class Router:
    """Immutable: build a new Router when the expert set changes (lock-free reads)."""

    def __init__(
        self,
        pilots: Mapping[str, np.ndarray],
        aggregation: Aggregation = "mean",
        threshold: float = 0.0,
        thresholds: Mapping[str, float | None] | None = None,
    ) -> None:
        self.names = sorted(pilots)
        self.aggregation = aggregation
        limits = thresholds or {}
        self.thresholds = np.array(
            [threshold if limits.get(n) is None else float(limits[n]) for n in self.names],  # type: ignore[arg-type]
            dtype=np.float32,
        )
        blocks = [
            np.asarray(pilots[n], dtype=np.float32).reshape(-1, _dim(pilots)) for n in self.names
        ]
        self.counts = np.array([len(b) for b in blocks], dtype=np.int64)
        self.matrix = np.concatenate(blocks) if blocks else np.zeros((0, 1), np.float32)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.names)

    def score(self, queries: np.ndarray) -> np.ndarray:
        """`(n_queries, n_experts)` aggregated similarity, columns in `self.names` order."""
        if not self.names:
            return np.zeros((len(queries), 0), dtype=np.float32)
        sims = np.asarray(queries, dtype=np.float32) @ self.matrix.T
        if self.aggregation == "max":
            return np.maximum.reduceat(sims, self.starts, axis=1)
        return np.add.reduceat(sims, self.starts, axis=1) / self.counts

    def route(self, queries: np.ndarray) -> list[RoutingDecision]:
        scores = self.score(queries)
        decisions = []
        for row in scores:
            order = np.argsort(-row, kind="stable")
            ranked = {self.names[i]: round(float(row[i]), 6) for i in order}
            if not self.names:
                decisions.append(RoutingDecision(BASE_EXPERT, {}, True))
                continue
            best = int(order[0])
            limit = float(self.thresholds[best])
            fallback = bool(row[best] < limit)
            expert = BASE_EXPERT if fallback else self.names[best]
            decisions.append(RoutingDecision(expert, ranked, fallback, round(limit, 6)))
        return decisions


def _dim(pilots: Mapping[str, np.ndarray]) -> int:
    first = next(iter(pilots.values()), None)
    return 1 if first is None else int(np.asarray(first).shape[-1])
