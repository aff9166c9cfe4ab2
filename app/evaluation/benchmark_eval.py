"""`rr eval`: every method on every test set, in the paper and service settings.

Test qrels are only read here, to score. Routers, pilots and thresholds come from the
experts' artifacts (built from train queries); oracles are upper bounds by definition.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.documents import Document
from app.core.hybrid import weights_lookup
from app.core.names import BASE_EXPERT
from app.core.router import Aggregation, Rule
from app.data.beir import (
    Benchmark,
    BenchmarkSet,
    load_corpus,
    load_qrels,
    load_queries,
    positive_qrels,
)
from app.encoder.documents import document_text
from app.evaluation.runs import Choice, EvalSet, Run, ServiceIndexes, paper_run

log = logging.getLogger(__name__)
METRICS = ("ndcg@10", "recall@100")
BASE = BASE_EXPERT


def per_query_ndcg(run: Run, qrels: dict[str, dict[str, int]]) -> np.ndarray:
    """nDCG@10 of each query of `run` (ranx), in the order of `qrels`' sorted query ids."""
    from ranx import Qrels, evaluate
    from ranx import Run as RanxRun

    values = evaluate(
        Qrels(qrels), RanxRun(run), "ndcg@10", return_mean=False, make_comparable=True
    )
    return np.asarray(values, dtype=np.float64)


@dataclass
class EvalResult:
    scores: dict[str, dict[str, dict[str, float]]] = field(
        default_factory=lambda: {m: {} for m in METRICS}
    )
    per_query: dict[str, dict[str, np.ndarray]] = field(
        default_factory=dict
    )  # ds -> method -> nDCG
    routing: dict[str, dict[str, int]] = field(default_factory=dict)
    routing_accuracy: dict[str, dict[str, float]] = field(
        default_factory=dict
    )  # router -> ds -> acc
    in_domain: list[str] = field(default_factory=list)
    zero_shot: list[str] = field(default_factory=list)
    document_precision: str = "fp32"  # what the documents were embedded at (as served)
    precision: str = "fp32"  # what the queries were embedded at (as served)

    def record(self, dataset: str, method: str, run: Run, qrels: dict[str, dict[str, int]]) -> None:
        from ranx import Qrels, evaluate
        from ranx import Run as RanxRun

        values = evaluate(
            Qrels(qrels), RanxRun(run), list(METRICS), return_mean=False, make_comparable=True
        )
        for metric in METRICS:
            self.scores[metric].setdefault(dataset, {})[method] = round(
                float(np.mean(values[metric])), 5
            )
        self.per_query.setdefault(dataset, {})[method] = np.asarray(
            values["ndcg@10"], dtype=np.float64
        )

    def averages(self) -> dict[str, dict[str, dict[str, float]]]:
        out: dict[str, dict[str, dict[str, float]]] = {}
        for metric in METRICS:
            for group, names in (("in_domain", self.in_domain), ("zero_shot", self.zero_shot)):
                tables = [self.scores[metric][n] for n in names if n in self.scores[metric]]
                methods = set.intersection(*(set(t) for t in tables)) if tables else set()
                out.setdefault(metric, {})[group] = {
                    m: round(float(np.mean([t[m] for t in tables])), 5) for m in sorted(methods)
                }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            **self.scores,
            "routing": self.routing,
            "document_precision": self.document_precision,
            "precision": self.precision,
            "averages": self.averages(),
            "routing_accuracy": self.routing_accuracy,
            "datasets": {"in_domain": self.in_domain, "zero_shot": self.zero_shot},
        }


