"""One variant's measured points: a warm-up, then one closed-loop load point per concurrency
(`bench.loadgen`), and a tally of where routed answers went."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.loadgen import LoadResult, run_load, warm_up

WARM_UP = 64  # requests before the first point: adapters resident, first passes paid


@dataclass
class Run:
    key: str
    label: str
    points: list[LoadResult] = field(default_factory=list)

    def at(self, concurrency: int) -> LoadResult | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)


@dataclass(frozen=True)
class Load:
    """How every point is driven: the same for every variant of a run."""

    levels: list[int]
    requests: int
    client: str = "raw"  # raw (cheap asyncio HTTP/1.1) or httpx


def sweep(
    run: Run,
    base_url: str,
    path: str,
    bodies: list[bytes],
    load: Load,
    on_response: Callable[[int, bytes], None] | None = None,
    connect_path: str = "/healthz",
) -> Run:
    """Warm up, then one measured point per concurrency level (appended to `run.points`)."""
    common = {"client": load.client, "connect_path": connect_path}
    asyncio.run(warm_up(base_url, path, bodies, WARM_UP, **common))
    for concurrency in load.levels:
        result = asyncio.run(
            run_load(
                base_url,
                path,
                bodies,
                concurrency,
                load.requests,
                on_response=on_response,
                **common,
            )
        )
        run.points.append(result)
        print(
            f"  {run.label:<34} c={concurrency:<3} {result.qps:7.1f} QPS  p50 {result.p50_ms:7.1f}"
            f"  p95 {result.p95_ms:7.1f}  p99 {result.p99_ms:7.1f} ms  errors {result.errors}"
            f"  429 {result.rejected_429}",
            flush=True,
        )
        time.sleep(0.5)  # let the server's queues drain between points
    return run


class RoutingTally:
    """Counts `routing.expert` (and fallbacks) of successful /v1/search answers."""

    def __init__(self) -> None:
        self.experts: Counter[str] = Counter()

    def __call__(self, status: int, body: bytes) -> None:
        if status == 200:
            routing = json.loads(body)["routing"]
            self.experts["base (fallback)" if routing["fallback"] else routing["expert"]] += 1

    def spread(self) -> str:
        total = sum(self.experts.values())
        return ", ".join(f"{k} {v / total:.0%}" for k, v in self.experts.most_common())
