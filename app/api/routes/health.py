"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the encoder is loaded, every expert's index is readable and (with Redis)
    the change log is caught up. `degraded` lists shortcuts switched off (with why): the
    exact path serves instead, so they do not make the gateway unready."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    unreadable = [n for n in ctx.indexes.names() if not ctx.indexes.get(n).readable()]
    missing = [n for n in ctx.registry.names() if n not in ctx.indexes]
    caught_up = request.app.state.replication.ready
    degraded = ctx.encoder.shortcuts.degraded
    bootstrap = request.app.state.bootstrap
    indexing = bootstrap is not None and not bootstrap.done()
    if unreadable or missing or not caught_up or indexing:
        status = "indexing" if indexing else "degraded" if caught_up else "catching_up"
        detail = {
            "status": status,
            "unreadable": unreadable,
            "missing": missing,
            "degraded": degraded,
        }
        return JSONResponse(detail, status_code=503)
    body = {"status": "ready", "experts": len(ctx.registry.names()), "degraded": degraded}
    return JSONResponse(body)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, routing, adapters, queues, cache, replication."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
