"""Serving benchmark (`make bench`): QPS and tail latency of the gateway under load.

Every variant gets its own `rr serve` on 127.0.0.1 (RR_EMBEDDING_CACHE_SIZE=0: the inputs
repeat), driven by `bench.loadgen` with the mixed test queries of all expert domains at each
concurrency; the gateway is stopped before the next one starts. Variants (`bench.variants`):

    a  routed search          /v1/search mode=dense, the shipped experts (layers 4-5)
    c  base only              /v1/search expert=base mode=dense, each query on its own
                              domain's index (the index routed search lands on)
    p  base only, one index   as (c), every query on the first domain's index (3,204 docs)
    h  routed hybrid          as (a) with mode=hybrid (the default mode)
    l  all-layer experts      as (a), random LoRA on all six layers, RR_ROUTING_LAYER=0
    b d f g w e i             one expert / unbatched / fp32 / h11 / busy wait / embeddings /
                              Infinity: on request (--variants)

After the gateways: the in-process bound (`bench.pass_cost`) per expert set, and the router
refit figure (`bench.router_refit`, its reports/router.md table quoted). Prints one
table and writes reports/bench.md and reports/bench.png.

    .venv/bin/python -m bench.serving            # 1000 requests per point, c = 1, 8, 32, 64
    .venv/bin/python -m bench.serving --quick    # smoke run to a temp dir: 200 requests, c = 1, 32
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import typer

from bench import experts as expert_sets
from bench import infinity, pass_cost
from bench.experts import ExpertSet
from bench.measure import Load, RoutingTally, Run, Target, interleave, wait_idle
from bench.report import Report, load_average, machine_facts, ratio_lines
from bench.variants import DEFAULT_VARIANTS, PURE_PYTHON_HTTP, RATIOS, VARIANTS, parse_variants
from bench.workload import DEFAULT_DATASETS, ROOT, Domain, load_domains, mixed_workload
from tests.processes import Gateway

FULL_REQUESTS = 1500
ROUNDS = 3  # turns per point (bench.measure.interleave)
SMOKE_DIR = Path(tempfile.gettempdir()) / "rr-bench-smoke"
ROUTER_REPORT = ROOT / "reports" / "router.md"

cli = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


@dataclass
class Options:
    variants: list[str]
    load: Load
    experts: str  # auto, repo, synthetic
    docs: int
    pilot_queries: int
    seed: int
    cache: bool
    http_stack: tuple[str, ...]
    bound: bool
    bound_queries: int
    infinity_dtype: str
    infinity_batch: int
    rounds: int = 1


@dataclass
class ServingBench:
    """One run: the expert sets (built on first use), one gateway per variant, the figures."""

    work: Path
    domains: list[Domain]
    queries: list[str]
    query_domains: list[str]  # each query's own domain (and index name)
    options: Options
    sets: dict[str, ExpertSet] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    tallies: dict[str, RoutingTally | None] = field(default_factory=dict)
    serving_paths: list[str] = field(default_factory=list)
    bounds: list[pass_cost.PassCost] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    infinity_status: str = "not requested (variant i)"
    query_precision: str | None = None  # what the first default-precision gateway ran at
    precisions: dict[str, str] = field(default_factory=dict)  # /readyz per variant
    _built: Path | None = None
    _started: dict[str, tuple[Gateway, Path]] = field(default_factory=dict)

    # -- expert sets -----------------------------------------------------------------------

    def expert_set(self, name: str) -> ExpertSet:
        if name not in self.sets:
            started = time.perf_counter()
            opts, work = self.options, self.work
            built = self._indexes()
            if name == "shipped":
                made = expert_sets.shipped_set(
                    work, self.domains, opts.experts, built, opts.seed, opts.pilot_queries
                )
            elif name == "all-layer":
                made = expert_sets.all_layer_set(
                    work, self.domains, built, opts.seed, opts.pilot_queries
                )
            elif name == "single":
                made = expert_sets.single_set(work, self.expert_set("shipped"))
            else:
                raise ValueError(name)
            self.sets[name] = made
            print(
                f"built {name}: {made.described} ({time.perf_counter() - started:.0f}s)", flush=True
            )
        return self.sets[name]

    def _indexes(self) -> Path:
        if self._built is None:
            started = time.perf_counter()
            names = [d.name for d in self.domains]
            out = self.work / "indexes-built"
            self._built = expert_sets.build_indexes(
                out, self.domains, names, self.options.docs, self.options.seed
            )
            print(f"built {len(names)} indexes in {time.perf_counter() - started:.0f}s", flush=True)
        return self._built

    # -- measuring -------------------------------------------------------------------------

    def measure_bounds(self) -> None:
        """The in-process pass costs of each expert set a selected variant serves, at the
        query precision the gateways ran at (after them: a measured `auto` varies with load)."""
        from app.experts.artifacts import list_expert_dirs

        wanted = {VARIANTS[k].experts for k in self.options.variants} & {"shipped", "all-layer"}
        for name in ("shipped", "all-layer"):
            if name not in wanted:
                continue
            served = self.expert_set(name)
            adapters = {p.name: p for p in list_expert_dirs(served.home / "experts")}
            layer = served.env.get("RR_ROUTING_LAYER")
            print(f"measuring the in-process pass costs of the {name} experts", flush=True)
            try:
                cost = pass_cost.measure(
                    self.queries[: self.options.bound_queries],
                    adapters,
                    None if layer is None else int(layer),
                    described=f"{name} experts",
                    rounds=2,
                    precision=self.query_precision,
                )
            except Exception as exc:  # the served figures still count
                self.notes.append(f"in-process bound of the {name} experts failed: {exc!r}")
                continue
            print("\n".join(cost.lines()), flush=True)
            self.bounds.append(cost)

    def start_variant(self, key: str, stack: ExitStack) -> Target | None:
        """`key`'s gateway up (stopped when `stack` closes), idle, and what drives it; None
        if it failed to start (noted)."""
        variant = VARIANTS[key]
        served = self.expert_set(variant.experts)
        cache = {} if self.options.cache else {"RR_EMBEDDING_CACHE_SIZE": "0"}
        # The first gateway measures its query precision (auto); the rest are pinned to its
        # choice: a measurement under load may flip, and every variant must run at one.
        pinned = {"RR_PRECISION": self.query_precision} if self.query_precision else {}
        env = cache | {"RR_INDEX_CORPORA_ON_START": "false"} | pinned | served.env | variant.env
        log = self.work / f"gateway-{key}.log"
        # Gateways run side by side, each on its own copy of its set's home (experts and
        # indexes): two embedded gateways must not share one index directory.
        home = self.work / "homes" / key
        shutil.copytree(served.home, home)
        gateway = Gateway(
            home.parent,
            name=key,
            env=env,
            serve_options=self.options.http_stack + variant.serve_options,
            log_path=log,
            ready_timeout=300,
        )
        run = self.runs[key] = Run(key, variant.label)
        tally = self.tallies[key] = RoutingTally() if variant.tally else None
        try:
            stack.enter_context(gateway)
            print(f"{variant.label}: gateway up at {gateway.url}", flush=True)
            precision = httpx.get(f"{gateway.url}/readyz", timeout=30).json().get("precision")
            self.precisions[variant.label] = str(precision)
            if "RR_PRECISION" not in env and isinstance(precision, dict):
                self.query_precision = precision.get("queries")
            assert gateway.process is not None
            waited = wait_idle(gateway.process.pid)
            print(f"{variant.label}: idle after {waited:.0f}s of start-up work", flush=True)
        except Exception as exc:  # keep the other variants' numbers
            self.notes.append(f"{variant.label} failed to start: {exc!r}"[:600])
            self.notes += log_notes(variant.label, log)
            return None
        self._started[key] = (gateway, log)
        bodies = variant.bodies(self.queries, self.query_domains)
        return Target(run, gateway.url, variant.path, bodies, tally)

    def run_variants(self, keys: list[str]) -> None:
        """Every gateway variant up at once, then measured in turns (`interleave`)."""
        started = time.perf_counter()
        with ExitStack() as stack:
            targets = [t for k in keys if k != "i" and (t := self.start_variant(k, stack))]
            try:
                interleave(targets, self.options.load, self.options.rounds)
            except Exception as exc:
                self.notes.append(f"the load failed: {exc!r}"[:600])
            for key, (gateway, log) in self._started.items():
                label = VARIANTS[key].label
                if VARIANTS[key].tally and (paths := serving_paths(label, gateway.url)):
                    self.serving_paths.append(paths)  # read after the load: adapters resident
                if not gateway.alive():
                    self.notes.append(f"{label}: the gateway exited during the run")
                self.notes += log_notes(label, log)
        print(f"gateway variants measured in {time.perf_counter() - started:.0f}s", flush=True)
        if "i" in keys:
            self.run_infinity()

    def run_infinity(self) -> None:
        variant = VARIANTS["i"]
        if self.options.infinity_dtype == "none":
            self.infinity_status = "skipped (--infinity-dtype none)"
            return
        run = Run("i", variant.label)
        try:
            self.infinity_status = infinity.measure(
                self.work,
                self.options.infinity_dtype,
                self.options.infinity_batch,
                variant.bodies(self.queries, self.query_domains),
                self.options.load,
                run,
            )
        except Exception as exc:
            self.infinity_status = f"unavailable: {exc}"[:600]
            self.notes.append(f"(i) Infinity: {self.infinity_status}")
        if run.points:
            self.runs["i"] = run


def serving_paths(label: str, url: str) -> str | None:
    """'(l) ...: one pass 10, full second pass 0, not resident 0' from /v1/experts."""
    try:
        listed = httpx.get(f"{url}/v1/experts", timeout=30, trust_env=False).json()["experts"]
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    if not listed or "one_pass" not in listed[0]:
        return None
    flags = [e.get("one_pass") for e in listed]
    return (
        f"{label}: {len(flags)} experts; served in one pass with routing {flags.count(True)}, "
        f"by a full second pass {flags.count(False)}, not resident {flags.count(None)}"
    )


def log_notes(label: str, log: Path) -> list[str]:
    """Tracebacks or error lines in a gateway's log are worth a note."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    bad = [
        line
        for line in text.splitlines()
        if "Traceback" in line or " ERROR" in line or line.startswith("ERROR")
    ]
    if not bad:
        return []
    return [f"{label} gateway log has {len(bad)} error/traceback lines, first: {bad[0][:200]}"]