def load_eval_set(
    entry: BenchmarkSet, in_domain: bool, encoder: Any, cache_dir: Path
) -> tuple[EvalSet, list[str]]:
    from app.data.doc_embeddings import document_embeddings

    doc_ids, matrix = document_embeddings(entry.directory, encoder, cache_dir)
    qrels = positive_qrels(load_qrels(entry.test_qrels))
    queries = load_queries(entry.directory)
    ids = sorted(q for q in qrels if queries.get(q, "").strip())
    corpus = load_corpus(entry.directory)
    texts = [document_text(d["title"], d["text"]) for d in corpus]
    data = EvalSet(
        entry.name,
        in_domain,
        doc_ids,
        matrix,
        ids,
        [queries[q] for q in ids],
        {q: qrels[q] for q in ids},
        documents=[Document(d["_id"], d["text"], d["title"]) for d in corpus],
    )
    return data, texts


def train_query_sample(entry: BenchmarkSet, size: int, seed: int) -> list[str]:
    """Up to `size` train queries of a domain (DatasetRouter's examples), seeded."""
    qrels = positive_qrels(load_qrels(entry.train_qrels)) if entry.train_qrels else {}
    queries = load_queries(entry.directory)
    ids = sorted(q for q in qrels if queries.get(q, "").strip())
    rng = np.random.default_rng(seed)
    picked: list[int] = (
        list(rng.choice(len(ids), size=min(size, len(ids)), replace=False)) if ids else []
    )
    return [queries[ids[int(i)]] for i in sorted(picked)]


def _choices(decisions: list[Any], top2: bool = False) -> list[Choice]:
    if top2:
        return [BASE if d.fallback else tuple(d.top(2)) for d in decisions]
    return [d.expert for d in decisions]


@dataclass(frozen=True)
class RoutingSettings:
    """The served router's settings (`Settings`' router fields; defaults: the service's)."""

    layer: int = 4
    rule: Rule = "learned"
    aggregation: Aggregation = "mean"
    threshold: float = 0.0
    fallback_percentile: float | None = None

    @classmethod
    def of(cls, settings: Any) -> RoutingSettings:
        return cls(
            settings.routing_layer,
            settings.router_rule,
            settings.router_aggregation,
            settings.router_fallback_threshold,
            settings.router_fallback_percentile,
        )


