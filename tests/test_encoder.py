"""The real encoder: MiniLM + peft LoRA adapters, pooled like sentence-transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.encoder import BASE, LoraEncoder
from app.errors import InvalidAdapter

pytestmark = pytest.mark.slow

TEXTS = [
    "what causes aircraft wing flutter at supersonic speed",
    "python sort a dictionary by value",
    "is vitamin d linked to lower cancer risk",
    "x",
]


@pytest.fixture(scope="module")
def encoder(adapter_a: Path, adapter_b: Path, tmp_path_factory) -> LoraEncoder:
    dirs = {"alpha": adapter_a, "beta": adapter_b}
    return LoraEncoder(lambda name: dirs[name], capacity=2)


def test_base_matches_sentence_transformers(encoder: LoraEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    from app.encoder.base_model import model_path

    reference = SentenceTransformer(str(model_path()), device="cpu").encode(TEXTS)
    ours = encoder.encode(TEXTS)
    assert ours.shape == (len(TEXTS), 384)
    assert np.abs(ours - reference).max() <= 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_expert_embedding_differs_from_base_and_equals_peft(
    encoder: LoraEncoder, adapter_a: Path
) -> None:
    import torch
    from peft import PeftModel

    from app.encoder.base_model import load_base_model, mean_pool

    expert = encoder.encode(TEXTS, ["alpha"] * len(TEXTS))
    base = encoder.encode(TEXTS)
    assert np.abs(expert - base).max() > 0.05  # the adapter really changes the vectors

    reference_model = PeftModel.from_pretrained(load_base_model("cpu"), str(adapter_a)).eval()
    batch = encoder.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = reference_model(**batch).last_hidden_state
    reference = mean_pool(hidden, batch["attention_mask"]).numpy()
    assert np.abs(expert - reference).max() <= 1e-5


def test_mixed_batch_equals_per_expert_batches(encoder: LoraEncoder) -> None:
    adapters = ["alpha", BASE, "beta", "alpha"]
    mixed = encoder.encode(TEXTS, adapters)
    for name in ("alpha", BASE, "beta"):
        alone = encoder.encode(TEXTS, [name] * len(TEXTS))
        rows = [i for i, a in enumerate(adapters) if a == name]
        assert np.abs(mixed[rows] - alone[rows]).max() <= 1e-5


def test_pool_evicts_least_recently_used(adapter_a: Path, adapter_b: Path, tmp_path: Path) -> None:
    third = tmp_path / "gamma"
    shutil.copytree(adapter_a, third)
    dirs = {"alpha": adapter_a, "beta": adapter_b, "gamma": third}
    pool = LoraEncoder(lambda name: dirs[name], capacity=2)
    pool.encode(["a"], ["alpha"])
    pool.encode(["b"], ["beta"])
    pool.encode(["a"], ["alpha"])  # alpha is now the most recently used
    pool.encode(["c"], ["gamma"])
    assert pool.resident() == ["alpha", "gamma"]
    assert pool.stats.loads == 3 and pool.stats.evictions == 1
    # A batch needing more experts than the capacity still works, then trims back.
    out = pool.encode(["a", "b", "c"], ["alpha", "beta", "gamma"])
    assert out.shape == (3, 384) and len(pool.resident()) == 2


def test_adapter_that_does_not_apply_fails_loudly(adapter_a: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = load_file(adapter_a / "adapter_model.safetensors")
    renamed = {k.replace("attention.self", "attention.nowhere"): v for k, v in tensors.items()}
    save_file(renamed, broken / "adapter_model.safetensors")
    config = json.loads((adapter_a / "adapter_config.json").read_text())
    config["target_modules"] = ["nowhere_module"]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    pool = LoraEncoder(lambda name: broken, capacity=2)
    with pytest.raises(InvalidAdapter):
        pool.encode(["text"], ["broken"])
    assert pool.resident() == []


def test_top_layer_expert_reuses_the_routing_pass(adapters_root: str, adapter_a: Path) -> None:
    from tests.helpers import make_adapter

    top = make_adapter(7, adapters_root, layers=(4, 5))
    dirs = {"top": top, "all": adapter_a}
    reference = LoraEncoder(lambda name: dirs[name]).encode(TEXTS, ["top"] * len(TEXTS))
    encoder = LoraEncoder(lambda name: dirs[name], reuse_layer=4)
    encoder.encode(["warm"], ["top"])  # resident: routing passes now keep hidden states
    encoder.encode(TEXTS)  # a plain base pass (say, documents) keeps nothing
    encoder.encode(TEXTS, ["top"] * len(TEXTS))
    assert encoder.stats.reused_rows == 0
    base = encoder.encode(TEXTS, routing=[True] * len(TEXTS))
    reused = encoder.encode(TEXTS, ["top"] * len(TEXTS))
    assert encoder.stats.reused_rows == len(TEXTS)
    assert np.abs(reused - reference).max() <= 1e-5
    assert np.abs(reused - base).max() > 0.05  # the top layers' adapter still applies
    # An expert adapting the lower layers cannot start from the base pass's states.
    encoder.encode(TEXTS, ["all"] * len(TEXTS))
    assert encoder.stats.reused_rows == len(TEXTS)


def test_replicas_share_routing_states_and_adapter_changes(
    adapters_root: str, adapter_a: Path
) -> None:
    from app.encoder.replicas import EncoderReplicas
    from tests.helpers import make_adapter

    top = make_adapter(7, adapters_root, layers=(4, 5))
    dirs = {"top": top, "all": adapter_a}
    reference = LoraEncoder(lambda name: dirs[name]).encode(TEXTS, ["top"] * len(TEXTS))
    replicas = EncoderReplicas(lambda name: dirs[name], count=2, reuse_layer=4)
    replicas.ensure_resident(["top", "all"])
    assert all(r.resident() == ["top", "all"] for r in replicas.replicas)
    replicas.encode(TEXTS, routing=[True] * len(TEXTS), replica=0)  # routing on one worker ...
    reused = replicas.encode(TEXTS, ["top"] * len(TEXTS), replica=1)  # ... the expert's on another
    assert replicas.replicas[1].stats.reused_rows == len(TEXTS)
    assert np.abs(reused - reference).max() <= 1e-5
    replicas.unload("top")
    assert replicas.resident() == ["all"] and replicas.stats.loads == 4
    # Deleted: its next load (new weights, maybe other layers) decides reuse afresh.
    assert not replicas.replicas[0]._hidden.can_start_from("top")


def test_documents_at_bf16_agree_with_fp32_or_stay_fp32(monkeypatch) -> None:
    import app.encoder.lora_encoder as lora

    encoder = LoraEncoder(lambda name: Path("/none"), document_precision="bf16")
    texts = ["Normal shocks in supersonic nozzle flow.", "csv.reader reads rows of a csv file"]
    fast = encoder.encode(texts, documents=True)
    exact = encoder.encode(texts)  # queries: the exact fp32 path
    assert not np.array_equal(fast, exact)  # bf16 did run
    assert np.min(np.sum(fast * exact, axis=1)) >= lora.DOCUMENT_MIN_COSINE
    assert encoder.check_document_precision() >= lora.DOCUMENT_MIN_COSINE
    assert encoder.document_precision == "bf16"
    with pytest.raises(ValueError):
        encoder.encode(texts, ["some-expert", BASE], documents=True)
    # A precision that disagrees with fp32 is not used: documents stay on the exact path.
    monkeypatch.setattr(lora, "DOCUMENT_MIN_COSINE", 1.01)
    encoder.check_document_precision()
    assert encoder.document_precision == "fp32"
    assert np.array_equal(encoder.encode(texts, documents=True), exact)


def test_eval_cache_embeds_documents_as_the_server_does(tmp_path: Path) -> None:
    """`rr eval`'s document cache follows the document precision: a separate cache entry per
    precision (fp32 entries keep their old names), each equal to the server's embedding."""
    from app.data.doc_embeddings import corpus_key, document_embeddings
    from tests.test_training_data import write_dataset

    docs = [("d1", "Nozzles", "Normal shocks in supersonic nozzle flow."), ("d2", "", "csv rows")]
    dataset = write_dataset(tmp_path, "tiny", docs, {"q1": "shock"}, {"test": [("q1", "d1", 1)]})
    encoder = LoraEncoder(lambda name: Path("/none"))
    cache = tmp_path / "cache"
    _, exact = document_embeddings(dataset, encoder, cache)
    assert encoder.use_document_precision("bf16") == "bf16"
    ids, fast = document_embeddings(dataset, encoder, cache)
    assert ids == ["d1", "d2"]
    texts = ["Nozzles Normal shocks in supersonic nozzle flow.", "csv rows"]
    assert np.array_equal(fast, encoder.encode(texts, documents=True))
    assert not np.array_equal(fast, exact)
    assert (
        corpus_key(dataset, 256, "bf16")
        != corpus_key(dataset, 256)
        == corpus_key(dataset, 256, "fp32")
    )
    assert sorted(p.stem for p in cache.glob("*.npy")) == sorted(
        [corpus_key(dataset, 256), corpus_key(dataset, 256, "bf16")]
    )


