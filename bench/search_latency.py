"""Single-query /v1/search latency at c=1 and adapter cold-load time.

Builds 3 experts (real LoRA adapters with random weights) whose indexes hold 10k documents
each, starts `rr serve` on 127.0.0.1, sends sequential routed searches and prints p50/p95.
Index vectors are random unit vectors: search cost depends on index size, not content.

    .venv/bin/python -m bench.search_latency [--docs 10000] [--requests 200]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import typer

from tests.helpers import make_adapter
from tests.processes import Gateway

EXPERTS = {
    "aero": ["lift and drag of a swept wing", "supersonic flow over an airfoil"],
    "code": ["python sort a dictionary by value", "read a csv file in python"],
    "med": ["symptoms of vitamin d deficiency", "treatment of high blood pressure"],
}
QUERIES = [
    "boundary layer transition on a flat plate",
    "how to reverse a list in python",
    "side effects of statins",
    "heat transfer in hypersonic flight",
    "python regex to match an email address",
    "can diet lower cholesterol",
]


def build(root: Path, docs: int) -> None:
    """root/experts and root/indexes: the layout `Gateway(root.parent, name=root.name)` serves."""
    from app.core.pilots import centroid_pilots
    from app.encoder import LoraEncoder
    from app.experts.artifacts import write_expert
    from app.index import Document, IndexStore

    encoder = LoraEncoder(lambda name: root / "experts" / name)
    store = IndexStore(root / "indexes", encoder.dim)
    rng = np.random.default_rng(0)
    for seed, (name, examples) in enumerate(EXPERTS.items()):
        adapter = make_adapter(seed, str(root.parent / "adapters"))
        config = (adapter / "adapter_config.json").read_bytes()
        model = (adapter / "adapter_model.safetensors").read_bytes()
        pilots = centroid_pilots(encoder.encode(examples))
        write_expert(root / "experts", name, config, model, pilots)
        vectors = rng.normal(size=(docs, encoder.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        documents = [Document(f"{name}-{i}", f"document {i} of {name}") for i in range(docs)]
        store.open(name).upsert(documents, vectors)
    store.close()


def cold_load_ms(root: Path, repeats: int = 20) -> list[float]:
    from app.encoder import LoraEncoder

    encoder = LoraEncoder(lambda name: root / "experts" / name, capacity=1)
    times = []
    for i in range(repeats):
        name = list(EXPERTS)[i % len(EXPERTS)]  # capacity 1: every call is a cold load
        encoder.ensure_resident([name])
        times.append(encoder.stats.last_load_ms)
    return times


def main(docs: int = 10_000, requests: int = 200) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gateway"
        started = time.perf_counter()
        build(root, docs)
        print(f"built 3 experts x {docs} documents in {time.perf_counter() - started:.1f}s")
        # The queries repeat: without the cache off most requests would be cache hits.
        gateway = Gateway(root.parent, name=root.name, env={"RR_EMBEDDING_CACHE_SIZE": "0"})
        with gateway, httpx.Client(base_url=gateway.url, timeout=30) as client:
            for query in QUERIES * 3:  # warm-up: every adapter resident
                client.post("/v1/search", json={"query": query})
            latencies, routed = [], {}
            for i in range(requests):
                t0 = time.perf_counter()
                response = client.post(
                    "/v1/search", json={"query": QUERIES[i % len(QUERIES)], "k": 10}
                )
                latencies.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
                expert = response.json()["routing"]["expert"]
                routed[expert] = routed.get(expert, 0) + 1
        latencies.sort()
        p50 = statistics.median(latencies)
        p95 = latencies[int(0.95 * len(latencies)) - 1]
        print(
            f"/v1/search c=1, {requests} requests, 3 experts x {docs} docs: "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, routed {routed}"
        )
        loads = cold_load_ms(root)
        print(
            f"adapter cold load: median {statistics.median(loads):.1f} ms, max {max(loads):.1f} ms "
            f"over {len(loads)} loads"
        )


if __name__ == "__main__":
    typer.run(main)
