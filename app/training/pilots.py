"""Pilot embeddings: the router's picture of each expert (paper Algorithm 1, plus tie rule).

`centroid_pilots` (app.core.pilots) is the plain rule; `label_queries` and
`algorithm1_pilots` implement the paper's best-expert relabelling. Only numpy at import.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from app.core.pilots import centroid_pilots

if TYPE_CHECKING:
    from app.data.beir import BenchmarkSet

BASE_LABEL = "__base__"  # a query on which no expert beats the base model


def label_queries(
    scores: Mapping[str, np.ndarray], own_expert: str | None, margin: float | None
) -> list[str]:
    """Label each query with its best expert (per-query nDCG@10 per candidate).

    `scores` maps candidate -> per-query nDCG (include BASE_LABEL for the base model).
    Paper rule (margin None): argmax, ties broken by candidate order (base first, as the
    prototype did). Tie rule: the query's own domain expert keeps the query when it is within
    `margin` of the best score, so weak experts that tie with everyone keep their domain.
    """
    names: list[str] = list(scores)
    matrix = np.stack([np.asarray(scores[n], dtype=np.float64) for n in names], axis=1)
    best = matrix.max(axis=1)
    labels = [names[int(i)] for i in np.argmax(matrix, axis=1)]
    if margin is not None and own_expert is not None and own_expert in scores:
        own = matrix[:, names.index(own_expert)]
        labels = [
            own_expert if own[i] >= best[i] - margin else label for i, label in enumerate(labels)
        ]
    return labels


def algorithm1_pilots(
    domains: Mapping[str, tuple[np.ndarray, Sequence[str]]], k: int = 1
) -> dict[str, np.ndarray]:
    """Group each domain's queries by label, k centroids per (domain, label) group.

    `domains` maps domain -> (base embeddings of its train queries, their labels). Returns
    expert -> stacked pilots; base-labelled queries give no pilots (base has no adapter).
    """
    grouped: dict[str, list[np.ndarray]] = defaultdict(list)
    for _domain, (embeddings, labels) in sorted(domains.items()):
        labels_array = np.asarray(labels)
        for label in sorted(set(labels)):
            if label == BASE_LABEL:
                continue
            grouped[label].append(centroid_pilots(embeddings[labels_array == label], k=k))
    return {name: np.concatenate(blocks) for name, blocks in grouped.items()}


def calibrate_threshold(own_scores: np.ndarray, percentile: float = 5.0) -> float:
    """A low percentile of the expert's own training queries' router score: anything less
    similar than nearly all of its own queries is treated as out of domain."""
    return round(float(np.percentile(np.asarray(own_scores, dtype=np.float64), percentile)), 6)


def pilot_queries(entry: BenchmarkSet, limit: int = 300, salt: str = "pilots") -> list[str]:
    """Up to `limit` of a domain's TRAIN queries (those with a judged-relevant document),
    in a fixed hash order: the expert's pilot set is their routing features."""
    import hashlib

    from app.data.beir import load_qrels, load_queries, positive_qrels

    if entry.train_qrels is None:
        return []
    qrels = positive_qrels(load_qrels(entry.train_qrels))
    queries = load_queries(entry.directory)
    ids = [q for q in qrels if queries.get(q, "").strip()]
    ids.sort(key=lambda q: hashlib.sha1(f"{salt}:{entry.name}:{q}".encode()).hexdigest())
    return [queries[q] for q in ids[:limit]]
