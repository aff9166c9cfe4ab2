"""First start indexes the benchmark's expert corpora; later starts reuse the indexes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.experts.artifacts import write_expert

DOCS = [
    {"_id": "d1", "title": "Flutter", "text": "Aeroelastic flutter of wings at high speed."},
    {"_id": "d2", "title": "Sorting", "text": "Sort a python dictionary by its values."},
    {"_id": "d3", "title": "", "text": "Vitamin D and bone health in adults."},
]


def _dataset(root: Path) -> Path:
    tiny = root / "datasets" / "tiny"
    (tiny / "qrels").mkdir(parents=True)
    (tiny / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in DOCS))
    benchmark = {
        "experts": {"tiny": {"train": "qrels/train.tsv", "test": "qrels/test.tsv"}},
        "zero_shot": {},
    }
    (root / "datasets" / "benchmark.json").write_text(json.dumps(benchmark))
    return root / "datasets"


def _wait_ready(client: TestClient) -> None:
    """Until fully indexed (`ready`; `serving` already answers 200)."""
    deadline = time.monotonic() + 120
    while client.get("/readyz").json().get("status") != "ready":
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)


@pytest.mark.slow
def test_first_start_indexes_corpora_and_restart_reuses_them(
    settings, tmp_path: Path, adapter_a: Path
) -> None:
    settings.datasets_dir = _dataset(tmp_path)
    settings.cache_dir = tmp_path / "cache"
    pilots = np.ones((1, 384), dtype=np.float32) / np.sqrt(384)
    write_expert(
        settings.experts_dir,
        "tiny",
        (adapter_a / "adapter_config.json").read_bytes(),
        (adapter_a / "adapter_model.safetensors").read_bytes(),
        pilots,
    )
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        assert client.get("/v1/experts/tiny").json()["documents"] == 3
        hits = client.post(
            "/v1/search", json={"query": "python dict sort by value", "expert": "base"}
        ).json()["hits"]
        assert hits[0]["id"] == "d2" and hits[0]["title"] == "Sorting"
        generation = client.app.state.ctx.indexes.get("tiny").generation
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        assert client.app.state.ctx.indexes.get("tiny").generation == generation  # not re-indexed
        assert client.get("/v1/experts/tiny").json()["documents"] == 3


def _corpus(root: Path, name: str, size: int) -> None:
    directory = root / name
    (directory / "qrels").mkdir(parents=True)
    documents = [
        {"_id": f"{name}-{i}", "title": f"{name} {i}", "text": f"{name} topic document {i}"}
        for i in range(size)
    ]
    (directory / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in documents))


def test_corpora_are_searchable_while_indexing_smallest_first(
    fake_settings, tmp_path: Path, lora_a: Path, lora_b: Path, monkeypatch
) -> None:
    """Serving starts at once; the small corpus is whole long before the large one, whose
    searches say how far it is; `/readyz` answers 200 `serving`, then `ready`."""
    import asyncio

    from app.service import admin as admin_module
    from app.service import bootstrap

    datasets = tmp_path / "datasets"
    _corpus(datasets, "small", 30)
    _corpus(datasets, "large", 400)
    spec = {"train": "qrels/train.tsv", "test": "qrels/test.tsv"}
    (datasets / "benchmark.json").write_text(
        json.dumps({"experts": {"large": spec, "small": spec}, "zero_shot": {}})
    )
    fake_settings.datasets_dir = datasets
    fake_settings.cache_dir = tmp_path / "cache"
    # The small corpus has training's embedding cache: those vectors are indexed as they are.
    from app.data.doc_embeddings import corpus_key

    cached = np.random.default_rng(0).normal(size=(30, 384)).astype(np.float32)
    cached /= np.linalg.norm(cached, axis=1, keepdims=True)
    key = corpus_key(datasets / "small", 256)
    cache_file = fake_settings.cache_dir / "embeddings" / f"{key}.npy"
    cache_file.parent.mkdir(parents=True)
    np.save(cache_file, cached)
    pilots = np.ones((1, 384), dtype=np.float32) / np.sqrt(384)
    for name, lora in (("small", lora_a), ("large", lora_b)):
        config, model = (lora / "adapter_config.json"), (lora / "adapter_model.safetensors")
        write_expert(
            fake_settings.experts_dir, name, config.read_bytes(), model.read_bytes(), pilots
        )
    monkeypatch.setattr(bootstrap, "CHUNK", 10)
    embed = admin_module.AdminService.embed_documents

    async def slow_embed(self, texts, progress=None):  # ~20 ms a document, like a real CPU
        await asyncio.sleep(0.02 * len(texts))
        return await embed(self, texts, progress)

    monkeypatch.setattr(admin_module.AdminService, "embed_documents", slow_embed)
    with TestClient(create_app(fake_settings)) as client:
        seen_partial = False
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline
            experts = {e["name"]: e for e in client.get("/v1/experts").json()["experts"]}
            large = experts["large"]
            if large["state"] == "indexing" and 0 < large["indexing"]["indexed"] <= 200:
                assert experts["small"]["state"] == "ready"  # smallest first, already whole
                assert experts["small"]["documents"] == 30
                ready = client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["status"] == "serving"
                assert ready.json()["indexing"]["large"]["total"] == 400
                body = client.post("/v1/search", json={"query": "large topic", "expert": "large"})
                assert body.status_code == 200 and body.json()["hits"]
                assert body.json()["indexing"]["large"]["total"] == 400
                small = client.post("/v1/search", json={"query": "x", "expert": "small"})
                assert "indexing" not in small.json()
                seen_partial = True
            time.sleep(0.05)
        assert seen_partial
        [hits] = client.app.state.ctx.indexes.get("small").search(cached[7][None, :], k=1)
        assert hits[0].id == "small-7" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        large = client.get("/v1/experts/large").json()
        assert large["state"] == "ready" and large["documents"] == 400
        body = client.post("/v1/search", json={"query": "large topic", "expert": "large"})
        assert "indexing" not in body.json()
        for i in range(5):  # as if the process had died before the last chunks landed
            client.app.state.ctx.indexes.get("large").delete(f"large-{395 + i}")
    with TestClient(create_app(fake_settings)) as client:  # the restart tops it up
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/v1/experts/large").json()["documents"] == 400
