"""Read-only expert catalogue."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.errors import ERROR_RESPONSES
from app.api.schemas import ExpertList, ExpertOut
from app.core.names import check_name
from app.errors import NotFound
from app.service.context import ServiceContext

router = APIRouter(prefix="/v1/experts", tags=["experts"], responses=ERROR_RESPONSES)


def describe(ctx: ServiceContext, name: str) -> ExpertOut:
    spec = ctx.registry.get(name).spec
    documents = len(ctx.indexes.get(name)) if name in ctx.indexes else 0
    return ExpertOut(
        name=spec.name,
        description=spec.description,
        base_model=spec.base_model,
        created=spec.created,
        pilot_count=spec.pilot_count,
        adapter_sha256=spec.adapter_sha256,
        fallback_threshold=spec.fallback_threshold,
        documents=documents,
        resident=ctx.encoder.is_resident(name),
        extra=spec.extra,
    )


@router.get("", response_model=ExpertList)
async def list_experts(request: Request) -> ExpertList:
    """Every registered expert with its index size and whether its adapter is loaded."""
    ctx: ServiceContext = request.app.state.ctx
    experts = []
    for name in ctx.registry.names():
        try:
            experts.append(describe(ctx, name))
        except NotFound:
            continue  # deleted while listing
    return ExpertList(experts=experts)


@router.get("/{name}", response_model=ExpertOut)
async def get_expert(name: str, request: Request) -> ExpertOut:
    """One expert's metadata, pilot count, index size and residency."""
    return describe(request.app.state.ctx, check_name(name))
