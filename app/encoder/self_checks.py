"""Start-up self-checks of the encoder's shortcuts against their exact paths.

Each compares a shortcut's output with the exact path's on probe texts and switches the
shortcut off for the process when they differ (or the check raises): a failed check costs
speed, never a wrong vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from app.encoder.base import BASE
from app.shortcuts import ONE_PASS, PLAIN_BASE_PASS

if TYPE_CHECKING:
    from app.encoder.lora_encoder import LoraEncoder

PROBE_TEXTS = (
    "what causes aircraft wing flutter at supersonic speed",
    "python sort a dictionary by value",
    "x",
)
# The one-pass path must equal a full peft pass: within float32 rounding, or a few bf16
# rounding steps when the passes run under bf16 autocast.
ONE_PASS_TOLERANCE = {"fp32": 1e-5, "bf16": 4e-3}
# A random adapter that exists only while the check runs.
PROBE_ADAPTER = "__one_pass_probe__"


def check_plain_base(encoder: LoraEncoder, texts: Sequence[str] = PROBE_TEXTS) -> float:
    """The plain base pass must equal the anchor-only PeftModel's (the anchor adds exactly
    zero, and no banked delta leaks into base rows); if not, base passes go through peft
    (and the one-pass path, which runs on the plain model, is off too)."""
    torch = encoder._torch
    tokens = encoder._tokenize(texts)
    batch = encoder._pad(tokens, np.arange(len(texts)))
    try:
        with encoder._lock, torch.inference_mode(), encoder._autocast():
            plain = encoder._plain_model()(**batch).last_hidden_state
            exact = encoder.model(**batch).last_hidden_state
        difference = float((plain - exact).abs().max())
    except Exception as exc:
        encoder.shortcuts.switch_off(PLAIN_BASE_PASS, f"self-check raised {exc!r}")
        return float("nan")
    if not difference <= 1e-6:
        reason = f"self-check max abs diff {difference:.3g} > 1e-06"
        encoder.shortcuts.switch_off(PLAIN_BASE_PASS, reason)
    return difference


def check_one_pass(encoder: LoraEncoder, texts: Sequence[str] = PROBE_TEXTS) -> float | None:
    """A random adapter on the layers from `routing_layer` up, served in one pass (routed,
    mixed with base rows and a row with two adapters, and through `encode`), against
    peft's full pass; the routing features against a full base pass's hidden states.
    Switches ONE_PASS off if any differs beyond tolerance or the check raises. Returns the
    largest max abs difference, or None when the shortcut is off already."""
    if not encoder._one_pass_on:
        return None
    tolerance = ONE_PASS_TOLERANCE.get(encoder.precision, ONE_PASS_TOLERANCE["fp32"])
    counted = dataclasses.replace(encoder.stats)  # the probe's rows are no user's
    try:
        with encoder._lock:
            encoder.strict = True
            difference = _one_pass_difference(encoder, list(texts))
    except Exception as exc:
        encoder.shortcuts.switch_off(ONE_PASS, f"self-check raised {type(exc).__name__}: {exc}")
        return None
    finally:
        encoder.strict = False
        for field in dataclasses.fields(counted):
            setattr(encoder.stats, field.name, getattr(counted, field.name))
    if not difference <= tolerance:  # NaN fails too
        reason = f"self-check max abs diff {difference:.3g} > {tolerance:g}"
        encoder.shortcuts.switch_off(ONE_PASS, reason)
    return difference


def _one_pass_difference(encoder: LoraEncoder, texts: list[str]) -> float:
    torch = encoder._torch
    tokens = encoder._tokenize(texts)
    batch = encoder._pad(tokens, np.arange(len(texts)))
    with torch.inference_mode(), encoder._autocast():
        full = encoder.model(**batch, output_hidden_states=True)
    from app.encoder.base_model import mean_pool

    features = mean_pool(full.hidden_states[encoder.routing_layer], batch["attention_mask"])
    differences = [float(np.abs(encoder.routing_features(texts) - features.cpu().numpy()).max())]
    if encoder.routing_layer >= encoder.layer_count:
        return differences[0]  # no layer above the routing layer: no expert rows to check
    try:
        _add_probe_adapter(encoder)
        if PROBE_ADAPTER not in encoder._bank:
            raise RuntimeError("the probe adapter was not banked")
        probe = [PROBE_ADAPTER] * len(texts)
        exact = encoder._peft_pass(tokens, np.arange(len(texts)), probe, encoder.precision)
        base = encoder._peft_pass(
            tokens, np.arange(len(texts)), [BASE] * len(texts), encoder.precision
        )
        picks = [[PROBE_ADAPTER], [BASE], [BASE, PROBE_ADAPTER]]
        routed = encoder.encode_routed(texts, lambda f: [picks[i % 3] for i in range(len(f))])
        for i, (row, vectors) in enumerate(zip(routed.adapters, routed.vectors, strict=True)):
            for adapter, vector in zip(row, vectors, strict=True):
                want = exact[i] if adapter == PROBE_ADAPTER else base[i]
                differences.append(float(np.abs(vector - want).max()))
        differences.append(float(np.abs(encoder.encode(texts, probe) - exact).max()))
        if not float(np.abs(exact - base).max()) > 1e-3:
            raise RuntimeError("the probe adapter did not change the output")
    finally:
        encoder._pool.unload(PROBE_ADAPTER)
        if PROBE_ADAPTER in encoder.model.peft_config:  # added, never made resident
            encoder._bank.remove(PROBE_ADAPTER)
            encoder.model.delete_adapter(PROBE_ADAPTER)
    return max(differences)


def _add_probe_adapter(encoder: LoraEncoder) -> None:
    from peft import LoraConfig

    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "key", "value", "dense"],
        layers_to_transform=list(range(encoder.routing_layer, encoder.layer_count)),
        init_lora_weights=False,  # random A and B: the probe really changes the output
    )
    torch = encoder._torch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder.model.add_adapter(PROBE_ADAPTER, config)
    encoder.model.eval()
    encoder._pool.adopt(PROBE_ADAPTER)
