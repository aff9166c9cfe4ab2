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


def member_mask(ids: Any, allowed: Any) -> Any:
    """`ids` (int64, any order) that are in `allowed` (sorted, unique), as a bool array: a
    bitmap lookup (~0.1 ms for 100k ids) while the largest id is within a few times the
    count (rowids only grow: re-upserts take new ones), else a binary search."""
    import numpy as np

    if not len(ids) or not len(allowed):
        return np.zeros(len(ids), dtype=bool)
    top = int(max(ids.max(), allowed[-1]))
    if top <= 8 * (len(ids) + len(allowed)):
        bitmap = np.zeros(top + 1, dtype=bool)
        bitmap[allowed] = True
        return bitmap[ids]
    at = np.minimum(np.searchsorted(allowed, ids), len(allowed) - 1)
    return allowed[at] == ids


# Above this share of the index allowed, a search of the whole index deep enough to hold k
# allowed hits costs less than gathering the allowed vectors (reports/filters.md).
GATHER_MAX_SHARE = 0.3


def search_among(index: Any, queries: Any, k: int, allowed: Any) -> tuple[Any, Any]:
    """`index.search` over the vectors whose ids are in `allowed` (sorted int64) only: exact.

    Few allowed: those vectors gathered into a scratch flat index, searched with BLAS
    (FAISS's own id selector scans query by query: 99 ms against 9 ms for 32 queries at 10%
    of 100k vectors; inside an HNSW graph it finds fewer than k when few are allowed). Most
    allowed: the whole index searched deep enough that each query's top holds k allowed
    hits, the others dropped (exact on a flat index: any allowed vector better than those is
    in that top too; on HNSW as approximate as HNSW is)."""
    import numpy as np

    faiss = faiss_module()
    nq = len(queries)
    inner = faiss.downcast_index(index.index)
    # HNSW keeps its vectors in a flat storage, in the same order as the id map.
    flat = inner if isinstance(inner, faiss.IndexFlat) else faiss.downcast_index(inner.storage)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    storage = np.flatnonzero(member_mask(ids, allowed))
    if not len(storage):
        return np.zeros((nq, 0), dtype=np.float32), np.zeros((nq, 0), dtype=np.int64)
    k = min(k, len(storage))
    if len(storage) > GATHER_MAX_SHARE * index.ntotal:
        return _search_deep(index, queries, k, allowed, len(storage) / index.ntotal)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d)
    scratch = faiss.IndexFlat(index.d, inner.metric_type)
    scratch.add(vectors.reshape(index.ntotal, index.d)[storage])
    scores, rows = scratch.search(queries, k)
    return scores, np.where(rows >= 0, ids[storage][np.maximum(rows, 0)], -1)


def _search_deep(index: Any, queries: Any, k: int, allowed: Any, share: float) -> Any:
    """The top k allowed of a whole-index search, deepened until every query has k of them
    (at most `allowed` is all there is: the whole index then holds them)."""
    import numpy as np

    depth = min(index.ntotal, int(k / share * 1.2) + 16)  # 1.2: the share varies by query
    while True:
        scores, ids = index.search(queries, depth)
        keep = member_mask(ids.ravel(), allowed).reshape(ids.shape) & (ids >= 0)
        if depth >= index.ntotal or bool((keep.sum(axis=1) >= k).all()):
            break
        depth = min(index.ntotal, depth * 2)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # allowed first, in score order
    return np.take_along_axis(scores, first, axis=1), np.take_along_axis(ids, first, axis=1)
