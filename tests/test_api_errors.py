"""Every client mistake gets a clear 4xx in one error shape, never a 500."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.helpers import AUTH, TOKEN, adapter_files


@pytest.fixture(scope="module")
def api(tmp_path_factory, lora_a: Path):
    """On the fake encoder (fast tier): these are the API's checks, not the model's."""
    root = tmp_path_factory.mktemp("errors")
    settings = Settings(
        encoder_backend="fake",
        experts_dir=root / "experts",
        indexes_dir=root / "indexes",
        datasets_dir=None,
        admin_token=TOKEN,
        max_request_bytes=1024 * 1024,
        max_query_chars=500,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post(
            "/admin/experts",
            headers=AUTH,
            data={"name": "sci", "pilot_queries": json.dumps(["protein folding"])},
            files=adapter_files(lora_a),
        )
        assert response.status_code == 201
        yield client


def assert_error(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    "payload",
    [
        {"query": ""},
        {"query": "   \n\t"},
        {"query": "x" * 501},
        {"query": "ok", "k": 0},
        {"query": "ok", "k": 1001},
        {"query": "ok", "k": "many"},
        {"query": "ok", "top_experts": 0},
        {"query": "ok", "unknown_option": 1},
        {},
    ],
    ids=[
        "empty",
        "whitespace",
        "too-long",
        "k-zero",
        "k-too-big",
        "k-not-int",
        "top-zero",
        "extra-field",
        "missing-query",
    ],
)
def test_bad_search_input_is_422(api: TestClient, payload: dict) -> None:
    assert_error(api.post("/v1/search", json=payload), 422)


def test_malformed_json_is_422(api: TestClient) -> None:
    response = api.post(
        "/v1/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "invalid_request")


def test_unknown_expert_or_index_is_404(api: TestClient) -> None:
    assert_error(api.post("/v1/search", json={"query": "q", "expert": "nope"}), 404, "not_found")
    assert_error(api.post("/v1/search", json={"query": "q", "index": "nope"}), 404, "not_found")
    assert_error(api.post("/v1/embeddings", json={"input": "q", "model": "nope"}), 404)
    assert_error(api.get("/v1/experts/nope"), 404)
    assert_error(api.get("/no/such/route"), 404)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "UPPER", "-dash-first", "x" * 65, ""])
def test_path_like_or_invalid_names_are_422(api: TestClient, name: str, lora_a: Path) -> None:
    assert_error(api.post("/v1/search", json={"query": "q", "expert": name}), 422)
    response = api.post(
        "/admin/experts",
        headers=AUTH,
        data={"name": name, "pilot_queries": '["q"]'},
        files=adapter_files(lora_a),
    )
    assert_error(response, 422)


def test_path_traversal_in_url_is_refused(api: TestClient) -> None:
    assert_error(api.get("/v1/experts/..etc"), 422)
    assert_error(api.delete("/admin/experts/..sci", headers=AUTH), 422)
    # An encoded slash splits the segment: no route matches, nothing is touched.
    assert_error(api.delete("/admin/experts/..%2Fsci", headers=AUTH), 404)
    assert api.get("/v1/experts/sci").status_code == 200


def test_duplicate_expert_is_409(api: TestClient, lora_a: Path) -> None:
    response = api.post(
        "/admin/experts",
        headers=AUTH,
        data={"name": "sci", "pilot_queries": '["q"]'},
        files=adapter_files(lora_a),
    )
    assert_error(response, 409, "conflict")


def test_reserved_name_and_missing_pilots_are_422(api: TestClient, lora_a: Path) -> None:
    files = adapter_files(lora_a)
    for form in (
        {"name": "base", "pilot_queries": '["q"]'},  # reserved name
        {"name": "nopilots"},
        {"name": "badpilots", "pilot_queries": "[1, 2"},  # not JSON
    ):
        assert_error(api.post("/admin/experts", headers=AUTH, data=form, files=files), 422)


def test_malformed_and_mismatched_adapters_are_422(api: TestClient, lora_a: Path) -> None:
    files = adapter_files(lora_a)
    garbage = files | {"adapter_config": ("adapter_config.json", b"not json", "application/json")}
    config = json.loads(files["adapter_config"][1]) | {"r": 16}
    mismatched = files | {
        "adapter_config": ("adapter_config.json", json.dumps(config).encode(), "application/json")
    }
    truncated = files | {
        "adapter_model": (
            "adapter_model.safetensors",
            files["adapter_model"][1][:100],
            "application/octet-stream",
        )
    }
    for bad in (garbage, mismatched, truncated):
        response = api.post(
            "/admin/experts",
            headers=AUTH,
            data={"name": "bad", "pilot_queries": '["q"]'},
            files=bad,
        )
        assert_error(response, 422, "invalid_adapter")
    assert "bad" not in [e["name"] for e in api.get("/v1/experts").json()["experts"]]


def test_pickle_adapter_is_422(api: TestClient, lora_a: Path) -> None:
    files = adapter_files(lora_a)
    as_bin = files | {
        "adapter_model": ("adapter_model.bin", pickle.dumps({"w": 1}), "application/octet-stream")
    }
    disguised = files | {
        "adapter_model": (
            "adapter_model.safetensors",
            pickle.dumps({"w": 1}),
            "application/octet-stream",
        )
    }
    for bad in (as_bin, disguised):
        response = api.post(
            "/admin/experts",
            headers=AUTH,
            data={"name": "pickled", "pilot_queries": '["q"]'},
            files=bad,
        )
        assert_error(response, 422, "invalid_adapter")


def test_admin_token_is_required(api: TestClient) -> None:
    assert_error(api.delete("/admin/experts/sci"), 401, "unauthorized")
    assert_error(api.delete("/admin/experts/sci", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(api.delete("/admin/experts/sci", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    docs = {"documents": [{"id": "1", "text": "t"}]}
    assert_error(api.put("/admin/experts/sci/documents", json=docs), 401)
    assert api.get("/v1/experts/sci").status_code == 200  # still there


def test_admin_disabled_without_token(tmp_path: Path) -> None:
    settings = Settings(
        encoder_backend="fake",
        experts_dir=tmp_path / "e",
        indexes_dir=tmp_path / "i",
        datasets_dir=None,
        admin_token=None,
    )
    with TestClient(create_app(settings)) as client:
        assert_error(client.delete("/admin/experts/x", headers=AUTH), 503, "admin_disabled")
        assert client.post("/v1/search", json={"query": "still serves"}).status_code == 200


def test_oversized_body_is_413(api: TestClient) -> None:
    big = {"documents": [{"id": "1", "text": "x" * (2 * 1024 * 1024)}]}
    assert_error(
        api.put("/admin/experts/sci/documents", headers=AUTH, json=big), 413, "payload_too_large"
    )

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b"x" * 65536

    response = api.post(
        "/v1/search", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413)


def test_document_errors(api: TestClient) -> None:
    def put(expert: str, documents: list[dict]):
        return api.put(
            f"/admin/experts/{expert}/documents", headers=AUTH, json={"documents": documents}
        )

    assert_error(put("nope", [{"id": "1", "text": "t"}]), 404)
    for documents in (
        [],
        [{"id": "", "text": "t"}],
        [{"id": "1", "text": ""}],
        [{"id": "x" * 513, "text": "t"}],
        [{"id": "1", "title": "x" * 10_001}],
    ):
        assert_error(put("sci", documents), 422)
    assert_error(api.delete("/admin/experts/sci/documents/missing", headers=AUTH), 404)
    assert_error(api.delete("/admin/experts/nope", headers=AUTH), 404)


def test_embeddings_bad_input(api: TestClient) -> None:
    assert_error(api.post("/v1/embeddings", json={"input": []}), 422)
    assert_error(api.post("/v1/embeddings", json={"input": ["ok", ""]}), 422)
    assert_error(api.post("/v1/embeddings", json={"input": "ok", "encoding_format": "int8"}), 422)
    assert_error(api.post("/v1/search/batch", json={"queries": []}), 422)


# -- text that is valid JSON but not UTF-8 (lone UTF-16 surrogates) ----------------------

SURROGATE = "\ud800"  # json.dumps writes it as the escape "\\ud800": valid JSON


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/search", {"query": f"wing {SURROGATE}"}),
        ("post", "/v1/search/batch", {"queries": ["fine", SURROGATE]}),
        ("post", "/v1/route", {"query": SURROGATE}),
        ("post", "/v1/embeddings", {"input": SURROGATE}),
        ("post", "/v1/embeddings", {"input": ["fine", f"x{SURROGATE}"]}),
        ("put", "/admin/experts/sci/documents", {"documents": [{"id": SURROGATE, "text": "t"}]}),
        ("put", "/admin/experts/sci/documents", {"documents": [{"id": "1", "title": SURROGATE}]}),
        ("put", "/admin/experts/sci/documents", {"documents": [{"id": "1", "text": SURROGATE}]}),
        (
            "put",
            "/admin/experts/sci/documents",
            {"documents": [{"id": "1", "text": "t", "metadata": {"k": SURROGATE}}]},
        ),
        (
            "put",
            "/admin/experts/sci/documents",
            {"documents": [{"id": "1", "text": "t", "metadata": {"a": [{SURROGATE: 1}]}}]},
        ),
    ],
)
def test_lone_surrogates_are_422_everywhere(api: TestClient, method: str, path: str, body):
    raw = json.dumps(body)  # ASCII JSON with "\ud800" escapes, as a hostile client sends it
    headers = AUTH | {"content-type": "application/json"}
    response = getattr(api, method)(path, headers=headers, content=raw)
    assert_error(response, 422, "invalid_request")  # not the 500 it was


def test_lone_surrogate_in_pilot_queries_is_422(api: TestClient, lora_a: Path) -> None:
    response = api.post(
        "/admin/experts",
        headers=AUTH,
        data={"name": "poison", "pilot_queries": json.dumps(["ok", SURROGATE])},
        files=adapter_files(lora_a),
    )
    assert_error(response, 422)
    assert api.get("/v1/experts/poison").status_code == 404


def test_a_stored_unencodable_document_never_fails_a_search(api: TestClient) -> None:
    """Stored before the edge refused such text (or written around the API): the search
    answers 200 with the text repaired."""
    from app.core.documents import Document

    ctx = api.app.state.ctx
    [vector] = ctx.encoder.encode(["poisoned protein folding"])
    poisoned = Document("poisoned", "protein folding", "", {"k": SURROGATE, SURROGATE: ["v"]})
    ctx.indexes.get("sci").upsert([poisoned], vector[None, :])
    response = api.post("/v1/search", json={"query": "protein folding", "expert": "sci"})
    assert response.status_code == 200
    [hit] = [h for h in response.json()["hits"] if h["id"] == "poisoned"]
    assert hit["metadata"] == {"k": "?", "?": ["v"]}
    ctx.indexes.get("sci").delete("poisoned")


def test_title_only_documents_are_accepted_empty_ones_named(api: TestClient) -> None:
    documents = [{"id": "t1", "title": "Title only"}, {"id": "t2", "text": "Text only"}]
    response = api.put("/admin/experts/sci/documents", headers=AUTH, json={"documents": documents})
    assert response.status_code == 200 and response.json()["inserted"] == 2
    empty = [{"id": "ok", "title": "fine"}, {"id": "empty", "title": " ", "text": ""}]
    response = api.put("/admin/experts/sci/documents", headers=AUTH, json={"documents": empty})
    assert_error(response, 422)
    assert "documents.1" in response.json()["error"]["message"]
    assert "title or text" in response.json()["error"]["message"]
    for doc_id in ("t1", "t2"):
        api.delete(f"/admin/experts/sci/documents/{doc_id}", headers=AUTH)


@pytest.mark.parametrize("k", [True, 2.5, "3"])
def test_k_must_be_an_integer(api: TestClient, k) -> None:
    assert_error(api.post("/v1/search", json={"query": "ok", "k": k}), 422)


def test_openai_sized_embedding_batches(api: TestClient) -> None:
    texts = [f"input number {i}" for i in range(1000)]  # langchain's default chunk_size
    response = api.post("/v1/embeddings", json={"input": texts})
    assert response.status_code == 200 and len(response.json()["data"]) == 1000


def test_precomputed_embeddings_are_stored_as_given_and_checked(api: TestClient) -> None:
    """A corpus encoded elsewhere loads without re-encoding; a vector of the wrong size, with
    NaN or not of unit length is refused (422) and nothing of its batch is stored."""
    rng = np.random.default_rng(3)
    vector = rng.normal(size=384)
    vector /= np.linalg.norm(vector)
    documents = [
        {"id": "pre", "text": "protein folding", "embedding": vector.tolist()},
        {"id": "plain", "text": "protein folding"},  # no vector: the gateway embeds it
    ]
    response = api.put("/admin/experts/sci/documents", headers=AUTH, json={"documents": documents})
    assert response.json() == {"inserted": 2, "updated": 0}
    body = {"query": "protein folding", "expert": "sci", "mode": "dense", "k": 50}
    hits = {h["id"]: h for h in api.post("/v1/search", json=body).json()["hits"]}
    query = api.post("/v1/embeddings", json={"input": "protein folding", "model": "sci"})
    expected = float(np.dot(query.json()["data"][0]["embedding"], vector))
    assert hits["pre"]["dense_score"] == pytest.approx(expected, abs=1e-4)
    assert hits["plain"]["dense_score"] != pytest.approx(expected, abs=1e-4)

    nan = vector.tolist()
    nan[5] = float("nan")
    for bad, message in (
        (vector[:100].tolist(), "384"),
        ((vector * 3).tolist(), "unit length"),
        (nan, "NaN"),
    ):
        docs = [{"id": "fresh", "text": "t"}, {"id": "bad", "text": "t", "embedding": bad}]
        raw = json.dumps({"documents": docs})  # NaN as JSON's NaN token, as Python writes it
        headers = AUTH | {"content-type": "application/json"}
        response = api.put("/admin/experts/sci/documents", headers=headers, content=raw)
        assert_error(response, 422)
        assert message in response.json()["error"]["message"]
        assert api.get("/v1/experts/sci").status_code == 200
    assert api.app.state.ctx.indexes.get("sci").get("fresh") is None
    for doc_id in ("pre", "plain"):
        api.delete(f"/admin/experts/sci/documents/{doc_id}", headers=AUTH)


def test_a_full_disk_is_507_and_writes_resume(api: TestClient) -> None:
    index = api.app.state.ctx.indexes.get("sci")
    pages = index._db.execute("PRAGMA page_count").fetchone()[0]
    index._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "disk is full"
    documents = [{"id": f"big{i}", "text": "word " * 20_000} for i in range(5)]
    try:
        response = api.put(
            "/admin/experts/sci/documents", headers=AUTH, json={"documents": documents}
        )
        assert_error(response, 507, "insufficient_storage")
        assert index.get("big0") is None and index.readable()
    finally:
        index._db.execute("PRAGMA max_page_count=1073741823")
    response = api.put("/admin/experts/sci/documents", headers=AUTH, json={"documents": documents})
    assert response.json() == {"inserted": 5, "updated": 0}
    for i in range(5):
        api.delete(f"/admin/experts/sci/documents/big{i}", headers=AUTH)


def test_405_lists_every_method_the_path_serves(api: TestClient) -> None:
    response = api.request("OPTIONS", "/admin/experts/sci/documents/d1", headers=AUTH)
    assert_error(response, 405)
    assert {"GET", "DELETE"} <= set(response.headers["allow"].split(", "))


def test_the_schema_states_what_the_server_enforces(api: TestClient) -> None:
    """Constraints and status codes a client (or a fuzzer) can read off /openapi.json."""
    spec = api.get("/openapi.json").json()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    upsert = paths["/admin/experts/{name}/documents"]["put"]
    assert {"400", "404", "413", "422", "507"} <= set(upsert["responses"])
    search = schemas["SearchRequest"]["properties"]
    assert search["query"]["minLength"] == 1 and search["k"]["maximum"] >= 1
    assert search["k"]["type"] == "integer"
    document = schemas["DocumentIn"]["properties"]
    assert document["id"]["maxLength"] == 512
    embedding = document["embedding"]["anyOf"][0]
    assert embedding["minItems"] == embedding["maxItems"] == 384
    name = next(p for p in upsert["parameters"] if p["name"] == "name")
    assert name["schema"]["pattern"]
    # Links a client (or schemathesis's stateful run) can follow.
    assert "GetDocument" in upsert["responses"]["200"]["links"]


def test_document_ids_with_slashes_can_be_read_and_deleted(api: TestClient) -> None:
    """BEIR ids such as FEVER's titles ("AC/DC") hold slashes."""
    documents = [{"id": "AC/DC", "text": "a band"}]
    api.put("/admin/experts/sci/documents", headers=AUTH, json={"documents": documents})
    response = api.get("/admin/experts/sci/documents/AC/DC", headers=AUTH)
    assert response.status_code == 200 and response.json()["id"] == "AC/DC"
    assert api.delete("/admin/experts/sci/documents/AC/DC", headers=AUTH).status_code == 204
    assert_error(api.get("/admin/experts/sci/documents/AC/DC", headers=AUTH), 404)
