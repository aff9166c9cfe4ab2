"""`rr eval`, registered on the `rr` app (the report of every method on every test set).

Heavy libraries (torch, ranx, matplotlib) load inside the command, not at import.
"""

from __future__ import annotations

# ruff: noqa: B008  (typer declares options as argument defaults)
from pathlib import Path

import typer

from app.training.commands import (
    CACHE_HELP,
    MULTITASK_HELP,
    benchmark_path,
    cli_logging,
    cli_settings,
    embedding_cache,
    metrics_summary,
    multitask_dir,
    variants_path,
)


def register(cli: typer.Typer) -> None:
    @cli.command("eval")
    def eval_command(
        benchmark: Path = typer.Option(None, help="benchmark.json (default: RR_DATASETS_DIR)."),
        extra_zero_shot: list[Path] = typer.Option(None, help="More BEIR dirs (qrels/test.tsv)."),
        out: Path = typer.Option(Path("reports"), help="Output directory."),
        experts_dir: Path = typer.Option(None, help="Default: RR_EXPERTS_DIR."),
        multitask: Path = typer.Option(None, "--multitask-dir", help=MULTITASK_HELP),
        cache_dir: Path = typer.Option(None, help=CACHE_HELP),
    ) -> None:
        """nDCG@10 / Recall@100 of every method on every test set; eval.json, eval.md, plots."""
        from app.data.beir import load_benchmark
        from app.evaluation.benchmark_eval import RoutingSettings, run_eval
        from app.evaluation.report import averages_table, write_report

        cli_logging()
        cache_dir = embedding_cache(cache_dir)
        result = run_eval(
            load_benchmark(benchmark_path(benchmark)),
            experts_dir or cli_settings().experts_dir,
            cache_dir,
            multitask_dir(multitask),
            extra_zero_shot,
            _load_variants(variants_path(cache_dir)),
            document_precision=cli_settings().document_precision,
            precision=cli_settings().precision,
            routing=RoutingSettings.of(cli_settings()),
        )
        experts = experts_dir or cli_settings().experts_dir
        data = {**result.to_json(), "training": _training_summary(experts)}
        precision = (
            f"Documents embedded at {result.document_precision} and queries at "
            f"{result.precision}, as the server embeds them on this machine "
            "(`RR_DOCUMENT_PRECISION`, `RR_PRECISION`)."
        )
        write_report(data, out, notes=[*_notes(), precision])
        typer.echo("\n".join(averages_table(data)))

    @cli.command("gate-experts")
    def gate_experts_command(
        benchmark: Path = typer.Option(None, help="benchmark.json (default: RR_DATASETS_DIR)."),
        only: list[str] = typer.Option(None, help="Gate only these experts."),
        experts_dir: Path = typer.Option(None, help="Default: RR_EXPERTS_DIR."),
        cache_dir: Path = typer.Option(None, help=CACHE_HELP),
    ) -> None:
        """Keep each expert's adapter only where, on its held-out TRAIN queries, hybrid
        search with it beats hybrid with the base encoder on its index by two standard
        errors; else its queries use the base encoder (expert.json extra.gate.use_adapter)."""
        from tqdm import tqdm

        from app.core.hybrid import weights_lookup
        from app.data.beir import load_benchmark
        from app.evaluation.gate import gate_expert
        from app.experts.artifacts import (
            list_expert_dirs,
            read_expert,
            read_fusion_models,
            update_spec,
        )
        from app.training.build_pilots import expert_encoder

        cli_logging()
        experts_dir = experts_dir or cli_settings().experts_dir
        experts = {p.name: read_expert(p) for p in list_expert_dirs(experts_dir)}
        sets = {e.name: e.directory for e in load_benchmark(benchmark_path(benchmark)).experts}
        weights = weights_lookup(
            {n: e.spec.fusion_weight for n, e in experts.items()},
            *read_fusion_models(experts_dir),
        )
        encoder = expert_encoder(experts_dir)
        encoder.use_document_precision(cli_settings().document_precision)  # as served
        names = [n for n in sorted(experts) if not only or n in only]
        for name in tqdm(names, desc="gating experts", unit="expert"):
            expert = experts[name]
            dataset = sets.get(expert.spec.extra.get("dataset", name))
            if dataset is None:
                typer.echo(f"{name:32s} no train set in the benchmark: left as it is")
                continue
            gate = gate_expert(expert, dataset, encoder, embedding_cache(cache_dir), weights)
            extra = {**expert.spec.extra, "gate": gate}
            update_spec(expert, extra=extra)
            typer.echo(
                f"{name:32s} use_adapter={gate['use_adapter']!s:5s} "
                f"adapter {gate['hybrid_ndcg@10_adapter']} base {gate['hybrid_ndcg@10_base']} "
                f"gain {gate['gain']} se {gate['standard_error']} ({gate['queries']} queries)"
            )


def _load_variants(path: Path) -> dict[str, dict]:
    import numpy as np

    if not path.is_file():
        return {}
    variants: dict[str, dict] = {}
    with np.load(path) as stored:
        for key in stored.files:
            rule, name = key.split("|", 1)
            variants.setdefault(f"{rule}-pilots", {})[name] = stored[key]
    return variants


def _notes() -> list[str]:
    return [
        "nDCG@10 and Recall@100 on each set's `test` qrels (queries with a positive), ranx.",
        "Paper setting: each query searches its own dataset's index; only the encoder is routed.",
        "Service setting (`service:` methods, in-domain sets only): a query routed to expert E "
        "searches E's index (wrong route = miss); a fallback searches all 10 indexes merged.",
        "`service:base`: every query on the base encoder over all indexes merged. "
        "`service_all:` methods: the routed expert encodes the query, which then searches all "
        "indexes merged by score (a proposal: a wrong route costs quality, not the answer).",
        "Oracles choose among base and the 10 experts using the test labels (upper bounds).",
        "`router_mean[...-pilots]` are pilot-rule variants without fallback, for comparison.",
        "`bm25`: bm25s with Snowball stemming (the reference); `lexical`: the served SQLite "
        "FTS5 BM25 (Porter stemming), base routing irrelevant. `hybrid:` methods fuse the "
        "dense list of that routing with `lexical` by the learned convex weight (the expert's "
        "weight, or the per-query fallback model: `rr tune-fusion`, TRAIN queries only); "
        "`hybrid_rrf:` fuses by reciprocal rank instead. `service_lexical:`/`service_hybrid:` "
        "are what `/v1/search` returns in `mode` lexical/hybrid; `service_hybrid_lexall:` is a "
        "what-if whose lexical leg searches every index.",
    ]


def _training_summary(experts_dir: Path) -> dict[str, dict]:
    """Held-out (train-slice) metrics and pilot settings recorded in each expert.json."""
    from app.experts.artifacts import list_expert_dirs, read_expert

    summary = {}
    for path in list_expert_dirs(experts_dir):
        spec = read_expert(path).spec
        summary[spec.name] = {
            **(metrics_summary(spec.extra) if "metrics" in spec.extra else {}),
            "fallback_threshold": spec.fallback_threshold,
            "pilot_count": spec.pilot_count,
            "fusion_weight": spec.fusion_weight,
        }
    return summary
