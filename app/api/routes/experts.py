"""Read-only expert catalogue."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api import links
from app.api.deps import CatalogDep, require_search_key
from app.api.errors import ERROR_RESPONSES
from app.api.schemas import ExpertList, ExpertName, ExpertOut, IndexingOut
from app.core.names import check_name
from app.service.catalog import ExpertInfo

router = APIRouter(
    prefix="/v1/experts",
    tags=["experts"],
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_search_key)],
)


def describe(info: ExpertInfo) -> ExpertOut:
    spec = info.spec
    return ExpertOut(
        name=spec.name,
        description=spec.description,
        base_model=spec.base_model,
        created=spec.created,
        pilot_count=spec.pilot_count,
        adapter_sha256=spec.adapter_sha256,
        fallback_threshold=spec.fallback_threshold,
        fusion_weight=spec.fusion_weight,
        use_adapter=spec.use_adapter,
        documents=info.documents,
        resident=info.resident,
        resident_bytes=info.resident_bytes,
        one_pass=info.one_pass,
        state="ready" if info.indexing is None else "indexing",
        indexing=None
        if info.indexing is None
        else IndexingOut(indexed=info.indexing.indexed, total=info.indexing.total),
        extra=spec.extra,
    )


@router.get("", response_model=ExpertList, responses={200: {"links": links.EXPERT_LISTED}})
async def list_experts(catalog: CatalogDep) -> ExpertList:
    """Every registered expert with its index size and whether its adapter is loaded."""
    return ExpertList(experts=[describe(info) for info in catalog.list()])


@router.get("/{name}", response_model=ExpertOut, operation_id=links.GET_EXPERT)
async def get_expert(name: ExpertName, catalog: CatalogDep) -> ExpertOut:
    """One expert's metadata, pilot count, index size and residency."""
    return describe(catalog.get(check_name(name)))
