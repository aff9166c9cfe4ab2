"""The query/document encoder contract the service relies on.

Implementations: `EncoderReplicas` (MiniLM + a LoRA pool per model worker, what serves) and
`FakeEncoder` (deterministic, no model: `RR_ENCODER_BACKEND=fake`, the fast tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from app.encoder.lora_encoder import PoolStats
from app.shortcuts import Shortcuts


class QueryEncoder(Protocol):
    dim: int
    max_seq_length: int
    module_shapes: dict[str, tuple[int, int]]  # the base model's Linear layers (adapter checks)
    shortcuts: Shortcuts

    def __len__(self) -> int:
        """Model workers: `encode(..., replica=i)` for i < len."""
        ...

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        routing: Sequence[bool] | None = None,
        replica: int = 0,
        documents: bool = False,
    ) -> np.ndarray:
        """Unit-norm float32 rows; row i through adapter `adapters[i]` (`BASE`: none);
        `routing[i]`: a query's routing pass (an expert pass of it may follow);
        `documents`: documents for an index (base model only, at the document precision)."""
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

    @property
    def stats(self) -> PoolStats: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...

    def precisions(self) -> dict[str, str]:
        """What queries and documents run at, after the start-up checks (`/readyz`)."""
        ...

    def warm_up(self) -> None: ...
