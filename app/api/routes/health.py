"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the encoder is loaded and every expert's index is readable."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    unreadable = [n for n in ctx.indexes.names() if not ctx.indexes.get(n).readable()]
    missing = [n for n in ctx.registry.names() if n not in ctx.indexes]
    if unreadable or missing:
        detail = {"status": "degraded", "unreadable": unreadable, "missing": missing}
        return JSONResponse(detail, status_code=503)
    return JSONResponse({"status": "ready", "experts": len(ctx.registry.names())})
