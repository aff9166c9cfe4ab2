"""What the batchers run: one mixed-adapter forward pass, and one FAISS call per index."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.encoder.base import QueryEncoder
from app.errors import EncoderFailed, ServiceError
from app.index import Hit, IndexStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeJob:
    texts: list[str]
    adapters: list[str]  # one per text; BASE for the plain model
    routing: bool = False  # queries' routing pass: keep hidden states for the expert pass
    documents: bool = False  # documents for an index: base model, the document precision


@dataclass(frozen=True)
class SearchJob:
    index: str
    vectors: np.ndarray | None  # (n, dim) for a dense search
    k: int
    with_text: bool
    texts: Sequence[str] | None = None  # query texts for a lexical (BM25) search

    @property
    def lexical(self) -> bool:
        return self.texts is not None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.vectors)  # type: ignore[arg-type]


def encode_batch(encoder: QueryEncoder, replica: int = 0):
    def run(jobs: Sequence[EncodeJob]) -> list[np.ndarray]:
        # Documents and queries may run at different precisions: one pass for each kind.
        out: list[np.ndarray] = [np.zeros(0)] * len(jobs)
        for documents in (False, True):
            members = [i for i, job in enumerate(jobs) if job.documents == documents]
            if members:
                vectors = _encode([jobs[i] for i in members], documents)
                for i, rows in zip(members, vectors, strict=True):
                    out[i] = rows
        return out

    def _encode(jobs: Sequence[EncodeJob], documents: bool) -> list[np.ndarray]:
        texts = [t for job in jobs for t in job.texts]
        adapters = [a for job in jobs for a in job.adapters]
        routing = [job.routing for job in jobs for _ in job.texts]
        try:
            vectors = encoder.encode(texts, adapters, routing, replica, documents)
        except ServiceError:
            raise
        except Exception as exc:  # shortcuts already fell back inside: the exact path failed
            log.exception("encoder failed on a batch of %d rows", len(texts))
            raise EncoderFailed(f"the encoder failed ({type(exc).__name__}); retry") from exc
        bounds = np.cumsum([0] + [len(job.texts) for job in jobs])
        return [vectors[bounds[i] : bounds[i + 1]] for i in range(len(jobs))]

    return run


def search_batch(indexes: IndexStore):
    def run(jobs: Sequence[SearchJob]) -> list[list[list[Hit]]]:
        groups: dict[tuple[str, bool, bool], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[(job.index, job.with_text, job.lexical)].append(i)
        results: list[list[list[Hit]]] = [[] for _ in jobs]
        for (name, with_text, lexical), members in groups.items():
            index = indexes.get(name)
            k = max(jobs[i].k for i in members)
            if lexical:
                texts = [t for i in members for t in jobs[i].texts or ()]
                hits = index.lexical_search(texts, k, with_text)
            else:
                vectors = np.concatenate([jobs[i].vectors for i in members])
                hits = index.search(vectors, k, with_text)
            start = 0
            for i in members:
                n = len(jobs[i])
                results[i] = [row[: jobs[i].k] for row in hits[start : start + n]]
                start += n
        return results

    return run
