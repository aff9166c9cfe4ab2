"""Operator endpoints; every route here requires `Authorization: Bearer $RR_ADMIN_TOKEN`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Response, UploadFile

from app.api import links
from app.api.deps import AdminDep, CatalogDep, require_admin
from app.api.errors import ERROR_RESPONSES
from app.api.routes.experts import describe
from app.api.schemas import (
    DocumentId,
    DocumentOut,
    DocumentsRequest,
    DocumentsResponse,
    ExpertName,
    ExpertOut,
    FusionWeightIn,
)
from app.core.names import NAME_PATTERN
from app.errors import InvalidAdapter, InvalidInput
from app.index import Document

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=ERROR_RESPONSES,
)


def _pilot_queries(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    try:
        queries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput("pilot_queries must be a JSON list of strings") from exc
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise InvalidInput("pilot_queries must be a JSON list of strings")
    return queries


@router.post(
    "/experts",
    status_code=201,
    response_model=ExpertOut,
    responses={201: {"links": links.EXPERT_CREATED}},
)
async def register_expert(
    admin: AdminDep,
    catalog: CatalogDep,
    name: Annotated[str, Form(pattern=NAME_PATTERN, description="Expert name.")],
    adapter_config: Annotated[UploadFile, File(description="peft adapter_config.json")],
    adapter_model: Annotated[UploadFile, File(description="adapter_model.safetensors")],
    description: Annotated[str, Form()] = "",
    pilot_queries: Annotated[str | None, Form(description="JSON list of example queries")] = None,
    pilots: Annotated[UploadFile | None, File(description="float32 (n, 384) .npy")] = None,
) -> ExpertOut:
    """Register a LoRA expert; it is validated against the base model, then serves at once."""
    if (adapter_model.filename or "").endswith((".bin", ".pt", ".pth", ".pkl")):
        raise InvalidAdapter("pickle checkpoints are refused; upload adapter_model.safetensors")
    await admin.register_expert(
        name,
        await adapter_config.read(),
        await adapter_model.read(),
        pilots_npy=await pilots.read() if pilots is not None else None,
        pilot_queries=_pilot_queries(pilot_queries),
        description=description,
    )
    return describe(catalog.get(name))


@router.delete("/experts/{name}", status_code=204, operation_id=links.DELETE_EXPERT)
async def delete_expert(name: ExpertName, admin: AdminDep) -> Response:
    """Remove an expert, its adapter and its index; requests already running finish first."""
    await admin.delete_expert(name)
    return Response(status_code=204)


@router.put("/experts/{name}/fusion", response_model=ExpertOut, operation_id=links.SET_FUSION)
async def set_fusion_weight(
    name: ExpertName, body: FusionWeightIn, admin: AdminDep, catalog: CatalogDep
) -> ExpertOut:
    """Set an expert's hybrid dense weight (`rr tune-fusion` learns one from train queries;
    an expert registered over HTTP has none until set: its queries use the per-query model)."""
    await admin.set_fusion_weight(name, body.weight)
    return describe(catalog.get(name))


@router.put(
    "/experts/{name}/documents",
    response_model=DocumentsResponse,
    operation_id=links.UPSERT_DOCUMENTS,
    responses={200: {"links": links.DOCUMENTS_WRITTEN}},
)
async def upsert_documents(
    name: ExpertName, body: DocumentsRequest, admin: AdminDep
) -> DocumentsResponse:
    """Insert or replace documents (by id) in an expert's index; embedded by the base model
    unless a document brings its own base-encoder `embedding`."""
    documents = [Document(d.id, d.text, d.title, d.metadata) for d in body.documents]
    embeddings = [d.embedding for d in body.documents]
    inserted, updated = await admin.upsert_documents(name, documents, embeddings)
    return DocumentsResponse(inserted=inserted, updated=updated)


@router.get(
    "/experts/{name}/documents/{doc_id:path}",
    response_model=DocumentOut,
    operation_id=links.GET_DOCUMENT,
)
async def get_document(name: ExpertName, doc_id: DocumentId, admin: AdminDep) -> DocumentOut:
    """One stored document (as its last acknowledged write left it)."""
    document = await asyncio.to_thread(admin.get_document, name, doc_id)
    return DocumentOut(
        id=document.id, title=document.title, text=document.text, metadata=document.metadata
    )


@router.delete(
    "/experts/{name}/documents/{doc_id:path}", status_code=204, operation_id=links.DELETE_DOCUMENT
)
async def delete_document(name: ExpertName, doc_id: DocumentId, admin: AdminDep) -> Response:
    """Delete one document from an expert's index."""
    await admin.delete_document(name, doc_id)
    return Response(status_code=204)
