"""Applies a change to this gateway's local state. Idempotent, so replaying the change log
after a crash (or applying a change this gateway already has) is always safe."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np

from app.encoder.base import QueryEncoder
from app.errors import InvalidAdapter
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.replication.changes import (
    Change,
    DocumentDeleted,
    DocumentsUpserted,
    ExpertAdded,
    ExpertRemoved,
    FusionWeightSet,
)
from app.service.batcher import MicroBatcher
from app.service.embedding_cache import EmbeddingCache

# Unrelated texts an adapter must keep apart (the base model puts them at cosine 0.09 at most).
PROBE_TEXTS = (
    "aeroelastic flutter of a swept wing",
    "python: sort a dictionary by its values",
    "does vitamin d prevent bone fractures",
)
COLLAPSED = 0.999


class ChangeApplier:
    """Applies changes to this gateway's registry, indexes, adapter pool and cache."""

    def __init__(
        self,
        registry: ExpertRegistry,
        indexes: IndexStore,
        encoder: QueryEncoder,
        encoder_batcher: MicroBatcher,
        cache: EmbeddingCache,
    ) -> None:
        self.registry = registry
        self.indexes = indexes
        self.encoder = encoder
        self.encoder_batcher = encoder_batcher
        self.cache = cache

    async def apply(self, change: Change) -> Any:
        if isinstance(change, ExpertAdded):
            return await self._add_expert(change)
        if isinstance(change, ExpertRemoved):
            return await self._remove_expert(change.name)
        if isinstance(change, DocumentsUpserted):
            if change.name not in self.registry:
                return (0, 0)  # removed later in the log
            index = await asyncio.to_thread(self.indexes.open, change.name)
            return await asyncio.to_thread(index.upsert, change.documents, change.embeddings)
        if isinstance(change, DocumentDeleted):
            if change.name not in self.indexes:
                return False
            return await asyncio.to_thread(self.indexes.get(change.name).delete, change.doc_id)
        if isinstance(change, FusionWeightSet):
            if change.name not in self.registry:
                return None  # removed later in the log
            return await asyncio.to_thread(
                self.registry.set_fusion_weight, change.name, change.weight
            )
        raise TypeError(f"not a change: {change!r}")

    async def _add_expert(self, change: ExpertAdded) -> Any:
        registry = self.registry
        if change.name in registry:
            current = registry.get(change.name)
            if current.spec.adapter_sha256 == hashlib.sha256(change.adapter_model).hexdigest():
                return current  # already applied
            await self._remove_expert(change.name)
        # Index first: the moment the router sees the expert, its index must exist.
        await asyncio.to_thread(self.indexes.open, change.name)
        expert = await asyncio.to_thread(
            registry.add,
            change.name,
            change.adapter_config,
            change.adapter_model,
            change.pilots,
            change.description,
            change.fallback_threshold,
            change.extra,
        )
        try:
            # Load it now: a failure surfaces here, not as base vectors under its name.
            await self.encoder_batcher.call(self.encoder.ensure_resident, [change.name])
            await self._check_outputs(change.name)
        except InvalidAdapter:
            await self._remove_expert(change.name)
            raise
        return expert

    async def _check_outputs(self, name: str) -> None:
        """Finite weights can still give unusable vectors (weights scaled by 1e30 overflow
        to NaN; a collapsed adapter maps every text to one point): refuse those."""
        texts = list(PROBE_TEXTS)
        vectors = await self.encoder_batcher.call(self.encoder.encode, texts, [name] * len(texts))
        if not np.all(np.isfinite(vectors)):
            raise InvalidAdapter(f"adapter of expert {name!r} gives non-finite embeddings")
        similarity = vectors @ vectors.T
        if np.any(similarity[np.triu_indices(len(texts), 1)] > COLLAPSED):
            raise InvalidAdapter(f"adapter of expert {name!r} maps different texts to one vector")

    async def _remove_expert(self, name: str) -> None:
        """Stop routing to it, let in-flight requests finish, then drop adapter and index."""
        if name in self.registry:
            await asyncio.to_thread(self.registry.remove, name)
        await self.encoder_batcher.call(self.encoder.unload, name)
        self.cache.drop_expert(name)
        await asyncio.to_thread(self.indexes.drop, name)
