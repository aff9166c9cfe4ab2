"""The real `openai` and `langchain-openai` clients against a running gateway (real encoder).

What a user of either would do: point `base_url` at the gateway, embed, list models; the
OpenAI client asks for base64 vectors by default, LangChain batches documents.
"""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings

from tests.processes import Gateway

pytestmark = pytest.mark.slow
KEY = "search-key-1"
TEXTS = ["flutter of swept wings at supersonic speed", "python sort a dict by value"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("openai-clients")
    with Gateway(root, env={"RR_API_KEYS": KEY, "RR_PRECISION": "fp32"}) as server:
        yield server


def _raw(url: str, texts: list[str], model: str = "base") -> np.ndarray:
    response = httpx.post(
        f"{url}/v1/embeddings",
        json={"input": texts, "model": model},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]])


def test_openai_client_embeds_lists_models_and_sees_our_errors(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)
    # The client's default encoding is base64: it must decode to the float answer.
    got = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=TEXTS)
    vectors = np.array([row.embedding for row in got.data])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(vectors, _raw(gateway.url, TEXTS), atol=1e-6)
    assert got.usage.prompt_tokens > 0
    native = client.embeddings.create(model="base", input=TEXTS[0], dimensions=384)
    assert len(native.data[0].embedding) == 384
    with pytest.raises(openai.UnprocessableEntityError, match="not trained"):
        client.embeddings.create(model="base", input=TEXTS[0], dimensions=256)
    with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length"):
        client.embeddings.create(model="base", input=[[101, 2023, 102]])
    assert {"auto", "base", "sentence-transformers/all-MiniLM-L6-v2"} <= {
        m.id for m in client.models.list()
    }
    wrong = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model="base", input=TEXTS[0])


def test_langchain_embeds_documents_in_batches_with_a_long_chunk(gateway: Gateway) -> None:
    embeddings = OpenAIEmbeddings(
        model="base",
        base_url=f"{gateway.url}/v1",
        api_key=KEY,
        check_embedding_ctx_length=False,  # send text, not tiktoken ids (README)
        chunk_size=16,  # several requests
        max_retries=0,
    )
    long_chunk = "Transonic wing flutter and shock-induced oscillations. " * 80  # ~4,400 chars
    documents = [f"document {i} about wings and code" for i in range(40)] + [long_chunk]
    vectors = np.array(embeddings.embed_documents(documents))
    assert vectors.shape == (41, 384)
    np.testing.assert_allclose(vectors[:3], _raw(gateway.url, documents[:3]), atol=1e-6)
    query = np.array(embeddings.embed_query(TEXTS[0]))
    np.testing.assert_allclose(query, _raw(gateway.url, TEXTS[:1])[0], atol=1e-6)


def test_search_is_refused_without_the_key(gateway: Gateway) -> None:
    assert httpx.post(f"{gateway.url}/v1/search", json={"query": "x"}).status_code == 401
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
