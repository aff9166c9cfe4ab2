"""The on-disk expert format, written atomically.

    experts/<name>/adapter_config.json      peft LoRA config
    experts/<name>/adapter_model.safetensors
    experts/<name>/pilots.npy               float32 (n, 384), base-encoder space, unit rows
    experts/<name>/expert.json              metadata (see ExpertSpec)

A new expert is assembled in a hidden temporary directory, fsynced, then renamed into
place, so a crash never leaves a half-written expert that the service would load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.core.hybrid import QueryWeights
from app.core.names import check_name
from app.encoder.base_model import BASE_MODEL_NAME
from app.errors import NotFound
from app.experts.validation import adapter_is_identity

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_MODEL = "adapter_model.safetensors"
PILOTS = "pilots.npy"
METADATA = "expert.json"
FUSION = "fusion.json"  # beside the expert folders: hybrid search's fallback weight model
DEFAULT_DENSE_WEIGHT = 0.6  # before `rr tune-fusion` has run (the prototype weight)
_TEMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    description: str
    base_model: str
    created: str
    pilot_count: int
    adapter_sha256: str
    # Calibrated per-expert router threshold (cosine); None = use the global setting.
    fallback_threshold: float | None = None
    # Hybrid search's dense weight for queries this expert embeds (learned on its train
    # queries by `rr tune-fusion`); None = the per-query fallback model.
    fusion_weight: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training config, metrics, ...

    @property
    def use_adapter(self) -> bool:
        """False: queries routed here are embedded by the base encoder (the routing still
        picks this expert's index), because on its held-out queries the adapter did not beat
        the base encoder in hybrid search (`rr gate-experts`: extra["gate"], which the
        change log carries to replicas with the rest of `extra`)."""
        return bool((self.extra.get("gate") or {}).get("use_adapter", True))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Expert:
    spec: ExpertSpec
    path: Path
    pilots: np.ndarray
    identity: bool = False  # the adapter changes nothing: its embeddings are the base's

    @property
    def name(self) -> str:
        return self.spec.name


def adapter_locator(adapters: Mapping[str, Path]) -> Callable[[str], Path]:
    """The encoder's AdapterLocator over `{expert: directory}`: the directory, or NotFound
    when the name is unknown or its adapter file is gone (serving, training and eval)."""

    def locate(name: str) -> Path:
        path = adapters.get(name)
        if path is None or not (path / ADAPTER_MODEL).is_file():
            raise NotFound(f"expert {name!r} has no adapter on disk")
        return path

    return locate


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_expert(
    experts_dir: Path,
    name: str,
    adapter_config: bytes,
    adapter_model: bytes,
    pilots: np.ndarray,
    description: str = "",
    fallback_threshold: float | None = None,
    extra: dict[str, Any] | None = None,
    replace: bool = False,
) -> Expert:
    """Atomically create `experts_dir/name`. Raises FileExistsError unless `replace`."""
    check_name(name)
    experts_dir.mkdir(parents=True, exist_ok=True)
    final = experts_dir / name
    if final.exists() and not replace:
        raise FileExistsError(name)
    spec = ExpertSpec(
        name=name,
        description=description,
        base_model=BASE_MODEL_NAME,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        pilot_count=int(pilots.shape[0]),
        adapter_sha256=hashlib.sha256(adapter_model).hexdigest(),
        fallback_threshold=fallback_threshold,
        extra=extra or {},
    )
    staging = experts_dir / f"{_TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        buffer = io.BytesIO()
        np.save(buffer, pilots.astype(np.float32), allow_pickle=False)
        _fsync_write(staging / ADAPTER_CONFIG, adapter_config)
        _fsync_write(staging / ADAPTER_MODEL, adapter_model)
        _fsync_write(staging / PILOTS, buffer.getvalue())
        _fsync_write(staging / METADATA, json.dumps(spec.to_json(), indent=2).encode())
        _fsync_dir(staging)
        if final.exists():
            _discard(final)
        os.rename(staging, final)
        _fsync_dir(experts_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    identity = adapter_is_identity(adapter_model)
    return Expert(spec=spec, path=final, pilots=pilots.astype(np.float32), identity=identity)


def update_pilots(expert: Expert, pilots: np.ndarray, **changes: Any) -> Expert:
    """Replace an expert's pilots (and metadata fields) in place, atomically per file."""
    spec = ExpertSpec(**{**asdict(expert.spec), "pilot_count": int(pilots.shape[0]), **changes})
    for filename, payload in (
        (PILOTS, _npy_bytes(pilots)),
        (METADATA, json.dumps(spec.to_json(), indent=2).encode()),
    ):
        temp = expert.path / f"{_TEMP_PREFIX}{filename}"
        _fsync_write(temp, payload)
        os.replace(temp, expert.path / filename)
    _fsync_dir(expert.path)
    return Expert(spec, expert.path, pilots.astype(np.float32), expert.identity)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


# Fusion models before `rr tune-fusion` has run: one constant weight, no routed model.
UNTUNED: tuple[QueryWeights, QueryWeights | None] = (
    QueryWeights.constant(DEFAULT_DENSE_WEIGHT),
    None,
)


def read_fusion_models(experts_dir: Path) -> tuple[QueryWeights, QueryWeights | None]:
    """Hybrid's per-query dense-weight models: (fallback queries, routed queries of experts
    without their own weight); before `rr tune-fusion`, one constant weight."""
    try:
        raw = json.loads((experts_dir / FUSION).read_text())
    except FileNotFoundError:
        return UNTUNED
    routed = raw.get("routed")
    return (
        QueryWeights.from_json(raw["fallback"]),
        None if routed is None else QueryWeights.from_json(routed),
    )


def write_fusion(experts_dir: Path, payload: dict[str, Any]) -> None:
    """`experts_dir/fusion.json`, atomically (`rr tune-fusion`'s model and its evidence)."""
    temp = experts_dir / f"{_TEMP_PREFIX}{FUSION}"
    _fsync_write(temp, json.dumps(payload, indent=2).encode())
    os.replace(temp, experts_dir / FUSION)
    _fsync_dir(experts_dir)


def update_spec(expert: Expert, **changes: Any) -> Expert:
    """An expert with metadata fields changed (expert.json replaced atomically)."""
    spec = ExpertSpec(**{**asdict(expert.spec), **changes})
    temp = expert.path / f"{_TEMP_PREFIX}{METADATA}"
    _fsync_write(temp, json.dumps(spec.to_json(), indent=2).encode())
    os.replace(temp, expert.path / METADATA)
    _fsync_dir(expert.path)
    return Expert(spec, expert.path, expert.pilots, expert.identity)


def read_expert(path: Path) -> Expert:
    try:
        meta = json.loads((path / METADATA).read_text())
        pilots = np.load(path / PILOTS, allow_pickle=False).astype(np.float32)
    except FileNotFoundError as exc:
        raise NotFound(f"expert {path.name!r} is incomplete: {exc.filename} missing") from exc
    known = set(ExpertSpec.__dataclass_fields__)
    spec = ExpertSpec(**{k: v for k, v in meta.items() if k in known})
    adapter = path / ADAPTER_MODEL
    identity = adapter.exists() and adapter_is_identity(adapter.read_bytes())
    return Expert(spec=spec, path=path, pilots=pilots, identity=identity)


def list_expert_dirs(experts_dir: Path) -> list[Path]:
    """Complete expert directories, sorted; leftovers of interrupted writes are removed."""
    if not experts_dir.is_dir():
        return []
    found = []
    for child in sorted(experts_dir.iterdir()):
        if child.name.startswith((_TEMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)
        elif child.is_dir() and (child / METADATA).is_file():
            found.append(child)
    return found


def _discard(path: Path) -> None:
    # Rename first so the expert disappears atomically, then delete at leisure.
    trash = path.parent / f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_expert(experts_dir: Path, name: str) -> None:
    path = experts_dir / check_name(name)
    if not path.exists():
        raise NotFound(f"expert {name!r} not found")
    _discard(path)
