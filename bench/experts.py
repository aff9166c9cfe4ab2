"""The expert sets the serving benchmark's gateways serve, each in its own gateway home
(`<work>/<set>/experts`, `<work>/<set>/indexes`, the layout `tests.processes.Gateway` serves).

- **shipped**: the trained experts of `experts/` copied as they are (adapters, pilots,
  fallback thresholds, fusion weights); where `experts/` lacks one per expert dataset (and
  `--experts auto`), or with `--experts synthetic`, random LoRA adapters of the shipped shape
  (r=8, query/key/value/dense, layers 4-5) instead.
- **all-layer**: random LoRA on all six layers, every linear module, served with
  `RR_ROUTING_LAYER=0` (routing on the pooled token embeddings): the issue-21 case of experts
  that change every layer.
- **single**: one expert of the shipped set (the first that is not the identity), fallback
  off: every query is routed to it.

Random adapters are registered through the admin API with `pilot_queries` (up to
`pilot_queries` TRAIN queries of the domain): the gateway embeds them itself, at its routing
layer. Each index holds its domain's real corpus (real text: BM25 costs what it would) with
random unit vectors (FAISS cost depends on size, not content); `docs` N fills every index to
N documents instead, cycling the corpus. The indexes are built once and copied into each
home.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.workload import ROOT, Domain
from tests.helpers import make_adapter  # the one random-LoRA builder (tests own it)
from tests.processes import TOKEN, Gateway, adapter_files

ALL_MODULES = ("query", "key", "value", "dense")  # "dense": attention output, FFN in and out
SHIPPED_LAYERS = (4, 5)  # the trained experts' layers
# All six spelled out: without `layers_to_transform` peft's "dense" also matches the pooler's
# dense layer (unused by mean pooling, but a LoRA outside the six layers sends the expert to
# the exact two-pass path).
ALL_LAYERS = tuple(range(6))
FULL_ROUTING_LAYER = {"RR_ROUTING_LAYER": "0"}


@dataclass
class ExpertSet:
    name: str
    home: Path  # <work>/<name>: experts/ and indexes/
    names: list[str]
    described: str  # one sentence for the report
    env: dict[str, str] = field(default_factory=dict)  # settings its pilots were made under


def trained_experts(experts_dir: Path = ROOT / "experts") -> list[Path]:
    if not experts_dir.is_dir():
        return []
    return sorted(p for p in experts_dir.iterdir() if (p / "expert.json").is_file())


def build_indexes(out: Path, domains: list[Domain], names: list[str], docs: int, seed: int) -> Path:
    """One index per expert name at `out` (built once, copied into each home)."""
    from app.index import Document, IndexStore

    dim = 384
    rng = np.random.default_rng(seed)
    corpora = {d.name: d.corpus for d in domains}
    store = IndexStore(out, dim)
    for name in names:
        corpus = corpora.get(name) or [("", f"document of {name}")]
        size = docs or len(corpus)  # 0: the domain's corpus as it is
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        documents = [
            Document(f"{name}-{j}", corpus[j % len(corpus)][1], corpus[j % len(corpus)][0])
            for j in range(size)
        ]
        store.open(name).upsert(documents, vectors)
    store.close()
    return out


def index_description(docs: int) -> str:
    sizes = f"{docs:,} documents (its corpus cycled)" if docs else "its domain's corpus"
    return (
        f"each index {sizes}: real text (BM25 costs what it would), random unit vectors "
        "(flat inner product)"
    )


def install_indexes(home: Path, built: Path, names: list[str]) -> None:
    """Copy the built indexes into `home/indexes`, over the empty ones registration made."""
    for name in names:
        target = home / "indexes" / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(built / name, target)


def shipped_set(
    work: Path,
    domains: list[Domain],
    source: str,
    built: Path,
    seed: int,
    pilot_queries: int,
) -> ExpertSet:
    """The trained experts (`source` auto / repo) or random ones of their shape."""
    trained = trained_experts()
    # auto: the trained experts only when they cover every expert dataset; a partial set
    # (say 2 of 10) would send most of the mixed traffic to the base fallback.
    missing = sorted({d.name for d in domains} - {p.name for p in trained})
    if source == "repo" and not trained:
        raise SystemExit("--experts repo: no trained experts (dirs with expert.json) in experts/")
    if source == "repo" or (source == "auto" and trained and not missing):
        home = work / "shipped"
        for path in trained:
            shutil.copytree(path, home / "experts" / path.name)
        if (ROOT / "experts" / "fusion.json").is_file():  # the tuned hybrid weights
            shutil.copy(ROOT / "experts" / "fusion.json", home / "experts" / "fusion.json")
        names = [p.name for p in trained]
        install_indexes(home, built, names)
        described = (
            f"{len(names)} trained experts copied from experts/ (adapters, pilots and fallback "
            "thresholds as trained, LoRA on layers 4-5)"
        )
        if missing:
            described += f"; no expert for {', '.join(missing)} (their queries may fall back)"
        return ExpertSet("shipped", home, names, described)
    unused = f" (experts/ has {len(trained)} of {len(domains)})" if missing and trained else ""
    expert_set = random_set(
        work, "shipped", domains, SHIPPED_LAYERS, seed, pilot_queries, built, env={}
    )
    expert_set.described = f"{expert_set.described}{unused}"
    return expert_set


def all_layer_set(
    work: Path, domains: list[Domain], built: Path, seed: int, pilot_queries: int
) -> ExpertSet:
    return random_set(
        work, "all-layer", domains, ALL_LAYERS, seed, pilot_queries, built, env=FULL_ROUTING_LAYER
    )


def random_set(
    work: Path,
    name: str,
    domains: list[Domain],
    layers: tuple[int, ...],
    seed: int,
    pilot_queries: int,
    built: Path,
    env: dict[str, str],
) -> ExpertSet:
    """One random LoRA per domain (seeded), registered through the admin API of a gateway
    started with `env`, then that gateway's empty indexes replaced by the built ones."""
    adapters = {
        d.name: make_adapter(seed + i, str(work / "adapters"), ALL_MODULES, layers)
        for i, d in enumerate(domains)
    }
    home = work / name
    log = work / f"register-{name}.log"
    with (
        Gateway(work, name=name, env=env, log_path=log, ready_timeout=300) as gateway,
        httpx.Client(base_url=gateway.url, timeout=300, trust_env=False) as client,
    ):
        for i, domain in enumerate(domains):
            queries = domain.train_sample(pilot_queries, seed + i) or domain.test[:1]
            response = client.post(
                "/admin/experts",
                headers={"Authorization": f"Bearer {TOKEN}"},
                files=adapter_files(adapters[domain.name]),
                data={
                    "name": domain.name,
                    "description": f"bench: random LoRA, layers {layers}",
                    "pilot_queries": json.dumps(queries),
                },
            )
            if response.status_code != 201:
                raise RuntimeError(
                    f"registering {domain.name}: {response.status_code} {response.text[:300]}"
                )
    names = [d.name for d in domains]
    install_indexes(home, built, names)
    where = "all six layers" if layers == ALL_LAYERS else f"layers {', '.join(map(str, layers))}"
    settings = " ".join(f"{k}={v}" for k, v in env.items())
    described = (
        f"{len(names)} random LoRA experts, one per expert dataset (peft r=8, alpha 32, "
        f"{'/'.join(ALL_MODULES)} on {where}, init_lora_weights=False, seeded), registered "
        f"through the admin API with pilot_queries = up to {pilot_queries} of the dataset's "
        "train queries (the gateway embeds them" + (f", under {settings})" if settings else ")")
    )
    return ExpertSet(name, home, names, described, dict(env))


def single_set(work: Path, shipped: ExpertSet) -> ExpertSet:
    """One expert of `shipped` (the first whose adapter is not the identity, so its queries
    get an expert pass), its fallback threshold cleared."""
    from app.experts.artifacts import METADATA, read_expert

    name = next(n for n in shipped.names if not read_expert(shipped.home / "experts" / n).identity)
    home = work / "single"
    shutil.copytree(shipped.home / "experts" / name, home / "experts" / name)
    shutil.copytree(shipped.home / "indexes" / name, home / "indexes" / name)
    meta_path = home / "experts" / name / METADATA
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(meta | {"fallback_threshold": None}))
    described = f"one expert of the shipped set ({name}), fallback off"
    env = shipped.env | {"RR_ROUTER_FALLBACK_THRESHOLD": "-1"}
    return ExpertSet("single", home, [name], described, env)
