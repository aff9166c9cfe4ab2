"""What the benchmarks send: the benchmark's expert domains, their mixed test queries, and
the request bodies built from them.

Queries are the TEST queries of the benchmark's expert datasets (speed only: nothing is tuned
on them), round-robin over the domains so each gets an equal share; TRAIN queries only feed
pilots.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.loadgen import encode_bodies

ROOT = Path(__file__).resolve().parent.parent
# RR_DATASETS_DIR (the Makefile exports ../shared/datasets) is relative to the repo root.
DEFAULT_DATASETS = ROOT / os.environ.get("RR_DATASETS_DIR", "../shared/datasets")


@dataclass
class Domain:
    name: str
    test: list[str]  # test query texts (load-test inputs)
    train: list[str]  # train query texts (pilots)
    corpus: list[tuple[str, str]] = field(default_factory=list)  # (title, text) per document

    def train_sample(self, n: int, seed: int) -> list[str]:
        """Up to `n` of its train queries, a seeded draw."""
        rng = np.random.default_rng(seed)
        return [self.train[i] for i in rng.permutation(len(self.train))[:n]]


def _qrel_ids(path: Path) -> set[str]:
    ids = set()
    with open(path) as handle:
        next(handle, None)  # header: query-id corpus-id score
        for line in handle:
            parts = line.split("\t")
            if len(parts) >= 2:
                ids.add(parts[0])
    return ids


def _jsonl(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_domains(datasets_dir: Path) -> list[Domain]:
    """The benchmark's expert datasets with their train and test query texts and corpus."""
    protocol = json.loads((datasets_dir / "benchmark.json").read_text())
    domains = []
    for name, splits in protocol["experts"].items():
        folder = datasets_dir / name
        texts = {str(row["_id"]): row["text"] for row in _jsonl(folder / "queries.jsonl")}
        test, train = (
            [texts[i] for i in sorted(_qrel_ids(folder / splits[s])) if i in texts]
            for s in ("test", "train")
        )
        corpus = [
            (row.get("title") or "", row.get("text") or "")
            for row in _jsonl(folder / "corpus.jsonl")
        ]
        domains.append(Domain(name, test, train, corpus))
    return domains


def mixed_workload(domains: list[Domain], seed: int) -> list[tuple[str, str]]:
    """(query, its domain) round-robin over domains (each shuffled; small ones cycle): equal
    share per domain."""
    rng = np.random.default_rng(seed)
    pools = [(d.name, [d.test[i] for i in rng.permutation(len(d.test))]) for d in domains if d.test]
    longest = max(len(p) for _, p in pools)
    return [(pool[i % len(pool)], name) for i in range(longest) for name, pool in pools]


def mixed_queries(domains: list[Domain], seed: int) -> list[str]:
    return [query for query, _ in mixed_workload(domains, seed)]


def unique_count(domains: list[Domain]) -> int:
    return len({q for d in domains for q in d.test})


def search_bodies(
    queries: list[str],
    mode: str,
    expert: str | None = None,
    indexes: list[str] | None = None,
) -> list[bytes]:
    """`POST /v1/search` bodies, k=10; expert None: routed (`auto`); `indexes`: the index
    each query searches (parallel to `queries`), None: the routed expert's."""
    pinned = {"expert": expert} if expert else {}
    payloads = [{"query": q, "k": 10, "mode": mode} | pinned for q in queries]
    if indexes is not None:
        for payload, index in zip(payloads, indexes, strict=True):
            payload["index"] = index
    return encode_bodies(payloads)


def embedding_bodies(queries: list[str], model: str) -> list[bytes]:
    """`POST /v1/embeddings` (OpenAI shape) bodies, one input each."""
    return encode_bodies([{"input": q, "model": model} for q in queries])