def test_merged_expert_layers_equal_peft_and_fall_back_to_its_hooks(
    adapters_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reused expert pass runs the top layers on merged weights (W + scale * B @ A), one
    plain pass per expert in the batch: equal to peft's full pass within 1e-5, also for a
    mixed batch; if the merged path raises, peft's hooks serve the same vectors."""
    from app.encoder.merged_experts import MergedTopLayers
    from app.shortcuts import HIDDEN_STATE_REUSE, MERGED_EXPERT_LAYERS
    from tests.helpers import make_adapter

    modules = ("query", "key", "value", "dense")  # the shipped experts' recipe
    dirs = {f"top{i}": make_adapter(10 + i, adapters_root, modules, (4, 5)) for i in (1, 2)}
    mixed = ["top1", "top2", "top1", "top2"]
    reference = LoraEncoder(lambda name: dirs[name]).encode(TEXTS, mixed)
    encoder = LoraEncoder(lambda name: dirs[name], reuse_layer=4)
    assert encoder.check_reuse() is not None
    assert encoder.shortcuts.degraded == {}
    runs = []
    real_run = MergedTopLayers.run
    monkeypatch.setattr(
        MergedTopLayers, "run", lambda self, *a: runs.append(a[2]) or real_run(self, *a)
    )
    encoder.ensure_resident(["top1", "top2"])
    encoder.encode(TEXTS, routing=[True] * len(TEXTS))
    merged = encoder.encode(TEXTS, mixed)
    assert sorted(sum(runs, [])) == sorted(mixed) and encoder.stats.reused_rows == len(TEXTS)
    assert np.abs(merged - reference).max() <= 1e-5
    # Memory of a resident expert: its LoRA plus two layers' merged Linear weights.
    layer_weights = 4 * 384 * 384 + 2 * 384 * 1536
    assert encoder._merged.bytes_of("top1") == 2 * layer_weights * 4
    assert encoder.resident_bytes("top1") > encoder._merged.bytes_of("top1")
    encoder.unload("top1")
    assert not encoder._merged.has("top1") and encoder.resident_bytes("top1") == 0

    def broken(self, *args):
        raise RuntimeError("merged layers broke")

    monkeypatch.setattr(MergedTopLayers, "run", broken)
    encoder.encode(TEXTS, routing=[True] * len(TEXTS))
    hooks = encoder.encode(TEXTS, mixed)
    assert np.abs(hooks - reference).max() <= 1e-5
    assert MERGED_EXPERT_LAYERS in encoder.shortcuts.degraded
    assert encoder.shortcuts.enabled(HIDDEN_STATE_REUSE)


def test_plain_base_pass_equals_the_anchor_model(encoder: LoraEncoder) -> None:
    from app.shortcuts import PLAIN_BASE_PASS

    assert encoder.check_plain_base() == 0.0
    assert encoder.shortcuts.enabled(PLAIN_BASE_PASS)
    tokens = encoder.tokenizer(TEXTS, truncation=True, max_length=256)
    batch = encoder._pad(tokens, np.arange(len(TEXTS)))
    assert encoder._plain(**batch).last_hidden_state.shape[0] == len(TEXTS)
    # It shares the served model's weights: no second copy in memory.
    served = {p.data_ptr() for p in encoder.model.parameters()}
    assert all(p.data_ptr() in served for p in encoder._plain.parameters())


def test_query_precision_by_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` on bf16 hardware: bf16 only if it is faster on the probe batch and agrees with
    fp32; a disagreeing or slower bf16 leaves queries on fp32."""
    import app.encoder.lora_encoder as lora
    from app.encoder.base_model import MEASURE, pick_precision

    encoder = LoraEncoder(lambda name: Path("/none"))
    figures = encoder.measure_precision(rounds=1)
    faster = figures["bf16_ms"] < figures["fp32_ms"]
    assert figures["cosine"] >= lora.QUERY_MIN_COSINE
    assert encoder.precision == figures["chosen"] == ("bf16" if faster else "fp32")
    monkeypatch.setattr(lora, "QUERY_MIN_COSINE", 1.01)
    assert encoder.measure_precision(rounds=1)["chosen"] == "fp32" == encoder.precision
    assert encoder.use_precision("bf16") == "bf16"  # an explicit setting is not measured
    assert pick_precision("auto", "cuda") == MEASURE


def test_bf16_passes_on_pre_cast_weights_equal_autocast(adapters_root: str) -> None:
    """Under bf16 autocast the plain base pass and the merged expert layers use weights cast
    to bf16 once: the same values autocast computes with, so the same vectors."""
    from app.shortcuts import MERGED_EXPERT_LAYERS, PLAIN_BASE_PASS
    from tests.helpers import make_adapter

    top = make_adapter(11, adapters_root, ("query", "key", "value", "dense"), (4, 5))
    encoder = LoraEncoder(lambda name: top, precision="bf16", reuse_layer=4)
    assert encoder.check_plain_base() == 0.0
    assert encoder.check_reuse() is not None and encoder.shortcuts.degraded == {}
    encoder.ensure_resident(["top"])  # routing passes now keep their hidden states
    base = encoder.encode(TEXTS, routing=[True] * len(TEXTS))
    expert = encoder.encode(TEXTS, ["top"] * len(TEXTS))
    assert encoder.stats.reused_rows == len(TEXTS)
    assert encoder._merged.bytes_of("top") == 3 * 2 * (4 * 384 * 384 + 2 * 384 * 1536) * 2
    encoder.shortcuts.switch_off(PLAIN_BASE_PASS, "test: the PeftModel's autocast pass")
    encoder.shortcuts.switch_off(MERGED_EXPERT_LAYERS, "test: peft's hooks")
    assert np.array_equal(encoder.encode(TEXTS, routing=[True] * len(TEXTS)), base)
    assert np.abs(encoder.encode(TEXTS, ["top"] * len(TEXTS)) - expert).max() <= 4e-3
