"""The heavy objects a running gateway owns, built once at start-up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from app.encoder.base import QueryEncoder
from app.experts.registry import ExpertRegistry
from app.index import IndexStore
from app.index.faiss_backend import set_search_threads
from app.service.batched_work import encode_batch, fetch_batch, search_batch
from app.service.batcher import MicroBatcher
from app.service.embedding_cache import EmbeddingCache
from app.settings import Settings

log = logging.getLogger(__name__)


def _set_torch_threads(threads: int) -> None:
    """Per model thread: its intra-op thread count (a per-thread setting in torch)."""
    import torch

    torch.set_num_threads(threads)


def _start_encoder(
    settings: Settings, registry: ExpertRegistry
) -> tuple[QueryEncoder, int, Callable[[], None] | None]:
    """(encoder, model workers, per-worker-thread set-up) for `settings.encoder_backend`."""
    if settings.encoder_backend == "fake":
        from app.encoder.fake import FakeEncoder

        workers = settings.encoder_workers or 1
        fake = FakeEncoder(
            registry.adapter_dir,
            count=workers,
            capacity=settings.max_resident_experts,
            max_seq_length=settings.max_seq_length,
            routing_layer=settings.routing_layer,
        )
        return fake, workers, None
    from app.encoder.base_model import (
        pick_device,
        pick_document_precision,
        pick_precision,
        pick_workers,
    )
    from app.encoder.replicas import EncoderReplicas

    device = pick_device(settings.device)
    precision = pick_precision(settings.precision, device)
    workers, threads = pick_workers(settings.encoder_workers, settings.torch_threads, device)
    encoder = EncoderReplicas(
        registry.adapter_dir,
        count=workers,
        routing_layer=settings.routing_layer,
        capacity=settings.max_resident_experts,
        device=device,
        max_seq_length=settings.max_seq_length,
        batch_size=settings.encode_batch_size,
        precision=precision,
        document_precision=pick_document_precision(settings.document_precision, device),
    )
    log.info("encoder on %s (%s), %d workers x %d threads", device, precision, workers, threads)
    return encoder, workers, lambda: _set_torch_threads(threads)


LEXICAL_THREADS = 2


@dataclass
class ServiceContext:
    settings: Settings
    encoder: QueryEncoder
    registry: ExpertRegistry
    indexes: IndexStore
    encoder_batcher: MicroBatcher  # owns every model call
    search_batcher: MicroBatcher  # owns every FAISS search
    cache: EmbeddingCache
    # BM25 searches: their own threads (SQLite's FTS5 runs without the GIL and each thread
    # reads through its own connection), so they overlap the expert pass and FAISS.
    lexical_batcher: MicroBatcher
    # The text of fused hits: one thread, so its read connections stay warm (measured: a
    # fetch of 10 documents 0.19 ms there, 0.41 ms spread over the default executor's six),
    # and one read per index for every request of a batch.
    documents_batcher: MicroBatcher

    @classmethod
    def start(cls, settings: Settings) -> ServiceContext:
        registry = ExpertRegistry(
            settings.experts_dir,
            settings.router_aggregation,
            settings.router_fallback_threshold,
            settings.router_rule,
            settings.router_fallback_percentile,
            settings.routing_layer,
        )
        experts = registry.load_all()
        encoder, workers, on_start = _start_encoder(settings, registry)
        encoder.warm_up()  # the first pass is slow (and replicas self-check): no user's
        indexes = IndexStore(
            settings.indexes_dir,
            encoder.dim,
            settings.index_kind,
            settings.hnsw_m,
            encoder.shortcuts,  # one record: /readyz and /metrics report every shortcut
        )
        for orphan in set(indexes.open_existing()) - set(experts):
            # An expert deleted by a process that crashed before dropping its index.
            log.warning("dropping index %r: its expert no longer exists", orphan)
            indexes.drop(orphan)
        for name in experts:
            indexes.open(name)
        log.info("serving %d experts with %d model workers", len(experts), workers)
        wait_ms, pending = settings.max_wait_ms, settings.max_queue
        return cls(
            settings,
            encoder,
            registry,
            indexes,
            MicroBatcher(
                "encoder",
                [encode_batch(encoder, replica) for replica in range(workers)],
                settings.max_batch,
                on_start=on_start,
                max_wait_ms=wait_ms,
                max_pending=pending,
                busy_wait_ms=settings.busy_wait_ms,
            ),
            MicroBatcher(
                "search",
                search_batch(indexes),
                settings.max_batch,
                # OpenMP thread counts are per calling thread: set on the worker itself.
                on_start=lambda: set_search_threads(settings.faiss_threads),
                max_wait_ms=wait_ms,
                max_pending=pending,
            ),
            EmbeddingCache(settings.embedding_cache_size),
            MicroBatcher(
                "lexical",
                [search_batch(indexes) for _ in range(LEXICAL_THREADS)],
                settings.max_batch,
                max_wait_ms=0.0,
                max_pending=pending,
            ),
            MicroBatcher(
                "documents", fetch_batch(indexes), settings.max_batch, max_pending=pending
            ),
        )

    def close(self) -> None:
        self.encoder_batcher.close()
        self.search_batcher.close()
        self.lexical_batcher.close()
        self.documents_batcher.close()
        self.indexes.close()
