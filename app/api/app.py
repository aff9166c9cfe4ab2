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
from app.service.admin import AdminService
from app.service.bootstrap import index_expert_corpora
from app.service.context import ServiceContext
from app.service.replication import Replication, start_replication
from app.service.retrieval import RetrievalService
from app.settings import Settings

log = logging.getLogger(__name__)


async def _bootstrap(admin: AdminService, replication: Replication) -> None:
    while not replication.ready:  # decide what is missing only after replaying the log
        await asyncio.sleep(0.2)
    try:
        await index_expert_corpora(admin)
    except Exception:  # the service still serves what it has
        log.exception("indexing the benchmark corpora failed")


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
        app.state.bootstrap = None
        if settings.index_corpora_on_start:
            app.state.bootstrap = asyncio.create_task(_bootstrap(app.state.admin, replication))
        try:
            yield
        finally:
            if app.state.bootstrap is not None:
                app.state.bootstrap.cancel()
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
