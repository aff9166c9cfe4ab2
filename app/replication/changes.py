"""The five kinds of change an operator can make, and their wire form (Redis stream fields)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from app.index import Document


@dataclass(frozen=True)
class ExpertAdded:
    name: str
    adapter_config: bytes
    adapter_model: bytes
    pilots: np.ndarray
    description: str = ""
    fallback_threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # training config, metrics
    kind = "expert_added"


@dataclass(frozen=True)
class ExpertRemoved:
    name: str
    kind = "expert_removed"


@dataclass(frozen=True)
class DocumentsUpserted:
    name: str
    documents: list[Document]
    embeddings: np.ndarray  # base-encoder vectors, so followers never re-embed
    kind = "documents_upserted"


@dataclass(frozen=True)
class DocumentDeleted:
    name: str
    doc_id: str
    kind = "document_deleted"


@dataclass(frozen=True)
class FusionWeightSet:
    name: str
    weight: float | None  # hybrid's dense weight for the expert; None = the per-query model
    kind = "fusion_weight_set"


Change = ExpertAdded | ExpertRemoved | DocumentsUpserted | DocumentDeleted | FusionWeightSet


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def payload_fields(change: Change) -> dict[str, bytes]:
    """Fields beyond `kind` and `name`."""
    if isinstance(change, ExpertAdded):
        return {
            "adapter_config": change.adapter_config,
            "adapter_model": change.adapter_model,
            "pilots": _npy(change.pilots),
            "description": change.description.encode(),
            "meta": json.dumps(
                {"fallback_threshold": change.fallback_threshold, "extra": change.extra}
            ).encode(),
        }
    if isinstance(change, DocumentsUpserted):
        docs = [[d.id, d.title, d.text, d.metadata] for d in change.documents]
        return {"documents": json.dumps(docs).encode(), "embeddings": _npy(change.embeddings)}
    if isinstance(change, DocumentDeleted):
        return {"doc_id": change.doc_id.encode()}
    if isinstance(change, FusionWeightSet):
        return {"weight": json.dumps(change.weight).encode()}
    return {}


def from_fields(fields: dict[Any, bytes]) -> Change:
    f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    kind, name = f["kind"].decode(), f["name"].decode()
    if kind == ExpertAdded.kind:
        pilots = np.load(io.BytesIO(f["pilots"]), allow_pickle=False)
        meta = json.loads(f.get("meta", b"{}"))
        return ExpertAdded(
            name,
            f["adapter_config"],
            f["adapter_model"],
            pilots,
            f["description"].decode(),
            meta.get("fallback_threshold"),
            meta.get("extra") or {},
        )
    if kind == ExpertRemoved.kind:
        return ExpertRemoved(name)
    if kind == DocumentsUpserted.kind:
        docs = [
            Document(i, text, title, meta) for i, title, text, meta in json.loads(f["documents"])
        ]
        embeddings = np.load(io.BytesIO(f["embeddings"]), allow_pickle=False)
        return DocumentsUpserted(name, docs, embeddings)
    if kind == DocumentDeleted.kind:
        return DocumentDeleted(name, f["doc_id"].decode())
    if kind == FusionWeightSet.kind:
        return FusionWeightSet(name, json.loads(f["weight"]))
    raise ValueError(f"unknown change kind {kind!r}")


class Applier(Protocol):
    """Applies one change to this gateway's state (app.service.applier.ChangeApplier)."""

    async def apply(self, change: Change) -> Any: ...
