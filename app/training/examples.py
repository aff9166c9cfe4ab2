"""Training examples: a query text and its relevant documents (row indices into the corpus).

From train qrels (grade > 0), or self-supervised from the corpus alone (title -> document,
random text span -> document), the offline stand-in for the paper's generated queries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from app.data.beir import Qrels, positive_qrels
from app.encoder.documents import document_text


@dataclass(frozen=True)
class Example:
    query_id: str
    text: str
    positives: dict[int, int]  # corpus row -> relevance grade (> 0)


def from_qrels(queries: dict[str, str], qrels: Qrels, doc_ids: list[str]) -> list[Example]:
    """One example per query with a positive judged document that exists in the corpus."""
    row_of = {doc_id: row for row, doc_id in enumerate(doc_ids)}
    examples = []
    for query_id, judged in sorted(positive_qrels(qrels).items()):
        positives = {row_of[d]: g for d, g in judged.items() if d in row_of}
        if positives and queries.get(query_id, "").strip():
            examples.append(Example(query_id, queries[query_id], positives))
    return examples


def self_supervised(
    corpus: list[dict[str, str]], max_pairs: int, seed: int, span_words: tuple[int, int] = (8, 24)
) -> list[Example]:
    """Title -> its document (when the title is informative) and random span -> its document.

    A span query is cut out of the body; the positive is the whole document, so the expert
    learns to match a fragment of a domain's language to the text it came from.
    """
    rng = np.random.default_rng(seed)
    pairs: list[Example] = []
    for row in rng.permutation(len(corpus)):
        doc = corpus[int(row)]
        title, words = doc["title"].strip(), doc["text"].split()
        full = document_text(doc["title"], doc["text"])
        if len(title.split()) >= 3 and len(words) >= 10:
            pairs.append(Example(f"ss-title-{doc['_id']}", title, {int(row): 1}))
        if len(words) >= span_words[1] * 2:
            length = int(rng.integers(span_words[0], span_words[1] + 1))
            start = int(rng.integers(0, len(words) - length))
            span = " ".join(words[start : start + length])
            if span != full:
                pairs.append(Example(f"ss-span-{doc['_id']}", span, {int(row): 1}))
        if len(pairs) >= max_pairs:
            break
    return pairs[:max_pairs]


def split_held_out(
    examples: list[Example], fraction: float, salt: str, minimum: int = 3
) -> tuple[list[Example], list[Example]]:
    """Deterministic split by hash of the query id: `(train, held_out)`.

    Hashing (not shuffling) keeps a query on the same side whatever else is in the list.
    """
    if not examples or fraction <= 0:
        return list(examples), []

    def rank(example: Example) -> str:
        return hashlib.sha1(f"{salt}:{example.query_id}".encode()).hexdigest()

    ordered = sorted(examples, key=rank)
    size = max(minimum, round(len(examples) * fraction))
    size = min(size, len(examples) // 2)
    held = {e.query_id for e in ordered[:size]}
    return [e for e in examples if e.query_id not in held], [
        e for e in examples if e.query_id in held
    ]
