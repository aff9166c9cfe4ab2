"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ReadinessDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "not ready: starting, an index unreadable, or (with Redis) the "
            "change log not caught up; the body says which",
        }
    },
)
async def readyz(readiness: ReadinessDep) -> JSONResponse:
    """Ready when the encoder is loaded, every expert's index is readable and (with Redis)
    the change log is caught up. `degraded` lists shortcuts switched off (with why): the
    exact path serves instead, so they do not make the gateway unready."""
    if readiness is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    state = readiness.check()
    return JSONResponse(state.body, status_code=200 if state.ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, routing, adapters, queues, cache, replication."""
    body = generate_latest(request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
