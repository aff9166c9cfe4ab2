"""The private-API shim: each form of the transformers / peft internals it claims to support.

Fast tests use stand-ins shaped like each release's internals; the slow ones run the shim on
the installed transformers and peft against a full expert pass.
"""

from __future__ import annotations

from contextlib import contextmanager

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


def test_adapter_rows_passes_one_adapter_per_row_and_always_removes_the_hooks() -> None:
    hooks: list[list[str]] = []

    class Peft:  # peft's shape: hooks removed after a bare `yield` (no try/finally)
        @contextmanager
        def _enable_peft_forward_hooks(self, adapter_names):
            hooks.append(adapter_names)
            yield
            hooks.pop()

    with hf_private.adapter_rows(Peft(), ("a", "b")):
        assert hooks == [["a", "b"]]
    assert hooks == []
    with pytest.raises(RuntimeError), hf_private.adapter_rows(Peft(), ["a"]):
        raise RuntimeError("a layer failed")
    assert hooks == []  # an error inside must not leave the model hooked
    with pytest.raises(PrivateApiUnavailable), hf_private.adapter_rows(object(), ["a"]):
        pass


# -- the installed transformers / peft --------------------------------------------------


@pytest.mark.slow
def test_shim_reuse_equals_a_full_pass_on_the_installed_versions() -> None:
    """The start-up self-check: a random top-layer adapter, reuse vs full pass."""
    from app.encoder import LoraEncoder

    encoder = LoraEncoder(lambda name: None, reuse_layer=4)
    difference = encoder.check_reuse()
    assert difference is not None and difference <= 1e-5
    assert encoder.shortcuts.degraded == {}
    assert "__reuse_probe__" not in encoder.model.peft_config  # the probe leaves no trace
