"""`rr build-pilots`: Algorithm 1 over every expert and its domain's TRAIN queries.

Steps: score each domain's train queries with base and every expert (per-query nDCG@10 on
that domain's corpus), label each query (paper argmax, or with the own-domain tie rule),
centroid per (domain, label) group in base-encoder space, then calibrate each expert's
fallback threshold from its own domain's train queries. Rules are compared on a held-out
slice of the train queries (pilots from the rest), never on test queries.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.training.pilots import (
    BASE_LABEL,
    algorithm1_pilots,
    calibrate_threshold,
    centroid_pilots,
    label_queries,
)

if TYPE_CHECKING:
    from app.data.beir import Benchmark
    from app.encoder.lora_encoder import LoraEncoder

log = logging.getLogger(__name__)


@dataclass
class DomainScores:
    """One domain's train queries: base embeddings and per-query nDCG@10 per candidate."""

    expert: str
    query_ids: list[str]
    embeddings: np.ndarray
    ndcg: dict[str, np.ndarray]  # candidate (expert name or BASE_LABEL) -> (n_queries,)


def expert_encoder(experts_dir: Path, max_seq_length: int = 256) -> LoraEncoder:
    """LoraEncoder whose adapters are the experts in `experts_dir` (one code path with serving)."""
    from app.encoder.lora_encoder import LoraEncoder
    from app.experts.artifacts import adapter_locator, list_expert_dirs

    adapters = {path.name: path for path in list_expert_dirs(experts_dir)}
    return LoraEncoder(adapter_locator(adapters), capacity=64, max_seq_length=max_seq_length)


def score_domains(
    benchmark: Benchmark,
    experts: list[str],
    encoder: LoraEncoder,
    cache_dir: Path,
    max_queries: int | None = None,
) -> dict[str, DomainScores]:
    """Per-query nDCG@10 of base and every expert on each expert domain's train queries.

    `max_queries` caps each domain (a fixed hash-ordered subset) to bound the cost of
    running every expert over every large train split on CPU.
    """
    from app.core.ranking import per_query_ndcg
    from app.data.beir import load_qrels, load_queries
    from app.data.doc_embeddings import document_embeddings
    from app.training.examples import from_qrels

    domains = {}
    for entry in benchmark.experts:
        if entry.name not in experts or entry.train_qrels is None:
            continue
        doc_ids, docs = document_embeddings(entry.directory, encoder, cache_dir)
        examples = from_qrels(load_queries(entry.directory), load_qrels(entry.train_qrels), doc_ids)
        if max_queries is not None and len(examples) > max_queries:
            examples = sorted(examples, key=lambda e: hashlib.sha1(e.query_id.encode()).hexdigest())
            examples = examples[:max_queries]
        texts = [e.text for e in examples]
        relevants = [e.positives for e in examples]
        base = encoder.encode(texts)
        ndcg = {BASE_LABEL: per_query_ndcg(base, docs, relevants)}
        for name in experts:
            ndcg[name] = per_query_ndcg(encoder.encode(texts, [name] * len(texts)), docs, relevants)
        domains[entry.name] = DomainScores(entry.name, [e.query_id for e in examples], base, ndcg)
        log.info("scored %s: %d train queries", entry.name, len(examples))
    return domains