# -- the router refit figure (bench/router_refit.py, another benchmark) ----------------------


def router_refit(run_it: bool) -> tuple[list[str], str]:
    """(the tables of reports/router.md, a status line): runs `python -m bench.router_refit`
    first where `run_it` (it writes that file), else quotes the file as it is."""
    status = ""
    if run_it and (ROOT / "bench" / "router_refit.py").is_file():
        print("running python -m bench.router_refit", flush=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.router_refit"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=900,
            )
            print(done.stdout[-2000:], flush=True)
            if done.returncode != 0:
                status = f"bench.router_refit exited {done.returncode}: {done.stderr[-300:]}"
        except subprocess.TimeoutExpired:
            status = "bench.router_refit timed out after 15 min"
    elif run_it:
        status = "bench/router_refit.py not in this tree"
    if not ROUTER_REPORT.is_file():
        return [], status or "no reports/router.md"
    text = ROUTER_REPORT.read_text()
    tables = [line for line in text.splitlines() if line.startswith("|")]
    age = time.strftime("%Y-%m-%d %H:%M", time.gmtime(ROUTER_REPORT.stat().st_mtime))
    quoted = f"from reports/router.md (written {age} UTC"
    quoted += ", by this run)" if run_it and not status else ", not rerun by this run)"
    return tables, status or quoted


