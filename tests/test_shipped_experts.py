"""The shipped experts serve routed searches on the installed transformers / peft.

Test queries of each expert domain (read here, never trained on) go through `/v1/search`
with the committed experts: every one answers 200, the one-pass path passes its self-check (a newer
transformers may leave it reported degraded: then the searches must still answer), and
the top-layer experts' expert passes really start from the routing pass when it is on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.data.beir import load_benchmark, load_corpus, load_qrels, load_queries
from app.encoder.base_model import cpu_has_bf16
from app.settings import Settings
from tests.helpers import AUTH, TOKEN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = Path(Settings().datasets_dir or ROOT / "../shared/datasets") / "benchmark.json"
QUERIES_PER_DOMAIN = 3


@pytest.mark.skipif(not BENCHMARK.exists(), reason=f"no benchmark data at {BENCHMARK}")
def test_routed_searches_of_every_expert_domain_answer(tmp_path: Path) -> None:
    experts_dir = tmp_path / "experts"
    shutil.copytree(ROOT / "experts", experts_dir)
    settings = Settings(
        experts_dir=experts_dir,
        indexes_dir=tmp_path / "indexes",
        datasets_dir=None,
        index_corpora_on_start=False,
        admin_token=TOKEN,
    )
    queries = []
    for dataset in load_benchmark(BENCHMARK).experts:
        texts = load_queries(dataset.directory)
        ids = list(load_qrels(dataset.test_qrels))[:QUERIES_PER_DOMAIN]
        queries += [(dataset.name, texts[i]) for i in ids]
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        degraded = client.get("/readyz").json()["degraded"]
        # Documents at bf16 where the CPU has bf16 dot products (the probe check agrees here);
        # queries at what the start-up measurement chose there.
        encoder = client.app.state.ctx.encoder
        documents = "bf16" if cpu_has_bf16() else "fp32"
        measured = encoder.precision_check["chosen"] if cpu_has_bf16() else "fp32"
        precision = {"queries": measured, "documents": documents}
        assert client.get("/readyz").json()["precision"] == precision
        for dataset in load_benchmark(BENCHMARK).experts:  # routing skips empty indexes
            docs = [
                {"id": d["_id"], "title": d["title"], "text": d["text"] or d["_id"]}
                for d in load_corpus(dataset.directory)[:2]
            ]
            put = client.put(
                f"/admin/experts/{dataset.name}/documents", headers=AUTH, json={"documents": docs}
            )
            assert put.status_code == 200, put.text
        routed = set()
        for domain, query in queries:
            response = client.post("/v1/search", json={"query": query, "k": 3})
            assert response.status_code == 200, (domain, response.text)
            routed.add(response.json()["routing"]["expert"])
        assert len(routed) >= 5, routed  # the router really spreads them over experts
        one_pass = client.app.state.ctx.encoder.stats.one_pass_rows
        assert one_pass > 0 or "one_pass_lora" in degraded
        experts = client.get("/v1/experts").json()["experts"]
        assert all(e["one_pass"] for e in experts if e["resident"])  # layers 4-5, routed at 4
