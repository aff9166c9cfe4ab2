"""FAISS set-up in one place: CPU tuning, optional GPU copies, index construction."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def faiss_module() -> Any:
    import faiss

    # faiss-cpu 1.15 uses a slow non-BLAS path for small batches; BLAS from 20 queries up.
    faiss.cvar.distance_compute_blas_threshold = 20
    return faiss


def set_search_threads(threads: int) -> int:
    """FAISS's OpenMP threads per search (0 = auto: a quarter of the cores, at least one).

    Batched flat search is memory-bound, and idle OpenMP workers spin: on the 2-core machine
    two threads cost ~1.5-2x the CPU of one for the same search, CPU the encoder needs.
    """
    from app.encoder.base_model import usable_cores

    threads = threads or max(1, usable_cores() // 4)
    faiss_module().omp_set_num_threads(threads)
    return threads


@cache
def gpu_resources() -> Any | None:
    """StandardGpuResources when this faiss build has GPU support and sees a GPU."""
    faiss = faiss_module()
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


def new_index(dim: int, kind: str, hnsw_m: int = 32) -> Any:
    """An empty inner-product index addressed by our own int64 ids."""
    faiss = faiss_module()
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efSearch = 128
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)


def search_copy(index: Any) -> Any:
    """The index to search: a GPU clone when a GPU is available, else the index itself."""
    resources = gpu_resources()
    if resources is None or index.ntotal == 0:
        return index
    try:
        return faiss_module().index_cpu_to_gpu(resources, 0, index)
    except RuntimeError:  # e.g. HNSW has no GPU implementation: search on the CPU
        return index
