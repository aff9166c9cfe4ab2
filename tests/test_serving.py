"""Serving under load: batching with the real model (slow); back-pressure and cache
invalidation on the fake encoder (fast: they are the service's behaviour, not the model's)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import AUTH, adapter_files, live_server

DOMAINS = {
    "aero": ["lift and drag of a swept wing", "shock waves over an airfoil at mach two"],
    "code": ["python sort a dictionary by value", "read a csv file with pandas"],
    "med": ["symptoms of vitamin d deficiency", "treatment of high blood pressure"],
}
QUERIES = [
    "boundary layer on a delta wing",
    "hypersonic heat shield",
    "python reverse a list",
    "regex for email in python",
    "statin side effects",
    "insulin dosage for type 2 diabetes",
    "transonic buffet",
    "list comprehension with condition",
    "migraine treatment",
]


def _register_all(client, adapters: dict[str, Path]) -> None:
    for name, examples in DOMAINS.items():
        response = client.post(
            "/admin/experts",
            headers=AUTH,
            files=adapter_files(adapters[name]),
            data={"name": name, "pilot_queries": json.dumps(examples)},
        )
        assert response.status_code == 201, response.text
        docs = {
            "documents": [
                {"id": f"{name}-{i}", "text": f"{q} (document {i})"} for i, q in enumerate(QUERIES)
            ]
        }
        assert (
            client.put(f"/admin/experts/{name}/documents", headers=AUTH, json=docs).status_code
            == 200
        )


@pytest.fixture(scope="module")
def three_adapters(adapters_root: str) -> dict[str, Path]:
    from tests.helpers import make_adapter

    return {name: make_adapter(10 + i, adapters_root) for i, name in enumerate(DOMAINS)}


@pytest.mark.slow
def test_concurrent_mixed_traffic_is_embedded_by_the_reported_expert(
    settings, three_adapters
) -> None:
    settings.max_wait_ms = 5.0  # encourage mixed batches
    with live_server(settings) as (url, app):
        with httpx.Client(base_url=url, timeout=60) as client:
            _register_all(client, three_adapters)
        results: list[tuple[str, str, list[float]]] = []
        lock = threading.Lock()

        def worker(offset: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                for i in range(12):
                    text = (
                        f"{QUERIES[(offset + i) % len(QUERIES)]} #{offset}-{i}"  # defeat the cache
                    )
                    body = client.post("/v1/embeddings", json={"input": text}).json()
                    with lock:
                        results.append(
                            (text, body["data"][0]["expert"], body["data"][0]["embedding"])
                        )

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = app.state.ctx.encoder_batcher.stats
        assert stats.largest_batch > 1  # traffic really was batched

    from app.encoder import LoraEncoder

    reference = LoraEncoder(lambda name: three_adapters[name], capacity=3)
    experts = {expert for _, expert, _ in results}
    assert len(results) == 96 and len(experts) >= 2, experts
    for text, expert, vector in results:
        adapter = "__base__" if expert == "base" else expert
        [expected] = reference.encode([text], [adapter])
        assert np.abs(np.array(vector) - expected).max() <= 1e-4, (text, expert)


@pytest.mark.slow
def test_batch_search_equals_single_searches(client: TestClient, three_adapters) -> None:
    _register_all(client, three_adapters)
    batch = client.post("/v1/search/batch", json={"queries": QUERIES, "k": 3}).json()
    client.app.state.ctx.cache._items.clear()  # recompute every vector for the single path
    for query, batched in zip(QUERIES, batch, strict=True):
        single = client.post("/v1/search", json={"query": query, "k": 3}).json()
        assert single["routing"]["expert"] == batched["routing"]["expert"]
        assert [h["id"] for h in single["hits"]] == [h["id"] for h in batched["hits"]]
        assert np.allclose(
            [h["score"] for h in single["hits"]], [h["score"] for h in batched["hits"]], atol=1e-5
        )


def test_full_queue_answers_429_with_retry_after(fake_settings) -> None:
    fake_settings.max_queue = 1
    fake_settings.max_batch = 1
    with live_server(fake_settings) as (url, app):
        gate = threading.Event()
        # Occupy the model thread so requests pile up in the (one-row) queue.
        holder = threading.Thread(
            target=lambda: asyncio.run(app.state.ctx.encoder_batcher.call(gate.wait, 10))
        )
        holder.start()
        statuses: list[tuple[int, str | None]] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                response = client.post("/v1/search", json={"query": f"query number {i}"})
                with lock:
                    statuses.append((response.status_code, response.headers.get("retry-after")))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        gate.set()
        for thread in threads + [holder]:
            thread.join()
    codes = [code for code, _ in statuses]
    assert codes.count(429) >= 1 and codes.count(200) >= 1, codes
    assert set(codes) <= {200, 429}
    assert all(retry == "1" for code, retry in statuses if code == 429)


def test_cache_hits_and_invalidation_on_re_add(
    fake_client: TestClient, lora_a: Path, lora_b: Path
) -> None:
    from app.encoder.fake import FakeEncoder

    client = fake_client

    def register(adapter: Path) -> None:
        response = client.post(
            "/admin/experts",
            headers=AUTH,
            files=adapter_files(adapter),
            data={"name": "swap", "pilot_queries": '["anything at all"]'},
        )
        assert response.status_code == 201

    def embed() -> np.ndarray:
        body = client.post("/v1/embeddings", json={"input": "cache me", "model": "swap"}).json()
        return np.array(body["data"][0]["embedding"])

    cache = client.app.state.ctx.cache
    register(lora_a)
    first = embed()
    hits_before = cache.hits
    assert np.array_equal(embed(), first) and cache.hits == hits_before + 1  # served from cache

    assert client.delete("/admin/experts/swap", headers=AUTH).status_code == 204
    register(lora_b)  # same name, new weights
    second = embed()
    [expected] = FakeEncoder(lambda name: lora_b).encode(["cache me"], ["swap"])
    assert not np.allclose(second, first, atol=1e-3)
    assert np.abs(second - expected).max() <= 1e-5
