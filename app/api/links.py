"""OpenAPI links: which values of one answer feed which later call (an expert's name from a
listing, a document's id from an upsert). Clients and stateful fuzzers (schemathesis's
stateful phase, `tests/test_schema_fuzz.py`) follow them."""

from __future__ import annotations

from typing import Any

# Stable operation ids the links name.
GET_EXPERT = "getExpert"
SET_FUSION = "setFusionWeight"
DELETE_EXPERT = "deleteExpert"
UPSERT_DOCUMENTS = "upsertDocuments"
GET_DOCUMENT = "getDocument"
DELETE_DOCUMENT = "deleteDocument"


def _links(targets: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        f"{operation[0].upper()}{operation[1:]}": {"operationId": operation, "parameters": params}
        for operation, params in targets.items()
    }


def _expert_targets(name: str) -> dict[str, dict[str, str]]:
    return {
        operation: {"name": name}
        for operation in (GET_EXPERT, UPSERT_DOCUMENTS, SET_FUSION, DELETE_EXPERT)
    }


EXPERT_LISTED = _links(_expert_targets("$response.body#/experts/0/name"))
EXPERT_CREATED = _links(_expert_targets("$response.body#/name"))
DOCUMENTS_WRITTEN = _links(
    {
        operation: {"name": "$request.path.name", "doc_id": "$request.body#/documents/0/id"}
        for operation in (GET_DOCUMENT, DELETE_DOCUMENT)
    },
)
