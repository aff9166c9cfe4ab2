"""Schemathesis against the OpenAPI schema, in process, on the fake encoder (fast tier).

Every operation gets generated valid and invalid requests (a bounded run: RR_FUZZ_EXAMPLES
per operation, default 20). Checks: no 5xx, status codes and content types the schema
documents, responses that match their schemas, schema-violating requests refused, and
schema-valid requests accepted. That last check is off for expert registration alone: an
adapter file's validity (safetensors holding LoRA weights that fit the base model) is
beyond what a schema can state, so random files are rightly refused with 422.
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


@pytest.fixture(scope="module", autouse=True)
def running_gateway():
    """The lifespan runs once (services up, one expert registered) for all generated calls."""
    with TestClient(APP) as client:
        response = client.post(
            "/admin/experts",
            headers=AUTH,
            data={"name": "sci", "pilot_queries": json.dumps(["protein folding"])},
            files=adapter_files(write_lora(1, ROOT / "adapters")),
        )
        assert response.status_code == 201, response.text
        yield
    shutil.rmtree(ROOT, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: `make test` never fails by chance
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_schema_holds(case) -> None:
    excluded = [positive_data_acceptance] if case.path == "/admin/experts" else []
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)
