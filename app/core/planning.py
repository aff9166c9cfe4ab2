"""Target planning: which encoders embed a query, and which indexes each embedding searches.

The gateway (`RetrievalService`) and `rr eval` (both settings) run these same functions, so
the evaluation measures the planning that ships.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from app.core.filters import MetadataFilter
from app.core.hybrid import CANDIDATES, Fusion, Mode
from app.core.names import AUTO, BASE_EXPERT
from app.core.router import RoutingDecision


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    expert: str = AUTO  # "auto" (route), "base", or an expert name
    index: str | None = None  # pin the index searched; None = the encoding expert's own
    top_experts: int = 1
    include_text: bool = True
    mode: Mode = "hybrid"
    fusion: Fusion = "convex"
    candidates: int = CANDIDATES  # each leg's depth before hybrid fusion
    # The lexical leg searches every index, not only the routed expert's (a what-if the
    # eval measures: a wrong route is then no sure miss).
    lexical_everywhere: bool = False
    # Texts longer than the encoder's token limit are cut there (False: refused instead).
    truncate: bool = True
    # Only documents whose metadata this allows, on both legs, before each leg's top k.
    where: MetadataFilter | None = None

    @property
    def dense_depth(self) -> int:
        return self.k if self.mode == "dense" else max(self.k, self.candidates)

    @property
    def lexical_depth(self) -> int:
        return self.k if self.mode == "lexical" else max(self.k, self.candidates)


Plan = list[str]  # the encoders that embed one query, best first
Key = tuple[int, str]  # (query position, encoder)
Targets = Callable[[str, SearchOptions, Sequence[str]], list[str]]


def encoders_for(decision: RoutingDecision, options: SearchOptions) -> Plan:
    """A fallback (or base) decision embeds with the base model; `auto` takes the routed
    `top_experts`; a pinned expert embeds alone."""
    if decision.fallback or decision.expert == BASE_EXPERT:
        return [BASE_EXPERT]
    if options.expert == AUTO:
        return decision.top(options.top_experts)
    return [options.expert]


def targets(encoder: str, options: SearchOptions, index_names: Sequence[str]) -> list[str]:
    """A pinned index; else the expert's own index; the base model searches every index."""
    if options.index is not None:
        return [options.index]
    if encoder == BASE_EXPERT:
        return list(index_names)
    return [encoder]


def lexical_targets(plan: Plan, options: SearchOptions, index_names: Sequence[str]) -> list[str]:
    """The indexes a query's lexical leg searches: those its encoders' vectors search
    (every index on fallback), or every index with `lexical_everywhere`."""
    if options.mode == "dense":
        return []
    if options.lexical_everywhere and options.index is None:
        return list(index_names)
    found: dict[str, None] = {}
    for encoder in plan:
        found.update(dict.fromkeys(targets(encoder, options, index_names)))
    return list(found)


def lexical_jobs(
    plans: Sequence[Plan], options: SearchOptions, index_names: Iterable[str]
) -> dict[str, list[int]]:
    """The queries (positions) whose lexical leg searches each index."""
    names = list(index_names)
    jobs: dict[str, list[int]] = defaultdict(list)
    for qi, plan in enumerate(plans):
        for index in lexical_targets(plan, options, names):
            jobs[index].append(qi)
    return dict(jobs)


def search_jobs(
    plans: Sequence[Plan],
    options: SearchOptions,
    index_names: Iterable[str],
    choose_targets: Targets = targets,
) -> dict[str, list[Key]]:
    """Every (query, encoder) embedding grouped by the index it searches: one batched
    search per index."""
    names = list(index_names)
    jobs: dict[str, list[Key]] = defaultdict(list)
    if options.mode == "lexical":
        return {}
    for qi, plan in enumerate(plans):
        for encoder in plan:
            for index in choose_targets(encoder, options, names):
                jobs[index].append((qi, encoder))
    return dict(jobs)
