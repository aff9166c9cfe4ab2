"""The heavy objects a running gateway owns, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.encoder import LoraEncoder
from app.encoder.base_model import pick_device
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.service.model_worker import ModelWorker
from app.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    settings: Settings
    encoder: LoraEncoder
    registry: ExpertRegistry
    indexes: IndexStore
    worker: ModelWorker

    @classmethod
    def start(cls, settings: Settings) -> ServiceContext:
        registry = ExpertRegistry(
            settings.experts_dir, settings.router_aggregation, settings.router_fallback_threshold
        )
        experts = registry.load_all()
        device = pick_device(settings.device)
        encoder = LoraEncoder(
            registry.adapter_dir,
            capacity=settings.max_resident_experts,
            device=device,
            max_seq_length=settings.max_seq_length,
            batch_size=settings.encode_batch_size,
        )
        indexes = IndexStore(settings.indexes_dir, encoder.dim, settings.index_kind, settings.hnsw_m)
        for orphan in set(indexes.open_existing()) - set(experts):
            # An expert deleted by a process that crashed before dropping its index.
            log.warning("dropping index %r: its expert no longer exists", orphan)
            indexes.drop(orphan)
        for name in experts:
            indexes.open(name)
        log.info("serving %d experts on %s", len(experts), device)
        return cls(settings, encoder, registry, indexes, ModelWorker())

    def close(self) -> None:
        self.worker.shutdown()
        self.indexes.close()
