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


def _exact(dirs: dict[str, Path], texts: list[str], adapters: list[str], **options) -> np.ndarray:
    """peft's full mixed-adapter pass: the one-pass shortcut off."""
    from app.shortcuts import ONE_PASS

    exact = LoraEncoder(lambda name: dirs[name], **options)
    exact.shortcuts.switch_off(ONE_PASS, "test: the exact path")
    return exact.encode(texts, adapters)


def test_top_layer_expert_is_served_in_one_pass(adapters_root: str, adapter_a: Path) -> None:
    """Routed at layer 4: the lower layers once, the chooser on their pooled states, then
    each row with its expert (or base, or two of them) in the same pass; equal to peft's
    full passes. An expert that adapts lower layers gets a full pass, still exact."""
    import torch

    from app.encoder.base_model import mean_pool
    from tests.helpers import make_adapter

    top = make_adapter(7, adapters_root, layers=(4, 5))
    dirs = {"top": top, "all": adapter_a}
    encoder = LoraEncoder(lambda name: dirs[name], routing_layer=4)
    seen: list[np.ndarray] = []
    picks = [["top"], [BASE], ["top", "all"], ["all"]]
    routed = encoder.encode_routed(TEXTS, lambda f: seen.append(f) or picks)
    # The chooser saw the pooled states entering layer 4, as a full pass computes them.
    batch = encoder._pad(encoder._tokenize(TEXTS), np.arange(len(TEXTS)))
    with torch.inference_mode():
        states = encoder.model(**batch, output_hidden_states=True).hidden_states[4]
    features = mean_pool(states, batch["attention_mask"]).numpy()
    assert np.abs(seen[0] - features).max() <= 1e-5
    assert np.array_equal(routed.features, seen[0])
    for text, row, vectors in zip(TEXTS, routed.adapters, routed.vectors, strict=True):
        want = _exact(dirs, [text] * len(row), row)
        assert np.abs(vectors - want).max() <= 1e-5
    assert encoder.stats.one_pass_rows == 2 and encoder.stats.exact_rows == 2
    assert encoder.one_pass("top") is True and encoder.one_pass("all") is False
    assert np.abs(routed.vectors[0][0] - encoder.encode(TEXTS[:1])[0]).max() > 0.05
    assert encoder.routing_features(TEXTS).shape == (len(TEXTS), 384)
    encoder.unload("top")
    assert encoder.one_pass("top") is None and "top" not in encoder._bank


def test_all_layer_experts_route_on_token_embeddings(adapter_a: Path, adapter_b: Path) -> None:
    """Routing layer 0: the features are the pooled token embeddings, and experts on all
    six layers still run in one pass, a mixed batch equal to peft's."""
    dirs = {"alpha": adapter_a, "beta": adapter_b}
    encoder = LoraEncoder(lambda name: dirs[name], routing_layer=0)
    mixed = ["alpha", "beta", BASE, "alpha"]
    routed = encoder.encode_routed(TEXTS, lambda f: [[a] for a in mixed])
    assert np.abs(np.concatenate(routed.vectors) - _exact(dirs, TEXTS, mixed)).max() <= 1e-5
    assert encoder.one_pass("alpha") and encoder.stats.one_pass_rows == 3


def test_a_lora_on_the_pooler_still_runs_in_one_pass(adapters_root: str) -> None:
    """`dense` on every layer also matches `pooler.dense` (as `rr train-expert --layers
    all` trains): the pooler never enters a mean-pooled embedding, so one pass serves it."""
    from tests.helpers import make_adapter

    everywhere = make_adapter(21, adapters_root, ("query", "key", "value", "dense"))
    dirs = {"all": everywhere}
    encoder = LoraEncoder(lambda name: dirs[name], routing_layer=0)
    encoder.ensure_resident(["all"])
    assert any("pooler" in path for path, _ in encoder.model.named_modules() if "lora_A" in path)
    routed = encoder.encode_routed(TEXTS, lambda f: [["all"]] * len(f))
    want = _exact(dirs, TEXTS, ["all"] * len(TEXTS))
    assert encoder.one_pass("all") is True
    assert np.abs(np.concatenate(routed.vectors) - want).max() <= 1e-5


