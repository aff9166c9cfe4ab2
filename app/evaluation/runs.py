"""Turning routing choices into rankings, in the two settings the report compares.

A choice per query is an encoder name (expert, "base", "multitask"), or a pair of experts
(top-2 fusion: the sum of both experts' cosine scores, i.e. search with the summed query).

- paper:   every query searches its own dataset's index; only the query encoder is routed.
- service: the gateway holds one index per expert domain; a query routed to expert E searches
           E's index (a wrong expert is a miss), a fallback searches all indexes merged by score.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from app.evaluation.ranking import top_k

Choice = str | tuple[str, str]
Run = dict[str, dict[str, float]]
MISS = "__miss__"  # ranx needs at least one document per query


@dataclass
class EvalSet:
    name: str
    in_domain: bool
    doc_ids: list[str]
    doc_matrix: np.ndarray
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # positives only
    encoded: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> (n_q, dim)

    def query_vectors(self, choice: Choice, rows: np.ndarray) -> np.ndarray:
        if isinstance(choice, tuple):
            summed = self.encoded[choice[0]][rows] + self.encoded[choice[1]][rows]
            return summed / np.linalg.norm(summed, axis=1, keepdims=True)
        return self.encoded[choice][rows]


def _groups(choices: list[Choice]) -> dict[Choice, np.ndarray]:
    grouped: dict[Choice, list[int]] = defaultdict(list)
    for i, choice in enumerate(choices):
        grouped[choice].append(i)
    return {c: np.array(rows) for c, rows in grouped.items()}


def paper_run(dataset: EvalSet, choices: list[Choice], k: int = 100) -> Run:
    run: Run = {}
    for choice, rows in _groups(choices).items():
        found, scores = top_k(dataset.query_vectors(choice, rows), dataset.doc_matrix, k)
        for i, doc_rows, doc_scores in zip(rows, found, scores, strict=True):
            run[dataset.query_ids[i]] = {
                dataset.doc_ids[r]: float(s) for r, s in zip(doc_rows, doc_scores, strict=True)
            }
    return run


class ServiceIndexes:
    """The gateway's view: one index per expert domain (doc ids namespaced by domain)."""

    def __init__(self, sets: list[EvalSet]) -> None:
        self.by_name = {s.name: s for s in sets}
        self.merged = np.concatenate([s.doc_matrix for s in sets])
        self.merged_ids = [(s.name, d) for s in sets for d in s.doc_ids]

    def _search(
        self, index: str, queries: np.ndarray, k: int
    ) -> list[list[tuple[float, str, str]]]:
        if index == "*":  # fallback: every index, merged by score
            rows, scores = top_k(queries, self.merged, k)
            return [
                [(float(s), *self.merged_ids[r]) for r, s in zip(rr, ss, strict=True)]
                for rr, ss in zip(rows, scores, strict=True)
            ]
        target = self.by_name[index]
        rows, scores = top_k(queries, target.doc_matrix, k)
        return [
            [(float(s), index, target.doc_ids[r]) for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(rows, scores, strict=True)
        ]

    def run(
        self, dataset: EvalSet, choices: list[Choice], k: int = 100, search_all: bool = False
    ) -> Run:
        """Only the query's own domain holds its relevant documents; others are namespaced.

        `search_all`: the routed expert only encodes the query, which then searches every
        index merged by score (a wrong route costs quality, not the whole answer).
        """
        run: Run = {}
        for choice, rows in _groups(choices).items():
            encoders = list(choice) if isinstance(choice, tuple) else [choice]
            parts: list[tuple[str, str]] = [
                ("*" if search_all or e == "base" else e, e) for e in encoders
            ]
            hits: list[list[tuple[float, str, str]]] = [[] for _ in rows]
            for index, encoder in parts:
                if index != "*" and index not in self.by_name:
                    continue
                found = self._search(index, dataset.encoded[encoder][rows], k)
                for slot, row_hits in enumerate(found):
                    hits[slot].extend(row_hits)
            for slot, i in enumerate(rows):
                ranking: dict[str, float] = {}
                for score, owner, doc in sorted(hits[slot], key=lambda h: -h[0]):
                    key = doc if owner == dataset.name else f"{owner}::{doc}"
                    ranking.setdefault(key, score)  # a document found twice keeps its best score
                    if len(ranking) == k:
                        break
                run[dataset.query_ids[i]] = ranking or {MISS: 0.0}
        return run
