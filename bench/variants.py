"""The serving benchmark's variants and the ratios reported between them.

Each gateway variant names the expert set its gateway serves (`bench.experts`), the request
it sends, and what its gateway does differently; every variant gets its own gateway. The
ratios with a target are issue 21's "done when" figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.workload import embedding_bodies, search_bodies

SEARCH, EMBED = "/v1/search", "/v1/embeddings"
INFINITY_MODEL = "all-minilm-l6-v2"
PURE_PYTHON_HTTP = ("--http", "h11", "--loop", "asyncio")

# (queries, each query's own domain = its index name) -> request bodies
Bodies = Callable[[list[str], list[str]], list[bytes]]


def _dense(queries: list[str], _: list[str]) -> list[bytes]:
    return search_bodies(queries, "dense")


def _hybrid(queries: list[str], _: list[str]) -> list[bytes]:
    return search_bodies(queries, "hybrid")


def _base_own_index(queries: list[str], domains: list[str]) -> list[bytes]:
    # The indexes routed search lands on (each query's own domain), so (a)/(c) compares the
    # encoder passes and not index sizes: the domain indexes hold 1.4k-20k documents.
    return search_bodies(queries, "dense", expert="base", indexes=domains)


def _base_one_index(queries: list[str], domains: list[str]) -> list[bytes]:
    # The definition of (c) before 2026-12-07: every query on the first expert's index
    # (by name: cacm, 3,204 documents).
    first = min(domains)
    return search_bodies(queries, "dense", expert="base", indexes=[first] * len(queries))


def _embeddings(queries: list[str], _: list[str]) -> list[bytes]:
    return embedding_bodies(queries, "base")


def _infinity(queries: list[str], _: list[str]) -> list[bytes]:
    return embedding_bodies(queries, INFINITY_MODEL)


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    bodies: Bodies
    experts: str = "shipped"  # the expert set its gateway serves; "" for Infinity
    path: str = SEARCH
    env: dict[str, str] = field(default_factory=dict)  # gateway settings beyond the default
    serve_options: tuple[str, ...] = ()  # `rr serve` flags
    tally: bool = False  # count where its routed answers went
    setup: str = ""  # how its gateway differs, for the report


VARIANTS = {
    v.key: v
    for v in (
        Variant("a", "(a) routed search", _dense, tally=True),
        Variant("c", "(c) base only", _base_own_index),
        Variant("p", "(p) base only, one index", _base_one_index),
        Variant("h", "(h) routed hybrid", _hybrid, tally=True),
        Variant(
            "l",
            "(l) routed, all-layer experts",
            _dense,
            experts="all-layer",
            tally=True,
            setup="(l) serves the all-layer experts with RR_ROUTING_LAYER=0",
        ),
        Variant(
            "b",
            "(b) routed, one expert",
            _dense,
            experts="single",
            tally=True,
            setup="(b) serves one expert with RR_ROUTER_FALLBACK_THRESHOLD=-1",
        ),
        Variant(
            "d",
            "(d) unbatched routed",
            _dense,
            env={"RR_MAX_BATCH": "1", "RR_MAX_WAIT_MS": "0"},
            setup="(d) sets RR_MAX_BATCH=1 RR_MAX_WAIT_MS=0",
        ),
        Variant(
            "f",
            "(f) routed, fp32 queries",
            _dense,
            env={"RR_PRECISION": "fp32"},
            setup="(f) sets RR_PRECISION=fp32",
        ),
        Variant(
            "g",
            "(g) routed, h11 + asyncio",
            _dense,
            serve_options=PURE_PYTHON_HTTP,
            setup="(g) runs `rr serve --http h11 --loop asyncio`",
        ),
        Variant(
            "w",
            "(w) routed, busy wait 5 ms",
            _dense,
            env={"RR_BUSY_WAIT_MS": "5"},
            setup="(w) sets RR_BUSY_WAIT_MS=5",
        ),
        Variant("e", "(e) embeddings, ours", _embeddings, path=EMBED),
        Variant("i", "(i) embeddings, Infinity", _infinity, experts="", path="/embeddings"),
    )
}
DEFAULT_VARIANTS = "a,c,h,l,p"  # issue 21's figures; the rest on request (--variants)


@dataclass(frozen=True)
class Ratio:
    num: str
    den: str
    metric: str  # "qps", or "p50" at c=1
    what: str
    target: tuple[str, float] | None = None  # (">=" or "<=", value)

    def met(self, value: float) -> bool | None:
        if self.target is None:
            return None
        sign, bound = self.target
        return value >= bound if sign == ">=" else value <= bound


# Issue 21's targets first, then what each other variant isolates.
RATIOS = [
    Ratio("a", "c", "qps", "routed dense vs base-only dense", (">=", 0.90)),
    Ratio(
        "l", "c", "qps", "all-layer experts routed on token embeddings vs base-only", (">=", 0.80)
    ),
    Ratio("h", "c", "qps", "routed hybrid (the default mode) vs base-only dense", (">=", 0.75)),
    Ratio("a", "c", "p50", "routed vs base-only, one client at a time", ("<=", 1.10)),
    Ratio("h", "a", "qps", "the lexical leg and fusion"),
    Ratio("p", "c", "qps", "one small index for every query vs each query's own"),
    Ratio("h", "a", "p50", "hybrid vs dense, one client at a time"),
    Ratio("l", "a", "qps", "all-layer experts vs the shipped ones"),
    Ratio("a", "b", "qps", "mixed-expert vs single-expert traffic"),
    Ratio("a", "d", "qps", "gain from the batching settings"),
    Ratio("a", "f", "qps", "queries at the measured precision vs fp32"),
    Ratio("a", "g", "qps", "httptools + uvloop vs h11 + asyncio"),
    Ratio("w", "a", "qps", "a 5 ms busy wait for fuller encoder batches vs none"),
    Ratio("e", "i", "qps", "ours / Infinity"),
]


def parse_variants(text: str) -> list[str]:
    """`a,c,h` -> keys in table order; raises ValueError on an unknown key."""
    wanted = {v.strip() for v in text.split(",") if v.strip()}
    unknown = wanted - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)} (known: {','.join(VARIANTS)})")
    return [k for k in VARIANTS if k in wanted]
