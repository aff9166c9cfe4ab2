"""What the model work of a query costs in-process: the bound the served figures are held to.

Through the encoder's public API only, on `workers` encoders in parallel threads with one
intra-op thread each (the gateway's layout: one encoder per model worker), per row at batch
1, 8 and 32:

- **base pass**: `encode(texts)`, what base-only search pays;
- **mixed pass**: `encode(texts, adapters)`, every row through its own expert (the second
  pass of the two-pass path);
- **routed pass**: `encode_routed(texts, choose)`, one pass: the layers below the routing
  layer once, `choose` on the routing features, the layers above with each row's expert.

`choose` gives every row an expert drawn at random (seeded): mixed batches, no base rows.
The bound is queries/s at batch 32 with every worker busy: routed one-pass (base + mixed
where the encoder has no `encode_routed`), and base-only. Bounded: `--queries` rows, each
point the best of `--rounds`.

    python -m bench.pass_cost [--experts experts] [--routing-layer 0] [--queries 256]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

# ruff: noqa: B008  (typer declares options as argument defaults)

BATCHES = (1, 8, 32)
BOUND_BATCH = 32


@dataclass
class BatchCost:
    batch: int
    base_ms: float  # per row
    mixed_ms: float
    routed_ms: float | None  # None: the encoder has no encode_routed

    @property
    def routed_or_two_pass_ms(self) -> float:
        return self.routed_ms if self.routed_ms is not None else self.base_ms + self.mixed_ms


@dataclass
class PassCost:
    experts: str
    workers: int
    precision: str
    routing_layer: int | None
    costs: list[BatchCost]
    agreement: float | None  # lowest cosine, routed vs mixed pass vectors of the same rows

    def at(self, batch: int) -> BatchCost:
        return next(c for c in self.costs if c.batch == batch)

    @property
    def bound_base_qps(self) -> float:
        return 1000 * self.workers / self.at(BOUND_BATCH).base_ms

    @property
    def bound_routed_qps(self) -> float:
        return 1000 * self.workers / self.at(BOUND_BATCH).routed_or_two_pass_ms

    def lines(self) -> list[str]:
        layer = "" if self.routing_layer is None else f", routing layer {self.routing_layer}"
        path = "routed one-pass" if self.costs[0].routed_ms is not None else "two-pass"
        out = [
            f"{self.experts} ({self.precision}{layer}, {self.workers} workers x 1 thread): "
            f"in-process bound at batch {BOUND_BATCH}: {path} {self.bound_routed_qps:.1f} "
            f"queries/s, base-only {self.bound_base_qps:.1f}"
        ]
        for c in self.costs:
            routed = (
                "routed one-pass n/a (no encode_routed)"
                if c.routed_ms is None
                else f"routed one-pass {c.routed_ms:.2f} ms ({c.routed_ms / c.base_ms:.2f}x base)"
            )
            out.append(
                f"batch {c.batch}: per row base pass {c.base_ms:.2f} ms, mixed-expert pass "
                f"{c.mixed_ms:.2f} ms ({c.mixed_ms / c.base_ms:.2f}x), {routed}"
            )
        if self.agreement is not None:
            out.append(f"routed vs mixed-pass vectors: lowest cosine {self.agreement:.5f}")
        return out


def measure(
    queries: Sequence[str],
    experts: dict[str, Path],
    routing_layer: int | None = None,
    described: str = "experts",
    workers: int = 2,
    rounds: int = 2,
    seed: int = 0,
    precision: str | None = None,
) -> PassCost:
    """Per-row costs of `queries` through `experts` ({name: adapter dir}) on `workers`
    threads in parallel, as the gateway runs its model workers; queries at `precision`
    (None: what a gateway would pick here, measured where RR_PRECISION=auto says so)."""
    encoders = _encoders(experts, routing_layer, workers, precision)
    rng = np.random.default_rng(seed)
    drawn = rng.choice(sorted(experts), len(queries))
    rows = [(q, str(e)) for q, e in zip(queries, drawn, strict=True)]
    one_pass = hasattr(encoders[0], "encode_routed")

    def base(encoder, texts: list[str], _: list[str]) -> None:
        encoder.encode(texts)

    def mixed(encoder, texts: list[str], adapters: list[str]) -> None:
        encoder.encode(texts, adapters)

    def routed(encoder, texts: list[str], adapters: list[str]) -> None:
        encoder.encode_routed(texts, lambda features: [[a] for a in adapters])

    costs = []
    for batch in BATCHES:
        costs.append(
            BatchCost(
                batch,
                _ms_per_row(base, encoders, rows, batch, rounds),
                _ms_per_row(mixed, encoders, rows, batch, rounds),
                _ms_per_row(routed, encoders, rows, batch, rounds) if one_pass else None,
            )
        )
    return PassCost(
        experts=described,
        workers=workers,
        precision=encoders[0].precision,
        routing_layer=getattr(encoders[0], "routing_layer", None),
        costs=costs,
        agreement=_agreement(encoders[0], rows[:BOUND_BATCH]) if one_pass else None,
    )


def _encoders(
    experts: dict[str, Path], routing_layer: int | None, workers: int, precision: str | None
) -> list:
    """One encoder per worker, every expert resident."""
    from app.encoder import LoraEncoder
    from app.experts.artifacts import adapter_locator
    from app.settings import Settings

    settings = Settings()
    options: dict = {"capacity": len(experts) + 1, "batch_size": settings.encode_batch_size}
    # The routing layer comes with encode_routed: an encoder without it takes no such option.
    if routing_layer is not None and hasattr(LoraEncoder, "encode_routed"):
        options["routing_layer"] = routing_layer
    encoders = [LoraEncoder(adapter_locator(experts), **options) for _ in range(workers)]
    precision = encoders[0].use_precision(precision or settings.precision)
    for encoder in encoders:
        encoder.use_precision(precision)
        encoder.ensure_resident(list(experts))
        encoder.encode(["warm up"] * 4, [next(iter(experts))] * 4)
    return encoders


Work = Callable[..., None]


def _ms_per_row(work: Work, encoders: list, rows: list, batch: int, rounds: int) -> float:
    """ms per row with every worker busy on its share of `rows`, `batch` rows per call."""
    workers = len(encoders)
    shares = [rows[i::workers] for i in range(workers)]

    def run(encoder, share: list) -> None:
        import torch

        torch.set_num_threads(1)  # per thread, as each gateway worker sets it
        for start in range(0, len(share), batch):
            part = share[start : start + batch]
            work(encoder, [q for q, _ in part], [e for _, e in part])

    best = float("inf")
    for _ in range(rounds):
        pairs = zip(encoders, shares, strict=True)
        threads = [threading.Thread(target=run, args=pair) for pair in pairs]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        best = min(best, (time.perf_counter() - started) * 1000 * workers / len(rows))
    return best


def _agreement(encoder, rows: list) -> float:
    """The routed pass must compute the experts it was told to: its vectors against the
    mixed pass's for the same rows (the encoder's self-check holds it to a tolerance)."""
    texts, adapters = [q for q, _ in rows], [e for _, e in rows]
    exact = encoder.encode(texts, adapters)
    routed = encoder.encode_routed(texts, lambda features: [[a] for a in adapters])
    vectors = np.stack([v[0] for v in routed.vectors])
    return float((vectors * exact).sum(axis=1).min())


def main(
    experts: Path = typer.Option(Path("experts"), help="Experts directory (trained experts)."),
    routing_layer: int = typer.Option(
        -1, help="Routing layer of the encoder (-1: the encoder's default)."
    ),
    queries: int = typer.Option(256, help="Benchmark test queries (mixed domains)."),
    rounds: int = typer.Option(2, help="Repeats per point; the best is kept."),
    workers: int = typer.Option(2, help="Encoders in parallel threads (the gateway's workers)."),
    datasets: Path = typer.Option(None, help="Benchmark data (default: RR_DATASETS_DIR)."),
    precision: str = typer.Option("auto", help="Query precision: auto (as a gateway), fp32, bf16."),
) -> None:
    from app.experts.artifacts import list_expert_dirs
    from bench.workload import DEFAULT_DATASETS, load_domains, mixed_queries

    found = {p.name: p for p in list_expert_dirs(experts)}
    if not found:
        raise SystemExit(f"no experts in {experts}")
    texts = mixed_queries(load_domains(datasets or DEFAULT_DATASETS), seed=7)[:queries]
    layer = None if routing_layer < 0 else routing_layer
    described = f"{len(found)} experts of {experts}"
    cost = measure(texts, found, layer, described, workers, rounds, precision=precision)
    for line in cost.lines():
        typer.echo(line)


if __name__ == "__main__":
    typer.run(main)
