"""Exact inner-product search and per-query nDCG@10, in numpy (fast enough for pilots/val).

The reported tables use `ranx`; this nDCG uses the same linear-gain definition so training
validation and pilot labels agree with the report.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`(rows, scores)`, each `(n_queries, min(k, n_docs))`, best first, by inner product."""
    scores = queries @ docs.T
    k = min(k, docs.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def ndcg_at_k(ranked: np.ndarray, relevant: dict[int, int], k: int = 10) -> float:
    """nDCG@k of one ranking of corpus rows; gain = grade, discount = log2(rank + 1)."""
    return _ndcg([relevant.get(int(r), 0) for r in ranked[:k]], relevant.values(), k)


def per_query_ndcg(
    query_embeddings: np.ndarray, docs: np.ndarray, relevants: list[dict[int, int]], k: int = 10
) -> np.ndarray:
    rows, _ = top_k(query_embeddings, docs, k)
    return np.array([ndcg_at_k(r, rel, k) for r, rel in zip(rows, relevants, strict=True)])


def ndcg_of_ids(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    """nDCG@k of a ranking of document ids (the same definition as `ndcg_at_k`)."""
    return _ndcg([relevant.get(d, 0) for d in ranked[:k]], relevant.values(), k)


def _ndcg(gains: list[int], grades: Iterable[int], k: int) -> float:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    found = np.array(gains, dtype=np.float64)
    ideal = np.sort(np.array(list(grades), dtype=np.float64))[::-1][:k]
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    return float((found * discounts[: len(found)]).sum() / idcg) if idcg > 0 else 0.0
