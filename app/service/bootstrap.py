"""First start: index the benchmark's expert corpora so `make run` serves something useful.

For every expert whose name is an expert dataset of `RR_DATASETS_DIR/benchmark.json` and
whose index is still empty, the corpus is embedded by the base encoder (reusing the
training cache when present) and upserted through the normal change path. Later starts
find the persisted indexes and skip all of it.

The gateway serves meanwhile, and each corpus becomes searchable as it is indexed: in
chunks, smallest corpora first. Smallest first (not interleaved) because a domain is worth
searching once its index is whole: interleaving would leave every domain half-filled for the
whole hour, while smallest-first makes the small domains complete within a minute or two and
the large ones fill one after the other. `IndexingProgress` tells searches, `/v1/experts` and
`/readyz` how far each one is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.index import Document
from app.replication.changes import DocumentsUpserted
from app.service.admin import AdminService
from app.service.indexing_progress import IndexingProgress

log = logging.getLogger(__name__)
# Documents embedded and upserted at a time: each chunk is searchable as soon as it lands.
CHUNK = 256


@dataclass(frozen=True)
class Corpus:
    expert: str
    directory: Path
    ids: list[str]  # the whole corpus, in file order (the embedding cache's row order)
    missing: list[dict[str, str]]  # its documents the expert's index lacks


def corpora_to_index(admin: AdminService, datasets: Path | None) -> list[Corpus]:
    """Each benchmark expert whose index is short of its corpus: empty on a first start,
    part-filled after a crash."""
    from app.data.beir import load_benchmark, load_corpus

    if datasets is None or not (Path(datasets) / "benchmark.json").is_file():
        return []
    todo = []
    for dataset in load_benchmark(Path(datasets) / "benchmark.json").experts:
        name = dataset.name
        if name not in admin.registry or not (dataset.directory / "corpus.jsonl").is_file():
            continue
        corpus = load_corpus(dataset.directory)
        index = admin.indexes.get(name) if name in admin.indexes else None
        if index is not None and len(index) >= len(corpus):
            continue
        missing = [d for d in corpus if index is None or index.get(d["_id"]) is None]
        if missing:
            todo.append(Corpus(name, dataset.directory, [d["_id"] for d in corpus], missing))
    return todo


async def index_expert_corpora(
    admin: AdminService,
    datasets: Path | None,
    cache_dir: Path,
    progress: IndexingProgress | None = None,
) -> int:
    """Embeds and upserts the corpora `corpora_to_index` names, smallest first, in chunks,
    reusing document embeddings cached under `cache_dir` (RR_CACHE_DIR). Returns how many
    documents were indexed."""
    from tqdm import tqdm

    from app.encoder.documents import document_text

    progress = progress if progress is not None else IndexingProgress()
    todo = sorted(corpora_to_index(admin, datasets), key=lambda corpus: len(corpus.missing))
    if not todo:
        return 0
    for corpus in todo:
        progress.plan(corpus.expert, len(corpus.missing))
    indexed = 0
    try:
        total = sum(len(corpus.missing) for corpus in todo)
        with tqdm(total=total, unit="doc", desc="indexing") as bar:
            for corpus in todo:
                name, documents = corpus.expert, corpus.missing
                cached = _cached_embeddings(admin, corpus, cache_dir)
                for start in range(0, len(documents), CHUNK):
                    part = documents[start : start + CHUNK]
                    if cached is not None:
                        vectors = np.stack([cached[d["_id"]] for d in part])
                    else:
                        texts = [document_text(d["title"], d["text"]) for d in part]
                        vectors = await admin.embed_documents(texts)
                    docs = [Document(d["_id"], d["text"], d["title"]) for d in part]
                    await admin.sink.submit(DocumentsUpserted(name, docs, vectors))
                    progress.advance(name, len(part))
                    bar.update(len(part))
                    indexed += len(part)
                progress.finish(name)
                log.info("indexed %d documents for expert %r", len(documents), name)
    finally:
        progress.clear()  # done, failed or cancelled: nothing is "filling" any more
    return indexed


def _cached_embeddings(
    admin: AdminService, corpus: Corpus, cache_dir: Path
) -> dict[str, np.ndarray] | None:
    """Document id -> base embedding from the training / eval cache, when it matches the
    corpus: embedded at the served document precision, or else in fp32 (the exact path)."""
    from app.data.doc_embeddings import corpus_key

    precisions = dict.fromkeys((admin.encoder.precisions()["documents"], "fp32"))
    paths = [
        cache_dir
        / "embeddings"
        / f"{corpus_key(corpus.directory, admin.encoder.max_seq_length, p)}.npy"
        for p in precisions
    ]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return None
    vectors = np.load(path)
    ids = corpus.ids
    return dict(zip(ids, vectors, strict=True)) if len(vectors) == len(ids) else None