def run_eval(
    benchmark: Benchmark,
    experts_dir: Path,
    cache_dir: Path,
    multitask_dir: Path | None = None,
    extra_zero_shot: list[Path] | None = None,
    variant_pilots: dict[str, dict[str, np.ndarray]] | None = None,
    k: int = 100,
    seed: int = 13,
    document_precision: str = "fp32",
    precision: str = "fp32",
    routing: RoutingSettings | None = None,
) -> EvalResult:
    """`routing`: the served router's settings (default: the service's defaults)."""
    from app.core.pilots import centroid_pilots
    from app.core.router import Router, build_router
    from app.encoder.lora_encoder import BASE as BASE_ADAPTER
    from app.encoder.lora_encoder import LoraEncoder
    from app.evaluation.bm25 import bm25_search
    from app.experts.artifacts import (
        adapter_locator,
        list_expert_dirs,
        read_expert,
        read_fusion_models,
    )
    from app.training.pilots import calibrate_threshold, pilot_queries

    experts = {p.name: read_expert(p) for p in list_expert_dirs(experts_dir)}
    adapters = {name: e.path for name, e in experts.items()}
    if multitask_dir is not None and (multitask_dir / "adapter_config.json").is_file():
        adapters["multitask"] = multitask_dir

    routing = routing or RoutingSettings()
    encoder = LoraEncoder(
        adapter_locator(adapters), capacity=len(adapters) + 1, routing_layer=routing.layer
    )
    result = EvalResult(
        document_precision=encoder.use_document_precision(document_precision),
        precision=encoder.use_precision(precision),
    )
    entries = [(e, True) for e in benchmark.experts] + [(e, False) for e in benchmark.zero_shot]
    for path in extra_zero_shot or []:
        entries.append((BenchmarkSet(path.name, path, path / "qrels/test.tsv", None), False))

    sets: list[EvalSet] = []
    features: dict[str, np.ndarray] = {}  # the served router's input, per set
    for entry, in_domain in entries:
        data, doc_texts = load_eval_set(entry, in_domain, encoder, cache_dir)
        (result.in_domain if in_domain else result.zero_shot).append(data.name)
        data.encoded[BASE] = encoder.encode(
            data.query_texts, [BASE_ADAPTER] * len(data.query_texts)
        )
        features[data.name] = encoder.routing_features(data.query_texts)
        for name in adapters:
            if name in experts and not experts[name].spec.use_adapter:
                # Its gate is off (app/evaluation/gate.py): served with the base vectors.
                data.encoded[name] = data.encoded[BASE]
                continue
            data.encoded[name] = encoder.encode(data.query_texts, [name] * len(data.query_texts))
        rows, scores = bm25_search(doc_texts, data.query_texts, k)
        result.record(
            data.name,
            "bm25",
            {
                q: {data.doc_ids[r]: float(s) for r, s in zip(rr, ss, strict=True) if s > 0}
                or {"__miss__": 0.0}
                for q, rr, ss in zip(data.query_ids, rows, scores, strict=True)
            },
            data.qrels,
        )
        sets.append(data)
        log.info("encoded %s (%d queries)", data.name, len(data.query_ids))

    names = sorted(experts)
    weights = weights_lookup(
        {n: e.spec.fusion_weight for n, e in experts.items()},
        *read_fusion_models(experts_dir),
        gated={n for n, e in experts.items() if not e.spec.use_adapter},
    )
    by_name = {e.name: e for e in benchmark.experts}
    # The served router: the experts' pilot sets (routing features of train queries), as
    # the gateway builds it. It routes on the routing features.
    thresholds = {n: experts[n].spec.fallback_threshold for n in names}
    pilot_sets = {n: experts[n].pilots for n in names if len(experts[n].pilots)}
    served = build_router(
        pilot_sets,
        thresholds,
        routing.rule,
        routing.aggregation,
        routing.threshold,
        routing.fallback_percentile,
    )
    on_features: dict[str, tuple[Router, bool]] = {
        "router": (served, False),
        "router_top2[served]": (served, True),
        f"router_centroid@L{routing.layer}": (Router(pilot_sets, "mean", threshold=-1.0), False),
    }
    # Today's (before one-pass) methods: on the final embedding, one centroid pilot per
    # expert of the same train queries, fallback below the 5th percentile of its own.
    final_sets = {n: encoder.encode(pilot_queries(by_name[n], 200)) for n in names if n in by_name}
    pilots = {n: centroid_pilots(rows) for n, rows in final_sets.items()}
    legacy = {n: calibrate_threshold(final_sets[n] @ pilots[n][0], 5.0) for n in pilots}
    routers: dict[str, tuple[Router, bool]] = {
        "router_mean": (Router(pilots, "mean", thresholds=legacy), False),
        "router_max": (Router(pilots, "max", thresholds=legacy), False),
        "router_top2": (Router(pilots, "mean", thresholds=legacy), True),
        "router_mean_nofallback": (Router(pilots, "mean", threshold=-1.0), False),
        "router_learned@final": (build_router(final_sets, {}, "learned", threshold=-1.0), False),
    }
    for label, variant in (variant_pilots or {}).items():
        routers[f"router_mean[{label}]"] = (Router(variant, "mean", threshold=-1.0), False)
    samples = {
        n: encoder.encode(train_query_sample(by_name[n], 100, seed)) for n in names if n in by_name
    }
    routers["dataset_router"] = (
        Router({n: s for n, s in samples.items() if len(s)}, "max", threshold=-1.0),
        False,
    )

    service = ServiceIndexes([s for s in sets if s.in_domain])
    for data in sets:
        if data.in_domain:  # every query on the base encoder, searching all indexes merged
            everything = service.run(data, [BASE] * len(data.query_ids), k)
            result.record(data.name, "service:base", everything, data.qrels)
        fixed: dict[str, Choice] = {BASE: BASE, **{f"expert:{n}": n for n in names}}
        if "multitask" in adapters:
            fixed["multitask"] = "multitask"
        for method, choice in fixed.items():
            result.record(
                data.name, method, paper_run(data, [choice] * len(data.query_ids), k), data.qrels
            )
        _hybrid_rows(result, data, service, routers["router_mean"][0], weights, k)
        _hybrid_rows(result, data, service, served, weights, k, "router", features[data.name], True)
        every = [(m, r, t, data.encoded[BASE]) for m, (r, t) in routers.items()]
        every += [(m, r, t, features[data.name]) for m, (r, t) in on_features.items()]
        for method, router, top2, inputs in every:
            choices = _choices(router.route(inputs), top2)
            result.record(data.name, method, paper_run(data, choices, k), data.qrels)
            if data.in_domain:
                result.record(
                    data.name, f"service:{method}", service.run(data, choices, k), data.qrels
                )
                if method in ("router_mean", "router_top2", "router", "router_top2[served]"):
                    merged = service.run(data, choices, k, search_all=True)
                    result.record(data.name, f"service_all:{method}", merged, data.qrels)
            if not top2:
                accuracy = (
                    np.mean([c == data.name for c in choices])
                    if data.in_domain
                    else np.mean([c == BASE for c in choices])
                )
                result.routing_accuracy.setdefault(method, {})[data.name] = round(
                    float(accuracy), 4
                )
            if method == "router":
                result.routing[data.name] = dict(Counter(str(c) for c in choices))
        _oracles(result, data, names, k)
    return result


