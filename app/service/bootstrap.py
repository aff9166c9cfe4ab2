"""First start: index the benchmark's expert corpora so `make run` serves something useful.

For every expert whose name is an expert dataset of `RR_DATASETS_DIR/benchmark.json` and
whose index is still empty, the corpus is embedded by the base encoder (reusing the
training cache when present) and upserted through the normal change path. Later starts
find the persisted indexes and skip all of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from app.index import Document
from app.replication.changes import DocumentsUpserted
from app.service.admin import AdminService

log = logging.getLogger(__name__)
UPSERT_CHUNK = 2048


def corpora_to_index(admin: AdminService, datasets: Path | None) -> list[tuple[str, Path]]:
    from app.data.beir import load_benchmark

    if datasets is None or not (Path(datasets) / "benchmark.json").is_file():
        return []
    todo = []
    for dataset in load_benchmark(Path(datasets) / "benchmark.json").experts:
        name = dataset.name
        empty = name not in admin.indexes or len(admin.indexes.get(name)) == 0
        if name in admin.registry and empty and (dataset.directory / "corpus.jsonl").is_file():
            todo.append((name, dataset.directory))
    return todo


async def index_expert_corpora(admin: AdminService, datasets: Path | None, cache_dir: Path) -> int:
    """Embeds and upserts the corpora `corpora_to_index` names, reusing document embeddings
    cached under `cache_dir` (RR_CACHE_DIR). Returns how many documents were indexed."""
    from tqdm import tqdm

    from app.data.beir import load_corpus
    from app.data.doc_embeddings import corpus_key
    from app.encoder.documents import document_text

    todo = corpora_to_index(admin, datasets)
    if not todo:
        return 0
    cache_dir = cache_dir / "embeddings"
    corpora = {name: load_corpus(directory) for name, directory in todo}
    total = sum(len(c) for c in corpora.values())
    indexed = 0
    with tqdm(total=total, unit="doc", desc="embedding expert corpora") as bar:
        for name, directory in todo:
            corpus = corpora[name]
            cached = cache_dir / f"{corpus_key(directory, admin.encoder.max_seq_length)}.npy"
            vectors = np.load(cached) if cached.is_file() else None
            if vectors is None or len(vectors) != len(corpus):
                texts = [document_text(d["title"], d["text"]) for d in corpus]
                vectors = await admin.embed_documents(texts, progress=bar.update)
            else:
                bar.update(len(corpus))
            for start in range(0, len(corpus), UPSERT_CHUNK):
                part = corpus[start : start + UPSERT_CHUNK]
                docs = [Document(d["_id"], d["text"], d["title"]) for d in part]
                change = DocumentsUpserted(name, docs, vectors[start : start + len(part)])
                await admin.sink.submit(change)
                indexed += len(part)
            log.info("indexed %d documents for expert %r", len(corpus), name)
    return indexed
