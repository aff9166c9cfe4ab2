"""One ranked list per query from the hits of its (encoder, index) searches.

Dense leg, one encoder: its hits by score (several indexes merge by score: all scores are
cosines of the same query vector). Several encoders: reciprocal rank fusion (Cormack et al.,
2009), since cosines of different encoders are not on one scale. Then, in hybrid mode, the
dense list and the lexical list fuse as `app.core.hybrid` says.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from app.core.documents import Hit
from app.core.hybrid import RRF_K, QueryWeights, RankedHit, convex, query_features, rrf
from app.core.lexical import query_terms
from app.core.planning import Plan, SearchOptions

__all__ = ["RankedHit", "fuse", "rank_query"]


def fuse(lists: Sequence[tuple[str, Sequence[Hit]]], k: int) -> list[RankedHit]:
    """`lists`: (encoder, its hits from every index it searched) for one query."""
    if len(lists) == 1:
        expert, hits = lists[0]
        ranked = sorted(hits, key=lambda h: -h.score)[:k]
        return [RankedHit(h, h.score, expert, dense=h.score) for h in ranked]
    fused: dict[tuple[str, str], float] = defaultdict(float)
    first_seen: dict[tuple[str, str], RankedHit] = {}
    for expert, hits in lists:
        for rank, hit in enumerate(sorted(hits, key=lambda h: -h.score)):
            key = (hit.index, hit.id)
            fused[key] += 1.0 / (RRF_K + rank + 1)
            first_seen.setdefault(key, RankedHit(hit, 0.0, expert, dense=hit.score))
    best = sorted(fused, key=lambda key: -fused[key])[:k]
    return [
        RankedHit(first_seen[key].hit, fused[key], first_seen[key].expert, first_seen[key].dense)
        for key in best
    ]


def rank_query(
    query: str,
    plan: Plan,
    dense: Mapping[str, Sequence[Hit]],
    lexical: Sequence[Hit],
    options: SearchOptions,
    weights: Callable[[str], QueryWeights],
) -> list[RankedHit]:
    """One query's ranked list in `options.mode`; `dense[encoder]`: that encoder's hits
    from every index it searched; `lexical`: BM25 hits from the indexes it searched
    (`weights(encoder)`: the dense weight of a query that `encoder` embedded)."""
    lead = plan[0] if plan else ""
    if options.mode == "lexical":
        ranked = sorted(lexical, key=lambda h: -h.score)[: options.k]
        return [RankedHit(h, h.score, lead, lexical=h.score) for h in ranked]
    dense_list = fuse([(e, dense.get(e, [])) for e in plan], options.dense_depth)
    if options.mode == "dense":
        return dense_list
    lexical = sorted(lexical, key=lambda h: -h.score)[: options.lexical_depth]
    if options.fusion == "rrf":
        return rrf(dense_list, lexical, options.k)
    features = query_features(dense_list, lexical, len(query_terms(query)))
    return convex(dense_list, lexical, weights(lead).weight(features), options.k)
