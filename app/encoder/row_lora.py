"""Per-row LoRA deltas in one batched pass: every row of a batch with its own expert.

Each wrapped Linear computes the base matmul for all rows, then adds `x @ A_e @ B_e` for
row i's expert e, with A and B gathered per row from stacked tables (slot 0 is zeros: base
rows add nothing). That is punica's / S-LoRA's batched-delta idea in plain `torch.bmm`: a
mixed batch costs one pass plus two thin matmuls per module, not one pass per expert group.
The tables hold only experts whose LoRA sits in the wrapped layers; the others are served by
peft's exact path (see LoraEncoder). Imports torch: LoraEncoder imports it when built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from app.encoder.base import BASE

Key = tuple[int, str]  # (encoder layer, module path inside the layer)
Factors = Mapping[Key, tuple[Any, Any]]  # key -> (A^T (in, r), scale * B^T (r, out))


class LoraBank:
    """Stacked LoRA factors of the resident experts, per wrapped module; not thread-safe
    (each encoder replica owns one and serialises its passes)."""

    def __init__(self, first_layer: int, device: str = "cpu") -> None:
        self.first_layer = first_layer
        self.device = device
        self._experts: dict[str, Factors] = {}
        self._slots: dict[str, int] = {}
        self._tables: dict[Key, tuple[Any, Any]] = {}  # key -> (A (S, in, r), B (S, r, out))
        self._cast: dict[Any, dict[Key, tuple[Any, Any]]] = {}  # the tables in another dtype
        self._active: dict[Key, tuple[Any, Any]] = {}  # set by `rows` for one pass
        self._rows: Any = None  # the active rows' slots (a tensor), or one slot for all

    def __contains__(self, name: str) -> bool:
        return name in self._experts

    def add(self, name: str, factors: Factors) -> None:
        """Take `name`'s factors (every key at or above `first_layer`), replacing old ones."""
        if any(layer < self.first_layer for layer, _ in factors):
            raise ValueError(f"{name}: LoRA below layer {self.first_layer} cannot be banked")
        self._restack({**self._experts, name: dict(factors)})

    def remove(self, name: str) -> None:
        if name in self._experts:
            self._restack({n: f for n, f in self._experts.items() if n != name})

    def bytes_of(self, name: str) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size()
            for a, b in self._experts.get(name, {}).values()
        )

    def _restack(self, experts: dict[str, Factors]) -> None:
        """New tables for `experts`, taken only once all are built (a failure, say out of
        memory, leaves the bank as it was)."""
        names = sorted(experts)
        slots = {name: i + 1 for i, name in enumerate(names)}
        keys = sorted({key for factors in experts.values() for key in factors})
        tables: dict[Key, tuple[Any, Any]] = {}
        for key in keys:
            present = [experts[n][key] for n in names if key in experts[n]]
            rank = max(a.shape[1] for a, _ in present)
            fan_in, fan_out = present[0][0].shape[0], present[0][1].shape[1]
            a_table = torch.zeros((len(names) + 1, fan_in, rank), device=self.device)
            b_table = torch.zeros((len(names) + 1, rank, fan_out), device=self.device)
            for name in names:
                if key in experts[name]:
                    a, b = experts[name][key]
                    slot = slots[name]
                    a_table[slot, :, : a.shape[1]] = a  # zero-padded ranks add exactly 0
                    b_table[slot, : b.shape[0]] = b
            tables[key] = (a_table, b_table)
        self._experts, self._slots, self._tables, self._cast = experts, slots, tables, {}

    def _in(self, dtype: Any) -> dict[Key, tuple[Any, Any]]:
        """The tables in `dtype` (bf16 under bf16 autocast: cast once, not per pass)."""
        if dtype is None or dtype == torch.float32:
            return self._tables
        if dtype not in self._cast:
            self._cast[dtype] = {
                key: (a.to(dtype), b.to(dtype)) for key, (a, b) in self._tables.items()
            }
        return self._cast[dtype]

    @contextmanager
    def rows(self, adapters: Sequence[str], dtype: Any = None) -> Iterator[None]:
        """Within: wrapped modules add row i's delta for `adapters[i]` (BASE: none), with
        the factors in `dtype` (None: float32)."""
        missing = [a for a in adapters if a != BASE and a not in self._slots]
        if missing:
            raise KeyError(f"experts not in the LoRA bank: {sorted(set(missing))}")
        slots = [self._slots.get(a, 0) for a in adapters]
        if len(set(slots)) == 1 and slots[0]:
            # One expert for every row (a lone query, say): its factors as they are, a
            # plain matmul each, no per-row gather.
            self._rows = slots[0]
        elif any(slots):
            self._rows = torch.tensor(slots, dtype=torch.long, device=self.device)
        self._active = self._in(dtype) if any(slots) else {}
        try:
            yield
        finally:
            self._active, self._rows = {}, None

    def factors(self, key: Key) -> tuple[Any, Any] | None:
        """The active rows' factors for one module, gathered when the module runs (so a
        pass holds one module's per-row copies at a time, not every module's)."""
        table = self._active.get(key)
        if table is None:
            return None
        a, b = table
        if isinstance(self._rows, int):
            return a[self._rows], b[self._rows]
        return a.index_select(0, self._rows), b.index_select(0, self._rows)


class RowLoraLinear(torch.nn.Module):
    """A Linear's forward plus the active per-row delta; replaces the Linear in its parent."""

    def __init__(self, linear: torch.nn.Linear, key: Key, bank: LoraBank) -> None:
        super().__init__()
        self.base = linear
        self.key = key
        self._bank = [bank]  # in a list: not a submodule, never copied with the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = self._bank[0].factors(self.key)
        if factors is None:
            return torch.nn.functional.linear(x, self.base.weight, self.base.bias)
        a, b = factors  # (rows, in, r), (rows, r, out), or one expert's (in, r), (r, out)
        # Cast once: the states between layers are fp32 under bf16 autocast, and each of
        # the three matmuls would cast x again (measured: a third of the deltas' cost).
        x = x.to(a.dtype)
        out = torch.nn.functional.linear(x, self.base.weight, self.base.bias)
        if a.dim() == 2:
            return out.add_(torch.matmul(torch.matmul(x, a), b).to(out.dtype))
        # x: (rows, tokens, in); out + (x A) B in one call, no delta tensor of its own
        return torch.baddbmm(out, torch.bmm(x, a), b.to(out.dtype))


def wrap_layers(bert: Any, bank: LoraBank) -> None:
    """Replace every Linear of `bert`'s encoder layers from `bank.first_layer` up by a
    RowLoraLinear reading `bank` (in place; with no active rows the output is unchanged)."""
    for index, layer in enumerate(bert.encoder.layer):
        if index < bank.first_layer:
            continue
        for path, module in list(layer.named_modules()):
            if not isinstance(module, torch.nn.Linear):
                continue
            parent_path, _, attribute = path.rpartition(".")
            parent = layer.get_submodule(parent_path) if parent_path else layer
            setattr(parent, attribute, RowLoraLinear(module, (index, path), bank))
