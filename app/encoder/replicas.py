"""Several copies of the encoder, one per batcher worker thread.

One PeftModel cannot run two mixed-adapter passes at once (peft injects each pass's
`adapter_names` through hooks on the shared modules), and on a CPU one forward pass with
one thread per core scales worse than one pass per core. So each worker thread owns a
replica (~90 MB each for MiniLM) with its own adapter pool. A routed query's whole pass
(routing features, then its expert) runs on one worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import fields

import numpy as np

from app.encoder import precision, self_checks
from app.encoder.base import AdapterLocator, Chooser, PoolStats, RoutedPass
from app.encoder.base_model import EMBEDDING_DIM, MEASURE, load_tokenizer
from app.encoder.lora_encoder import LoraEncoder
from app.shortcuts import ONE_PASS, Shortcuts

log = logging.getLogger(__name__)


class EncoderReplicas:
    dim = EMBEDDING_DIM

    def __init__(
        self,
        locate_adapter: AdapterLocator,
        count: int = 1,
        shortcuts: Shortcuts | None = None,
        **encoder_options,  # noqa: ANN003 - LoraEncoder's keyword options
    ) -> None:
        if count < 1:
            raise ValueError("at least one replica")
        self.shortcuts = shortcuts if shortcuts is not None else Shortcuts()
        self.replicas = [
            LoraEncoder(locate_adapter, shortcuts=self.shortcuts, **encoder_options)
            for _ in range(count)
        ]
        self.one_pass_check: list[float | None] = []  # max abs diff per replica at start-up
        self.document_check = 1.0  # probe documents' lowest cosine to fp32 at start-up
        self.precision_check: dict = {}  # the query-precision measurement, where one ran
        self.max_seq_length = self.replicas[0].max_seq_length
        self.module_shapes = self.replicas[0].module_shapes
        self.routing_layer = self.replicas[0].routing_layer
        # Fast tokenizers must not be used from two threads at once: the request path's
        # token counting gets its own, behind a lock.
        self.tokenizer = load_tokenizer()
        self._tokenizer_lock = threading.Lock()

    def warm_up(self) -> None:
        """The first forward pass of a model is slow: not a user's request. Then each replica
        checks the one-pass path against a full pass (off for all of them if one fails)."""
        first = self.replicas[0]
        if first.precision == MEASURE:  # `auto` on bf16 hardware: one measurement for all
            self.precision_check = precision.measure_precision(first)
            for encoder in self.replicas:
                encoder.precision = first.precision
        for encoder in self.replicas:
            encoder.encode(["warm up"])
            self_checks.check_plain_base(encoder)
        # One document precision for all replicas: the lowest agreement decides.
        cosine = min(precision.check_document_precision(encoder) for encoder in self.replicas)
        if any(encoder.document_precision == "fp32" for encoder in self.replicas):
            for encoder in self.replicas:
                encoder.document_precision = "fp32"
        self.document_check = cosine
        log.info(
            "documents embedded at %s (probe cosine to fp32 %.6f)", self.document_precision, cosine
        )
        self.one_pass_check = [self_checks.check_one_pass(e) for e in self.replicas]
        checked = [d for d in self.one_pass_check if d is not None]
        if checked and self.shortcuts.enabled(ONE_PASS):
            log.info("one-pass self-check passed: max abs diff %.2e", max(checked))

    def __len__(self) -> int:
        return len(self.replicas)

    def encode(
        self,
        texts: Sequence[str],
        adapters: Sequence[str] | None = None,
        replica: int = 0,
        documents: bool = False,
    ) -> np.ndarray:
        return self.replicas[replica].encode(texts, adapters, documents)

    def encode_routed(self, texts: Sequence[str], choose: Chooser, replica: int = 0) -> RoutedPass:
        return self.replicas[replica].encode_routed(texts, choose)

    def routing_features(self, texts: Sequence[str], replica: int = 0) -> np.ndarray:
        return self.replicas[replica].routing_features(texts)

    def one_pass(self, name: str) -> bool | None:
        answers = (encoder.one_pass(name) for encoder in self.replicas)
        return next((a for a in answers if a is not None), None)

    @property
    def document_precision(self) -> str:
        return self.replicas[0].document_precision

    def resident_bytes(self, name: str) -> int:
        return sum(encoder.resident_bytes(name) for encoder in self.replicas)

    def precisions(self) -> dict[str, str]:
        return {"queries": self.replicas[0].precision, "documents": self.document_precision}

    def ensure_resident(self, names: Sequence[str]) -> None:
        for encoder in self.replicas:
            encoder.ensure_resident(names)

    def unload(self, name: str) -> None:
        for encoder in self.replicas:
            encoder.unload(name)

    def resident(self) -> list[str]:
        """Experts resident on any replica."""
        return list(dict.fromkeys(n for encoder in self.replicas for n in encoder.resident()))

    def is_resident(self, name: str) -> bool:
        return any(encoder.is_resident(name) for encoder in self.replicas)

    @property
    def stats(self) -> PoolStats:
        """Summed over replicas (`last_load_ms`: the slowest replica's last load)."""
        total = PoolStats()
        for encoder in self.replicas:
            for field in fields(PoolStats):
                mine, theirs = getattr(total, field.name), getattr(encoder.stats, field.name)
                merged = max(mine, theirs) if field.name == "last_load_ms" else mine + theirs
                setattr(total, field.name, merged)
        return total

    def token_counts(self, texts: Sequence[str], truncated: bool = True) -> list[int]:
        """Tokens each text costs as encoded (after truncation), or in full."""
        limit = {"truncation": True, "max_length": self.max_seq_length} if truncated else {}
        with self._tokenizer_lock:
            ids = self.tokenizer(list(texts), **limit)
        return [len(row) for row in ids["input_ids"]]