def test_one_pass_bank_pads_ranks_and_falls_back_to_peft(
    adapters_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Experts of different ranks share the stacked tables (zero-padded ranks add exactly
    0); if the banked path raises, peft's full pass serves the same vectors."""
    from app.encoder.row_lora import LoraBank
    from app.shortcuts import ONE_PASS
    from tests.helpers import make_adapter

    modules = ("query", "key", "value", "dense")  # the shipped experts' recipe
    dirs = {
        "top1": make_adapter(11, adapters_root, modules, (4, 5)),
        "top2": make_adapter(12, adapters_root, modules, (5,), rank=4),
    }
    mixed = ["top1", "top2", BASE, "top2"]
    reference = _exact(dirs, TEXTS, mixed)
    encoder = LoraEncoder(lambda name: dirs[name])
    assert np.abs(encoder.encode(TEXTS, mixed) - reference).max() <= 1e-5
    assert encoder.stats.one_pass_rows == 3
    # Memory: peft's copy of the LoRA plus the bank's (same sizes, fp32).
    lora = 2 * 8 * (4 * (384 + 384) + (384 + 1536) + (1536 + 384)) * 4
    assert encoder._bank.bytes_of("top1") == lora
    assert encoder.resident_bytes("top1") == 2 * lora

    def broken(*args, **kwargs):
        raise RuntimeError("bank broke")

    monkeypatch.setattr(LoraBank, "rows", broken)
    served = encoder.encode(TEXTS, mixed)
    assert np.abs(served - reference).max() <= 1e-5
    assert encoder.shortcuts.degraded[ONE_PASS] == "RuntimeError: bank broke"
    assert encoder.stats.exact_rows == 3


def test_replicas_route_and_load_alike(adapters_root: str, adapter_a: Path) -> None:
    from app.encoder.replicas import EncoderReplicas
    from tests.helpers import make_adapter

    top = make_adapter(7, adapters_root, layers=(4, 5))
    dirs = {"top": top, "all": adapter_a}
    reference = _exact(dirs, TEXTS, ["top"] * len(TEXTS))
    replicas = EncoderReplicas(lambda name: dirs[name], count=2)
    replicas.ensure_resident(["top", "all"])
    assert all(r.resident() == ["top", "all"] for r in replicas.replicas)
    routed = replicas.encode_routed(TEXTS, lambda f: [["top"]] * len(f), replica=1)
    assert replicas.replicas[1].stats.one_pass_rows == len(TEXTS)
    assert np.abs(np.concatenate(routed.vectors) - reference).max() <= 1e-5
    assert replicas.one_pass("top") is True and replicas.one_pass("all") is False
    replicas.unload("top")
    assert replicas.resident() == ["all"] and replicas.stats.loads == 4
    assert replicas.one_pass("top") is None


def test_documents_at_bf16_agree_with_fp32_or_stay_fp32(monkeypatch) -> None:
    import app.encoder.precision as lora

    encoder = LoraEncoder(lambda name: Path("/none"), document_precision="bf16")
    texts = ["Normal shocks in supersonic nozzle flow.", "csv.reader reads rows of a csv file"]
    fast = encoder.encode(texts, documents=True)
    exact = encoder.encode(texts)  # queries: the exact fp32 path
    assert not np.array_equal(fast, exact)  # bf16 did run
    assert np.min(np.sum(fast * exact, axis=1)) >= lora.DOCUMENT_MIN_COSINE
    assert lora.check_document_precision(encoder) >= lora.DOCUMENT_MIN_COSINE
    assert encoder.document_precision == "bf16"
    with pytest.raises(ValueError):
        encoder.encode(texts, ["some-expert", BASE], documents=True)
    # A precision that disagrees with fp32 is not used: documents stay on the exact path.
    monkeypatch.setattr(lora, "DOCUMENT_MIN_COSINE", 1.01)
    lora.check_document_precision(encoder)
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


def test_plain_base_pass_equals_the_anchor_model(encoder: LoraEncoder) -> None:
    from app.encoder.self_checks import check_plain_base
    from app.shortcuts import PLAIN_BASE_PASS

    assert check_plain_base(encoder) == 0.0
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
    import app.encoder.precision as lora
    from app.encoder.base_model import MEASURE, pick_precision

    encoder = LoraEncoder(lambda name: Path("/none"))
    figures = lora.measure_precision(encoder, rounds=1)
    faster = figures["bf16_ms"] < figures["fp32_ms"]
    assert figures["cosine"] >= lora.QUERY_MIN_COSINE
    assert encoder.precision == figures["chosen"] == ("bf16" if faster else "fp32")
    monkeypatch.setattr(lora, "QUERY_MIN_COSINE", 1.01)
    assert lora.measure_precision(encoder, rounds=1)["chosen"] == "fp32" == encoder.precision
    assert encoder.use_precision("bf16") == "bf16"  # an explicit setting is not measured
    assert pick_precision("auto", "cuda") == MEASURE


def test_bf16_passes_on_pre_cast_weights_equal_autocast(adapters_root: str) -> None:
    """Under bf16 autocast the plain base pass and the one-pass expert rows use weights
    cast to bf16 once: the same values autocast computes with; the self-checks pass and
    the expert rows agree with peft's autocast pass to a bf16 rounding step."""
    from app.encoder.self_checks import check_one_pass, check_plain_base
    from app.shortcuts import PLAIN_BASE_PASS
    from tests.helpers import make_adapter

    top = make_adapter(11, adapters_root, ("query", "key", "value", "dense"), (4, 5))
    encoder = LoraEncoder(lambda name: top, precision="bf16")
    assert check_plain_base(encoder) == 0.0
    assert check_one_pass(encoder) is not None and encoder.shortcuts.degraded == {}
    routed = encoder.encode_routed(TEXTS, lambda f: [["top", BASE]] * len(f))
    assert encoder.stats.one_pass_rows == len(TEXTS)
    base = encoder.encode(TEXTS)
    encoder.shortcuts.switch_off(PLAIN_BASE_PASS, "test: the PeftModel's autocast pass")
    assert np.array_equal(encoder.encode(TEXTS), base)
    exact = encoder.encode(TEXTS, ["top"] * len(TEXTS))  # one-pass needs the plain pass
    assert encoder.stats.exact_rows == len(TEXTS)
    assert np.abs(np.stack([v[0] for v in routed.vectors]) - exact).max() <= 4e-3
    assert np.abs(np.stack([v[1] for v in routed.vectors]) - base).max() <= 4e-3
