"""The expert catalogue: what `/v1/experts` and registration answers describe."""

from __future__ import annotations

from dataclasses import dataclass

from app.encoder.base import QueryEncoder
from app.errors import NotFound
from app.experts.artifacts import ExpertSpec
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.service.indexing_progress import IndexingProgress, Progress


@dataclass(frozen=True)
class ExpertInfo:
    spec: ExpertSpec
    documents: int  # in its index now
    resident: bool  # its adapter is loaded on some model worker
    resident_bytes: int = 0  # what its adapter holds in memory (peft + one-pass tables)
    indexing: Progress | None = None  # first-start indexing still filling its index
    one_pass: bool | None = None  # served in one pass with routing; None: not resident


class CatalogService:
    def __init__(
        self,
        registry: ExpertRegistry,
        indexes: IndexStore,
        encoder: QueryEncoder,
        progress: IndexingProgress | None = None,
    ) -> None:
        self.registry = registry
        self.indexes = indexes
        self.encoder = encoder
        self.progress = progress if progress is not None else IndexingProgress()

    def get(self, name: str) -> ExpertInfo:
        spec = self.registry.get(name).spec  # NotFound if unknown
        documents = len(self.indexes.get(name)) if name in self.indexes else 0
        return ExpertInfo(
            spec,
            documents,
            self.encoder.is_resident(name),
            self.encoder.resident_bytes(name),
            self.progress.filling(name),
            self.encoder.one_pass(name),
        )

    def list(self) -> list[ExpertInfo]:
        found = []
        for name in self.registry.names():
            try:
                found.append(self.get(name))
            except NotFound:
                continue  # deleted while listing
        return found
