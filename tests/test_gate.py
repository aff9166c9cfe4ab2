"""The expert gate's rule (app/evaluation/gate.py): the adapter stays on only for a gain in
hybrid nDCG@10 beyond two standard errors of the paired per-query differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.evaluation.gate import MIN_QUERIES, decide
from tests.helpers import make_adapter


def test_a_clear_gain_keeps_the_adapter() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=60)
    gate = decide(base + 0.05 + rng.normal(0, 0.02, size=60), base)
    assert gate["use_adapter"] and gate["gain"] > 2 * gate["standard_error"]
    assert gate["queries"] == 60


def test_a_gain_within_the_noise_or_a_loss_turns_it_off() -> None:
    rng = np.random.default_rng(4)
    base = rng.uniform(0.2, 0.8, size=60)
    noisy = decide(base + 0.02 + rng.normal(0, 0.2, size=60), base)
    assert 0 < noisy["gain"] < 2 * noisy["standard_error"] and not noisy["use_adapter"]
    assert not decide(base - 0.05, base)["use_adapter"]


def test_too_few_queries_are_no_evidence() -> None:
    few = np.full(MIN_QUERIES - 1, 0.5)
    assert not decide(few + 0.3, few)["use_adapter"]
    assert not decide(np.zeros(0), np.zeros(0))["use_adapter"]


def _dataset(root: Path, queries: int = 40) -> Path:
    """A small BEIR set: one document and one train query per topic word."""
    import json

    directory = root / "tiny"
    (directory / "qrels").mkdir(parents=True)
    topics = [f"topic{i} word{i % 7} item{i % 5}" for i in range(queries)]
    docs = [
        {"_id": f"d{i}", "title": "", "text": f"about {t} and more"} for i, t in enumerate(topics)
    ]
    (directory / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    rows = [{"_id": f"q{i}", "text": f"what is {t}"} for i, t in enumerate(topics)]
    (directory / "queries.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(queries)]
    (directory / "qrels" / "train.tsv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("identity", [True, False])
def test_the_gate_compares_both_arms_on_the_held_out_slice(tmp_path: Path, identity: bool) -> None:
    """The real encoder and a real adapter through the gateway's retrieval core: an
    identity adapter gains exactly nothing, so it is switched off."""
    from app.core.hybrid import QueryWeights
    from app.evaluation.gate import gate_expert
    from app.experts.artifacts import read_expert, write_expert
    from app.training.build_pilots import expert_encoder

    dataset = _dataset(tmp_path)
    adapter = make_adapter(5, str(tmp_path / "adapters"), identity=identity)
    extra = {
        "dataset": "tiny",
        "train_qrels": "qrels/train.tsv",
        "training": {"seed": 13, "held_out_fraction": 0.25},
    }
    write_expert(
        tmp_path / "experts",
        "tiny",
        (adapter / "adapter_config.json").read_bytes(),
        (adapter / "adapter_model.safetensors").read_bytes(),
        np.zeros((0, 384), np.float32),
        extra=extra,
    )
    expert = read_expert(tmp_path / "experts" / "tiny")
    encoder = expert_encoder(tmp_path / "experts")
    gate = gate_expert(
        expert, dataset, encoder, tmp_path / "cache", lambda _e: QueryWeights.constant(0.5)
    )
    assert gate["queries"] == 10  # a quarter of 40, the slice training held out
    assert 0 < gate["hybrid_ndcg@10_base"] <= 1
    if identity:
        assert gate["gain"] == 0 and not gate["use_adapter"]
    else:  # the decision is the rule applied to what was measured
        se = gate["standard_error"]
        assert gate["use_adapter"] == (se is not None and gate["gain"] > 2 * se)


def test_a_gated_expert_takes_the_base_encoders_fusion_weights() -> None:
    from app.core.hybrid import QueryWeights, weights_lookup

    fallback, routed = QueryWeights.constant(0.3), QueryWeights.constant(0.6)
    lookup = weights_lookup({"on": 0.9, "off": 0.9}, fallback, routed, gated={"off"})
    assert lookup("on") == QueryWeights.constant(0.9)
    assert lookup("off") is fallback and lookup("base") is fallback


def test_the_gate_travels_with_the_expert(tmp_path: Path) -> None:
    """A replica writes an expert from the change log's fields (extra among them): the
    decision comes back from extra["gate"]."""
    from app.experts.artifacts import read_expert, write_expert
    from tests.helpers import write_lora

    adapter = write_lora(2, tmp_path / "adapters")
    files = [
        (adapter / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")
    ]
    pilots = np.zeros((0, 384), np.float32)
    for name, extra, expected in (
        ("gated", {"gate": {"use_adapter": False}}, False),
        ("kept", {"gate": {"use_adapter": True}}, True),
        ("never-gated", {}, True),
    ):
        write_expert(tmp_path / "experts", name, *files, pilots, extra=extra)
        assert read_expert(tmp_path / "experts" / name).spec.use_adapter is expected
