"""`rr tune-fusion`'s learning: weights from grid tables of train queries."""

from __future__ import annotations

import numpy as np

from app.core.hybrid import FEATURES, QueryWeights
from app.training.fusion import GRID, _objective, best_weight, fit_query_weights


def _table(best_at: np.ndarray) -> np.ndarray:
    """Per query, nDCG 1 at its best grid weight falling off linearly to 0."""
    return np.clip(1 - np.abs(GRID[None, :] - best_at[:, None]) * 2, 0, 1)


def test_best_weight_prefers_the_middle_on_ties() -> None:
    flat = np.ones((3, len(GRID)))
    assert best_weight(flat) == 0.5
    assert best_weight(_table(np.array([0.8, 0.8, 0.8]))) == 0.8


def test_model_learns_a_weight_that_follows_the_evidence() -> None:
    rng = np.random.default_rng(0)
    tables = []
    for _ in range(3):  # domains
        dense_wins = rng.random(60) < 0.5
        feats = rng.normal(0, 0.05, (60, len(FEATURES)))
        feats[:, FEATURES.index("dense_top")] += np.where(dense_wins, 0.8, 0.3)
        tables.append((_table(np.where(dense_wins, 0.9, 0.1)), feats))
    model = fit_query_weights(tables)
    high = dict.fromkeys(FEATURES, 0.0) | {"dense_top": 0.8}
    low = dict.fromkeys(FEATURES, 0.0) | {"dense_top": 0.3}
    assert model.weight(high) > 0.7 and model.weight(low) < 0.3
    constant = best_weight(np.concatenate([t for t, _ in tables]))
    assert _objective(model, tables) > _objective(QueryWeights.constant(constant), tables) + 0.2
