"""Pilot embeddings: each expert's picture for the router, in the base encoder's space.

The plain rule is the centroid of an expert's example queries (the paper found more
centroids distract the router); registration over HTTP, training and the benchmarks all
call `centroid_pilots`.
"""

from __future__ import annotations

import numpy as np


def unit_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def centroid_pilots(
    embeddings: np.ndarray, k: int = 1, seed: int = 0, iterations: int = 25
) -> np.ndarray:
    """`(k', 384)` unit centroids of base-encoder query embeddings (k' = min(k, n)).

    k=1 is the normalised mean (the paper found more centroids distract the router); k>1 runs
    spherical k-means with a seeded k-means++ start, so the result is reproducible.
    """
    points = np.asarray(embeddings, dtype=np.float32)
    if points.ndim != 2 or len(points) == 0:
        raise ValueError("need a non-empty (n, dim) matrix of embeddings")
    if k <= 1 or len(points) <= 1:
        return unit_rows(points.mean(axis=0, keepdims=True))
    k = min(k, len(points))
    rng = np.random.default_rng(seed)
    centres = [points[int(rng.integers(len(points)))]]
    for _ in range(1, k):  # k-means++: next centre far (in cosine) from the chosen ones
        distance = np.clip(1 - np.max(points @ np.array(centres).T, axis=1), 0, None)
        total = distance.sum()
        pick = (
            rng.choice(len(points), p=distance / total) if total > 0 else rng.integers(len(points))
        )
        centres.append(points[int(pick)])
    centroids = unit_rows(np.array(centres))
    for _ in range(iterations):
        assign = np.argmax(points @ centroids.T, axis=1)
        updated = np.array(
            [
                points[assign == c].mean(axis=0) if np.any(assign == c) else centroids[c]
                for c in range(k)
            ]
        )
        updated = unit_rows(updated)
        if np.allclose(updated, centroids):
            break
        centroids = updated
    return centroids
