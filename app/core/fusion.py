"""One ranked list per query from the candidates of its (encoder, index) searches.

Dense leg, one encoder: its candidates by score (several indexes merge by score: all scores
are cosines of the same query vector). Several encoders: reciprocal rank fusion (Cormack et
al., 2009), since cosines of different encoders are not on one scale. Then, in hybrid mode,
the dense list and the lexical list fuse as `app.core.hybrid` says. Ranking runs on arrays
(`app.core.legs`); only the returned hits become objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app.core.candidates import Candidates
from app.core.documents import Hit
from app.core.hybrid import QueryWeights, RankedHit, convex, query_features, rrf
from app.core.legs import Leg, Pool, reciprocal_rank
from app.core.lexical import query_terms
from app.core.planning import Plan, SearchOptions

__all__ = ["Candidates", "RankedHit", "as_candidates", "fuse", "rank_query"]

# A leg as callers hold it: its candidates from each index searched, or plain hits.
LegFound = Sequence[Candidates] | Sequence[Hit]


def as_candidates(found: LegFound | Candidates) -> list[Candidates]:
    """`found` as candidate lists (plain hits, as tests and older callers hold them, become
    one list each run)."""
    if isinstance(found, Candidates):
        return [found]
    out: list[Candidates] = []
    loose: list[Hit] = []
    for item in found:
        if isinstance(item, Candidates):
            if loose:
                out.append(Candidates.of_hits(loose))
                loose = []
            out.append(item)
        else:
            loose.append(item)
    if loose:
        out.append(Candidates.of_hits(loose))
    return out


def fuse(pool: Pool, lists: Sequence[np.ndarray], depth: int) -> Leg:
    """The dense leg from each encoder's entries (plan order): by score for one encoder,
    by reciprocal rank for several."""
    if len(lists) == 1:
        return pool.leg(lists[0], depth)
    if not lists:
        return pool.leg(np.zeros(0, dtype=np.int64), depth)
    return reciprocal_rank(pool, lists, depth)


def _dense_hits(leg: Leg) -> list[RankedHit]:
    names = leg.pool.experts
    return [
        RankedHit(hit, score, names[expert], dense=hit.score)
        for hit, score, expert in zip(
            leg.pool.hits(leg.entries), leg.scores.tolist(), leg.experts.tolist(), strict=True
        )
    ]


def _lexical_hits(leg: Leg, expert: str) -> list[RankedHit]:
    return [
        RankedHit(hit, score, expert, lexical=score)
        for hit, score in zip(leg.pool.hits(leg.entries), leg.scores.tolist(), strict=True)
    ]


def rank_query(
    query: str,
    plan: Plan,
    dense: Mapping[str, LegFound],
    lexical: LegFound,
    options: SearchOptions,
    weights: Callable[[str], QueryWeights],
) -> list[RankedHit]:
    """One query's ranked list in `options.mode`; `dense[encoder]`: that encoder's
    candidates from every index it searched; `lexical`: BM25 candidates from the indexes it
    searched (`weights(encoder)`: the dense weight of a query that `encoder` embedded)."""
    lead = plan[0] if plan else ""
    parts: list[Candidates] = []
    spans = []
    for encoder in plan:
        start = len(parts)
        parts.extend(as_candidates(dense.get(encoder, [])))
        spans.append((start, len(parts)))
    lexical_start = len(parts)
    if options.mode != "dense":
        parts.extend(as_candidates(lexical))
    pool = Pool(parts, plan or [""])
    lexical_entries = pool.entries(lexical_start, len(parts))
    if options.mode == "lexical":
        return _lexical_hits(pool.leg(lexical_entries, options.k), lead)
    dense_leg = fuse(pool, [pool.entries(*span) for span in spans], options.dense_depth)
    if options.mode == "dense":
        return _dense_hits(dense_leg)
    lexical_leg = pool.leg(lexical_entries, options.lexical_depth)
    if options.fusion == "rrf":
        return rrf(dense_leg, lexical_leg, options.k)
    features = query_features(dense_leg, lexical_leg, len(query_terms(query)))
    return convex(dense_leg, lexical_leg, weights(lead).weight(features), options.k)
