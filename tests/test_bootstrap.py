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

pytestmark = pytest.mark.slow

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
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)


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
