"""A shortcut never fails a request: self-check at start-up, exact path when one raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.encoder import hf_private
from app.shortcuts import ONE_PASS, Shortcuts
from tests.helpers import AUTH, make_adapter, register

QUERY = "python sort dict by value"
CODE_QUERIES = ["python read a csv file", "sort a list in python", "reverse a string in python"]
AERO_QUERIES = ["lift of a swept wing", "supersonic shock waves", "boundary layer transition"]
CODE_DOCS = [
    {"id": "c1", "title": "sorted", "text": "sorted(d.items(), key=lambda kv: kv[1])"},
    {"id": "c2", "title": "reverse", "text": "def reverse(s): return s[::-1]"},
    {"id": "c3", "title": "csv", "text": "import csv; rows = list(csv.reader(open(path)))"},
]


_real_run_layer = hf_private.run_layer


def _broken(*args, **kwargs):
    raise TypeError("unexpected keyword argument 'past_key_values'")  # as transformers 5.24


def test_shortcuts_record_failures_once() -> None:
    shortcuts = Shortcuts()
    shortcuts.failed("embedding_cache", ValueError("bad row"), switch_off=False)
    assert shortcuts.enabled("embedding_cache") and shortcuts.fallbacks["embedding_cache"] == 1
    shortcuts.failed(ONE_PASS, TypeError("x"))
    shortcuts.failed(ONE_PASS, TypeError("y"))
    assert not shortcuts.enabled(ONE_PASS)
    assert shortcuts.degraded == {ONE_PASS: "TypeError: x"}  # the first reason
    assert shortcuts.fallbacks[ONE_PASS] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "breakage",
    [
        ("encoder_attention_mask", _broken, "self-check raised TypeError"),
        ("run_layer", lambda *a: _real_run_layer(*a) * 1.01, "self-check max abs diff"),
    ],
    ids=["raises", "wrong-result"],
)
def test_a_failed_self_check_switches_one_pass_off(
    monkeypatch: pytest.MonkeyPatch, adapters_root: str, breakage
) -> None:
    from app.encoder import LoraEncoder
    from app.encoder.self_checks import check_one_pass

    name, replacement, reason = breakage
    top = make_adapter(7, adapters_root, layers=(4, 5))
    texts = [QUERY, "x"]
    reference = LoraEncoder(lambda _: top).encode(texts, ["top"] * 2)
    monkeypatch.setattr(hf_private, name, replacement)
    encoder = LoraEncoder(lambda _: top, routing_layer=4)
    check_one_pass(encoder)
    assert encoder.shortcuts.degraded[ONE_PASS].startswith(reason)
    routed = encoder.encode_routed(texts, lambda f: [["top"]] * len(f))
    served = encoder.encode(texts, ["top"] * 2)
    assert encoder.stats.one_pass_rows == 0 and encoder.stats.exact_rows == 4
    assert np.abs(served - reference).max() <= 1e-5
    assert np.abs(np.concatenate(routed.vectors) - reference).max() <= 1e-5


def _register(client: TestClient, name: str, adapter: Path, queries: list[str]) -> None:
    response = register(client, name, adapter, queries)
    assert response.status_code == 201, response.text


def _populate(client: TestClient, adapters_root: str, adapter_a: Path) -> None:
    _register(client, "code", make_adapter(7, adapters_root, layers=(4, 5)), CODE_QUERIES)
    _register(client, "aero", adapter_a, AERO_QUERIES)
    response = client.put(
        "/admin/experts/code/documents", headers=AUTH, json={"documents": CODE_DOCS}
    )
    assert response.status_code == 200


def _hits(body: dict) -> list[tuple[str, float]]:
    return [(hit["id"], hit["score"]) for hit in body["hits"]]


@pytest.mark.slow
def test_one_pass_raising_at_run_time_serves_the_full_pass(
    settings, monkeypatch: pytest.MonkeyPatch, adapters_root: str, adapter_a: Path
) -> None:
    """The issue-9 failure: the one-pass shim raises on a routed search to a top-layer expert.
    The search answers 200 with the hits of a full pass, and the metrics say so."""
    settings.embedding_cache_size = 0  # every search runs the encoder
    with TestClient(create_app(settings)) as client:
        _populate(client, adapters_root, adapter_a)
        # Reference: the expert pinned, so no routing inside the pass.
        pinned = client.post("/v1/search", json={"query": QUERY, "expert": "code"})
        assert pinned.status_code == 200
        monkeypatch.setattr(hf_private, "encoder_attention_mask", _broken)
        routed = client.post("/v1/search", json={"query": QUERY})
        assert routed.status_code == 200, routed.text
        assert routed.json()["routing"]["expert"] == "code"
        got, want = _hits(routed.json()), _hits(pinned.json())
        assert [i for i, _ in got] == [i for i, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
        metrics = client.get("/metrics").text
        assert 'rr_shortcut_fallbacks_total{shortcut="one_pass_lora"} 1.0' in metrics
        assert 'rr_shortcut_degraded{shortcut="one_pass_lora"} 1.0' in metrics
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert "TypeError" in ready.json()["degraded"][ONE_PASS]
        # Off for the process now: the next routed search does not even try.
        assert client.post("/v1/search", json={"query": QUERY}).status_code == 200
        assert 'rr_shortcut_fallbacks_total{shortcut="one_pass_lora"} 1.0' in (
            client.get("/metrics").text
        )


@pytest.mark.slow
def test_start_up_self_check_failure_is_reported_and_served(
    settings, monkeypatch: pytest.MonkeyPatch, adapters_root: str, adapter_a: Path
) -> None:
    monkeypatch.setattr(hf_private, "encoder_attention_mask", _broken)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert "self-check raised TypeError" in ready.json()["degraded"][ONE_PASS]
        _populate(client, adapters_root, adapter_a)
        routed = client.post("/v1/search", json={"query": QUERY})
        assert routed.status_code == 200 and _hits(routed.json())
        metrics = client.get("/metrics").text
        assert 'rr_shortcut_degraded{shortcut="one_pass_lora"} 1.0' in metrics
        assert "rr_expert_rows_one_pass_total 0.0" in metrics


@pytest.mark.slow
def test_exact_path_failure_is_a_typed_error(client: TestClient, monkeypatch) -> None:
    from app.encoder import LoraEncoder

    monkeypatch.setattr(LoraEncoder, "_pad", _broken)  # every path pads its batch
    response = client.post("/v1/search", json={"query": "a query never cached"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "encoder_failed"


@pytest.mark.slow
def test_a_cache_that_raises_is_a_miss(client: TestClient, monkeypatch) -> None:
    ctx = client.app.state.ctx
    monkeypatch.setattr(ctx.cache, "get", _broken)
    response = client.post("/v1/embeddings", json={"input": "cache me"})
    assert response.status_code == 200
    metrics = client.get("/metrics").text
    assert 'rr_shortcut_fallbacks_total{shortcut="embedding_cache"} 1.0' in metrics
    assert client.get("/readyz").json()["degraded"] == {}  # a cache miss degrades nothing