def make_pilots(
    domains: dict[str, DomainScores],
    rule: str,
    margin: float,
    k: int,
    mask: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Pilots per expert under a labelling rule: `paper`, `tie` or `centroid`.

    `centroid` ignores the scores (every query labelled with its own domain's expert).
    `mask` restricts each domain to some of its queries (for held-out comparisons).
    """
    grouped = {}
    for name, d in domains.items():
        keep = mask[name] if mask is not None else np.ones(len(d.query_ids), dtype=bool)
        if rule == "centroid":
            labels = [d.expert] * int(keep.sum())
        else:
            scores = {c: s[keep] for c, s in d.ndcg.items()}
            labels = label_queries(scores, d.expert, None if rule == "paper" else margin)
        grouped[name] = (d.embeddings[keep], labels)
    pilots = algorithm1_pilots(grouped, k=k)
    for name, d in domains.items():  # an expert that won no query still needs a pilot
        if name not in pilots:
            rows = d.embeddings[mask[name]] if mask is not None else d.embeddings
            pilots[name] = centroid_pilots(rows, k=k)
    return pilots


def thresholds_for(
    pilots: dict[str, np.ndarray],
    domains: dict[str, DomainScores],
    aggregation: str,
    percentile: float,
) -> dict[str, float]:
    """Each expert's fallback threshold from its own domain's train queries' router score."""
    from app.core.router import Router

    router = Router(pilots, aggregation=aggregation)  # type: ignore[arg-type]
    limits = {}
    for name, d in domains.items():
        column = router.names.index(name)
        limits[name] = calibrate_threshold(router.score(d.embeddings)[:, column], percentile)
    return limits


def _held_out_mask(domain: DomainScores, fraction: float) -> np.ndarray:
    ranks = [
        hashlib.sha1(f"pilots:{domain.expert}:{q}".encode()).hexdigest() for q in domain.query_ids
    ]
    order = np.argsort(ranks)
    held = np.zeros(len(ranks), dtype=bool)
    held[order[: max(1, round(len(ranks) * fraction))]] = True
    return held


def compare_rules(
    domains: dict[str, DomainScores],
    rules: list[tuple[str, float]],
    k: int,
    aggregation: str,
    fraction: float = 0.2,
) -> list[dict[str, Any]]:
    """Route a held-out slice of each domain's TRAIN queries with pilots built from the rest.

    Reports routing accuracy (own expert chosen), and the mean nDCG@10 of the routed encoder
    (base when the router picks no expert), macro-averaged over domains.
    """
    from app.core.router import Router

    held = {n: _held_out_mask(d, fraction) for n, d in domains.items()}
    fit = {n: ~m for n, m in held.items()}
    rows = []
    for rule, margin in rules:
        pilots = make_pilots(domains, rule, margin, k, mask=fit)
        router = Router(pilots, aggregation=aggregation)  # type: ignore[arg-type]
        accuracy, routed = [], []
        for name, d in domains.items():
            picks = [
                router.names[i] for i in np.argmax(router.score(d.embeddings[held[name]]), axis=1)
            ]
            accuracy.append(float(np.mean([p == name for p in picks])))
            chosen = np.array(
                [d.ndcg[p][i] for p, i in zip(picks, np.flatnonzero(held[name]), strict=True)]
            )
            routed.append(float(chosen.mean()))
        rows.append(
            {
                "rule": rule,
                "margin": margin if rule == "tie" else None,
                "routing_accuracy": round(float(np.mean(accuracy)), 4),
                "routed_ndcg@10": round(float(np.mean(routed)), 4),
                "pilots": int(sum(len(p) for p in pilots.values())),
            }
        )
    return rows


def label_counts(
    domains: dict[str, DomainScores], rule: str, margin: float
) -> dict[str, dict[str, int]]:
    """How many of each domain's train queries each label got (shows the tie collapse)."""
    counts = {}
    for name, d in domains.items():
        labels = label_queries(d.ndcg, d.expert, None if rule == "paper" else margin)
        counts[name] = {label: labels.count(label) for label in sorted(set(labels))}
    return counts


def pilot_sets(
    benchmark: Benchmark, experts: list[str], encoder: LoraEncoder, limit: int
) -> dict[str, tuple[np.ndarray, int]]:
    """Each expert's pilot set: the routing features (at `encoder.routing_layer`) of up to
    `limit` of its domain's TRAIN queries, with how many train queries the domain has."""
    from app.training.pilots import pilot_queries

    sets = {}
    for entry in benchmark.experts:
        if entry.name not in experts or entry.train_qrels is None:
            continue
        every = pilot_queries(entry, limit=10**9)
        sets[entry.name] = (encoder.routing_features(every[:limit]), len(every))
        log.info("pilot set of %s: %d train queries", entry.name, min(limit, len(every)))
    return sets


def compare_routing(
    features: dict[int, dict[str, np.ndarray]], limit: int, held_out: float = 0.2
) -> list[dict[str, Any]]:
    """Own-expert routing accuracy (fallback counts as a miss) on a held-out slice of each
    domain's TRAIN queries, pilot sets from the rest: per routing layer, rule and fallback
    percentile. `features[layer][expert]`: all of a domain's train queries in pilot order."""
    from app.core.router import build_router

    rows = []
    for layer, by_expert in sorted(features.items()):
        held, fit = {}, {}
        for name, rows_of in by_expert.items():
            cut = max(1, round(len(rows_of) * held_out))
            held[name], fit[name] = rows_of[:cut], rows_of[cut:][:limit]
        for rule in ("learned", "centroid"):
            for percentile in (None, 0.0, 1.0, 5.0):
                router = build_router(fit, {}, rule, "mean", -1.0, percentile)
                accuracy = {
                    n: float(np.mean([d.expert == n for d in router.route(held[n])]))
                    for n in sorted(held)
                }
                rows.append(
                    {
                        "layer": layer,
                        "rule": rule,
                        "fallback_percentile": percentile,
                        "routing_accuracy": round(float(np.mean(list(accuracy.values()))), 4),
                        "per_domain": {n: round(a, 4) for n, a in accuracy.items()},
                    }
                )
    return rows
