"""End to end over HTTP with the real encoder, real LoRA adapters and real FAISS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from tests.helpers import AUTH, adapter_files, register

pytestmark = pytest.mark.slow

AERO_QUERIES = [
    "lift and drag of a swept wing at high mach number",
    "boundary layer transition on an aircraft wing",
    "shock waves in supersonic flow over an airfoil",
]
CODE_QUERIES = [
    "python read a csv file into a list",
    "how to sort a dictionary by value in python",
    "python function to reverse a string",
]
AERO_DOCS = [
    {
        "id": "a1",
        "title": "Swept wings",
        "text": "Wing sweep delays compressibility drag rise at transonic mach numbers.",
    },
    {
        "id": "a2",
        "title": "Laminar flow",
        "text": "Boundary layer transition from laminar to turbulent flow on airfoils.",
    },
]
CODE_DOCS = [
    {
        "id": "c1",
        "title": "sorted",
        "text": "def sort_by_value(d): return dict(sorted(d.items(), key=lambda kv: kv[1]))",
        "metadata": {"lang": "python"},
    },
    {
        "id": "c2",
        "title": "reverse",
        "text": "def reverse(s): return s[::-1]  # reverse a string in python",
    },
]


def populate(client: TestClient, adapter_a: Path, adapter_b: Path) -> None:
    assert register(client, "aero", adapter_a, AERO_QUERIES).status_code == 201
    assert register(client, "code", adapter_b, CODE_QUERIES).status_code == 201
    response = client.put(
        "/admin/experts/aero/documents", headers=AUTH, json={"documents": AERO_DOCS}
    )
    assert response.json() == {"inserted": 2, "updated": 0}
    response = client.put(
        "/admin/experts/code/documents", headers=AUTH, json={"documents": CODE_DOCS}
    )
    assert response.status_code == 200


def test_register_upload_search_delete_restart(settings, adapter_a: Path, adapter_b: Path) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/experts").json() == {"experts": []}
        populate(client, adapter_a, adapter_b)

        response = client.post("/v1/search", json={"query": "python sort dict by value", "k": 2})
        assert response.status_code == 200
        body = response.json()
        assert body["routing"]["expert"] == "code" and not body["routing"]["fallback"]
        assert set(body["routing"]["scores"]) == {"aero", "code"}
        assert body["hits"][0]["id"] == "c1" and body["hits"][0]["metadata"] == {"lang": "python"}
        assert body["hits"][0]["expert"] == "code" and body["hits"][0]["index"] == "code"
        assert set(body["timing_ms"]) >= {"route", "encode", "search", "total"}

        route = client.post("/v1/route", json={"query": "supersonic airfoil shock"}).json()
        assert route["expert"] == "aero"

        listing = {e["name"]: e for e in client.get("/v1/experts").json()["experts"]}
        # The pilot set: one routing-feature row per example query.
        assert listing["code"]["documents"] == 2 and listing["code"]["pilot_count"] == 3
        assert client.get("/v1/experts/aero").json()["description"] == "aero expert"

        # Update in place: same id replaces the document.
        changed = [
            {"id": "c2", "text": "def reverse_words(s): return ' '.join(reversed(s.split()))"}
        ]
        assert client.put(
            "/admin/experts/code/documents", headers=AUTH, json={"documents": changed}
        ).json() == {"inserted": 0, "updated": 1}

    # Restart on the same directories: experts and documents are back.
    with TestClient(create_app(settings)) as client:
        names = [e["name"] for e in client.get("/v1/experts").json()["experts"]]
        assert names == ["aero", "code"]
        hits = client.post(
            "/v1/search", json={"query": "reverse the words of a sentence", "expert": "code"}
        ).json()["hits"]
        assert hits[0]["id"] == "c2" and "reverse_words" in hits[0]["text"]
        assert client.get("/readyz").status_code == 200

        assert client.delete("/admin/experts/code", headers=AUTH).status_code == 204
        body = client.post(
            "/v1/search", json={"query": "python sort dict by value", "k": 10}
        ).json()
        assert body["routing"]["expert"] != "code" and "code" not in body["routing"]["scores"]
        assert all(h["index"] != "code" for h in body["hits"])
        assert client.post("/v1/search", json={"query": "x", "expert": "code"}).status_code == 404

    with TestClient(create_app(settings)) as client:
        assert [e["name"] for e in client.get("/v1/experts").json()["experts"]] == ["aero"]
        hits = client.post(
            "/v1/search", json={"query": "python sort dict by value", "k": 10}
        ).json()["hits"]
        assert {h["id"] for h in hits} <= {"a1", "a2"}
    assert (
        not (settings.experts_dir / "code").exists()
        and not (settings.indexes_dir / "code").exists()
    )


def test_search_modes_and_embeddings(client: TestClient, adapter_a: Path, adapter_b: Path) -> None:
    populate(client, adapter_a, adapter_b)
    query = "python sort dict by value"

    # Pinned index (the paper's setting): routed encoder, the named collection.
    pinned = client.post("/v1/search", json={"query": query, "index": "aero"}).json()
    assert {h["index"] for h in pinned["hits"]} == {"aero"}
    assert pinned["hits"][0]["expert"] == "code"

    # top_experts=2 fuses both experts' dense lists by reciprocal rank.
    options = {"query": query, "top_experts": 2, "k": 4, "mode": "dense"}
    fused = client.post("/v1/search", json=options).json()
    assert {h["index"] for h in fused["hits"]} == {"aero", "code"}
    assert fused["hits"][0]["id"] == "c1" and fused["hits"][0]["score"] == pytest.approx(1 / 61)

    # base: base encoder over every index, merged by cosine.
    base = client.post(
        "/v1/search", json={"query": query, "expert": "base", "include_text": False}
    ).json()
    assert len(base["hits"]) == 4 and "text" not in base["hits"][0]
    scores = [h["score"] for h in base["hits"]]
    assert scores == sorted(scores, reverse=True)

    batch = client.post(
        "/v1/search/batch", json={"queries": [query, "wing boundary layer"], "k": 1}
    ).json()
    assert [r["routing"]["expert"] for r in batch] == ["code", "aero"]

    emb = client.post("/v1/embeddings", json={"input": [query, "airfoil shock wave"]}).json()
    assert emb["object"] == "list" and [d["expert"] for d in emb["data"]] == ["code", "aero"]
    assert emb["usage"]["prompt_tokens"] > 0
    vectors = np.array([d["embedding"] for d in emb["data"]])
    assert vectors.shape == (2, 384)
    as_code = client.post("/v1/embeddings", json={"input": query, "model": "code"}).json()
    as_base = client.post("/v1/embeddings", json={"input": query, "model": "base"}).json()
    assert np.allclose(as_code["data"][0]["embedding"], vectors[0], atol=1e-5)
    assert not np.allclose(as_base["data"][0]["embedding"], vectors[0], atol=1e-3)


def test_fallback_searches_every_index(settings, adapter_a: Path, adapter_b: Path) -> None:
    settings.router_fallback_threshold = 0.99  # nothing is that close: always fall back
    with TestClient(create_app(settings)) as client:
        populate(client, adapter_a, adapter_b)
        body = client.post("/v1/search", json={"query": "python sort dict by value", "k": 4}).json()
        assert body["routing"]["fallback"] and body["routing"]["expert"] == "base"
        assert {h["index"] for h in body["hits"]} == {"aero", "code"}
        assert {h["expert"] for h in body["hits"]} == {"base"}


def test_register_with_npy_pilots(client: TestClient, adapter_a: Path) -> None:
    from tests.helpers import npy_bytes

    pilots = np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32)
    files = adapter_files(adapter_a) | {
        "pilots": ("p.npy", npy_bytes(pilots), "application/octet-stream")
    }
    response = client.post("/admin/experts", headers=AUTH, data={"name": "npy-pilots"}, files=files)
    assert response.status_code == 201 and response.json()["pilot_count"] == 3
    assert response.json()["resident"] is True


def test_metrics_and_request_ids(client: TestClient, adapter_a: Path, adapter_b: Path) -> None:
    populate(client, adapter_a, adapter_b)
    response = client.post(
        "/v1/search",
        json={"query": "python sort dict by value"},
        headers={"X-Request-ID": "abc-123"},
    )
    assert response.headers["x-request-id"] == "abc-123"
    client.post("/v1/search", json={"query": "python sort dict by value"})  # cached embedding
    text = client.get("/metrics").text
    assert 'rr_routing_decisions_total{expert="code"} 2.0' in text
    assert 'rr_search_queries_total{expert="code"} 2.0' in text
    assert 'rr_http_requests_total{method="POST",route="/v1/search",status="200"} 2.0' in text
    assert 'rr_index_documents{index="aero"} 2.0' in text
    replicas = len(client.app.state.ctx.encoder)  # each model worker loads its own copy
    assert f"rr_adapter_loads_total {2.0 * replicas}" in text
    assert 'rr_cache_hits_total{level="local"}' in text and "rr_queue_depth" in text


def test_identity_expert_reuses_the_routing_pass(
    client: TestClient, adapters_root: str, adapter_a: Path
) -> None:
    """An expert whose adapter changes nothing (training kept the base) is served as the
    base rows of the routed pass: no adapter load, same vectors."""
    from tests.helpers import make_adapter

    untrained = make_adapter(3, adapters_root, identity=True)
    assert register(client, "same", untrained, CODE_QUERIES).status_code == 201
    assert register(client, "aero", adapter_a, AERO_QUERIES).status_code == 201
    ctx = client.app.state.ctx
    loads = ctx.encoder.stats.loads
    query = "python sort dict by value"
    routed = client.post("/v1/embeddings", json={"input": query}).json()["data"][0]
    as_base = client.post("/v1/embeddings", json={"input": query, "model": "base"}).json()
    assert routed["expert"] == "same"
    assert np.allclose(routed["embedding"], as_base["data"][0]["embedding"], atol=1e-6)
    document = {"documents": [{"id": "d1", "text": "read a csv file with pandas"}]}
    assert client.put("/admin/experts/same/documents", headers=AUTH, json=document).is_success
    rows = ctx.encoder_batcher.stats.rows
    expert_rows = (ctx.encoder.stats.one_pass_rows, ctx.encoder.stats.exact_rows)
    body = client.post("/v1/search", json={"query": "python read a csv file"}).json()
    assert body["routing"]["expert"] == "same"  # (an empty index would be passed over)
    assert ctx.encoder_batcher.stats.rows == rows + 1  # one routed pass
    # ... in which the identity expert's row was a base row: no expert row ran.
    assert (ctx.encoder.stats.one_pass_rows, ctx.encoder.stats.exact_rows) == expert_rows
    assert ctx.encoder.stats.loads == loads  # (loaded once at registration, to check it)


def test_top_layer_expert_is_served_in_the_routing_pass(
    client: TestClient, adapters_root: str, adapter_a: Path
) -> None:
    """A routed query runs once: its expert's layers continue from the layers that routed
    it, and the vector is the one a full pass of that expert gives. /v1/experts says which
    experts are served so (one adapting every layer is not)."""
    from app.encoder import LoraEncoder
    from tests.helpers import make_adapter

    top = make_adapter(7, adapters_root, layers=(4, 5))
    assert register(client, "code", top, CODE_QUERIES).status_code == 201
    assert register(client, "aero", adapter_a, AERO_QUERIES).status_code == 201
    query = "python sort dict by value"
    stats = client.app.state.ctx.encoder.stats
    before = (stats.one_pass_rows, stats.exact_rows)
    routed = client.post("/v1/embeddings", json={"input": query}).json()["data"][0]
    assert routed["expert"] == "code"
    [reference] = LoraEncoder(lambda name: top).encode([query], ["code"])
    assert np.abs(np.array(routed["embedding"]) - reference).max() <= 1e-5
    stats = client.app.state.ctx.encoder.stats
    assert (stats.one_pass_rows, stats.exact_rows) == (before[0] + 1, before[1])
    assert f"rr_expert_rows_one_pass_total {before[0] + 1.0}" in client.get("/metrics").text
    assert client.post("/v1/embeddings", json={"input": "lift of a swept wing"}).status_code == 200
    served = {e["name"]: e["one_pass"] for e in client.get("/v1/experts").json()["experts"]}
    assert served == {"code": True, "aero": False}


def test_adapter_whose_outputs_overflow_is_refused(
    client: TestClient, adapter_a: Path, tmp_path: Path
) -> None:
    """Finite weights scaled by 1e30 overflow to NaN embeddings: refused at registration
    (422), instead of serving null vectors and empty searches."""
    import shutil

    from safetensors.numpy import load_file, save_file

    huge = tmp_path / "huge"
    shutil.copytree(adapter_a, huge)
    tensors = load_file(str(adapter_a / "adapter_model.safetensors"))
    save_file(
        {k: v * np.float32(1e30) for k, v in tensors.items()},
        str(huge / "adapter_model.safetensors"),
    )
    response = register(client, "huge", huge, AERO_QUERIES)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_adapter"
    assert "non-finite" in response.json()["error"]["message"]
    assert client.get("/v1/experts/huge").status_code == 404
    assert client.post("/v1/search", json={"query": "lift of a wing"}).status_code == 200


def test_long_inputs_with_the_real_tokenizer(settings) -> None:
    """MiniLM's WordPiece counts: the input is cut at 256 tokens unless truncate is off."""
    settings.max_query_chars = 100_000
    long_text = "supersonic wing flutter " * 200
    with TestClient(create_app(settings)) as client:
        cut = client.post("/v1/embeddings", json={"input": long_text, "model": "base"})
        assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 256
        refused = client.post(
            "/v1/embeddings", json={"input": long_text, "model": "base", "truncate": False}
        )
        assert refused.status_code == 422
        message = refused.json()["error"]["message"]
        assert message.startswith("the input is ") and "over this model's limit of 256" in message
        assert int(message.split()[3]) > 256
