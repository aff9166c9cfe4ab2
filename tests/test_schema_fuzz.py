"""Schemathesis against the OpenAPI schema, in process, on the fake encoder (fast tier).

Every operation gets generated valid and invalid requests (a bounded run: RR_FUZZ_EXAMPLES
per operation, default 20). Checks: no 5xx, status codes and content types the schema
documents, responses that match their schemas, schema-violating requests refused, and
schema-valid requests accepted. That last check is off where validity is beyond what a schema
can state, so schema-valid requests are rightly refused with 422: expert registration (an
adapter file must be safetensors holding LoRA weights that fit the base model) and documents
that bring an embedding (it must have unit norm).

Then a stateful run follows the schema's OpenAPI links (app/api/links.py): an expert named by
a listing is read, filled, re-weighted and deleted; a document just upserted is read and
deleted. `make soak` runs both with more cases (RR_FUZZ_EXAMPLES) and reads the counts
written to RR_FUZZ_COUNTS.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.api.app import create_app
from app.settings import Settings
from tests.helpers import AUTH, TOKEN, adapter_files, write_lora

EXAMPLES = int(os.environ.get("RR_FUZZ_EXAMPLES", "20"))
COUNTS = {"cases": 0, "stateful_steps": 0, "linked_answers": 0}


ROOT = Path(tempfile.mkdtemp(prefix="rr-fuzz-"))
APP = create_app(
    Settings(
        encoder_backend="fake",
        experts_dir=ROOT / "experts",
        indexes_dir=ROOT / "indexes",
        datasets_dir=None,
        admin_token=TOKEN,
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
# Hypothesis cannot build strings past a few thousand characters, so a negative case for a
# 1,000,000-character limit cannot be generated (InvalidSchema): the fuzzer's copy of the
# schema leaves such long limits out; tests/test_api_errors.py checks them directly.
HYPOTHESIS_MAX_LENGTH = 5_000


def _without_long_limits(node: object) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("maxLength"), int) and node["maxLength"] > HYPOTHESIS_MAX_LENGTH:
            del node["maxLength"]
        for value in node.values():
            _without_long_limits(value)
    elif isinstance(node, list):
        for value in node:
            _without_long_limits(value)


_without_long_limits(schema.raw_schema)


def register_sci(client: TestClient) -> None:
    response = client.post(
        "/admin/experts",
        headers=AUTH,
        data={"name": "sci", "pilot_queries": json.dumps(["protein folding"])},
        files=adapter_files(write_lora(1, ROOT / "adapters")),
    )
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module", autouse=True)
def running_gateway():
    """The lifespan runs once (services up, one expert registered) for all generated calls."""
    with TestClient(APP) as client:
        register_sci(client)
        yield
    shutil.rmtree(ROOT, ignore_errors=True)
    if target := os.environ.get("RR_FUZZ_COUNTS"):
        Path(target).write_text(json.dumps(COUNTS))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: `make test` never fails by chance
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_schema_holds(case) -> None:
    COUNTS["cases"] += 1
    case.call_and_validate(headers=AUTH, excluded_checks=beyond_the_schema(case))


def beyond_the_schema(case) -> list:
    """The acceptance check, off for requests whose validity no schema can state."""
    documents = case.body.get("documents") if isinstance(case.body, dict) else None
    documents = documents if isinstance(documents, list) else []
    with_vectors = any(isinstance(d, dict) and d.get("embedding") for d in documents)
    return [positive_data_acceptance] if case.path == "/admin/experts" or with_vectors else []


class Workflows(schema.as_state_machine()):  # type: ignore[misc]
    """Call sequences along the schema's links, with real names and ids from answers."""

    def setup(self) -> None:
        """Each sequence starts with the expert `sci` (an earlier one may have deleted it)."""
        client = TestClient(APP)  # the module's gateway, already running
        if client.get("/v1/experts/sci").status_code == 404:
            register_sci(client)

    def get_call_kwargs(self, case) -> dict:
        return {"headers": AUTH}

    def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
        COUNTS["stateful_steps"] += 1
        # Only links reach an expert's own operations with a name that exists (a 2xx).
        COUNTS["linked_answers"] += "{name}" in case.path and response.status_code < 300
        case.validate_response(
            response, excluded_checks=beyond_the_schema(case), transport_kwargs=kwargs
        )


def test_linked_call_sequences_hold() -> None:
    Workflows.run(
        settings=settings(
            max_examples=max(5, EXAMPLES // 2),
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
    assert COUNTS["linked_answers"] > 0  # sequences did follow the schema's links
