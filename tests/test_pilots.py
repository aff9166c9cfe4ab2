"""Pilot rules on hand-placed vectors: exact, no model."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.router import Router
from app.training.build_pilots import DomainScores, compare_rules, make_pilots
from app.training.pilots import (
    BASE_LABEL,
    algorithm1_pilots,
    calibrate_threshold,
    centroid_pilots,
    label_queries,
)


def unit(*rows: list[float]) -> np.ndarray:
    matrix = np.array(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def test_centroid_is_the_normalised_mean() -> None:
    pilots = centroid_pilots(unit([1, 0, 0], [0, 1, 0]))
    assert pilots.shape == (1, 3)
    np.testing.assert_allclose(pilots[0], [2**-0.5, 2**-0.5, 0], atol=1e-6)


def test_k_centroids_find_separated_clusters() -> None:
    points = unit([1, 0.05, 0], [1, -0.05, 0], [0, 0.05, 1], [0, -0.05, 1])
    pilots = centroid_pilots(points, k=2, seed=3)
    assert pilots.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(pilots, axis=1), 1, atol=1e-6)
    assert sorted(np.argmax(np.abs(pilots), axis=1).tolist()) == [0, 2]
    np.testing.assert_array_equal(pilots, centroid_pilots(points, k=2, seed=3))
    with pytest.raises(ValueError):
        centroid_pilots(np.zeros((0, 3)))


def test_paper_rule_hands_ties_to_base_and_tie_rule_keeps_the_own_expert() -> None:
    scores = {
        BASE_LABEL: np.array([0.5, 0.5, 0.2]),
        "own": np.array([0.5, 0.48, 0.2]),
        "other": np.array([0.5, 0.3, 0.9]),
    }
    assert label_queries(scores, "own", margin=None) == [BASE_LABEL, BASE_LABEL, "other"]
    assert label_queries(scores, "own", margin=0.05) == ["own", "own", "other"]
    assert label_queries(scores, "own", margin=0.0) == ["own", BASE_LABEL, "other"]


def test_algorithm1_groups_by_label_and_drops_base() -> None:
    embeddings = unit([1, 0, 0], [1, 0.2, 0], [0, 0, 1])
    pilots = algorithm1_pilots(
        {"a": (embeddings, ["a", "a", BASE_LABEL]), "b": (unit([0, 1, 0]), ["a"])}
    )
    assert set(pilots) == {"a"}
    assert pilots["a"].shape == (2, 3)  # one centroid per (domain, label) group


def test_tie_rule_recovers_routing_that_the_paper_rule_loses() -> None:
    """Two weak experts that tie with base everywhere: the paper rule leaves them no pilots of
    their own queries, so routing degenerates; the tie rule keeps each domain's centroid."""
    rng = np.random.default_rng(0)

    def domain(axis: int, name: str) -> DomainScores:
        centre = np.zeros(4)
        centre[axis] = 1
        points = unit(*(centre + 0.1 * rng.standard_normal((20, 4))))
        flat = np.full(20, 0.4)
        return DomainScores(
            name,
            [f"{name}{i}" for i in range(20)],
            points,
            {BASE_LABEL: flat, "a": flat.copy(), "b": flat.copy()},
        )

    domains = {"a": domain(0, "a"), "b": domain(1, "b")}
    paper = make_pilots(domains, "paper", 0.0, k=1)
    tie = make_pilots(domains, "tie", 0.02, k=1)
    assert Router(tie).route(domains["b"].embeddings[:1])[0].expert == "b"
    assert Router(tie).route(domains["a"].embeddings[:1])[0].expert == "a"
    assert set(paper) == {"a", "b"}  # fallback centroid keeps both experts routable
    rows = {r["rule"]: r for r in compare_rules(domains, [("paper", 0), ("tie", 0.02)], 1, "mean")}
    assert rows["tie"]["routing_accuracy"] == 1.0


def test_threshold_is_a_low_percentile_of_own_scores() -> None:
    scores = np.linspace(0.2, 0.9, 101)
    assert calibrate_threshold(scores, 5.0) == pytest.approx(0.235)
    router = Router({"a": unit([1, 0])}, thresholds={"a": 0.6})
    near, far = router.route(unit([1, 0.5], [1, 1.5]))  # cosine 0.89 and 0.55
    assert not near.fallback and far.fallback and far.expert == "base"
