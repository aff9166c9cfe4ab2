"""The heavy objects a running gateway owns, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.encoder import LoraEncoder
from app.encoder.base_model import pick_device, pick_precision
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.service.batched_work import encode_batch, search_batch
from app.service.batcher import MicroBatcher
from app.service.embedding_cache import EmbeddingCache
from app.settings import Settings

log = logging.getLogger(__name__)


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


@dataclass
class ServiceContext:
    settings: Settings
    encoder: LoraEncoder
    registry: ExpertRegistry
    indexes: IndexStore
    encoder_batcher: MicroBatcher  # owns every model call
    search_batcher: MicroBatcher  # owns every FAISS search
    cache: EmbeddingCache

    @classmethod
    def start(cls, settings: Settings) -> ServiceContext:
        registry = ExpertRegistry(
            settings.experts_dir, settings.router_aggregation, settings.router_fallback_threshold
        )
        experts = registry.load_all()
        device = pick_device(settings.device)
        precision = pick_precision(settings.precision, device)
        encoder = LoraEncoder(
            registry.adapter_dir,
            capacity=settings.max_resident_experts,
            device=device,
            max_seq_length=settings.max_seq_length,
            batch_size=settings.encode_batch_size,
            precision=precision,
            reuse_layer=settings.reuse_layer,
        )
        encoder.encode(["warm up"])  # the first forward pass is slow: not a user's request
        indexes = IndexStore(
            settings.indexes_dir, encoder.dim, settings.index_kind, settings.hnsw_m
        )
        for orphan in set(indexes.open_existing()) - set(experts):
            # An expert deleted by a process that crashed before dropping its index.
            log.warning("dropping index %r: its expert no longer exists", orphan)
            indexes.drop(orphan)
        for name in experts:
            indexes.open(name)
        log.info("serving %d experts on %s (%s)", len(experts), device, precision)
        batching = {"max_wait_ms": settings.max_wait_ms, "max_pending": settings.max_queue}
        return cls(
            settings,
            encoder,
            registry,
            indexes,
            MicroBatcher(
                "encoder",
                encode_batch(encoder),
                settings.max_batch,
                on_start=lambda: _set_torch_threads(settings.torch_threads),
                **batching,
            ),
            MicroBatcher("search", search_batch(indexes), settings.max_batch, **batching),
            EmbeddingCache(settings.embedding_cache_size),
        )

    def close(self) -> None:
        self.encoder_batcher.close()
        self.search_batcher.close()
        self.indexes.close()
