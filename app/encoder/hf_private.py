"""The one module that calls private transformers / peft APIs.

The one-pass path runs a BERT encoder's layers by hand, which no public API offers: it needs
the model's own attention-mask builder, and it reads peft's LoRA factors (`lora_A`, `lora_B`,
`scaling`) to serve them in its own batched form. Both are private and have changed between
releases (transformers 5.0's `_create_attention_masks` takes
`cache_position` and `past_key_values`, later 5.x a single `cache`; 4.x has no such method at
all), so every call goes through here, adapts to the installed version, and raises
`PrivateApiUnavailable` when it cannot. Callers treat that as "shortcut unavailable" and
take the exact path.

Supported (tested in tests/test_hf_private.py, bounded in pyproject.toml): transformers
4.57 - 5.x (run on 4.57.6, 5.0.0 and 5.24.0), peft 0.17 - 0.21 (run on 0.17.1 and 0.21.2).
"""

from __future__ import annotations

import inspect
from typing import Any


class PrivateApiUnavailable(RuntimeError):
    """The installed transformers / peft lacks a private API in a form this shim knows."""


# The arguments `_create_attention_masks` takes besides the mask and embeddings: decoder
# caching, which an encoder pass never uses. 5.0 takes `cache_position` and `past_key_values`;
# later 5.x renamed the latter `cache` and dropped the former.
_KNOWN = {"attention_mask", "encoder_attention_mask", "embedding_output", "encoder_hidden_states"}
_CACHE_ARGUMENTS = {"cache", "past_key_values", "cache_position"}


def _mask_builder_arguments(method: Any) -> dict[str, Any]:
    """None for each cache argument of `_create_attention_masks`, under the names it has."""
    parameters = inspect.signature(method).parameters
    unknown = [
        name
        for name, parameter in parameters.items()
        if name not in _KNOWN | _CACHE_ARGUMENTS
        and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    if unknown or not set(parameters) >= _KNOWN:
        raise PrivateApiUnavailable(
            f"unknown signature of _create_attention_masks: {list(parameters)}"
        )
    return {name: None for name in parameters if name in _CACHE_ARGUMENTS}


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


def lora_factors(peft_model: Any, adapter: str) -> tuple[dict[tuple[int, str], tuple], list[str]]:
    """`adapter`'s LoRA as `{(encoder layer, module path inside the layer): (A^T, s * B^T)}`
    (A^T: (in, r); s * B^T: (r, out), the scaling folded in), and the paths of its LoRA
    modules outside the encoder layers (embeddings, pooler), which no per-layer path
    serves. Raises PrivateApiUnavailable for LoRA variants that are not a plain B @ A
    (DoRA, fan-in-fan-out weights)."""
    import re

    pattern = re.compile(r"encoder\.layer\.(\d+)\.(.+)$")
    factors: dict[tuple[int, str], tuple] = {}
    outside: list[str] = []
    for path, module in peft_model.get_base_model().named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter not in lora_a:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False) or getattr(
            module, "fan_in_fan_out", False
        ):
            raise PrivateApiUnavailable(f"{path}: a LoRA variant other than plain B @ A")
        match = pattern.search(path)
        if match is None:
            outside.append(path)
            continue
        a = lora_a[adapter].weight.detach()  # (r, in)
        b = module.lora_B[adapter].weight.detach()  # (out, r)
        scale = float(module.scaling[adapter])
        factors[(int(match.group(1)), match.group(2))] = (
            a.t().contiguous(),
            (scale * b).t().contiguous(),
        )
    return factors, outside
