"""The serving benchmark's report: the markdown table, the ratios (with their targets), the
machine section and the plot (reports/bench.md, reports/bench.png)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import Run
from bench.variants import Ratio
from bench.workload import ROOT


def table(runs: list[Run]) -> str:
    lines = [
        "| variant | c | QPS | p50 ms | p95 ms | p99 ms | max ms | errors | 429 | client CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for p in run.points:
            lines.append(
                f"| {run.label} | {p.concurrency} | {p.qps:.1f} | {p.p50_ms:.1f} | {p.p95_ms:.1f} "
                f"| {p.p99_ms:.1f} | {p.max_ms:.1f} | {p.errors} | {p.rejected_429} "
                f"| {p.client_cpu_ms_per_request:.2f} |"
            )
    return "\n".join(lines)


def ratio_line(ratio: Ratio, runs: dict[str, Run], at: int) -> str | None:
    """One ratio as a bullet; None when a variant is not in this run."""
    num, den = runs.get(ratio.num), runs.get(ratio.den)
    if num is None or den is None:
        return None
    level = 1 if ratio.metric == "p50" else at
    label = f"{num.label} / {den.label}"
    pa, pb = num.at(level), den.at(level)
    target = ""
    if ratio.target is not None:
        target = f" (target {ratio.target[0]} {ratio.target[1]:.2f})"
    if pa is None or pb is None:
        return f"- {label}, {ratio.metric.upper()} at c={level}: n/a (no c={level} point){target}"
    if ratio.metric == "p50":
        a, b, unit = pa.p50_ms, pb.p50_ms, " ms"
    else:
        a, b, unit = pa.qps, pb.qps, ""
    value = a / b if b else float("nan")
    verdict = {True: ": met", False: ": MISSED", None: ""}[ratio.met(value)]
    tail = ""
    if ratio.metric == "qps" and pb.p99_ms:
        tail = f"; p99 x{pa.p99_ms / pb.p99_ms:.2f} ({pa.p99_ms:.0f} / {pb.p99_ms:.0f} ms)"
    return (
        f"- {label}, {ratio.metric.upper()} at c={level} ({ratio.what}): x{value:.2f} "
        f"({a:.1f} / {b:.1f}{unit}){target}{verdict}{tail}"
    )


def ratio_lines(ratios: list[Ratio], runs: dict[str, Run], at: int) -> list[str]:
    return [line for r in ratios if (line := ratio_line(r, runs, at)) is not None]


def machine_facts() -> dict[str, str]:
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in flags.splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "nproc": str(os.cpu_count()),
        "CPU": model
        + (" (AMX)" if "amx_tile" in flags else " (no AMX)")
        + (", avx512_bf16" if "avx512_bf16" in flags else ""),
        "torch threads": f"{torch.get_num_threads()} (torch {torch.__version__})",
        "load average at start": load_average(),
        "python": platform.python_version(),
        "git HEAD": commit,
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def plot(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_qps, ax_p99) = plt.subplots(1, 2, figsize=(12, 4.8))
    for run in runs:
        if not run.points:
            continue
        xs = [p.concurrency for p in run.points]
        ax_qps.plot(xs, [p.qps for p in run.points], marker="o", label=run.label)
        ax_p99.plot(xs, [p.p99_ms for p in run.points], marker="o", label=run.label)
    levels = sorted({p.concurrency for r in runs for p in r.points})
    for ax, ylabel in ((ax_qps, "QPS (successful requests / s)"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed-loop clients)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if levels:
            ax.set_xticks(levels, [str(x) for x in levels])
    ax_p99.set_yscale("log")
    ax_qps.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Report:
    command: str
    setup: list[str]  # bullets: experts, inputs, gateway, load, definitions
    runs: list[Run]
    ratios: list[str]  # bullets
    ratio_at: int
    smoke: str = ""  # why this is not the benchmark (a smoke run), or ""
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (title, lines)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def markdown(self, plot_name: str) -> str:
        out = ["# Serving benchmark", ""]
        if self.smoke:
            out += [
                f"> **SMOKE RUN** ({self.smoke}): it checks that the harness works; the numbers",
                "> are not the benchmark (that is `make bench` on a quiet machine).",
                "",
            ]
        out += [f"Generated by `{self.command}` (see bench/README.md for the variants).", ""]
        out += [f"- {line}" for line in self.setup] + ["", table(self.runs), ""]
        out += [f"## Ratios (QPS at c={self.ratio_at}, p50 at c=1)", "", *self.ratios, ""]
        for title, lines in self.sections:
            if lines:
                out += [f"## {title}", "", *lines, ""]
        samples = [
            (r.label, p.concurrency, s)
            for r in self.runs
            for p in r.points
            for s in p.error_samples[:2]
        ]
        if self.notes or samples:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes]
            out += [f"- {label} c={c}: `{s[:200]}`" for label, c, s in samples[:10]]
            out.append("")
        out += ["## Machine", ""] + [f"- {k}: {v}" for k, v in self.facts.items()] + [""]
        out += [f"![QPS and p99 vs concurrency]({plot_name})", ""]
        return "\n".join(out)

    def write(self, out_dir: Path, title: str) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        markdown, image = out_dir / "bench.md", out_dir / "bench.png"
        plot(self.runs, image, title)
        markdown.write_text(self.markdown(image.name))
        return markdown, image
