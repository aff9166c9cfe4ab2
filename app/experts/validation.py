"""Checks an uploaded LoRA adapter against the base model before anything is written.

Only safetensors are accepted: a pickled `.bin` can run code when loaded.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import InvalidAdapter, InvalidInput

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class AdapterSummary:
    rank: int
    target_modules: tuple[str, ...]
    modules: int


def _safetensors_header(blob: bytes) -> dict[str, Any]:
    if blob[:2] == b"PK" or blob[:1] == b"\x80":
        raise InvalidAdapter("adapter_model is a pickle/zip checkpoint; upload safetensors only")
    if len(blob) < 8:
        raise InvalidAdapter("adapter_model is not a safetensors file")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(_MAX_HEADER, len(blob) - 8):
        raise InvalidAdapter("adapter_model is not a safetensors file")
    try:
        header = json.loads(blob[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter("adapter_model is not a safetensors file") from exc
    if not isinstance(header, dict):
        raise InvalidAdapter("adapter_model is not a safetensors file")
    return header


def parse_adapter_config(config_bytes: bytes) -> dict[str, Any]:
    try:
        config = json.loads(config_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapter("adapter_config is not valid JSON") from exc
    if not isinstance(config, dict):
        raise InvalidAdapter("adapter_config must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidAdapter("adapter_config.peft_type must be 'LORA'")
    rank = config.get("r")
    if not isinstance(rank, int) or not 0 < rank <= 256:
        raise InvalidAdapter("adapter_config.r must be an integer in 1..256")
    if config.get("modules_to_save"):
        raise InvalidAdapter("modules_to_save would replace base weights; not supported")
    if config.get("use_dora"):
        raise InvalidAdapter("DoRA adapters are not supported")
    return config


def validate_adapter(
    config_bytes: bytes, model_bytes: bytes, module_shapes: dict[str, tuple[int, int]]
) -> AdapterSummary:
    """Raise InvalidAdapter unless the files form a plain LoRA for this base model."""
    config = parse_adapter_config(config_bytes)
    rank = config["r"]
    header = _safetensors_header(model_bytes)
    parts: dict[str, set[str]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        match = _KEY.match(key)
        if not match:
            raise InvalidAdapter(f"unexpected tensor {key!r} in adapter_model")
        module, part = match["module"], match["part"]
        if module not in module_shapes:
            raise InvalidAdapter(f"adapter targets {module!r}, which the base model lacks")
        in_features, out_features = module_shapes[module]
        expected = [rank, in_features] if part == "A" else [out_features, rank]
        if list(info.get("shape", [])) != expected:
            raise InvalidAdapter(
                f"{key}: shape {info.get('shape')} does not match base model (expected {expected})"
            )
        parts.setdefault(module, set()).add(part)
    if not parts:
        raise InvalidAdapter("adapter_model holds no LoRA weights")
    incomplete = sorted(m for m, p in parts.items() if p != {"A", "B"})
    if incomplete:
        raise InvalidAdapter(f"modules missing lora_A or lora_B: {incomplete[:3]}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    stray = sorted(
        m for m in parts if not any(m.split(".")[-1] == t or m.endswith(t) for t in targets)
    )
    if targets and stray:
        raise InvalidAdapter(f"weights for modules not in target_modules: {stray[:3]}")
    _check_finite(model_bytes)
    return AdapterSummary(rank=rank, target_modules=tuple(targets), modules=len(parts))


def _check_finite(model_bytes: bytes) -> None:
    from safetensors.numpy import load

    try:
        tensors = load(model_bytes)
    except Exception as exc:  # safetensors raises its own error types
        raise InvalidAdapter("adapter_model could not be read as safetensors") from exc
    for key, value in tensors.items():
        if not np.all(np.isfinite(value)):
            raise InvalidAdapter(f"{key} holds NaN or infinite values")


def adapter_is_identity(model_bytes: bytes) -> bool:
    """True when every lora_B is zero: the adapter leaves the base model unchanged (an
    expert whose training kept step 0), so serving can reuse the base embedding."""
    from safetensors.numpy import load

    try:
        tensors = load(model_bytes)
    except Exception:  # unreadable files are rejected elsewhere; never claim identity
        return False
    parts = [value for key, value in tensors.items() if ".lora_B." in key]
    return bool(parts) and not any(np.any(value) for value in parts)


# The base encoder's document vectors have unit length; a precomputed one that does not was
# made by another model or left unnormalised, and its scores would not compare with the rest.
UNIT_NORM_TOLERANCE = 0.01


def document_embeddings(rows: Sequence[tuple[int, Sequence[float]]], dim: int) -> np.ndarray:
    """Precomputed base-encoder document vectors, `(position, values)` pairs, checked for
    dimension, finiteness and unit norm; float32 rows in the order given."""
    for position, values in rows:
        if len(values) != dim:
            raise InvalidInput(
                f"documents[{position}].embedding: {len(values)} numbers, the base encoder "
                f"gives {dim}"
            )
    array = np.asarray([values for _, values in rows], dtype=np.float64).reshape(-1, dim)
    for (position, _), finite in zip(rows, np.all(np.isfinite(array), axis=1), strict=True):
        if not finite:
            raise InvalidInput(f"documents[{position}].embedding: NaN or infinite values")
    with np.errstate(over="ignore"):  # 1e308 squared is inf: refused below, no warning
        norms = np.linalg.norm(array, axis=1)
    for (position, _), norm in zip(rows, norms, strict=True):
        if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
            raise InvalidInput(
                f"documents[{position}].embedding: norm {norm:.4g}; base-encoder document "
                "embeddings have unit length (L2-normalised)"
            )
    return (array / norms[:, None]).astype(np.float32)


def parse_pilots(npy_bytes: bytes, dim: int) -> np.ndarray:
    """Read an uploaded `.npy` pilot matrix (no pickles), return unit-norm float32 rows."""
    import io

    try:
        array = np.load(io.BytesIO(npy_bytes), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError for bad files
        raise InvalidInput("pilots must be a .npy file of float numbers") from exc
    return normalize_pilots(array, dim)


def normalize_pilots(array: np.ndarray, dim: int) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim or array.shape[0] == 0:
        raise InvalidInput(f"pilots must have shape (n, {dim}) with n >= 1, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise InvalidInput("pilots must be finite floating-point numbers")
    array = array.astype(np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidInput("pilots must not contain zero vectors")
    return array / norms
