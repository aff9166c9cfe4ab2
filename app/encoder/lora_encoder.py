"""Base encoder + a bounded pool of LoRA experts, served in mixed-adapter forward passes.

Every row of a batch names its own adapter (`adapter_names=[...]`, `BASE` for the plain
model), so one forward pass serves many experts and no shared "active adapter" is ever
switched per request (switching races under concurrency).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.encoder.base_model import (
    EMBEDDING_DIM,
    linear_module_shapes,
    load_base_model,
    load_tokenizer,
    mean_pool,
)
from app.errors import InvalidAdapter

BASE = "__base__"  # peft's name for "no adapter" rows in a mixed batch
# A permanent no-op adapter (B = 0) keeps the PeftModel valid when every expert is evicted.
_ANCHOR = "__anchor__"

AdapterLocator = Callable[[str], Path]
"""Maps an expert name to the directory holding its adapter; raises NotFound if gone."""


@dataclass
class PoolStats:
    loads: int = 0
    evictions: int = 0
    last_load_ms: float = 0.0


# A bucket may waste at most this share of its padded tokens: one long text must not pad a
# whole batch of short queries to its length.
MAX_PADDING_WASTE = 0.3


def length_buckets(lengths: Sequence[int], max_rows: int) -> list[np.ndarray]:
    """Row indices grouped by similar token length (sorted), each group <= max_rows."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        n = lengths[i]  # >= every length already in `current` (sorted ascending)
        padded = n * (len(current) + 1)
        if current and (len(current) == max_rows or tokens + n < (1 - MAX_PADDING_WASTE) * padded):
            buckets.append(current)
            current, tokens = [], 0
        current.append(int(i))
        tokens += n
    if current:
        buckets.append(current)
    return [np.array(b, dtype=np.int64) for b in buckets]


class LoraEncoder:
    """Thread-safe: one lock serialises forward passes and adapter (un)loading."""

    dim = EMBEDDING_DIM

    def __init__(
        self,
        locate_adapter: AdapterLocator,
        capacity: int = 16,
        device: str = "cpu",
        max_seq_length: int = 256,
        batch_size: int = 64,
        precision: str = "fp32",
    ) -> None:
        import torch
        from peft import LoraConfig, get_peft_model

        self._torch = torch
        self.device = device
        self.capacity = capacity
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.precision = precision
        self._locate = locate_adapter
        self.tokenizer = load_tokenizer()
        base = load_base_model(device)
        self.module_shapes = linear_module_shapes(base)
        anchor = LoraConfig(r=1, lora_alpha=1, target_modules=["query"], init_lora_weights=True)
        self.model = get_peft_model(base, anchor, adapter_name=_ANCHOR).eval()
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = PoolStats()

    # -- adapter pool -------------------------------------------------------------------

    def resident(self) -> list[str]:
        """Resident experts, least recently used first."""
        with self._lock:
            return list(self._resident)

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    def ensure_resident(self, names: Sequence[str]) -> None:
        """Load missing adapters, evicting the least recently used ones not needed now."""
        wanted = [n for n in dict.fromkeys(names) if n != BASE]
        with self._lock:
            for name in wanted:
                if name in self._resident:
                    self._resident.move_to_end(name)
                    continue
                self._evict_down_to(self.capacity - 1, keep=set(wanted))
                self._load(name)

    def unload(self, name: str) -> None:
        """Drop an expert's adapter (it was deleted or replaced)."""
        with self._lock:
            if name in self._resident:
                self.model.delete_adapter(name)
                del self._resident[name]

    def _evict_down_to(self, size: int, keep: set[str]) -> None:
        for victim in [n for n in self._resident if n not in keep]:
            if len(self._resident) <= size:
                break
            self.model.delete_adapter(victim)
            del self._resident[victim]
            self.stats.evictions += 1

    def _load(self, name: str) -> None:
        directory = self._locate(name)
        started = time.perf_counter()
        result = self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k]
        applied = sum(1 for m in self.model.modules() if name in getattr(m, "lora_A", {}))
        if missing or applied == 0:
            # Never serve base-model vectors under an expert's name.
            self.model.delete_adapter(name)
            raise InvalidAdapter(f"adapter of expert {name!r} did not apply to the base model")
        self.model.eval()
        self._resident[name] = None
        self.stats.loads += 1
        self.stats.last_load_ms = (time.perf_counter() - started) * 1000

    # -- encoding -----------------------------------------------------------------------

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text costs after truncation (for usage reporting)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)
        return [len(row) for row in ids["input_ids"]]

    def encode(self, texts: Sequence[str], adapters: Sequence[str] | None = None) -> np.ndarray:
        """Embed `texts`; row i uses adapter `adapters[i]` (default: all base).

        Returns float32 `(len(texts), dim)` rows with unit L2 norm. Rows are sorted by
        length internally so short queries are not padded to the longest one.
        """
        if adapters is None:
            adapters = [BASE] * len(texts)
        if len(adapters) != len(texts):
            raise ValueError("one adapter name per text")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_seq_length, padding=False
        )
        lengths = [len(ids) for ids in tokens["input_ids"]]
        with self._lock:
            self.ensure_resident(adapters)
            for rows in length_buckets(lengths, self.batch_size):
                out[rows] = self._forward(tokens, rows, [adapters[i] for i in rows])
            self._evict_down_to(self.capacity, keep=set())
        return out

    def _forward(self, tokens: Any, rows: np.ndarray, adapters: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer.pad(
            {
                "input_ids": [tokens["input_ids"][i] for i in rows],
                "attention_mask": [tokens["attention_mask"][i] for i in rows],
            },
            return_tensors="pt",
        ).to(self.device)
        autocast = torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=self.precision == "bf16",
        )
        with torch.inference_mode(), autocast:
            hidden = self.model(**batch, adapter_names=adapters).last_hidden_state
            return mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
