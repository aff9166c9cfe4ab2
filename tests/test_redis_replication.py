"""Several gateways on one real Redis: replication, outage, crash recovery, shared cache.

Each gateway is a separate `rr serve` process with its own experts/indexes directories.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import AUTH, Gateway, RedisServer, adapter_files

pytestmark = pytest.mark.slow

CODE_QUERIES = ["python sort a dictionary by value", "read a csv file in python"]
# A second expert's own domain: with the same pilot queries as "code" the two would tie and
# float noise in the pilots' batches would pick between them.
AERO_QUERIES = ["lift of a swept wing at transonic speed", "boundary layer transition"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateways(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    a, b = Gateway(tmp_path, redis_server.url, "a"), Gateway(tmp_path, redis_server.url, "b")
    a.start()
    b.start()
    for gateway in (a, b):  # warm up: first forward passes are slow
        assert search(gateway, "warm up the encoder").status_code == 200
    yield a, b
    a.stop()
    b.stop()


def register(gateway: Gateway, name: str, adapter: Path, queries=CODE_QUERIES) -> httpx.Response:
    return httpx.post(
        gateway.url + "/admin/experts",
        headers=AUTH,
        files=adapter_files(adapter),
        data={"name": name, "pilot_queries": json.dumps(queries)},
        timeout=60,
    )


def upsert(gateway: Gateway, name: str, docs: list[dict]) -> httpx.Response:
    return httpx.put(
        f"{gateway.url}/admin/experts/{name}/documents",
        headers=AUTH,
        json={"documents": docs},
        timeout=60,
    )


def search(gateway: Gateway, query: str, **options) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/search", json={"query": query, **options}, timeout=30)


def wait_for(predicate, timeout_s: float) -> float:
    """Seconds until predicate() held; fails after timeout_s."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s")
        time.sleep(0.02)
    return time.monotonic() - started


def expert_names(gateway: Gateway) -> list[str]:
    return [e["name"] for e in httpx.get(gateway.url + "/v1/experts", timeout=10).json()["experts"]]


def test_changes_through_one_gateway_reach_the_other(gateways, adapter_a: Path) -> None:
    a, b = gateways
    assert register(a, "code", adapter_a).status_code == 201
    route = lambda: httpx.post(b.url + "/v1/route", json={"query": "python sort dict"}).json()  # noqa: E731
    assert wait_for(lambda: route()["expert"] == "code", 1.0) < 1.0
    # Its index is empty yet: a search is told so and answers from none of it.
    empty = search(b, "python sort dict").json()["routing"]
    assert empty["passed_over"] == ["code"] and "holds documents" in empty["note"]

    docs = [
        {"id": "d1", "text": "def sort_by_value(d): return sorted(d.items(), key=lambda kv: kv[1])"}
    ]
    assert upsert(b, "code", docs).json() == {"inserted": 1, "updated": 0}
    wait_for(lambda: [h["id"] for h in search(a, "python sort dict").json()["hits"]] == ["d1"], 1.0)
    assert search(a, "python sort dict").json()["routing"]["expert"] == "code"
    lexical = search(a, "sorted items", mode="lexical", expert="code").json()["hits"]
    assert [h["id"] for h in lexical] == ["d1"]  # the follower's BM25 index has it too
    weight = httpx.put(
        b.url + "/admin/experts/code/fusion", headers=AUTH, json={"weight": 0.3}, timeout=30
    )
    assert weight.status_code == 200
    fusion = lambda: httpx.get(a.url + "/v1/experts/code", timeout=10).json()["fusion_weight"]  # noqa: E731
    wait_for(lambda: fusion() == 0.3, 1.0)

    # A second expert through B: both gateways refit their router from the same pilot sets
    # and route alike, scores to the last digit.
    assert register(b, "aero", adapter_a, AERO_QUERIES).status_code == 201
    wait_for(lambda: "aero" in expert_names(a), 2.0)
    for query in ("python sort dict", "swept wing lift", "csv reader", "shock waves"):
        routes = [
            httpx.post(g.url + "/v1/route", json={"query": query}, timeout=30).json()
            for g in (a, b)
        ]
        assert routes[0] == routes[1] and len(routes[0]["scores"]) == 2, query
    assert httpx.delete(b.url + "/admin/experts/aero", headers=AUTH, timeout=30).status_code == 204
    wait_for(lambda: "aero" not in expert_names(a), 2.0)

    assert register(b, "code", adapter_a).status_code == 409  # Redis decides, atomically
    assert httpx.delete(a.url + "/admin/experts/code", headers=AUTH, timeout=30).status_code == 204
    wait_for(lambda: "code" not in expert_names(b), 1.0)
    body = search(b, "python sort dict").json()
    assert body["routing"]["expert"] == "base" and body["hits"] == []
    assert search(b, "x", expert="code").status_code == 404


