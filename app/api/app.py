"""The app factory: the lifespan builds the heavy objects and keeps them on app.state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.metrics import Metrics, RequestMetrics
from app.api.middleware import BodySizeLimit, RequestId
from app.api.routes import admin, experts, health, search
from app.replication.setup import start_replication
from app.service.admin import AdminService
from app.service.context import ServiceContext
from app.service.retrieval import RetrievalService
from app.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await asyncio.to_thread(ServiceContext.start, settings)
        replication = await start_replication(ctx)
        app.state.replication = replication
        app.state.retrieval = RetrievalService(ctx, replication.shared_cache)
        app.state.admin = AdminService(ctx, replication.sink, replication.replicated)
        app.state.ctx = ctx
        try:
            yield
        finally:
            await replication.stop()
            ctx.close()

    app = FastAPI(
        title="RouterRetriever gateway",
        version=__version__,
        description="Routes each query to a LoRA domain expert, embeds it, searches its index.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    metrics = Metrics()
    metrics.watch(app.state)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestId)
    for module in (search, experts, admin, health):
        app.include_router(module.router)
    return app
