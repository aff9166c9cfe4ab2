"""What the model work of a query costs, in-process: the bound the served figures are held to.

With the shipped experts and the server's layout (one `EncoderReplicas` worker per core, one
intra-op thread each, batch 32, hidden-state reuse on), it measures per row:

- the routing (base) pass;
- the expert pass of routed queries (mixed experts in each batch, from the routing pass's
  hidden states), on merged weights and through peft's hooks;

and the two-pass bound: queries/s when every worker runs full batches of routing passes
followed by the expert passes of the queries the router sent to an expert (base-only: routing
passes alone). Bounded: `--queries` rows, each measured `--rounds` times.

    python -m bench.pass_cost [--queries 512]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

# ruff: noqa: B008  (typer declares options as argument defaults)

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
SMALL_BATCH = 6  # the expert rows per encoder call the served c=32 mix forms (issue 14)


@dataclass
class PassCost:
    workers: int
    base_ms_per_row: float  # routing pass, per row, one worker
    expert_ms_per_row: float  # expert pass from hidden states (merged weights), per row
    hooks_expert_ms_per_row: float  # the same through peft's mixed-batch hooks
    small_expert_ms_per_row: float  # expert pass at SMALL_BATCH rows per call, merged weights
    small_hooks_expert_ms_per_row: float  # the same through peft's hooks
    precision: str  # what the queries ran at (as the server would pick here)
    routed_share: float  # of the queries, the share the router sends to an expert
    bound_routed_qps: float
    bound_base_qps: float

    @property
    def expert_to_base(self) -> float:
        return self.expert_ms_per_row / self.base_ms_per_row

    def lines(self) -> list[str]:
        return [
            f"in-process bound ({self.workers} workers x 1 thread, batch {BATCH}): routed "
            f"{self.bound_routed_qps:.1f} queries/s, base-only {self.bound_base_qps:.1f}",
            f"per row ({self.precision}): routing (base) pass {self.base_ms_per_row:.2f} ms; "
            f"expert pass at batch {BATCH} {self.expert_ms_per_row:.2f} ms on merged weights "
            f"({self._share(self.expert_ms_per_row)} of a base pass), "
            f"{self.hooks_expert_ms_per_row:.2f} ms through peft's hooks "
            f"({self._share(self.hooks_expert_ms_per_row)}); at batch {SMALL_BATCH} "
            f"{self.small_expert_ms_per_row:.2f} ms merged "
            f"({self._share(self.small_expert_ms_per_row)}), "
            f"{self.small_hooks_expert_ms_per_row:.2f} ms hooks "
            f"({self._share(self.small_hooks_expert_ms_per_row)}); "
            f"{100 * self.routed_share:.0f}% of queries routed to an expert",
        ]

    def _share(self, ms: float) -> str:
        return f"{100 * ms / self.base_ms_per_row:.0f}%"


def measure(queries: list[str], rounds: int = 3, workers: int = 2) -> PassCost:
    """Per-row costs on `workers` threads in parallel, as the gateway runs its workers."""
    from app.core.router import Router
    from app.encoder.base_model import pick_document_precision, pick_precision
    from app.encoder.lora_encoder import BASE
    from app.encoder.replicas import EncoderReplicas
    from app.experts.artifacts import adapter_locator, list_expert_dirs, read_expert
    from app.settings import Settings

    settings = Settings()
    experts = {p.name: read_expert(p) for p in list_expert_dirs(ROOT / "experts")}
    encoder = EncoderReplicas(
        adapter_locator({n: e.path for n, e in experts.items()}),
        count=workers,
        reuse_layer=settings.reuse_layer,
        capacity=len(experts) + 1,
        batch_size=BATCH,
        precision=pick_precision(settings.precision, "cpu"),
        document_precision=pick_document_precision(settings.document_precision, "cpu"),
    )
    encoder.warm_up()
    encoder.ensure_resident(list(experts))
    router = Router(
        {n: e.pilots for n, e in experts.items()},
        settings.router_aggregation,
        settings.router_fallback_threshold,
        {n: e.spec.fallback_threshold for n, e in experts.items()},
    )
    decisions = router.route(encoder.encode(queries))
    routed = [(q, d.expert) for q, d in zip(queries, decisions, strict=True) if not d.fallback]

    def timed(work: Callable[[int, list[str], list[str]], object], rows: list) -> float:
        """ms per row with every worker busy on its share of `rows`, best of `rounds`."""
        shares = [rows[i::workers] for i in range(workers)]
        best = float("inf")
        for _ in range(rounds):
            threads = [
                threading.Thread(target=_batches, args=(work, i, share))
                for i, share in enumerate(shares)
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            best = min(best, (time.perf_counter() - started) * 1000 * workers / len(rows))
        return best

    def routing_pass(replica: int, texts: list[str], _: list[str]) -> object:
        return encoder.encode(texts, routing=[True] * len(texts), replica=replica)

    def expert_pass(replica: int, texts: list[str], adapters: list[str]) -> object:
        encoder.encode(texts, routing=[True] * len(texts), replica=replica)  # states to reuse
        started = time.perf_counter()
        encoder.encode(texts, adapters, replica=replica)
        return time.perf_counter() - started

    base_ms = timed(routing_pass, [(q, BASE) for q in queries])
    expert_ms = _expert_only(expert_pass, routed, workers, rounds, BATCH)
    small_ms = _expert_only(expert_pass, routed, workers, rounds, SMALL_BATCH)
    merged = [replica._merged for replica in encoder.replicas]
    for replica in encoder.replicas:  # the same rows through peft's hooks
        replica._merged = None
    hooks_ms = _expert_only(expert_pass, routed, workers, rounds, BATCH)
    small_hooks_ms = _expert_only(expert_pass, routed, workers, rounds, SMALL_BATCH)
    for replica, tables in zip(encoder.replicas, merged, strict=True):
        replica._merged = tables
    share = len(routed) / len(queries)
    return PassCost(
        workers=workers,
        base_ms_per_row=base_ms,
        expert_ms_per_row=expert_ms,
        hooks_expert_ms_per_row=hooks_ms,
        small_expert_ms_per_row=small_ms,
        small_hooks_expert_ms_per_row=small_hooks_ms,
        precision=encoder.replicas[0].precision,
        routed_share=share,
        bound_routed_qps=1000 * workers / (base_ms + share * expert_ms),
        bound_base_qps=1000 * workers / base_ms,
    )


def _batches(work: Callable, replica: int, rows: list) -> None:
    import torch

    torch.set_num_threads(1)  # per thread, as each gateway worker sets it
    for start in range(0, len(rows), BATCH):
        part = rows[start : start + BATCH]
        work(replica, [q for q, _ in part], [e for _, e in part])


def _expert_only(expert_pass, routed, workers: int, rounds: int, batch: int) -> float:
    """ms per row of the expert passes alone (each after its routing pass, not counted)."""
    best = float("inf")
    shares = [routed[i::workers] for i in range(workers)]
    for _ in range(rounds):
        spent = [0.0] * workers

        def run(replica: int, share: list, spent: list[float] = spent) -> None:
            import torch

            torch.set_num_threads(1)
            for start in range(0, len(share), batch):
                part = share[start : start + batch]
                spent[replica] += expert_pass(replica, [q for q, _ in part], [e for _, e in part])

        threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(shares)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        best = min(best, 1000 * sum(spent) / len(routed))
    return best


def main(
    queries: int = typer.Option(512, help="Benchmark test queries (mixed domains)."),
    rounds: int = typer.Option(3, help="Repeats; the best is kept."),
    datasets: Path = typer.Option(ROOT.parent / "shared" / "datasets", help="Benchmark data."),
) -> None:
    from bench.serving import load_domains, mixed_queries

    texts = mixed_queries(load_domains(datasets), seed=7)[:queries]
    for line in measure(texts, rounds).lines():
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