def _hybrid_rows(
    result: EvalResult,
    data: EvalSet,
    service: ServiceIndexes,
    router: Any,
    weights: Any,
    k: int,
    label: str = "router_mean",
    inputs: np.ndarray | None = None,
    routed_only: bool = False,
) -> None:
    """Lexical (the served FTS5 BM25) and hybrid rows, paper and service settings, for
    `router` on `inputs` (default: the final base embedding); `routed_only`: only the rows
    that depend on the routing (the shared baselines are recorded once)."""
    everyone = [BASE] * len(data.query_ids)
    routed = _choices(router.route(data.encoded[BASE] if inputs is None else inputs))
    if not routed_only:
        result.record(data.name, "lexical", paper_run(data, everyone, k, "lexical"), data.qrels)
        hybrid_base = paper_run(data, everyone, k, "hybrid", weights)
        result.record(data.name, "hybrid:base", hybrid_base, data.qrels)
    result.record(
        data.name, f"hybrid:{label}", paper_run(data, routed, k, "hybrid", weights), data.qrels
    )
    rrf = paper_run(data, routed, k, "hybrid", weights, fusion="rrf")
    result.record(data.name, f"hybrid_rrf:{label}", rrf, data.qrels)
    if not data.in_domain:
        return
    for mode in ("lexical", "hybrid"):
        run = service.run(data, routed, k, mode=mode, weights=weights)
        result.record(data.name, f"service_{mode}:{label}", run, data.qrels)
    everywhere = service.run(
        data, routed, k, mode="hybrid", weights=weights, lexical_everywhere=True
    )
    result.record(data.name, f"service_hybrid_lexall:{label}", everywhere, data.qrels)
    if not routed_only:
        every_fallback = service.run(data, everyone, k, mode="hybrid", weights=weights)
        result.record(data.name, "service_hybrid:base", every_fallback, data.qrels)


def _oracles(result: EvalResult, data: EvalSet, names: list[str], k: int) -> None:
    """Upper bounds over {base} + experts, chosen with the test labels by definition."""
    candidates = [BASE, *names]
    methods = [BASE, *(f"expert:{n}" for n in names)]
    table = np.stack([result.per_query[data.name][m] for m in methods], axis=1)
    dataset_best = candidates[int(np.argmax(table.mean(axis=0)))]
    result.record(
        data.name,
        "dataset_oracle",
        paper_run(data, [dataset_best] * len(data.query_ids), k),
        data.qrels,
    )
    per_query = [candidates[int(i)] for i in np.argmax(table, axis=1)]
    result.record(data.name, "instance_oracle", paper_run(data, per_query, k), data.qrels)
