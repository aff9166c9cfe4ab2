"""An expert's adapter is used only where it helps: its gate (issue 22).

On the expert's held-out TRAIN queries (the slice its training selected on, the same hashed
split), hybrid search on its own index runs twice through the gateway's retrieval core: as
the expert (the adapter's query vectors, the expert's fusion weight) and as the base encoder
(its vectors and its fusion model): what serving does with the gate on and off. The adapter
stays on only if its mean nDCG@10 gain beats two standard errors of the paired per-query
differences; otherwise queries routed to the expert are the base encoder's (vectors and
fusion weights) and still search its index. Serving reads the decision from expert.json
(`extra.gate.use_adapter`); `rr eval` scores a gated expert the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.hybrid import QueryWeights
from app.core.names import BASE_EXPERT
from app.data.beir import load_corpus, load_qrels, load_queries
from app.training.examples import Example, from_qrels, split_held_out

if TYPE_CHECKING:
    from app.encoder.lora_encoder import LoraEncoder
    from app.experts.artifacts import Expert

STANDARD_ERRORS = 2.0  # the gain must beat this many standard errors of the paired differences
MIN_QUERIES = 5  # fewer held-out queries than this: no evidence, the adapter stays off


def decide(adapter: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """The gate from per-query nDCG@10 with the adapter and with the base encoder."""
    differences = np.asarray(adapter, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    n = len(differences)
    gain = float(differences.mean()) if n else 0.0
    se = float(differences.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return {
        "use_adapter": bool(n >= MIN_QUERIES and gain > STANDARD_ERRORS * se),
        "queries": n,
        "hybrid_ndcg@10_adapter": round(float(np.mean(adapter)), 5) if n else None,
        "hybrid_ndcg@10_base": round(float(np.mean(base)), 5) if n else None,
        "gain": round(gain, 5),
        "standard_error": round(se, 5) if math.isfinite(se) else None,
        "rule": f"gain > {STANDARD_ERRORS:g} standard errors, at least {MIN_QUERIES} queries",
    }


def held_out_examples(expert: Expert, dataset_dir: Path, doc_ids: list[str]) -> list[Example]:
    """The held-out slice the expert's training selected on (its own seed and fraction)."""
    extra = expert.spec.extra
    training, qrels = extra.get("training") or {}, extra.get("train_qrels")
    if not qrels:
        return []
    real = from_qrels(load_queries(dataset_dir), load_qrels(dataset_dir / qrels), doc_ids)
    fraction = float(training.get("held_out_fraction", 0.15))
    _, held_out = split_held_out(real, fraction, salt=f"{expert.name}:{training.get('seed', 13)}")
    return held_out


def gate_expert(
    expert: Expert,
    dataset_dir: Path,
    encoder: LoraEncoder,
    cache_dir: Path,
    weights: Callable[[str], QueryWeights],
) -> dict[str, Any]:
    """The gate's evidence for one expert (see the module docstring)."""
    from app.core.documents import Document
    from app.data.doc_embeddings import document_embeddings
    from app.evaluation.benchmark_eval import per_query_ndcg
    from app.evaluation.runs import EvalSet, paper_run

    doc_ids, matrix = document_embeddings(dataset_dir, encoder, cache_dir)
    examples = held_out_examples(expert, dataset_dir, doc_ids)
    if not examples:
        return decide(np.zeros(0), np.zeros(0))
    corpus = load_corpus(dataset_dir)
    data = EvalSet(
        dataset_dir.name,
        True,
        doc_ids,
        matrix,
        [e.query_id for e in examples],
        [e.text for e in examples],
        {e.query_id: {doc_ids[row]: g for row, g in e.positives.items()} for e in examples},
        documents=[Document(d["_id"], d["text"], d["title"]) for d in corpus],
    )
    from app.encoder.lora_encoder import BASE as BASE_ADAPTER

    texts = data.query_texts
    scores = {}
    as_base: Callable[[str], QueryWeights] = lambda _encoder: weights(BASE_EXPERT)  # noqa: E731
    for arm, encoded_by, arm_weights in (
        ("adapter", expert.name, weights),
        ("base", BASE_ADAPTER, as_base),  # what serving does when the gate is off
    ):
        data.encoded[expert.name] = encoder.encode(texts, [encoded_by] * len(texts))
        run = paper_run(data, [expert.name] * len(texts), mode="hybrid", weights=arm_weights)
        scores[arm] = per_query_ndcg(run, data.qrels)
    return decide(scores["adapter"], scores["base"])
