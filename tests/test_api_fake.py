"""The API and service end to end on the fake encoder: the fast tier, no model, no torch.

The same routes, services, batchers, registry, FAISS indexes and SQLite stores as in
production; only the encoder is the deterministic stand-in (same contract). What depends on
the real model's semantics stays in the slow tier (test_api.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.helpers import AUTH, register, write_lora

AERO = ["wing lift drag", "supersonic shock airfoil", "wing boundary layer"]
CODE = ["python sort list", "python read file", "python string reverse"]
AERO_DOCS = [
    {"id": "a1", "title": "Wings", "text": "wing lift and drag at high speed"},
    {"id": "a2", "title": "Shocks", "text": "supersonic shock on an airfoil"},
]
CODE_DOCS = [
    {"id": "c1", "title": "sort", "text": "python sort a list", "metadata": {"lang": "python"}},
    {"id": "c2", "title": "reverse", "text": "python reverse a string"},
]


def populate(client: TestClient, lora_a: Path, lora_b: Path) -> None:
    assert register(client, "aero", lora_a, AERO).status_code == 201
    assert register(client, "code", lora_b, CODE).status_code == 201
    for name, docs in (("aero", AERO_DOCS), ("code", CODE_DOCS)):
        response = client.put(
            f"/admin/experts/{name}/documents", headers=AUTH, json={"documents": docs}
        )
        assert response.json() == {"inserted": 2, "updated": 0}


def test_register_upload_search_delete_restart(fake_settings, lora_a, lora_b) -> None:
    with TestClient(create_app(fake_settings)) as client:
        populate(client, lora_a, lora_b)
        body = client.post("/v1/search", json={"query": "python sort", "k": 2}).json()
        assert body["routing"]["expert"] == "code" and not body["routing"]["fallback"]
        assert [h["id"] for h in body["hits"]] == ["c1", "c2"]
        assert body["hits"][0]["metadata"] == {"lang": "python"}
        assert {h["expert"] for h in body["hits"]} == {"code"}
        # The vector searched is the routed expert's, the document's the base model's: the
        # hit's score is their cosine.
        query = client.post("/v1/embeddings", json={"input": "python sort"}).json()["data"][0]
        assert query["expert"] == "code"
        doc_text = "sort python sort a list"  # c1 as indexed: title, then text
        body_doc = {"input": doc_text, "model": "base"}
        doc = client.post("/v1/embeddings", json=body_doc).json()["data"][0]["embedding"]
        expected = float(np.dot(query["embedding"], doc))
        assert body["hits"][0]["dense_score"] == pytest.approx(expected, abs=1e-5)
        listing = {e["name"]: e for e in client.get("/v1/experts").json()["experts"]}
        assert listing["code"]["documents"] == 2 and listing["aero"]["pilot_count"] == 3
        assert listing["code"]["resident"] and listing["code"]["resident_bytes"] > 0
        assert client.get("/readyz").json() == {
            "status": "ready",
            "experts": 2,
            "degraded": {},
            "precision": {"queries": "fp32", "documents": "fp32"},
        }

    with TestClient(create_app(fake_settings)) as client:  # restart: all of it is back
        hits = client.post("/v1/search", json={"query": "supersonic shock"}).json()["hits"]
        assert hits[0]["id"] == "a2"
        assert hits[0]["lexical_score"] > 0 and hits[0]["dense_score"] is not None
        lexical = {"query": "supersonic shock", "mode": "lexical", "expert": "base"}
        assert [h["id"] for h in client.post("/v1/search", json=lexical).json()["hits"]] == ["a2"]
        assert client.delete("/admin/experts/aero", headers=AUTH).status_code == 204
        assert client.post("/v1/search", json=lexical).json()["hits"] == []
        body = client.post("/v1/search", json={"query": "supersonic shock", "k": 10}).json()
        assert "aero" not in body["routing"]["scores"]
        assert all(h["index"] != "aero" for h in body["hits"])
        missing = client.post("/v1/search", json={"query": "x", "expert": "aero"})
        assert missing.status_code == 404
    assert not (fake_settings.experts_dir / "aero").exists()


def test_search_options_embeddings_and_fallback(fake_settings, lora_a, lora_b) -> None:
    fake_settings.router_fallback_threshold = 0.2  # unrelated words: cosine ~0, falls back
    with TestClient(create_app(fake_settings)) as fake_client:
        _search_options_embeddings_and_fallback(fake_client, lora_a, lora_b)


def _search_options_embeddings_and_fallback(fake_client: TestClient, lora_a, lora_b) -> None:
    populate(fake_client, lora_a, lora_b)
    query = "python sort list"
    pinned = fake_client.post("/v1/search", json={"query": query, "index": "aero"}).json()
    assert {h["index"] for h in pinned["hits"]} == {"aero"}
    assert pinned["hits"][0]["expert"] == "code"
    body = {"query": query, "top_experts": 2, "mode": "dense"}
    fused = fake_client.post("/v1/search", json=body).json()
    assert {h["index"] for h in fused["hits"]} == {"aero", "code"}
    assert fused["hits"][0]["score"] == pytest.approx(1 / 61)  # RRF of two lists
    base = fake_client.post("/v1/search", json={"query": query, "expert": "base"}).json()
    assert len(base["hits"]) == 4 and base["hits"][0]["expert"] == "base"
    batch = fake_client.post(
        "/v1/search/batch", json={"queries": [query, "supersonic airfoil"], "k": 1}
    ).json()
    assert [r["routing"]["expert"] for r in batch] == ["code", "aero"]
    routed = fake_client.post("/v1/embeddings", json={"input": [query]}).json()["data"][0]
    as_code = fake_client.post("/v1/embeddings", json={"input": query, "model": "code"}).json()
    as_base = fake_client.post("/v1/embeddings", json={"input": query, "model": "base"}).json()
    assert np.allclose(routed["embedding"], as_code["data"][0]["embedding"], atol=1e-6)
    assert not np.allclose(routed["embedding"], as_base["data"][0]["embedding"], atol=1e-3)
    unrelated = fake_client.post("/v1/search", json={"query": "zebra xylophone"}).json()
    assert unrelated["routing"]["fallback"] and unrelated["routing"]["expert"] == "base"


def test_search_modes_and_fusion_weight(fake_settings, lora_a, lora_b) -> None:
    with TestClient(create_app(fake_settings)) as client:
        populate(client, lora_a, lora_b)
        query = {"query": "python reverse string", "expert": "code", "k": 2}
        dense = client.post("/v1/search", json={**query, "mode": "dense"}).json()["hits"]
        assert all(h["dense_score"] == h["score"] and "lexical_score" not in h for h in dense)
        lexical = client.post("/v1/search", json={**query, "mode": "lexical"}).json()["hits"]
        assert lexical[0]["id"] == "c2" and lexical[0]["score"] == lexical[0]["lexical_score"]
        assert lexical[0]["text"] == "python reverse a string"  # text fetched after fusion
        hybrid = client.post("/v1/search", json=query).json()["hits"]
        assert hybrid[0]["id"] == "c2" and 0 < hybrid[0]["score"] <= 1.0
        rrf = client.post("/v1/search", json={**query, "fusion": "rrf"}).json()["hits"]
        assert rrf[0]["score"] <= 2 / 61 + 1e-9
        bad = client.post("/v1/search", json={**query, "mode": "sparse"})
        assert bad.status_code == 422

        url = "/admin/experts/code/fusion"
        assert client.put(url, json={"weight": 0.25}).status_code == 401
        assert client.put(url, headers=AUTH, json={"weight": 1.5}).status_code == 422
        body = client.put(url, headers=AUTH, json={"weight": 0.0}).json()
        assert body["fusion_weight"] == 0.0
        # Weight 0: the hybrid order is the lexical order.
        only_lexical = client.post("/v1/search", json=query).json()["hits"]
        assert [h["id"] for h in only_lexical] == [h["id"] for h in lexical]
        assert (
            client.put("/admin/experts/nope/fusion", headers=AUTH, json={"weight": 0.5}).status_code
            == 404
        )
    with TestClient(create_app(fake_settings)) as client:  # persisted in expert.json
        assert client.get("/v1/experts/code").json()["fusion_weight"] == 0.0
        client.put("/admin/experts/code/fusion", headers=AUTH, json={"weight": None})
        assert client.get("/v1/experts/code").json().get("fusion_weight") is None


def test_identity_adapter_changes_nothing(fake_client: TestClient, adapters_root: str) -> None:
    same = write_lora(3, adapters_root, identity=True)
    assert register(fake_client, "same", same, CODE).status_code == 201
    as_same = fake_client.post("/v1/embeddings", json={"input": "x y", "model": "same"}).json()
    as_base = fake_client.post("/v1/embeddings", json={"input": "x y", "model": "base"}).json()
    assert np.allclose(as_same["data"][0]["embedding"], as_base["data"][0]["embedding"])


def test_metrics_count_routing_and_searches(fake_client: TestClient, lora_a, lora_b) -> None:
    populate(fake_client, lora_a, lora_b)
    fake_client.post("/v1/search", json={"query": "python sort"})
    text = fake_client.get("/metrics").text
    assert 'rr_routing_decisions_total{expert="code"} 1.0' in text
    assert 'rr_index_documents{index="aero"} 2.0' in text
    assert 'rr_shortcut_degraded{shortcut="one_pass_lora"} 0.0' in text
    held = fake_client.get("/v1/experts/code").json()["resident_bytes"]
    prefix = 'rr_expert_resident_bytes{expert="code"} '
    (line,) = [x for x in text.splitlines() if x.startswith(prefix)]
    assert held > 0 and float(line.removeprefix(prefix)) == held


def test_fast_tier_never_imports_torch(tmp_path: Path, lora_a: Path) -> None:
    """The fake backend's whole request path, in a fresh interpreter, loads no torch."""
    script = f"""
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from app.api.app import create_app
from app.settings import Settings
from tests.helpers import AUTH, TOKEN, adapter_files
settings = Settings(encoder_backend="fake", experts_dir={str(tmp_path / "e")!r},
                    indexes_dir={str(tmp_path / "i")!r}, datasets_dir=None,
                    admin_token=TOKEN)
with TestClient(create_app(settings)) as client:
    r = client.post("/admin/experts", headers=AUTH, data={{"name": "x",
        "pilot_queries": json.dumps(["a b"])}}, files=adapter_files(Path({str(lora_a)!r})))
    assert r.status_code == 201, r.text
    assert client.post("/v1/search", json={{"query": "a b"}}).status_code == 200
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(heavy)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_docs_work_offline(fake_client: TestClient) -> None:
    """/docs and /redoc load their JavaScript and CSS from this server, never a CDN."""
    import re

    for page in ("/docs", "/redoc"):
        html = fake_client.get(page)
        assert html.status_code == 200
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
        assert assets and all(a.startswith("/") for a in assets), assets
        for asset in assets:
            assert fake_client.get(asset).status_code == 200, asset
    assert "/openapi.json" in fake_client.get("/docs").text


def test_playground_is_served_from_the_package(fake_client: TestClient) -> None:
    page = fake_client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/playground/app.js", "/playground/style.css"):
        assert asset in page.text and fake_client.get(asset).status_code == 200
    assert "http" not in page.text.split("<body>")[1]  # nothing from another host


def test_metadata_filters_on_every_mode(fake_client: TestClient, lora_a, lora_b) -> None:
    populate(fake_client, lora_a, lora_b)
    dated = [
        {"id": f"p{i}", "text": f"python list recipe {i}", "metadata": {"year": 2000 + i}}
        for i in range(12)
    ]
    fake_client.put("/admin/experts/code/documents", headers=AUTH, json={"documents": dated})
    recent = {"year": {"gte": 2008}}
    for mode in ("hybrid", "dense", "lexical"):
        body = {"query": "python list", "expert": "code", "k": 3, "mode": mode}
        hits = fake_client.post("/v1/search", json={**body, "filter": recent}).json()["hits"]
        # k matching hits come back though most documents (and most top hits) do not match
        assert len(hits) == 3 and all(h["metadata"]["year"] >= 2008 for h in hits), mode
        query = body.pop("query")
        batch = {**body, "queries": [query, query], "filter": {"lang": "python"}}
        [one, two] = fake_client.post("/v1/search/batch", json=batch).json()
        assert [h["id"] for h in one["hits"]] == [h["id"] for h in two["hits"]] == ["c1"], mode
    routed = {"query": "python sort", "top_experts": 2, "filter": {"year": {"lt": 2001}}}
    assert [h["id"] for h in fake_client.post("/v1/search", json=routed).json()["hits"]] == ["p0"]
    nothing = {"query": "python sort", "filter": {"year": 1999}}
    assert fake_client.post("/v1/search", json=nothing).json()["hits"] == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"year": {"gte": "yesterday"}}, "filter: field 'year': 'gte' takes a number or an ISO"),
        ({"year": {"near": 3}}, "filter: field 'year': unknown operator 'near'"),
        ({"source": {"in": []}}, "filter: field 'source': 'in' takes a non-empty list"),
        ("lang=en", "filter: Input should be a valid dictionary"),
    ],
)
def test_malformed_filters_are_422_in_plain_words(
    fake_client: TestClient, bad: object, message: str
) -> None:
    response = fake_client.post("/v1/search", json={"query": "x", "filter": bad})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(message)


def test_the_schema_documents_filters(fake_client: TestClient) -> None:
    schemas = fake_client.get("/openapi.json").json()["components"]["schemas"]
    choices = schemas["SearchRequest"]["properties"]["filter"]["anyOf"]
    [described] = [s for s in choices if s.get("type") == "object"]
    condition = described["additionalProperties"]["anyOf"][-1]
    assert set(condition["properties"]) == {"eq", "in", "gt", "gte", "lt", "lte"}
    assert "gte" in described["description"]


def test_an_expert_whose_gate_is_off_serves_base_vectors_on_its_own_index(
    fake_settings, lora_a, lora_b
) -> None:
    from app.experts.artifacts import read_expert, update_spec

    with TestClient(create_app(fake_settings)) as client:
        populate(client, lora_a, lora_b)
    code = read_expert(fake_settings.experts_dir / "code")
    update_spec(code, extra={**code.spec.extra, "gate": {"use_adapter": False}})
    with TestClient(create_app(fake_settings)) as client:
        listed = {e["name"]: e for e in client.get("/v1/experts").json()["experts"]}
        assert listed["code"]["use_adapter"] is False and listed["aero"]["use_adapter"] is True
        query = "python sort list"
        as_code = client.post("/v1/embeddings", json={"input": query, "model": "code"}).json()
        as_base = client.post("/v1/embeddings", json={"input": query, "model": "base"}).json()
        as_aero = client.post("/v1/embeddings", json={"input": query, "model": "aero"}).json()
        base = np.array(as_base["data"][0]["embedding"])
        assert np.allclose(as_code["data"][0]["embedding"], base, atol=1e-6)
        assert not np.allclose(as_aero["data"][0]["embedding"], base, atol=1e-3)
        # Routing still picks the expert's index; the query vector there is the base one.
        body = client.post("/v1/search", json={"query": query, "mode": "dense"}).json()
        assert body["routing"]["expert"] == "code"
        assert {h["index"] for h in body["hits"]} == {"code"}
        doc = client.post(
            "/v1/embeddings", json={"input": "sort python sort a list", "model": "base"}
        )
        expected = float(np.dot(base, doc.json()["data"][0]["embedding"]))
        [top] = [h for h in body["hits"] if h["id"] == "c1"]
        assert top["dense_score"] == pytest.approx(expected, abs=1e-5)
