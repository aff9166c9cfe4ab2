"""Which precision queries and documents run at: measured and checked against fp32.

bf16 autocast is faster on CPUs with bf16 dot products and on GPUs, and agrees with fp32 to
a cosine of 0.9999+ for this model; both facts are checked on probe texts at start-up, and
fp32 (the exact path) stays wherever either fails.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

# Documents at a faster precision must agree with fp32 to this cosine (measured: >= 0.99996
# on every staged corpus under bf16 autocast).
DOCUMENT_MIN_COSINE = 0.9999
PROBE_DOCUMENTS = (
    "Wing sweep delays the compressibility drag rise of transonic aircraft.",
    "sorted(d.items(), key=lambda kv: kv[1]) sorts a dictionary by value in Python.",
    "Vitamin D supplementation and bone mineral density in older adults: a randomized "
    "controlled trial of 400 participants followed for two years.",
)
# Queries at bf16 must agree with fp32 to this cosine on the probe batch (and be faster).
QUERY_MIN_COSINE = 0.9999
_PROBE_TEXTS = (
    "what causes aircraft wing flutter at supersonic speed",
    "python sort a dictionary by value",
    "x",
)
PROBE_QUERIES = tuple(f"{text} {i}" for i, text in enumerate(_PROBE_TEXTS * 11))[:32]


class Encodes(Protocol):
    precision: str
    document_precision: str

    def encode(
        self, texts: Sequence[str], adapters: Sequence[str] | None = None, documents: bool = False
    ) -> np.ndarray: ...


def bf16_linear_copy(model: Any, keep: Sequence[Any] = ()) -> Any:
    """`model` with its Linear layers' weights and biases cast to bf16 (the values bf16
    autocast computes with) and every other tensor, and the objects in `keep`, shared."""
    import torch

    linear = {
        id(t)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
        for t in m.parameters(recurse=False)
    }
    shared: dict[int, Any] = {
        id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in linear
    }
    shared.update({id(obj): obj for obj in keep})
    copied = copy.deepcopy(model, shared)
    for module in copied.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return copied


def check_document_precision(encoder: Encodes, texts: Sequence[str] = PROBE_DOCUMENTS) -> float:
    """Start-up self-check of the document precision: the lowest cosine between probe
    documents embedded at it and in fp32. Below `DOCUMENT_MIN_COSINE`, documents stay fp32
    (the exact path). Returns the cosine (1.0 when already fp32)."""
    if encoder.document_precision == "fp32":
        return 1.0
    fast = encoder.encode(texts, documents=True)
    wanted, encoder.document_precision = encoder.document_precision, "fp32"
    exact = encoder.encode(texts, documents=True)
    cosine = float(np.min(np.sum(fast * exact, axis=1)))
    if cosine >= DOCUMENT_MIN_COSINE and np.isfinite(fast).all():
        encoder.document_precision = wanted
    else:
        log.warning("documents stay fp32: %s agrees with it to cosine %.6f", wanted, cosine)
    return cosine


def measure_precision(
    encoder: Encodes, texts: Sequence[str] = PROBE_QUERIES, rounds: int = 3
) -> dict:
    """Time fp32 and bf16 autocast on a probe batch of queries; keep bf16 if it is faster
    and agrees with fp32 (cosine >= QUERY_MIN_COSINE), else fp32. Returns the figures."""
    timings: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    for precision in ("fp32", "bf16"):
        encoder.precision = precision
        encoder.encode(texts)  # warm: first calls at a precision are slow
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            outputs[precision] = encoder.encode(texts)
            best = min(best, time.perf_counter() - started)
        timings[precision] = best * 1000
    cosine = float(np.min(np.sum(outputs["fp32"] * outputs["bf16"], axis=1)))
    faster = timings["bf16"] < timings["fp32"]
    agrees = cosine >= QUERY_MIN_COSINE and bool(np.isfinite(outputs["bf16"]).all())
    encoder.precision = "bf16" if faster and agrees else "fp32"
    figures = {
        "chosen": encoder.precision,
        "fp32_ms": round(timings["fp32"], 2),
        "bf16_ms": round(timings["bf16"], 2),
        "cosine": round(cosine, 6),
        "batch": len(texts),
    }
    log.info("query precision by measurement: %s", figures)
    return figures
