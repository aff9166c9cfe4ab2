"""The first minutes of `make run` on a fresh machine: when does each domain answer?

Starts a gateway with the shipped experts, empty indexes and an empty embedding cache (so
every corpus is embedded, as on a new machine), then sends, once a second, each small
domain's first test query that the router sends to that domain, and prints the seconds from
the process start until its hits come from that domain's own index. Bounded: stops when the
smallest domains answered or after --limit seconds; with --full, once `/readyz` says every
corpus is indexed (the full first-start index time) or after --limit seconds.

    python -m bench.first_search [--domains 3] [--limit 300] [--full --limit 5400]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import typer

# ruff: noqa: B008  (typer declares options as argument defaults)
from app.data.beir import load_benchmark, load_corpus, load_qrels, load_queries
from tests.processes import Gateway

ROOT = Path(__file__).resolve().parents[1]


def main(
    domains: int = typer.Option(3, help="Stop once this many of the smallest domains answer."),
    limit: float = typer.Option(300.0, help="Give up after this many seconds."),
    datasets: Path = typer.Option(None, help="Benchmark data (default: RR_DATASETS_DIR)."),
    full: bool = typer.Option(False, help="Also wait until every corpus is indexed."),
) -> None:
    datasets = datasets or Path(os.environ.get("RR_DATASETS_DIR", "../shared/datasets"))
    sets = load_benchmark(datasets / "benchmark.json").experts
    sizes = {s.name: len(load_corpus(s.directory)) for s in sets}
    candidates = {}
    for entry in sets:
        texts = load_queries(entry.directory)
        candidates[entry.name] = [texts[q] for q in list(load_qrels(entry.test_qrels))[:50]]
    wanted = sorted(sizes, key=sizes.get)[:domains]
    queries: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="rr-first-"))
    shutil.copytree(ROOT / "experts", work / "gateway" / "experts")
    env = {
        "RR_CACHE_DIR": str(work / "cache"),  # empty: every corpus is embedded
        "RR_DATASETS_DIR": str(datasets.resolve()),  # the first-start indexing under test
    }
    gateway = Gateway(
        work, name="gateway", env=env, log_path=work / "gateway.log", ready_timeout=limit
    )
    answered: dict[str, float] = {}
    serving = indexed = None
    precision: dict = {}
    started = time.monotonic()
    try:
        gateway.start(wait_ready=False)  # /healthz: serving while it indexes
        serving = time.monotonic() - started
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            # Per domain, a test query the router sends there (routing needs no index): the
            # latency of interest is indexing's, not a routing miss.
            for name in wanted:
                queries[name] = _routed_query(client, name, candidates[name])
            while time.monotonic() - started < limit and not _finished(
                set(wanted) <= set(answered), full, indexed
            ):
                time.sleep(1)
                try:
                    if full and set(wanted) <= set(answered):
                        body = client.get("/readyz").json()
                        precision = body.get("precision", precision)
                        if body.get("status") == "ready":
                            indexed = time.monotonic() - started
                        continue
                    for name in wanted:
                        if name in answered:
                            continue
                        body = client.post("/v1/search", json={"query": queries[name]}).json()
                        if any(hit["index"] == name for hit in body.get("hits", [])):
                            answered[name] = time.monotonic() - started
                except httpx.TransportError:
                    continue
    finally:
        gateway.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"serving (GET /healthz 200) after {serving or float('nan'):.1f} s")
    print("| domain | documents | first routed search with hits from its index, s after start |")
    print("|---|---:|---:|")
    for name in wanted:
        seconds = f"{answered[name]:.1f}" if name in answered else f"none within {limit:.0f}"
        print(f"| {name} | {sizes[name]} | {seconds} |")
    if full:
        total = sum(sizes.values())
        when = f"{indexed:.0f} s" if indexed else f"not within {limit:.0f} s"
        rate = f", {total / indexed:.1f} documents/s" if indexed else ""
        print(f"all {len(sizes)} corpora ({total:,} documents) indexed after {when}{rate}")
        print(f"precision (/readyz): {precision}")


def _finished(answered_all: bool, full: bool, indexed: float | None) -> bool:
    return answered_all and (not full or indexed is not None)


def _routed_query(client: httpx.Client, name: str, texts: list[str]) -> str:
    for text in texts:
        if client.post("/v1/route", json={"query": text}).json().get("expert") == name:
            return text
    return texts[0]


if __name__ == "__main__":
    typer.run(main)
