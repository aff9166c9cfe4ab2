"""BEIR-format loaders: `corpus.jsonl`, `queries.jsonl`, `qrels/*.tsv` and the benchmark file.

Pure Python (no heavy imports) so the service can index corpora at start-up with them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Qrels = dict[str, dict[str, int]]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_corpus(dataset_dir: Path | str) -> list[dict[str, str]]:
    """Documents in file order, each `{"_id", "title", "text"}` (missing fields become "")."""
    rows = _read_jsonl(Path(dataset_dir) / "corpus.jsonl")
    return [
        {"_id": str(r["_id"]), "title": r.get("title") or "", "text": r.get("text") or ""}
        for r in rows
    ]


def load_queries(dataset_dir: Path | str) -> dict[str, str]:
    """`{query_id: text}`."""
    rows = _read_jsonl(Path(dataset_dir) / "queries.jsonl")
    return {str(r["_id"]): r.get("text") or "" for r in rows}


def load_qrels(path: Path | str) -> Qrels:
    """`{query_id: {doc_id: grade}}` from a BEIR tsv (header line skipped), all grades kept."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for row in reader:
            if len(row) < 3 or row[0] == "query-id":
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return qrels


def positive_qrels(qrels: Qrels) -> Qrels:
    """Only grades > 0, and only queries left with at least one positive."""
    kept = {q: {d: g for d, g in docs.items() if g > 0} for q, docs in qrels.items()}
    return {q: docs for q, docs in kept.items() if docs}


@dataclass(frozen=True)
class BenchmarkSet:
    name: str
    directory: Path
    test_qrels: Path
    train_qrels: Path | None  # None for zero-shot sets
    note: str = ""

    @property
    def has_expert(self) -> bool:
        return self.train_qrels is not None


@dataclass(frozen=True)
class Benchmark:
    experts: list[BenchmarkSet] = field(default_factory=list)
    zero_shot: list[BenchmarkSet] = field(default_factory=list)

    @property
    def all_sets(self) -> list[BenchmarkSet]:
        return [*self.experts, *self.zero_shot]


def load_benchmark(path: Path | str, datasets_dir: Path | str | None = None) -> Benchmark:
    """Parse `benchmark.json`; dataset dirs resolve against `datasets_dir` (default: its folder)."""
    path = Path(path)
    root = Path(datasets_dir) if datasets_dir is not None else path.parent
    spec = json.loads(path.read_text())

    def build(name: str, entry: dict[str, Any], with_train: bool) -> BenchmarkSet:
        directory = root / name
        train = directory / entry["train"] if with_train and entry.get("train") else None
        return BenchmarkSet(
            name, directory, directory / entry["test"], train, entry.get("note", "")
        )

    return Benchmark(
        experts=[build(n, e, True) for n, e in spec.get("experts", {}).items()],
        zero_shot=[build(n, e, False) for n, e in spec.get("zero_shot", {}).items()],
    )
