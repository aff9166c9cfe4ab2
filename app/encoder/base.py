"""The query/document encoder contract the service relies on, and the types it speaks.

Implementations: `EncoderReplicas` (MiniLM + a LoRA pool per model worker, what serves) and
`FakeEncoder` (deterministic, no model: `RR_ENCODER_BACKEND=fake`, the fast tests). Both
import their shared types from here; this module imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.shortcuts import Shortcuts

BASE = "__base__"  # the adapter name of "no adapter" rows (peft's name in mixed batches)

AdapterLocator = Callable[[str], Path]
"""Maps an expert name to the directory holding its adapter; raises NotFound if gone."""

Chooser = Callable[[np.ndarray], Sequence[Sequence[str]]]
"""Routing features `(n, dim)` -> the adapters each row continues with (`BASE` for the
plain model; several per row: one vector each; none: the row is only routed)."""


@dataclass
class PoolStats:
    loads: int = 0
    evictions: int = 0
    last_load_ms: float = 0.0
    one_pass_rows: int = 0  # expert rows that continued from their routing features' pass
    exact_rows: int = 0  # expert rows that ran a full pass through peft (the exact path)


@dataclass
class RoutedPass:
    """What one routed pass returns: each text's routing features, the adapters its
    chooser picked, and one unit-norm vector per picked adapter."""

    features: np.ndarray  # (n, dim) float32, unit norm
    adapters: list[list[str]]
    vectors: list[np.ndarray]  # per text: (len(adapters[i]), dim) float32


class QueryEncoder(Protocol):
    dim: int
    max_seq_length: int
    routing_layer: int  # routing features are the pooled states entering this layer
    module_shapes: dict[str, tuple[int, int]]  # the base model's Linear layers (adapter checks)
    shortcuts: Shortcuts

    def __len__(self) -> int:
        """Model workers: `encode(..., replica=i)` for i < len."""
        ...

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        replica: int = 0,
        documents: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 rows; row i through adapter `adapters[i]` (`BASE`: none);
        `documents`: documents for an index (base model only, at the document precision)."""
        ...

    def encode_routed(self, texts: Sequence[str], choose: Chooser, replica: int = 0) -> RoutedPass:
        """One pass per text: the layers below `routing_layer` once, `choose` on the pooled
        features, then the layers above with each row's chosen adapters."""
        ...

    def routing_features(self, texts: Sequence[str], replica: int = 0) -> np.ndarray:
        """`(n, dim)` unit-norm routing features (the pooled states entering
        `routing_layer`), as `encode_routed` computes them."""
        ...

    def ensure_resident(self, names: Sequence[str]) -> None:
        """Load these experts' adapters now (raises InvalidAdapter if one cannot apply)."""
        ...

    def unload(self, name: str) -> None: ...

    def resident(self) -> list[str]: ...

    def is_resident(self, name: str) -> bool: ...

    def resident_bytes(self, name: str) -> int:
        """Memory the expert holds while resident, over all model workers (0 if not)."""
        ...

    def one_pass(self, name: str) -> bool | None:
        """Whether a resident expert is served in one pass (its LoRA changes no layer below
        `routing_layer`); None while it is not resident."""
        ...

    @property
    def stats(self) -> PoolStats: ...

    def token_counts(self, texts: Sequence[str], truncated: bool = True) -> list[int]:
        """Tokens each text costs as encoded (`truncated`: at `max_seq_length`, as every
        pass cuts it), or in full."""
        ...

    def precisions(self) -> dict[str, str]:
        """What queries and documents run at, after the start-up checks (`/readyz`)."""
        ...

    def warm_up(self) -> None: ...
