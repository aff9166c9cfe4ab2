"""Router math on tiny hand-placed vectors, so every expected decision is exact."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.router import Router

PILOTS = {
    "aero": np.array([[0.0, 0.0, 1.0], [0.6, 0.8, 0.0]], dtype=np.float32),
    "code": np.array([[0.0, 1.0, 0.0]], dtype=np.float32),
}


def test_mean_aggregation_averages_an_experts_pilots() -> None:
    [decision] = Router(PILOTS, "mean").route(np.array([[0.0, 1.0, 0.0]]))
    assert decision.expert == "code" and not decision.fallback
    assert decision.scores == {"code": 1.0, "aero": pytest.approx(0.4)}
    assert list(decision.scores) == ["code", "aero"]  # ranked best first


def test_max_aggregation_takes_the_nearest_pilot() -> None:
    query = np.array([[0.6, 0.8, 0.0]])
    assert Router(PILOTS, "mean").route(query)[0].expert == "code"  # 0.8 vs mean(0, 1) = 0.5
    [decision] = Router(PILOTS, "max").route(query)
    assert decision.expert == "aero" and decision.scores["aero"] == pytest.approx(1.0)


def test_falls_back_to_base_below_threshold() -> None:
    router = Router(PILOTS, "mean", threshold=0.6)
    [far, near] = router.route(np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert far.fallback and far.expert == "base" and far.top(2) == []
    assert not near.fallback and near.expert == "code"


def test_per_expert_threshold_overrides_global() -> None:
    router = Router(PILOTS, "mean", threshold=0.0, thresholds={"code": 0.999, "aero": None})
    [decision] = router.route(np.array([[0.1, 0.9, 0.0]]) / np.linalg.norm([0.1, 0.9]))
    assert decision.fallback  # code wins but is under its own calibrated threshold


def test_top_n_and_empty_router() -> None:
    [decision] = Router(PILOTS).route(np.array([[1.0, 0.0, 0.0]]))
    assert decision.top(2) == ["aero", "code"]
    [empty] = Router({}).route(np.zeros((1, 3), dtype=np.float32))
    assert empty.expert == "base" and empty.fallback and empty.scores == {}
