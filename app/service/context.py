"""The heavy objects a running gateway owns, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.encoder.base_model import pick_device, pick_precision, pick_workers
from app.encoder.replicas import EncoderReplicas
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.index.faiss_backend import set_search_threads
from app.service.batched_work import encode_batch, search_batch
from app.service.batcher import MicroBatcher
from app.service.embedding_cache import EmbeddingCache
from app.settings import Settings

log = logging.getLogger(__name__)


def _set_torch_threads(threads: int) -> None:
    """Per model thread: its intra-op thread count (a per-thread setting in torch)."""
    import torch

    torch.set_num_threads(threads)


@dataclass
class ServiceContext:
    settings: Settings
    encoder: EncoderReplicas
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
        workers, threads = pick_workers(settings.encoder_workers, settings.torch_threads, device)
        encoder = EncoderReplicas(
            registry.adapter_dir,
            count=workers,
            reuse_layer=settings.reuse_layer,
            capacity=settings.max_resident_experts,
            device=device,
            max_seq_length=settings.max_seq_length,
            batch_size=settings.encode_batch_size,
            precision=precision,
        )
        encoder.warm_up()
        indexes = IndexStore(
            settings.indexes_dir, encoder.dim, settings.index_kind, settings.hnsw_m
        )
        for orphan in set(indexes.open_existing()) - set(experts):
            # An expert deleted by a process that crashed before dropping its index.
            log.warning("dropping index %r: its expert no longer exists", orphan)
            indexes.drop(orphan)
        for name in experts:
            indexes.open(name)
        log.info(
            "serving %d experts on %s (%s), %d model workers x %d threads",
            len(experts),
            device,
            precision,
            workers,
            threads,
        )
        batching = {"max_wait_ms": settings.max_wait_ms, "max_pending": settings.max_queue}
        return cls(
            settings,
            encoder,
            registry,
            indexes,
            MicroBatcher(
                "encoder",
                [encode_batch(encoder, replica) for replica in range(workers)],
                settings.max_batch,
                on_start=lambda: _set_torch_threads(threads),
                **batching,
            ),
            MicroBatcher(
                "search",
                search_batch(indexes),
                settings.max_batch,
                # OpenMP thread counts are per calling thread: set on the worker itself.
                on_start=lambda: set_search_threads(settings.faiss_threads),
                **batching,
            ),
            EmbeddingCache(settings.embedding_cache_size),
        )

    def close(self) -> None:
        self.encoder_batcher.close()
        self.search_batcher.close()
        self.indexes.close()
