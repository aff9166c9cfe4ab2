"""Searches keep answering while operators add and delete experts: zero 5xx."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers import AUTH, adapter_files, live_server

pytestmark = pytest.mark.slow

QUERIES = [
    "python sort dict by value",
    "wing boundary layer transition",
    "vitamin d and bone density",
]


def test_searches_during_expert_churn_never_fail(
    settings, adapter_a: Path, adapter_b: Path
) -> None:
    with live_server(settings) as (url, _):
        with httpx.Client(base_url=url, timeout=60) as admin:
            register = admin.post(
                "/admin/experts",
                headers=AUTH,
                files=adapter_files(adapter_a),
                data={"name": "stable", "pilot_queries": json.dumps(QUERIES[1:2])},
            )
            assert register.status_code == 201
            docs = {
                "documents": [{"id": f"s{i}", "text": f"airfoil document {i}"} for i in range(20)]
            }
            assert (
                admin.put("/admin/experts/stable/documents", headers=AUTH, json=docs).status_code
                == 200
            )

        statuses: Counter[tuple[str, int]] = Counter()
        done = threading.Event()
        lock = threading.Lock()

        def searcher(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                i = 0
                while not done.is_set():
                    query = QUERIES[(worker + i) % len(QUERIES)]
                    pinned = i % 3 == 2
                    payload = {"query": query, "k": 5, **({"expert": "churn"} if pinned else {})}
                    status = client.post("/v1/search", json=payload).status_code
                    with lock:
                        statuses[("pinned" if pinned else "auto", status)] += 1
                    i += 1

        threads = [threading.Thread(target=searcher, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as admin:
                for cycle in range(6):
                    adapter = adapter_b if cycle % 2 else adapter_a
                    response = admin.post(
                        "/admin/experts",
                        headers=AUTH,
                        files=adapter_files(adapter),
                        data={"name": "churn", "pilot_queries": json.dumps(QUERIES[:1])},
                    )
                    assert response.status_code == 201, response.text
                    docs = {
                        "documents": [
                            {"id": f"c{cycle}-{i}", "text": f"code sample {i}"} for i in range(10)
                        ]
                    }
                    assert (
                        admin.put(
                            "/admin/experts/churn/documents", headers=AUTH, json=docs
                        ).status_code
                        == 200
                    )
                    assert admin.delete("/admin/experts/churn", headers=AUTH).status_code == 204
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=60)

    assert sum(statuses.values()) > 20
    assert not [key for key in statuses if key[1] >= 500], statuses
    assert {status for (kind, status) in statuses if kind == "auto"} == {200}, statuses
    assert {status for (kind, status) in statuses if kind == "pinned"} <= {200, 404}, statuses
