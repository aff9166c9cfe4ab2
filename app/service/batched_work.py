"""What the batchers run: one mixed-adapter forward pass (routed jobs in one pass with their
routing), and one FAISS call per index."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.candidates import Candidates
from app.core.documents import Hit
from app.core.filters import MetadataFilter
from app.encoder.base import Chooser, QueryEncoder, RoutedPass
from app.errors import EncoderFailed, NotFound, ServiceError
from app.index import IndexStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeJob:
    texts: list[str]
    adapters: list[str]  # one per text; BASE for the plain model
    documents: bool = False  # documents for an index: base model, the document precision


@dataclass(frozen=True)
class RoutedEncodeJob:
    """Queries routed inside the pass: `choose` sees their routing features (it runs on the
    model worker's thread) and picks the adapters each continues with."""

    texts: list[str]
    choose: Chooser


@dataclass(frozen=True)
class SearchJob:
    index: str
    vectors: np.ndarray | None  # (n, dim) for a dense search
    k: int
    with_text: bool
    texts: Sequence[str] | None = None  # query texts for a lexical (BM25) search
    where: MetadataFilter | None = None  # the documents it may return

    @property
    def lexical(self) -> bool:
        return self.texts is not None

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.vectors)  # type: ignore[arg-type]


def encode_batch(encoder: QueryEncoder, replica: int = 0):
    def run(jobs: Sequence[EncodeJob | RoutedEncodeJob]) -> list[Any]:
        # Documents and queries may run at different precisions: one pass for each kind;
        # routed jobs share one routed pass.
        out: list[Any] = [None] * len(jobs)
        routed = [i for i, job in enumerate(jobs) if isinstance(job, RoutedEncodeJob)]
        if routed:
            for i, result in zip(routed, _routed([jobs[i] for i in routed]), strict=True):  # type: ignore[misc]
                out[i] = result
        for documents in (False, True):
            members = [
                i
                for i, job in enumerate(jobs)
                if isinstance(job, EncodeJob) and job.documents == documents
            ]
            if members:
                vectors = _encode([jobs[i] for i in members], documents)  # type: ignore[misc]
                for i, rows in zip(members, vectors, strict=True):
                    out[i] = rows
        return out

    def _encode(jobs: Sequence[EncodeJob], documents: bool) -> list[np.ndarray]:
        texts = [t for job in jobs for t in job.texts]
        adapters = [a for job in jobs for a in job.adapters]
        vectors = _guarded(len(texts), lambda: encoder.encode(texts, adapters, replica, documents))
        bounds = np.cumsum([0] + [len(job.texts) for job in jobs])
        return [vectors[bounds[i] : bounds[i + 1]] for i in range(len(jobs))]

    def _routed(jobs: Sequence[RoutedEncodeJob]) -> list[RoutedPass]:
        texts = [t for job in jobs for t in job.texts]
        bounds = np.cumsum([0] + [len(job.texts) for job in jobs])

        def choose(features: np.ndarray) -> list[list[str]]:
            # Each job routes its own rows (its own options and lease); their picks are
            # concatenated for the one pass.
            picks: list[list[str]] = []
            for i, job in enumerate(jobs):
                rows = [list(r) for r in job.choose(features[bounds[i] : bounds[i + 1]])]
                if len(rows) != len(job.texts):
                    raise ValueError("a chooser must pick adapters for each of its texts")
                picks.extend(rows)
            return picks

        done = _guarded(len(texts), lambda: encoder.encode_routed(texts, choose, replica))
        return [
            RoutedPass(
                done.features[bounds[i] : bounds[i + 1]],
                done.adapters[bounds[i] : bounds[i + 1]],
                done.vectors[bounds[i] : bounds[i + 1]],
            )
            for i in range(len(jobs))
        ]

    return run


def _guarded(rows: int, call: Any) -> Any:
    try:
        return call()
    except ServiceError:
        raise
    except Exception as exc:  # shortcuts already fell back inside: the exact path failed
        log.exception("encoder failed on a batch of %d rows", rows)
        raise EncoderFailed(f"the encoder failed ({type(exc).__name__}); retry") from exc


def search_batch(indexes: IndexStore):
    """One search per (index, leg, text, filter) group of the batch's jobs, one after another
    (a thread per index measured slower in the service: reports/hybrid.md); each job's answer
    is one `Candidates` per query row (rows and scores: hits are built when read)."""

    def run(jobs: Sequence[SearchJob]) -> list[list[Candidates]]:
        groups: dict[tuple[str, bool, bool, MetadataFilter | None], list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[(job.index, job.with_text, job.lexical, job.where)].append(i)
        results: list[list[Candidates]] = [[] for _ in jobs]
        for (name, with_text, lexical, where), members in groups.items():
            index = indexes.get(name)
            k = max(jobs[i].k for i in members)
            if lexical:
                texts = [t for i in members for t in jobs[i].texts or ()]
                found = index.lexical_candidates(texts, k, with_text, where)
            else:
                vectors = np.concatenate([jobs[i].vectors for i in members])
                found = index.search_candidates(vectors, k, with_text, where)
            start = 0
            for i in members:
                n = len(jobs[i])
                results[i] = [row[: jobs[i].k] for row in found[start : start + n]]
                start += n
        return results

    return run


Wanted = dict[str, set[str]]  # index -> ids of the documents one request needs with text
Fetched = dict[tuple[str, str], Hit]  # (index, id) -> the stored document as a hit


def fetch_batch(indexes: IndexStore):
    """The stored documents of every job in the batch, one read per index for all of them
    (a dropped index contributes nothing: its hits keep no text)."""

    def run(jobs: Sequence[Wanted]) -> list[Fetched]:
        merged: dict[str, set[str]] = defaultdict(set)
        for wanted in jobs:
            for name, ids in wanted.items():
                merged[name] |= ids
        stored: Fetched = {}
        for name, ids in merged.items():
            try:
                found = indexes.get(name).fetch(sorted(ids))
            except NotFound:
                continue
            stored.update({(name, doc_id): hit for doc_id, hit in found.items()})
        return [
            {(n, d): stored[(n, d)] for n, ids in w.items() for d in ids if (n, d) in stored}
            for w in jobs
        ]

    return run
