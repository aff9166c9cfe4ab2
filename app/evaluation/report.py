"""Writes `eval.json`, `eval.md` and the PNG plots of an evaluation run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

HEADLINE = [
    "bm25",
    "lexical",
    "hybrid:base",
    "hybrid:router_mean",
    "base",
    "multitask",
    "dataset_router",
    "router_mean",
    "router_max",
    "router_top2",
    "router_mean_nofallback",
    "dataset_oracle",
    "instance_oracle",
]


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def _table(rows: list[str], columns: list[str], cell: Any) -> list[str]:
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + r + " | " + " | ".join(_fmt(cell(r, c)) for c in columns) + " |" for r in rows]
    return lines


def averages_table(data: dict[str, Any], metric: str = "ndcg@10") -> list[str]:
    """Methods as rows, in-domain and zero-shot averages as columns."""
    averages = data["averages"][metric]
    methods = [m for m in HEADLINE if m in averages["in_domain"]]
    methods += sorted(
        m for m in averages["in_domain"] if m not in methods and not m.startswith("expert:")
    )
    return _table(
        methods,
        ["in-domain avg", "zero-shot avg"],
        lambda r, c: averages["in_domain" if c.startswith("in") else "zero_shot"].get(r),
    )


# (row label, paper-setting method, service-setting method) of the summary table.
SUMMARY = [
    ("lexical (FTS5 BM25)", "lexical", "service_lexical:router_mean"),
    ("dense (router_mean)", "router_mean", "service:router_mean"),
    ("hybrid (router_mean)", "hybrid:router_mean", "service_hybrid:router_mean"),
]


def summary_table(data: dict[str, Any]) -> list[str]:
    """Dense, lexical and hybrid side by side: paper in-domain, service, zero-shot."""
    averages = data["averages"]["ndcg@10"]
    cells = {
        label: {
            "paper, in-domain": averages["in_domain"].get(paper),
            "service, in-domain": averages["in_domain"].get(service),
            "zero-shot": averages["zero_shot"].get(paper),
        }
        for label, paper, service in SUMMARY
    }
    columns = ["paper, in-domain", "service, in-domain", "zero-shot"]
    return _table([label for label, _, _ in SUMMARY], columns, lambda r, c: cells[r][c])


def write_markdown(data: dict[str, Any], path: Path, notes: list[str]) -> None:
    in_domain, zero_shot = data["datasets"]["in_domain"], data["datasets"]["zero_shot"]
    datasets = in_domain + zero_shot
    lines = ["# Evaluation: RouterRetriever over all-MiniLM-L6-v2", "", *notes, ""]
    lines += ["## Dense, lexical and hybrid (nDCG@10 averages)", "", *summary_table(data), ""]
    for metric in ("ndcg@10", "recall@100"):
        lines += [f"## Averages, {metric}", "", *averages_table(data, metric), ""]
    lines += [
        "## Routing accuracy (in-domain: own expert chosen; zero-shot: fell back to base)",
        "",
    ]
    routers = sorted(data["routing_accuracy"])
    acc = data["routing_accuracy"]
    lines += _table(datasets, routers, lambda r, c: acc[c].get(r))
    means = {c: float(np.mean([acc[c][d] for d in in_domain if d in acc[c]])) for c in routers}
    lines += ["| **in-domain mean** | " + " | ".join(_fmt(means[c]) for c in routers) + " |", ""]
    for metric in ("ndcg@10", "recall@100"):
        methods = [m for m in HEADLINE if m in data[metric][datasets[0]]]
        lines += [f"## Per dataset, {metric} (paper setting)", ""]
        lines += _table(datasets, methods, lambda r, c, m=metric: data[m].get(r, {}).get(c))
        lines += [""]
    prefixes = ("service:", "service_all:", "service_lexical:", "service_hybrid")
    service = sorted(m for m in data["ndcg@10"][in_domain[0]] if m.startswith(prefixes))
    lines += ["## Service setting, nDCG@10 (in-domain; a wrong route is a miss)", ""]
    lines += _table(in_domain, service, lambda r, c: data["ndcg@10"][r].get(c))
    lines += [""]
    experts = sorted(m for m in data["ndcg@10"][datasets[0]] if m.startswith("expert:"))
    lines += [
        "## Expert matrix, nDCG@10 (rows: test set; columns: expert used for every query)",
        "",
    ]
    lines += _table(datasets, ["base", *experts], lambda r, c: data["ndcg@10"][r].get(c))
    training = data.get("training") or {}
    if training:
        lines += ["", "## Experts (selection on a held-out slice of TRAIN queries)", ""]
        columns = [
            "held_out_ndcg@10_base",
            "held_out_ndcg@10_best",
            "best_step",
            "train_seconds",
            "fallback_threshold",
            "pilot_count",
            "fusion_weight",
        ]
        lines += _table(sorted(training), columns, lambda r, c: training[r].get(c))
    lines += ["", "## Routing counts (router_mean)", ""]
    targets = sorted({e for counts in data["routing"].values() for e in counts})
    lines += _table(datasets, targets, lambda r, c: data["routing"][r].get(c))
    path.write_text("\n".join(lines) + "\n")


def write_plots(data: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = data["datasets"]["in_domain"] + data["datasets"]["zero_shot"]
    methods = [
        m
        for m in ("base", "router_mean", "dataset_oracle", "instance_oracle")
        if m in data["ndcg@10"][datasets[0]]
    ]
    fig, ax = plt.subplots(figsize=(14, 5))
    width = 0.8 / len(methods)
    x = np.arange(len(datasets))
    for i, method in enumerate(methods):
        ax.bar(x + i * width, [data["ndcg@10"][d][method] for d in datasets], width, label=method)
    ax.set_xticks(x + width * (len(methods) - 1) / 2, datasets, rotation=35, ha="right")
    ax.set_ylabel("nDCG@10 (test)")
    ax.axvline(len(data["datasets"]["in_domain"]) - 0.5 + width, color="grey", ls="--", lw=1)
    ax.legend()
    ax.set_title("Base vs RouterRetriever vs oracles (left: in-domain, right: zero-shot)")
    fig.tight_layout()
    bars = out_dir / "ndcg_by_dataset.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)

    targets = sorted({e for c in data["routing"].values() for e in c})
    counts = np.array([[data["routing"][d].get(t, 0) for t in targets] for d in datasets], float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(10, 8))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
    ax.set_yticks(range(len(datasets)), datasets)
    for i in range(len(datasets)):
        for j in range(len(targets)):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black",
                )
    ax.set_xlabel("routed to (router_mean)")
    ax.set_ylabel("test set")
    ax.set_title("Routing confusion matrix (test queries)")
    fig.tight_layout()
    confusion = out_dir / "routing_confusion.png"
    fig.savefig(confusion, dpi=110)
    plt.close(fig)
    return [bars, confusion]


def write_report(data: dict[str, Any], out_dir: Path, notes: list[str] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    write_markdown(data, out_dir / "eval.md", notes or [])
    write_plots(data, out_dir)