def test_redis_outage_keeps_searches_and_pauses_admin_writes(
    gateways, redis_server, adapter_a, adapter_b
) -> None:
    a, b = gateways
    assert register(a, "code", adapter_a).status_code == 201
    assert upsert(a, "code", [{"id": "d1", "text": "python dictionary sorting"}]).status_code == 200
    wait_for(lambda: len(search(b, "python dict").json()["hits"]) == 1, 2.0)

    failures: list[str] = []
    stop = threading.Event()

    def searcher(gateway: Gateway) -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                response = client.post("/v1/search", json={"query": f"python dict query {i % 7}"})
                if response.status_code != 200 or not response.json()["hits"]:
                    failures.append(f"{gateway.url}: {response.status_code} {response.text[:200]}")
                i += 1

    threads = [threading.Thread(target=searcher, args=(g,)) for g in (a, b)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        redis_server.stop()
        time.sleep(1.0)
        response = register(b, "second", adapter_b, AERO_QUERIES)
        assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
        assert upsert(a, "code", [{"id": "d2", "text": "lost?"}]).status_code == 503
        time.sleep(0.5)
        redis_server.start()  # same port, same AOF directory
        wait_for(lambda: register(b, "second", adapter_b, AERO_QUERIES).status_code == 201, 10.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    wait_for(lambda: "second" in expert_names(a) and "second" in expert_names(b), 2.0)
    # The refused write never half-applied anywhere.
    for gateway in (a, b):
        hits = search(gateway, "lost?", expert="code", k=10).json()["hits"]
        assert "d2" not in {h["id"] for h in hits}
    assert "rr_replication_connected 1.0" in httpx.get(a.url + "/metrics").text


def test_killed_gateway_catches_up_on_restart(gateways, adapter_a: Path) -> None:
    a, b = gateways
    assert register(a, "code", adapter_a).status_code == 201
    wait_for(lambda: "code" in expert_names(b), 2.0)
    b.kill()
    assert (
        upsert(
            a, "code", [{"id": f"n{i}", "text": f"new python snippet {i}"} for i in range(5)]
        ).status_code
        == 200
    )
    assert register(a, "later", adapter_a, ["aircraft wings"]).status_code == 201
    b.start()  # readyz waits until the change log is caught up
    assert sorted(expert_names(b)) == ["code", "later"]
    hits = search(b, "new python snippet", expert="code", k=10).json()["hits"]
    assert {h["id"] for h in hits} == {f"n{i}" for i in range(5)}


def test_shared_cache_hits_and_invalidation(gateways, adapter_a: Path, adapter_b: Path) -> None:
    a, b = gateways

    def metric(gateway: Gateway, line: str) -> float:
        for row in httpx.get(gateway.url + "/metrics").text.splitlines():
            if row.startswith(line):
                return float(row.split()[-1])
        return 0.0

    assert register(a, "code", adapter_a).status_code == 201
    wait_for(lambda: "code" in expert_names(b), 2.0)
    query = {"input": "a query worth caching", "model": "code"}
    first = httpx.post(a.url + "/v1/embeddings", json=query).json()["data"][0]["embedding"]
    before = metric(b, 'rr_cache_hits_total{level="shared"}')
    via_b = httpx.post(b.url + "/v1/embeddings", json=query).json()["data"][0]["embedding"]
    assert via_b == first
    assert metric(b, 'rr_cache_hits_total{level="shared"}') == before + 1  # B reused A's vector

    assert httpx.delete(a.url + "/admin/experts/code", headers=AUTH).status_code == 204
    assert register(a, "code", adapter_b).status_code == 201  # same name, new weights
    wait_for(
        lambda: (
            httpx.post(b.url + "/v1/embeddings", json=query).status_code == 200
            and httpx.post(b.url + "/v1/embeddings", json=query).json()["data"][0]["embedding"]
            != first
        ),
        2.0,
    )
