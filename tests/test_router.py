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


def test_learned_rule_is_deterministic_and_beats_centroids_where_they_fail() -> None:
    """Two domains whose centroids point the same way but whose queries differ along one
    feature: the centroid rule cannot tell them apart, the fitted rule can; and two fits
    of the same pilot sets are bit-identical (every replica routes alike)."""
    from app.core.router import build_router

    rng = np.random.default_rng(0)
    common = rng.normal(size=16)
    offset = np.zeros(16)
    offset[3] = 0.4

    def domain(sign: float, n: int) -> np.ndarray:
        rows = common + sign * offset + 0.05 * rng.normal(size=(n, 16))
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    pilots = {"a": domain(1.0, 200), "b": domain(-1.0, 60)}
    held = {"a": domain(1.0, 50), "b": domain(-1.0, 50)}
    learned = build_router(pilots, {}, "learned", threshold=-1.0)
    again = build_router(pilots, {}, "learned", threshold=-1.0)
    assert np.array_equal(learned.weights, again.weights)
    assert np.array_equal(learned.biases, again.biases)
    accuracy = np.mean([d.expert == n for n in held for d in learned.route(held[n])])
    assert accuracy >= 0.98
    decision = learned.route(held["b"][:1])[0]
    assert abs(sum(decision.scores.values()) - 1.0) < 1e-5  # probabilities
    # Fallback: far from every expert's centroid, below its own pilots' lowest similarity.
    strict = build_router(pilots, {}, "learned", fallback_percentile=0.0)
    far = -common[None, :] / np.linalg.norm(common)
    assert strict.route(far.astype(np.float32))[0].fallback


def test_learned_rule_with_two_pilots_each_routes_like_nearest_centroid() -> None:
    """An operator may register experts with two pilot queries each: in 384 dimensions the
    fit must not overfit six rows (it once sent every query to one expert)."""
    from app.core.router import build_router

    rng = np.random.default_rng(1)
    dim = 384
    centres = rng.normal(size=(3, dim))
    # Dimensions differ in spread, as hidden states do: a few rows estimate them badly.
    spread = np.exp(rng.normal(size=dim))

    def near(centre: int, n: int) -> np.ndarray:
        return (centres[centre] + 0.4 * spread * rng.normal(size=(n, dim))).astype(np.float32)

    pilots = {name: near(i, 2) for i, name in enumerate("abc")}
    learned = build_router(pilots, {}, "learned", threshold=-1.0)
    centroid = build_router(pilots, {}, "centroid", threshold=-1.0)
    queries = np.concatenate([near(i, 20) for i in range(3)])
    truth = [name for name in "abc" for _ in range(20)]
    learned_hits = np.mean(
        [d.expert == t for d, t in zip(learned.route(queries), truth, strict=True)]
    )
    centroid_hits = np.mean(
        [d.expert == t for d, t in zip(centroid.route(queries), truth, strict=True)]
    )
    assert centroid_hits >= 0.9  # the case is easy ...
    assert learned_hits >= centroid_hits - 0.05  # ... and the fit keeps it so


def test_registry_refits_on_change_and_skips_pilots_of_another_layer(tmp_path) -> None:
    from safetensors.numpy import save

    from app.experts.artifacts import write_expert
    from app.experts.registry import ExpertRegistry

    rng = np.random.default_rng(1)
    weights = save({"x.lora_B.weight": np.ones((2, 2), np.float32)})
    for name, layer in (("a", 4), ("b", None), ("c", 6)):
        pilots = rng.normal(size=(20, 384)).astype(np.float32)
        extra = {} if layer is None else {"pilots": {"layer": layer}}
        write_expert(tmp_path, name, b"{}", weights, pilots, extra=extra)
    registry = ExpertRegistry(tmp_path, rule="learned", routing_layer=4)
    registry.load_all()
    assert registry.router.names == ["a", "b"]  # c's pilots live in another space
    first = registry.router
    registry.remove("b")
    assert registry.router is not first and registry.router.names == ["a"]


def test_routing_skips_unavailable_experts_under_their_own_threshold() -> None:
    import numpy as np

    from app.core.router import Router

    pilots = {"a": np.array([[1.0, 0.0, 0.0]]), "b": np.array([[0.0, 1.0, 0.0]])}
    router = Router(pilots, threshold=0.2)
    near_a = np.array([[0.9, 0.3, 0.0]]) / np.linalg.norm([0.9, 0.3, 0.0])
    [chosen] = router.route(near_a)
    assert chosen.expert == "a" and chosen.passed_over == ()
    [skipped] = router.route(near_a, available={"b"})
    assert skipped.expert == "b" and not skipped.fallback and skipped.passed_over == ("a",)
    assert skipped.top(2) == ["b"]
    only_a = np.array([[1.0, 0.0, 0.0]])
    [fell] = router.route(only_a, available={"b"})  # b's cosine 0 < 0.2: base
    assert fell.fallback and fell.expert == "base" and fell.passed_over == ("a",)
    [none] = router.route(near_a, available=set())
    assert none.fallback and none.passed_over == ("a", "b")
