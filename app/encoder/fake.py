"""A deterministic encoder with no model: the fast tests' stand-in (`RR_ENCODER_BACKEND=fake`).

Same contract as `EncoderReplicas` (app/encoder/base.py). Texts become signed feature-hashed
bags of words, so texts sharing words are close and routing by pilot centroids behaves as
with the real model. An adapter is read from its real files (a missing or unreadable one is
an InvalidAdapter, as with peft) and acts as a fixed perturbation seeded by its weights'
hash: distinct adapters give distinct vectors, an identity adapter (every lora_B zero) none.
Its routing features are its base vectors (it has no layers), so a routed pass is the
chooser on those, then each chosen adapter's vector.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.encoder.base import BASE, AdapterLocator, Chooser, PoolStats, RoutedPass
from app.errors import InvalidAdapter
from app.shortcuts import Shortcuts

_WORD = re.compile(r"\w+")
# all-MiniLM-L6-v2's Linear layers: 6 BERT layers of width 384 (feed-forward 1536), a pooler.
_LAYERS, _WIDTH, _FFN = 6, 384, 1536
ADAPTER_STRENGTH = 0.5


def minilm_module_shapes() -> dict[str, tuple[int, int]]:
    shapes = {"pooler.dense": (_WIDTH, _WIDTH)}
    for i in range(_LAYERS):
        prefix = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value"):
            shapes[f"{prefix}.{name}"] = (_WIDTH, _WIDTH)
        shapes[f"{prefix}.attention.output.dense"] = (_WIDTH, _WIDTH)
        shapes[f"{prefix}.intermediate.dense"] = (_WIDTH, _FFN)
        shapes[f"{prefix}.output.dense"] = (_FFN, _WIDTH)
    return shapes


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


class FakeEncoder:
    dim = _WIDTH

    def __init__(
        self,
        locate_adapter: AdapterLocator,
        count: int = 1,
        capacity: int = 16,
        max_seq_length: int = 256,
        shortcuts: Shortcuts | None = None,
        routing_layer: int = 4,
    ) -> None:
        self.routing_layer = routing_layer
        self._locate = locate_adapter
        self._count = count
        self.capacity = capacity
        self.max_seq_length = max_seq_length
        self.module_shapes = minilm_module_shapes()
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self._adapters: OrderedDict[str, np.ndarray | None] = OrderedDict()  # None: identity
        self._stats = PoolStats()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self._count

    @property
    def stats(self) -> PoolStats:
        return self._stats

    def warm_up(self) -> None:
        self.encode(["warm up"])

    def token_counts(self, texts: Sequence[str], truncated: bool = True) -> list[int]:
        full = [len(_WORD.findall(text)) + 2 for text in texts]  # [CLS] words [SEP]
        return [min(n, self.max_seq_length) for n in full] if truncated else full

    # -- adapter pool --------------------------------------------------------------------

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._adapters)

    def is_resident(self, name: str) -> bool:
        return name in self._adapters

    def ensure_resident(self, names: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(n for n in names if n != BASE))
        with self._lock:
            for name in wanted:
                if name in self._adapters:
                    self._adapters.move_to_end(name)
                    continue
                victims = [n for n in self._adapters if n not in wanted]
                while victims and len(self._adapters) >= self.capacity:
                    del self._adapters[victims.pop(0)]
                    self._stats.evictions += 1
                self._adapters[name] = self._load(name)
                self._stats.loads += 1

    def unload(self, name: str) -> None:
        with self._lock:
            self._adapters.pop(name, None)

    def _load(self, name: str) -> np.ndarray | None:
        from safetensors.numpy import load

        path = Path(self._locate(name)) / "adapter_model.safetensors"
        try:
            blob = path.read_bytes()
            tensors = load(blob)
        except Exception as exc:  # the real pool's peft errors vary too
            raise InvalidAdapter(f"adapter of expert {name!r} could not be loaded: {exc}") from exc
        if not tensors:
            raise InvalidAdapter(f"adapter of expert {name!r} did not apply to the base model")
        if not any(np.any(v) for k, v in tensors.items() if ".lora_B." in k):
            return None  # B = 0: the adapter leaves the base model unchanged
        seed = int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        return rng.normal(size=(self.dim, self.dim)).astype(np.float32) / np.sqrt(self.dim)

    # -- encoding ------------------------------------------------------------------------

    def resident_bytes(self, name: str) -> int:
        weights = self._adapters.get(name)
        return 0 if weights is None else int(weights.nbytes) * self._count

    def precisions(self) -> dict[str, str]:
        return {"queries": "fp32", "documents": "fp32"}  # no model: exact arithmetic only

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        replica: int = 0,
        documents: bool = False,  # one precision here: documents embed like queries
    ) -> np.ndarray:
        adapters = list(adapters) if adapters is not None else [BASE] * len(texts)
        if documents and any(a != BASE for a in adapters):
            raise ValueError("documents are embedded by the base model only")
        if len(adapters) != len(texts):
            raise ValueError("one adapter name per text")
        if not 0 <= replica < self._count:
            raise ValueError(f"no replica {replica}")
        out = np.stack([self._base(t) for t in texts]) if texts else np.zeros((0, self.dim))
        with self._lock:
            self.ensure_resident(adapters)
            for i, name in enumerate(adapters):
                weights = None if name == BASE else self._adapters[name]
                if weights is not None:
                    out[i] = out[i] + ADAPTER_STRENGTH * (weights @ out[i])
        return _unit(out)

    def encode_routed(self, texts: Sequence[str], choose: Chooser, replica: int = 0) -> RoutedPass:
        features = self.routing_features(texts, replica)
        chosen = [list(row) for row in choose(features)]
        if len(chosen) != len(texts):
            raise ValueError("the chooser must pick adapters for every text")
        vectors = [
            self.encode([text] * len(row), row, replica)
            for text, row in zip(texts, chosen, strict=True)
        ]
        return RoutedPass(features, chosen, vectors)

    def routing_features(self, texts: Sequence[str], replica: int = 0) -> np.ndarray:
        return self.encode(texts, replica=replica)

    def one_pass(self, name: str) -> bool | None:
        return True if name in self._adapters else None

    def _base(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())[: self.max_seq_length] or [text]
        for word in words:
            digest = hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            vector[value % self.dim] += 1.0 if value >> 63 else -1.0
        return vector if np.any(vector) else np.ones(self.dim, dtype=np.float32)
