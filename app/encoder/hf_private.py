"""The one module that calls private transformers / peft APIs.

Hidden-state reuse runs a BERT encoder's top layers by hand, which no public API offers: it
needs the model's own attention-mask builder and peft's per-row adapter hooks. Both are
private and have changed between releases (transformers 5.x renamed `_create_attention_masks`'s
`past_key_values` argument to `cache`; 4.x has no such method at all), so every call goes
through here, adapts to the installed version, and raises `PrivateApiUnavailable` when it
cannot. Callers treat that as "shortcut unavailable" and take the exact path.

Supported (tested in tests/test_hf_private.py, bounded in pyproject.toml):
transformers 4.56 - 5.x, peft 0.17 - 0.21.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class PrivateApiUnavailable(RuntimeError):
    """The installed transformers / peft lacks a private API in a form this shim knows."""


@contextmanager
def adapter_rows(peft_model: Any, adapter_names: Sequence[str]) -> Iterator[None]:
    """Context in which each row i of a batch run through the LoRA layers uses
    `adapter_names[i]` (peft's mixed-batch hooks, without a whole-model forward)."""
    enable = getattr(peft_model, "_enable_peft_forward_hooks", None)
    if enable is None:
        raise PrivateApiUnavailable("peft has no _enable_peft_forward_hooks")
    hooks = enable(adapter_names=list(adapter_names))
    hooks.__enter__()
    try:
        yield
    finally:
        # peft removes its hooks after its `yield` with no try/finally: an exception thrown
        # in would leave them on every LoRA layer, and each later pass of this model would
        # fail. Closing it as if nothing was raised always runs that removal.
        hooks.__exit__(None, None, None)


def _mask_builder_arguments(method: Any) -> dict[str, Any]:
    """The cache argument of `_create_attention_masks`, under whichever name it has."""
    parameters = inspect.signature(method).parameters
    for name in ("cache", "past_key_values"):  # 5.x after the rename, 5.x before it
        if name in parameters:
            return {name: None}
    raise PrivateApiUnavailable(f"unknown signature of _create_attention_masks: {list(parameters)}")


def encoder_attention_mask(bert: Any, mask: Any, hidden: Any) -> Any:
    """The self-attention mask `bert`'s layers expect, built the way `bert.forward` builds it
    for padding `mask` (batch, tokens) and layer inputs `hidden` (batch, tokens, dim)."""
    builder = getattr(bert, "_create_attention_masks", None)
    if builder is not None:  # transformers 5.x
        extended, _ = builder(
            attention_mask=mask,
            encoder_attention_mask=None,
            embedding_output=hidden,
            encoder_hidden_states=None,
            **_mask_builder_arguments(builder),
        )
        return extended
    legacy = getattr(bert, "get_extended_attention_mask", None)
    if legacy is not None:  # transformers 4.x: an additive (batch, 1, 1, tokens) mask
        return legacy(mask, tuple(mask.shape))
    raise PrivateApiUnavailable("BertModel has no attention-mask builder this shim knows")


def run_layer(layer: Any, hidden: Any, attention_mask: Any) -> Any:
    """One encoder layer's output hidden states (4.x layers return a tuple, 5.x a tensor)."""
    output = layer(hidden, attention_mask=attention_mask)
    return output[0] if isinstance(output, tuple) else output