# -- the command -----------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


Opt = typer.Option


@cli.command()
def main(
    requests: Annotated[
        int, Opt(help="Measured requests per (variant, concurrency) point.")
    ] = FULL_REQUESTS,
    concurrency: Annotated[str, Opt(help="Comma-separated concurrency levels.")] = "1,8,32,64",
    rounds: Annotated[
        int,
        Opt(min=1, help="Turns per point: each variant's requests in this many interleaved runs."),
    ] = ROUNDS,
    quick: Annotated[
        bool, Opt("--quick", help="Smoke run: 200 requests, c = 1 and 32, a small bound.")
    ] = False,
    variants: Annotated[
        str, Opt(help=f"Subset of {','.join(VARIANTS)} to run.")
    ] = DEFAULT_VARIANTS,
    docs: Annotated[
        int,
        Opt(help="Documents per index (the corpus's text cycled); 0: each domain's corpus"),
    ] = 0,
    experts: Annotated[
        str,
        Opt(help="Shipped set: auto (experts/ if it has every expert dataset), repo, synthetic"),
    ] = "auto",
    pilot_queries: Annotated[
        int, Opt(help="Train queries per registered random expert (pilot_queries).")
    ] = 300,
    bound: Annotated[
        bool, Opt("--bound/--no-bound", help="Measure the in-process bound (bench.pass_cost).")
    ] = True,
    bound_queries: Annotated[int, Opt(help="Queries per in-process bound point.")] = 256,
    refit: Annotated[
        bool,
        Opt(
            "--router-refit/--no-router-refit",
            help="Run bench.router_refit (writes reports/router.md; never in a smoke run).",
        ),
    ] = True,
    infinity_dtype: Annotated[
        str, Opt(help="(i): auto (probe bfloat16 and float32), bfloat16, float32, none.")
    ] = "auto",
    infinity_batch: Annotated[int, Opt(help="(i): Infinity --batch-size.")] = 32,
    cache: Annotated[
        bool, Opt("--cache/--no-cache", help="Leave the gateway's query-embedding cache on.")
    ] = False,
    client: Annotated[
        str, Opt(help="Load-generator client: raw (cheap asyncio) or httpx.")
    ] = "raw",
    http_stack: Annotated[
        str, Opt(help="Gateway HTTP parser and loop: auto (httptools + uvloop) or h11.")
    ] = "auto",
    datasets_dir: Annotated[Path, Opt(help="Benchmark datasets (benchmark.json).")] = (
        DEFAULT_DATASETS
    ),
    out_dir: Annotated[
        Path | None,
        Opt(help=f"Where bench.md and bench.png go (default: reports/, smoke runs {SMOKE_DIR})."),
    ] = None,
    seed: Annotated[int, Opt(help="Query order, adapters and index vectors.")] = 0,
) -> None:
    """Run the variants, print the table and ratios, write bench.md and bench.png."""
    if quick:  # smaller defaults; options given explicitly still apply
        requests = 200 if requests == FULL_REQUESTS else requests
        concurrency = "1,32" if concurrency == "1,8,32,64" else concurrency
        bound_queries = min(bound_queries, 64)
        rounds = 1 if rounds == ROUNDS else rounds
    smoke = quick or requests < FULL_REQUESTS or rounds < ROUNDS
    out_dir = out_dir or (SMOKE_DIR if smoke else ROOT / "reports")
    try:
        keys = parse_variants(variants)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--variants") from None
    levels = _levels(concurrency)
    options = Options(
        variants=keys,
        load=Load(levels, requests, client),
        experts=experts,
        docs=docs,
        pilot_queries=pilot_queries,
        seed=seed,
        cache=cache,
        http_stack=PURE_PYTHON_HTTP if http_stack == "h11" else (),
        bound=bound,
        bound_queries=bound_queries,
        infinity_dtype=infinity_dtype,
        infinity_batch=infinity_batch,
        rounds=rounds,
    )
    started = time.monotonic()
    facts = machine_facts()
    domains = load_domains(datasets_dir)
    workload = mixed_workload(domains, seed)
    queries = [query for query, _ in workload]
    print(
        f"{len(queries)} mixed test queries from {len(domains)} domains "
        f"({', '.join(f'{d.name} {len(d.test)}' for d in domains)})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="rr-bench-") as tmp:
        bench = ServingBench(
            Path(tmp), domains, queries, [d for _, d in workload], options, facts=facts
        )
        bench.run_variants(keys)
        if bound:
            bench.measure_bounds()
    tables, refit_status = router_refit(refit and not smoke)
    shown = set(bench.precisions.values())
    facts["gateway precision (/readyz)"] = (
        shown.pop()
        if len(shown) == 1
        else "; ".join(f"{k} {v}" for k, v in bench.precisions.items())
    )
    facts["load average at end"] = load_average()
    facts["run time"] = f"{(time.monotonic() - started) / 60:.1f} min"
    report = build_report(bench, tables, refit_status, smoke, quick, requests, levels)
    title = f"RouterRetriever gateway serving benchmark ({requests} requests/point"
    markdown, image = report.write(out_dir, title + (", SMOKE RUN)" if smoke else ")"))
    print("\n" + report.markdown(image.name).split("## Machine")[0])
    print(f"wrote {markdown} and {image}")


def pinned_precision(bench: ServingBench) -> str:
    return f"RR_PRECISION={bench.query_precision}" if bench.query_precision else "none measured"


def build_report(
    bench: ServingBench,
    router_tables: list[str],
    refit_status: str,
    smoke: bool,
    quick: bool,
    requests: int,
    levels: list[int],
) -> Report:
    opts = bench.options
    at = 32 if 32 in levels else max(levels)
    runs = [bench.runs[k] for k in VARIANTS if k in bench.runs]
    ratios = ratio_lines(RATIOS, bench.runs, at)
    ratios.append(
        "- router refit on an admin change (bench.router_refit; target: under 1 s with 50 "
        "experts): " + ("see *Router refit* below" if router_tables else refit_status)
    )
    bound_lines = [f"- {line}" for cost in bench.bounds for line in cost.lines()]
    for cost in bench.bounds:
        key = "l" if cost.experts.startswith("all-layer") else "a"
        run = bench.runs.get(key)
        point = run.at(at) if run else None
        if point is not None:
            ratios.append(
                f"- {run.label} / its in-process bound ({cost.experts}): QPS "
                f"x{point.qps / cost.bound_routed_qps:.2f} "
                f"({point.qps:.1f} / {cost.bound_routed_qps:.1f})"
            )
    settings = "none" if opts.cache else "RR_EMBEDDING_CACHE_SIZE=0"
    one_client = "a minimal asyncio HTTP/1.1 client" if opts.load.client == "raw" else "httpx"
    set_lines = [f"Experts ({s.name}): {s.described}." for s in bench.sets.values()]
    differs = [VARIANTS[k].setup for k in opts.variants if VARIANTS[k].setup]
    unique = len({q for d in bench.domains for q in d.test})
    skipped = [VARIANTS[k].label for k in VARIANTS if k not in opts.variants]
    setup = [
        *set_lines,
        f"Indexes: {expert_sets.index_description(opts.docs)}. Base only (c) sends each query "
        "to its own domain's index, the one routed search lands on; (p) sends every query to "
        f"the first expert's by name ({min(d.name for d in bench.domains)}), as (c) did "
        "before 2026-12-07.",
        f"Inputs: {len(bench.queries)} test queries of the {len(bench.domains)} expert datasets "
        f"({unique:,} unique), round-robin over domains, one query per request, the same order "
        "for every variant (each turn starts further along).",
        f"Gateway: one `rr serve` per variant, all of them up side by side (each on its own "
        "copy of its expert set's experts and indexes, idle before the load), default "
        f"settings plus {settings} (the "
        "query-embedding cache would turn repeated benchmark queries into cache hits); the "
        "first gateway measures its query precision (RR_PRECISION=auto), the later ones are "
        f"pinned to its choice ({pinned_precision(bench)}) so that every variant runs at one"
        + ("; " + "; ".join(differs) if differs else "")
        + (f"; every gateway `rr serve {' '.join(opts.http_stack)}`" if opts.http_stack else "")
        + ".",
        f"Load: {requests} measured requests per point after a 64-request warm-up, sent in "
        f"{opts.rounds} turns: at each concurrency every variant runs {requests // opts.rounds} "
        "requests in turn (the order rotating), so slow drift in the shared machine's speed "
        "reaches every variant alike; closed loop; "
        f"each client is {one_client} with its own keep-alive connection; concurrency "
        f"{', '.join(map(str, levels))}.",
        f"Not in this run: {', '.join(skipped) or 'none'} (`--variants`; the default run is "
        f"{DEFAULT_VARIANTS}: the others, Infinity's install and probes above all, would take it "
        "past ~15 minutes).",
        "QPS counts 2xx answers per wall-clock second; percentiles are over all requests; "
        "errors = non-2xx except 429 (counted apart) plus transport errors and timeouts; "
        "client CPU = the load generator's own CPU per request (it shares the cores).",
    ]
    routing = [
        f"- {bench.runs[k].label}: {t.spread()}"
        for k, t in bench.tallies.items()
        if t and t.experts
    ]
    command = "python -m bench.serving " + " ".join(sys.argv[1:])
    why_smoke = ""
    if smoke:
        why_smoke = "`--quick`" if quick else f"{requests} requests per point"
        why_smoke += ", on a machine shared with other work"
    return Report(
        command=command.strip(),
        setup=setup,
        runs=runs,
        ratios=ratios,
        ratio_at=at,
        smoke=why_smoke,
        sections=[
            ("In-process bound (bench.pass_cost)", bound_lines),
            ("Routing over all measured requests", routing),
            (
                "Serving path (/v1/experts one_pass, after the load)",
                [f"- {line}" for line in bench.serving_paths],
            ),
            (
                "Router refit (bench.router_refit)",
                [refit_status, "", *router_tables] if router_tables else [],
            ),
            ("Infinity", [bench.infinity_status] if "i" in opts.variants else []),
        ],
        notes=bench.notes,
        facts=bench.facts,
    )


if __name__ == "__main__":
    cli()
