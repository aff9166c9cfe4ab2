"""One variant's measured points: a warm-up, then one closed-loop load point per concurrency
(`bench.loadgen`), and a tally of where routed answers went."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, limit_s: float = 120.0, busy_share: float = 0.05) -> float:
    """Wait until the gateway's background work after start-up (BM25 postings builds, the
    FAISS snapshots) is done: a second in which it used under `busy_share` of a core.
    Returns the seconds waited (`limit_s` at most; not on Linux: 0)."""
    if not os.path.exists(f"/proc/{pid}/stat"):
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = process_cpu_s(pid)
        time.sleep(1.0)
        if process_cpu_s(pid) - before < busy_share:
            break
    return time.monotonic() - started


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


@dataclass
class Target:
    """One variant's server as `interleave` drives it."""

    run: Run
    url: str
    path: str
    bodies: list[bytes]
    on_response: Callable[[int, bytes], None] | None = None
    connect_path: str = "/healthz"


def interleave(targets: list[Target], load: Load, rounds: int) -> None:
    """Every target's points, measured in turns: at each concurrency, `rounds` rounds of
    `load.requests / rounds` requests per target, the order rotating each round, merged
    into one point per target. On a shared 2-core machine throughput drifts by 10-20%
    over minutes; measured in turns, every variant sees the same drift, so the ratios
    between them hold (measured one after another, (c) alone ranged 127-160 QPS)."""
    share = max(1, load.requests // rounds)
    for target in targets:
        common = {"client": load.client, "connect_path": target.connect_path}
        asyncio.run(warm_up(target.url, target.path, target.bodies, WARM_UP, **common))
    for concurrency in load.levels:
        parts: dict[int, list[LoadResult]] = {i: [] for i in range(len(targets))}
        for turn in range(rounds):
            for step in range(len(targets)):
                i = (turn + step) % len(targets)
                target = targets[i]
                offset = (turn * share) % len(target.bodies)  # each round its own queries
                result = asyncio.run(
                    run_load(
                        target.url,
                        target.path,
                        target.bodies[offset:] + target.bodies[:offset],
                        concurrency,
                        share,
                        on_response=target.on_response,
                        client=load.client,
                        connect_path=target.connect_path,
                    )
                )
                parts[i].append(result)
                time.sleep(0.5)  # let the server's queues drain between runs
        for i, target in enumerate(targets):
            point = LoadResult.merged(parts[i])
            target.run.points.append(point)
            print(
                f"  {target.run.label:<34} c={concurrency:<3} {point.qps:7.1f} QPS  p50 "
                f"{point.p50_ms:7.1f}  p95 {point.p95_ms:7.1f}  p99 {point.p99_ms:7.1f} ms  "
                f"errors {point.errors}  429 {point.rejected_429}",
                flush=True,
            )


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
