"""The private-API shim: each form of the transformers / peft internals it claims to support.

Fast tests use stand-ins shaped like each release's internals; the slow ones run the shim on
the installed transformers and peft against a full expert pass.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.encoder import hf_private
from app.encoder.hf_private import PrivateApiUnavailable


class _MasksAfterRename:  # transformers >= 5.x with the `cache` argument
    def _create_attention_masks(
        self, attention_mask, encoder_attention_mask, embedding_output, encoder_hidden_states, cache
    ):
        return ("5.x", attention_mask, cache), None


class _MasksBeforeRename:  # transformers 5.x before the rename
    def _create_attention_masks(
        self,
        attention_mask,
        encoder_attention_mask,
        embedding_output,
        encoder_hidden_states,
        past_key_values,
    ):
        return ("5.0", attention_mask, past_key_values), None


class _Masks50:  # transformers 5.0.0: cache_position as well, both required
    def _create_attention_masks(
        self,
        attention_mask,
        encoder_attention_mask,
        embedding_output,
        encoder_hidden_states,
        cache_position,
        past_key_values,
    ):
        assert cache_position is None
        return ("5.0.0", attention_mask, past_key_values), None


class _MasksUnknown:  # a future signature the shim does not know
    def _create_attention_masks(self, attention_mask, embedding_output, kv_store):
        return "?", None


class _LegacyMasks:  # transformers 4.x: no builder, the public extended-mask helper
    def get_extended_attention_mask(self, attention_mask, input_shape):
        return ("4.x", input_shape)


@pytest.mark.parametrize(
    ("bert", "expected"),
    [(_MasksAfterRename(), "5.x"), (_MasksBeforeRename(), "5.0"), (_Masks50(), "5.0.0")],
)
def test_mask_builder_gets_its_cache_argument_under_either_name(bert, expected) -> None:
    mask = np.ones((2, 3))
    tag, passed_mask, cache = hf_private.encoder_attention_mask(bert, mask, hidden=None)
    assert tag == expected and passed_mask is mask and cache is None


def test_legacy_releases_use_the_extended_attention_mask() -> None:
    assert hf_private.encoder_attention_mask(_LegacyMasks(), np.ones((2, 3)), None) == (
        "4.x",
        (2, 3),
    )


@pytest.mark.parametrize("bert", [_MasksUnknown(), object()])
def test_unknown_internals_raise_the_shims_error(bert) -> None:
    with pytest.raises(PrivateApiUnavailable):
        hf_private.encoder_attention_mask(bert, np.ones((1, 1)), None)


def test_run_layer_takes_a_tuple_or_a_tensor() -> None:
    hidden = np.zeros((1, 2, 3))
    assert (
        hf_private.run_layer(lambda h, attention_mask: (h + 1, "attn"), hidden, None)[0, 0, 0] == 1
    )
    assert hf_private.run_layer(lambda h, attention_mask: h + 2, hidden, None)[0, 0, 0] == 2


def test_lora_factors_refuse_variants_and_name_modules_outside_the_layers() -> None:
    class Weight:
        def __init__(self, rows: int, cols: int) -> None:
            import torch

            self.weight = torch.ones((rows, cols))

    class Lora:
        def __init__(self, dora: bool = False) -> None:
            self.lora_A = {"e": Weight(2, 3)}  # (r, in)
            self.lora_B = {"e": Weight(4, 2)}  # (out, r)
            self.scaling = {"e": 0.5}
            self.use_dora = {"e": dora}

    class Model:
        def __init__(self, modules: dict) -> None:
            self.modules = modules

        def get_base_model(self):
            return self

        def named_modules(self):
            return iter(self.modules.items())

    layered = Model({"encoder.layer.4.attention.self.query": Lora(), "pooler.dense": Lora()})
    factors, outside = hf_private.lora_factors(layered, "e")
    a, b = factors[(4, "attention.self.query")]
    assert a.shape == (3, 2) and b.shape == (2, 4) and float(b[0, 0]) == 0.5  # scale folded
    assert outside == ["pooler.dense"]
    with pytest.raises(PrivateApiUnavailable):
        hf_private.lora_factors(Model({"encoder.layer.0.output.dense": Lora(dora=True)}), "e")


# -- the installed transformers / peft --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 4, 6])
def test_shim_one_pass_equals_a_full_pass_on_the_installed_versions(layer: int) -> None:
    """The start-up self-check: a random adapter above the routing layer, one pass vs
    peft's full pass (at the final layer only the features: no layer is left to share)."""
    from app.encoder import LoraEncoder
    from app.encoder.self_checks import PROBE_ADAPTER, check_one_pass

    encoder = LoraEncoder(lambda name: None, routing_layer=layer)
    difference = check_one_pass(encoder)
    assert difference is not None and difference <= 1e-5
    assert encoder.shortcuts.degraded == {}
    assert PROBE_ADAPTER not in encoder.model.peft_config  # the probe leaves no trace
    assert encoder.resident() == [] and PROBE_ADAPTER not in encoder._bank
