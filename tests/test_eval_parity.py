"""`rr eval`'s service setting runs what `/v1/search` runs: same hits, same order.

The gateway searches FAISS indexes over its SQLite store; the eval runs the same core
(planning, fusion, hybrid) over in-memory indexes holding the same documents and
embeddings. For every `mode` / `expert` / `index` / `top_experts` option the two rankings
must agree.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.documents import Document
from app.core.planning import SearchOptions, encoders_for
from app.encoder.documents import document_text
from app.evaluation.runs import MISS, EvalSet, core_run
from app.index.memory import MemoryIndex
from tests.helpers import AUTH, adapter_files, make_adapter

pytestmark = pytest.mark.slow

DOMAINS = {
    "aero": [
        ("a1", "Swept wings", "Wing sweep delays compressibility drag rise."),
        ("a2", "Laminar flow", "Boundary layer transition on airfoils."),
        ("a3", "Shock waves", "Normal shocks in supersonic nozzle flow."),
        ("a4", "Flutter", "Aeroelastic flutter of a cantilever wing."),
    ],
    "code": [
        ("c1", "sorted", "sorted(d.items(), key=lambda kv: kv[1]) sorts a dict by value"),
        ("c2", "reverse", "s[::-1] reverses a string in python"),
        ("c3", "csv", "csv.reader reads rows of a csv file"),
        ("c4", "json", "json.loads parses a json string into a dict"),
    ],
    "med": [
        ("m1", "Vitamin D", "Vitamin D supplements and bone density in adults."),
        ("m2", "Statins", "Statins lower LDL cholesterol and heart attack risk."),
        ("m3", "Sleep", "Short sleep is linked to obesity in children."),
    ],
}
PILOT_QUERIES = {
    "aero": ["drag of a wing at high mach", "supersonic flow over an airfoil"],
    "code": ["python sort a dictionary", "read a file in python"],
    "med": ["does vitamin d prevent fractures", "cholesterol drugs side effects"],
}
QUERIES = [
    "wing flutter at supersonic speed",
    "python reverse a string",
    "how to parse json in python",
    "vitamin d and bones",
    "boundary layer on a wing",
    "what lowers cholesterol",
    "medieval latin poetry and troubadours",
]


def test_eval_service_run_equals_the_gateway(settings, adapters_root: str) -> None:
    adapters = {
        "aero": make_adapter(1, adapters_root),
        "code": make_adapter(7, adapters_root, layers=(4, 5)),
        "med": make_adapter(2, adapters_root),
    }
    # Some queries fall back to the base encoder (routing features at layer 4 sit closer
    # together than final embeddings: the off-domain query scores ~0.6, in-domain ~0.8+).
    settings.router_fallback_threshold = 0.7
    with TestClient(create_app(settings)) as client:
        for name, adapter in adapters.items():
            response = client.post(
                "/admin/experts",
                headers=AUTH,
                data={"name": name, "pilot_queries": json.dumps(PILOT_QUERIES[name])},
                files=adapter_files(adapter),
            )
            assert response.status_code == 201, response.text
            documents = [{"id": i, "title": t, "text": x} for i, t, x in DOMAINS[name]]
            response = client.put(
                f"/admin/experts/{name}/documents", headers=AUTH, json={"documents": documents}
            )
            assert response.status_code == 200
        ctx = client.app.state.ctx
        encode = ctx.encoder.encode
        indexes = {}
        for name, docs in DOMAINS.items():
            vectors = encode([document_text(t, x) for _, t, x in docs], documents=True)
            documents = [Document(i, x, t) for i, t, x in docs]
            indexes[name] = MemoryIndex.of_vectors(
                name, [d.id for d in documents], vectors, documents
            )
        base = encode(QUERIES)
        # The gateway routes on the routing features (the pooled states entering its
        # routing layer), computed inside the routed pass.
        decisions = ctx.registry.router.route(ctx.encoder.routing_features(QUERIES))
        assert {d.expert for d in decisions} > {"base"}, [d.scores for d in decisions]
        dataset = EvalSet(
            "aero", True, [], np.zeros((0, 384)), [str(i) for i in range(len(QUERIES))], QUERIES, {}
        )
        dataset.encoded = {"base": base} | {
            name: encode(QUERIES, [name] * len(QUERIES)) for name in adapters
        }
        checked = 0
        weights = ctx.registry.fusion_weights
        for mode, expert, index, top in itertools.product(
            ["hybrid", "dense", "lexical"], ["auto", "base", "code"], [None, "med"], [1, 2]
        ):
            options = SearchOptions(k=5, expert=expert, index=index, top_experts=top, mode=mode)
            pinned = [d if expert == "auto" else _pinned(expert) for d in decisions]
            plans = [encoders_for(d, options) for d in pinned]
            run = core_run(dataset, plans, indexes, options, weights=weights)
            body = {"queries": QUERIES, "k": 5, "expert": expert, "top_experts": top, "mode": mode}
            if index is not None:
                body["index"] = index
            response = client.post("/v1/search/batch", json=body)
            assert response.status_code == 200, response.text
            for qi, result in enumerate(response.json()):
                served = [
                    h["id"] if h["index"] == "aero" else f"{h['index']}::{h['id']}"
                    for h in result["hits"]
                ]
                expected = [d for d in run[str(qi)] if d != MISS]
                assert served == expected, (mode, expert, index, top, qi)
                scores = [h["score"] for h in result["hits"]]
                assert np.allclose(scores, [run[str(qi)][d] for d in expected], atol=1e-5)
                checked += 1
        assert checked == 36 * len(QUERIES)


def _pinned(expert: str):
    from app.core.router import RoutingDecision

    return RoutingDecision(expert, {}, False)
