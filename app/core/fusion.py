"""One ranked list per query from the hits of its (encoder, index) searches.

One encoder: its hits by score (several indexes merge by score: all scores are cosines of
the same query vector). Several encoders: reciprocal rank fusion (Cormack et al., 2009), since
cosines of different encoders are not on one scale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.core.documents import Hit
from app.core.planning import Key, Plan

RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al., 2009)


@dataclass(frozen=True)
class RankedHit:
    hit: Hit
    score: float
    expert: str  # whose encoder embedded the query for this hit ("base" on fallback)


def fuse(lists: Sequence[tuple[str, Sequence[Hit]]], k: int) -> list[RankedHit]:
    """`lists`: (encoder, its hits from every index it searched) for one query."""
    if len(lists) == 1:
        expert, hits = lists[0]
        return [RankedHit(h, h.score, expert) for h in sorted(hits, key=lambda h: -h.score)[:k]]
    fused: dict[tuple[str, str], float] = defaultdict(float)
    first_seen: dict[tuple[str, str], RankedHit] = {}
    for expert, hits in lists:
        for rank, hit in enumerate(sorted(hits, key=lambda h: -h.score)):
            key = (hit.index, hit.id)
            fused[key] += 1.0 / (RRF_K + rank + 1)
            first_seen.setdefault(key, RankedHit(hit, 0.0, expert))
    best = sorted(fused, key=lambda key: -fused[key])[:k]
    return [RankedHit(first_seen[key].hit, fused[key], first_seen[key].expert) for key in best]


def fuse_plans(
    plans: Sequence[Plan], hits: Mapping[Key, Sequence[Hit]], k: int
) -> list[list[RankedHit]]:
    """Each query's ranked list from `hits[(query, encoder)]` (all indexes it searched)."""
    return [fuse([(e, hits.get((qi, e), [])) for e in plan], k) for qi, plan in enumerate(plans)]
