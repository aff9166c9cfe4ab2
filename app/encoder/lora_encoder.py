"""Base encoder + a bounded pool of LoRA experts, every query in one pass.

A routed query runs the layers below `routing_layer` once on the base model; the pooled
states entering that layer are its routing features; the chooser (the router) picks its
experts from them, and the row continues through the layers above with its own expert's
LoRA delta in the same batched step (`row_lora`). Experts whose LoRA also changes lower
layers, and every row when the one-pass shortcut is off, take the exact path: a full pass
through peft's mixed-adapter batch (`adapter_names=[...]`), as `check_one_pass` compares at
start-up. No shared "active adapter" is ever switched per request (that races).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.encoder import hf_private, precision
from app.encoder.adapter_pool import AdapterPool
from app.encoder.base import BASE, AdapterLocator, Chooser, PoolStats, RoutedPass
from app.encoder.base_model import (
    EMBEDDING_DIM,
    MEASURE,
    linear_module_shapes,
    load_base_model,
    load_tokenizer,
    mean_pool,
    pick_document_precision,
    pick_precision,
)
from app.encoder.buckets import length_buckets
from app.shortcuts import ONE_PASS, PLAIN_BASE_PASS, Shortcuts

log = logging.getLogger(__name__)

# A permanent no-op adapter (B = 0) keeps the PeftModel valid when every expert is evicted.
_ANCHOR = "__anchor__"


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
        routing_layer: int = 4,
        document_precision: str = "fp32",
        shortcuts: Shortcuts | None = None,
    ) -> None:
        """`routing_layer`: routing features are the pooled states entering this layer (0:
        the token embeddings; the layer count: the final embedding, which leaves no layer
        to share, so every expert pass is a full one)."""
        import torch
        from peft import LoraConfig, get_peft_model

        from app.encoder.row_lora import LoraBank, wrap_layers

        self._torch = torch
        self.device = device
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.precision = precision
        self.document_precision = document_precision
        self.tokenizer = load_tokenizer()
        base = load_base_model(device)
        self.module_shapes = linear_module_shapes(base)
        self.layer_count = len(base.encoder.layer)
        if not 0 <= routing_layer <= self.layer_count:
            raise ValueError(f"routing_layer must be within 0..{self.layer_count}")
        self.routing_layer = routing_layer
        # The base model without peft's wrappers, sharing every weight tensor with the served
        # model (peft wraps `base` in place): base rows skip peft's per-module checks, and
        # its layers from `routing_layer` up add the banked experts' per-row deltas.
        shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
        self._plain = copy.deepcopy(base, shared)
        self._bank = LoraBank(routing_layer, device)
        self._wrap = lambda model: wrap_layers(model, self._bank)
        self._wrap(self._plain)
        self._plain_bf16: Any = None  # built on the first bf16 pass
        anchor = LoraConfig(r=1, lora_alpha=1, target_modules=["query"], init_lora_weights=True)
        self.model = get_peft_model(base, anchor, adapter_name=_ANCHOR).eval()
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self.stats = PoolStats()
        self._pool = AdapterPool(
            self.model, locate_adapter, capacity, self.stats, self._bank_expert, self._bank.remove
        )
        self._lock = threading.RLock()
        # Set by the self-checks: a shortcut that raises propagates (no fallback to hide it).
        self.strict = False

    # -- adapter pool -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._pool.capacity

    def resident(self) -> list[str]:
        """Resident experts, least recently used first."""
        with self._lock:
            return self._pool.resident()

    def is_resident(self, name: str) -> bool:
        return name in self._pool

    def ensure_resident(self, names: Sequence[str]) -> None:
        with self._lock:
            self._pool.ensure(names)

    def unload(self, name: str) -> None:
        """Drop an expert's adapter (it was deleted or replaced)."""
        with self._lock:
            self._pool.unload(name)

    def one_pass(self, name: str) -> bool | None:
        if name not in self._pool:
            return None
        return name in self._bank and self._one_pass_on

    def resident_bytes(self, name: str) -> int:
        """Memory an expert holds while resident: its LoRA in peft and in the bank."""
        with self._lock:
            if name not in self._pool:
                return 0
            return self._pool.lora_bytes(name) + self._bank.bytes_of(name)

    def _bank_expert(self, name: str) -> None:
        """Bank a loaded expert for one-pass serving if its LoRA sits only in layers at or
        above `routing_layer`; else it is served by the exact path."""
        self._bank.remove(name)  # a reloaded expert must never run on old factors
        try:
            factors, outside = hf_private.lora_factors(self.model, name)
            # The pooler never enters a mean-pooled embedding: a LoRA there changes nothing.
            outside = [path for path in outside if not path.startswith("pooler.")]
            if outside or not factors or min(layer for layer, _ in factors) < self.routing_layer:
                return  # changes layers below the routing layer: its pass must be a full one
            self._bank.add(name, factors)
        except Exception as exc:  # unbanked, the expert is still served: by the exact path
            log.warning("expert %s served by the exact path: %s", name, exc)

    @property
    def _one_pass_on(self) -> bool:
        return self.shortcuts.enabled(ONE_PASS) and self.shortcuts.enabled(PLAIN_BASE_PASS)

    # -- encoding -----------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        documents: bool = False,
    ) -> np.ndarray:
        """Embed `texts`; row i uses adapter `adapters[i]` (default: all base).

        `documents`: the texts are documents (base model only), run at `document_precision`.
        Returns float32 `(len(texts), dim)` rows with unit L2 norm. Rows are sorted by
        length internally so short queries are not padded to the longest one.
        """
        if adapters is None:
            adapters = [BASE] * len(texts)
        if len(adapters) != len(texts):
            raise ValueError("one adapter name per text")
        if documents and any(a != BASE for a in adapters):
            raise ValueError("documents are embedded by the base model only")
        at = self.document_precision if documents else self.precision
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self._tokenize(texts)
        with self._lock:
            self._pool.ensure(adapters)
            out[:] = self._full_passes(tokens, np.arange(len(texts)), list(adapters), at)
            self._pool.shrink(self.capacity, keep=set())
        return out

    def encode_routed(self, texts: Sequence[str], choose: Chooser) -> RoutedPass:
        """One pass per text: layers below `routing_layer` once, `choose` on the pooled
        features, the layers above with each row's chosen adapters (one vector each)."""
        features = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return RoutedPass(features, [], [])
        tokens = self._tokenize(texts)
        lengths = [len(ids) for ids in tokens["input_ids"]]
        buckets = length_buckets(lengths, self.batch_size)
        with self._lock:
            lower = self._lower_passes(tokens, buckets, features)
            chosen = [list(c) for c in choose(features)]
            if len(chosen) != len(texts):
                raise ValueError("the chooser must pick adapters for every text")
            self._pool.ensure([a for row in chosen for a in row])
            vectors = [np.empty((len(row), self.dim), dtype=np.float32) for row in chosen]
            pairs = [(i, j, a) for i, row in enumerate(chosen) for j, a in enumerate(row)]
            rest = self._upper_passes(lower, chosen, vectors) if lower is not None else pairs
            if rest:
                rows = np.array([i for i, _, _ in rest], dtype=np.int64)
                found = self._full_passes(tokens, rows, [a for _, _, a in rest], self.precision)
                for (i, j, _), row in zip(rest, found, strict=True):
                    vectors[i][j] = row
            self._pool.shrink(self.capacity, keep=set())
        return RoutedPass(features, chosen, vectors)

    def routing_features(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, dim)` unit-norm pooled states entering `routing_layer`, as routed passes
        compute them (at the query precision)."""
        return self.encode_routed(texts, lambda f: [[] for _ in range(len(f))]).features

    def _tokenize(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts), truncation=True, max_length=self.max_seq_length, padding=False
        )

    def _pad(self, tokens: Any, rows: np.ndarray) -> Any:
        return self.tokenizer.pad(
            {
                "input_ids": [tokens["input_ids"][i] for i in rows],
                "attention_mask": [tokens["attention_mask"][i] for i in rows],
            },
            return_tensors="pt",
        ).to(self.device)

    def _autocast(self, at: str | None = None) -> Any:
        torch = self._torch
        return torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=(at or self.precision) == "bf16",
        )

    def _dtype(self, at: str | None = None) -> Any:
        """The dtype matmuls run at for a pass at `at` (the LoRA tables' dtype)."""
        return self._torch.bfloat16 if (at or self.precision) == "bf16" else None

    def _plain_model(self, at: str | None = None) -> Any:
        """The plain base model for a pass at `at`. Under bf16 autocast, a copy whose Linear
        weights and biases are bf16 already: autocast would round the fp32 ones to bf16 on
        every call (weights that need no grad are not cached), the same values."""
        if (at or self.precision) != "bf16":
            return self._plain
        if self._plain_bf16 is None:
            self._plain_bf16 = precision.bf16_linear_copy(self._plain, keep=[self._bank])
        return self._plain_bf16

    # -- full passes (every layer) -------------------------------------------------------

    def _full_passes(
        self, tokens: Any, rows: np.ndarray, adapters: list[str], at: str
    ) -> np.ndarray:
        """Full passes for `rows` of `tokens`, row j through `adapters[j]`, bucketed by
        length: banked experts and base rows on the plain model with per-row deltas, the
        others (and all of them when a shortcut is off) through peft."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        lengths = [len(tokens["input_ids"][i]) for i in rows]
        for bucket in length_buckets(lengths, self.batch_size):
            named = [adapters[j] for j in bucket]
            plain = [
                k
                for k, a in enumerate(named)
                if (a == BASE and self.shortcuts.enabled(PLAIN_BASE_PASS))
                or (a in self._bank and self._one_pass_on)
            ]
            peft = [k for k in range(len(bucket)) if k not in set(plain)]
            if plain:
                picked = bucket[plain]
                try:
                    out[picked] = self._plain_pass(
                        tokens, rows[picked], [named[k] for k in plain], at
                    )
                    self.stats.one_pass_rows += sum(named[k] != BASE for k in plain)
                except Exception as exc:  # the shortcut never fails a request: peft serves
                    if self.strict:
                        raise
                    only_base = all(named[k] == BASE for k in plain)
                    self.shortcuts.failed(PLAIN_BASE_PASS if only_base else ONE_PASS, exc)
                    peft = list(range(len(bucket)))
            if peft:
                picked = bucket[peft]
                out[picked] = self._peft_pass(tokens, rows[picked], [named[k] for k in peft], at)
                self.stats.exact_rows += sum(named[k] != BASE for k in peft)
        return out

    def _plain_pass(
        self, tokens: Any, rows: np.ndarray, adapters: list[str], at: str
    ) -> np.ndarray:
        torch = self._torch
        batch = self._pad(tokens, rows)
        with torch.inference_mode(), self._autocast(at), self._bank.rows(adapters, self._dtype(at)):
            output = self._plain_model(at)(**batch)
            return mean_pool(output.last_hidden_state, batch["attention_mask"]).cpu().numpy()

    def _peft_pass(self, tokens: Any, rows: np.ndarray, adapters: list[str], at: str) -> np.ndarray:
        """The exact path: peft's own mixed-adapter pass (the anchor-only model for base)."""
        torch = self._torch
        batch = self._pad(tokens, rows)
        with torch.inference_mode(), self._autocast(at):
            if all(a == BASE for a in adapters):
                output = self.model(**batch)
            else:
                output = self.model(**batch, adapter_names=adapters)
            return mean_pool(output.last_hidden_state, batch["attention_mask"]).cpu().numpy()

    # -- the one-pass halves ------------------------------------------------------------

    def _lower_passes(
        self, tokens: Any, buckets: list[np.ndarray], features: np.ndarray
    ) -> list[tuple[np.ndarray, Any, Any]] | None:
        """Layers below `routing_layer` per bucket; fills `features`. Returns each bucket's
        (rows, states entering the routing layer, padding mask), or None where the exact
        path computed the features (a full base pass: no state to continue from)."""
        if self._one_pass_on:
            try:
                return [self._lower(tokens, rows, features) for rows in buckets]
            except Exception as exc:  # the exact path below serves
                if self.strict:
                    raise
                self.shortcuts.failed(ONE_PASS, exc)
        torch = self._torch
        for rows in buckets:
            batch = self._pad(tokens, rows)
            model = self._plain_model() if self.shortcuts.enabled(PLAIN_BASE_PASS) else self.model
            with torch.inference_mode(), self._autocast():
                output = model(**batch, output_hidden_states=True)
                states = output.hidden_states[self.routing_layer]
                features[rows] = mean_pool(states, batch["attention_mask"]).cpu().numpy()
        return None

    def _lower(self, tokens: Any, rows: np.ndarray, features: np.ndarray) -> tuple:
        torch = self._torch
        batch = self._pad(tokens, rows)
        model = self._plain_model()
        mask = batch["attention_mask"]
        with torch.inference_mode(), self._autocast():
            hidden = model.embeddings(input_ids=batch["input_ids"])
            extended = hf_private.encoder_attention_mask(model, mask, hidden)
            for layer in model.encoder.layer[: self.routing_layer]:
                hidden = hf_private.run_layer(layer, hidden, extended)
            features[rows] = mean_pool(hidden, mask).cpu().numpy()
        return rows, hidden, mask

    def _upper_passes(
        self,
        lower: list[tuple[np.ndarray, Any, Any]],
        chosen: list[list[str]],
        vectors: list[np.ndarray],
    ) -> list[tuple[int, int, str]]:
        """Continue each bucket's rows through the layers from `routing_layer` up, one row
        per (text, banked adapter or base); fills `vectors`. Returns the (text, slot,
        adapter) pairs left for full passes: unbanked experts, or all if this raised."""
        torch = self._torch
        every = [(i, j, a) for i, row in enumerate(chosen) for j, a in enumerate(row)]
        rest = [(i, j, a) for i, j, a in every if a != BASE and a not in self._bank]
        try:
            for rows, hidden, mask in lower:
                pairs = [
                    (position, int(i), j, a)
                    for position, i in enumerate(rows)
                    for j, a in enumerate(chosen[i])
                    if a == BASE or a in self._bank
                ]
                if not pairs:
                    continue
                index = torch.tensor([p for p, _, _, _ in pairs], device=hidden.device)
                adapters = [a for _, _, _, a in pairs]
                out = self._upper(
                    hidden.index_select(0, index), mask.index_select(0, index), adapters
                )
                for (_, i, j, _), row in zip(pairs, out, strict=True):
                    vectors[i][j] = row
                self.stats.one_pass_rows += sum(a != BASE for a in adapters)
        except Exception as exc:  # the shortcut never fails a request: full passes serve
            if self.strict:
                raise
            self.shortcuts.failed(ONE_PASS, exc)
            return every
        return rest

    def _upper(self, hidden: Any, mask: Any, adapters: list[str]) -> np.ndarray:
        torch = self._torch
        model = self._plain_model()
        with torch.inference_mode(), self._autocast(), self._bank.rows(adapters, self._dtype()):
            extended = hf_private.encoder_attention_mask(model, mask, hidden)
            for layer in model.encoder.layer[self.routing_layer :]:
                hidden = hf_private.run_layer(layer, hidden, extended)
            return mean_pool(hidden, mask).cpu().numpy()

    # -- precision -------------------------------------------------------------------------

    def use_precision(self, setting: str) -> str:
        """Queries at the precision the server picks for `setting` here (measured where it
        says `auto` on bf16 hardware), so `rr eval` measures what ships."""
        self.precision = pick_precision(setting, self.device)
        if self.precision == MEASURE:
            precision.measure_precision(self)
        return self.precision

    def use_document_precision(self, setting: str) -> str:
        """Documents at the precision the server picks for `setting` on this machine, behind
        the same start-up check: `rr eval` and `rr tune-fusion` embed documents as the
        service does, so the eval measures what ships. Returns the precision in use."""
        self.document_precision = pick_document_precision(setting, self.device)
        precision.check_document_precision(self)
        return self.document_precision
