"""What OpenAI-style clients and browser frontends expect (issue 23), on the fake encoder."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.app import create_app
from app.settings import Settings
from tests.helpers import AUTH as AUTH_HEADERS
from tests.test_api_fake import populate

ORIGIN = "https://search.example.com"
BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def api(fake_settings: Settings, lora_a, lora_b):
    # The served default (conftest lowers it for the other tests).
    fake_settings.max_query_chars = Settings.model_fields["max_query_chars"].default
    with TestClient(create_app(fake_settings), raise_server_exceptions=False) as client:
        populate(client, lora_a, lora_b)
        yield client


def _message(response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["error"]["message"]


def test_models_lists_auto_base_its_id_and_every_expert(api: TestClient) -> None:
    body = api.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[:3] == ["auto", "base", BASE_ID] and set(ids[3:]) == {"aero", "code"}
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    assert next(m for m in body["data"] if m["id"] == "aero")["created"] > 0


def test_the_base_model_id_and_native_dimensions_are_accepted(api: TestClient) -> None:
    text = "wing lift"
    by_id = api.post("/v1/embeddings", json={"input": text, "model": BASE_ID, "dimensions": 384})
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["model"] == BASE_ID
    base = api.post("/v1/embeddings", json={"input": text, "model": "base"}).json()
    assert by_id.json()["data"][0]["embedding"] == base["data"][0]["embedding"]
    assert by_id.json()["data"][0]["expert"] == "base"


@pytest.mark.parametrize("dimensions", [256, 1, 1536])
def test_other_dimensions_are_refused_with_the_reason(api: TestClient, dimensions: int) -> None:
    message = _message(api.post("/v1/embeddings", json={"input": "x", "dimensions": dimensions}))
    assert "384" in message and "not trained" in message


@pytest.mark.parametrize("tokens", [[101, 2023, 102], [[101, 2023], [101, 102]]])
def test_token_id_arrays_are_refused_naming_the_fix(api: TestClient, tokens) -> None:
    message = _message(api.post("/v1/embeddings", json={"input": tokens}))
    assert "token-id arrays" in message and "check_embedding_ctx_length=False" in message


def test_messages_are_plain_words_one_per_field(api: TestClient) -> None:
    blank = _message(api.post("/v1/search", json={"query": "   "}))
    assert blank == "query: must not be empty or only whitespace"
    # A string input is judged as a string: no second message about lists.
    assert _message(api.post("/v1/embeddings", json={"input": " "})) == (
        "input: must not be empty or only whitespace"
    )
    wrong_type = _message(api.post("/v1/embeddings", json={"input": 5}))
    assert wrong_type == "input: Input should be a valid string or a valid list"
    model = _message(api.post("/v1/embeddings", json={"input": "x", "model": "Bad/Model"}))
    assert model.startswith("model: must be") and "[" not in model  # no regex shown
    expert = _message(api.post("/v1/search", json={"query": "x", "expert": "No Such"}))
    assert expert.startswith("expert: must be") and "^" not in expert
    untyped = _message(api.post("/v1/search", content=b'{"query": "x"}'))
    assert "Content-Type: application/json" in untyped
    headers = {"content-type": "application/json"}
    not_utf8 = api.post("/v1/search", content=b'{"query": "\xff\xfe"}', headers=headers)
    assert not_utf8.json()["error"]["code"] == "invalid_request"
    assert "UTF-8" in _message(not_utf8)
    broken = _message(api.post("/v1/search", content=b'{"query": ', headers=headers))
    assert broken.startswith("the request body is not valid JSON")


def test_hybrid_rrf_over_two_experts_reports_each_hits_cosine(api: TestClient) -> None:
    query = "python sort"
    body = api.post(
        "/v1/search",
        json={"query": query, "k": 4, "fusion": "rrf", "top_experts": 2, "expert": "auto"},
    ).json()
    assert body["hits"]
    vectors = {
        name: np.array(
            api.post("/v1/embeddings", json={"input": query, "model": name}).json()["data"][0][
                "embedding"
            ]
        )
        for name in ("aero", "code")
    }
    for hit in body["hits"]:
        if hit.get("dense_score") is None:
            continue
        doc = api.get(f"/admin/experts/{hit['index']}/documents/{hit['id']}", headers=AUTH_HEADERS)
        text = f"{doc.json()['title']} {doc.json()['text']}"
        doc_vector = np.array(
            api.post("/v1/embeddings", json={"input": text, "model": "base"}).json()["data"][0][
                "embedding"
            ]
        )
        cosine = float(vectors[hit["expert"]] @ doc_vector)
        assert hit["dense_score"] == pytest.approx(cosine, abs=1e-5)  # not 1/(60 + rank)


def test_cors_preflight_for_an_allowed_origin_only(fake_settings: Settings) -> None:
    fake_settings.cors_origins = f"{ORIGIN}/, http://localhost:3000"
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    with TestClient(create_app(fake_settings)) as client:
        allowed = client.options("/v1/search", headers={"Origin": ORIGIN, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        other = client.options(
            "/v1/search", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in other.headers
        simple = client.get("/v1/models", headers={"Origin": ORIGIN})
        assert simple.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_unless_configured(fake_settings: Settings) -> None:
    assert fake_settings.cors_origins == ""
    with TestClient(create_app(fake_settings)) as client:
        response = client.options(
            "/v1/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
        assert response.status_code == 405
        assert "access-control-allow-origin" not in response.headers


def test_search_keys_guard_every_v1_route_when_set(fake_settings: Settings, lora_a) -> None:
    fake_settings.api_keys = SecretStr("key-one, key-two")
    with TestClient(create_app(fake_settings)) as client:
        from tests.helpers import register

        assert register(client, "aero", lora_a, ["wing lift drag"]).status_code == 201
        calls = [
            ("POST", "/v1/search", {"query": "wing"}),
            ("POST", "/v1/embeddings", {"input": "wing"}),
            ("POST", "/v1/route", {"query": "wing"}),
            ("GET", "/v1/models", None),
            ("GET", "/v1/experts", None),
        ]
        for method, path, body in calls:
            bare = client.request(method, path, json=body)
            assert bare.status_code == 401, (path, bare.text)
            assert bare.json()["error"]["message"].startswith("missing API key")
            assert bare.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "wrong API key"
            good = client.request(
                method, path, json=body, headers={"Authorization": "Bearer key-two"}
            )
            assert good.status_code == 200, (path, good.text)
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert client.get(open_path).status_code == 200
        # The admin token is not a search key, nor the reverse.
        admin_as_key = client.get("/v1/models", headers=AUTH_HEADERS)
        assert admin_as_key.status_code == 401
        key_as_admin = client.put(
            "/admin/experts/aero/fusion",
            headers={"Authorization": "Bearer key-one"},
            json={"weight": 0.5},
        )
        assert key_as_admin.status_code == 401 and "admin token" in key_as_admin.text


def test_search_is_open_without_keys(api: TestClient) -> None:
    assert api.post("/v1/search", json={"query": "wing"}).status_code == 200


def test_routing_never_lands_silently_on_an_empty_index(fake_settings: Settings, lora_a, lora_b):
    from tests.helpers import register
    from tests.test_api_fake import AERO, CODE, CODE_DOCS

    with TestClient(create_app(fake_settings)) as client:
        assert register(client, "aero", lora_a, AERO).status_code == 201
        assert register(client, "code", lora_b, CODE).status_code == 201
        nothing = client.post("/v1/search", json={"query": AERO[0]}).json()
        assert nothing["hits"] == []
        assert nothing["routing"]["note"] == (
            "no expert's index holds documents yet: nothing to search"
        )
        put = client.put(
            "/admin/experts/code/documents", headers=AUTH_HEADERS, json={"documents": CODE_DOCS}
        )
        assert put.status_code == 200
        for mode in ("hybrid", "dense", "lexical"):
            body = client.post("/v1/search", json={"query": AERO[0], "mode": mode}).json()
            routing = body["routing"]
            assert routing["passed_over"] == ["aero"], (mode, routing)
            assert "aero" in routing["note"] and "no documents" in routing["note"]
            assert routing["expert"] in ("code", "base")
            if mode != "lexical":  # BM25 may find no shared word; the dense leg always does
                assert body["hits"] and {h["index"] for h in body["hits"]} == {"code"}
        # /v1/route gives the router's own choice, whatever the indexes hold.
        assert client.post("/v1/route", json={"query": AERO[0]}).json()["expert"] == "aero"
        # A query that routes to the expert with documents is unchanged: no note.
        plain = client.post("/v1/search", json={"query": CODE[0]}).json()["routing"]
        assert plain["expert"] == "code" and "note" not in plain and "passed_over" not in plain


def test_long_inputs_are_truncated_by_default_or_refused_on_request(api: TestClient) -> None:
    long_text = "wing lift drag " * 400  # 1,200 words: far past 256 tokens
    ok = api.post("/v1/embeddings", json={"input": ["python sort", long_text]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] <= 4 + 256  # counted as encoded
    assert api.post("/v1/search", json={"query": long_text}).status_code == 200
    refused = _message(
        api.post("/v1/embeddings", json={"input": ["python sort", long_text], "truncate": False})
    )
    assert refused.startswith("input 1 is 1202 tokens, over this model's limit of 256")
    refused = _message(api.post("/v1/search", json={"query": long_text, "truncate": False}))
    assert refused.startswith("the input is 1202 tokens")
    short = api.post("/v1/search", json={"query": "python sort", "truncate": False})
    assert short.status_code == 200
