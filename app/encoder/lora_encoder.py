"""Base encoder + a bounded pool of LoRA experts, served in mixed-adapter forward passes.

Every row of a batch names its own adapter (`adapter_names=[...]`, `BASE` for the plain
model), so one forward pass serves many experts and no shared "active adapter" is ever
switched per request (switching races under concurrency).
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.encoder import hf_private
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
from app.encoder.hidden_states import HiddenStateCache
from app.encoder.merged_experts import MergedTopLayers
from app.errors import InvalidAdapter
from app.shortcuts import (
    HIDDEN_STATE_REUSE,
    MERGED_EXPERT_LAYERS,
    PLAIN_BASE_PASS,
    Shortcuts,
)

log = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" rows in a mixed batch
# A permanent no-op adapter (B = 0) keeps the PeftModel valid when every expert is evicted.
_ANCHOR = "__anchor__"
# A random top-layer adapter that exists only while the start-up self-check runs.
_PROBE = "__reuse_probe__"
PROBE_TEXTS = (
    "what causes aircraft wing flutter at supersonic speed",
    "python sort a dictionary by value",
    "x",
)
# Hidden-state reuse must equal a full expert pass: within float32 rounding, or one bf16
# rounding step when the passes run under bf16 autocast.
REUSE_TOLERANCE = {"fp32": 1e-5, "bf16": 4e-3}
# Documents at a faster precision must agree with fp32 to this cosine (measured: >= 0.99996
# on every staged corpus under bf16 autocast).
DOCUMENT_MIN_COSINE = 0.9999
PROBE_DOCUMENTS = (
    "Wing sweep delays the compressibility drag rise of transonic aircraft.",
    "sorted(d.items(), key=lambda kv: kv[1]) sorts a dictionary by value in Python.",
    "Vitamin D supplementation and bone mineral density in older adults: a randomized "
    "controlled trial of 400 participants followed for two years.",
)
_LAYER = re.compile(r"\.layer\.(\d+)\.")
# Queries at bf16 must agree with fp32 to this cosine on the probe batch (and be faster).
QUERY_MIN_COSINE = 0.9999
PROBE_QUERIES = tuple(f"{text} {i}" for i, text in enumerate(PROBE_TEXTS * 11))[:32]

AdapterLocator = Callable[[str], Path]
"""Maps an expert name to the directory holding its adapter; raises NotFound if gone."""


@dataclass
class PoolStats:
    loads: int = 0
    evictions: int = 0
    last_load_ms: float = 0.0
    reused_rows: int = 0  # expert rows that started from the routing pass's hidden states


# A bucket may waste at most this share of its padded tokens: one long text must not pad a
# whole batch of short queries to its length.
MAX_PADDING_WASTE = 0.3


def bf16_linear_copy(model: Any, torch: Any) -> Any:
    """`model` with its Linear layers' weights and biases cast to bf16 (the values bf16
    autocast computes with) and every other tensor shared with it."""
    linear = {
        id(t)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        for t in m.parameters(recurse=False)
    }
    shared = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in linear}
    copied = copy.deepcopy(model, shared)
    for module in copied.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return copied


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
        reuse_layer: int | None = None,
        document_precision: str = "fp32",
        hidden_states: HiddenStateCache | None = None,
        shortcuts: Shortcuts | None = None,
    ) -> None:
        """`reuse_layer` builds a private hidden-state cache; replicas pass a shared one
        (and a shared `shortcuts` record, so a failed shortcut is off for all of them)."""
        import torch
        from peft import LoraConfig, get_peft_model

        self._torch = torch
        self.device = device
        self.capacity = capacity
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.precision = precision
        self.document_precision = document_precision
        self._locate = locate_adapter
        self.tokenizer = load_tokenizer()
        base = load_base_model(device)
        self.module_shapes = linear_module_shapes(base)
        self._layer_count = len(base.encoder.layer)
        # The base model without LoRA wrappers, sharing every weight tensor with the served
        # model (peft wraps `base` in place): base passes skip peft's per-module checks and the
        # anchor's no-op LoRA, and merged expert layers run on its top layers.
        shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
        self._plain = copy.deepcopy(base, shared)
        self._plain_bf16: Any = None  # built on the first bf16 base pass
        anchor = LoraConfig(r=1, lora_alpha=1, target_modules=["query"], init_lora_weights=True)
        self.model = get_peft_model(base, anchor, adapter_name=_ANCHOR).eval()
        self._resident: OrderedDict[str, None] = OrderedDict()
        if hidden_states is None and reuse_layer is not None:
            hidden_states = HiddenStateCache(reuse_layer)
        self._hidden = hidden_states
        self.reuse_layer = None if hidden_states is None else hidden_states.layer
        self._merged = (
            None
            if self.reuse_layer is None
            else MergedTopLayers(self._plain.encoder.layer[self.reuse_layer :], self.reuse_layer)
        )
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
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
                self._delete_adapter(name)
                del self._resident[name]
            if self._hidden is not None:
                self._hidden.forget_expert(name)

    def _evict_down_to(self, size: int, keep: set[str]) -> None:
        for victim in [n for n in self._resident if n not in keep]:
            if len(self._resident) <= size:
                break
            self._delete_adapter(victim)
            del self._resident[victim]
            self.stats.evictions += 1

    def _load(self, name: str) -> None:
        directory = self._locate(name)
        started = time.perf_counter()
        try:
            result = self.model.load_adapter(str(directory), adapter_name=name, is_trainable=False)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:  # peft's errors vary
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            raise InvalidAdapter(f"adapter of expert {name!r} could not be loaded: {exc}") from exc
        missing = [k for k in getattr(result, "missing_keys", []) if f".{name}." in k]
        applied = sum(1 for m in self.model.modules() if name in getattr(m, "lora_A", {}))
        if missing or applied == 0:
            # Never serve base-model vectors under an expert's name.
            self.model.delete_adapter(name)
            raise InvalidAdapter(f"adapter of expert {name!r} did not apply to the base model")
        self.model.eval()
        layers = [
            int(m.group(1))
            for path, module in self.model.named_modules()
            if name in getattr(module, "lora_A", {}) and (m := _LAYER.search(path))
        ]
        if self._hidden is not None:
            self._hidden.note_expert(name, min(layers) if layers else 0)
        self._merge(name, layers)
        self._resident[name] = None
        self.stats.loads += 1
        self.stats.last_load_ms = (time.perf_counter() - started) * 1000

    def _merge(self, name: str, layers: list[int]) -> None:
        """Merged top-layer weights for an expert whose pass can start from hidden states."""
        merged = self._merged
        if merged is None or self.reuse_layer is None:
            return
        merged.remove(name)  # a reloaded expert must never run on old weights
        if not layers or min(layers) < self.reuse_layer:
            return
        if not self.shortcuts.enabled(MERGED_EXPERT_LAYERS):
            return
        try:
            merged.add(name, self.model)
        except Exception as exc:  # the peft hooks path serves instead
            self.shortcuts.failed(MERGED_EXPERT_LAYERS, exc)

    def _delete_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)
        if self._merged is not None:
            self._merged.remove(name)

    def resident_bytes(self, name: str) -> int:
        """Memory an expert holds while resident: its LoRA weights plus merged layers."""
        lora = sum(
            p.numel() * p.element_size()
            for path, p in self.model.named_parameters()
            if f".{name}." in path
        )
        return lora + (self._merged.bytes_of(name) if self._merged is not None else 0)

    # -- encoding -----------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        routing: Sequence[bool] | None = None,
        documents: bool = False,
    ) -> np.ndarray:
        """Embed `texts`; row i uses adapter `adapters[i]` (default: all base).

        `documents`: the texts are documents (base model only), run at `document_precision`.

        `routing[i]`: row i is a query's routing pass, so an expert pass may follow and its
        hidden states are kept for reuse (documents' base passes are not). Returns float32
        `(len(texts), dim)` rows with unit L2 norm. Rows are sorted by length internally so
        short queries are not padded to the longest one.
        """
        if adapters is None:
            adapters = [BASE] * len(texts)
        if routing is None:
            routing = [False] * len(texts)
        if len(adapters) != len(texts) or len(routing) != len(texts):
            raise ValueError("one adapter name (and routing flag) per text")
        if documents and any(a != BASE for a in adapters):
            raise ValueError("documents are embedded by the base model only")
        precision = self.document_precision if documents else self.precision
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokens = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_seq_length, padding=False
        )
        lengths = [len(ids) for ids in tokens["input_ids"]]
        with self._lock:
            self.ensure_resident(adapters)
            # Fetched once: another replica may evict them from the shared cache meanwhile.
            found = {i: self._reusable(texts[i], adapters[i]) for i in range(len(texts))}
            states = {i: state for i, state in found.items() if state is not None}
            exact = [i for i in range(len(texts)) if i not in states]
            if states:
                try:
                    self._encode_from_hidden(out, states, adapters, lengths)
                    self.stats.reused_rows += len(states)
                except Exception as exc:  # the shortcut never fails a request
                    self.shortcuts.failed(HIDDEN_STATE_REUSE, exc)
                    exact = list(range(len(texts)))
            rows_to_run = np.array(exact, dtype=np.int64)
            for bucket in length_buckets([lengths[i] for i in rows_to_run], self.batch_size):
                rows = rows_to_run[bucket]
                out[rows] = self._forward(texts, tokens, rows, adapters, routing, precision)
            self._evict_down_to(self.capacity, keep=set())
        return out

    def _encode_from_hidden(
        self, out: np.ndarray, states: dict[int, Any], adapters: Sequence[str], lengths: list[int]
    ) -> None:
        reusable = np.array(sorted(states), dtype=np.int64)
        for bucket in length_buckets([lengths[i] for i in reusable], self.batch_size):
            rows = reusable[bucket]
            out[rows] = self._forward_from_hidden(
                [states[i] for i in rows], [adapters[i] for i in rows]
            )

    def _reusable(self, text: str, adapter: str) -> Any | None:
        """The routing pass's hidden state for `text`, if `adapter`'s pass may start there."""
        hidden = self._hidden
        if hidden is None or adapter == BASE or not self.shortcuts.enabled(HIDDEN_STATE_REUSE):
            return None
        if not hidden.can_start_from(adapter):
            return None
        return hidden.get(text)

    @property
    def _keeps_states(self) -> bool:
        return (
            self._hidden is not None
            and self._hidden.wanted
            and self.shortcuts.enabled(HIDDEN_STATE_REUSE)
        )

    def _autocast(self, precision: str | None = None) -> Any:
        torch = self._torch
        return torch.autocast(
            device_type="cuda" if self.device.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=(precision or self.precision) == "bf16",
        )

    def check_document_precision(self, texts: Sequence[str] = PROBE_DOCUMENTS) -> float:
        """Start-up self-check of the document precision: the lowest cosine between probe
        documents embedded at it and in fp32. Below `DOCUMENT_MIN_COSINE`, documents stay
        fp32 (the exact path). Returns the cosine (1.0 when already fp32)."""
        if self.document_precision == "fp32":
            return 1.0
        fast = self.encode(texts, documents=True)
        wanted, self.document_precision = self.document_precision, "fp32"
        exact = self.encode(texts, documents=True)
        cosine = float(np.min(np.sum(fast * exact, axis=1)))
        if cosine >= DOCUMENT_MIN_COSINE and np.isfinite(fast).all():
            self.document_precision = wanted
        else:
            log.warning("documents stay fp32: %s agrees with it to cosine %.6f", wanted, cosine)
        return cosine

    def measure_precision(self, texts: Sequence[str] = PROBE_QUERIES, rounds: int = 3) -> dict:
        """Time fp32 and bf16 autocast on a probe batch of queries; keep bf16 if it is faster
        and agrees with fp32 (cosine >= QUERY_MIN_COSINE), else fp32. Returns the figures."""
        timings: dict[str, float] = {}
        outputs: dict[str, np.ndarray] = {}
        for precision in ("fp32", "bf16"):
            self.precision = precision
            self.encode(texts)  # warm: first calls at a precision are slow
            best = float("inf")
            for _ in range(rounds):
                started = time.perf_counter()
                outputs[precision] = self.encode(texts)
                best = min(best, time.perf_counter() - started)
            timings[precision] = best * 1000
        cosine = float(np.min(np.sum(outputs["fp32"] * outputs["bf16"], axis=1)))
        faster = timings["bf16"] < timings["fp32"]
        agrees = cosine >= QUERY_MIN_COSINE and bool(np.isfinite(outputs["bf16"]).all())
        self.precision = "bf16" if faster and agrees else "fp32"
        figures = {
            "chosen": self.precision,
            "fp32_ms": round(timings["fp32"], 2),
            "bf16_ms": round(timings["bf16"], 2),
            "cosine": round(cosine, 6),
            "batch": len(texts),
        }
        log.info("query precision by measurement: %s", figures)
        return figures

    def use_precision(self, setting: str) -> str:
        """Queries at the precision the server picks for `setting` here (measured where it
        says `auto` on bf16 hardware), so `rr eval` measures what ships."""
        self.precision = pick_precision(setting, self.device)
        if self.precision == MEASURE:
            self.measure_precision()
        return self.precision

    def use_document_precision(self, setting: str) -> str:
        """Documents at the precision the server picks for `setting` on this machine, behind
        the same start-up check: `rr eval` and `rr tune-fusion` embed documents as the
        service does, so the eval measures what ships. Returns the precision in use."""
        self.document_precision = pick_document_precision(setting, self.device)
        self.check_document_precision()
        return self.document_precision

    def _forward(
        self,
        texts: Sequence[str],
        tokens: Any,
        rows: np.ndarray,
        all_adapters: Sequence[str],
        routing: Sequence[bool],
        precision: str | None = None,
    ) -> np.ndarray:
        torch = self._torch
        adapters = [all_adapters[i] for i in rows]
        remember = [j for j, i in enumerate(rows) if routing[i] and adapters[j] == BASE]
        batch = self._pad(tokens, rows)
        keep = bool(remember) and self._keeps_states
        with torch.inference_mode(), self._autocast(precision):
            if all(a == BASE for a in adapters):
                # Exactly the base model, without the per-call cost of peft's mixed-batch hooks
                # (~3 ms at batch 1) or the anchor's LoRA: the plain model (same weights), else
                # the anchor-only PeftModel (the no-op anchor, B = 0).
                plain = self.shortcuts.enabled(PLAIN_BASE_PASS)
                model = self._plain_model(precision) if plain else self.model
                output = model(**batch, output_hidden_states=keep)
            else:
                output = self.model(**batch, adapter_names=adapters, output_hidden_states=keep)
            if keep and self._hidden is not None:  # routing rows: keep the reuse layer's input
                states = output.hidden_states[self.reuse_layer]
                lengths = batch["attention_mask"].sum(dim=1).tolist()
                for j in remember:
                    self._hidden.put(texts[rows[j]], states[j, : lengths[j]].clone())
            return mean_pool(output.last_hidden_state, batch["attention_mask"]).cpu().numpy()

    def _plain_model(self, precision: str | None) -> Any:
        """The plain base model for a pass at `precision`. Under bf16 autocast, a copy whose
        Linear weights and biases are bf16 already: autocast would round the fp32 ones to
        bf16 on every call (weights that need no grad are not cached), the same values."""
        if (precision or self.precision) != "bf16":
            return self._plain
        if self._plain_bf16 is None:
            self._plain_bf16 = bf16_linear_copy(self._plain, self._torch)
        return self._plain_bf16

    def _pad(self, tokens: Any, rows: np.ndarray) -> Any:
        return self.tokenizer.pad(
            {
                "input_ids": [tokens["input_ids"][i] for i in rows],
                "attention_mask": [tokens["attention_mask"][i] for i in rows],
            },
            return_tensors="pt",
        ).to(self.device)

    def _forward_from_hidden(
        self, states: list[Any], adapters: list[str], merged: bool | None = None
    ) -> np.ndarray:
        """Run only the layers from `reuse_layer` up, from the base pass's hidden states: on
        the experts' merged weights where they have them, else through peft's hooks."""
        torch = self._torch
        longest = max(len(h) for h in states)
        hidden = states[0].new_zeros((len(states), longest, states[0].shape[-1]))
        mask = torch.zeros((len(states), longest), dtype=torch.long, device=hidden.device)
        for j, state in enumerate(states):
            hidden[j, : len(state)] = state
            mask[j, : len(state)] = 1
        bert: Any = self.model.get_base_model()  # a BertModel (peft types it loosely)
        if merged is None:
            merged = self.shortcuts.enabled(MERGED_EXPERT_LAYERS)
        tables = self._merged
        if merged and tables is not None and all(tables.has(a) for a in adapters):
            try:
                with torch.inference_mode(), self._autocast():
                    top = tables.run(
                        hidden,
                        mask,
                        adapters,
                        lambda m, h: hf_private.encoder_attention_mask(bert, m, h),
                    )
                    return mean_pool(top, mask).cpu().numpy()
            except Exception as exc:  # the peft hooks path below serves instead
                self.shortcuts.failed(MERGED_EXPERT_LAYERS, exc)
        with (
            torch.inference_mode(),
            self._autocast(),
            hf_private.adapter_rows(self.model, adapters),
        ):
            extended = hf_private.encoder_attention_mask(bert, mask, hidden)
            for layer in bert.encoder.layer[self.reuse_layer :]:
                hidden = hf_private.run_layer(layer, hidden, extended)
            return mean_pool(hidden, mask).cpu().numpy()

    # -- start-up self-check ---------------------------------------------------------------

    def check_reuse(self, texts: Sequence[str] = PROBE_TEXTS) -> float | None:
        """Compare hidden-state reuse with a full pass of a random top-layer adapter on
        `texts`, through peft's hooks and on merged weights; switch reuse off for the
        process if the hooks path differs or the check raises, and only the merged layers
        off if they alone differ.

        Returns the largest max abs difference of the paths that stay on, or None when
        reuse is not configured or is off.
        """
        if self._hidden is None or not self.shortcuts.enabled(HIDDEN_STATE_REUSE):
            return None
        tolerance = REUSE_TOLERANCE.get(self.precision, REUSE_TOLERANCE["fp32"])
        try:
            with self._lock:
                hooks, merged = self._reuse_differences(list(texts))
        except Exception as exc:
            reason = f"self-check raised {type(exc).__name__}: {exc}"
            self.shortcuts.switch_off(HIDDEN_STATE_REUSE, reason)
            return None
        if not hooks <= tolerance:  # NaN fails too
            reason = f"self-check max abs diff {hooks:.3g} > {tolerance:g}"
            self.shortcuts.switch_off(HIDDEN_STATE_REUSE, reason)
            return hooks
        if merged is None:
            return hooks
        if not merged <= tolerance:
            reason = f"self-check max abs diff {merged:.3g} > {tolerance:g}"
            self.shortcuts.switch_off(MERGED_EXPERT_LAYERS, reason)
            return hooks
        return max(hooks, merged)

    def _reuse_differences(self, texts: list[str]) -> tuple[float, float | None]:
        """Max abs difference to a full pass of the reused pass through peft's hooks and, if
        the merged layers are on, on merged weights."""
        torch = self._torch
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        rows = np.arange(len(texts))
        batch = self._pad(tokens, rows)
        with torch.inference_mode(), self._autocast():
            output = self.model(**batch, output_hidden_states=True)
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        states = [
            output.hidden_states[self.reuse_layer][j, : lengths[j]].clone()
            for j in range(len(texts))
        ]
        self._add_probe_adapter()
        try:
            probe = [_PROBE] * len(texts)
            full = self._forward(texts, tokens, rows, probe, [False] * len(texts))
            hooks = self._forward_from_hidden(states, probe, merged=False)
            merged = None
            self._merge(_PROBE, list(range(self.reuse_layer or 0, self._layer_count)))
            if self._merged is not None and self._merged.has(_PROBE):
                merged = float(np.abs(full - self._forward_from_hidden(states, probe)).max())
        finally:
            self._delete_adapter(_PROBE)
        return float(np.abs(full - hooks).max()), merged

    def check_plain_base(self, texts: Sequence[str] = PROBE_TEXTS) -> float:
        """Start-up self-check of the plain base pass: it must equal the anchor-only
        PeftModel's (the anchor adds exactly zero); if not, base passes go through peft."""
        torch = self._torch
        tokens = self.tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)
        batch = self._pad(tokens, np.arange(len(texts)))
        try:
            with self._lock, torch.inference_mode(), self._autocast():
                plain = self._plain_model(self.precision)(**batch).last_hidden_state
                exact = self.model(**batch).last_hidden_state
            difference = float((plain - exact).abs().max())
        except Exception as exc:
            self.shortcuts.switch_off(PLAIN_BASE_PASS, f"self-check raised {exc!r}")
            return float("nan")
        if not difference <= 1e-6:
            reason = f"self-check max abs diff {difference:.3g} > 1e-06"
            self.shortcuts.switch_off(PLAIN_BASE_PASS, reason)
        return difference

    def _add_probe_adapter(self) -> None:
        from peft import LoraConfig

        bert: Any = self.model.get_base_model()
        first = self.reuse_layer or 0
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["query", "key", "value", "dense"],
            layers_to_transform=list(range(first, len(bert.encoder.layer))),
            init_lora_weights=False,  # random A and B: the probe really changes the output
        )
        with self._torch.random.fork_rng(devices=[]):
            self._torch.manual_seed(0)
            self.model.add_adapter(_PROBE, config)
        self.model.eval()
