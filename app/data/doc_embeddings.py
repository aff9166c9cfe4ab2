"""Base-encoder document embeddings, computed once per (corpus, model) and cached on disk.

Documents are always embedded by the frozen base model (experts adapt the query side only),
so one cached matrix per corpus serves training negatives, evaluation and every expert.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.data.beir import load_corpus
from app.encoder.base_model import BASE_MODEL_NAME
from app.encoder.documents import document_text

if TYPE_CHECKING:
    from app.encoder.lora_encoder import LoraEncoder

log = logging.getLogger(__name__)


def corpus_key(dataset_dir: Path, max_seq_length: int, precision: str = "fp32") -> str:
    """Changes whenever the corpus file, the model, the truncation length or the document
    precision changes (fp32 keys predate the precision and stay as they were)."""
    digest = hashlib.sha256()
    with open(dataset_dir / "corpus.jsonl", "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{BASE_MODEL_NAME}|{max_seq_length}".encode())
    if precision != "fp32":
        digest.update(f"|{precision}".encode())
    return f"{dataset_dir.name}-{digest.hexdigest()[:16]}"


def document_embeddings(
    dataset_dir: Path, encoder: LoraEncoder, cache_dir: Path
) -> tuple[list[str], np.ndarray]:
    """`(doc_ids, (n_docs, 384) float32)` in corpus order, read from / written to the cache.
    Embedded as the server embeds documents: at the encoder's `document_precision`."""
    dataset_dir = Path(dataset_dir)
    corpus = load_corpus(dataset_dir)
    ids = [d["_id"] for d in corpus]
    key = corpus_key(dataset_dir, encoder.max_seq_length, encoder.document_precision)
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        matrix = np.load(path, allow_pickle=False)
        if matrix.shape[0] == len(ids):
            return ids, matrix
    log.info(
        "embedding %d documents of %s (%s)", len(ids), dataset_dir.name, encoder.document_precision
    )
    texts = [document_text(d["title"], d["text"]) for d in corpus]
    matrix = encode_in_chunks(encoder, texts, documents=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp.npy")
    np.save(temp, matrix, allow_pickle=False)
    temp.replace(path)  # atomic: a killed run never leaves a truncated cache file
    return ids, matrix


def encode_in_chunks(
    encoder: LoraEncoder,
    texts: list[str],
    adapter: str | None = None,
    chunk: int = 512,
    documents: bool = False,
) -> np.ndarray:
    """Encode with a progress bar (chunks keep the bar moving on long corpora);
    `documents`: index documents, at the encoder's document precision."""
    from tqdm import tqdm

    from app.encoder.lora_encoder import BASE

    name = adapter or BASE
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    with tqdm(total=len(texts), unit="doc", disable=len(texts) < chunk, leave=False) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            out[start : start + len(part)] = encoder.encode(
                part, [name] * len(part), documents=documents
            )
            bar.update(len(part))
    return out
