"""Target planning: which encoders embed a query, and which indexes each embedding searches.

The gateway (`RetrievalService`) and `rr eval` (both settings) run these same functions, so
the evaluation measures the planning that ships.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from app.core.names import AUTO, BASE_EXPERT
from app.core.router import RoutingDecision


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    expert: str = AUTO  # "auto" (route), "base", or an expert name
    index: str | None = None  # pin the index searched; None = the encoding expert's own
    top_experts: int = 1
    include_text: bool = True


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
    for qi, plan in enumerate(plans):
        for encoder in plan:
            for index in choose_targets(encoder, options, names):
                jobs[index].append((qi, encoder))
    return dict(jobs)
