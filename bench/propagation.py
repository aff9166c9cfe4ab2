"""Propagation delay between two gateways sharing one Redis.

Starts redis-server and two `rr serve` processes on 127.0.0.1, then repeatedly registers an
expert through gateway A and measures how long after A's 201 gateway B routes to it; the
same for a document upserted through A and found through B.

    .venv/bin/python -m bench.propagation [--rounds 20]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import typer

from tests.helpers import make_adapter
from tests.processes import TOKEN, Gateway, RedisServer, adapter_files

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _until(predicate, timeout_s: float = 10.0) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError("change did not propagate")
        time.sleep(0.005)
    return (time.perf_counter() - started) * 1000


def _routes_to(client: httpx.Client, query: str, expert: str) -> bool:
    return client.post("/v1/route", json={"query": query}).json()["expert"] == expert


def _finds(client: httpx.Client, query: str, expert: str, doc_id: str) -> bool:
    body = {"query": query, "expert": expert, "include_text": False}
    return any(h["id"] == doc_id for h in client.post("/v1/search", json=body).json()["hits"])


def main(rounds: int = 20) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = adapter_files(make_adapter(0, str(root)))
        redis = RedisServer(root / "redis")
        redis.start()
        a, b = Gateway(root, redis.url, "a"), Gateway(root, redis.url, "b")
        try:
            a.start()
            b.start()
            with (
                httpx.Client(base_url=a.url, timeout=60) as ca,
                httpx.Client(base_url=b.url, timeout=60) as cb,
            ):
                cb.post("/v1/route", json={"query": "warm up"})
                expert_ms, doc_ms = [], []
                for i in range(rounds):
                    name, topic = f"e{i}", f"topic number {i} about aircraft wings"
                    response = ca.post(
                        "/admin/experts",
                        headers=AUTH,
                        files=files,
                        data={"name": name, "pilot_queries": json.dumps([topic])},
                    )
                    response.raise_for_status()
                    expert_ms.append(_until(lambda t=topic, n=name: _routes_to(cb, t, n)))
                    docs = {"documents": [{"id": f"d{i}", "text": topic}]}
                    url = f"/admin/experts/{name}/documents"
                    ca.put(url, headers=AUTH, json=docs).raise_for_status()
                    doc_ms.append(_until(lambda t=topic, n=name, d=f"d{i}": _finds(cb, t, n, d)))
        finally:
            a.stop()
            b.stop()
            redis.stop()
    for label, values in (
        ("expert registered on A -> routed on B", expert_ms),
        ("document upserted on A -> found on B", doc_ms),
    ):
        print(
            f"{label}: p50 {statistics.median(values):.1f} ms, max {max(values):.1f} ms "
            f"({len(values)} rounds; includes one B request per poll)"
        )


if __name__ == "__main__":
    typer.run(main)
