"""Turning routing choices into rankings, in the two settings the report compares.

Both settings run the gateway's own retrieval core (`app.core`: target planning, then
fusion) over in-memory indexes, so the report measures what `/v1/search` does. A choice per
query is an encoder name (expert, "base", "multitask"), or a tuple of experts (top-k routing:
each embeds the query, the lists are fused by reciprocal rank, as the gateway does).

- paper:   every query searches its own dataset's index; only the query encoder is routed
           (the gateway's `index` option pinned to the dataset).
- service: the gateway holds one index per expert domain; a query routed to expert E searches
           E's index (a wrong expert is a miss), a fallback searches all indexes merged by score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from app.core.candidates import Candidates
from app.core.documents import Document
from app.core.fusion import rank_query
from app.core.hybrid import Fusion, Mode, QueryWeights
from app.core.planning import (
    Key,
    Plan,
    SearchOptions,
    Targets,
    lexical_jobs,
    search_jobs,
    targets,
)
from app.index.base import VectorIndex
from app.index.memory import MemoryIndex

Choice = str | tuple[str, ...]
Run = dict[str, dict[str, float]]
MISS = "__miss__"  # ranx needs at least one document per query
DENSE_ONLY: Callable[[str], QueryWeights] = lambda _encoder: QueryWeights.constant(1.0)  # noqa: E731


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
    documents: list[Document] | None = None  # title and text, for the lexical leg

    @cached_property
    def index(self) -> MemoryIndex:
        return MemoryIndex.of_vectors(self.name, self.doc_ids, self.doc_matrix, self.documents)


def plan_of(choice: Choice) -> Plan:
    return list(choice) if isinstance(choice, tuple) else [choice]


def core_run(
    dataset: EvalSet,
    plans: Sequence[Plan],
    indexes: Mapping[str, VectorIndex],
    options: SearchOptions,
    choose_targets: Targets = targets,
    weights: Callable[[str], QueryWeights] = DENSE_ONLY,
) -> Run:
    """The gateway's search and fusion of `dataset`'s queries (`plans[i]`: the encoders of
    query i) over `indexes`; a document of another domain's index is namespaced
    (`domain::id`: never relevant here). `weights`: hybrid's dense weights."""
    lists: dict[Key, list[Candidates]] = {}
    for name, keys in search_jobs(plans, options, indexes, choose_targets).items():
        if name not in indexes:  # an encoder without an index (multitask) finds nothing
            continue
        vectors = np.stack([dataset.encoded[encoder][qi] for qi, encoder in keys])
        found = indexes[name].search_candidates(vectors, options.dense_depth)
        for key, candidates in zip(keys, found, strict=True):
            lists.setdefault(key, []).append(candidates)
    lexical: dict[int, list[Candidates]] = {}
    for name, positions in lexical_jobs(plans, options, indexes).items():
        if name not in indexes:
            continue
        texts = [dataset.query_texts[qi] for qi in positions]
        for qi, candidates in zip(
            positions,
            indexes[name].lexical_candidates(texts, options.lexical_depth),
            strict=True,
        ):
            lexical.setdefault(qi, []).append(candidates)
    ranked_lists = [
        rank_query(
            dataset.query_texts[qi],
            plan,
            {e: lists.get((qi, e), []) for e in plan},
            lexical.get(qi, []),
            options,
            weights,
        )
        for qi, plan in enumerate(plans)
    ]
    run: Run = {}
    for qi, ranked in enumerate(ranked_lists):
        ranking: dict[str, float] = {}
        for item in ranked:
            hit = item.hit
            doc = hit.id if hit.index == dataset.name else f"{hit.index}::{hit.id}"
            ranking.setdefault(doc, item.score)
        run[dataset.query_ids[qi]] = ranking or {MISS: 0.0}
    return run


def paper_run(
    dataset: EvalSet,
    choices: Sequence[Choice],
    k: int = 100,
    mode: Mode = "dense",
    weights: Callable[[str], QueryWeights] = DENSE_ONLY,
    fusion: Fusion = "convex",
) -> Run:
    options = SearchOptions(k=k, index=dataset.name, include_text=False, mode=mode, fusion=fusion)
    plans = [plan_of(c) for c in choices]
    return core_run(dataset, plans, {dataset.name: dataset.index}, options, weights=weights)


class ServiceIndexes:
    """The gateway's view: one index per expert domain."""

    def __init__(self, sets: list[EvalSet]) -> None:
        self.indexes = {s.name: s.index for s in sets}

    def run(
        self,
        dataset: EvalSet,
        choices: Sequence[Choice],
        k: int = 100,
        search_all: bool = False,
        mode: Mode = "dense",
        weights: Callable[[str], QueryWeights] = DENSE_ONLY,
        lexical_everywhere: bool = False,
    ) -> Run:
        """`search_all` (not served; a what-if): the routed expert only encodes the query,
        which then searches every index merged by score. `lexical_everywhere` (a what-if):
        the lexical leg of a routed query searches every index."""
        options = SearchOptions(
            k=k, include_text=False, mode=mode, lexical_everywhere=lexical_everywhere
        )
        plans = [plan_of(c) for c in choices]
        if not search_all:
            return core_run(dataset, plans, self.indexes, options, weights=weights)
        every = lambda e, o, names: list(names)  # noqa: E731
        return core_run(dataset, plans, self.indexes, options, every, weights)
