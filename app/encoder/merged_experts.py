"""Expert passes at the cost of plain layers: per resident expert, its top layers' weights with
the LoRA delta merged in (W + scale * B @ A), run on a plain copy of those layers.

peft's mixed-batch LoRA gathers, multiplies and scatters each adapter's rows in every LoRA
module and walks every module to set its hooks on each call; a merged layer is one dense
matmul per module. Rows are grouped by expert (one plain pass per expert in the batch), and the
weights are merged once, when the expert becomes resident. It serves only the hidden-state
reuse path (the top layers from the routing pass's states), whose start-up self-check compares
it with a full peft pass; if that fails the exact path serves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.encoder import hf_private


class MergedTopLayers:
    def __init__(self, plain_layers: Sequence[Any], first_layer: int) -> None:
        """`plain_layers`: the base model's encoder layers from `first_layer` up, without any
        LoRA wrapping (their weights shared with the served model's)."""
        self.layers = list(plain_layers)
        self.first_layer = first_layer
        self._weights: dict[str, list[dict[str, Any]]] = {}  # expert -> per layer: name -> W'
        # The same in bf16 (the values bf16 autocast would round them to on every call),
        # made on an expert's first pass under bf16 autocast.
        self._bf16: dict[str, list[dict[str, Any]]] = {}

    def add(self, name: str, peft_model: Any) -> None:
        """Merge `name`'s LoRA into copies of the top layers' weights (replacing old ones)."""
        merged: list[dict[str, Any]] = [{} for _ in self.layers]
        for (layer, module), delta in hf_private.lora_deltas(
            peft_model, name, self.first_layer
        ).items():
            base = self.layers[layer - self.first_layer].get_submodule(module).weight
            merged[layer - self.first_layer][f"{module}.weight"] = base.detach() + delta
        self._weights[name] = merged

    def remove(self, name: str) -> None:
        self._weights.pop(name, None)
        self._bf16.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self._weights

    def bytes_of(self, name: str) -> int:
        tables = [*self._weights.get(name, []), *self._bf16.get(name, [])]
        return sum(w.numel() * w.element_size() for layer in tables for w in layer.values())

    def run(
        self,
        hidden: Any,
        padding_mask: Any,
        adapters: Sequence[str],
        layer_mask: Callable[[Any, Any], Any],
    ) -> Any:
        """The top layers' output for `hidden` (rows, tokens, dim); row i through expert
        `adapters[i]`'s merged weights (every name must have been added). `layer_mask`
        builds the layers' own attention mask from a group's padding mask and states."""
        import torch
        from torch.func import functional_call

        bf16 = torch.is_autocast_enabled(hidden.device.type) and (
            torch.get_autocast_dtype(hidden.device.type) == torch.bfloat16
        )
        groups: dict[str, list[int]] = {}
        for row, name in enumerate(adapters):
            groups.setdefault(name, []).append(row)
        out = torch.empty_like(hidden)
        for name, rows in groups.items():
            index = torch.tensor(rows, dtype=torch.long, device=hidden.device)
            states = hidden.index_select(0, index)
            mask = layer_mask(padding_mask.index_select(0, index), states)
            for layer, params in zip(self.layers, self._tables(name, bf16), strict=True):
                states = hf_private.run_layer(
                    lambda *args, layer=layer, params=params, **kwargs: functional_call(
                        layer, params, args, kwargs
                    ),
                    states,
                    mask,
                )
            out.index_copy_(0, index, states.to(out.dtype))
        return out

    def _tables(self, name: str, bf16: bool) -> list[dict[str, Any]]:
        if not bf16:
            return self._weights[name]
        if name not in self._bf16:
            import torch

            self._bf16[name] = [
                {key: w.to(torch.bfloat16) for key, w in layer.items()}
                for layer in self._weights[name]
            ]
        return self._bf16[name]
